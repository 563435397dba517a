"""Reference helpers for the systolic grid's tests and benchmarks (``hw/grid.py``).

How a weight tile is packed into the grid's feed rows and what the grid must output for it:
the golden model's group sums (``sim.golden.group_sums``), never a second model of the grid.
"""

import numpy as np

from hw.grid import GridMode
from sim.golden import group_sums

__all__ = ["pack_tile", "random_tile", "expected_rows"]



def pack_tile(w, mode):
    """Weight tile [R, ncols] (grid row r, logical column j) -> the R feed rows (grid row R-1
    first), one byte per PE column."""
    w = np.asarray(w, np.int64)
    if mode == GridMode.W4A8:
        b = (w[:, 0::2] & 15) | ((w[:, 1::2] & 15) << 4)
    else:
        b = w & 255
    return [list(map(int, row)) for row in b[::-1]]


def random_tile(rng, R, P, mode, extreme=False):
    n = 2 * P if mode == GridMode.W4A8 else P
    lo, hi = (-8, 8) if mode == GridMode.W4A8 else (-128, 128)
    if extreme:
        return rng.choice([lo, hi - 1], size=(R, n))
    return rng.integers(lo, hi, size=(R, n))


def expected_rows(a, w, mode, P):
    """Golden column sums for activation rows a [T, R] on tile w [R, ncols], padded to 2P."""
    acc = group_sums(a, np.asarray(w).T, a.shape[1])[:, :, 0]
    out = np.zeros((a.shape[0], 2 * P), np.int64)
    out[:, : acc.shape[1]] = acc
    return out

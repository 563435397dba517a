"""Reference helpers for the GEMM datapath's tests (``hw/gemm.py``): how a golden GEMM is
tiled into GemmUnit's streams (weight tiles, activation rows with their scaler information,
per-tile column parameters) and how its output rows are gathered. The expected values always
come from ``sim.golden``; this module only arranges data.
"""

import numpy as np

from hw.grid import GridMode
from sim.grid_ref import pack_tile

__all__ = ["plan_gemm", "collect", "gscale"]


def gscale(mant):
    """A power-of-two group mantissa as the scaler's shift (or zero flag)."""
    mant = int(mant)
    if mant and mant & (mant - 1):
        raise ValueError(f"mantissa {mant} is not a power of two")
    return {"gshift": max(mant.bit_length() - 1, 0), "gzero": int(mant == 0)}


def plan_gemm(params, a_passes, b, col_scale, col_offset, col_shift, bias, mode, a_group):
    """Tile one product into the unit's streams.

    ``a_passes``: [(a_int [T, K], mant [T, K/a_group], exp [T], pass_scale)], summed;
    ``b``: [N, K] integer weights (INT4 or INT8 values); ``col_scale`` / ``col_offset``:
    [N, K/32] or [N, ceil(K/a_group)] per-column factors by K position (functions of k);
    returns (weight tiles, activation rows, tile params) for GemmUnit, one N-tile per column
    block.
    """
    R, C = params.rows, params.cols
    ncols = C if mode == GridMode.W4A8 else C // 2
    T, K = a_passes[0][0].shape
    N = b.shape[0]
    Kp = -(-K // R) * R
    bpad = np.zeros((N, Kp), np.int64)
    bpad[:, :K] = b
    tiles, acts, prms = [], [], []
    n_ktiles = Kp // R
    for n0 in range(0, N, ncols):
        nsl = slice(n0, min(N, n0 + ncols))
        steps = [(pi, kt) for pi in range(len(a_passes)) for kt in range(n_ktiles)]
        for si, (pi, kt) in enumerate(steps):
            a, mant, exp, pscale = a_passes[pi]
            apad = np.zeros((T, Kp), np.int64)
            apad[:, :K] = a
            k0 = kt * R
            w = np.zeros((R, ncols), np.int64)
            w[:, : nsl.stop - n0] = bpad[nsl, k0:k0 + R].T
            tiles.append(pack_tile(w, mode))
            for t in range(T):
                acts.append({
                    "data": [int(v) for v in apad[t, k0:k0 + R]],
                    "last": int(t == T - 1),
                    "info": {**gscale(int(mant[t, k0 // a_group])), "exp": int(exp[t]), "t": t,
                             "first": int(si == 0), "final": int(si == len(steps) - 1)},
                })
            sc = np.zeros(C, np.int64)
            of = np.zeros(C, np.int64)
            shf = np.zeros(C, np.int64)
            bi = np.zeros(C, np.int64)
            cols = range(nsl.stop - n0)
            for j in cols:
                n = n0 + j
                sc[j] = col_scale(n, k0) * pscale
                of[j] = col_offset(n, k0) * pscale
                shf[j] = col_shift(n)
                bi[j] = bias[n]
            prms.append({"scale": sc.tolist(), "offset": of.tolist(), "shift": shf.tolist(),
                         "bias": bi.tolist()})
    return tiles, acts, prms, mode


def collect(out, T, N, ncols):
    """Output rows (one per t per N-tile, in order) -> [T, N]."""
    y = np.zeros((T, N), np.int64)
    i = 0
    for n0 in range(0, N, ncols):
        for t in range(T):
            row, tt = out[i]
            assert tt == t
            w = min(ncols, N - n0)
            y[t, n0:n0 + w] = row[:w]
            i += 1
    return y

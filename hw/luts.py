"""Contents of the tables the chip's units read.

These are constants of the chip, computed once in float64 when the design is elaborated (or the
compiler writes them into the memory image): ROM contents of the vector unit's piecewise-linear
LUT unit (GELU, SiLU, 2**-f for softmax) and the RoPE cos/sin table. The golden model
(``sim/golden.py``) evaluates them with the same integer interpolation the hardware uses; this
module is the one place their contents are defined.

Ref: piecewise-linear LUT approximation of transformer non-linearities, as in NN-LUT
(Yu et al., DAC 2022) and the LUT-based softmax exponent of ITA (Islamoglu et al., 2023).
"""

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from .params import Numerics

__all__ = ["PwlTable", "gelu_table", "silu_table", "exp2_table"]


@dataclass(frozen=True)
class PwlTable:
    """A piecewise-linear function of a wide (Q.F) input.

    Inputs in ``[lo, lo + segments << seg_shift)`` (wide units) are interpolated between
    ``values[i]`` and ``values[i + 1]``; below the range the output is ``below`` (``"zero"``),
    above it ``above`` (``"identity"``: the input itself). ``values`` are wide (Q.F) INT32.
    """

    name: str
    lo: int
    seg_shift: int
    segments: int
    values: np.ndarray
    below: str
    above: str

    @property
    def hi(self) -> int:
        return self.lo + (self.segments << self.seg_shift)


def _pwl(name, fn, rng, segments, num: Numerics, below, above) -> PwlTable:
    one = 1 << num.frac_bits
    span = 2 * rng * one
    seg_shift = int(math.log2(span // segments))
    assert segments << seg_shift == span
    xs = -rng + np.arange(segments + 1) * (2 * rng / segments)
    values = np.array([round(fn(x) * one) for x in xs], dtype=np.int64)
    values.setflags(write=False)
    return PwlTable(name, -rng * one, seg_shift, segments, values, below, above)


def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


@cache
def gelu_table(num: Numerics = Numerics()) -> PwlTable:
    """erf-GELU on [-gelu_range, gelu_range); 0 below (|GELU(-8)| < 1e-14), x above."""
    return _pwl("gelu", _gelu, num.gelu_range, num.gelu_segments, num, "zero", "identity")


@cache
def silu_table(num: Numerics = Numerics()) -> PwlTable:
    """SiLU on [-silu_range, silu_range); 0 below (|SiLU(-16)| < 2e-6), x above."""
    return _pwl("silu", _silu, num.silu_range, num.silu_segments, num, "zero", "identity")


@cache
def exp2_table(num: Numerics = Numerics()) -> np.ndarray:
    """``round(2**(-i / segments) * 2**exp2_out_bits)`` for i in 0..segments (inclusive).

    Softmax evaluates 2**-f for the fractional part f of its base-2 exponent by linear
    interpolation between neighbouring entries; the last entry (2**-1) closes the interval.
    """
    n = num.exp2_segments
    one = 1 << num.exp2_out_bits
    t = np.array([round(2.0 ** (-i / n) * one) for i in range(n + 1)], dtype=np.int64)
    t.setflags(write=False)
    return t

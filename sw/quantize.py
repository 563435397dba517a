"""Weights and constants into the chip's formats (the compiler's first pass).

The chip multiplies INT8 activations by *grouped* weights (``sim/golden.py``): ``q`` INT8 or INT4
[N, K]; per column n and group g of 32 along K a signed INT16 ``scale`` and ``offset``; per column
a ``shift``, with ``w = (scale * q + offset) * 2**-shift``.

- GGUF Q8_0 / Q4_0 / Q4_1 map onto it with every ``q`` unchanged (Q4 nibbles become signed,
  q - 8, and the 8·d moves into the offset). The fp16 scales become INT16 mantissas under one
  binary point per column: exact whenever a column's scales span less than 2**5 (their 11-bit
  mantissas fit in 16 bits), otherwise rounded at 2**-15 of the column's largest scale
  (:func:`conversion_report` counts both).
- Float weights (MiniLM) are quantized symmetrically per group (scale = max|w| / 127).

Constants that stay wide (biases, norm gains) are Q.F INT32: :func:`to_wide`.
"""

from dataclasses import dataclass, field

import numpy as np

from hw.params import Numerics

__all__ = [
    "QWeight",
    "to_wide",
    "from_wide",
    "quantize_float",
    "from_gguf_blocks",
    "dequantize",
]

NUM = Numerics()


def to_wide(x, num: Numerics = NUM) -> np.ndarray:
    """Float -> wide Q.F INT32 (round half up, saturate)."""
    v = np.floor(np.asarray(x, dtype=np.float64) * (1 << num.frac_bits) + 0.5)
    return np.clip(v, -(1 << 31), (1 << 31) - 1).astype(np.int64)


def from_wide(v, num: Numerics = NUM) -> np.ndarray:
    """Wide Q.F -> float64."""
    return np.asarray(v, dtype=np.float64) / (1 << num.frac_bits)


@dataclass(frozen=True, eq=False)
class QWeight:
    """A weight matrix in the chip's grouped format (see module docstring).

    ``q`` int8 [N, K] (values in -8..7 when ``bits == 4``), ``scale`` int16 [N, K/group],
    ``offset`` int16 [N, K/group] or None, ``shift`` int64 [N]. ``exact`` counts the group
    scales/offsets that converted without rounding (``total`` of them).
    """

    q: np.ndarray
    scale: np.ndarray
    offset: np.ndarray | None
    shift: np.ndarray
    bits: int
    exact: int = 0
    total: int = 0
    name: str = field(default="")

    @property
    def shape(self):
        return self.q.shape


def _column_shift(mag: np.ndarray, num: Numerics) -> np.ndarray:
    """Per-column binary point: the largest shift keeping every |mantissa| < 2**(scale_bits-1)."""
    top = num.scale_bits - 1
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.where(mag > 0, mag, 1.0)))
    shift = (top - 1 - e).astype(np.int64)
    # log2 of a value just below a power of two can round up; make sure the mantissa fits.
    over = np.floor(mag * np.exp2(shift) + 0.5) >= (1 << top)
    return shift - over


def _to_mantissa(v: np.ndarray, shift: np.ndarray):
    """Exact-or-rounded INT16 mantissas of float values under a per-row shift."""
    scaled = v.astype(np.float64) * np.exp2(shift)[:, None]
    m = np.floor(scaled + 0.5)
    return m.astype(np.int16), int(np.count_nonzero(m == scaled))


def from_gguf_blocks(
    kind: str, q, d, m=None, num: Numerics = NUM, name: str = ""
) -> QWeight:
    """GGUF quantized blocks -> QWeight, with q unchanged.

    ``kind`` is ``"Q8_0"`` (q int8, w = d·q), ``"Q4_0"`` (q 0..15, w = d·(q-8)) or ``"Q4_1"``
    (q 0..15, w = d·q + m = d·(q-8) + (m + 8d)). ``d``, ``m`` fp16 [N, K/32].
    """
    if num.group != 32:
        raise ValueError(f"GGUF blocks are 32 wide; Numerics.group is {num.group}")
    d = np.asarray(d, dtype=np.float64)
    if kind == "Q8_0":
        qs, off, bits = np.asarray(q, np.int8), None, 8
    elif kind == "Q4_0":
        qs, off, bits = (np.asarray(q, np.int16) - 8).astype(np.int8), None, 4
    elif kind == "Q4_1":
        if m is None:
            raise ValueError(f"{name}: Q4_1 needs the block minima m")
        qs, bits = (np.asarray(q, np.int16) - 8).astype(np.int8), 4
        off = np.asarray(m, np.float64) + 8.0 * d  # exact in float64: fp16 values
    else:
        raise ValueError(f"{name}: no grouped-weight conversion for GGUF type {kind}")
    mag = np.abs(d).max(axis=1)
    if off is not None:
        mag = np.maximum(mag, np.abs(off).max(axis=1))
    shift = _column_shift(mag, num)
    scale, ex1 = _to_mantissa(d, shift)
    total = d.size
    exact = ex1
    offset = None
    if off is not None:
        offset, ex2 = _to_mantissa(off, shift)
        total += off.size
        exact += ex2
    return QWeight(qs, scale, offset, shift, bits, exact, total, name)


def quantize_float(w, bits: int = 8, num: Numerics = NUM, name: str = "") -> QWeight:
    """Symmetric group-wise quantization of a float [N, K] matrix (K a multiple of the group).

    Per group the scale is max|w| / qmax (qmax = 127 or 7), rounded to the INT16 mantissa
    first so that q = round(w / scale) uses exactly the scale the chip will apply.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] % num.group:
        raise ValueError(f"{name}: cannot group {w.shape} along K by {num.group}")
    if bits not in (4, 8):
        raise ValueError(f"{name}: bits must be 4 or 8, got {bits}")
    qmax = (1 << (bits - 1)) - 1
    N, K = w.shape
    wg = w.reshape(N, K // num.group, num.group)
    d = np.abs(wg).max(axis=2) / qmax
    shift = _column_shift(d.max(axis=1), num)
    scale, _ = _to_mantissa(d, shift)
    step = scale.astype(np.float64) * np.exp2(-shift)[:, None]
    safe = np.where(step > 0, step, 1.0)
    q = np.clip(np.floor(wg / safe[:, :, None] + 0.5), -qmax, qmax)
    q = np.where(step[:, :, None] > 0, q, 0).reshape(N, K).astype(np.int8)
    return QWeight(q, scale, None, shift, bits, d.size, d.size, name)


def dequantize(w: QWeight, num: Numerics = NUM) -> np.ndarray:
    """The float64 matrix a QWeight stands for (for tests and error measurements)."""
    N, K = w.q.shape
    g = num.group
    sc = w.scale.astype(np.float64)[:, :, None]
    v = w.q.astype(np.float64).reshape(N, K // g, g) * sc
    if w.offset is not None:
        v = v + w.offset.astype(np.float64)[:, :, None]
    return v.reshape(N, K) * np.exp2(-w.shift.astype(np.float64))[:, None]

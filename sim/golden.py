"""The golden model: the integer arithmetic of every operation the chip performs.

This module *is* the numerics contract (DESIGN.md §3). The instruction-level simulator and the
RTL must match it bit for bit; the float reference (``sw/reference.py``) measures what it costs.
At run time everything here is integer arithmetic (numpy int64, or float64 BLAS only where every
partial sum is an integer below 2**53, so the result is exact whatever the summation order).

Formats (widths in :class:`hw.params.Numerics`):

*wide*
    INT32 fixed point, real = v / 2**F (F = ``frac_bits`` = 16). The residual stream, GEMM
    outputs and every vector-unit output. Results saturate to INT32.
*A8 + group scales*
    INT8 in [-127, 127] with a dynamic power-of-two scale per group of ``act_group`` = 16
    along the row (MXINT8-style): ``wide ≈ x8 * mant[k // 16] * 2**exp`` with mant a power of
    two (:class:`ActScale`). Every GEMM input is A8: the vector unit quantizes a wide row after
    finding each group's max |x|. Activation groups split the weight groups in halves, so the
    grid accumulates 16 products (one pass down a 16-row column) in INT32 and a group scaler
    applies both scales (the activation's as a shift). Per-row scales lost 12 points of
    SmolLM2's top-1 agreement to its outlier channels; groups recover them (see
    ``hw.params.Numerics.act_group``).
*grouped weights*
    ``q`` INT8 or INT4 [N, K]; per (column n, group g of 32 along K) a signed INT16 scale D and
    offset M; per column a shift s: ``w = (D * q + M) * 2**-s``. GGUF Q4_0 / Q4_1 / Q8_0 map onto
    it with q unchanged (``sw/quantize.py``).

Rounding is round-half-up, ``(v + 2**(s-1)) >> s`` (an adder and a shift in hardware), written
:func:`rshift_round`; plain ``>>`` is floor. Division is floor division of non-negative
integers by a per-row quantity (a sequential divider per row, never per element).
"""

from dataclasses import dataclass

import numpy as np

from hw.luts import PwlTable, exp2_table, gelu_table, silu_table
from hw.params import Numerics

__all__ = [
    "NUM",
    "ActScale",
    "rshift_round",
    "saturate",
    "quantize_rows",
    "dequantize_rows",
    "gemm",
    "gemm_act",
    "gemm_passes",
    "group_sums",
    "quantize_act",
    "quantize_residual",
    "attention_head",
    "fold_v_scales",
    "residual_add",
    "layernorm",
    "rmsnorm",
    "pwl",
    "gelu",
    "silu_mul",
    "softmax",
    "rope",
    "embed",
]

NUM = Numerics()
F = NUM.frac_bits
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


# -- primitives ---------------------------------------------------------------------------------


def rshift_round(v, s):
    """Round-half-up ``v / 2**s`` for s > 0; ``v * 2**-s`` (saturating at ±2**62) for s <= 0.

    Callers keep |v| < 2**62, so for s >= 63 the result is 0 (|v / 2**s| < 1/2); the shift is
    clamped there (numpy shifts of 64 or more bits are not defined).
    """
    v = np.asarray(v, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    pos = np.minimum(np.maximum(s, 0), 63)
    half = np.where(pos > 0, np.left_shift(np.int64(1), np.maximum(pos - 1, 0)), 0)
    right = np.where(pos >= 63, 0, np.right_shift(v + half, np.minimum(pos, 62)))
    return np.where(s > 0, right, _shl_sat(v, np.maximum(-s, 0)))


def _shl_sat(v, k):
    """``v << k`` clamped to ±2**62 (every caller saturates further, so the clamp is exact)."""
    k = np.minimum(k, 62)
    lim = np.left_shift(np.int64(1), 62 - k)
    return np.left_shift(np.clip(v, -lim, lim), k)


def saturate(v, bits=32):
    """Clamp to the signed range of ``bits``."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(np.asarray(v, dtype=np.int64), lo, hi)


def _bitlen(v):
    """Bit length of non-negative int64 values (0 for 0), exactly."""
    v = np.asarray(v, dtype=np.int64)
    # frexp is exact for integers below 2**53; above that, shift first.
    big = v >= (1 << 52)
    _, e = np.frexp(np.where(big, v >> 20, v).astype(np.float64))
    return np.where(v == 0, 0, e + np.where(big, 20, 0)).astype(np.int64)



# -- dynamic group quantization --------------------------------------------------------------------


@dataclass(frozen=True)
class ActScale:
    """Scales of an A8 tensor: ``wide ≈ x8[..., k] * mant[..., k // group] * 2**exp[...]``.

    ``mant`` is a power of two, ``2**(H - d)`` with d the group's exponent below the row's
    largest (H = ``act_headroom`` = 20), or 0 (an all-zero group, or one more than H binades
    below the row max); one signed ``exp`` per row. In hardware the mantissa is a shift.
    """

    mant: np.ndarray
    exp: np.ndarray
    group: int

    def __getitem__(self, idx):
        return ActScale(self.mant[idx], self.exp[idx], self.group)

    def expand(self, k):
        """Per-element mantissas [..., k] (for GEMMs and dequantization)."""
        return np.repeat(self.mant, self.group, axis=-1)[..., :k]


def quantize_rows(x, group: int | None = NUM.act_group, bits: int = 8, num: Numerics = NUM):
    """Quantize the last axis of an integer array to A8 with a power-of-two scale per group.

    ``group`` elements share a scale (default ``act_group`` = 16, half a weight group;
    ``None``: the whole row). ``bits`` is 8 (INT8, Q = 127) or 15 (Q = 16383: an "A15" value
    the grid takes as two INT8 planes, ``x = hi * 2**7 + lo`` with hi INT8 and lo in 0..127, in
    two passes; used for attention probabilities). With b = bits - 1, per group g with
    ``amax_g`` its max |x| (below 2**47):

    - ``e_g = bitlen(amax_g) - b``, so amax_g / 2**e_g lies in [2**(b-1), 2**b);
    - per element ``xq = clamp(rshift_round(x, e_g), -Q, Q)`` (a rounding shift; a left shift,
      exact, when e_g <= 0);
    - per row ``exp = max_g e_g - H`` (H = ``act_headroom``) and per group
      ``mant_g = 2**(e_g - exp)`` if ``e_g - exp >= 0`` else 0 (all-zero groups: 0).

    So ``xq * mant_g * 2**exp = xq * 2**e_g`` exactly for every group within H binades of the
    row max. No divider, no multiplier: a leading-one detector per group and shifts.
    Ref: OCP Microscaling (MX) formats v1.0, MXINT8 (INT8 elements, shared power-of-two scale
    per block; here blocks of 16), Rouhani et al., 2023.
    """
    if bits not in (8, 15):
        raise ValueError(f"quantize_rows: bits must be 8 or 15, got {bits}")
    b = bits - 1
    Q = (1 << b) - 1
    x = np.asarray(x, dtype=np.int64)
    K = x.shape[-1]
    g = K if group is None else int(group)
    G = -(-K // g)
    pad = G * g - K
    xg = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]).reshape(*x.shape[:-1], G, g)
    amax_g = np.max(np.abs(xg), axis=-1)
    if np.any(amax_g >= (1 << 47)):
        raise ValueError("quantize_rows: |x| must be below 2**47")
    e = _bitlen(amax_g) - b
    xq = np.clip(rshift_round(xg, e[..., None]), -Q, Q)
    xq = xq.reshape(*x.shape[:-1], G * g)[..., :K].astype(np.int8 if bits == 8 else np.int16)
    nz = amax_g > 0
    H = num.act_headroom
    emax = np.max(np.where(nz, e, np.iinfo(np.int64).min), axis=-1)
    exp = np.where(nz.any(axis=-1), emax - H, 0)
    d = e - exp[..., None]
    mant = np.where(nz & (d >= 0), np.left_shift(1, np.clip(d, 0, 62)), 0)
    return xq, ActScale(mant.astype(np.int64), exp.astype(np.int64), g)


def _shift_floor(v, s):
    """``v >> s`` (floor) for s >= 0, ``v << -s`` for s < 0."""
    v = np.asarray(v, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    return np.where(s >= 0, np.right_shift(v, np.maximum(s, 0)),
                    np.left_shift(v, np.maximum(-s, 0)))


def dequantize_rows(x8, scale: ActScale):
    """A8 -> wide, ``rshift_round(x8 * mant, -exp)``: the value the scale stands for."""
    x8 = np.asarray(x8, np.int64)
    m = scale.expand(x8.shape[-1])
    return saturate(rshift_round(x8 * m, -scale.exp[..., None]))


def quantize_residual(x, group: int | None = NUM.act_group, num: Numerics = NUM):
    """Two-pass A8 ("A8x2"): ``x ≈ hi + lo``, both A8 (:func:`quantize_rows`), where
    ``lo`` quantizes the residual ``x - dequantize_rows(hi)`` (exact wide integers). A GEMM on
    A8x2 is two ordinary INT8 passes over the same resident weights whose outputs add
    (:func:`gemm_passes`); the error drops from ~amax_g/128 to ~amax_g/128**2 per group. Used where
    the compiler marks an input as sensitive; in decode (GEMV) the second pass costs grid
    cycles but no weight traffic. Returns ``((hi8, hi_scale), (lo8, lo_scale))``.

    Ref: residual (two-stage) quantization, as in Q-BERT-style residual coding and
    Mixed-precision decomposition of LLM.int8() (Dettmers et al., 2022), here without outlier
    detection: every group gets the second pass.
    """
    hi8, hs = quantize_rows(x, group, num=num)
    r = np.asarray(x, np.int64) - dequantize_rows(hi8, hs)
    return (hi8, hs), quantize_rows(r, group, num=num)


# -- GEMM -----------------------------------------------------------------------------------------


def _exact_matmul(a, b):
    """Integer matmul through float64 BLAS; callers guarantee Σ|a·b| < 2**53 (exact sums)."""
    return np.rint(np.asarray(a, np.float64) @ np.asarray(b, np.float64)).astype(np.int64)


def _check_scale(x8, xs: ActScale, num: Numerics, who: str):
    K = x8.shape[-1]
    if num.group % xs.group or xs.mant.shape != (*x8.shape[:-1], -(-K // xs.group)):
        raise ValueError(f"{who}: activation scales {xs.mant.shape} (group {xs.group}) do not "
                         f"match activations {x8.shape} in groups of {num.group}")


def gemm(x8, xs: ActScale, w, bias=None, num: Numerics = NUM):
    """A8 activations times grouped weights, to wide.

    ``x8`` [T, K] with group scales ``xs`` (mant [T, K/ga], exp [T]; ga = ``xs.group`` divides
    the weight group 32); ``w`` has ``q`` [N, K] (INT8 or INT4 values), ``scale`` and ``offset``
    [N, K/32] (INT16; offset may be None) and ``shift`` [N]
    (``w_real = (scale * q + offset) * 2**-shift``, see ``sw/quantize.py``). ``bias`` is wide
    [N]. Per (t, n) and activation group h (inside weight group g):

    - ``acc_h = Σ_{k in h} x8[t,k] * q[n,k]`` (|acc_h| < 2**19, the grid's INT32 accumulator)
      and ``xsum_h = Σ_{k in h} x8[t,k]`` (|xsum_h| < 2**12);
    - ``Y = Σ_h mant[t,h] * (scale[n,g] * acc_h + offset[n,g] * xsum_h)``, exact:
      |Y| < 2**21 · 2**33 · K/16 <= 2**61 for K <= 2048 (the group scaler's 64-bit
      accumulator);
    - ``out = saturate32(rshift_round(Y, shift[n] - exp[t]) + bias[n])``.
    """
    return gemm_passes([(x8, xs)], w, bias, num)


def group_sums(x8, q, group: int):
    """The grid's raw output: ``acc[t, n, h] = Σ_{k in group h} x8[t, k] * q[n, k]`` (exact
    integers; the INT32 column sums the group scaler of :func:`gemm` consumes, one per
    activation group). ``x8`` [T, K], ``q`` [N, K], K a multiple of ``group``."""
    x8 = np.asarray(x8, np.int64)
    q = np.asarray(q, np.int64)
    T, K = x8.shape
    if q.shape[1] != K or K % group:
        raise ValueError(f"group_sums: {x8.shape} x {q.shape}ᵀ in groups of {group}")
    H = K // group
    xg = x8.reshape(T, H, group).transpose(1, 0, 2)  # [H, T, g]
    qg = q.reshape(-1, H, group).transpose(1, 2, 0)  # [H, g, N]
    return _exact_matmul(xg, qg).transpose(1, 2, 0)  # [T, N, H]


def _gemm_Y(passes, w, num: Numerics):
    """The exact 64-bit group-scaler sums Y of :func:`gemm` for each pass, all passes and both
    mantissa halves stacked into one float64 BLAS call (the weights are read once)."""
    g = num.group
    N, K = w.q.shape
    if K % g:
        raise ValueError(f"gemm: K = {K} is not a multiple of the weight group {g}")
    if K > 2048:
        raise ValueError(f"gemm: K = {K} beyond the exact 64-bit bound (2048)")
    rows = []
    for x8, xs in passes:
        x8 = np.asarray(x8, np.int64)
        if x8.ndim != 2 or x8.shape[1] != K:
            raise ValueError(f"gemm: weight is {w.q.shape}, activations {x8.shape}")
        _check_scale(x8, xs, num, "gemm")
        T, ga = x8.shape[0], xs.group
        xsum = x8.reshape(T, K // ga, ga).sum(-1)  # per activation group, |.| < 2**11
        # mant < 2**21 split in 10 + 11 bits keeps each float64 BLAS sum below 2**53 (exact);
        # the offset terms Σ mant·xsum·offset ride along as K/32 extra columns (< 2**45).
        for part in (xs.mant >> 11, xs.mant & 2047):
            r = x8 * np.repeat(part, ga, axis=-1)
            if w.offset is not None:
                r = np.concatenate([r, (xsum * part).reshape(T, K // g, g // ga).sum(-1)], 1)
            rows.append(r)
    Yall = _exact_matmul(np.concatenate(rows), _scaled_weight(w, g).T)
    out, r = [], 0
    for x8, _ in passes:
        T = x8.shape[0]
        out.append((Yall[r:r + T] << 11) + Yall[r + T:r + 2 * T])
        r += 2 * T
    return out


def gemm_passes(passes, w, bias=None, num: Numerics = NUM):
    """GEMM on an activation given as one or more A8 passes ``[(x8, scale), ...]`` (one for
    A8, two from :func:`quantize_residual`): each pass is rounded as :func:`gemm` states
    (``rshift_round(Y, shift[n] - exp[t])``); the first adds the bias and saturates, each
    further pass accumulates onto that INT32 result, saturating again."""
    shift = np.asarray(w.shift, np.int64)[None, :]
    out = None
    for (_, xs), Y in zip(passes, _gemm_Y(passes, w, num), strict=True):
        o = rshift_round(Y, shift - xs.exp[:, None])
        if out is None:
            if bias is not None:
                o = o + np.asarray(bias, np.int64)[None, :]
            out = saturate(o)
        else:
            out = saturate(out + o)
    return out


def quantize_act(x, passes: int = 1, num: Numerics = NUM):
    """An activation as ``passes`` A8 passes for :func:`gemm_passes`: 1 -> [quantize_rows(x)],
    2 -> the two passes of :func:`quantize_residual` (A8x2)."""
    if passes == 1:
        return [quantize_rows(x, num=num)]
    if passes == 2:
        return list(quantize_residual(x, num=num))
    raise ValueError(f"quantize_act: passes must be 1 or 2, got {passes}")


def _scaled_weight(w, g):
    """``scale[n, g] * q[n, k]`` as one exact integer matrix (|.| < 2**22), followed by the
    ``offset`` columns [N, K/g] when the weight has offsets; float64, cached on ``w``."""
    cached = getattr(w, "_golden_scaled", None)
    if cached is not None:
        return cached
    N, K = w.q.shape
    s = np.asarray(w.scale, np.float64)
    sw = (np.asarray(w.q, np.float64).reshape(N, K // g, g) * s[:, :, None]).reshape(N, K)
    if w.offset is not None:
        sw = np.concatenate([sw, np.asarray(w.offset, np.float64)], axis=1)
    try:
        object.__setattr__(w, "_golden_scaled", sw)
    except (AttributeError, TypeError):
        pass
    return sw


def gemm_act(a8, a_s: ActScale, b8, b_s: ActScale | None, shift=None, num: Numerics = NUM):
    """A8 times A8 (QKᵀ, P·V), to wide; both operands grouped along the contraction K.

    ``a8`` [T, K] with scales ``a_s`` (groups along K; the last may be partial), ``b8``
    [N, K] with scales ``b_s`` grouped the same way, or None. Per group
    ``acc_g = Σ_{k in g} a8 * b8`` (INT32). Then

    - with ``b_s``: ``Y = Σ_g mant_a[t,g] * mant_b[n,g] * acc_g`` (|Y| < 2**60 · K/16, so
      K <= 128: a head), and
      ``out = rshift_round(Y, F - exp_a[t] - exp_b[n])``: the product of the two wide matrices
      the operands stand for, divided by 2**F;
    - without: ``Y = Σ_g mant_a[t,g] * acc_g`` and ``out = rshift_round(Y, shift - exp_a[t])``
      with a given ``shift`` (P·V: V's per-token scales are folded into P, see
      :func:`attention_head`).
    """
    a8 = np.asarray(a8, np.int64)
    b8 = np.asarray(b8, np.int64)
    K = a8.shape[-1]
    _check_scale(a8, a_s, num, "gemm_act")
    if b8.shape[-1] != K:
        raise ValueError(f"gemm_act: operands {a8.shape} and {b8.shape} differ in K")
    bT = np.swapaxes(b8, -1, -2)
    ea = a_s.exp[..., :, None]
    if b_s is None:
        am = a_s.expand(K)
        bmax = int(np.abs(b8).max(initial=0))
        if K * int(np.abs(a8).max(initial=0)) * 2048 * bmax >= 1 << 53:
            raise ValueError(f"gemm_act: K = {K} beyond the exact 53-bit bound")
        Y = (_exact_matmul(a8 * (am >> 11), bT) << 11) + _exact_matmul(a8 * (am & 2047), bT)
        return saturate(rshift_round(Y, np.asarray(shift, np.int64) - ea))
    _check_scale(b8, b_s, num, "gemm_act")
    if K > 128:
        raise ValueError(f"gemm_act: K = {K} beyond the exact 64-bit bound (128, one head)")
    g = a_s.group
    if b_s.group != g:
        raise ValueError(f"gemm_act: operand groups differ ({g} and {b_s.group})")
    G = a_s.mant.shape[-1]
    pad = [(0, 0)] * (a8.ndim - 1) + [(0, G * g - K)]
    ag = np.pad(a8, pad).reshape(*a8.shape[:-1], G, g)        # [..., T, G, g]
    bg = np.pad(b8, pad[:b8.ndim]).reshape(*b8.shape[:-1], G, g)  # [..., N, G, g]
    acc = _exact_matmul(np.moveaxis(ag, -2, -3), np.moveaxis(bg, -2, -3).swapaxes(-1, -2))
    Y = 0  # Σ_j mant_a * mant_b * acc_j, acc [..., G, T, N]
    for j in range(G):
        Y = Y + (a_s.mant[..., :, j, None] * b_s.mant[..., None, :, j]) * acc[..., j, :, :]
    return saturate(rshift_round(Y, num.frac_bits - ea - b_s.exp[..., None, :]))


# -- attention -------------------------------------------------------------------------------------


def softmax(s, q_pos=None, k_len=None, num: Numerics = NUM):
    """Row softmax of wide scores, to Q.F probabilities (INT32 in [0, 2**F]).

    ``s`` [..., T, S]. With ``q_pos`` (absolute positions of the T query rows), key j is visible to
    row i iff ``j <= q_pos[i]`` (causal mask); masked entries give 0. Per row:

    - ``z = s - max`` over visible keys (z <= 0), ``u = rshift_round(-z * LOG2E, 14)``
      (LOG2E = round(log2(e) * 2**14) = 23637), so 2**(-u / 2**F) = e**z;
    - integer part ``ip = u >> F``, fraction ``f = u & (2**F - 1)``; 2**-f by linear
      interpolation in the 257-entry ``exp2_table`` (Q.15; index ``f >> 8``, weight ``f & 255``);
      ``e = rshift_round(2**-f, ip)`` (0 once ip > 31);
    - ``sum = Σ e`` (>= 2**15: the max entry gives e = 2**15), ``recip = 2**46 // sum`` once
      per row, ``p = rshift_round(e * recip, 30)``.

    Ref: base-2 softmax with shifts and a small exponent table as in ITA (Islamoglu et al.,
    2023) and Softermax (Stevens et al., DAC 2021).
    """
    s = np.asarray(s, np.int64)
    T, S = s.shape[-2:]
    if q_pos is None:
        visible = np.ones((T, S), bool)
    else:
        visible = np.arange(S)[None, :] <= np.asarray(q_pos)[:, None]
    if not visible.any(axis=1).all():
        raise ValueError("softmax: a row sees no key")
    mx = np.max(np.where(visible, s, np.iinfo(np.int64).min), axis=-1, keepdims=True)
    neg = np.minimum(mx - s, (1 << 31) - 1)  # -z, >= 0; clamp far-away (masked) entries
    u = rshift_round(neg * 23637, 14)
    fbits = num.frac_bits
    ip = u >> fbits
    frac = u & ((1 << fbits) - 1)
    seg_bits = int(np.log2(num.exp2_segments))
    idx = frac >> (fbits - seg_bits)
    wgt = frac & ((1 << (fbits - seg_bits)) - 1)
    tab = exp2_table(num)
    e0 = tab[idx]
    e1 = tab[idx + 1]
    frac_e = e0 + rshift_round((e1 - e0) * wgt, fbits - seg_bits)
    e = np.where(ip > 31, 0, rshift_round(frac_e, np.minimum(ip, 31)))
    e = np.where(visible, e, 0)
    total = e.sum(axis=-1, keepdims=True)
    recip = (1 << 46) // total
    return rshift_round(e * recip, 30)


def attention_head(q8, qs: ActScale, k8, ks: ActScale, v8, vs: ActScale, q_pos=None):
    """One attention head (or a stack of heads: leading axes) on A8 operands, to wide [T, d].

    ``q8`` [T, d] (1/sqrt(d) already folded into W_q) and ``k8`` [S, d] in groups along d;
    ``v8`` [S, d] with one scale per token (``quantize_rows(v, group=None)``): the KV cache.
    ``s = gemm_act(q, k)``, ``p = softmax(s, q_pos)``. V's per-token scales cannot factor out
    of Σ_j p_ij v_jd, so they fold into P (in the vector unit, after softmax): with
    ``e_max_i = max_j exp_v[j]`` over the keys row i sees (so a row never depends on masked
    keys: prefill and decode agree bit for bit),
    ``p'_ij = rshift_round(p_ij * mant_v[j], e_max_i - exp_v[j])`` (masked p = 0);
    p' is quantized to A15 in groups of ``act_group`` keys (two INT8 passes of P·V: an INT8 p'
    let an attention sink crush its group's other keys, which flipped SmolLM2's first answer
    token) and ``out = gemm_act(p'15, p's, v8ᵀ, None, shift=F - e_max_i)``.
    """
    if vs.mant.shape[-1] != 1:
        raise ValueError("attention_head: V needs one scale per token (group=None)")
    s = gemm_act(q8, qs, k8, ks)
    p = softmax(s, q_pos)
    pp, e_max = fold_v_scales(p, vs.mant[..., 0], vs.exp, q_pos)
    p15, ps = quantize_rows(pp, bits=15)
    return gemm_act(p15, ps, np.swapaxes(v8, -1, -2), None, shift=F - e_max)


def fold_v_scales(p, v_mant, v_exp, q_pos=None):
    """V's per-token scales folded into probabilities (:func:`attention_head`).

    ``p`` [..., T, S] (Q.F, masked entries 0), ``v_mant`` / ``v_exp`` [..., S] the mantissa
    and exponent of each key's V row. With ``e_max`` [..., T, 1] the largest ``v_exp`` over
    the keys a row sees (``j <= q_pos[i]``; all without ``q_pos``), returns
    ``(rshift_round(p * v_mant, e_max - v_exp), e_max)``: ``p * V`` then equals
    ``p' * v8 * 2**e_max``.
    """
    v_exp = np.asarray(v_exp, np.int64)
    S = v_exp.shape[-1]
    ev = v_exp[..., None, :]  # [..., 1, S]
    if q_pos is not None:  # a row aligns only to the keys it sees
        visible = np.arange(S)[None, :] <= np.asarray(q_pos)[:, None]
        ev = np.where(visible, ev, np.iinfo(np.int64).min)
    e_max = np.max(ev, axis=-1, keepdims=True)  # per row [..., T, 1]
    pp = rshift_round(np.asarray(p, np.int64) * np.asarray(v_mant, np.int64)[..., None, :],
                      np.maximum(e_max - v_exp[..., None, :], -63))
    return pp, e_max


# -- element-wise and row-wise vector operations -------------------------------------------------


def residual_add(a, b):
    """Saturating INT32 add of two wide tensors."""
    return saturate(np.asarray(a, np.int64) + np.asarray(b, np.int64))


def _normalize_rows(c, eps_q32, num: Numerics):
    """Shared core of LayerNorm and RMSNorm: c / sqrt(mean(c²) + eps) in Q.F.

    Per row: ``sh = bitlen(max|c|) - 15``, ``cs = c >> sh`` (|cs| < 2**15);
    ``var = Σ cs² // D`` (< 2**30) ``+ rshift_round(eps_q32, 2*sh)`` (eps in the row's scale,
    eps_q32 = round(eps * 2**(2F))); ``std = isqrt(var << 16)`` (a Q.8 standard deviation,
    bit-serial integer square root); ``inv = 2**40 // std``; ``n = rshift_round(cs * inv, 16)``.
    Ref: I-BERT (Kim et al., ICML 2021) integer-only LayerNorm with an integer square root.
    """
    D = c.shape[-1]
    amax = np.max(np.abs(c), axis=-1)
    sh = np.where(amax == 0, 0, _bitlen(amax) - 15)
    cs = _shift_floor(c, sh[..., None])
    var = (cs * cs).sum(axis=-1) // D
    var = var + rshift_round(np.int64(eps_q32), 2 * sh)
    std = _isqrt(var << 16)
    inv = (1 << 40) // np.maximum(std, 1)
    n = rshift_round(cs * inv[..., None], 16)
    return np.where((std == 0)[..., None], 0, n)


def _isqrt(v):
    """Floor square root of non-negative int64 values below 2**62, exactly."""
    v = np.asarray(v, np.int64)
    r = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    # The float estimate is within one of the truth; settle it with integer compares.
    r = np.where(r * r > v, r - 1, r)
    r = np.where((r + 1) * (r + 1) <= v, r + 1, r)
    return r


def _eps_q32(eps, num):
    return int(round(eps * (1 << (2 * num.frac_bits))))


def layernorm(x, gamma, beta, eps, num: Numerics = NUM):
    """LayerNorm of wide rows, to wide.

    ``mean = Σx // D``, ``c = x - mean``, ``n`` as in :func:`_normalize_rows` (Q.F),
    ``out = saturate32(rshift_round(n * gamma, F) + beta)`` with gamma, beta wide.
    """
    x = np.asarray(x, np.int64)
    D = x.shape[-1]
    mean = x.sum(axis=-1, keepdims=True) // D
    n = _normalize_rows(x - mean, _eps_q32(eps, num), num)
    out = rshift_round(n * np.asarray(gamma, np.int64), num.frac_bits) + np.asarray(beta, np.int64)
    return saturate(out)


def rmsnorm(x, gamma, eps, num: Numerics = NUM):
    """RMSNorm of wide rows, to wide: ``saturate32(rshift_round(n * gamma, F))``."""
    x = np.asarray(x, np.int64)
    n = _normalize_rows(x, _eps_q32(eps, num), num)
    return saturate(rshift_round(n * np.asarray(gamma, np.int64), num.frac_bits))


def pwl(x, table: PwlTable):
    """Evaluate a piecewise-linear table on wide inputs (the LUT unit).

    Inside the range: ``i = (x - lo) >> seg_shift``, ``w = (x - lo) & (2**seg_shift - 1)``,
    ``out = v[i] + rshift_round((v[i+1] - v[i]) * w, seg_shift)``. Below: 0; above: x.
    """
    x = np.asarray(x, np.int64)
    rel = x - table.lo
    inside = (rel >= 0) & (x < table.hi)
    rel_c = np.clip(rel, 0, (table.segments << table.seg_shift) - 1)
    i = rel_c >> table.seg_shift
    w = rel_c & ((1 << table.seg_shift) - 1)
    v0 = table.values[i]
    v1 = table.values[i + 1]
    y = v0 + rshift_round((v1 - v0) * w, table.seg_shift)
    outside = np.where(x >= table.hi, x if table.above == "identity" else 0, 0)
    return saturate(np.where(inside, y, outside))


def gelu(x, num: Numerics = NUM):
    """erf-GELU of wide values through the 512-segment table on [-8, 8)."""
    return pwl(x, gelu_table(num))


def silu_mul(gate, up, num: Numerics = NUM):
    """SwiGLU: ``saturate32(rshift_round(silu(gate) * up, F))``, SiLU from the LUT unit."""
    s = pwl(gate, silu_table(num))
    return saturate(rshift_round(s * np.asarray(up, np.int64), num.frac_bits))


def rope(x, cos, sin, num: Numerics = NUM):
    """RoPE on adjacent pairs (2i, 2i+1) of wide ``x`` [T, H, d] at table rows ``cos/sin`` [T, d/2].

    ``y0 = rshift_round(x0*c - x1*s, F)``, ``y1 = rshift_round(x0*s + x1*c, F)``, saturated;
    cos/sin are Q.F from the model's table (``sw.quantize.rope_table``).
    """
    x = np.asarray(x, np.int64)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c = np.asarray(cos, np.int64)[:, None, :]
    s = np.asarray(sin, np.int64)[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = rshift_round(x0 * c - x1 * s, num.frac_bits)
    out[..., 1::2] = rshift_round(x0 * s + x1 * c, num.frac_bits)
    return saturate(out)


def embed(ids, table, num: Numerics = NUM):
    """Embedding lookup from a grouped INT8 table (``q`` [V, D], ``scale`` [V, D/32],
    ``shift`` [V]) to wide rows: ``rshift_round(scale * q, shift - F)``."""
    ids = np.asarray(ids, np.int64)
    g = num.group
    q = np.asarray(table.q[ids], np.int64)
    V, D = q.shape
    sc = np.asarray(table.scale[ids], np.int64)
    v = (q.reshape(V, D // g, g) * sc[:, :, None]).reshape(V, D)
    if table.offset is not None:
        v = v + np.repeat(np.asarray(table.offset[ids], np.int64), g, axis=1)
    shift = np.asarray(table.shift, np.int64)[ids][:, None]
    return saturate(rshift_round(v, shift - num.frac_bits))

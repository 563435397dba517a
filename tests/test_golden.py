"""Each golden integer op against its float counterpart, within a bound derived from its maths.

Every bound below is computed from the op's documented arithmetic (table spacing, rounding steps,
quantization steps), not picked to pass; the comments say where each term comes from. Random
tests print their seed; replay with GOLDEN_SEED=<seed>.
"""

import math
import os

import numpy as np
import pytest

from hw.luts import gelu_table, silu_table
from hw.params import Numerics
from sim import golden as G
from sw.quantize import dequantize, from_wide, quantize_float, to_wide

LSB = 2.0**-16  # one wide unit
SEED = int(os.environ.get("GOLDEN_SEED", np.random.SeedSequence().entropy % 2**32))


@pytest.fixture
def rng():
    print(f"GOLDEN_SEED={SEED}")
    return np.random.default_rng(SEED)


def _erf_gelu(x):
    return np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in np.ravel(x)]).reshape(
        np.shape(x)
    )


# -- primitives ------------------------------------------------------------------------------------


def test_rshift_round_is_round_half_up():
    v = np.array([5, 6, 7, -5, -6, -7, 0])
    assert G.rshift_round(v, 1).tolist() == [3, 3, 4, -2, -3, -3, 0]  # (v+1)>>1
    assert G.rshift_round(v, 0).tolist() == v.tolist()
    assert G.rshift_round(v, -2).tolist() == (v * 4).tolist()


def test_saturate():
    assert G.saturate([1 << 40, -(1 << 40), 5]).tolist() == [2**31 - 1, -(2**31), 5]
    assert G.saturate([200, -200], 8).tolist() == [127, -128]


# -- dynamic quantization -------------------------------------------------------------------------


def _a8_bound(xw, ga, b=7):
    """Per-group bound of |dequantize(quantize_rows(x)) - x| from the arithmetic: with
    e = bitlen(amax_g) - b, rounding x / 2**e costs half a step 2**(e-1), or up to one step
    when amax_g rounds to 2**b and is clamped (amax_g - Q * 2**e); e <= 0 is an exact shift.
    Groups more than H binades below the row max contribute 0 (error amax_g). Plus the
    dequantization rounding (0.5)."""
    T = xw.shape[0]
    amax_g = np.abs(xw).reshape(T, -1, ga).max(axis=2)
    e = G._bitlen(amax_g) - b
    Q = (1 << b) - 1
    step = np.where(e > 0, np.maximum(2.0 ** (e - 1), amax_g - Q * 2.0**e), 0)
    emax = np.max(np.where(amax_g > 0, e, -(1 << 40)), axis=1, keepdims=True)
    dropped = (amax_g > 0) & (e < emax - G.NUM.act_headroom)
    return np.where(dropped, amax_g, step) + 0.5, amax_g, e


@pytest.mark.parametrize("magnitude", [1e-3, 0.3, 7.0, 3000.0])
def test_quantize_rows_error_bound(rng, magnitude):
    ga = G.NUM.act_group
    # groups spanning six decades inside one row: the outlier-channel case groups are for
    x = rng.normal(size=(64, 96)) * magnitude
    x *= np.repeat(10.0 ** rng.uniform(-6, 0, size=(64, 96 // ga)), ga, axis=1)
    xw = to_wide(x)
    x8, s = G.quantize_rows(xw)
    assert s.mant.shape == (64, 96 // ga) and s.exp.shape == (64,)
    bound, amax_g, e = _a8_bound(xw, ga)
    gmax = np.abs(x8.astype(np.int64)).reshape(64, -1, ga).max(axis=2)
    # each group's largest element lands in [64, 127] (in [2**6, 2**7) times a power of two),
    # unless the group is tiny (|x| < 64: an exact left shift)
    big = amax_g >= 64
    assert ((gmax[big] >= 64) & (gmax[big] <= 127)).all()
    assert ((s.mant == 0) | ((s.mant & (s.mant - 1)) == 0)).all()  # powers of two: shifts
    err = np.abs(G.dequantize_rows(x8, s) - xw).reshape(64, -1, ga).max(axis=2)
    assert (err <= bound).all()


def test_quantize_rows_edges():
    x = np.array([[0, 0, 0], [-(2**31), 2**31 - 1, 0], [1, -1, 0], [5, 0, 0]])
    x8, s = G.quantize_rows(x)
    assert x8[0].tolist() == [0, 0, 0] and s.mant[0].tolist() == [0]
    assert x8[1].tolist() == [-64, 64, 0]  # 2**31 = 64 * 2**25; 2**31 - 1 rounds up to 64
    assert x8[2].tolist() == [64, -64, 0]  # small values: exact left shifts
    assert x8[3].tolist() == [80, 0, 0]
    assert G.dequantize_rows(x8, s)[3, 0] == 5
    with pytest.raises(ValueError, match="2\\*\\*47"):
        G.quantize_rows(np.array([[1 << 48]]))
    x15, s15 = G.quantize_rows(np.array([[(1 << 20) - 1, 3]]), bits=15)
    assert x15.dtype == np.int16 and x15[0].tolist() == [16383, 0]  # rounds to 2**14: clamped


def test_quantize_rows_groups_and_whole_rows():
    row = np.concatenate([np.full(16, 1 << 20), np.full(16, 768), np.zeros(8, np.int64)])[None]
    x8, s = G.quantize_rows(row)  # groups of 16; the last (8 wide) is partial and all zero
    assert s.mant.shape == (1, 3) and s.mant[0, 2] == 0 and x8[0, 32:].tolist() == [0] * 8
    assert (x8[0, :16] == 64).all() and (x8[0, 16:32] == 96).all()  # each group its own scale
    assert (G.dequantize_rows(x8, s)[0, :32] == row[0, :32]).all()  # both exact here
    x8r, sr = G.quantize_rows(row, group=None)  # one scale for the whole row
    assert sr.mant.shape == (1, 1) and (x8r[0, 16:32] == 0).all()


def test_quantize_residual_error_bound(rng):
    """A8x2: the second pass quantizes the first pass's residual r (|r| <= one step of the
    first, 2**e), so its error is at most one step of r's own scale, 2**(e-6), plus the
    dequantization roundings: about amax_g / 2**13 against amax_g / 2**7 for one pass."""
    ga = G.NUM.act_group
    x = rng.normal(size=(32, 64)) * np.repeat(10.0 ** rng.uniform(-3, 2, (32, 64 // ga)), ga, 1)
    xw = to_wide(x)
    (h8, hs), (l8, ls) = G.quantize_residual(xw)
    r = xw - G.dequantize_rows(h8, hs)
    both = G.dequantize_rows(h8, hs) + G.dequantize_rows(l8, ls)
    rbound, _, _ = _a8_bound(r, ga)
    err = np.abs(both - xw).reshape(32, -1, ga).max(axis=2)
    assert (err <= rbound + 0.5).all()
    amax_g = np.abs(xw).reshape(32, -1, ga).max(axis=2)
    assert (err <= amax_g * 2.0**-13 + 1).all()  # what the two passes buy


# -- GEMM ------------------------------------------------------------------------------------------


def _gemm_float_bound(x, w_float, qw, xw, x8, s):
    """|golden - x @ wᵀ| bound: Σ_k |x_k| δw_k + |w_k| δx + δx δw_k, plus output rounding."""
    dx = G.dequantize_rows(x8, s) * LSB - x  # actual activation quantization error
    dw = dequantize(qw) - w_float  # actual weight quantization error
    return (np.abs(x) @ np.abs(dw).T + np.abs(dx) @ np.abs(w_float).T
            + np.abs(dx) @ np.abs(dw).T + 2 * LSB)


@pytest.mark.parametrize("bits", [8, 4])
def test_gemm_vs_float(rng, bits):
    T, K, N = 9, 96, 40
    x = rng.normal(size=(T, K)) * 2
    w = rng.normal(size=(N, K)) * 0.1
    b = rng.normal(size=N)
    qw = quantize_float(w, bits=bits)
    xw = to_wide(x)
    x8, s = G.quantize_rows(xw)
    y = from_wide(G.gemm(x8, s, qw, bias=to_wide(b)))
    # The integer path computes exactly with the dequantized operands; errors vs float come only
    # from quantizing x and w (+ wide rounding of the input, bias and output).
    xq = from_wide(xw)
    bound = _gemm_float_bound(xq, w, qw, xw, x8, s) + np.abs(w).sum(1) * LSB
    assert (np.abs(y - (x @ w.T + b)) <= bound).all()


def test_gemm_passes_is_the_sum_of_passes(rng):
    qw = quantize_float(rng.normal(size=(8, 64)), bits=4)
    xw = to_wide(rng.normal(size=(3, 64)) * 5)
    (h8, hs), (l8, ls) = G.quantize_residual(xw)
    b = to_wide(rng.normal(size=8))
    want = G.saturate(G.gemm(h8, hs, qw, b) + G.gemm(l8, ls, qw))
    assert np.array_equal(G.gemm_passes([(h8, hs), (l8, ls)], qw, b), want)
    assert np.array_equal(G.gemm_passes(G.quantize_act(xw, 1), qw, b),
                          G.gemm(*G.quantize_rows(xw), qw, b))
    # two passes are closer to the float product than one
    wf = dequantize(qw)
    exact = from_wide(xw) @ wf.T + from_wide(b)
    e1 = np.abs(from_wide(G.gemm(h8, hs, qw, b)) - exact).max()
    e2 = np.abs(from_wide(want) - exact).max()
    assert e2 < e1


def test_gemm_matches_exact_rational():
    """The documented arithmetic, evaluated with Python integers, on a small case."""
    rng = np.random.default_rng(1)
    K, N, ga = 64, 3, G.NUM.act_group
    x8 = rng.integers(-127, 128, size=(2, K)).astype(np.int8)
    s = G.ActScale(rng.integers(0, 1 << 21, size=(2, K // ga)), np.array([-5, 3]), ga)
    qw = quantize_float(rng.normal(size=(N, K)), bits=4)
    qw = type(qw)(qw.q, qw.scale, (qw.scale // 3).astype(np.int16), qw.shift, 4)
    out = G.gemm(x8, s, qw)
    for t in range(2):
        for n in range(N):
            Y = 0
            for h in range(K // ga):
                ks = range(ga * h, ga * h + ga)
                acc = sum(int(x8[t, k]) * int(qw.q[n, k]) for k in ks)
                xs = sum(int(x8[t, k]) for k in ks)
                g = h * ga // 32
                Y += int(s.mant[t, h]) * (int(qw.scale[n, g]) * acc + int(qw.offset[n, g]) * xs)
            sh = int(qw.shift[n]) - int(s.exp[t])
            ref = (Y + (1 << (sh - 1))) >> sh if sh > 0 else Y << -sh
            assert out[t, n] == max(min(ref, 2**31 - 1), -(2**31))


def test_gemm_act_matches_exact_rational():
    rng = np.random.default_rng(2)
    T, N, K, ga = 3, 4, 40, G.NUM.act_group  # K not a multiple of the group: last one partial
    a8 = rng.integers(-127, 128, size=(T, K))
    b8 = rng.integers(-127, 128, size=(N, K))
    G_ = -(-K // ga)
    sa = G.ActScale(rng.integers(0, 1 << 21, size=(T, G_)), rng.integers(-20, 5, size=T), ga)
    sb = G.ActScale(rng.integers(0, 1 << 21, size=(N, G_)), rng.integers(-20, 5, size=N), ga)
    out = G.gemm_act(a8, sa, b8, sb)
    out2 = G.gemm_act(a8, sa, b8, None, shift=7)
    for t in range(T):
        for n in range(N):
            Y = Y2 = 0
            for h in range(G_):
                acc = sum(int(a8[t, k]) * int(b8[n, k]) for k in range(ga * h, min(K, ga * h + ga)))
                Y += int(sa.mant[t, h]) * int(sb.mant[n, h]) * acc
                Y2 += int(sa.mant[t, h]) * acc
            for y, sh, got in ((Y, 16 - int(sa.exp[t]) - int(sb.exp[n]), out[t, n]),
                               (Y2, 7 - int(sa.exp[t]), out2[t, n])):
                ref = (y + (1 << (sh - 1))) >> sh if sh > 0 else y << -sh
                assert got == max(min(ref, 2**31 - 1), -(2**31))


def test_gemm_extremes_saturate():
    K, N = 2048, 2
    x8 = np.full((1, K), -127, np.int8)
    ga = G.NUM.act_group
    s = G.ActScale(np.full((1, K // ga), (1 << 21) - 1), np.array([30]), ga)
    qw = quantize_float(np.ones((N, K)))
    assert G.gemm(x8, s, qw).tolist() == [[-(2**31), -(2**31)]]


def test_gemm_rejects_mismatched_scales():
    x8 = np.zeros((2, 64), np.int8)
    qw = quantize_float(np.ones((3, 64)))
    with pytest.raises(ValueError, match="activation scales"):
        G.gemm(x8, G.ActScale(np.zeros((2, 1), np.int64), np.zeros(2, np.int64), 64), qw)
    with pytest.raises(ValueError, match="weight is"):
        G.gemm(np.zeros((2, 32), np.int8), G.quantize_rows(np.zeros((2, 32)))[1], qw)


def test_gemm_act_vs_float(rng):
    a = rng.normal(size=(5, 64)) * 3
    b = rng.normal(size=(7, 64)) * 0.5
    a8, sa = G.quantize_rows(to_wide(a))
    b8, sb = G.quantize_rows(to_wide(b))
    ad = G.dequantize_rows(a8, sa) * LSB
    bd = G.dequantize_rows(b8, sb) * LSB
    y = from_wide(G.gemm_act(a8, sa, b8, sb))
    # the dequantize_rows rounding of each operand (0.5 LSB) and the output rounding
    bound = (np.abs(ad).sum(1)[:, None] + np.abs(bd).sum(1)[None, :]) * LSB / 2 + LSB
    assert (np.abs(y - ad @ bd.T) <= bound).all()


# -- softmax ---------------------------------------------------------------------------------------


def _softmax_bound(z, p_true, visible):
    """Derived from the arithmetic of golden.softmax (all in Q.15 units of e, 2**15 = 1):

    relative error of one e: LOG2E rounding 4.9e-6·|z|, u rounding ln2·2**-17, table entry and
    interpolation roundings 2 x 0.5/2**14 (2**-f >= 1/2), interpolation 0.48·(1/256)²/8;
    absolute: 0.5 for the final shift. Then p = e / Σe, the reciprocal's floor (2**-19) and
    the output rounding (half an LSB).
    """
    e_true = np.where(visible, np.exp(z) * 2**15, 0)
    rel = 4.9e-6 * np.abs(z) + math.log(2) * 2**-17 + 2 * 0.5 / 2**14 + 0.48 / 256**2 / 8
    E = np.where(visible, e_true * rel + 0.5, 0)
    S = e_true.sum(1, keepdims=True)
    Es = E.sum(1, keepdims=True)
    return (E + p_true * Es) / (S - Es) + p_true * 2**-19 + LSB


@pytest.mark.parametrize("spread", [0.1, 3.0, 30.0])
def test_softmax_vs_float(rng, spread):
    T, S = 6, 40
    sc = rng.normal(size=(T, S)) * spread
    sw = to_wide(sc)
    q_pos = np.array([0, 3, 10, 20, 39, 39])
    visible = np.arange(S)[None, :] <= q_pos[:, None]
    scq = from_wide(sw)
    mx = np.where(visible, scq, -np.inf).max(1, keepdims=True)
    z = np.where(visible, scq - mx, 0)
    e = np.where(visible, np.exp(z), 0)
    p_true = e / e.sum(1, keepdims=True)
    p = from_wide(G.softmax(sw, q_pos))
    assert (p[~visible] == 0).all()
    assert (np.abs(p - p_true) <= _softmax_bound(z, p_true, visible)).all()


def test_softmax_adversarial_rows():
    rows = np.array([
        [0] * 8,                              # all equal
        [1 << 30] + [0] * 7,                   # one huge outlier
        [-(2**31)] * 8,                        # all at the minimum
        [2**31 - 1, -(2**31)] + [0] * 6,       # full range
    ])
    p = G.softmax(rows)
    assert p[0].tolist() == [8192] * 8
    assert p[1].tolist() == [65536] + [0] * 7
    assert p[2].tolist() == [8192] * 8
    assert p[3, 0] == 65536 and (p[3, 1:] == 0).all()
    with pytest.raises(ValueError, match="no key"):
        G.softmax(rows[:1], q_pos=[-1])


# -- norms -----------------------------------------------------------------------------------------


def _norm_bound(x, gamma, n_true, D):
    """LayerNorm / RMSNorm error, derived from golden._normalize_rows.

    c is exact up to the mean's floor (1 wide unit); cs = c >> sh loses < 2**sh; so the centred
    row is off by < 1 + 2**sh wide units per element, i.e. δn <= (1 + 2**sh)/σ (σ in wide units)
    plus |n|·(relative error of σ: var floor 1/var, isqrt floor 2**-16, inv floor 2**-17) plus
    the rounding of n (2**-17). Then y = n·γ rounds γ (|n|·2**-17) and itself (2**-17), β (2**-17).
    """
    xw = to_wide(x).astype(np.float64)
    amax = np.abs(xw - xw.mean(1, keepdims=True)).max(1, keepdims=True)
    sh = np.maximum(np.floor(np.log2(np.maximum(amax, 1))) + 1 - 15, 0)
    sigma = np.maximum(np.abs(xw).std(1, keepdims=True), 1)
    dn = (1 + 2.0**sh) / sigma * 2 + np.abs(n_true) * (2**-15 + 2**-16 + 2**-17) + 2**-17
    return np.abs(gamma) * dn + np.abs(n_true) * 2**-17 + 3 * 2**-17


@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (0.01, 0.5), (40.0, -300.0)])
def test_layernorm_vs_float(rng, scale, offset):
    D = 384
    x = rng.normal(size=(8, D)) * scale + offset
    gamma = rng.normal(size=D)
    beta = rng.normal(size=D)
    xq = from_wide(to_wide(x))
    n_true = (xq - xq.mean(1, keepdims=True)) / np.sqrt(xq.var(1, keepdims=True) + 1e-12)
    ref = n_true * gamma + beta
    y = from_wide(G.layernorm(to_wide(x), to_wide(gamma), to_wide(beta), 1e-12))
    assert (np.abs(y - ref) <= _norm_bound(x, gamma, n_true, D)).all()


@pytest.mark.parametrize("scale", [1e-3, 1.0, 200.0])
def test_rmsnorm_vs_float(rng, scale):
    D = 576
    x = rng.normal(size=(8, D)) * scale
    gamma = rng.normal(size=D)
    xq = from_wide(to_wide(x))
    n_true = xq / np.sqrt((xq * xq).mean(1, keepdims=True) + 1e-5)
    y = from_wide(G.rmsnorm(to_wide(x), to_wide(gamma), 1e-5))
    # eps enters in the row's scale, rounded: a relative error of eps·2**-16/mean(x²) on σ²
    bound = _norm_bound(x, gamma, n_true, D) * (1 + 1e-5 / (xq * xq).mean(1, keepdims=True))
    assert (np.abs(y - gamma * n_true) <= bound).all()


def test_norm_constant_row():
    x = np.full((2, 16), 12345)
    assert (G.layernorm(x, to_wide(np.ones(16)), to_wide(np.full(16, 0.5)), 1e-12) == 32768).all()
    assert (G.rmsnorm(np.zeros((1, 16)), to_wide(np.ones(16)), 1e-5) == 0).all()


# -- element-wise units ----------------------------------------------------------------------------


def _pwl_bound(table, f2max, tail):
    h = (1 << table.seg_shift) * LSB
    # interpolation h²/8·max|f''|, + table entry rounding and the interpolation rounding
    return h * h / 8 * f2max + LSB + tail


def test_gelu_exhaustive_over_int8_codes_and_range():
    # every INT8 code at a few scales a GELU input takes, plus a dense sweep past the table ends
    codes = np.arange(-128, 128)
    xs = np.concatenate([codes / 16.0, codes / 4.0, codes / 1.0, np.linspace(-12, 12, 20001)])
    xw = to_wide(xs)
    y = from_wide(G.gelu(xw))
    ref = _erf_gelu(from_wide(xw))
    # GELU'' = φ(x)(2 - x²), max 2φ(0) = 0.798; tails: |GELU(-8)|, 8 - GELU(8) < 1e-14
    assert np.abs(y - ref).max() <= _pwl_bound(gelu_table(), 0.798, 1e-14)


def test_silu_mul_vs_float(rng):
    g = np.concatenate([np.arange(-128, 128) / 8.0, np.linspace(-24, 24, 20001)])
    u = rng.normal(size=g.size) * 3
    gw, uw = to_wide(g), to_wide(u)
    gq, uq = from_wide(gw), from_wide(uw)
    silu = gq / (1 + np.exp(-gq))
    y = from_wide(G.silu_mul(gw, uw))
    # SiLU'' max 0.5 (at 0); tails |SiLU(-16)|, 16 - SiLU(16) < 2e-6; then the product rounding
    bound = np.abs(uq) * _pwl_bound(silu_table(), 0.5, 2e-6) + LSB
    assert (np.abs(y - silu * uq) <= bound).all()


def test_residual_add_saturates():
    assert G.residual_add([2**31 - 1, -5], [10, -(2**31)]).tolist() == [2**31 - 1, -(2**31)]


def test_rope_vs_float(rng):
    from sw.quantize import rope_table

    T, H, d = 5, 3, 64
    pos = np.array([0, 1, 7, 100, 8000])
    x = rng.normal(size=(T, H, d)) * 4
    cos, sin = rope_table(100000.0, d, 8192)
    y = from_wide(G.rope(to_wide(x), cos[pos], sin[pos]))
    xq = from_wide(to_wide(x))
    ang = pos[:, None] * 100000.0 ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    ref = np.empty_like(xq)
    ref[..., 0::2] = xq[..., 0::2] * c - xq[..., 1::2] * s
    ref[..., 1::2] = xq[..., 0::2] * s + xq[..., 1::2] * c
    # cos/sin rounded to half an LSB each, then the output rounding
    bound = (np.abs(xq[..., 0::2]) + np.abs(xq[..., 1::2])) * LSB / 2 + LSB / 2
    assert (np.abs(y[..., 0::2] - ref[..., 0::2]) <= bound).all()
    assert (np.abs(y[..., 1::2] - ref[..., 1::2]) <= bound).all()


def test_embed_is_the_dequantized_row():
    rng = np.random.default_rng(3)
    table = quantize_float(rng.normal(size=(50, 64)))
    ids = [3, 0, 49, 3]
    y = from_wide(G.embed(ids, table))
    assert np.abs(y - dequantize(table)[ids]).max() <= LSB / 2


# -- attention -------------------------------------------------------------------------------------


def test_attention_head_vs_float(rng):
    T, S, d = 4, 24, 64
    q = rng.normal(size=(T, d)) / 8
    k = rng.normal(size=(S, d)) * 2
    v = rng.normal(size=(S, d)) * rng.uniform(0.01, 10, size=(S, 1))  # very different row scales
    q8, qs = G.quantize_rows(to_wide(q))
    k8, ks = G.quantize_rows(to_wide(k))
    v8, vs = G.quantize_rows(to_wide(v), group=None)  # V: one scale per token
    qd, kd, vd = (G.dequantize_rows(a, b) * LSB for a, b in ((q8, qs), (k8, ks), (v8, vs)))
    q_pos = np.array([5, 10, 20, 23])
    visible = np.arange(S)[None, :] <= q_pos[:, None]
    sc = np.where(visible, qd @ kd.T, -np.inf)
    e = np.exp(sc - sc.max(1, keepdims=True))
    p_true = e / e.sum(1, keepdims=True)
    out = from_wide(G.attention_head(q8, qs, k8, ks, v8, vs, q_pos))
    # scores round to an LSB (+ operand dequantization rounding): a relative error on e of
    # δs; softmax adds its own (bound above); p' = p·scale_v is quantized per row to INT8 (half a
    # step of max|p'|, relative to each term's |v|); the output rounds once more.
    ds = (np.abs(qd).sum(1)[:, None] + np.abs(kd).sum(1)[None, :]) * LSB / 2 + LSB
    z = np.where(visible, sc - sc.max(1, keepdims=True), 0)
    dp = _softmax_bound(z, p_true, visible) + p_true * 2 * ds.max()
    # p'_j = p_j·amax_v_j (up to a common factor) is quantized to A15 in groups of act_group
    # keys, with a step of at most (max of p' over j's group) / 2**13; seen through v_j that is
    # an error of at most (max p' in j's group / 2**13) / amax_v_j · |v_jd| per key, plus the
    # p' rounding (2**-16 of a Q.16 probability, relative) and the output rounding.
    ga = G.NUM.act_group
    amax_v = np.abs(vd).max(1)
    pp = p_true * amax_v[None, :]
    pad = -S % ga
    pp_grp = np.pad(pp, ((0, 0), (0, pad))).reshape(T, -1, ga).max(2)
    pp_grp = np.repeat(pp_grp, ga, axis=1)[:, :S]  # per key: the max of its group
    n_vis = visible.sum(1, keepdims=True)
    bound = (dp[:, :, None] * np.abs(vd)[None, :, :]).sum(1)
    bound = bound + ((visible * pp_grp / 2**13 * (1 + 2**-13))[:, :, None]
                     * (np.abs(vd) / amax_v[:, None])[None]).sum(1)
    bound = bound + n_vis * amax_v.max() * 2**-16 + LSB
    assert (np.abs(out - p_true @ vd) <= bound).all()


def test_numerics_validation():
    with pytest.raises(ValueError, match="frac_bits"):
        Numerics(frac_bits=40)

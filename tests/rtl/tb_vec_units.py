# amaranth: UnusedElaboratable=no
# (components are built here for their port layouts and constants, not elaborated)
"""cocotb tests of the vector unit's components (``hw/vector``) on their Verilog, bit-exact
against ``sim.golden``.

Run from ``tests/test_vector_rtl.py`` through ``sim.rtl.run_cocotb``: one Verilator build per
component, and per build the cocotb tests below whose name starts with the build's prefix
(``add_``, ``pwl_``, ``rope_``, ``quant_``, ``norm_``, ``softmax_``, ``div_``, ``isqrt_``).
Each test streams all its beats through one :class:`tests.rtl.tb_vec_stream.StreamBench`
run (random valid gaps on every input stream, random back-pressure bursts on the output),
then compares every output with the golden function. The stimulus and scoreboards of the
row units are those of ``tests/test_vector.py`` (imported, not copied); the element-wise
sweeps are defined here, each test's docstring says what "exhaustive" covers.

Parameters (environment, set by the pytest side):

``VEC_SEED``
    Seed of everything random (stimulus and timing); replay with
    ``VEC_SEED=<seed> pytest tests/test_vector_rtl.py``.
``VEC_STALL``
    Probability of an idle cycle before each input beat, and per cycle of a ready drop
    (bursts up to ``VEC_BURST`` cycles, default 24: longer than any output FIFO).
``VEC_SLOW``
    1: the long sweeps (``make test-slow``); 0: the default suite's subset.
"""

import os
import zlib

import cocotb
import numpy as np

from hw.luts import gelu_table, silu_table
from hw.params import ChipParams
from hw.vector import (
    Normalizer,
    PwlFn,
    PwlUnit,
    Quantizer,
    ResidualAdd,
    Rope,
    SerialDivider,
    SerialIsqrt,
    Softmax,
)
from hw.vector.engine import FOLD_BITS
from hw.vector.quant import EXP_BITS
from sim import golden as G
from tests.rtl.tb_vec_stream import StreamBench, pack_beats, unpack_beats
from tests.test_vector import (
    EPS_MAX,
    _beats,
    _check_norm,
    _check_quant,
    _check_softmax,
    _eps_rounding_rows,
    _norm_rows,
    _pwl_points,
    _quant_rows,
    _softmax_rows,
    to_q16,
)

P = ChipParams()
L = P.vector_lanes
F = G.NUM.frac_bits
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
#: The chip's row capacity (``hw.vector.engine``: ``max_beats = ceil(vector_row / lanes)``).
MAX_BEATS = -(-P.vector_row // L)
MAX_ROW = MAX_BEATS * L
INT8 = np.arange(-128, 128, dtype=np.int64)

SEED = int(os.environ.get("VEC_SEED", "1"))
STALL = float(os.environ.get("VEC_STALL", "0.3"))
BURST = int(os.environ.get("VEC_BURST", "24"))
SLOW = os.environ.get("VEC_SLOW", "0") not in ("", "0")


def rng_for(name: str) -> np.random.Generator:
    """Stimulus per test from (seed, test name): each test replays on its own."""
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


def ports(component):
    """{port: payload layout} of a component's stream ports."""
    return {name: m.signature.members["payload"].shape
            for name, m in component.signature.members.items() if m.is_signature}


async def bench(dut, name, inputs, outputs, stall=STALL) -> StreamBench:
    tb = StreamBench(dut, inputs, outputs, seed=(SEED + zlib.crc32(name.encode())) % 2**32,
                     stall=stall, backpressure=stall, burst=BURST,
                     replay=f"(VEC_SEED={SEED}, {name})")
    await tb.reset()
    dut._log.info(f"{name}: VEC_SEED={SEED} stall={stall} burst={BURST} slow={SLOW}")
    return tb


def first_mismatch(got, want, *inputs) -> str:
    """A failure message naming the first differing element and its inputs."""
    got, want = np.asarray(got), np.asarray(want)
    bad = np.argwhere(got != want)
    if not bad.size:
        return ""
    i = tuple(int(k) for k in bad[0])
    ins = ", ".join(f"{np.asarray(a)[i]}" for a in inputs)
    return (f"{len(bad)} elements differ; first at {i}: inputs ({ins}): got {got[i]}, "
            f"golden {want[i]}")


async def stream_elementwise(dut, name, component, fields: dict, want, *inputs,
                             throughput: bool = True):
    """One run with stalls over all beats of ``fields`` (``i_beat`` leaves, [n, lanes]),
    then (``throughput``) a stall-free run of the first 256 beats: one beat per cycle, the
    first output ``LATENCY`` cycles after the first input. Outputs vs ``want`` [n, lanes]."""
    lay = ports(component)
    words = pack_beats(lay["i_beat"], fields)
    tb = await bench(dut, name, ["i_beat"], ["o_beat"])
    got = await tb.run({"i_beat": words}, {"o_beat": len(words)}, name)
    out = unpack_beats(lay["o_beat"], got["o_beat"])[""]
    msg = first_mismatch(out, want, *inputs)
    assert not msg, f"{name}: {msg} {tb.replay}"
    dut._log.info(f"{name}: {len(words)} beats ({want.size} elements) bit-exact in "
                  f"{tb.cycles} cycles with stalls")
    if throughput:
        tb.stall = tb.backpressure = 0.0
        n = min(256, len(words))
        got = await tb.run({"i_beat": words[:n]}, {"o_beat": n}, f"{name} (no stalls)")
        ti, to = np.array(tb.when["i_beat"]), np.array(tb.when["o_beat"])
        assert (np.diff(ti) == 1).all() and (np.diff(to) == 1).all(), \
            f"{name}: not one beat per cycle without stalls {tb.replay}"
        assert to[0] - ti[0] == component.LATENCY, \
            f"{name}: latency {to[0] - ti[0]}, docstring {component.LATENCY} {tb.replay}"
        out = unpack_beats(lay["o_beat"], got["o_beat"])[""]
        assert np.array_equal(out, want[:n]), f"{name} (no stalls): output differs {tb.replay}"


# -- ResidualAdd ---------------------------------------------------------------------------------


@cocotb.test()
async def add_exhaustive(dut):
    """``golden.residual_add``: every pair (a, b) of INT8 values twice, as small wide values
    (exact sums) and in the top byte of INT32 (``a << 24`` plus random low bits: the sums
    cover -2**32 .. 2**32, saturating at both ends); every pair of the INT32 range ends;
    random pairs. Then one beat per cycle, latency as stated."""
    rng = rng_for("add_exhaustive")
    a, b = (x.ravel() for x in np.meshgrid(INT8, INT8))
    low = rng.integers(0, 1 << 24, (2, a.size))
    ends = np.array([I32_MIN, I32_MIN + 1, -(1 << 30), -1, 0, 1, 1 << 30, I32_MAX - 1,
                     I32_MAX])
    ea, eb = (x.ravel() for x in np.meshgrid(ends, ends))
    n_rand = 16 * L * (8 if SLOW else 1)
    av = np.concatenate([a, (a << 24) | low[0], ea, rng.integers(I32_MIN, I32_MAX, n_rand,
                                                                  endpoint=True)])
    bv = np.concatenate([b, (b << 24) | low[1], eb, rng.integers(I32_MIN, I32_MAX, n_rand,
                                                                  endpoint=True)])
    A, B = _beats(av), _beats(bv)
    want = G.residual_add(A, B)
    assert (want == I32_MAX).any() and (want == I32_MIN).any()
    await stream_elementwise(dut, "add_exhaustive", ResidualAdd(P), {"a": A, "b": B}, want,
                             A, B)


# -- PwlUnit: GELU and SiLU·mul ------------------------------------------------------------------


def pwl_inputs(rng, slow: bool):
    """(fn, x [n, L], up [n, L]) beats. Exhaustive here means every value the golden table
    index ``i = (x - lo) >> seg_shift`` takes (every segment of both tables, at offsets 0, 1,
    half - 1, half, half + 1, last and one random: ``tests.test_vector._pwl_points``), every
    offset of the first, last, steepest and the two middle segments (all interpolation
    rounding cases there), every INT8 value both as a raw wide value and as an integer
    (``k << F``), the range ends and beyond, the INT32 ends; ``up`` of SiLU·mul over the
    whole INT32 range and its ends (saturating products). ``slow``: every input inside
    both tables' ranges (3.1 M values)."""
    beats = []
    for fn, table in ((PwlFn.GELU, gelu_table()), (PwlFn.SILU_MUL, silu_table())):
        w = 1 << table.seg_shift
        if slow:
            xs = np.arange(table.lo, table.hi)
        else:
            rise = np.abs(np.diff(table.values))
            segs = sorted({0, table.segments - 1, int(np.argmax(rise)),
                           table.segments // 2 - 1, table.segments // 2})
            xs = np.concatenate([table.lo + s * w + np.arange(w) for s in segs])
        xs = np.concatenate([_pwl_points(table, rng), xs, INT8, INT8 << F])
        x = _beats(xs)
        up = rng.integers(I32_MIN, I32_MAX, x.shape, endpoint=True)
        ends = np.array([I32_MIN, I32_MAX, -1, 0, 1, 1 << F, -(1 << F)])
        pick = rng.random(x.shape) < 0.2
        up[pick] = rng.choice(ends, pick.sum())
        beats.append((np.full(len(x), fn.value), x, up))
    fn, x, up = (np.concatenate(v) for v in zip(*beats, strict=True))
    order = rng.permutation(len(fn))  # GELU and SiLU·mul beats interleaved
    return fn[order], x[order], up[order]


@cocotb.test()
async def pwl_exhaustive(dut):
    """``golden.gelu`` and ``golden.silu_mul`` over :func:`pwl_inputs`, the two functions'
    beats interleaved; then one beat per cycle, latency as stated."""
    rng = rng_for("pwl_exhaustive")
    fn, x, up = pwl_inputs(rng, SLOW)
    gelu = fn == PwlFn.GELU.value
    want = np.where(gelu[:, None], G.gelu(x), G.silu_mul(x, up))
    await stream_elementwise(dut, "pwl_exhaustive", PwlUnit(P), {"fn": fn, "x": x, "up": up},
                             want, x, up, np.broadcast_to(fn[:, None], x.shape))


# -- Rope --------------------------------------------------------------------------------------


@cocotb.test()
async def rope_exhaustive(dut):
    """``golden.rope``: every pair (x0, x1) of INT8 values twice, as small wide values (the
    rounding of ``x0 c - x1 s`` by F) and in the top byte of INT32 with random low bits (the
    rotated values reach 2**32: saturation at both ends), each pair at a random angle or at
    the table's ends (cos, sin in {-1, -1 + ulp, 0, ulp, 1 - ulp, 1}, independently); then
    random wide pairs. ``slow``: the small pairs at 8 angles each."""
    rng = rng_for("rope_exhaustive")
    one = 1 << F
    a, b = (v.ravel() for v in np.meshgrid(INT8, INT8))
    low = rng.integers(0, 1 << 24, (2, a.size))
    reps = 8 if SLOW else 1
    x0 = np.concatenate([np.tile(a, reps), (a << 24) | low[0],
                         rng.integers(I32_MIN, I32_MAX, 64 * L, endpoint=True)])
    x1 = np.concatenate([np.tile(b, reps), (b << 24) | low[1],
                         rng.integers(I32_MIN, I32_MAX, 64 * L, endpoint=True)])
    ang = rng.uniform(-np.pi, np.pi, x0.size)
    cos = np.round(np.cos(ang) * one).astype(np.int64)
    sin = np.round(np.sin(ang) * one).astype(np.int64)
    ends = np.array([-one, -one + 1, -1, 0, 1, one - 1, one])
    pick = rng.random(x0.size) < 0.25
    cos[pick] = rng.choice(ends, pick.sum())
    sin[pick] = rng.choice(ends, pick.sum())
    x = np.stack([x0, x1], axis=1).reshape(-1)
    X = _beats(x)
    C, S = _beats(cos, lanes=L // 2), _beats(sin, lanes=L // 2)
    want = G.rope(X[:, None, :], C, S)[:, 0, :]
    assert (want == I32_MAX).any() and (want == I32_MIN).any()
    await stream_elementwise(dut, "rope_exhaustive", Rope(P), {"x": X, "cos": C, "sin": S},
                             want, X)


# -- Quantizer ---------------------------------------------------------------------------------

#: The quantizer as the chip's vector unit instantiates its first one (``hw.vector.engine``):
#: the vfold width, the input values passed through for A8X2's residual, vfold's e_max as
#: side data.
def quantizer():
    from amaranth.hdl import signed

    return Quantizer(P, max_beats=MAX_BEATS, data_bits=FOLD_BITS, pass_x=True,
                     side=signed(EXP_BITS))


def quant_code_rows(a15: bool, exps) -> list:
    """Rows that sweep the per-element path of ``golden.quantize_rows``: for each group
    exponent ``e`` in ``exps``, every output code q in [-Q, Q] at ``x = q 2**e + d`` with
    ``d`` in {0, ±(2**(e-1) - 1), ±2**(e-1)} (exact values, both sides of every rounding
    tie, the ties themselves, and the clamp of 127.5 to 127), or for e <= 0 every integer
    with ``|x| < 2**(b + e)`` (a left shift); each group of 16 holds one element of magnitude
    ``2**(b + e) - 1`` so every group (and the row) has exponent ``e``. Rows of at most the
    longest row."""
    b = 14 if a15 else 7
    Q = (1 << b) - 1
    rows = []
    for e in exps:
        top = (1 << (b + e)) - 1
        if e <= 0:
            vals = np.arange(-top, top + 1, dtype=np.int64)
        else:
            h = 1 << (e - 1)
            ds = np.unique([0, h, -h, h - 1, 1 - h])
            vals = ((np.arange(-Q, Q + 1, dtype=np.int64) << e)[:, None] + ds).ravel()
            vals = vals[np.abs(vals) <= top]
        per = 15
        n = -(-len(vals) // per)
        vals = np.pad(vals, (0, n * per - len(vals)))
        pins = np.where(np.arange(n) % 2, -top, top)
        groups = np.concatenate([pins[:, None], vals.reshape(n, per)], axis=1).ravel()
        step = MAX_ROW // 16 * 16
        rows += [groups[i:i + step] for i in range(0, len(groups), step)]
    return rows


def quant_cases(rng, slow: bool) -> list:
    """(row, a15, per_row) cases: ``tests.test_vector._quant_rows`` (adversarial and random
    rows, half the mode combinations each), the per-element sweeps of
    :func:`quant_code_rows` in grouped and per-row mode (INT8 at every exponent the input
    width allows; A15 at e = 0, 3 and the top one, ``slow``: at every fourth exponent too),
    rows at the ends of the input width (all at its minimum, one huge outlier over tiny values), the
    longest row, and lengths that are not a multiple of the lane count."""
    lo, hi = -(1 << (FOLD_BITS - 1)), (1 << (FOLD_BITS - 1)) - 1
    emax8 = FOLD_BITS - 1 - 7
    cases = list(_quant_rows(rng))
    for k, r in enumerate(quant_code_rows(False, range(-6, emax8 + 1))):
        cases.append((r, 0, k % 2))
    top15 = FOLD_BITS - 1 - 14
    a15_exps = [0, 3, top15] + (list(range(-13, top15, 4)) if slow else [])
    for k, r in enumerate(quant_code_rows(True, a15_exps)):
        cases.append((r, 1, k % 2))
    for a15 in (0, 1):
        for per_row in (0, 1):
            cases += [
                (np.full(MAX_ROW, lo), a15, per_row),                    # all at the minimum
                (np.r_[rng.integers(-3, 4, MAX_ROW - 1), hi], a15, per_row),  # one outlier
                (np.round(rng.normal(size=MAX_ROW) * 2.0 ** rng.uniform(0, 35)).clip(lo, hi),
                 a15, per_row),                                          # the longest row
                (rng.integers(lo, hi, int(rng.integers(1, MAX_ROW)), endpoint=True), a15,
                 per_row),
            ]
    n_rand = 200 if slow else 24
    for _ in range(n_rand):
        n = int(rng.integers(1, MAX_ROW + 1))
        mag = np.repeat(2.0 ** rng.uniform(0, 36, -(-n // 16)), 16)[:n]
        r = np.round(rng.normal(size=n) * mag).clip(lo, hi)
        cases.append((r, int(rng.integers(2)), int(rng.integers(2))))
    return [(np.asarray(r, np.int64), a15, pr) for r, a15, pr in cases]


@cocotb.test()
async def quant_rows(dut):
    """``golden.quantize_rows`` on :func:`quant_cases`, rows back to back with stalls; the
    padding lanes of each row's last beat hold garbage (masked: checked through ``x``, which
    must carry each beat's input with padding 0) and every beat carries side data that must
    come out unchanged."""
    rng = rng_for("quant_rows")
    cases = quant_cases(rng, SLOW)
    dut_model = quantizer()
    lay = ports(dut_model)
    data, last, count, a15, per_row = [], [], [], [], []
    for r, q15, pr in cases:
        bt = _beats(r)
        pad = bt.size - len(r)
        if pad:
            bt[-1, L - pad:] = rng.integers(-(1 << (FOLD_BITS - 1)), 1 << (FOLD_BITS - 1), pad)
        data.append(bt)
        last.append(np.arange(len(bt)) == len(bt) - 1)
        count.append(np.full(len(bt), len(r)))
        a15.append(np.full(len(bt), q15))
        per_row.append(np.full(len(bt), pr))
    data = np.concatenate(data)
    side = rng.integers(-(1 << (EXP_BITS - 1)), 1 << (EXP_BITS - 1), len(data))
    words = pack_beats(lay["i_beat"], {"data": data, "last": np.concatenate(last),
                                       "count": np.concatenate(count),
                                       "a15": np.concatenate(a15),
                                       "per_row": np.concatenate(per_row), "side": side})
    tb = await bench(dut, "quant_rows", ["i_beat"], ["o_beat"])
    got = await tb.run({"i_beat": words}, {"o_beat": len(words)}, "quant_rows")
    out = unpack_beats(lay["o_beat"], got["o_beat"])
    assert np.array_equal(out["side"], side), f"side data changed {tb.replay}"
    x_want = np.concatenate([_beats(r) for r, _, _ in cases])
    assert np.array_equal(out["x"], x_want), f"x (input, padding 0) differs {tb.replay}"
    outs = [{k: (v[i].tolist() if v.ndim > 1 else int(v[i])) for k, v in out.items()}
            for i in range(len(words))]
    try:
        _check_quant(cases, outs)
    except AssertionError as e:
        raise AssertionError(f"quant_rows: {str(e)[:2000]} {tb.replay}") from None
    dut._log.info(f"quant_rows: {len(cases)} rows, {len(words)} beats bit-exact in "
                  f"{tb.cycles} cycles with stalls")


# -- Normalizer ----------------------------------------------------------------------------------


def norm_cases(rng, slow: bool) -> list:
    """(x, gamma, beta, eps_q32, rms) cases: ``tests.test_vector._norm_rows`` (adversarial
    rows: all equal, all INT32_MIN, zeros, one huge outlier, |x - mean| = 2**31, tiny rows
    where eps dominates, D = 1 and 2, a negative inexact mean, random rows, rows whose result
    hangs on the rounding of eps) in LayerNorm and RMSNorm, plus the longest row (random;
    one outlier; all INT32_MIN; alternating ends) and 24 rows of random lengths (most not a
    multiple of the lane count); ``slow``: 150 of them and more eps-rounding rows."""
    cases = list(_norm_rows(rng))
    D = MAX_ROW
    longs = [np.round(rng.normal(size=D) * 2.0 ** 20), np.r_[rng.integers(-9, 10, D - 1),
                                                              I32_MAX],
             np.full(D, I32_MIN), np.resize([I32_MAX, I32_MIN], D)]
    n_rand = 150 if slow else 24
    for _ in range(n_rand):
        n = int(rng.integers(1, D + 1))
        longs.append(np.round(rng.normal(size=n) * 2.0 ** rng.uniform(0, 28)).clip(I32_MIN,
                                                                                   I32_MAX))
    for k, x in enumerate(longs):
        n = len(x)
        cases.append((np.asarray(x, np.int64), to_q16(rng.normal(1, 0.3, n)),
                      to_q16(rng.normal(0, 1, n)), int(rng.choice([0, 42950, EPS_MAX])),
                      k % 2))
    if slow:
        for x in _eps_rounding_rows(rng, 6):
            cases.append((x, to_q16(rng.normal(1, 0.3, len(x))), np.zeros(len(x), np.int64),
                          EPS_MAX, 1))
    return cases


@cocotb.test()
async def norm_rows(dut):
    """``golden.layernorm`` / ``golden.rmsnorm`` on :func:`norm_cases`, rows back to back,
    stalls on both input streams (rows and gamma / beta) and the output; garbage in the
    padding lanes."""
    rng = rng_for("norm_rows")
    cases = norm_cases(rng, SLOW)
    lay = ports(Normalizer(P, max_beats=MAX_BEATS))
    x, last, count, rms, eps, gam, bet = [], [], [], [], [], [], []
    for xr, g, b, e, r in cases:
        bt = _beats(xr)
        pad = bt.size - len(xr)
        if pad:
            bt[-1, L - pad:] = rng.integers(I32_MIN, I32_MAX, pad)
        x.append(bt)
        last.append(np.arange(len(bt)) == len(bt) - 1)
        count.append(np.full(len(bt), len(xr)))
        rms.append(np.full(len(bt), r))
        eps.append(np.full(len(bt), e))
        gam.append(_beats(g))
        bet.append(_beats(b))
    cat = np.concatenate
    words = pack_beats(lay["i_beat"], {"data": cat(x), "last": cat(last), "count": cat(count),
                                       "rms": cat(rms), "eps_q32": cat(eps)})
    params = pack_beats(lay["i_param"], {"gamma": cat(gam), "beta": cat(bet)})
    tb = await bench(dut, "norm_rows", ["i_beat", "i_param"], ["o_beat"])
    got = await tb.run({"i_beat": words, "i_param": params}, {"o_beat": len(words)},
                       "norm_rows")
    out = unpack_beats(lay["o_beat"], got["o_beat"])
    outs = [{"data": out["data"][i].tolist(), "last": int(out["last"][i])}
            for i in range(len(words))]
    try:
        _check_norm(cases, outs)
    except AssertionError as e:
        raise AssertionError(f"norm_rows: {str(e)[:2000]} {tb.replay}") from None
    dut._log.info(f"norm_rows: {len(cases)} rows, {len(words)} beats bit-exact in "
                  f"{tb.cycles} cycles with stalls")


# -- Softmax -------------------------------------------------------------------------------------


def softmax_cases(rng, slow: bool) -> list:
    """(scores, visible) cases: ``tests.test_vector._softmax_rows`` (all equal, all
    INT32_MIN, all INT32_MAX, one huge outlier visible and masked, ``-z`` clamping, S = 1,
    the edges of the exponent's integer part and its rounding ties, random causal
    prefixes), plus the longest row (random; all equal; one outlier; a causal prefix of one
    key) and 24 rows of random lengths and prefixes; ``slow``: 150."""
    cases = list(_softmax_rows(rng))
    S = MAX_ROW
    one = 1 << F
    cases += [(np.round(rng.normal(size=S) * 4 * one).astype(np.int64), S),
              (np.full(S, -12345, np.int64), S),
              (np.r_[np.zeros(S - 1, np.int64), I32_MAX], S),
              (rng.integers(I32_MIN, I32_MAX, S), 1)]
    for _ in range(150 if slow else 24):
        n = int(rng.integers(1, S + 1))
        s = np.round(rng.normal(size=n) * rng.uniform(0.1, 16) * one).astype(np.int64)
        cases.append((s, int(rng.integers(1, n + 1)) if rng.random() < 0.5 else n))
    return cases


@cocotb.test()
async def softmax_rows(dut):
    """``golden.softmax`` (causal prefix ``visible``) on :func:`softmax_cases`, rows back to
    back with stalls; garbage beyond the row and keys beyond ``visible`` that must not
    count."""
    rng = rng_for("softmax_rows")
    cases = softmax_cases(rng, SLOW)
    lay = ports(Softmax(P, max_beats=MAX_BEATS))
    x, last, vis = [], [], []
    for s, v in cases:
        bt = _beats(s)
        pad = bt.size - len(s)
        if pad:
            bt[-1, L - pad:] = rng.integers(I32_MIN, I32_MAX, pad)
        x.append(bt)
        last.append(np.arange(len(bt)) == len(bt) - 1)
        vis.append(np.full(len(bt), v))
    cat = np.concatenate
    words = pack_beats(lay["i_beat"], {"data": cat(x), "last": cat(last), "visible": cat(vis)})
    tb = await bench(dut, "softmax_rows", ["i_beat"], ["o_beat"])
    got = await tb.run({"i_beat": words}, {"o_beat": len(words)}, "softmax_rows")
    out = unpack_beats(lay["o_beat"], got["o_beat"])
    outs = [{"data": out["data"][i].tolist(), "last": int(out["last"][i])}
            for i in range(len(words))]
    try:
        _check_softmax(cases, outs)
    except AssertionError as e:
        raise AssertionError(f"softmax_rows: {str(e)[:2000]} {tb.replay}") from None
    dut._log.info(f"softmax_rows: {len(cases)} rows, {len(words)} beats bit-exact in "
                  f"{tb.cycles} cycles with stalls")


# -- SerialDivider / SerialIsqrt -----------------------------------------------------------------

#: The divider and square root as the normalizer's mean divider and its square root use them.
DIVIDER = dict(n_bits=44, d_bits=13, q_bits=32)
ISQRT_BITS = 62


@cocotb.test()
async def div_operations(dut):
    """``n // d`` and ``n % d`` (Python's integers) for d at 1, 2, 3, the ends of its width
    and random, quotients at 0, 1, the ends of their width and random, remainders from 0 to
    d - 1; back to back with stalls."""
    rng = rng_for("div_operations")
    nb, db, qb = DIVIDER["n_bits"], DIVIDER["d_bits"], DIVIDER["q_bits"]
    k = 2000 if SLOW else 200
    ds = np.r_[1, 2, 3, (1 << db) - 1, 1 << (db - 1), rng.integers(1, 1 << db, k)]
    qs = np.r_[0, 1, (1 << qb) - 1, 1 << (qb - 1), rng.integers(0, 1 << qb, len(ds) - 4)]
    ns, dd = [], []
    for q, d in zip(qs.tolist(), ds.tolist(), strict=True):
        r = int(rng.choice([0, d - 1, int(rng.integers(0, d))]))
        ns.append(min(q * d + r, (1 << nb) - 1))
        dd.append(d)
    comp = SerialDivider(**DIVIDER)
    lay = ports(comp)
    words = pack_beats(lay["i"], {"n": np.array(ns, np.uint64).view(np.int64),
                                  "d": np.array(dd)})
    tb = await bench(dut, "div_operations", ["i"], ["o"])
    got = await tb.run({"i": words}, {"o": len(words)}, "div_operations", busy=False)
    out = unpack_beats(lay["o"], got["o"])
    want = [divmod(n, d) for n, d in zip(ns, dd, strict=True)]
    gotq = list(zip(out["q"].tolist(), out["r"].tolist(), strict=True))
    bad = [i for i in range(len(want)) if gotq[i] != want[i]]
    assert not bad, (f"div: {len(bad)} wrong; first n={ns[bad[0]]} d={dd[bad[0]]}: got "
                     f"{gotq[bad[0]]}, want {want[bad[0]]} {tb.replay}")


@cocotb.test()
async def isqrt_operations(dut):
    """``golden._isqrt``: 0 .. 4, the top of the width, random squares and their
    neighbours, random values; back to back with stalls."""
    rng = rng_for("isqrt_operations")
    k = 2000 if SLOW else 200
    r = rng.integers(0, 1 << 31, k // 2)
    vs = np.r_[0, 1, 2, 3, 4, (1 << ISQRT_BITS) - 1, r * r, r * r - 1, r * r + 1,
               rng.integers(0, 1 << ISQRT_BITS, k, dtype=np.int64)]
    vs = np.clip(vs, 0, (1 << ISQRT_BITS) - 1)
    comp = SerialIsqrt(ISQRT_BITS)
    lay = ports(comp)
    words = pack_beats(lay["i"], {"v": vs})
    tb = await bench(dut, "isqrt_operations", ["i"], ["o"])
    got = await tb.run({"i": words}, {"o": len(words)}, "isqrt_operations", busy=False)
    out = unpack_beats(lay["o"], got["o"])["s"]
    want = G._isqrt(vs)
    msg = first_mismatch(out, want, vs)
    assert not msg, f"isqrt: {msg} {tb.replay}"


#: the component each test prefix runs on (``tests/test_vector_rtl.py`` builds them)
COMPONENTS = {
    "add": lambda: ResidualAdd(P),
    "pwl": lambda: PwlUnit(P),
    "rope": lambda: Rope(P),
    "quant": quantizer,
    "norm": lambda: Normalizer(P, max_beats=MAX_BEATS),
    "softmax": lambda: Softmax(P, max_beats=MAX_BEATS),
    "div": lambda: SerialDivider(**DIVIDER),
    "isqrt": lambda: SerialIsqrt(ISQRT_BITS),
}

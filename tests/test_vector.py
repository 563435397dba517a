"""The vector unit's components (hw/vector/) in amaranth.sim, bit-exact with sim/golden.py.

Each test streams beats through one component with random valid/ready stalls on every stream
and compares every output with the golden function: element-wise units over every table
segment and both ends of every range, row units over adversarial rows. A stall-free run
checks the throughput (beats accepted per cycle) and latency each docstring states.
Random tests print their seed; replay with VECTOR_SEED=<seed>.
"""

import os

import numpy as np
import pytest
from amaranth.lib import data
from amaranth.sim import Simulator

from hw.isa import leaf_fields
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
from sim import golden as G

SEED = int(os.environ.get("VECTOR_SEED", np.random.SeedSequence().entropy % 2**32))
P = ChipParams()
L = P.vector_lanes
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


@pytest.fixture
def rng():
    print(f"VECTOR_SEED={SEED}")
    return np.random.default_rng(SEED)


# -- stream harness ------------------------------------------------------------------------------


def _leaves(layout):
    return leaf_fields(data.Layout.cast(layout))


def pack(layout, values: dict) -> int:
    """Payload bits from {leaf path: int or list of ints} (missing leaves are 0)."""
    bits = 0
    for path, off, width, _, count in _leaves(layout):
        v = values.get(path, 0)
        vs = [int(x) for x in np.atleast_1d(v)] if count > 1 else [int(v)]
        assert len(vs) == count, (path, len(vs), count)
        mask = (1 << width) - 1
        for i, x in enumerate(vs):
            bits |= (x & mask) << (off + i * width)
    return bits


def unpack(layout, bits: int) -> dict:
    """{leaf path: int or list of ints} from payload bits."""
    out = {}
    for path, off, width, sgn, count in _leaves(layout):
        vs = []
        for i in range(count):
            x = (bits >> (off + i * width)) & ((1 << width) - 1)
            if sgn and x >> (width - 1):
                x -= 1 << width
            vs.append(x)
        out[path] = vs if count > 1 else vs[0]
    return out


def simulate(dut, feeds: dict, drains: dict, stall: float = 0.0, seed: int = 0,
             max_cycles: int = 200_000):
    """Run ``dut``: for each input port name in ``feeds`` push its payloads (dicts for
    :func:`pack`) in order, with valid dropped for random cycles (probability ``stall``); for
    each output port in ``drains`` collect that many payloads, with ready dropped likewise;
    then ``busy`` must have dropped.
    Returns ({port: [unpacked payloads]}, {port: [cycle of each transfer]})."""
    prng = np.random.default_rng(seed)
    got = {name: [] for name in drains}
    when = {name: [] for name in (*feeds, *drains)}

    def feeder(name, items):
        port = getattr(dut, name)
        layout = port.payload.shape()
        words = [pack(layout, it) for it in items]

        async def tb(ctx):
            cycle = 0
            for w in words:
                while prng.random() < stall:
                    ctx.set(port.valid, 0)
                    await ctx.tick()
                    cycle += 1
                ctx.set(port.payload.as_value(), w)
                ctx.set(port.valid, 1)
                while True:
                    _, _, ready = await ctx.tick().sample(port.ready)
                    cycle += 1
                    if ready:
                        when[name].append(cycle - 1)
                        break
            ctx.set(port.valid, 0)
        return tb

    def drainer(name, count):
        port = getattr(dut, name)
        layout = port.payload.shape()

        async def tb(ctx):
            cycle = 0
            while len(got[name]) < count:
                assert cycle < max_cycles, f"{name}: {len(got[name])} of {count} after {cycle}"
                ready = int(prng.random() >= stall)
                ctx.set(port.ready, ready)
                _, _, valid, bits = await ctx.tick().sample(port.valid, port.payload.as_value())
                cycle += 1
                if valid and ready:
                    got[name].append(unpack(layout, bits))
                    when[name].append(cycle - 1)
            ctx.set(port.ready, 0)
            if len(drains) == 1 and hasattr(dut, "busy"):  # idle once the last beat left
                await ctx.tick().repeat(2)
                assert not ctx.get(dut.busy), f"{type(dut).__name__} still busy"
        return tb

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for name, items in feeds.items():
        sim.add_testbench(feeder(name, items), background=True)
    for name, count in drains.items():
        sim.add_testbench(drainer(name, count))
    sim.run()
    return got, when


def lanes_of(outs, path="") -> np.ndarray:
    return np.array([o[path] for o in outs], np.int64)


def check_throughput(when, i_name, o_name, latency):
    """Stall-free run: one input beat per cycle, the first output ``latency`` cycles after
    the first input, then one output per cycle."""
    ti, to = np.array(when[i_name]), np.array(when[o_name])
    assert np.all(np.diff(ti) == 1), f"{i_name} accepted with gaps: {np.diff(ti)}"
    assert np.all(np.diff(to) == 1), f"{o_name} delivered with gaps: {np.diff(to)}"
    assert to[0] - ti[0] == latency, (to[0] - ti[0], latency)


# -- element-wise ----------------------------------------------------------------------------


def _beats(values, fill=0, lanes=L):
    """A flat array as [beats, lanes] (padded with ``fill``)."""
    v = np.asarray(values, np.int64).ravel()
    n = -(-len(v) // lanes) * lanes
    return np.concatenate([v, np.full(n - len(v), fill, np.int64)]).reshape(-1, lanes)


def _edge_wide(rng, n):
    """Wide values over the whole INT32 range, with its ends and small values."""
    ends = np.array([I32_MIN, I32_MIN + 1, -1, 0, 1, I32_MAX - 1, I32_MAX], np.int64)
    return np.concatenate([ends, rng.integers(I32_MIN, I32_MAX, n, endpoint=True),
                           rng.integers(-(1 << 20), 1 << 20, n)])


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_residual_add(rng, stall):
    """Every pair of range ends (both saturations), then random pairs."""
    ends = _edge_wide(rng, 0)
    ea, eb = np.meshgrid(ends, ends)
    a = _beats(np.concatenate([ea.ravel(), _edge_wide(rng, 20 * L)]))
    b = _beats(np.concatenate([eb.ravel(), _edge_wide(rng, 20 * L)[::-1]]))
    got, when = simulate(ResidualAdd(P), {"i_beat": [{"a": x, "b": y}
                                                     for x, y in zip(a, b, strict=True)]},
                         {"o_beat": len(a)}, stall, int(rng.integers(1 << 30)))
    assert np.array_equal(lanes_of(got["o_beat"]), G.residual_add(a, b))
    if not stall:
        check_throughput(when, "i_beat", "o_beat", ResidualAdd.LATENCY)


def _pwl_points(table, rng):
    """Every segment at offsets 0, 1, half - 1, half, half + 1, last and one random; the
    range ends and beyond; the INT32 ends."""
    seg = np.arange(table.segments)[:, None]
    w = 1 << table.seg_shift
    offs = np.array([0, 1, w // 2 - 1, w // 2, w // 2 + 1, w - 1])
    inside = table.lo + (seg << table.seg_shift) + np.concatenate(
        [np.broadcast_to(offs, (table.segments, len(offs))),
         rng.integers(0, w, (table.segments, 1))], axis=1)
    lo, hi = table.lo, table.hi
    edges = [lo - 2, lo - 1, lo, lo + 1, hi - 1, hi, hi + 1, I32_MIN, I32_MAX, 0, -1, 1]
    return np.concatenate([inside.ravel(), edges, rng.integers(I32_MIN, I32_MAX, 64)])


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_pwl_gelu_silu_mul(rng, stall):
    """Every segment of both tables and both ends; GELU and SiLU·mul beats interleaved; up
    over the whole INT32 range (saturating products)."""
    beats = []
    for fn, table in ((PwlFn.GELU, gelu_table()), (PwlFn.SILU_MUL, silu_table())):
        for x in _beats(_pwl_points(table, rng)):
            up = _beats(_edge_wide(rng, L))[rng.integers(0, 3)] if fn == PwlFn.SILU_MUL \
                else rng.integers(I32_MIN, I32_MAX, L)
            beats.append((fn, x, up))
    order = rng.permutation(len(beats))
    beats = [beats[i] for i in order]
    got, when = simulate(PwlUnit(P), {"i_beat": [{"fn": fn.value, "x": x, "up": up}
                                                 for fn, x, up in beats]},
                         {"o_beat": len(beats)}, stall, int(rng.integers(1 << 30)))
    out = lanes_of(got["o_beat"])
    for k, (fn, x, up) in enumerate(beats):
        want = G.gelu(x) if fn == PwlFn.GELU else G.silu_mul(x, up)
        assert np.array_equal(out[k], want), (fn, x, up, out[k], want)
    if not stall:
        check_throughput(when, "i_beat", "o_beat", PwlUnit.LATENCY)


def test_pwl_every_offset(rng):
    """Every input of the first, the last and the steepest segment of both tables (all
    rounding cases of the interpolation) and of the two segments around 0."""
    beats = []
    for fn, table in ((PwlFn.GELU, gelu_table()), (PwlFn.SILU_MUL, silu_table())):
        rise = np.abs(np.diff(table.values))
        w = 1 << table.seg_shift
        for seg in {0, table.segments - 1, int(np.argmax(rise)), table.segments // 2 - 1,
                    table.segments // 2}:
            xs = table.lo + seg * w + np.arange(w)
            for x in _beats(xs):
                beats.append((fn, x, rng.integers(I32_MIN, I32_MAX, L)))
    got, _ = simulate(PwlUnit(P), {"i_beat": [{"fn": fn.value, "x": x, "up": up}
                                              for fn, x, up in beats]},
                      {"o_beat": len(beats)})
    out = lanes_of(got["o_beat"])
    for k, (fn, x, up) in enumerate(beats):
        want = G.gelu(x) if fn == PwlFn.GELU else G.silu_mul(x, up)
        assert np.array_equal(out[k], want), (fn, x, up, out[k], want)


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_rope(rng, stall):
    n = 40
    x = _beats(_edge_wide(rng, n * L))
    one = 1 << G.NUM.frac_bits
    trig_ends = np.array([-one, -one + 1, -1, 0, 1, one - 1, one], np.int64)
    ang = rng.uniform(-np.pi, np.pi, (len(x), L // 2))
    cos = np.round(np.cos(ang) * one).astype(np.int64)
    sin = np.round(np.sin(ang) * one).astype(np.int64)
    cos[:7] = rng.choice(trig_ends, (7, L // 2))  # the table's ends, independently
    sin[:7] = rng.choice(trig_ends, (7, L // 2))
    got, when = simulate(Rope(P), {"i_beat": [{"x": a, "cos": c, "sin": s}
                                              for a, c, s in zip(x, cos, sin, strict=True)]},
                         {"o_beat": len(x)}, stall, int(rng.integers(1 << 30)))
    want = G.rope(x[:, None, :], cos, sin)[:, 0, :]
    assert np.array_equal(lanes_of(got["o_beat"]), want)
    if not stall:
        check_throughput(when, "i_beat", "o_beat", Rope.LATENCY)


# -- requantization ------------------------------------------------------------------------------


def _quant_rows(rng):
    """(row, a15, per_row) cases: adversarial rows, then random ones with groups of very
    different magnitudes, lengths not a multiple of the lane count."""
    top = I32_MAX
    rows = [
        np.full(64, 12345), np.full(40, I32_MIN), np.full(33, I32_MAX), np.zeros(48, np.int64),
        np.r_[np.ones(47), top],                      # one huge outlier: the rest underflow
        np.r_[rng.integers(-3, 4, 30), -(1 << 31)],
        (2 * np.arange(-40, 40) + 1) << 3,            # rounding ties at e = 4
        np.r_[np.full(16, 127 << 10), np.full(16, 255 << 9), np.full(16, -(255 << 9))],
        np.r_[np.full(16, 1 << 30), np.full(16, 1 << 9), np.full(16, 1 << 8)],  # 21 binades
        np.array([-5]), np.array([1, -1]),
    ]
    for n in (16, 23, 100, 257):
        mag = np.repeat(2.0 ** rng.uniform(0, 30, -(-n // 16)), 16)[:n]
        rows.append(np.round(rng.normal(size=n) * mag).clip(I32_MIN, I32_MAX))
    cases = []
    for k, r in enumerate(rows):
        r = np.asarray(r, np.int64)
        for a15, per_row in ((0, 0), (1, 0), (0, 1), (1, 1)):
            if (k + a15 + per_row) % 2 == 0 or len(r) > 200:  # half the combinations
                cases.append((r, a15, per_row))
    return cases


def _run_quant(rng, cases, stall, p=P, max_beats=32, garbage=True):
    feeds = []
    lanes = p.vector_lanes
    for r, a15, per_row in cases:
        beats = _beats(r, lanes=lanes)
        if garbage:  # padding lanes hold garbage: the unit must mask them
            pad = beats.size - len(r)
            if pad:
                beats[-1, lanes - pad:] = rng.integers(I32_MIN, I32_MAX, pad)
        for j, b in enumerate(beats):
            feeds.append({"data": b, "last": int(j == len(beats) - 1), "count": len(r),
                          "a15": a15, "per_row": per_row})
    dut = Quantizer(p, max_beats=max_beats)
    got, when = simulate(dut, {"i_beat": feeds}, {"o_beat": len(feeds)}, stall,
                         int(rng.integers(1 << 30)))
    return dut, got["o_beat"], when


def _check_quant(cases, outs, p=P):
    k = 0
    lanes = p.vector_lanes
    gb = p.numerics.act_group // lanes
    for r, a15, per_row in cases:
        nb = -(-len(r) // lanes)
        o = outs[k:k + nb]
        k += nb
        with np.errstate(over="ignore"):  # the golden model's all-zero rows
            want8, ws = G.quantize_rows(r, group=None if per_row else p.numerics.act_group,
                                        bits=15 if a15 else 8, num=p.numerics)
        hi = np.array([b["data"] for b in o], np.int64).ravel()
        lo = np.array([b["lo"] for b in o], np.int64).ravel()
        xq = hi * 128 + lo if a15 else hi
        assert all(b["lo"] == [0] * lanes for b in o) or a15
        assert np.array_equal(xq[:len(r)], want8), (r, a15, per_row, xq, want8)
        assert [b["last"] for b in o] == [0] * (nb - 1) + [1]
        assert {b["exp"] for b in o} == {int(ws.exp)}, (r, [b["exp"] for b in o], ws.exp)
        mant = np.array([0 if b["gzero"] else 1 << b["gshift"] for b in o])
        want_mant = np.resize(ws.mant, nb) if per_row else np.repeat(ws.mant, gb)[:nb]
        assert np.array_equal(mant, want_mant), (r, a15, per_row, mant, ws.mant)
    assert k == len(outs)


@pytest.mark.parametrize("stall, lanes", [(0.0, 16), (0.3, 16), (0.3, 8)])
def test_quantize_rows(rng, stall, lanes):
    """Adversarial and random rows in every mode; with 8 lanes a group spans two beats."""
    p = ChipParams(vector_lanes=lanes)
    cases = _quant_rows(rng)
    _, outs, _ = _run_quant(rng, cases, stall, p, max_beats=64)
    _check_quant(cases, outs, p)


def test_quantize_throughput(rng):
    """Rows back to back at one beat per cycle, up to the row capacity; equal rows also leave
    without gaps, the first ``LATENCY`` cycles after the last beat of the first row."""
    for lengths in ([5 * L] * 6, [1, 32 * L, 3, 17 * L + 5, L, 2 * L]):
        cases = [(rng.integers(-(1 << 20), 1 << 20, n), 0, 0) for n in lengths]
        dut, outs, when = _run_quant(rng, cases, 0.0)
        _check_quant(cases, outs)
        ti, to = np.array(when["i_beat"]), np.array(when["o_beat"])
        assert np.all(np.diff(ti) == 1), np.diff(ti)
        first_last = -(-lengths[0] // L) - 1
        assert to[0] - ti[first_last] == dut.LATENCY, (to[0] - ti[first_last], dut.LATENCY)
        if len(set(lengths)) == 1:
            assert np.all(np.diff(to) == 1), np.diff(to)


# -- building blocks ---------------------------------------------------------------------------


def test_reg_fifo_matches_sync_fifo_buffered(rng):
    """``RegFifo`` (the pipes' FIFO) against ``amaranth.lib.fifo.SyncFIFOBuffered`` cycle for
    cycle under random writes (where the latter accepts) and reads: equal ``r_rdy`` and data."""
    from amaranth.hdl import Module
    from amaranth.lib.fifo import SyncFIFOBuffered

    from hw.vector.common import RegFifo

    for depth in (3, 4, 7):
        m = Module()
        a = m.submodules.a = SyncFIFOBuffered(width=8, depth=depth)
        b = m.submodules.b = RegFifo(width=8, depth=depth)
        sim = Simulator(m)
        sim.add_clock(1e-8)
        pw, pr = rng.uniform(0.2, 1.0, 2)
        ops = rng.random((1500, 2))
        vals = rng.integers(0, 256, 1500)

        async def tb(ctx, a=a, b=b, pw=pw, pr=pr, ops=ops, vals=vals, depth=depth):
            for t in range(len(vals)):
                w = bool(ops[t, 0] < pw and ctx.get(a.w_rdy))
                for f in (a, b):
                    ctx.set(f.w_en, w)
                    ctx.set(f.w_data, int(vals[t]))
                    ctx.set(f.r_en, bool(ops[t, 1] < pr))
                assert ctx.get(a.r_rdy) == ctx.get(b.r_rdy), (depth, t)
                if ctx.get(a.r_rdy):
                    assert ctx.get(a.r_data) == ctx.get(b.r_data), (depth, t)
                await ctx.tick()

        sim.add_testbench(tb)
        sim.run()


def test_product(rng):
    """``product`` (pipelined multiplier pieces) against Python's product, with the operands'
    extremes, ``product_stages`` cycles later."""
    from amaranth.hdl import Module, Signal, signed, unsigned

    from hw.vector.common import product, product_stages

    for sa, sb in [(signed(16), unsigned(25)), (signed(27), signed(32)), (signed(32), signed(32)),
                   (unsigned(31), unsigned(15)), (signed(32), signed(18))]:
        m = Module()
        a, b = Signal(sa), Signal(sb)
        p = product(m, a, b, "p")
        n = product_stages(sa, sb)

        def pick(s):
            lo = -(1 << (s.width - 1)) if s.signed else 0
            hi = (1 << (s.width - 1)) - 1 if s.signed else (1 << s.width) - 1
            return [lo, hi, 0, 1] + [int(v) for v in rng.integers(lo, hi, 60, endpoint=True)]

        xs, ys = pick(sa), pick(sb)
        pairs = [(x, y) for x in xs[:4] for y in ys[:4]] + list(zip(xs[4:], ys[4:], strict=True))
        sim = Simulator(m)
        sim.add_clock(1e-8)

        async def tb(ctx, a=a, b=b, p=p, n=n, pairs=pairs, sa=sa, sb=sb):
            got = []
            for k in range(len(pairs) + n):
                if k < len(pairs):
                    ctx.set(a, pairs[k][0])
                    ctx.set(b, pairs[k][1])
                await ctx.tick()
                if k + 1 >= n:
                    got.append(ctx.get(p))
            assert got[:len(pairs)] == [x * y for x, y in pairs], (sa, sb)

        sim.add_testbench(tb)
        sim.run()



def test_saturate_and_clamp_unsigned():
    """``saturate`` (both of its forms: LUTs over the bits above the range, compares beyond
    ``SATURATE_LUT_BITS``) against ``golden.saturate``, and ``clamp_unsigned`` against
    ``numpy.clip``, for every value of small signed and unsigned widths."""
    from amaranth.hdl import Module, Signal, signed, unsigned

    from hw.vector.common import SATURATE_LUT_BITS, clamp_unsigned, saturate

    cases = [(shape, bits) for w in range(2, 9) for bits in range(1, 9)
             for shape in (signed(w), unsigned(w))]
    assert any(s.width - b + 1 > SATURATE_LUT_BITS for s, b in cases)  # both forms run
    m = Module()
    probes = []
    for shape, bits in cases:
        v = Signal(shape)
        sat, cl = Signal(signed(16)), Signal(signed(16))
        m.d.comb += [sat.eq(saturate(v, bits)), cl.eq(clamp_unsigned(v, bits))]
        probes.append((shape, bits, v, sat, cl))
    sim = Simulator(m)

    async def tb(ctx):
        for shape, bits, v, sat, cl in probes:
            lo = -(1 << (shape.width - 1)) if shape.signed else 0
            xs = np.arange(lo, lo + (1 << shape.width))
            got_s, got_c = [], []
            for x in xs:
                ctx.set(v, int(x))
                got_s.append(ctx.get(sat))
                got_c.append(ctx.get(cl))
            assert got_s == G.saturate(xs, bits).tolist(), (shape, bits)
            assert got_c == np.clip(xs, 0, (1 << bits) - 1).tolist(), (shape, bits)

    sim.add_testbench(tb)
    sim.run()

# -- per-row scalar units ----------------------------------------------------------------------


def test_serial_divider_and_isqrt(rng):
    div = SerialDivider(44, 13, 32, steps=2)
    ds = np.r_[1, 2, 3, 4095, 4096, rng.integers(1, 4097, 40)]
    qs = np.r_[0, 1, (1 << 32) - 1, (1 << 31), rng.integers(0, 1 << 32, len(ds) - 4)]
    ns = [min(int(q) * int(d) + int(rng.integers(0, d)), (1 << 44) - 1) for q, d in zip(qs, ds,
                                                                                     strict=True)]
    got, _ = simulate(div, {"i": [{"n": n, "d": int(d)} for n, d in zip(ns, ds, strict=True)]},
                      {"o": len(ds)}, 0.3, int(rng.integers(1 << 30)))
    assert [(o["q"], o["r"]) for o in got["o"]] == [divmod(n, int(d))
                                                    for n, d in zip(ns, ds, strict=True)]
    # |n| of a signed n (the normalizer's mean), and one result bit per cycle
    sdiv = SerialDivider(45, 13, 32, steps=2, signed_n=True)
    sns = [-n if k % 2 else n for k, n in enumerate(ns)] + [-(1 << 44) + 1]
    sds = [int(d) for d in ds] + [4096]
    got, _ = simulate(sdiv, {"i": [{"n": n & ((1 << 45) - 1), "d": d}
                                   for n, d in zip(sns, sds, strict=True)]},
                      {"o": len(sds)}, 0.3, int(rng.integers(1 << 30)))
    assert [(o["q"], o["r"]) for o in got["o"]] == [divmod(abs(n), d)
                                                    for n, d in zip(sns, sds, strict=True)]
    div1 = SerialDivider(41, 31, 25, steps=1)
    d1 = [int(x) for x in np.r_[1 << 16, (1 << 31) - 1, rng.integers(1 << 16, 1 << 31, 20)]]
    got, _ = simulate(div1, {"i": [{"n": 1 << 40, "d": d} for d in d1]}, {"o": len(d1)}, 0.3,
                      int(rng.integers(1 << 30)))
    assert [(o["q"], o["r"]) for o in got["o"]] == [divmod(1 << 40, d) for d in d1]
    for st in (1, 2):
        sq = SerialIsqrt(62, steps=st)
        r = rng.integers(0, 1 << 31, 10)
        vs = np.clip(np.r_[0, 1, 3, (1 << 62) - 1, r * r, r * r - 1], 0, (1 << 62) - 1)
        got, _ = simulate(sq, {"i": [{"v": int(v)} for v in vs]}, {"o": len(vs)}, 0.3,
                          int(rng.integers(1 << 30)))
        assert [o["s"] for o in got["o"]] == [int(s) for s in G._isqrt(vs)]
    sq = SerialIsqrt(62, steps=2)
    r = rng.integers(0, 1 << 31, 30)
    vs = np.r_[0, 1, 2, 3, 4, (1 << 62) - 1, r * r, r * r - 1, r * r + 1,
               rng.integers(0, 1 << 62, 20, dtype=np.int64)]
    vs = np.clip(vs, 0, (1 << 62) - 1)
    got, _ = simulate(sq, {"i": [{"v": int(v)} for v in vs]}, {"o": len(vs)}, 0.3,
                      int(rng.integers(1 << 30)))
    assert [o["s"] for o in got["o"]] == [int(s) for s in G._isqrt(vs)]


# -- LayerNorm / RMSNorm -----------------------------------------------------------------------


def _norm_rows(rng):
    """(x, gamma, beta, eps_q32, rms) cases: adversarial rows and random ones."""
    big = I32_MAX
    xs = [
        np.full(48, 777), np.full(40, I32_MIN), np.zeros(32, np.int64),
        np.r_[np.zeros(63), big], np.r_[np.full(30, -5), I32_MIN],
        np.resize([I32_MAX, I32_MIN], 64),             # |x - mean| reaches 2**31
        rng.integers(-3, 4, 37),                        # tiny: sh < 0, eps dominates
        np.array([123456]), np.array([-7, 8]),          # D = 1, 2
        np.arange(-100, 100) * 65536 - 1,              # negative inexact mean
    ]
    for n in (16, 45, 384):
        xs.append(np.round(rng.normal(size=n) * 2.0 ** rng.uniform(4, 28)).clip(I32_MIN, big))
    xs.append(np.resize([0, 1, 1], 20))  # max |x| = 1 (RMSNorm)
    out = []
    for k, x in enumerate(xs):
        x = np.asarray(x, np.int64)
        D = len(x)
        gamma = to_q16(rng.normal(1, 0.3, D))
        beta = to_q16(rng.normal(0, 1, D))
        if k == 3:  # saturate the output: gamma and beta at the INT32 ends
            gamma[-1], beta[-1] = I32_MAX, I32_MAX
            gamma[0], beta[0] = I32_MIN, I32_MIN
        eps = [42950, 0, EPS_MAX][(k + 1) % 3]
        out.append((x, gamma, beta, eps, k % 2))
        out.append((x, gamma, beta, eps, 1 - k % 2))
    for x in _eps_rounding_rows(rng, 3):
        out.append((x, to_q16(rng.normal(1, 0.3, len(x))), np.zeros(len(x), np.int64),
                    EPS_MAX, 1))
    return out


EPS_MAX = (1 << 17) - 1


def _eps_rounding_rows(rng, count, D=512):
    """RMSNorm rows whose standard deviation depends on the rounding of eps to the row's
    scale, ``rshift_round(eps_q32, 2 sh)`` (every bit of eps set, 0 < 2 sh < 17: rounding
    down instead lowers var by one and crosses a square): an outlier over small noise, found
    by search. The search re-traces the golden variance only to pick inputs."""
    rows = []
    while len(rows) < count:
        x = rng.integers(-50, 51, D) << rng.integers(0, 4)
        x[rng.integers(D)] = int(rng.integers(1 << 16, 1 << 23))
        sh = int(np.max(np.abs(x))).bit_length() - 15
        cs = x >> sh
        var = int((cs * cs).sum()) // D
        if G._isqrt((var + int(G.rshift_round(EPS_MAX, 2 * sh))) << 16) \
                != G._isqrt((var + (EPS_MAX >> (2 * sh))) << 16):
            rows.append(x)
    return rows


def to_q16(v):
    return np.round(np.asarray(v) * 65536).astype(np.int64)


def _run_norm(rng, cases, stall, p=P, dut=None):
    dut = dut or Normalizer(p, max_beats=32)
    assert max(len(c[0]) for c in cases) <= dut.max_beats * p.vector_lanes
    lanes = p.vector_lanes
    feeds, params = [], []
    for x, gamma, beta, eps, rms in cases:
        bx = _beats(x, lanes=lanes)
        pad = bx.size - len(x)
        if pad:
            bx[-1, lanes - pad:] = rng.integers(I32_MIN, I32_MAX, pad)  # must be ignored
        for j, b in enumerate(bx):
            feeds.append({"data": b, "last": int(j == len(bx) - 1), "count": len(x),
                          "rms": rms, "eps_q32": eps})
        for g, b in zip(_beats(gamma, lanes=lanes), _beats(beta, lanes=lanes), strict=True):
            params.append({"gamma": g, "beta": b})
    got, when = simulate(dut, {"i_beat": feeds, "i_param": params}, {"o_beat": len(feeds)},
                         stall, int(rng.integers(1 << 30)))
    return dut, got["o_beat"], when


def _check_norm(cases, outs, p=P):
    k = 0
    for x, gamma, beta, eps, rms in cases:
        nb = -(-len(x) // p.vector_lanes)
        o = outs[k:k + nb]
        k += nb
        e = eps / 2.0**32
        want = G.rmsnorm(x, gamma, e) if rms else G.layernorm(x, gamma, beta, e)
        got = np.array([b["data"] for b in o], np.int64).ravel()[:len(x)]
        assert np.array_equal(got, want), (x, rms, eps, got, want)
        assert [b["last"] for b in o] == [0] * (nb - 1) + [1]
    assert k == len(outs)


@pytest.mark.parametrize("stall, lanes", [(0.0, 16), (0.3, 16), (0.3, 8)])
def test_norm(rng, stall, lanes):
    """Adversarial and random rows, LayerNorm and RMSNorm, through every pass and serial unit
    with stalls on all three streams."""
    p = ChipParams(vector_lanes=lanes)
    cases = _norm_rows(rng)
    _, outs, _ = _run_norm(rng, cases, stall, p, Normalizer(p, max_beats=512 // lanes))
    _check_norm(cases, outs, p)


def test_norm_throughput(rng):
    """Rows of MIN_FULL_RATE_BEATS beats (19: D = 304; MiniLM's D = 384 is 24) stream back to
    back at one beat per cycle, LayerNorm and RMSNorm alternating; the latency is as stated."""
    dut = Normalizer(P, max_beats=32)
    nb = dut.MIN_FULL_RATE_BEATS
    cases = [(rng.integers(-(1 << 24), 1 << 24, nb * L), to_q16(rng.normal(1, .1, nb * L)),
              to_q16(rng.normal(0, 1, nb * L)), 42950, k % 2) for k in range(5)]
    _, outs, when = _run_norm(rng, cases, 0.0, dut=dut)
    _check_norm(cases, outs)
    ti, to = np.array(when["i_beat"]), np.array(when["o_beat"])
    assert np.all(np.diff(ti) == 1), np.diff(ti)
    assert np.all(np.diff(to) == 1), np.diff(to)
    assert to[0] - ti[nb - 1] == dut.latency(nb), (to[0] - ti[nb - 1], dut.latency(nb))


# -- softmax -------------------------------------------------------------------------------------


def _softmax_rows(rng):
    """(scores, visible) cases: adversarial rows, then random rows with a causal prefix."""
    big = I32_MAX
    one = 1 << G.NUM.frac_bits
    cases = [
        (np.full(48, 1000), 48), (np.full(40, I32_MIN), 40), (np.full(17, big), 17),
        (np.r_[np.zeros(30), big], 31),                      # one huge outlier
        (np.r_[np.zeros(30), big], 30),                      # ... masked: must not count
        (np.r_[big, np.full(20, I32_MIN)], 21),             # -z clamps at 2**31 - 1
        (np.array([big, -1, -2, -1000, 0]), 5),             # ... just past it
        (np.array([5]), 1), (np.array([3, I32_MAX]), 1),     # S = 1; visible = 1
        # -z at the edges of int(u) = 16, 17 and 31, 32 and ties of the rounding of u
        (np.r_[0, -np.arange(16 * one - 40, 16 * one + 40, 3)], 28),
        (np.r_[0, -((np.arange(31, 34)[:, None] << 16) * 45426 // 65536
                    + np.arange(-3, 4)).ravel()], 22),
        (np.r_[0, -(np.arange(1, 200) * 45426 // 1000)], 200),
    ]
    for S in (16, 37, 100, 300):
        s = np.round(rng.normal(size=S) * rng.uniform(0.5, 8) * one).astype(np.int64)
        cases.append((s, int(rng.integers(1, S + 1))))
        cases.append((s, S))
    return [(np.asarray(s, np.int64), v) for s, v in cases]


def _run_softmax(rng, cases, stall, p=P, dut=None):
    lanes = p.vector_lanes
    dut = dut or Softmax(p, max_beats=32)
    feeds = []
    for s, vis in cases:
        bs = _beats(s, lanes=lanes)
        pad = bs.size - len(s)
        if pad:
            bs[-1, lanes - pad:] = rng.integers(I32_MIN, I32_MAX, pad)
        for j, b in enumerate(bs):
            feeds.append({"data": b, "last": int(j == len(bs) - 1), "visible": vis})
    got, when = simulate(dut, {"i_beat": feeds}, {"o_beat": len(feeds)}, stall,
                         int(rng.integers(1 << 30)))
    return dut, got["o_beat"], when


def _check_softmax(cases, outs, p=P):
    k = 0
    for s, vis in cases:
        nb = -(-len(s) // p.vector_lanes)
        o = outs[k:k + nb]
        k += nb
        want = G.softmax(s[None, :], q_pos=[vis - 1])[0]
        got = np.array([b["data"] for b in o], np.int64).ravel()[:len(s)]
        assert np.array_equal(got, want), (s, vis, got, want)
        assert [b["last"] for b in o] == [0] * (nb - 1) + [1]
    assert k == len(outs)


@pytest.mark.parametrize("stall, lanes", [(0.0, 16), (0.3, 16), (0.3, 8)])
def test_softmax(rng, stall, lanes):
    """Adversarial and random rows, causal prefixes, garbage beyond the row and the mask."""
    p = ChipParams(vector_lanes=lanes)
    cases = _softmax_rows(rng)
    _, outs, _ = _run_softmax(rng, cases, stall, p, Softmax(p, max_beats=512 // lanes))
    _check_softmax(cases, outs, p)


def test_softmax_every_exponent(rng):
    """Every entry of the 2**-f table at several weights, for int(u) from 0 to past 31 (where
    e becomes 0): scores ``-z`` chosen as the smallest whose ``u`` reaches each target
    ``ip * 2**16 + idx * 256 + w`` (u grows by ~1.44 per step of -z, so it lands on the target
    or one above; the coverage of every (int(u), table index) pair is asserted)."""
    ips = [0, 1, 2, 15, 16, 17, 30, 31, 32]
    us = [(ip << 16) + (idx << 8) + w for ip in ips for idx in range(256) for w in (0, 128, 254)]
    negz = np.array([-(-((u << 14) - 8192) // 23637) for u in us], np.int64)
    got_u = G.rshift_round(negz * 23637, 14)
    assert {(ip, idx) for ip in ips for idx in range(256)} <= set(
        zip((got_u >> 16).tolist(), ((got_u >> 8) & 255).tolist(), strict=True))
    rows = [np.r_[0, -negz[i:i + 255]] for i in range(0, len(negz), 255)]
    cases = [(r, len(r)) for r in rows]
    _, outs, _ = _run_softmax(rng, cases, 0.0)
    _check_softmax(cases, outs)


def test_softmax_throughput(rng):
    """Rows of MIN_FULL_RATE_BEATS beats back to back at one beat per cycle; latency as
    stated."""
    dut = Softmax(P, max_beats=32)
    nb = dut.MIN_FULL_RATE_BEATS
    cases = [(rng.integers(-(1 << 20), 1 << 20, nb * L), int(rng.integers(1, nb * L + 1)))
             for _ in range(5)]
    _, outs, when = _run_softmax(rng, cases, 0.0, dut=dut)
    _check_softmax(cases, outs)
    ti, to = np.array(when["i_beat"]), np.array(when["o_beat"])
    assert np.all(np.diff(ti) == 1), np.diff(ti)
    assert np.all(np.diff(to) == 1), np.diff(to)
    assert to[0] - ti[nb - 1] == dut.latency(nb), (to[0] - ti[nb - 1], dut.latency(nb))


# -- long sweeps (make test-slow) ----------------------------------------------------------------


@pytest.mark.slow
def test_pwl_every_input_in_range(rng):
    """Every input inside both tables' ranges (3.1 M values), GELU and SiLU·mul."""
    beats = []
    for fn, table in ((PwlFn.GELU, gelu_table()), (PwlFn.SILU_MUL, silu_table())):
        for x in _beats(np.arange(table.lo, table.hi)):
            beats.append((fn, x))
    up = rng.integers(I32_MIN, I32_MAX, (len(beats), L))
    got, _ = simulate(PwlUnit(P), {"i_beat": [{"fn": fn.value, "x": x, "up": u}
                                              for (fn, x), u in zip(beats, up, strict=True)]},
                      {"o_beat": len(beats)}, max_cycles=1 << 24)
    out = lanes_of(got["o_beat"])
    for fn in PwlFn:
        sel = np.array([f == fn for f, _ in beats])
        x = np.array([b for _, b in beats])[sel]
        want = G.gelu(x) if fn == PwlFn.GELU else G.silu_mul(x, up[sel])
        assert np.array_equal(out[sel], want), fn


@pytest.mark.slow
def test_rows_soak(rng):
    """Many random rows of random lengths (1 .. capacity) and magnitudes through the three
    row units, with stalls."""
    def row(n):
        mag = np.repeat(2.0 ** rng.uniform(0, 30, -(-n // 16)), 16)[:n]
        return np.round(rng.normal(size=n) * mag).clip(I32_MIN, I32_MAX).astype(np.int64)

    lengths = rng.integers(1, 32 * L + 1, 150)
    q_cases = [(row(n), int(rng.integers(2)), int(rng.integers(2))) for n in lengths]
    _, outs, _ = _run_quant(rng, q_cases, 0.2)
    _check_quant(q_cases, outs)
    n_cases = [(row(n), to_q16(rng.normal(1, 0.3, n)), to_q16(rng.normal(0, 1, n)),
                int(rng.choice([0, 42950, EPS_MAX])), int(rng.integers(2))) for n in lengths]
    _, outs, _ = _run_norm(rng, n_cases, 0.2)
    _check_norm(n_cases, outs)
    s_cases = [(row(n) >> int(rng.integers(0, 16)), int(rng.integers(1, n + 1)))
               for n in lengths]
    _, outs, _ = _run_softmax(rng, s_cases, 0.2)
    _check_softmax(s_cases, outs)

"""The vector unit's controller (``hw/vector/engine.py``, ``VecEngine``) in amaranth.sim against
the ISA simulator (``IsaSim(vector=True)``, itself checked against ``sim.golden`` by
``tests/test_isa_vec.py``).

A harness holds the engine and the four buffers it touches (ACC, ACT, PRM, KV as
``amaranth.lib.memory``), initialized from an ``IsaSim`` whose buffers hold random data (wide
rows of every magnitude, INT32 ends, junk in padding lanes; V scales as ``KV_APPEND`` writes
them). One ``VEC`` command runs on both; afterwards the error, its pc and every word of every
buffer must agree. The write ports take writes only when a pseudo-random bit allows (the
chip's arbiter may hold ``ready`` low), unless a test measures throughput. Every ``VecFn``,
both ACC layouts, ``dyn``, ``causal``, every ``QuantMode``, ``per_row``, ``vfold``, ``COPY``
in both buffers and with ``repack``, in place and with gaps, and the checks.
Random data: seed printed; replay with VEC_SEED=<seed>.
"""

import os

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from hw.isa import Buf, Dyn, Err, Op, QuantMode, VecBuf, VecFn, buffer_depth, encode, word_layout
from hw.params import ChipParams
from hw.vector.engine import VecEngine
from sim.isa_sim import IsaSim
from sw.programs import raw_op

SEED = int(os.environ.get("VEC_SEED", np.random.SeedSequence().entropy % 2**32))
#: A small chip: 4 x 8 grid (ACC words of 8 lanes, 4 in the half layout), 8 vector lanes.
P = ChipParams(rows=4, cols=8, vector_lanes=8, vector_row=128, acc_sram_kib=8, act_sram_kib=2,
               kv_sram_kib=1, prm_entries=32)
DEP = {b: buffer_depth(P, b) for b in Buf}


def word_bits(p, buf):
    from amaranth.lib import data
    return data.Layout.cast(word_layout(p, buf)).size


class Harness(wiring.Component):
    """``VecEngine`` with ACC, ACT, PRM and KV memories; the write ports accept when an LFSR
    bit says so (``stall``: accept always when 0)."""

    def __init__(self, p, init: dict, engine):
        self.p, self.init, self.engine = p, init, engine
        super().__init__({"stall": wiring.In(1)})

    def elaborate(self, platform):
        m = Module()
        p = self.p
        eng = self.engine
        m.submodules.eng = eng
        self.mems = {}
        for b in (Buf.ACC, Buf.ACT, Buf.PRM, Buf.KV):
            mem = Memory(shape=word_bits(p, b), depth=DEP[b], init=self.init[b])
            m.submodules[f"mem_{b.name.lower()}"] = mem
            self.mems[b] = mem
        lfsr = Signal(16, init=0xACE1)
        m.d.sync += lfsr.eq((lfsr << 1) | (lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]))
        ok = ~self.stall | lfsr[0] | lfsr[3]
        for name, buf in (("acc_a", Buf.ACC), ("acc_b", Buf.ACC), ("act", Buf.ACT),
                          ("prm", Buf.PRM), ("kv", Buf.KV)):
            port = self.mems[buf].read_port()
            m.d.comb += [port.addr.eq(getattr(eng, f"{name}_addr")),
                         port.en.eq(getattr(eng, f"{name}_en")),
                         getattr(eng, f"{name}_data").eq(port.data)]
        for name, buf in (("acc_wr", Buf.ACC), ("act_wr", Buf.ACT)):
            wp = self.mems[buf].write_port()
            wr = getattr(eng, name)
            m.d.comb += [wp.addr.eq(wr.payload.addr), wp.data.eq(wr.payload.data),
                         wp.en.eq(wr.valid & ok), wr.ready.eq(ok)]
        return m


def buf_ints(sim: IsaSim, buf) -> list[int]:
    return [int.from_bytes(w.tobytes(), "little") for w in sim.bufs[buf]]


def run_op(sim: IsaSim, word: int, pos: int = 0, stall: bool = True,
           max_cycles: int = 20000):
    """Run one VEC micro-op ``word`` on a copy of ``sim``'s buffers in the harness and on
    ``sim`` itself; assert both agree (error, every buffer word). Returns (err, cycles from
    the command's acceptance to ``done``)."""
    init = {b: buf_ints(sim, b) for b in (Buf.ACC, Buf.ACT, Buf.PRM, Buf.KV)}
    eng = VecEngine(P)
    dut = Harness(P, init, eng)
    res = {}

    async def tb(ctx):
        ctx.set(dut.stall, int(stall))
        ctx.set(eng.cmd.payload.args.as_value(), word >> 6)
        ctx.set(eng.cmd.payload.pos, pos)
        ctx.set(eng.cmd.payload.pc, 5)
        ctx.set(eng.cmd.valid, 1)
        await ctx.tick().until(eng.cmd.ready)
        ctx.set(eng.cmd.valid, 0)
        cycles = 0
        err = Err.NONE
        while True:
            _, _, done, ev, code = await ctx.tick().sample(eng.done, eng.err_valid,
                                                           eng.err_code)
            cycles += 1
            assert cycles < max_cycles, "no done"
            if done:
                err = Err(code) if ev else Err.NONE
                break
        await ctx.tick()
        assert not ctx.get(eng.busy)
        res["err"], res["cycles"] = err, cycles
        res["mem"] = {b: [ctx.get(mem.data[i]) for i in range(DEP[b])]
                      for b, mem in dut.mems.items()}

    s = Simulator(dut)
    s.add_clock(1e-8)
    s.add_testbench(tb)
    s.run()

    sim.pos = pos
    sim.load_program([word, encode(Op.HALT)])
    want = sim.run()
    assert res["err"] == want, (res["err"], want)
    changed = 0
    for b, got in res["mem"].items():
        exp = buf_ints(sim, b)
        bad = [i for i in range(DEP[b]) if got[i] != exp[i]]
        assert not bad, f"{b.name}: {len(bad)} words differ, first {bad[:8]}"
        changed += sum(got[i] != init[b][i] for i in range(DEP[b]))
    assert want == Err.NONE or changed == 0, changed  # a failing op writes nothing
    print(f"{want.name}, {res['cycles']} cycles, {changed} words written")
    return res["err"], res["cycles"]


# -- random buffer contents ---------------------------------------------------------------------


def random_sim(rng) -> IsaSim:
    """An IsaSim whose ACC holds wide values of every magnitude (a decade per word, INT32 ends
    now and then), ACT / PRM / KV random words."""
    sim = IsaSim(P, vector=True)
    n = DEP[Buf.ACC]
    mag = 10.0 ** rng.uniform(-2, 9.3, (n, 1))
    acc = np.clip(np.round(rng.normal(size=(n, P.cols)) * mag), -(1 << 31), (1 << 31) - 1)
    ends = rng.random((n, P.cols)) < 0.02
    acc = np.where(ends, rng.choice([-(1 << 31), (1 << 31) - 1], (n, P.cols)), acc)
    sim.write_buffer(Buf.ACC, 0, {"": acc.astype(np.int64)})
    for b in (Buf.ACT, Buf.PRM):
        raw = rng.integers(0, 256, sim.bufs[b].shape, dtype=np.uint8)
        sim.bufs[b][:] = raw & sim._mask[b]
    sim.bufs[Buf.KV][:] = rng.integers(0, 256, sim.bufs[Buf.KV].shape, dtype=np.uint8)
    return sim


def v_scales(sim, rng, src_b: int, G: int, keys: int, exp_lo: int = -128, exp_hi: int = 128):
    """V-scale words of ``keys`` keys at KV ``src_b`` (``G`` group words and an exponent word
    per block of ``PC`` keys) as ``KV_APPEND`` writes them from a per-row QUANT: group 0's
    lane ``gshift = act_headroom`` or ``gzero``; exponents in ``[exp_lo, exp_hi)``."""
    PC = P.cols // 2
    H = P.numerics.act_headroom
    for b in range(-(-keys // PC)):
        w = src_b + b * (G + 1)
        sim.bufs[Buf.KV][w] = np.where(rng.random(PC) < 0.15, 1 << 5, H)
        sim.bufs[Buf.KV][w + G] = rng.integers(exp_lo, exp_hi, PC).astype(np.int8).view(
            np.uint8)


def vec(fn, **kw):
    return encode(Op.VEC, fn=fn, **kw)


@pytest.fixture
def rng():
    print(f"VEC_SEED={SEED}")
    return np.random.default_rng(SEED)


# -- element-wise ------------------------------------------------------------------------------


@pytest.mark.parametrize("half", [0, 1], ids=["full", "half"])
@pytest.mark.parametrize("fn", [VecFn.RESIDUAL, VecFn.GELU, VecFn.SILU_MUL], ids=lambda v: v.name)
def test_elementwise(rng, fn, half):
    """3 rows of 21 elements (a partial last word and beat), gaps between rows."""
    sim = random_sim(rng)
    E = P.cols // 2 if half else P.cols
    W = -(-21 // E)
    run_op(sim, vec(fn, half=half, rows=3, length=21, src_a=2, src_b=40, src_stride=W + 1,
                    dst=80, dst_stride=W + 2))


def test_elementwise_in_place_dyn(rng):
    """RESIDUAL into its own b operand, length = pos + rows."""
    sim = random_sim(rng)
    run_op(sim, vec(VecFn.RESIDUAL, dyn=Dyn.POS, rows=2, src_a=0, src_b=20, src_stride=5,
                    dst=20, dst_stride=5), pos=30)


@pytest.mark.parametrize("half", [0, 1], ids=["full", "half"])
def test_rope(rng, half):
    sim = random_sim(rng)
    E = P.cols // 2 if half else P.cols
    W = -(-20 // E)
    run_op(sim, vec(VecFn.ROPE, half=half, rows=3, length=20, src_a=0, src_b=30,
                    src_stride=W, dst=0, dst_stride=W), pos=4)


# -- row operations ----------------------------------------------------------------------------


@pytest.mark.parametrize("half", [0, 1], ids=["full", "half"])
@pytest.mark.parametrize("fn", [VecFn.LAYERNORM, VecFn.RMSNORM], ids=lambda v: v.name)
def test_norm(rng, fn, half):
    sim = random_sim(rng)
    E = P.cols // 2 if half else P.cols
    W = -(-37 // E)
    run_op(sim, vec(fn, half=half, rows=3, length=37, src_a=1, src_stride=W + 1, dst=60,
                    dst_stride=W, prm=3))


@pytest.mark.parametrize("mode", ["static", "causal", "causal_dyn"])
def test_softmax(rng, mode):
    sim = random_sim(rng)
    dyn = mode == "causal_dyn"
    run_op(sim, vec(VecFn.SOFTMAX, half=1, rows=3, length=0 if dyn else 19,
                    dyn=Dyn.POS if dyn else Dyn.STATIC, causal=int(mode != "static"),
                    src_a=0, src_stride=6, dst=0, dst_stride=6), pos=9)


@pytest.mark.parametrize("half", [0, 1], ids=["full", "half"])
@pytest.mark.parametrize("qmode", list(QuantMode), ids=lambda v: v.name)
@pytest.mark.parametrize("per_row", [0, 1], ids=["group", "per_row"])
def test_quant(rng, qmode, per_row, half):
    """3 rows of 27 elements (a partial group and ACT word); two blocks for A15 / A8X2."""
    sim = random_sim(rng)
    E = P.cols // 2 if half else P.cols
    W = -(-27 // E)
    run_op(sim, vec(VecFn.QUANT, qmode=qmode, per_row=per_row, half=half, rows=3, length=27,
                    src_a=5, src_stride=W, dst=3, dst_stride=-(-27 // P.rows) + 1))


@pytest.mark.parametrize("qmode", list(QuantMode), ids=lambda v: v.name)
@pytest.mark.parametrize("causal", [0, 1], ids=["all", "causal"])
@pytest.mark.parametrize("G, exps", [(2, (-128, 128)), (1, (-9, -3))], ids=["wild", "tame"])
def test_quant_vfold(rng, qmode, causal, G, exps):
    """Probabilities (any low 17 bits) with V's scales folded in: 3 query rows at pos 8 over
    11 keys (dyn); exponents over the whole byte (most keys shifted out) or close together."""
    sim = random_sim(rng)
    v_scales(sim, rng, 4, G, 11, *exps)
    run_op(sim, vec(VecFn.QUANT, qmode=qmode, vfold=1, causal=causal, dyn=Dyn.POS, half=1,
                    rows=3, src_a=0, src_stride=3, src_b=4, vgroups=G, dst=0,
                    dst_stride=3), pos=8)


# -- COPY --------------------------------------------------------------------------------------


@pytest.mark.parametrize("half, repack", [(0, 0), (1, 0), (0, 1), (1, 1)],
                         ids=["full", "half", "full_repack", "half_repack"])
def test_copy_acc(rng, half, repack):
    sim = random_sim(rng)
    run_op(sim, vec(VecFn.COPY, buf=VecBuf.ACC, half=half, repack=repack, rows=3, length=13,
                    src_a=0, src_stride=5, dst=50, dst_stride=4))


def test_copy_act(rng):
    sim = random_sim(rng)
    run_op(sim, vec(VecFn.COPY, buf=VecBuf.ACT, rows=3, length=13, src_a=7, src_stride=4,
                    dst=100, dst_stride=5))


# -- checks ------------------------------------------------------------------------------------


CHECKS = [
    ("bad_fn", raw_op(Op.VEC, "vec", fn=9, rows=1, length=1), 0),
    ("qmode_3", raw_op(Op.VEC, "vec", fn=VecFn.QUANT, qmode=3, rows=1, length=4), 0),
    ("vfold_vgroups_0", vec(VecFn.QUANT, vfold=1, rows=1, length=4), 0),
    ("rows_0", vec(VecFn.GELU, rows=0, length=4, src_a=DEP[Buf.ACC] - 1), 0),
    ("length_0", vec(VecFn.GELU, rows=1, length=0), 0),
    ("row_limit", vec(VecFn.SOFTMAX, rows=1, length=P.vector_row + 1), 0),
    ("dyn_row_limit", vec(VecFn.RMSNORM, rows=2, dyn=Dyn.POS), P.vector_row - 1),
    ("rope_odd", vec(VecFn.ROPE, rows=1, length=5), 0),
    ("src_range", vec(VecFn.GELU, rows=2, length=16, src_a=DEP[Buf.ACC] - 3, src_stride=2), 0),
    ("b_range", vec(VecFn.RESIDUAL, rows=2, length=8, src_stride=1, src_b=DEP[Buf.ACC] - 1),
     0),
    ("b_fits", vec(VecFn.RESIDUAL, rows=2, length=8, src_stride=1, src_b=DEP[Buf.ACC] - 2,
                   dst=DEP[Buf.ACC] - 2, dst_stride=1), 0),
    ("table_range", vec(VecFn.ROPE, rows=2, length=8, src_b=DEP[Buf.ACC] - 10), 9),
    ("prm_range", vec(VecFn.LAYERNORM, rows=1, length=16, prm=DEP[Buf.PRM] - 4), 0),
    ("prm_fits", vec(VecFn.LAYERNORM, rows=1, length=16, prm=DEP[Buf.PRM] - 5), 0),
    ("kv_range", vec(VecFn.QUANT, vfold=1, vgroups=3, rows=1, length=9,
                     src_b=DEP[Buf.KV] - 11), 0),
    ("dst_act_range", vec(VecFn.QUANT, qmode=QuantMode.A15, rows=2, length=8,
                          dst=DEP[Buf.ACT] - 7, dst_stride=2), 0),
    ("dst_acc_range", vec(VecFn.COPY, repack=1, rows=1, length=9, dst=DEP[Buf.ACC] - 2), 0),
    ("copy_act_range", vec(VecFn.COPY, buf=VecBuf.ACT, rows=1, length=9,
                           src_a=DEP[Buf.ACT] - 2), 0),
]


@pytest.mark.parametrize("name, word, pos", [pytest.param(*c, id=c[0]) for c in CHECKS])
def test_checks(rng, name, word, pos):
    """Each check (and a boundary that fits): the error, within a few cycles, nothing
    written."""
    sim = random_sim(rng)
    err, cycles = run_op(sim, word, pos)
    assert (err == Err.NONE) == name.endswith("fits"), err
    if err != Err.NONE:
        assert cycles < 20


def test_vfold_bad_scale(rng):
    """A V scale lane outside the format among the keys read: BAD_FIELD, nothing written;
    beyond the keys read: fine."""
    sim = random_sim(rng)
    op = dict(qmode=QuantMode.A15, vfold=1, half=1, rows=2, length=10, src_a=0, src_stride=3,
              src_b=0, vgroups=1, dst=0, dst_stride=3)
    v_scales(sim, rng, 0, 1, 10)
    sim.bufs[Buf.KV][2, 1] = 21  # block 1 (keys 4..7), lane 1: key 5
    err, _ = run_op(sim, vec(VecFn.QUANT, **op))
    assert err == Err.BAD_FIELD
    err, _ = run_op(sim, vec(VecFn.QUANT, **{**op, "length": 5}))
    assert err == Err.NONE

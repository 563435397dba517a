"""The vector unit with fewer lanes than a buffer word holds elements (``hw/vector/engine.py``:
beats and words meet in pieces; the FPGA configuration ``hw.board_top.CHIP_85F`` has 2 lanes
on a 16 x 4 grid), in amaranth.sim against the ISA simulator.

The micro-ops of ``tests/test_vec_engine.py`` (its harness, random buffers and ``run_op``) on
its 4 x 8 chip with 2 lanes (every layout split: an ACC word in 4 pieces, a half word in 2, an
ACT word of 4 rows in 2) and with 4 lanes (ACC words in 2 pieces; half and ACT words whole).
A few run by default, the rest are slow-marked. Random data: seed printed (VEC_SEED).

The FPGA geometry itself (``P_85F``: 16 rows, 8 columns, 2 lanes: an ACT word of 16 rows in 8
pieces, an ACC word in 4) runs every test above (slow), and by default the QUANTs whose rows
end in an early piece of their last ACT word: the pieces after it must be written as 0, not as
what an earlier word left in the writer (found on CHIP_85F's SmolLM2 layer: a 1-key ``vfold``
row after a 64-element QUANT).
"""

from dataclasses import replace

import pytest
from amaranth.sim import Simulator

from hw.board_top import CHIP_85F
from hw.isa import Buf, Dyn, Err, Op, QuantMode, VecFn, buffer_depth, encode
from hw.vector.engine import VecEngine
from tests import test_vec_engine as base

LANES = [2, 4]

#: CHIP_85F's grid and vector unit (16 x 4, 2 lanes) with the harness's small buffers.
P_85F = replace(
    CHIP_85F, vector_row=128, acc_sram_kib=8, act_sram_kib=2, kv_sram_kib=1, prm_entries=32
)


def use_params(monkeypatch, p) -> None:
    """Run the base tests' harness on ``p``."""
    monkeypatch.setattr(base, "P", p)
    monkeypatch.setattr(base, "DEP", {b: buffer_depth(p, b) for b in Buf})


@pytest.fixture(
    params=[*LANES, pytest.param("85F", marks=pytest.mark.slow)],
    ids=lambda n: n if isinstance(n, str) else f"L{n}",
)
def lanes(request, monkeypatch):
    """The base tests' chip with ``vector_lanes`` = the parameter, or (slow) :data:`P_85F`."""
    if request.param == "85F":
        use_params(monkeypatch, P_85F)
    else:
        use_params(monkeypatch, replace(base.P, vector_lanes=request.param))
    return base.P.vector_lanes


@pytest.fixture
def rng():
    print(f"VEC_SEED={base.SEED}")
    return base.np.random.default_rng(base.SEED)


def test_elementwise_lanes(rng, lanes):
    base.test_elementwise(rng, VecFn.SILU_MUL, half=0)
    base.test_rope(rng, half=1)


def test_norm_lanes(rng, lanes):
    base.test_norm(rng, VecFn.LAYERNORM, half=1)


def test_quant_lanes(rng, lanes):
    base.test_quant(rng, QuantMode.A8X2, per_row=0, half=0)


@pytest.mark.slow
@pytest.mark.parametrize("half", [0, 1], ids=["full", "half"])
def test_elementwise_lanes_all(rng, lanes, half):
    for fn in (VecFn.RESIDUAL, VecFn.GELU, VecFn.SILU_MUL):
        base.test_elementwise(rng, fn, half)
    base.test_rope(rng, half)
    base.test_norm(rng, VecFn.RMSNORM, half)
    base.test_norm(rng, VecFn.LAYERNORM, half)


@pytest.mark.slow
def test_softmax_lanes(rng, lanes):
    for mode in ("static", "causal", "causal_dyn"):
        base.test_softmax(rng, mode)


@pytest.mark.slow
@pytest.mark.parametrize("half", [0, 1], ids=["full", "half"])
def test_quant_lanes_all(rng, lanes, half):
    for qmode in QuantMode:
        for per_row in (0, 1):
            base.test_quant(rng, qmode, per_row, half)


@pytest.mark.slow
def test_quant_vfold_lanes(rng, lanes):
    for qmode in QuantMode:
        base.test_quant_vfold(rng, qmode, causal=1, G=2, exps=(-128, 128))
    base.test_quant_vfold(rng, QuantMode.INT8, causal=0, G=1, exps=(-9, -3))
    base.test_vfold_bad_scale(rng)


@pytest.mark.slow
def test_copy_lanes(rng, lanes):
    for half, repack in ((0, 0), (1, 0), (0, 1), (1, 1)):
        base.test_copy_acc(rng, half, repack)
    base.test_copy_act(rng)


@pytest.fixture
def fpga(monkeypatch):
    """The base tests' harness on :data:`P_85F`."""
    use_params(monkeypatch, P_85F)


def run_ops(sim, words, pos: int = 0, max_cycles: int = 20000) -> None:
    """``base.run_op`` for a sequence of VEC micro-ops: each command in turn on one engine
    (its state carried from op to op, as in the chip), then every buffer word against
    ``sim`` running them as one program."""
    P, DEP = base.P, base.DEP
    bufs = (Buf.ACC, Buf.ACT, Buf.PRM, Buf.KV)
    init = {b: base.buf_ints(sim, b) for b in bufs}
    eng = VecEngine(P)
    dut = base.Harness(P, init, eng)
    got = {}

    async def tb(ctx):
        ctx.set(dut.stall, 1)
        for word in words:
            ctx.set(eng.cmd.payload.args.as_value(), word >> 6)
            ctx.set(eng.cmd.payload.pos, pos)
            ctx.set(eng.cmd.valid, 1)
            await ctx.tick().until(eng.cmd.ready)
            ctx.set(eng.cmd.valid, 0)
            for _ in range(max_cycles):
                _, _, done, ev = await ctx.tick().sample(eng.done, eng.err_valid)
                if done:
                    break
            else:
                raise AssertionError("no done")
            assert not ev, "the engine raised an error"
        got.update(
            {b: [ctx.get(mem.data[i]) for i in range(DEP[b])] for b, mem in dut.mems.items()}
        )

    s = Simulator(dut)
    s.add_clock(1e-8)
    s.add_testbench(tb)
    s.run()
    sim.pos = pos
    sim.load_program([*words, encode(Op.HALT)])
    assert sim.run() == Err.NONE
    for b in bufs:
        want = base.buf_ints(sim, b)
        bad = [i for i in range(DEP[b]) if got[b][i] != want[i]]
        assert not bad, f"{b.name}: {len(bad)} words differ, first {bad[:8]}"


def test_quant_partial_act_word_fpga(rng, fpga):
    """QUANT rows of 35 elements (the last ACT word: 3 elements, pieces 2..7 beyond the row)
    in every mode; 2 rows, so the second row's words follow a full one."""
    for qmode in QuantMode:
        op = dict(rows=2, length=35, src_a=3, src_stride=5, dst=1, dst_stride=7)
        base.run_op(base.random_sim(rng), base.vec(VecFn.QUANT, qmode=qmode, **op))


def test_vfold_after_quant_fpga(rng, fpga):
    """The layer's sequence: a QUANT of a 64-element row, then a ``vfold`` A15 row of one
    key (``dyn``, pos 0) into other ACT words: the 1-key row's word is 0 past its first
    piece (the writer still held the QUANT's last word)."""
    sim = base.random_sim(rng)
    base.v_scales(sim, rng, 4, 4, 1)
    row64 = dict(rows=1, length=64, src_a=10, src_stride=8, dst=20, dst_stride=4)
    key1 = dict(causal=1, dyn=Dyn.POS, half=1, rows=1, src_a=0, src_stride=1, src_b=4)
    words = [
        base.vec(VecFn.QUANT, **row64),
        base.vec(VecFn.QUANT, qmode=QuantMode.A15, vfold=1, vgroups=4, dst=40, **key1),
    ]
    run_ops(sim, words, pos=0)

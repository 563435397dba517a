"""Whole transformer layers as micro-op programs on the ISA simulator, against the golden
models on the real weights (DESIGN.md §4, installed offline).

- one all-MiniLM-L6-v2 encoder layer (``sw.programs.minilm_layer_program``) on 16 real
  tokens: bit for bit ``sim.golden_models.minilm_layer``;
- one SmolLM2-135M decoder layer (``sw.programs.smollm2_layer_program``) on 8 prompt
  tokens, then 4 decode steps all run by one program (the KV cache stays on chip): each
  step bit for bit ``sim.golden_models.SmolLM2Golden.layer``;
- the programs' WAITs (placed from the ops' footprints by ``sw.programs.Builder``) make
  the results independent of the schedule: the same programs under random schedules of an
  atomic-op model of the sequencer and its queues (VEC included) give the same bits, and
  without their WAITs they do not.

Expected values come from the golden models only, never from a program's own output.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hw.isa import Buf, Err, Op, Unit, decode  # noqa: E402
from hw.params import ChipParams  # noqa: E402
from sim import golden as G  # noqa: E402
from sim.golden_models import SmolLM2Golden, minilm_embeddings, minilm_layer  # noqa: E402
from sim.isa_sim import IsaSim  # noqa: E402
from sw.models import load_minilm, load_smollm2  # noqa: E402
from sw.programs import (  # noqa: E402
    Image,
    footprint,
    minilm_layer_program,
    smollm2_layer_program,
)
from sw.quantize import quantize_minilm, quantize_smollm2  # noqa: E402
from sw.tokenizer import MiniLMTokenizer, SmolLM2Tokenizer  # noqa: E402

#: The chip of the layer tests: the default one with 256 KiB of ACC (a MiniLM layer at 16
#: tokens keeps ~3.9 k wide words live in the half layout) and 4 MiB of off-chip memory
#: (the layer's INT8 weights and their parameters are 2.5 MB).
P_MINILM = ChipParams(acc_sram_kib=256, offchip_kib=4096)
TEXT = "The quick brown fox jumps over the lazy dog near the quiet river bank."


@pytest.fixture(scope="module")
def minilm():
    m = quantize_minilm(load_minilm())
    ids = MiniLMTokenizer().encode(TEXT)
    ids = ids[:15] + ids[-1:]  # 16 tokens: [CLS] ... [SEP]
    h = minilm_embeddings(ids, m)
    return m, h


@pytest.fixture(scope="module")
def minilm_prog(minilm):
    m, h = minilm
    return minilm_layer_program(P_MINILM, h, m.layers[0], m.config)


def test_minilm_layer_bit_exact(minilm, minilm_prog):
    """Layer 0 of all-MiniLM-L6-v2 on 16 tokens: the program's stored output equals the
    golden layer bit for bit, and the program fits the micro-op memory."""
    m, h = minilm
    lp = minilm_prog
    assert len(lp.prog) <= P_MINILM.uop_depth
    sim = IsaSim(P_MINILM, lp.img.mem, vector=True)
    sim.load_program(lp.prog)
    assert sim.run() == Err.NONE and sim.done
    want = minilm_layer(h, m.layers[0], m.config)
    got = lp.result(sim.offchip)
    assert got.shape == (16, 384)
    assert np.array_equal(got, want)
    print(f"MiniLM layer: {len(lp.prog)} micro-ops, image {lp.img.next * 8 / 1e6:.2f} MB")


# -- schedules ----------------------------------------------------------------------------------


def scheduled(sim: IsaSim, prog, rng, wait_ok=True, late=False) -> IsaSim:
    """``prog`` on ``sim`` (in place) under a random schedule of atomic ops
    (:meth:`IsaSim.run_scheduled`)."""
    return sim.run_scheduled(prog, rng, wait_ok=wait_ok, late=late)


def fresh(p, mem) -> IsaSim:
    return IsaSim(p, mem, vector=True)


def test_minilm_layer_any_schedule(minilm, minilm_prog):
    """The layer program under random schedules (one lazy, one eager-ish) gives the golden
    layer; with its WAITs ignored a schedule does not (the check is not vacuous)."""
    m, h = minilm
    lp = minilm_prog
    want = minilm_layer(h, m.layers[0], m.config)
    rng = np.random.default_rng(7)
    for late in (True, False):
        sim = scheduled(fresh(P_MINILM, lp.img.mem), lp.prog, rng, late=late)
        assert np.array_equal(lp.result(sim.offchip), want), f"late={late}"
    sim = scheduled(fresh(P_MINILM, lp.img.mem), lp.prog, rng, wait_ok=False, late=True)
    assert not np.array_equal(lp.result(sim.offchip), want)


def test_minilm_program_is_not_sequential_only(minilm_prog):
    """The WAITs are placed, not blanket drains: loads of later weights overlap GEMMs (a
    WAIT GEMM with count 1 before a streamed load) and most ops follow no WAIT at all."""
    words = [decode(w) for w in minilm_prog.prog]
    waits = [f for op, f in words if op == Op.WAIT]
    assert any(f["unit"] == Unit.GEMM and f["count"] == 1 for f in waits)
    assert len(waits) < len(words) / 2


# -- SmolLM2: prefill, then decode steps with one program ---------------------------------------

#: The same chip with 8 MiB off-chip (two programs' streams of a W4A8 layer share it).
P_SMOL = ChipParams(acc_sram_kib=256, offchip_kib=8192)
CAP = 12  # 8 prompt tokens + 4 decode steps
STEPS = [(0, 8)] + [(8 + i, 1) for i in range(4)]


@pytest.fixture(scope="module")
def smollm2():
    model = load_smollm2()
    m = quantize_smollm2(model, positions=16)
    tok = SmolLM2Tokenizer(model)
    ids = tok.encode(tok.chat_prompt("What is the capital of France?"))[:CAP]
    emb = G.embed(np.asarray(ids), m.token_embd)
    gold = SmolLM2Golden(m)
    cache = gold.new_cache(capacity=CAP)
    want = [gold.layer(0, emb[p0 : p0 + t], cache, p0) for p0, t in STEPS]
    img = Image(P_SMOL)
    progs = {t: smollm2_layer_program(P_SMOL, m.layers[0], m.config, m.rope_cos, m.rope_sin,
                                      t, CAP, img) for t in (8, 1)}
    return emb, want, img, progs


def run_steps(smollm2, run):
    """Every step on one simulator (the KV cache stays on chip): the host writes the step's
    input rows, ``run(sim, program)`` runs it; returns the outputs."""
    emb, _, img, progs = smollm2
    sim = fresh(P_SMOL, img.mem)
    out = []
    for p0, t in STEPS:
        lp = progs[t]
        assert sim.pos == p0
        lp.write_input(sim.offchip, emb[p0 : p0 + t])
        run(sim, lp.prog)
        out.append(lp.result(sim.offchip))
    return out


def test_smollm2_layer_prefill_and_decode(smollm2):
    """Layer 0 of SmolLM2-135M on 8 prompt tokens, then 4 decode steps all run by one
    program (dyn QKᵀ / SOFTMAX / vfold / P·V, RoPE rows from pos): every step's output
    equals ``SmolLM2Golden.layer`` bit for bit (GQA over the cache, RMSNorm, A8x2 GEMMs,
    SiLU·mul)."""
    _, want, _, progs = smollm2
    assert all(len(lp.prog) <= P_SMOL.uop_depth for lp in progs.values())

    def run(sim, prog):
        sim.load_program(prog)
        assert sim.run() == Err.NONE

    got = run_steps(smollm2, run)
    for (p0, t), g, w in zip(STEPS, got, want, strict=True):
        assert np.array_equal(g, w), f"step at pos {p0} ({t} tokens)"
    print(f"SmolLM2 layer: {len(progs[8].prog)} / {len(progs[1].prog)} micro-ops "
          "(prefill / decode)")


def test_smollm2_layer_any_schedule(smollm2):
    """The same steps under random (lazy) schedules give the golden outputs."""
    _, want, _, _ = smollm2
    rng = np.random.default_rng(11)
    got = run_steps(smollm2, lambda sim, prog: scheduled(sim, prog, rng, late=True))
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)


def test_footprints_cover_every_write(minilm_prog, smollm2):
    """The footprints the WAITs are placed from cover every buffer word an op writes: run
    the MiniLM program and the SmolLM2 prefill and a decode step op by op, and compare the
    buffers before and after each op."""
    _, _, img, progs = smollm2
    runs = [(P_MINILM, minilm_prog.img.mem, [minilm_prog.prog]),
            (P_SMOL, img.mem, [progs[8].prog, progs[1].prog])]
    checked = 0
    for p, mem, programs in runs:
        sim = fresh(p, mem)
        for prog in programs:
            sim.load_program(prog)
            while not sim.done:
                op, _ = decode(prog[sim.pc])
                fp = footprint(p, prog[sim.pc], sim.pos)
                before = {b: sim.bufs[b].copy() for b in Buf}
                assert sim.step() == Err.NONE
                for b in Buf:
                    changed = np.flatnonzero((sim.bufs[b] != before[b]).any(axis=1))
                    inside = np.zeros(len(changed), bool)
                    for space, lo, hi, write in fp:
                        if space == b and write:
                            inside |= (changed >= lo) & (changed < hi)
                    assert inside.all(), f"{op.name} at pc {sim.pc - 1} wrote {b.name} " \
                        f"words {changed[~inside][:5]} outside its footprint {fp}"
                    checked += len(changed)
    assert checked > 10000

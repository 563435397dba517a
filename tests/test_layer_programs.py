"""Compiled single layers on the ISA simulator: the schedules the compiler writes
(``sw/compiler.py`` with ``layers=1``, ``sw.programs.Builder`` placing the WAITs), against
the golden layers on the real weights (DESIGN.md §4, installed offline).

- one all-MiniLM-L6-v2 encoder layer on 16 real tokens: bit for bit
  ``sim.golden_models.minilm_layer``;
- one SmolLM2-135M decoder layer on 8 prompt tokens, then 4 decode steps all run by one
  program (the KV cache stays on chip): each step bit for bit ``SmolLM2Golden.layer``;
- the programs' WAITs make the results independent of the schedule: the same programs under
  random schedules of an atomic-op model of the sequencer and its queues (VEC included) give
  the same bits, and without their WAITs they do not;
- the footprints the WAITs are placed from cover every word an op writes.

Expected values come from the golden models only, never from a program's own output.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hw.board_top import CHIP_85F  # noqa: E402
from hw.isa import OP_UNIT, Buf, Dyn, Err, Op, PosReg, PSrc, Unit, VecFn, WSrc, decode  # noqa: E402
from hw.params import ChipParams  # noqa: E402
from sim import golden as G  # noqa: E402
from sim.golden_models import SmolLM2Golden, minilm_embeddings, minilm_layer  # noqa: E402
from sim.isa_sim import IsaSim  # noqa: E402
from sw.compiler import MiniLMCompiled, SmolLM2Compiled  # noqa: E402
from sw.models import load_minilm, load_smollm2  # noqa: E402
from sw.programs import footprint  # noqa: E402
from sw.quantize import quantize_minilm, quantize_smollm2  # noqa: E402
from sw.tokenizer import MiniLMTokenizer, SmolLM2Tokenizer  # noqa: E402

#: The chip of the layer tests: the default one with 256 KiB of ACC and PRM / off-chip
#: memory for a layer's streamed weights.
P = ChipParams(acc_sram_kib=256, prm_entries=512, offchip_kib=8192)
TEXT = "The quick brown fox jumps over the lazy dog near the quiet river bank."


class Step:
    """A compiled program with its input rows written into a fresh image copy."""

    def __init__(self, c, prog, rows):
        self.c, self.prog = c, prog
        self.mem = c.img.mem.copy()
        B = c.p.offchip_bytes_per_cycle
        raw = c.input_bytes(prog, rows)
        self.mem[prog.in_off * B: prog.in_off * B + raw.size] = raw

    def sim(self) -> IsaSim:
        return IsaSim(self.c.p, self.mem, vector=True)

    def result(self, sim: IsaSim) -> np.ndarray:
        return self.c.result(self.prog, sim.offchip)


@pytest.fixture(scope="module")
def minilm():
    m = quantize_minilm(load_minilm())
    ids = MiniLMTokenizer().encode(TEXT)
    ids = ids[:15] + ids[-1:]  # 16 tokens: [CLS] ... [SEP]
    h = minilm_embeddings(ids, m)
    c = MiniLMCompiled(m, P, layers=1, embeddings=False)
    return m, h, Step(c, c.program(16), h)


def test_minilm_layer_bit_exact(minilm):
    """Layer 0 of all-MiniLM-L6-v2 on 16 tokens: the program's stored output equals the
    golden layer bit for bit, and the program fits the micro-op memory."""
    m, h, st = minilm
    assert st.prog.length <= P.uop_depth
    sim = st.sim()
    sim.load_program(st.prog.words)
    assert sim.run() == Err.NONE and sim.done
    got = st.result(sim)
    assert got.shape == (16, 384)
    assert np.array_equal(got, minilm_layer(h, m.layers[0], m.config))


def test_minilm_layer_any_schedule(minilm):
    """The layer program under random schedules (one lazy, one eager-ish) gives the golden
    layer; with its WAITs ignored a schedule does not (the check is not vacuous)."""
    m, h, st = minilm
    want = minilm_layer(h, m.layers[0], m.config)
    rng = np.random.default_rng(7)
    for late in (True, False):
        sim = st.sim().run_scheduled(st.prog.words, rng, late=late)
        assert np.array_equal(st.result(sim), want), f"late={late}"
    sim = st.sim().run_scheduled(st.prog.words, rng, wait_ok=False, late=True)
    assert not np.array_equal(st.result(sim), want)


def test_minilm_program_is_not_sequential_only(minilm):
    """The WAITs are placed, not blanket drains: loads of later weights overlap GEMMs (a
    WAIT GEMM with count 1 before a streamed load) and most ops follow no WAIT at all."""
    words = [decode(w) for w in minilm[2].prog.words]
    waits = [f for op, f in words if op == Op.WAIT]
    assert any(f["unit"] == Unit.GEMM and f["count"] == 1 for f in waits)
    assert len(waits) < len(words) / 2


def test_minilm_streamed_any_schedule(minilm):
    """The streamed plan (the FPGA boards' chip, ``CHIP_85F``: hidden states through
    off-chip memory, the step a sequence of programs): layer 0 on the same 16 tokens, each
    program within the micro-op memory, gives the golden layer under random schedules (the
    programs one after another on one simulator); with their WAITs ignored it does not."""
    m, h, _ = minilm
    c = MiniLMCompiled(m, CHIP_85F, layers=1, embeddings=False)
    prog = c.program(16)
    assert len(prog.parts) > 1 and all(pt.length <= CHIP_85F.uop_depth for pt in prog.parts)
    st = Step(c, prog, h)
    want = minilm_layer(h, m.layers[0], m.config)
    rng = np.random.default_rng(8)
    for late, wait_ok in ((True, True), (False, True), (True, False)):
        sim = st.sim()
        for part in prog.parts:
            sim.run_scheduled(part.words, rng, late=late, wait_ok=wait_ok, pos=0)
        assert np.array_equal(st.result(sim), want) == wait_ok, (late, wait_ok)


# -- SmolLM2: prefill, then decode steps with one program ---------------------------------------

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
    c = SmolLM2Compiled(m, P, cap=CAP, chunk=8, layers=1, head=False)
    progs = {t: c.program(t) for t in (8, 1)}
    return c, emb, want, progs


def run_steps(smollm2, run):
    """Every step on one simulator (the KV cache stays on chip): the host writes the step's
    input rows, ``run(sim, program)`` runs it; returns the outputs."""
    c, emb, _, progs = smollm2
    sim = IsaSim(c.p, c.image_bytes(), vector=True)
    out = []
    for p0, t in STEPS:
        prog = progs[t]
        assert sim.pos == p0
        sim.write_offchip(prog.in_off, c.input_bytes(prog, emb[p0 : p0 + t]))
        run(sim, prog.words)
        out.append(c.result(prog, sim.offchip))
    return out


def test_smollm2_layer_prefill_and_decode(smollm2):
    """Layer 0 of SmolLM2-135M on 8 prompt tokens, then 4 decode steps all run by one
    program (dyn QKᵀ / SOFTMAX / vfold / P·V, RoPE rows from pos): every step's output
    equals ``SmolLM2Golden.layer`` bit for bit (GQA over the cache, RMSNorm, A8x2 GEMMs,
    SiLU·mul)."""
    _, _, want, progs = smollm2
    assert all(prog.length <= P.uop_depth for prog in progs.values())

    def run(sim, words):
        sim.load_program(words)
        assert sim.run() == Err.NONE

    got = run_steps(smollm2, run)
    for (p0, t), g, w in zip(STEPS, got, want, strict=True):
        assert np.array_equal(g, w), f"step at pos {p0} ({t} tokens)"


def test_smollm2_layer_any_schedule(smollm2):
    """The same steps under random (lazy) schedules give the golden outputs."""
    _, _, want, _ = smollm2
    rng = np.random.default_rng(11)
    got = run_steps(smollm2, lambda sim, words: sim.run_scheduled(words, rng, late=True))
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)


def test_footprints_cover_every_write(minilm, smollm2):
    """The footprints the WAITs are placed from cover every buffer word an op writes: run
    the MiniLM program and the SmolLM2 prefill and a decode step op by op, and compare the
    buffers before and after each op."""
    c, emb, _, progs = smollm2
    st = minilm[2]
    sm = IsaSim(c.p, c.image_bytes(), vector=True)
    sm.write_offchip(progs[8].in_off, c.input_bytes(progs[8], emb[:8]))
    runs = [(st.sim(), [st.prog.words]), (sm, [progs[8].words, progs[1].words])]
    checked = 0
    for sim, programs in runs:
        for prog in programs:
            sim.load_program(prog)
            while not sim.done:
                op, _ = decode(prog[sim.pc])
                fp = footprint(P, prog[sim.pc], sim.pos, sim.kv_base)
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


def _follows(op, f) -> tuple[bool, bool]:
    """Whether a micro-op reads ``pos`` / ``kv_base`` as the sequencer attaches them
    (``hw/isa.py``): KV_APPEND both; a GEMM ``pos`` with ``dyn``, ``kv_base`` with a KV
    source; a VEC ``pos`` with ``dyn``, RoPE or a causal mask, ``kv_base`` with ``vfold``."""
    if op == Op.KV_APPEND:
        return True, True
    if op == Op.GEMM:
        return f["dyn"] == Dyn.POS, f["wsrc"] != WSrc.WGT or f["psrc"] == PSrc.KV
    if op == Op.VEC:
        return (f["dyn"] == Dyn.POS or f["fn"] == VecFn.ROPE or bool(f["causal"]),
                bool(f["vfold"]))
    return False, False


def test_scheduled_order_keeps_dependences(minilm, smollm2):
    """The Builder emits the compiler's ops in an order of its own (the units' streams
    interleaved); every two ops that conflict keep their logical order: a buffer word one
    writes and the other reads or writes (the footprints), a ``SETPOS`` and an op reading
    its register, two ops of one unit. Checked pair by pair on the MiniLM layer and the
    SmolLM2 prefill and decode programs; and the scheduler does reorder (not a no-op)."""
    c, _, _, progs = smollm2
    cases = [(minilm[2].prog, 0), (progs[8], CAP - 8), (progs[1], CAP - 1)]
    moved = 0
    for prog, pos_hi in cases:
        assert len(prog.logical) == len(prog.placed) and sorted(prog.placed) == \
            sorted(set(prog.placed)), prog.name
        assert all(prog.words[at] == w for w, at in zip(prog.logical, prog.placed,
                                                        strict=True))
        kv_base, info = 0, []
        for w in prog.logical:
            op, f = decode(w)
            if op == Op.SETPOS and f["reg"] == PosReg.KV_BASE:
                kv_base = kv_base + f["value"] if f["add"] else f["value"]
            reg = PosReg(f["reg"]) if op == Op.SETPOS else None
            fp = footprint(P, w, pos_hi, kv_base)
            info.append((OP_UNIT.get(op), reg, _follows(op, f), fp))
        for i, (ui, ri, fi, fpi) in enumerate(info):
            for j in range(i + 1, len(info)):
                uj, rj, fj, fpj = info[j]
                dep = (ui is not None and ui == uj) or \
                    any(sa == sb and (wa or wb) and la < hb and lb < ha
                        for sa, la, ha, wa in fpi for sb, lb, hb, wb in fpj) or \
                    (ri is not None and fj[ri]) or (rj is not None and fi[rj]) or \
                    (ri is not None and ri == rj)
                if dep:
                    assert prog.placed[i] < prog.placed[j], \
                        f"{prog.name}: ops {i} and {j} (logical) swapped"
        moved += sum(a > b for a, b in zip(prog.placed, prog.placed[1:], strict=False))
    assert moved > 0

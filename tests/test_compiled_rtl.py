"""Compiled models on the chip's Verilog (Verilator, the chip with its vector unit), driven
by the runtime like a board (``sim.devices.RtlDevice``: one live simulation, the host writes
inputs and reads outputs between runs), against the golden models and the timing model.

- one all-MiniLM-L6-v2 layer at 32 tokens and one SmolLM2-135M layer over an 8-token prefill
  and 4 decode steps (the KV cache staying on chip), compiled by ``sw/compiler.py``: every
  output bit for bit the golden layer's, every run's measured cycles equal to
  ``sim.timing.predict``'s;
- the whole of all-MiniLM-L6-v2 on the FPGA boards' chip (``CHIP_85F``), streamed as a
  sequence of programs: bit-exact, every program's cycles as predicted;
- SmolLM2 through all 30 layers and the LM head for a few tokens (``test_smollm2_tokens``):
  the logits of every step bit for bit the golden model's.

Each needs a chip build of its own configuration (minutes), so all are slow-marked:
``make test-rtl-models`` runs them.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hw.board_top import CHIP_85F  # noqa: E402
from hw.params import ChipParams, preset  # noqa: E402
from sim import golden as G  # noqa: E402
from sim.devices import open_sim_device  # noqa: E402
from sim.golden_models import SmolLM2Golden, minilm_encode, minilm_layer  # noqa: E402
from sim.timing import predict  # noqa: E402
from sw.compiler import MiniLMCompiled, SmolLM2Compiled  # noqa: E402
from sw.models import load_minilm, load_smollm2  # noqa: E402
from sw.quantize import quantize_minilm, quantize_smollm2  # noqa: E402
from sw.runtime import MiniLMRunner, Runner, SmolLM2Runner  # noqa: E402
from sw.tokenizer import MiniLMTokenizer, SmolLM2Tokenizer  # noqa: E402

pytestmark = pytest.mark.slow

#: A layer's chip: the default grid with 256 KiB of ACC, 512 PRM entries and 8 MiB off-chip.
P_LAYER = ChipParams(acc_sram_kib=256, prm_entries=512, offchip_kib=8192)


def test_minilm_layer():
    """A MiniLM layer at 32 tokens (row blocks), random hidden states in: bit-exact, and
    the cycles the timing model predicts."""
    m = quantize_minilm(load_minilm())
    c = MiniLMCompiled(m, P_LAYER, layers=1, embeddings=False)
    prog = c.program(32)
    h = np.random.default_rng(3).integers(-(1 << 17), 1 << 17, (32, m.config.d_model))
    want_cycles = predict(P_LAYER, prog.words, vector=True).cycles
    with open_sim_device("rtl", c) as dev:
        got, st = Runner(c, dev, G.embed).step(prog, h, 0)
    assert np.array_equal(got, minilm_layer(h, m.layers[0], m.config))
    print(f"\nMiniLM layer, 32 tokens in blocks of {prog.block}: {prog.length} micro-ops, "
          f"{st.cycles} cycles measured, {want_cycles} predicted, {st.wall_s:.1f} s wall")
    assert st.cycles == want_cycles


def test_minilm_fpga_chip():
    """all-MiniLM-L6-v2 on the FPGA boards' chip (``CHIP_85F``: 16 x 4 grid, 2 vector lanes,
    16 KiB buffers, 1024 micro-ops; its off-chip memory as the compiler raised it for the
    weights): a short sentence through every layer, hidden states streamed through off-chip
    memory, as a sequence of programs on one live simulation. The last hidden states equal
    the golden model's bit for bit, and every program's measured cycles equal
    ``sim.timing.predict``'s."""
    model = load_minilm()
    m = quantize_minilm(model)
    ids = MiniLMTokenizer(model.path).encode("A man is playing a guitar.")
    c = MiniLMCompiled(m, CHIP_85F)
    prog = c.program(len(ids))
    assert c.p.vector_lanes == 2 and len(prog.parts) > 1
    want = [predict(c.p, part.words, vector=True).cycles for part in prog.parts]
    with open_sim_device("rtl", c) as dev:
        r = MiniLMRunner(c, dev, G.embed)
        h = r.hidden(ids)
    st = r.stats[-1][2]
    assert np.array_equal(h, minilm_encode(ids, m))
    print(f"\nMiniLM on CHIP_85F, {len(ids)} tokens: {len(prog.parts)} programs, "
          f"{st.cycles} cycles measured, {sum(want)} predicted, {st.wall_s:.1f} s wall")
    bad = [(i, got, exp) for i, (got, exp) in enumerate(zip(st.part_cycles, want, strict=True))
           if got != exp]
    assert not bad, bad


def test_smollm2_layer():
    """A SmolLM2 layer: 8-token prefill, then 4 decode steps by one program: every step
    bit-exact with ``SmolLM2Golden.layer`` and its cycles as predicted."""
    model = load_smollm2()
    m = quantize_smollm2(model, positions=16)
    tok = SmolLM2Tokenizer(model)
    ids = tok.encode(tok.chat_prompt("What is the capital of France?"))[:12]
    emb = G.embed(np.asarray(ids), m.token_embd)
    gold = SmolLM2Golden(m)
    cache = gold.new_cache(capacity=12)
    c = SmolLM2Compiled(m, P_LAYER, cap=12, chunk=8, layers=1, head=False)
    for T in (8, 1):
        c.program(T)
    rows = []
    with open_sim_device("rtl", c) as dev:
        r = Runner(c, dev, G.embed)
        for p0, t in [(0, 8), (8, 1), (9, 1), (10, 1), (11, 1)]:
            prog = c.program(t)
            got, st = r.step(prog, emb[p0:p0 + t], p0)
            assert np.array_equal(got, gold.layer(0, emb[p0:p0 + t], cache, p0)), p0
            pred = predict(P_LAYER, prog.words, vector=True, pos_init=p0).cycles
            rows.append((p0, t, st.cycles, pred))
    print()
    for p0, t, cyc, pred in rows:
        print(f"SmolLM2 layer at pos {p0} ({t} tokens): {cyc} cycles measured, {pred} predicted")
    assert all(cyc == pred for _, _, cyc, pred in rows)


def test_smollm2_tokens():
    """All 30 layers and the LM head on the chip's Verilog: a short raw prompt, then two
    greedy decode steps; the logits of every step equal the golden model's."""
    model = load_smollm2()
    tok = SmolLM2Tokenizer(model)
    ids = tok.encode("The capital of France is")
    cap = len(ids) + 2
    m = quantize_smollm2(model, positions=cap)
    p = preset("sim")
    c = SmolLM2Compiled(m, p, cap=cap, chunk=16)
    for T in {*c.chunks(len(ids)), 1}:
        c.program(T)
    gold = SmolLM2Golden(m)
    cache = gold.new_cache(cap)
    with open_sim_device("rtl", c) as dev:
        r = SmolLM2Runner(c, dev, G.embed)
        logits = r.prefill(ids)
        assert np.array_equal(logits, gold.forward(ids, cache)[-1])
        out = []
        for _ in range(2):
            out.append(int(np.argmax(logits)))
            logits = r.decode(out[-1])
            assert np.array_equal(logits, gold.forward([out[-1]], cache)[-1])
    print(f"\nSmolLM2 on RTL: {tok.decode(out)!r}; cycles per step "
          f"{[st.cycles for _, _, st in r.stats]}")

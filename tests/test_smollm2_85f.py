"""SmolLM2-135M on the FPGA boards' chip (``hw.board_top.CHIP_85F``: 16 x 4 grid, 16 KiB WGT /
ACT / ACC, 8 KiB KV = 2,048 KV words, 1024 micro-ops, 2 vector lanes): the compiler's
*streamed* plan (``SmolLM2Compiled._build_streamed``), the KV cache in off-chip memory (a
region per layer and KV head, LOADed into the KV buffer for each step's attention, appended
and STOREd back), a step as a sequence of programs (``Program.parts``).

- default suite: two layers at the longest context one KV head's region holds (58
  positions: one region in the KV buffer at a time, every head through the same slot),
  prefill in chunks and decode steps to the last position: every step's output rows equal
  ``SmolLM2Golden.layer``'s bit for bit on the ISA simulator; one position more is a clear
  error, from the compiler and the runtime;
- slow: the whole model (30 layers, the final norm and the LM head) on the chat prompt,
  prefill and greedy decode: the logits of every step equal ``SmolLM2Golden.forward``'s;
- slow, RTL: one layer at the longest context (prefill chunks, then decode steps past the
  first 16-token tile of P·V) on the chip's Verilog of CHIP_85F itself
  (``sim.devices.RtlDevice``): bit-exact with golden, and every program's measured cycles
  equal ``sim.timing.predict``'s.

Expected values come from the golden model only.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hw.board_top import CHIP_85F  # noqa: E402
from hw.isa import Buf, buffer_depth  # noqa: E402
from sim import golden as G  # noqa: E402
from sim.devices import open_sim_device  # noqa: E402
from sim.golden_models import SmolLM2Golden  # noqa: E402
from sw.compiler import CompileError, SmolLM2Compiled  # noqa: E402
from sw.models import load_smollm2  # noqa: E402
from sw.programs import KvHead  # noqa: E402
from sw.quantize import quantize_smollm2  # noqa: E402
from sw.runtime import Runner, SmolLM2Runner  # noqa: E402
from sw.tokenizer import SmolLM2Tokenizer  # noqa: E402

SEED = int(os.environ.get("SMOLLM2_85F_SEED", "85"))


def max_context(p) -> int:
    """The most positions one KV head's region holds in the KV buffer (from the layout)."""
    kv = buffer_depth(p, Buf.KV)
    return max(c for c in range(1, 4096) if KvHead(p, 64, c).end <= kv)


CAP = max_context(CHIP_85F)


@pytest.fixture(scope="module")
def smollm2():
    model = load_smollm2()
    return model, quantize_smollm2(model, positions=CAP + 1)


def run_layers(c, gold, emb, steps, device="isa"):
    """Run ``steps`` (token counts) from position 0 through the compiled layers and the golden
    ones; returns ``[(pos, T, equal, stats)]``."""
    cache = gold.new_cache(capacity=c.cap)
    out, pos = [], 0
    with open_sim_device(device, c) as dev:
        r = Runner(c, dev, G.embed)
        for t in steps:
            got, st = r.step(c.program(t), emb[pos:pos + t], pos)
            want = emb[pos:pos + t]
            for li in range(c.n_layers):
                want = gold.layer(li, want, cache, pos)
            out.append((pos, t, np.array_equal(got, want), st))
            pos += t
    return out


def test_two_layers_to_the_last_position(smollm2):
    """Two layers at the longest context (58 positions on CHIP_85F): prefill chunks, then
    decode steps up to the last position, each bit-exact with golden."""
    _, m = smollm2
    # 4,096 KV words: 29 key blocks x (64 + 5) + 58 x 32 value words + 29 x 5 value scales
    assert CAP == 58
    c = SmolLM2Compiled(m, CHIP_85F, cap=CAP, chunk=16, layers=2, head=False)
    assert c.streamed and len(c.kv_slots) == 1 and c.p == CHIP_85F
    T = c.chunk
    assert 1 < T < 16  # the longest step the buffers hold
    prog = c.program(1)
    assert len(prog.parts) > 1 and all(len(q.words) <= CHIP_85F.uop_depth for q in prog.parts)
    rng = np.random.default_rng(SEED)
    print(f"\nseed {SEED} (SMOLLM2_85F_SEED); prefill chunk {T}, decode "
          f"{len(prog.parts)} programs")
    ids = rng.integers(0, m.token_embd.q.shape[0], CAP)
    emb = G.embed(ids, m.token_embd)
    steps = [T] * 4 + [1] * (CAP - 4 * T)
    res = run_layers(c, SmolLM2Golden(m), emb, steps)
    bad = [(pos, t) for pos, t, ok, _ in res if not ok]
    assert not bad, f"(pos, tokens) of steps differing from golden: {bad}"
    with pytest.raises(CompileError, match=f"step of {CAP + 1} tokens does not fit"):
        c.program(CAP + 1)


def test_context_limit(smollm2):
    """One position past what a KV head's region holds is a CompileError naming the
    words needed, the words the chip has and the longest context."""
    _, m = smollm2
    need = KvHead(CHIP_85F, 64, CAP + 1).end
    kv = buffer_depth(CHIP_85F, Buf.KV)
    with pytest.raises(CompileError, match=rf"one KV head's region for {CAP + 1} positions "
                                           rf"needs {need} KV words .* has {kv} .* at most "
                                           rf"{CAP} positions fit"):
        SmolLM2Compiled(m, CHIP_85F, cap=CAP + 1)
    with pytest.raises(CompileError, match="stays on chip"):
        SmolLM2Compiled(m, CHIP_85F, cap=8, streamed=False)


@pytest.mark.slow
def test_whole_model(smollm2):
    """All 30 layers and the LM head on CHIP_85F (the ISA simulator): the chat prompt in
    prefill chunks, then greedy decode steps; every step's logits equal golden's."""
    model, m = smollm2
    tok = SmolLM2Tokenizer(model)
    ids = tok.encode(tok.chat_prompt("What is the capital of France?"))
    cap = len(ids) + 3
    c = SmolLM2Compiled(m, CHIP_85F, cap=cap)
    gold = SmolLM2Golden(m)
    cache = gold.new_cache(cap)
    out = []
    with open_sim_device("isa", c) as dev:
        r = SmolLM2Runner(c, dev, G.embed)
        logits = r.prefill(ids)
        assert np.array_equal(logits, gold.forward(ids, cache)[-1])
        for _ in range(3):
            out.append(int(np.argmax(logits)))
            logits = r.decode(out[-1])
            assert np.array_equal(logits, gold.forward([out[-1]], cache)[-1])
    print(f"\nSmolLM2 on CHIP_85F (ISA simulator): {tok.decode(out)!r}")


@pytest.mark.slow
def test_layer_rtl(smollm2):
    """One layer on CHIP_85F's Verilog at the longest context (one KV region in the KV
    buffer at a time, ending it): prefill chunks, then decode steps past the first 16-token
    tile of P·V; bit-exact with golden, every program's cycles as predicted."""
    from sim.timing import predict

    _, m = smollm2
    c = SmolLM2Compiled(m, CHIP_85F, cap=CAP, layers=1, head=False)
    assert c.streamed and c.p == CHIP_85F and len(c.kv_slots) == 1
    T = c.chunk
    ids = np.random.default_rng(SEED).integers(0, m.token_embd.q.shape[0], CAP)
    emb = G.embed(ids, m.token_embd)
    steps = [T] * (16 // T) + [1] * 4
    res = run_layers(c, SmolLM2Golden(m), emb, steps, device="rtl")
    rows = []
    for pos, t, ok, st in res:
        pred = [predict(c.p, q.words, vector=True, pos_init=pos).cycles
                for q in c.program(t).runs()]
        rows.append((pos, t, ok, st.part_cycles or [st.cycles], pred))
    print()
    for pos, t, ok, got, pred in rows:
        print(f"pos {pos} ({t} tokens): bit-exact {ok}, {sum(got)} cycles measured, "
              f"{sum(pred)} predicted")
    assert all(ok for _, _, ok, _, _ in rows)
    assert all(got == pred for _, _, _, got, pred in rows)

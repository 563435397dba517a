"""The compiler and runtime on the ISA simulator: real models, compiled to micro-op programs
(``sw/compiler.py``), run by the runtime (``sw/runtime.py``), against the golden models.

- all-MiniLM-L6-v2: every layer, embeddings on chip, two sentence lengths: the last hidden
  states equal ``sim.golden_models.minilm_encode`` bit for bit;
- SmolLM2-135M: all 30 layers, the final norm and the LM head, prefill in chunks and then
  greedy decode with the KV cache on chip (deeper than the 16-bit KV fields: each layer's
  attention sets ``kv_base``): the logits of every step equal ``SmolLM2Golden.forward`` bit
  for bit, and the chat answer names Paris; slow: a 256-token generation, bit-exact at every
  token;
- what does not fit (context, SRAM, micro-op memory) and bad input are clear errors, from
  the compiler and from the ``chip`` command line.

Expected values come from the golden models only.
"""

import os
import re

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hw.board_top import CHIP_85F  # noqa: E402
from hw.isa import Buf, Counter, Op, buffer_depth, decode  # noqa: E402
from hw.params import ChipParams, preset  # noqa: E402
from sim.devices import open_sim_device as open_device  # noqa: E402
from sim.golden import embed  # noqa: E402
from sim.golden_models import SmolLM2Golden, minilm_encode  # noqa: E402
from sw.compiler import CompileError, MiniLMCompiled, SmolLM2Compiled  # noqa: E402
from sw.models import load_minilm, load_smollm2  # noqa: E402
from sw.programs import uop_bus_words  # noqa: E402
from sw.quantize import quantize_minilm, quantize_smollm2  # noqa: E402
from sw.runtime import (  # noqa: E402
    BoardDevice,
    ChipError,
    DeviceError,
    MiniLMRunner,
    SmolLM2Runner,
)
from sw.tokenizer import MiniLMTokenizer, SmolLM2Tokenizer  # noqa: E402

P = preset("sim")
#: The chat prompt's 37 tokens and 8 generated: the answer to its end of turn.
CAP = 45
#: The slow test: 256 tokens generated after the prompt.
LONG = 37 + 256
#: RoPE table positions of the quantized model (one past what the 'sim' KV buffer holds).
TABLE = 337


@pytest.fixture(scope="module")
def minilm():
    model = load_minilm()
    return quantize_minilm(model), MiniLMTokenizer(model.path)


def test_minilm_row_blocks_bit_exact(minilm):
    """Row-block schedules (blocks of 8 over 26 tokens: a short last block; all 128 tokens
    in blocks of 32, the largest that fits the 'sim' ACC): two layers equal golden."""
    qm, _ = minilm
    rng = np.random.default_rng(5)
    for T, block, want_block in ((26, 8, 8), (128, None, 32)):
        c = MiniLMCompiled(qm, P, layers=2, block=block)
        ids = [101, *rng.integers(1000, 20000, T - 2), 102]
        with open_device("isa", c) as dev:
            h = MiniLMRunner(c, dev, embed).hidden(ids)
        assert c.program(T).block == want_block
        sub = replace(qm, layers=qm.layers[:2])
        assert np.array_equal(h, minilm_encode(ids, sub)), T


def test_minilm_whole_model_bit_exact(minilm):
    """Two sentences of different lengths through one compiled image (a program per
    length): the chip's last hidden states are the golden model's, bit for bit."""
    qm, tok = minilm
    c = MiniLMCompiled(qm, P)
    with open_device("isa", c) as dev:
        r = MiniLMRunner(c, dev, embed)
        for s in ("A man is playing a guitar.",
                  "The quick brown fox jumps over the lazy dog near the quiet river bank."):
            ids = tok.encode(s)
            assert np.array_equal(r.hidden(ids), minilm_encode(ids, qm)), s
    assert len(c.programs) == 2
    # the embedding is mean-pooled and normalized on the host
    e = r.embed(tok.encode("A man is playing a guitar."))
    assert abs(np.linalg.norm(e) - 1) < 1e-9


def test_minilm_fpga_chip_bit_exact(minilm):
    """The FPGA boards' chip (``CHIP_85F``: 16 x 4 grid, 16 KiB buffers, 8 KiB KV, 1024
    micro-ops): the resident plan does not fit, so the hidden states stream through off-chip
    memory and each sentence runs as a sequence of programs, each within the micro-op
    memory. A short sentence through all 6 layers on the ISA simulator: the last hidden
    states equal the golden model's bit for bit, and the timing model predicts every program
    (no write-port rule broken)."""
    qm, tok = minilm
    p = CHIP_85F
    c = MiniLMCompiled(qm, p)
    ids = tok.encode("A man is playing a guitar.")
    prog = c.program(len(ids))
    assert len(prog.parts) > 1 and all(pt.length <= p.uop_depth for pt in prog.parts)
    # the board's off-chip memory (the host's) holds the image: the board's own parameters
    assert c.p == p and c.img.next * p.offchip_bytes_per_cycle <= p.offchip_kib * 1024
    # an off-chip memory too small for the weights is raised in the compiled parameters only
    small = replace(p, offchip_kib=1024)
    c1 = MiniLMCompiled(qm, small)
    c1.program(len(ids))
    assert c1.p.offchip_kib > small.offchip_kib and c1.img.next * p.offchip_bytes_per_cycle > (
        small.offchip_kib * 1024)
    assert replace(c1.p, offchip_kib=small.offchip_kib) == small
    with open_device("isa", c, timing=True) as dev:
        r = MiniLMRunner(c, dev, embed)
        h = r.hidden(ids)
    assert np.array_equal(h, minilm_encode(ids, qm))
    st = r.stats[-1][2]
    assert st.cycles is not None and st.cycles > 0
    assert st.counters[Counter.UOPS] == sum(pt.length for pt in prog.parts)
    print(f"\nMiniLM on CHIP_85F, {len(ids)} tokens: {len(prog.parts)} programs, "
          f"{prog.length} micro-ops, {st.cycles:,} cycles predicted")


@pytest.fixture(scope="module")
def smollm2():
    model = load_smollm2()
    tok = SmolLM2Tokenizer(model)
    m = quantize_smollm2(model, positions=TABLE)
    return m, tok, SmolLM2Compiled(m, P, cap=CAP, chunk=16)


def _generate(c, m, tok, cap):
    """The chat prompt in prefill chunks, then greedy decode until the KV cache holds
    ``cap`` tokens, on the ISA simulator; every step's logits must equal the golden model's.
    Returns the generated tokens and the runner."""
    ids = tok.encode(tok.chat_prompt("What is the capital of France?"))
    assert c.chunks(len(ids)) == [16, 16, 5]
    gold = SmolLM2Golden(m)
    cache = gold.new_cache(cap)
    with open_device("isa", c) as dev:
        r = SmolLM2Runner(c, dev, embed)
        logits = r.prefill(ids)
        want = gold.forward(ids, cache)[-1]
        assert np.array_equal(logits, want), "prefill"
        out = []
        while r.pos < cap:
            tok_id = int(np.argmax(logits))
            out.append(tok_id)
            logits = r.decode(tok_id)
            assert np.array_equal(logits, gold.forward([tok_id], cache)[-1]), f"token {len(out)}"
        with pytest.raises(ValueError, match=f"exceed its {cap} positions"):
            r.decode(0)
    assert r.pos == cap and len(out) == cap - len(ids)
    return out, r


def test_smollm2_whole_model_bit_exact(smollm2):
    """A chat prompt in prefill chunks of 16, 16, 5 tokens, then greedy decode up to the
    context: every step's logits equal the golden model's (all 30 layers, GQA over the
    growing KV cache, the tied LM head), and the answer is Paris. The KV cache (a region per
    layer, addressed from the layer's ``kv_base``) is deeper than the 16-bit KV fields."""
    m, tok, c = smollm2
    assert c.kv_words > 1 << 16 and c.kv_bases[-1] > 1 << 15
    out, r = _generate(c, m, tok, CAP)
    assert tok.decode(out).startswith("The capital of France is Paris."), tok.decode(out)
    # the decode program is one program for every position: ops issued, not re-compiled
    assert [ph for ph, _, _ in r.stats].count("decode") == CAP - 37
    assert all(st.counters[Counter.UOPS] == c.program(1).length
               for ph, _, st in r.stats if ph == "decode")


@pytest.mark.slow
def test_smollm2_long_generation_bit_exact(smollm2):
    """256 tokens generated after the chat prompt (a 293-token KV cache, 4 MiB of the
    'sim' chip's KV buffer, the last layers' regions far beyond 2**16 words): the logits of
    every step equal the golden model's."""
    m, tok, _ = smollm2
    c = SmolLM2Compiled(m, P, cap=LONG, chunk=16)
    assert c.kv_words > 6 * (1 << 16)
    out, _ = _generate(c, m, tok, LONG)
    assert len(out) == 256
    print(f"\n256 tokens: {tok.decode(out)!r}")


def test_smollm2_program_shape(smollm2):
    """The decode program streams every weight once: its LOADs move each layer's weights and
    the LM head (the image holds them once, shared by every program), and weight loads
    overlap the GEMMs (streamed halves, WAIT GEMM with count 1)."""
    _, _, c = smollm2
    prog = c.program(1)
    ops = [decode(w) for w in prog.words]
    loads = [f for op, f in ops if op == Op.LOAD]
    offs = [f["off"] for f in loads]
    assert len(offs) == len(set(offs)) + 0, "a region loaded twice in one step"
    assert any(op == Op.WAIT and f["count"] == 1 for op, f in ops)
    assert [s.label for s in prog.sections][-1] == "final norm, LM head, logits"
    assert sum(1 for s in prog.sections if s.label.startswith("layer ")) == 30


def test_fit_errors(smollm2, minilm):
    """What does not fit names the buffer (or the context), what needs it, and by how
    much."""
    m, _, _ = smollm2
    # the KV cache on chip (streamed = False; by default a cache that does not fit goes
    # off-chip, tests/test_smollm2_85f.py)
    with pytest.raises(CompileError, match=r"KV cache for 40 positions .* needs 62100 KV "
                                           r"words .* has 16384 .*ChipParams.kv_sram_kib"):
        SmolLM2Compiled(m, ChipParams(), cap=40, streamed=False)
    # 30 layers x 3 heads x (43 token blocks x (64 + 2 x 5) + 337 x 8) words: one block past
    # the 4 MiB of the 'sim' chip
    with pytest.raises(CompileError, match=r"KV cache for 337 positions .* needs 529020 KV "
                                           r"words .* has 524288"):
        SmolLM2Compiled(m, P, cap=337, streamed=False)
    # the FPGA chip's 8 KiB KV buffer holds not even one position of SmolLM2's cache (30
    # layers x 3 KV heads x (one token block of keys, 64 / PC words of values, 2 x 5 scale
    # words)): kept on chip, the error says so
    PC = CHIP_85F.cols // 2
    one = 30 * 3 * (64 + 64 // PC + 2 * (64 // 16 + 1))
    kv = buffer_depth(CHIP_85F, Buf.KV)
    with pytest.raises(CompileError, match=rf"KV cache for 8 positions .* has {kv} .* even one "
                                           rf"position needs {one} words"):
        SmolLM2Compiled(m, CHIP_85F, cap=8, streamed=False)
    with pytest.raises(CompileError, match="beyond the model's RoPE table"):
        SmolLM2Compiled(m, P, cap=TABLE + 1)
    small = replace(P, acc_sram_kib=64)
    with pytest.raises(CompileError, match=r"ACC needs \d+ words.*short by \d+.*acc_sram_kib"):
        SmolLM2Compiled(m, small, cap=CAP, chunk=16).program(16)
    with pytest.raises(CompileError, match="micro-ops do not fit the micro-op memory"):
        SmolLM2Compiled(m, replace(P, uop_depth=4096), cap=CAP).program(1)
    qm, _ = minilm
    with pytest.raises(CompileError, match="MiniLM takes 1..256"):
        MiniLMCompiled(qm, P).program(300)
    small = replace(P, acc_sram_kib=512)
    with pytest.raises(CompileError, match=r"MiniLM on 256 tokens \(row blocks of 8\) does "
                                           r"not fit the chip: ACC needs \d+ words") as exc:
        MiniLMCompiled(qm, small, streamed=False).program(256)
    # the figures add up: the hidden states alone are 256 rows of 384 / 8 words
    need, have, short = map(int, re.search(r"ACC needs (\d+) words.* has (\d+) \(short by "
                                           r"(\d+)", str(exc.value)).groups())
    assert have == buffer_depth(small, Buf.ACC) and short == need - have
    assert "hidden states 12288" in str(exc.value)
    # neither plan: streamed, a head's keys and values must still fit the KV buffer; on the
    # FPGA chip 128 tokens need 2 x 32 token blocks x (32 dims + 2 group scales + exponent)
    p = CHIP_85F
    dh, PC = qm.config.d_head, p.cols // 2
    need = 2 * (128 // PC) * (dh + dh // 16 + 1)
    with pytest.raises(CompileError, match=rf"MiniLM on 128 tokens \(row blocks of 8\) does "
                                           rf"not fit .*; nor streamed: .* one head for 128 "
                                           rf"tokens need {need} KV words .* the chip has "
                                           rf"{buffer_depth(p, Buf.KV)} .*kv_sram_kib"):
        MiniLMCompiled(qm, p).program(128)


def test_runtime_errors(minilm):
    """An empty input, an unknown device and the board backend without a serial port are
    clear errors; a chip error names the error and the micro-op."""
    qm, _ = minilm
    c = MiniLMCompiled(qm, P, layers=1)
    with open_device("isa", c) as dev:
        r = MiniLMRunner(c, dev, embed)
        with pytest.raises(ValueError, match="empty input"):
            r.hidden([])
        prog = c.program(4)
        r.sync()  # the program compiled after the device was opened
        bad = (prog.words[3] & ~0x3F) | 0x3F  # an undefined opcode in the device's copy
        per = uop_bus_words(P) * P.offchip_bytes_per_cycle
        raw = np.zeros(per, np.uint8)
        raw[:16] = np.frombuffer(bad.to_bytes(16, "little"), np.uint8)
        dev.write(prog.addr + 3 * uop_bus_words(P), raw)
        with pytest.raises(ChipError, match="ILLEGAL_OP at micro-op 3 of minilm_T4"):
            r.step(prog, np.zeros((12, 384), np.int64), 0)
    with pytest.raises(ValueError, match="unknown device 'fpga'"):
        open_device("fpga", c)
    with pytest.raises(DeviceError, match="needs a serial port"):
        BoardDevice(c.p, c.image_bytes())


def test_cli_errors(capsys):
    """The command line: an empty prompt, a context beyond the configuration and a wrong
    configuration name are one-line errors with exit status 2, no traceback."""
    from scripts.chip import main

    assert main(["generate", "   "]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    # the FPGA boards' chip: one KV head's region holds 58 positions (its KV cache is
    # off-chip, a head's region in the KV buffer at a time)
    assert main(["generate", "--config", "ulx3s-85f", "--max-tokens", "30",
                 "What is the capital of France?"]) == 2
    err = capsys.readouterr().err
    assert "error: SmolLM2's KV cache off-chip: one KV head's region for 67 positions" in err
    assert "at most 58 positions fit" in err and "Traceback" not in err
    assert main(["embed", "--config", "nonesuch", "hello"]) == 2
    assert "unknown chip configuration 'nonesuch'" in capsys.readouterr().err

"""Whole transformer layers as micro-op programs on the ISA simulator, against the golden
models on the real weights (DESIGN.md §4, installed offline).

- one all-MiniLM-L6-v2 encoder layer (``sim.programs.minilm_layer_program``) on 16 real
  tokens: bit for bit ``sim.golden_models.minilm_layer``;
- its WAITs (placed from the ops' footprints by ``sim.programs.Builder``) make the result
  independent of the schedule: the same program under random schedules of an atomic-op
  model of the sequencer and its queues (VEC included) gives the same bits, and without its
  WAITs it does not.

Expected values come from the golden models only, never from a program's own output.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from collections import deque  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hw.isa import OP_UNIT, Err, Op, Unit, decode  # noqa: E402
from hw.params import ChipParams  # noqa: E402
from sim.golden_models import minilm_embeddings, minilm_layer  # noqa: E402
from sim.isa_sim import IsaSim  # noqa: E402
from sim.programs import minilm_layer_program  # noqa: E402
from sw.models import load_minilm  # noqa: E402
from sw.quantize import quantize_minilm  # noqa: E402
from sw.tokenizer import MiniLMTokenizer  # noqa: E402

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


def scheduled(p, mem, prog, rng, wait_ok=True, late=False) -> IsaSim:
    """Run ``prog`` as the chip orders it, each op atomic: the sequencer dispatches in order
    to per-unit queues (``queue_depth + 1`` deep), ``WAIT unit, n`` stalls while more than
    ``n`` ops of ``unit`` are unfinished (not at all without ``wait_ok``), ``HALT`` until all
    are; each unit executes its oldest op at a random moment with the ``pos`` it was
    dispatched with. ``late``: units run only while the sequencer is stalled."""
    sim = IsaSim(p, mem, vector=True)
    ops = [sim._decode(w) for w in prog]
    queues = {u: deque() for u in Unit}
    pc, pos = 0, 0
    depth = p.queue_depth + 1
    while True:
        op, f = ops[pc]
        unit = OP_UNIT.get(op)
        if op == Op.WAIT:
            ready = len(queues[f["unit"]]) <= f["count"] or not wait_ok
        elif op == Op.HALT:
            ready = not any(queues.values())
        elif unit is not None:
            ready = len(queues[unit]) < depth
        else:
            ready = True
        busy = [u for u in Unit if queues[u]]
        if ready and (not busy or late or rng.random() < 0.55):
            if op == Op.HALT:
                break
            if unit is not None:
                queues[unit].append((op, f, pos))
            elif op == Op.SETPOS:
                pos = pos + f["value"] if f["add"] else f["value"]
            pc += 1
        else:
            u = busy[int(rng.integers(0, len(busy)))]
            qop, qf, qpos = queues[u].popleft()
            sim.pos = qpos
            sim.handlers[qop](qf)
            sim.pos = pos
    return sim


def test_minilm_layer_any_schedule(minilm, minilm_prog):
    """The layer program under random schedules (one lazy, one eager-ish) gives the golden
    layer; with its WAITs ignored a schedule does not (the check is not vacuous)."""
    m, h = minilm
    lp = minilm_prog
    want = minilm_layer(h, m.layers[0], m.config)
    rng = np.random.default_rng(7)
    for late in (True, False):
        sim = scheduled(P_MINILM, lp.img.mem, lp.prog, rng, late=late)
        assert np.array_equal(lp.result(sim.offchip), want), f"late={late}"
    sim = scheduled(P_MINILM, lp.img.mem, lp.prog, rng, wait_ok=False, late=True)
    assert not np.array_equal(lp.result(sim.offchip), want)


def test_minilm_program_is_not_sequential_only(minilm_prog):
    """The WAITs are placed, not blanket drains: loads of later weights overlap GEMMs (a
    WAIT GEMM with count 1 before a streamed load) and most ops follow no WAIT at all."""
    words = [decode(w) for w in minilm_prog.prog]
    waits = [f for op, f in words if op == Op.WAIT]
    assert any(f["unit"] == Unit.GEMM and f["count"] == 1 for f in waits)
    assert len(waits) < len(words) / 2

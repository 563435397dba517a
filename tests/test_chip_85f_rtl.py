"""The FPGA boards' chip geometry (``hw.board_top.CHIP_85F``: 16 x 4 grid, 2 vector lanes) on
Verilator, without the UART link: one compiled SmolLM2-135M layer on ``LAYER_BOARD``
(``tests/test_board_rtl.py``: CHIP_85F with the ACC, PRM and micro-op memories the layer
needs) through ``sim.devices.RtlDevice``, decode steps at positions 0 .. 3 by one program.
Every step's output equals ``SmolLM2Golden.layer`` bit for bit and its cycles equal
``sim.timing.predict``'s.

This is the chip-only half of ``test_board_rtl.py::test_smollm2_layer_on_board`` (which also
builds the board top): it found the vector unit writing stale pieces into the last ACT word
of a row that ends in an early piece (2 lanes, 16-element ACT words; the attention's 1-key
``vfold`` rows at position 0). A chip build of its own configuration (minutes): slow.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hw.board_top import CHIP_85F  # noqa: E402
from sim import golden as G  # noqa: E402
from sim.devices import open_sim_device  # noqa: E402
from sim.golden_models import SmolLM2Golden  # noqa: E402
from sim.timing import predict  # noqa: E402
from sw.compiler import SmolLM2Compiled  # noqa: E402
from sw.models import load_smollm2  # noqa: E402
from sw.quantize import quantize_smollm2  # noqa: E402
from sw.runtime import Runner  # noqa: E402
from sw.tokenizer import SmolLM2Tokenizer  # noqa: E402
from tests.test_board_rtl import LAYER_BOARD  # noqa: E402

pytestmark = pytest.mark.slow

CAP = 4


def test_smollm2_layer_decode_85f():
    model = load_smollm2()
    m = quantize_smollm2(model, positions=CAP)
    tok = SmolLM2Tokenizer(model)
    ids = tok.encode(tok.chat_prompt("What is the capital of France?"))[:CAP]
    emb = G.embed(np.asarray(ids), m.token_embd)
    gold = SmolLM2Golden(m)
    cache = gold.new_cache(capacity=CAP)
    c = SmolLM2Compiled(m, LAYER_BOARD, cap=CAP, chunk=1, layers=1, head=False)
    # the boards' chip geometry (grid and vector unit), whatever its buffers
    assert (c.p.rows, c.p.cols, c.p.vector_lanes) == (CHIP_85F.rows, CHIP_85F.cols,
                                                      CHIP_85F.vector_lanes)
    prog = c.program(1)
    rows, bad = [], []
    with open_sim_device("rtl", c) as dev:
        r = Runner(c, dev, G.embed)
        for pos in range(CAP):
            got, st = r.step(prog, emb[pos : pos + 1], pos)
            want = gold.layer(0, emb[pos : pos + 1], cache, pos)
            if not np.array_equal(got, want):
                bad.append((pos, int(np.count_nonzero(got != want))))
            pred = predict(c.p, prog.words, vector=True, pos_init=pos).cycles
            rows.append((pos, st.cycles, pred))
    print(f"\nSmolLM2 layer on LAYER_BOARD ({prog.length} micro-ops):")
    for pos, cyc, pred in rows:
        print(f"  decode at pos {pos}: {cyc} cycles measured, {pred} predicted")
    assert not bad, f"(pos, elements differing from golden): {bad}"
    assert all(cyc == pred for _, cyc, pred in rows), rows

#!/usr/bin/env python3
"""Wall time of the timing model (``sim.timing.predict``) on whole compiled programs: a SmolLM2
decode step (all layers and the LM head, ``SmolLM2Compiled(...).program(1)``) at two
positions and a MiniLM layer, on a chip configuration (default ``sim``).

Run::

    .venv/bin/python scripts/bench_timing.py [--config sim] [--seq 128] [--positions 16,200]

Prints per program its micro-ops, distinct VEC ops, predicted cycles and the wall time of
``predict``: first with a fresh VEC model (``sim.timing.VecModel``) and fresh decode memo,
then again at the next position.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("Run::")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="sim", help="chip configuration (hw/params.py PRESETS)")
    ap.add_argument("--seq", type=int, default=128, help="MiniLM sequence length (128)")
    ap.add_argument("--positions", default="16,200", help="SmolLM2 decode positions")
    args = ap.parse_args(argv)

    from hw.isa import Unit
    from hw.params import preset
    from sim import timing
    from sw.compiler import MiniLMCompiled, SmolLM2Compiled
    from sw.models import load_minilm, load_smollm2
    from sw.quantize import quantize_minilm, quantize_smollm2

    p = preset(args.config)

    def run(label, words, pos=0):
        timing._VEC_MODELS.clear()
        timing._DECODED.clear()
        t0 = time.perf_counter()
        t = timing.predict(p, words, vector=True, pos_init=pos)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        timing.predict(p, words, vector=True, pos_init=pos + 1)
        warm = time.perf_counter() - t0
        nvec = len({timing._vec_key(p, o.fields, o.pos) for o in t.ops if o.unit == Unit.VEC})
        print(f"{label}: {len(words):,} micro-ops, {nvec} distinct VEC ops, {t.cycles:,} "
              f"cycles; predict {cold:.2f} s (fresh), {warm:.2f} s (at the next position)",
              flush=True)

    positions = [int(x) for x in args.positions.split(",") if x]
    cap = max(positions) + 2
    m = quantize_smollm2(load_smollm2(), positions=cap)
    dec = SmolLM2Compiled(m, p, cap=cap, chunk=16).program(1)
    for pos in positions:
        run(f"SmolLM2 decode step at position {pos}", dec.words, pos)
    qm = quantize_minilm(load_minilm())
    prog = MiniLMCompiled(qm, p, layers=1, embeddings=False).program(args.seq)
    run(f"MiniLM layer at {args.seq} tokens", prog.words)
    return 0


if __name__ == "__main__":
    sys.exit(main())

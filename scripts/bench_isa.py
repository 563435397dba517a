#!/usr/bin/env python3
"""Speed of the ISA simulator (``sim.isa_sim.IsaSim``) on the main job: SmolLM2 compiled by
``sw/compiler.py`` (``SmolLM2Compiled``) and run by the runtime (``sw.runtime.SmolLM2Runner``)
on the ``isa`` device, as ``chip generate`` does (the chat prompt, chunked prefill, greedy
decode).

Run::

    .venv/bin/python scripts/bench_isa.py [--prompt "What is the capital of France?"]
        [--decode 4] [--chunk 16] [--config sim]

Prints, for the prefill chunks and the decode steps (after the first, which also decodes the
decode program's micro-ops): wall and CPU seconds (CPU time of this process: other jobs on
the machine inflate the wall time), tokens per second. Then, from a second session that
times every handler call (``--no-table`` skips it), per micro-op class (``GEMM`` by grid mode
and weight source, ``VEC`` by function, ``LOAD``, ...) the count per run, the CPU
milliseconds per run and per op, and the share of the run; "dispatch" is the rest of
``IsaSim.run`` (fetch, decode, the loop) and of the device's run (boot). The generated tokens
are printed too (their bit-exactness against the golden model is ``tests/test_compiler.py``'s).
"""

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _op_class(op, f) -> str:
    from hw.isa import GridMode, Op, VecFn, WSrc

    if op == Op.GEMM:
        try:
            src = {WSrc.WGT: "WGT", WSrc.KV_TILED: "QK (KV_TILED)", WSrc.KV_ROWS: "PV (KV_ROWS)"}[
                WSrc(f["wsrc"])]
            return f"GEMM {GridMode(f['mode']).name} {src}"
        except ValueError:
            return "GEMM"
    if op == Op.VEC:
        try:
            return f"VEC {VecFn(f['fn']).name}"
        except ValueError:
            return "VEC"
    if op in (Op.NOP, Op.WAIT, Op.SETPOS, Op.HALT):
        return "NOP/WAIT/SETPOS/HALT"
    return op.name


class _Timed:
    """CPU time of every handler call of an ``IsaSim``, by op class, for the current run."""

    def __init__(self, sim):
        self.count = defaultdict(int)
        self.cpu = defaultdict(float)
        for op, h in list(sim.handlers.items()):
            sim.handlers[op] = self._wrap(op, h)

    def _wrap(self, op, handler):
        def timed(args):
            t0 = time.process_time()
            try:
                return handler(args)
            finally:
                key = _op_class(op, args)
                self.cpu[key] += time.process_time() - t0
                self.count[key] += 1

        return timed

    def take(self):
        out = dict(self.count), dict(self.cpu)
        self.count.clear()
        self.cpu.clear()
        return out


def _table(title, runs):
    """runs: [(wall, cpu, counts, cpus)] of one phase: per-run averages per op class."""
    n = len(runs)
    cpu = sum(r[1] for r in runs) / n
    counts, cpus = defaultdict(float), defaultdict(float)
    for _, _, c, t in runs:
        for k, v in c.items():
            counts[k] += v / n
        for k, v in t.items():
            cpus[k] += v / n
    handled = sum(cpus.values())
    print(f"\n{title} (average of {n} run{'s' if n > 1 else ''}): "
          f"{sum(r[0] for r in runs) / n:.2f} s wall, {cpu:.2f} s CPU")
    print(f"  {'op class':<26} {'ops/run':>9} {'ms/run':>9} {'us/op':>9} {'share':>7}")
    rows = sorted(cpus.items(), key=lambda kv: -kv[1])
    rows.append(("dispatch", max(cpu - handled, 0.0)))
    for k, v in rows:
        c = counts.get(k, 0)
        per = f"{v / c * 1e6:9.0f}" if c else f"{'':>9}"
        print(f"  {k:<26} {c:9.0f} {v * 1e3:9.1f} {per} {v / cpu:7.1%}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("Run::")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default="What is the capital of France?",
                    help="the user's question (ChatML prompt, as chip generate)")
    ap.add_argument("--decode", type=int, default=4, help="decode steps to run (default 4)")
    ap.add_argument("--chunk", type=int, default=16, help="prefill chunk (default 16)")
    ap.add_argument("--config", default="sim", help="chip configuration (hw/params.py PRESETS)")
    ap.add_argument("--no-table", dest="table", action="store_false",
                    help="skip the per-op-class table (its session runs everything again)")
    args = ap.parse_args(argv)
    if args.decode < 2:
        ap.error("--decode: at least 2 (the first step is reported apart)")

    import numpy as np

    import sim.golden as G
    from hw.params import preset
    from sim.devices import open_sim_device
    from sw.compiler import SmolLM2Compiled
    from sw.models import load_smollm2
    from sw.quantize import quantize_smollm2
    from sw.runtime import SmolLM2Runner
    from sw.tokenizer import SmolLM2Tokenizer

    t0 = time.monotonic()
    model = load_smollm2()
    tok = SmolLM2Tokenizer(model)
    ids = tok.encode(tok.chat_prompt(args.prompt))
    cap = len(ids) + args.decode + 1
    p = preset(args.config)
    c = SmolLM2Compiled(quantize_smollm2(model, positions=cap), p, cap=cap, chunk=args.chunk)
    chunks = c.chunks(len(ids))
    for T in sorted(set(chunks) | {1}):
        c.program(T)
    print(f"SmolLM2 on the ISA simulator ({args.config}): prompt {len(ids)} tokens in chunks "
          f"of {chunks}, {c.program(1).length:,} micro-ops per decode step "
          f"(setup {time.monotonic() - t0:.1f} s)", flush=True)

    def session(instrument: bool):
        """Prefill and ``--decode`` steps on a fresh device: (prefill [(T, run)], decode
        [run], tokens); a run is [wall, cpu, counts, cpus] (op classes with ``instrument``)."""
        with open_sim_device("isa", c) as dev:
            timed = _Timed(dev.sim) if instrument else None
            runs = []
            inner = dev.run

            def run(prog_addr, prog_len, pos):
                w0, c0 = time.perf_counter(), time.process_time()
                r = inner(prog_addr, prog_len, pos)
                runs.append([time.perf_counter() - w0, time.process_time() - c0,
                             *(timed.take() if timed else ({}, {}))])
                return r

            dev.run = run
            r = SmolLM2Runner(c, dev, G.embed)
            logits = r.prefill(ids)
            out = []
            for _ in range(args.decode):
                out.append(int(np.argmax(logits)))
                logits = r.decode(out[-1])
        return list(zip(chunks, runs, strict=False)), runs[len(chunks):], out

    prefill, decode, out = session(instrument=False)
    print(f"generated: {tok.decode(out, skip_special_tokens=False)!r}")
    wall = sum(x[0] for _, x in prefill)
    cpu = sum(x[1] for _, x in prefill)
    print(f"prefill: {len(ids)} tokens in {wall:.2f} s wall / {cpu:.2f} s CPU: "
          f"{len(ids) / wall:.2f} tokens/s wall, {len(ids) / cpu:.2f} tokens/s CPU")
    for T, x in prefill:
        print(f"  chunk of {T:3d} tokens: {x[0]:.2f} s wall, {x[1]:.2f} s CPU")
    steady = decode[1:]
    dw = sum(x[0] for x in steady) / len(steady)
    dc = sum(x[1] for x in steady) / len(steady)
    print(f"decode: first step {decode[0][0]:.2f} s wall / {decode[0][1]:.2f} s CPU; then "
          f"{dw:.2f} s wall / {dc:.2f} s CPU per step: {1 / dw:.2f} tokens/s wall, "
          f"{1 / dc:.2f} tokens/s CPU")
    if args.table:
        prefill, decode, _ = session(instrument=True)
        print("\nPer micro-op class, from a second session with every handler call timed (the "
              "timing adds ~1 us per op):")
        full = [x for T, x in prefill if T == max(chunks)]
        _table(f"prefill chunk of {max(chunks)} tokens", full)
        _table("decode step", decode[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())

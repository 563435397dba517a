"""Benchmark the whole chip on Verilator: simulation speed and load/compute overlap.

A GEMM of ``--k`` x ``--n`` weights (W4A8 by default: INT4 with group scales and offsets)
over ``--t`` activation rows, streamed from off-chip memory as a layer larger than the
buffers is: one GEMM micro-op per block of output columns, the weights and group parameters
of block ``j + 1`` LOADed into the other half of the double-buffered WGT / PRM space while
the GEMM of block ``j`` runs, ordered only by ``WAIT`` micro-ops (``sw.programs.weight_gemm``
with ``double_buffer``). For each memory bandwidth (the off-chip model accepts one bus word
per channel every ``interval`` cycles: ``offchip_bytes_per_cycle / interval`` bytes per
cycle) it prints:

- cycles, and the grid's share of them: ``BUSY_GEMM / CYCLES`` (the GEMM unit has work) and
  MAC utilization ``GRID_ROWS / CYCLES`` (rows pushed through the grid per cycle; 1.0 = every
  MAC busy every cycle);
- the memory roofline: bus words the chip must move (reads: the program, activations,
  parameters, weights; writes: the results) times ``interval``, as if reads and writes
  shared one port as they do on a DRAM, and measured cycles over it (1.00 = the memory is
  the only limit). The model has separate read and write channels, but this program stores
  its results after the last GEMM, so its writes do not overlap its reads anyway;
- Verilator speed: simulated cycles per host second (one core), for the run alone (not the
  build or the memory image I/O).

Before any figure is printed the stored result is checked against the golden model
(``sim.golden.gemm``) and the counters against the ISA simulator. Run:
``.venv/bin/python scripts/bench_chip.py`` (``--help`` for the options). The first run builds
the chip with Verilator (~1.5 min); later runs reuse the build.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from hw.isa import Counter, GridMode  # noqa: E402
from hw.params import ChipParams  # noqa: E402
from sim import golden as G  # noqa: E402
from sw.programs import Image, ncols_of, uop_bus_words, weight_gemm  # noqa: E402
from sw.quantize import random_gemm  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--t", type=int, nargs="+", default=[1, 16],
                    help="activation rows (1 = decode GEMV; default: 1 16)")
    ap.add_argument("--k", type=int, default=576, help="K (multiple of 32; default 576)")
    ap.add_argument("--n", type=int, default=576, help="N (default 576, SmolLM2's width)")
    ap.add_argument("--bits", type=int, choices=(4, 8), default=4,
                    help="weight bits: 4 = W4A8 mode, 8 = INT8 mode (default 4)")
    ap.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 4],
                    help="memory model: one bus word every N cycles (default 1 2 4)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--counters", action="store_true",
                    help="also print every performance counter of each run")
    args = ap.parse_args(argv)
    if args.k % G.NUM.group:
        ap.error(f"--k must be a multiple of {G.NUM.group} (the weight group)")

    from sim.chip_rtl import Job, run_jobs
    from sim.isa_sim import UNTIMED_COUNTERS, IsaSim

    p = ChipParams()
    rng = np.random.default_rng(args.seed)
    mode = GridMode.W4A8 if args.bits == 4 else GridMode.INT8
    nb = -(-args.n // ncols_of(p, mode))
    print(f"chip {p.rows}x{p.cols} {mode.name}, off-chip bus {p.offchip_bytes_per_cycle} "
          f"B/cycle, latency {p.offchip_latency}; GEMM K={args.k} N={args.n} in {nb} blocks")
    print(f"{'T':>4} {'B/cyc':>6} {'cycles':>9} {'grid busy':>9} {'MAC util':>8} "
          f"{'roofline':>9} {'ratio':>6} {'sim kHz':>8}")
    for T in args.t:
        x, qw, bias = random_gemm(rng, T, args.k, args.n, args.bits)
        x8, xs = G.quantize_rows(x)
        img = Image(p)
        wg = weight_gemm(p, img, x8, xs, qw, bias, n_ops=nb, double_buffer=True)
        prog_addr, prog_len = img.put_program(wg.prog)
        sim = IsaSim(p, img.mem)
        sim.boot(prog_addr, prog_len)
        if (err := sim.run()) != 0:
            print(f"{T:>4}  does not fit this chip: the ISA simulator ends with {err!r} at "
                  f"micro-op {sim.error_pc} ({len(wg.prog)} micro-ops); skipped")
            continue
        jobs = [Job(prog_addr, prog_len, interval=i, max_cycles=50_000_000)
                for i in args.intervals]
        t0 = time.perf_counter()
        res = run_jobs(p, img.mem, jobs)
        wall = time.perf_counter() - t0
        want = G.gemm(x8, xs, qw, bias)
        for i, r in zip(args.intervals, res, strict=True):
            assert r.error == 0 and not r.timed_out, (i, r.error, r.timed_out)
            assert np.array_equal(wg.result(r.offchip), want), \
                f"interval {i}: RTL result != golden gemm"
            for c in UNTIMED_COUNTERS:
                assert r.counters[c] == sim.counters[c], (i, c, r.counters[c], sim.counters[c])
        moved = (wg.counters[Counter.LOAD_WORDS] + prog_len * uop_bus_words(p)
                 + wg.counters[Counter.STORE_WORDS])
        for i, r in zip(args.intervals, res, strict=True):
            c = r.counters
            cyc = c[Counter.CYCLES]
            roof = moved * max(i, 1)
            print(f"{T:>4} {p.offchip_bytes_per_cycle / max(i, 1):>6.1f} {cyc:>9} "
                  f"{c[Counter.BUSY_GEMM] / cyc:>9.1%} {c[Counter.GRID_ROWS] / cyc:>8.1%} "
                  f"{roof:>9} {cyc / roof:>6.2f} {cyc / r.wall_s / 1e3:>8.1f}")
            if args.counters:
                print("      " + " ".join(f"{k.name}={v}" for k, v in c.items()))
        print(f"     (run_jobs total {wall:.1f} s incl. build and image I/O)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

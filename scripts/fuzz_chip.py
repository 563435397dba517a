"""Differential fuzzing of the chip RTL (Verilator) against the ISA simulator (``sim/fuzz.py``).

Random micro-op programs run as jobs on the chip's Verilog under Verilator (one simulation per
memory image, the on-chip buffers carried from job to job) and, job by job, on
``sim.isa_sim.IsaSim`` from the same state; every job's status (``error``, ``error_pc``,
``pos``), counters (``UOPS``, ``GRID_ROWS``, ``LOAD_WORDS``, ``STORE_WORDS``) and whole
off-chip memory must agree, within a cycle bound derived from the job's ops. Each job runs
under its own random configuration of the off-chip memory model (bandwidth interval, latency
jitter): stalls may change the cycle count, never the results. Valid programs end by storing
the buffers they wrote; illegal programs (``--illegal``) must stop with the error the
generator meant, at the op it meant.

Everything follows from the seed (printed first, with the exact command that replays the
run): same seed and options, same programs, memory images and memory-model configurations.
A mismatch prints the job's differences, the program with the op(s) it points at marked, and
the replay command; the exit status is then 1 (0 when everything agrees).

Examples::

    .venv/bin/python scripts/fuzz_chip.py --params small --programs 100 --illegal
    .venv/bin/python scripts/fuzz_chip.py --seed 123 --programs 300 --params default
    .venv/bin/python scripts/fuzz_chip.py --seed 123 --programs 300 --show 17

The first run of a configuration builds its Verilator model (about 1-2 minutes; cached in
``build/rtl/``, shared with other users of the same ``ChipParams``).
"""

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from sim.fuzz import PARAMS, format_program, make_programs, run_campaign  # noqa: E402

_CONFIGS = {
    "small": "4x8 grid, 2 KiB buffers, 64 KiB off-chip (ops reach buffer ends often; quick "
             "build)",
    "r16": "16x16 grid, 4-8 KiB buffers, 256 KiB off-chip",
    "default": "ChipParams() as built: 16x16 grid, 64-128 KiB buffers, 1 MiB off-chip "
               "(shares the Verilator build of tests/test_chip_rtl.py)",
    "deepkv": "4x8 grid, 2 KiB buffers but a 384 KiB KV buffer (98,304 words: beyond the "
              "16-bit KV fields, reached through kv_base), 2 MiB off-chip",
    "fpga": "the FPGA boards' chip (CHIP_85F) without its vector unit: 16x4 grid, 8-16 KiB "
            "buffers, 1 MiB off-chip",
}


def main(argv=None) -> int:
    doc = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(
        description="\n\n".join(doc[:3]), epilog="\n\n".join(doc[3:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=None,
                    help="campaign seed (default: a random one, printed)")
    ap.add_argument("--programs", type=int, default=40, metavar="N",
                    help="number of random programs (default 40); resync jobs after aborted "
                         "ones and jitter twins come on top")
    ap.add_argument("--params", choices=list(PARAMS), default="small",
                    help="chip configuration: " + "; ".join(f"{k}: {v}"
                                                            for k, v in _CONFIGS.items()))
    ap.add_argument("--illegal", type=float, nargs="?", const=0.5, default=0.0,
                    metavar="SHARE",
                    help="make this share of the programs illegal (default 0; the bare flag: "
                         "0.5); each ends in an error the generator chose (illegal opcode, VEC, "
                         "bad fields, SRAM / off-chip / KV ranges, missing HALT, program too "
                         "long or beyond memory), sometimes with the ops before it still in "
                         "flight (the chip aborts them)")
    ap.add_argument("--twins", type=float, default=None, metavar="P",
                    help="probability that a valid program runs again under another memory "
                         "configuration (stalls if it had none, else none): its results are "
                         "checked like any job's and its cycle count must differ the right way "
                         "(default 0.1, with --timing 0)")
    ap.add_argument("--jobs-per-run", type=int, default=60, metavar="J",
                    help="jobs per Verilator simulation (one memory image each; default 60): "
                         "a progress line follows each run")
    ap.add_argument("--timing", action="store_true",
                    help="also predict every legal job's cycles with sim.timing.predict and "
                         "compare them (and the other timed counters it models) with the "
                         "RTL's; the memory runs without jitter (each job keeps its interval) "
                         "and there are no jitter twins unless --twins is given")
    ap.add_argument("--show", type=int, metavar="I", default=None,
                    help="print program I of the campaign (and its twin / resync, if any) and "
                         "exit without simulating")
    args = ap.parse_args(argv)
    if args.twins is None:
        args.twins = 0.0 if args.timing else 0.1
    if not 0 <= args.illegal <= 1:
        ap.error("--illegal SHARE must lie in 0..1")
    seed = random.randrange(1 << 31) if args.seed is None else args.seed
    n_illegal = round(args.programs * args.illegal)
    n_valid = args.programs - n_illegal
    p = PARAMS[args.params]
    replay = (f"{sys.executable} scripts/fuzz_chip.py --seed {seed} --programs {args.programs}"
              f" --params {args.params} --illegal {args.illegal} --twins {args.twins}"
              f" --jobs-per-run {args.jobs_per_run}{' --timing' if args.timing else ''}")
    print(f"chip fuzz: seed {seed}; {n_valid} valid + {n_illegal} illegal programs on "
          f"'{args.params}' ({_CONFIGS[args.params]})\nreplay: {replay}", flush=True)
    if args.show is not None:
        for prog in make_programs(p, seed, n_valid, n_illegal, twins=args.twins):
            if prog.index == args.show:
                print(f"\nprogram {prog.index}: {prog.kind}{', abort' if prog.tainted else ''}"
                      f", pos_init {prog.pos_init}, mem interval/jitter/max/seed {prog.mem}, "
                      f"expect {prog.expect.name} at pc {prog.expect_pc}; {prog.note}")
                if prog.placed:
                    marks = {prog.expect_pc: ">>"} if prog.expect else {}
                    print(format_program(prog.words, marks))
        return 0
    t0 = time.perf_counter()
    rep = run_campaign(p, seed, n_valid, n_illegal, replay=replay, twins=args.twins,
                       jobs_per_run=args.jobs_per_run, log=lambda s: print(s, flush=True),
                       timing=args.timing)
    print(rep.summary())
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    print(f"{'FAILED' if rep.mismatches else 'OK'}: seed {seed}; replay: {replay}")
    return 1 if rep.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

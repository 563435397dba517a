"""Differential fuzzing of the chip RTL (Verilator) against the ISA simulator (``sim/fuzz.py``).

    .venv/bin/python scripts/fuzz_chip.py --seed 123 --programs 40 --params small --illegal

``--programs N`` random programs (with ``--illegal`` half of them are illegal programs that
must fail with a known error), run as jobs of one Verilator simulation per memory image and
compared job by job with ``sim.isa_sim.IsaSim``. Prints the seed and the command that replays
the run; exits 1 on any mismatch. ``--show J`` prints the micro-ops of program J instead.
"""

import argparse
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from sim.fuzz import PARAMS, format_program, make_programs, run_campaign  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=None, help="campaign seed (default: random)")
    ap.add_argument("--programs", type=int, default=40, help="number of random programs")
    ap.add_argument("--params", choices=sorted(PARAMS), default="small",
                    help="chip configuration: small (4x8 grid) or default (16x16 grid)")
    ap.add_argument("--illegal", action="store_true",
                    help="make half of the programs illegal (each must fail with a known Err)")
    ap.add_argument("--show", type=int, metavar="J", default=None,
                    help="print program J of the campaign (no simulation)")
    args = ap.parse_args(argv)
    seed = random.randrange(1 << 31) if args.seed is None else args.seed
    n_illegal = args.programs // 2 if args.illegal else 0
    n_valid = args.programs - n_illegal
    p = PARAMS[args.params]
    replay = (f"{sys.executable} scripts/fuzz_chip.py --seed {seed} --programs {args.programs}"
              f" --params {args.params}{' --illegal' if args.illegal else ''}")
    print(f"chip fuzz: seed {seed}; replay: {replay}", flush=True)
    if args.show is not None:
        for prog in make_programs(p, seed, n_valid, n_illegal):
            if prog.index == args.show:
                print(f"program {prog.index} ({prog.kind}{', abort' if prog.tainted else ''}) "
                      f"pos_init {prog.pos_init} mem {prog.mem} expect {prog.expect.name} "
                      f"at pc {prog.expect_pc} {prog.note}")
                if prog.placed:
                    print(format_program(prog.words, prog.expect_pc if prog.expect else None))
        return 0
    rep = run_campaign(p, seed, n_valid, n_illegal, replay=replay,
                       log=lambda s: print(s, flush=True))
    print(rep.summary())
    print(f"replay: {replay}")
    return 1 if rep.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

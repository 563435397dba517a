"""Benchmark ``sim.chip_rtl.RtlSession``: the bulk load of a model-sized off-chip image and
the host round trips of a decode step (write the next token's inputs, run, read the logits).

The chip is ``ChipParams(offchip_kib=--offchip-mib * 1024)`` (a Verilator build of its own:
the first run builds it, ~5 min here). The image is ``--image-mib`` MiB of random bytes with
a small weight GEMM (``sw.programs.weight_gemm``) at its start. Before any figure is
printed, the GEMM run on the loaded image is checked against the golden model
(``sim.golden.gemm``) and the whole image is read back and compared with what was written.

Printed: the session's start-up; the bulk load (``RtlSession.write`` of the whole image:
the host's binary file plus the simulator's ``$fread``; and, for comparison, how long
``sim.offchip.write_memh`` alone takes to write the same image as the hex text that
``$readmemh`` would need); the bulk read back; and the medians of ``--repeat`` round trips:
a ``--in-kib`` write, a run of the GEMM, a ``--out-kib`` read, and all three in a row. Run:
``.venv/bin/python scripts/bench_rtl_session.py`` (``--help`` for the options).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from hw.isa import Buf, Counter, Err, bus_words_per  # noqa: E402
from hw.params import ChipParams  # noqa: E402
from sim import golden as G  # noqa: E402
from sim.chip_rtl import RtlSession  # noqa: E402
from sim.offchip import write_memh, write_region_bin  # noqa: E402
from sw.programs import Image, weight_gemm  # noqa: E402
from sw.quantize import random_gemm  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--offchip-mib", type=int, default=128,
                    help="off-chip memory of the chip (default 128)")
    ap.add_argument("--image-mib", type=float, default=100, help="image size (default 100)")
    ap.add_argument("--in-kib", type=int, default=4, help="host write per step (default 4)")
    ap.add_argument("--out-kib", type=int, default=256, help="host read per step (default 256)")
    ap.add_argument("--repeat", type=int, default=20, help="round trips timed (default 20)")
    ap.add_argument("--no-hex", action="store_true", help="skip the write_memh comparison")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    p = ChipParams(offchip_kib=args.offchip_mib * 1024)
    B = p.offchip_bytes_per_cycle
    rng = np.random.default_rng(args.seed)
    size = int(args.image_mib * 2**20) // B * B
    if size > p.offchip_kib * 1024:
        ap.error(f"--image-mib {args.image_mib} does not fit --offchip-mib {args.offchip_mib}")
    img = Image(p)
    x, qw, bias = random_gemm(rng, 4, 128, 64, 4)
    x8, xs = G.quantize_rows(x)
    wg = weight_gemm(p, img, x8, xs, qw, bias, exp_rng=rng)
    prog_addr, prog_len = img.put_program(wg.prog)
    want = G.gemm(x8, xs, qw, bias)
    used = img.next * B
    image = rng.integers(0, 256, size, dtype=np.uint8)
    image[:used] = img.mem[:used]
    n_out = wg.T * wg.nb * bus_words_per(p, Buf.ACC)

    t0 = time.perf_counter()
    with RtlSession(p) as s:
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        s.write(0, image)
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_region_bin(s.run_dir / "bench_load.bin", image, B)  # the host's share of it
        load_file = time.perf_counter() - t0
        (s.run_dir / "bench_load.bin").unlink()

        r = s.run(prog_addr, prog_len)
        assert r.error == Err.NONE, r.error
        out = s.read(wg.out_off, n_out)
        mem = np.zeros(p.offchip_kib * 1024, np.uint8)
        mem[wg.out_off * B : wg.out_off * B + out.size] = out
        assert np.array_equal(wg.result(mem), want), "the GEMM differs from the golden model"
        image[wg.out_off * B : wg.out_off * B + out.size] = out  # the GEMM's stores
        t0 = time.perf_counter()
        back = s.read(0, size // B)
        bulk_read = time.perf_counter() - t0
        assert np.array_equal(back, image), "the image read back differs"

        x_in = rng.integers(0, 256, args.in_kib * 1024, dtype=np.uint8)
        in_addr = size // B - len(x_in) // B
        n_read = args.out_kib * 1024 // B
        t = {k: [] for k in ("write", "run", "read", "step")}
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            s.write(in_addr, x_in)
            t1 = time.perf_counter()
            r = s.run(prog_addr, prog_len)
            t2 = time.perf_counter()
            s.read(0, n_read)
            t3 = time.perf_counter()
            t["write"].append(t1 - t0)
            t["run"].append(t2 - t1)
            t["read"].append(t3 - t2)
            t["step"].append(t3 - t0)
        cycles = r.counters[Counter.CYCLES]

    print(f"chip: {p.rows}x{p.cols}, off-chip {args.offchip_mib} MiB; image {size / 2**20:.1f} "
          f"MiB; GEMM result == golden, image read back intact")
    print(f"session start-up (with the build, if it was missing): {start:.2f} s")
    print(f"bulk load of {size / 2**20:.1f} MiB (binary file + $fread): {load:.2f} s "
          f"({size / load / 1e6:.0f} MB/s), of which the file {load_file:.2f} s")
    print(f"bulk read of {size / 2**20:.1f} MiB ($fwrite + file): {bulk_read:.2f} s "
          f"({size / bulk_read / 1e6:.0f} MB/s)")
    if not args.no_hex:
        with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent / "build") \
                as tmp:
            t0 = time.perf_counter()
            path = write_memh(Path(tmp) / "image.hex", image, B)
            hex_s = time.perf_counter() - t0
            print(f"for comparison, write_memh of the same image as $readmemh hex: "
                  f"{hex_s:.2f} s ({path.stat().st_size / 2**20:.0f} MiB of text), before "
                  f"the simulator parses it")
    ms = {k: f"{np.median(v) * 1e3:.1f} ms" for k, v in t.items()}
    print(f"round trips (median of {args.repeat}): write {args.in_kib} KiB {ms['write']}, "
          f"run ({cycles} cycles) {ms['run']}, read {args.out_kib} KiB {ms['read']}; "
          f"the three in a row {ms['step']}")


if __name__ == "__main__":
    main()

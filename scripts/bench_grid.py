"""Throughput of the systolic array (``hw/grid.py``) measured on its Verilator build.

Run::

    .venv/bin/python scripts/bench_grid.py            # the 16 x 16 W4A8 grid (16 x 8 PEs)
    .venv/bin/python scripts/bench_grid.py --small    # also the 4 x 4 PE grid (rows=4, cols=8)

Builds the array with ``sim.rtl.run_cocotb`` (in ``build/rtl/grid_r<rows>c<cols>/``, the
directory ``tests/test_grid_rtl.py`` uses, so a build from the tests is reused), runs the
cocotb measurement ``tests/rtl/tb_grid_bench.py`` (no stalls, no back-pressure, every output
row still checked against the golden model), which writes raw cycle stamps to
``bench.json`` in that directory; this script turns them into figures and prints them. It
asserts nothing about speed.

Figures:

- **prefill**: back-to-back tiles of T activation rows. MAC utilization = useful MACs /
  (MACs the grid could do in the cycles). INT8: a PE does one 8 x 8 MAC a cycle, a row is
  ``rows * pcols`` useful MACs; W4A8: a PE does two (two INT4 weights), a row is
  ``rows * cols`` useful MACs against ``rows * cols`` per cycle. Both modes: utilization =
  rows / cycles. *end-to-end* counts cycles from the first accepted activation row to the last
  output row (inclusive: pipeline fill and drain included, the first tile's weight load not);
  *issue* counts from the first to the last accepted activation row (the steady-state rate).
- **GEMV**: back-to-back tiles of one activation row, bound by weight loading. Weights per
  cycle (each tile is ``rows * ncols`` weights, ncols = cols in W4A8, cols / 2 in INT8) and
  weight bytes per cycle (W4A8: two weights a byte; INT8: one), end-to-end and from the tile
  interval (issue), against ``ChipParams.offchip_bytes_per_cycle``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hw.grid import SystolicArray  # noqa: E402
from hw.params import ChipParams  # noqa: E402
from sim.rtl import BUILD, run_cocotb  # noqa: E402


def measure(
    params: ChipParams, t_values: list[int], tiles: int, gemv_tiles: int, seed: int
) -> dict:
    """Build and run the cocotb measurement for ``params``; returns the JSON it wrote."""
    name = f"grid_r{params.rows}c{params.cols}"  # shared with tests/test_grid_rtl.py
    out = BUILD / name / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    run_cocotb(
        SystolicArray(params),
        name,
        "tests.rtl.tb_grid_bench",
        name=name,
        extra_env={
            "GRID_ROWS": str(params.rows),
            "GRID_COLS": str(params.cols),
            "GRID_SEED": str(seed),
            "GRID_BENCH_OUT": str(out),
            "GRID_BENCH_T": ",".join(map(str, t_values)),
            "GRID_BENCH_TILES": str(tiles),
            "GRID_BENCH_GEMV_TILES": str(gemv_tiles),
        },
    )
    result = json.loads(out.read_text())
    result["path"] = str(out)
    return result


def figures(b: dict, params: ChipParams) -> dict:
    """Utilization or weight rates of one batch from its cycle stamps."""
    e2e = b["last_out"] - b["first_accept"] + 1
    issue = b["last_accept"] - b["first_accept"] + 1
    w4 = b["mode"] == "W4A8"
    ncols = b["cols"] if w4 else b["pcols"]
    f = {"cycles_e2e": e2e, "cycles_issue": issue}
    if b["kind"] == "prefill":
        useful = b["act_rows"] * b["rows"] * ncols
        peak = b["rows"] * ncols  # MACs per cycle: rows * pcols (INT8), rows * cols (W4A8)
        f["util_e2e"] = useful / (peak * e2e)
        f["util_issue"] = useful / (peak * issue)
    else:
        per_tile = b["rows"] * ncols
        interval = (b["last_accept"] - b["first_accept"]) / max(b["tiles"] - 1, 1)
        per_byte = 2 if w4 else 1
        f["interval"] = interval
        f["w_per_cycle_e2e"] = b["tiles"] * per_tile / e2e
        f["w_per_cycle_issue"] = per_tile / interval
        f["bytes_per_cycle_e2e"] = f["w_per_cycle_e2e"] / per_byte
        f["bytes_per_cycle_issue"] = f["w_per_cycle_issue"] / per_byte
        f["offchip"] = params.offchip_bytes_per_cycle
    return f


def report(params: ChipParams, result: dict) -> None:
    P = params.cols // 2
    print(
        f"\nrows={params.rows}, cols={params.cols} ({params.rows} x {P} PEs), "
        f"latency {SystolicArray(params).latency}, seed {result['seed']}  [{result['path']}]"
    )
    print("prefill: back-to-back tiles, MAC utilization")
    print(
        f"  {'mode':<5} {'T':>4} {'tiles':>5} {'rows':>6} {'cycles e2e':>10} "
        f"{'util e2e':>9} {'cycles issue':>12} {'util issue':>10}"
    )
    for b in result["batches"]:
        if b["kind"] != "prefill":
            continue
        f = figures(b, params)
        print(
            f"  {b['mode']:<5} {b['T']:>4} {b['tiles']:>5} {b['act_rows']:>6} "
            f"{f['cycles_e2e']:>10} {f['util_e2e']:>9.1%} {f['cycles_issue']:>12} "
            f"{f['util_issue']:>10.1%}"
        )
    print(f"GEMV: tiles of one row, weights vs off-chip {params.offchip_bytes_per_cycle} B/cycle")
    print(
        f"  {'mode':<5} {'tiles':>5} {'cycles e2e':>10} {'w/cyc e2e':>9} {'B/cyc e2e':>9} "
        f"{'tile every':>10} {'w/cyc issue':>11} {'B/cyc issue':>11} {'of off-chip':>11}"
    )
    for b in result["batches"]:
        if b["kind"] != "gemv":
            continue
        f = figures(b, params)
        print(
            f"  {b['mode']:<5} {b['tiles']:>5} {f['cycles_e2e']:>10} "
            f"{f['w_per_cycle_e2e']:>9.2f} {f['bytes_per_cycle_e2e']:>9.2f} "
            f"{f['interval']:>10.2f} {f['w_per_cycle_issue']:>11.2f} "
            f"{f['bytes_per_cycle_issue']:>11.2f} "
            f"{f['bytes_per_cycle_issue'] / f['offchip']:>11.0%}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Measure the systolic array's MAC utilization (back-to-back tiles) and "
        "GEMV weight rate on its Verilator build (cocotb). Prints figures; "
        "asserts nothing about speed.",
        epilog="Raw cycle stamps are written to build/rtl/grid_r<rows>c<cols>/bench.json.",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="also measure the 4 x 4 PE grid (ChipParams rows=4, cols=8)",
    )
    parser.add_argument(
        "--tiles", type=int, default=32, help="back-to-back tiles per prefill batch (default 32)"
    )
    parser.add_argument(
        "--t",
        type=int,
        nargs="+",
        metavar="T",
        help="activation rows per prefill tile (default: rows, 2*rows, 64)",
    )
    parser.add_argument(
        "--gemv-tiles", type=int, default=64, help="one-row tiles per GEMV batch (default 64)"
    )
    parser.add_argument("--seed", type=int, default=1, help="tile data seed (default 1)")
    args = parser.parse_args(argv)

    configs = [ChipParams(rows=16, cols=16)]
    if args.small:
        configs.append(ChipParams(rows=4, cols=8))
    for params in configs:
        t_values = args.t or sorted({params.rows, 2 * params.rows, 64})
        t0 = time.monotonic()
        result = measure(params, t_values, args.tiles, args.gemv_tiles, args.seed)
        report(params, result)
        print(f"  ({time.monotonic() - t0:.0f} s including the Verilator build)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

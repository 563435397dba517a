"""cocotb measurement run for ``scripts/bench_grid.py``: cycle counts of the systolic array.

No stalls, no back-pressure; every output row is still checked against the golden model by
:class:`tests.rtl.tb_grid.GridTestbench`. Two kinds of batch, each started from an idle array
and written to the JSON file ``GRID_BENCH_OUT`` as raw cycle stamps (the script computes the
figures):

- ``prefill``: ``GRID_BENCH_TILES`` back-to-back tiles of T rows, for each T in
  ``GRID_BENCH_T`` (comma-separated) and each mode;
- ``gemv``: ``GRID_BENCH_GEMV_TILES`` back-to-back tiles of one activation row, each mode.

Stamps (cycles since reset, a transfer stamped with the cycle it completes in):
``first_accept``/``last_accept`` (activation rows), ``last_out`` (output rows),
``first_w``/``last_w`` (weight rows).
"""

import json
import os

import cocotb

from hw.grid import GridMode
from tests.rtl.tb_grid import Config, make_tile, tile_rng


@cocotb.test()
async def grid_bench(dut):
    cfg = Config()
    t_values = [int(t) for t in os.environ.get("GRID_BENCH_T", str(cfg.rows)).split(",")]
    n_tiles = int(os.environ.get("GRID_BENCH_TILES", "32"))
    n_gemv = int(os.environ.get("GRID_BENCH_GEMV_TILES", "64"))
    out = os.environ["GRID_BENCH_OUT"]
    rng = tile_rng(cfg.seed, "grid_bench")
    tb = cfg.testbench(dut, "grid_bench", stalls=False)
    await tb.start()

    batches = [("prefill", mode, T, n_tiles) for T in t_values for mode in GridMode]
    batches += [("gemv", mode, 1, n_gemv) for mode in GridMode]
    results = []
    for kind, mode, T, n in batches:
        w0, a0, o0 = len(tb.w_accepts), len(tb.a_accepts), len(tb.o_cycles)
        tiles = [make_tile(rng, cfg.rows, cfg.pcols, mode, T) for _ in range(n)]
        await tb.run(tiles, f"{kind} {mode.name} T={T}")
        w, a, o = tb.w_accepts[w0:], tb.a_accepts[a0:], tb.o_cycles[o0:]
        results.append(
            {
                "kind": kind,
                "mode": mode.name,
                "T": T,
                "tiles": n,
                "rows": cfg.rows,
                "cols": cfg.cols,
                "pcols": cfg.pcols,
                "act_rows": len(a),
                "weight_rows": len(w),
                "first_w": w[0],
                "last_w": w[-1],
                "first_accept": a[0],
                "last_accept": a[-1],
                "last_out": o[-1],
                "latency": min(tb.latencies[o0:]),
            }
        )
        dut._log.info(
            f"{kind} {mode.name} T={T}: {len(a)} rows, accepts {a[0]}..{a[-1]}, last out {o[-1]}"
        )
    with open(out, "w") as f:
        json.dump({"seed": cfg.seed, "batches": results}, f, indent=1)

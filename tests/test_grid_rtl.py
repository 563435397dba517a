"""The systolic array (hw/grid.py) as Verilog under Verilator, driven by tests/rtl/tb_grid.py.

The same golden expectations as tests/test_grid.py (sim/grid_ref.py), on the generated Verilog:
random tiles of both modes with valid gaps and output back-pressure, range extremes, GEMV tiles
at the weight rate and back-to-back tiles with no bubble. Two builds by default: 4 x 4 PEs
(``rows=4, cols=8``) and the 16 x 8 PEs of the 16 x 16 W4A8 grid; each builds in its own
``build/rtl/<name>/``. Random tests print their seed; replay with ``GRID_SEED=<seed>``.
"""

import os

import numpy as np
import pytest

from hw.grid import SystolicArray
from hw.params import ChipParams
from sim.rtl import run_cocotb

SEED = int(os.environ.get("GRID_SEED", np.random.SeedSequence().entropy % 2**32))


def run_grid(params: ChipParams, **env):
    """Build the array for ``params`` (``build/rtl/grid_r<rows>c<cols>/``) and run tb_grid."""
    name = f"grid_r{params.rows}c{params.cols}"
    print(f"GRID_SEED={SEED}")
    run_cocotb(
        SystolicArray(params),
        name,
        "tests.rtl.tb_grid",
        name=name,
        extra_env={
            "GRID_ROWS": str(params.rows),
            "GRID_COLS": str(params.cols),
            "GRID_SEED": str(SEED),
            **{k: str(v) for k, v in env.items()},
        },
    )


def test_grid_rtl_4x4_pes():
    run_grid(ChipParams(rows=4, cols=8), GRID_N_TILES=300, GRID_STALL=0.3)


@pytest.mark.slow
def test_grid_rtl_16x16_w4a8():
    """Slow-marked for the default suite's time budget: the default 16 x 16 grid runs in W4A8
    on Verilator in every GEMM of tests/test_chip_rtl.py (inside the chip, vs golden)."""
    run_grid(ChipParams(rows=16, cols=16), GRID_N_TILES=100, GRID_STALL=0.25)


@pytest.mark.slow
@pytest.mark.parametrize("rows, cols", [(1, 4), (2, 2), (8, 6)])
def test_grid_rtl_odd_shapes(rows, cols):
    """Edge shapes: one row (no drain), one PE column, an odd number of PE columns."""
    run_grid(ChipParams(rows=rows, cols=cols), GRID_N_TILES=40, GRID_STALL=0.3)


@pytest.mark.slow
@pytest.mark.parametrize("stall", [0.1, 0.6])
def test_grid_rtl_16x16_long(stall):
    run_grid(ChipParams(rows=16, cols=16), GRID_N_TILES=80, GRID_STALL=stall)

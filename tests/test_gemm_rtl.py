"""The GEMM datapath (hw/gemm.py: grid + group scaler) as Verilog under Verilator, driven by
tests/rtl/tb_gemm.py.

The same problems and golden expectations as tests/test_gemm.py (``sim.golden.gemm`` /
``gemm_act``, tiled by ``sim.gemm_ref.plan_gemm``), on the generated Verilog, with random
valid gaps on all three input streams and output back-pressure: W4A8 with Q4_1-like offsets,
INT8 weights, K over several activation groups, T from 1 (GEMV) to 20, QKᵀ with a partial K
tile, P·V with A15 probabilities in two passes, and range extremes (INT32 saturation). Two
builds by default: 4 x 4 PEs (``rows=4, cols=8``) and the 16 x 16 W4A8 grid, each in its own
``build/rtl/<name>/``. Random tests print their seed; replay with ``GEMM_SEED=<seed>``.
"""

import os

import numpy as np
import pytest

from hw.gemm import GemmUnit
from hw.params import ChipParams
from sim.rtl import run_cocotb

SEED = int(os.environ.get("GEMM_SEED", np.random.SeedSequence().entropy % 2**32))


def run_gemm(params: ChipParams, seed: int = SEED, **env):
    """Build the unit for ``params`` (``build/rtl/gemm_r<rows>c<cols>/``) and run tb_gemm."""
    name = f"gemm_r{params.rows}c{params.cols}"
    print(f"GEMM_SEED={seed}")
    run_cocotb(
        GemmUnit(params),
        name,
        "tests.rtl.tb_gemm",
        name=name,
        extra_env={
            "GEMM_ROWS": str(params.rows),
            "GEMM_COLS": str(params.cols),
            "GEMM_SEED": str(seed),
            **{k: str(v) for k, v in env.items()},
        },
    )


def test_gemm_rtl_4x4_pes():
    """K = 64 on a 4-row grid: 16 K-tiles over 4 activation groups and 2 weight groups."""
    run_gemm(ChipParams(rows=4, cols=8), GEMM_KS="32,64", GEMM_STALL=0.3, GEMM_N=6)


@pytest.mark.slow
def test_gemm_rtl_16x16():
    """K = 128 on the 16 x 16 grid: 8 K-tiles, 8 activation groups, 4 weight groups.
    Slow-marked for the default suite's time budget: the 16 x 16 GEMM unit runs on Verilator
    in every GEMM of tests/test_chip_rtl.py (inside the chip, vs golden)."""
    run_gemm(ChipParams(rows=16, cols=16), GEMM_KS="32,64,128", GEMM_STALL=0.25, GEMM_N=4)


@pytest.mark.slow
@pytest.mark.parametrize("rows, cols", [(1, 4), (8, 6)])
def test_gemm_rtl_odd_shapes(rows, cols):
    """Edge shapes: one grid row, an odd number of PE columns."""
    run_gemm(ChipParams(rows=rows, cols=cols), GEMM_KS="32,64", GEMM_STALL=0.3, GEMM_N=4)


@pytest.mark.slow
@pytest.mark.parametrize("stall", [0.0, 0.1, 0.6])
def test_gemm_rtl_16x16_long(stall):
    """More problems, every K up to 128, runs up to T = 48, stall rates from none to most."""
    run_gemm(ChipParams(rows=16, cols=16), GEMM_KS="32,64,96,128", GEMM_STALL=stall,
             GEMM_N=16, GEMM_MAX_T=48)


@pytest.mark.slow
def test_gemm_rtl_4x4_more_seeds():
    """The default 4 x 4 PE run on eight more seeds (SEED + 1 .. SEED + 8), one build."""
    for i in range(1, 9):
        run_gemm(ChipParams(rows=4, cols=8), (SEED + i) % 2**32, GEMM_KS="32,64",
                 GEMM_STALL=0.3, GEMM_N=6)

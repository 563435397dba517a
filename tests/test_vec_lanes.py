"""The vector unit with fewer lanes than a buffer word holds elements (``hw/vector/engine.py``:
beats and words meet in pieces; the FPGA configuration ``hw.board_top.CHIP_85F`` has 2 lanes
on a 16 x 8 grid), in amaranth.sim against the ISA simulator.

The micro-ops of ``tests/test_vec_engine.py`` (its harness, random buffers and ``run_op``) on
its 4 x 8 chip with 2 lanes (every layout split: an ACC word in 4 pieces, a half word in 2, an
ACT word of 4 rows in 2) and with 4 lanes (ACC words in 2 pieces; half and ACT words whole).
A few run by default, the rest are slow-marked. Random data: seed printed (VEC_SEED).
"""

from dataclasses import replace

import pytest

from hw.isa import QuantMode, VecFn
from tests import test_vec_engine as base

LANES = [2, 4]


@pytest.fixture(params=LANES, ids=lambda n: f"L{n}")
def lanes(request, monkeypatch):
    """The base tests' chip with ``vector_lanes`` = the parameter (buffer depths do not
    depend on it)."""
    monkeypatch.setattr(base, "P", replace(base.P, vector_lanes=request.param))
    return request.param


@pytest.fixture
def rng():
    print(f"VEC_SEED={base.SEED}")
    return base.np.random.default_rng(base.SEED)


def test_elementwise_lanes(rng, lanes):
    base.test_elementwise(rng, VecFn.SILU_MUL, half=0)
    base.test_rope(rng, half=1)


def test_norm_lanes(rng, lanes):
    base.test_norm(rng, VecFn.LAYERNORM, half=1)


def test_quant_lanes(rng, lanes):
    base.test_quant(rng, QuantMode.A8X2, per_row=0, half=0)


@pytest.mark.slow
@pytest.mark.parametrize("half", [0, 1], ids=["full", "half"])
def test_elementwise_lanes_all(rng, lanes, half):
    for fn in (VecFn.RESIDUAL, VecFn.GELU, VecFn.SILU_MUL):
        base.test_elementwise(rng, fn, half)
    base.test_rope(rng, half)
    base.test_norm(rng, VecFn.RMSNORM, half)
    base.test_norm(rng, VecFn.LAYERNORM, half)


@pytest.mark.slow
def test_softmax_lanes(rng, lanes):
    for mode in ("static", "causal", "causal_dyn"):
        base.test_softmax(rng, mode)


@pytest.mark.slow
@pytest.mark.parametrize("half", [0, 1], ids=["full", "half"])
def test_quant_lanes_all(rng, lanes, half):
    for qmode in QuantMode:
        for per_row in (0, 1):
            base.test_quant(rng, qmode, per_row, half)


@pytest.mark.slow
def test_quant_vfold_lanes(rng, lanes):
    for qmode in QuantMode:
        base.test_quant_vfold(rng, qmode, causal=1, G=2, exps=(-128, 128))
    base.test_quant_vfold(rng, QuantMode.INT8, causal=0, G=1, exps=(-9, -3))
    base.test_vfold_bad_scale(rng)


@pytest.mark.slow
def test_copy_lanes(rng, lanes):
    for half, repack in ((0, 0), (1, 0), (0, 1), (1, 1)):
        base.test_copy_acc(rng, half, repack)
    base.test_copy_act(rng)

"""The GEMM datapath (hw/gemm.py: grid + group scaler) bit-exact with the golden model.

The test plays the controller (later the sequencer's job): it tiles a golden GEMM into weight
tiles, activation rows with their scaler information and per-tile column parameters, drives
them through GemmUnit with random stalls, and compares every output with ``sim.golden.gemm``
(INT8 and INT4 group-wise weights, with offsets as GGUF Q4_1) or ``gemm_act`` (QKᵀ with K not
a multiple of the tile; P·V with A15 probabilities as two INT8 passes).
Random tests print their seed; replay with GEMM_SEED=<seed>.
"""

import os

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.gemm import GemmUnit
from hw.grid import GridMode
from hw.params import ChipParams
from sim import golden as G
from sim.gemm_ref import collect, plan_gemm
from sw.quantize import random_gemm, to_wide
from tests.streams import feed

SEED = int(os.environ.get("GEMM_SEED", np.random.SeedSequence().entropy % 2**32))
F = G.NUM.frac_bits


@pytest.fixture
def rng():
    print(f"GEMM_SEED={SEED}")
    return np.random.default_rng(SEED)


def run_unit(params, plan, n_out, stall=0.0, seed=0):
    tiles, acts, prms, mode = plan
    dut = GemmUnit(params)
    prng = np.random.default_rng(seed)
    out = []

    def feeder(ctx, strm, items):
        return feed(ctx, prng, strm, items, stall)

    async def put_w(ctx):
        await feeder(ctx, dut.w_row, [{"data": r, "mode": mode} for t in tiles for r in t])

    async def put_a(ctx):
        await feeder(ctx, dut.a_row, acts)

    async def put_p(ctx):
        await feeder(ctx, dut.i_param, prms)

    async def get(ctx):
        for _ in range(n_out):
            while prng.random() < stall:
                ctx.set(dut.o_row.ready, 0)
                await ctx.tick()
            ctx.set(dut.o_row.ready, 1)
            (pl,) = await ctx.tick().sample(dut.o_row.payload).until(dut.o_row.valid)
            ctx.set(dut.o_row.ready, 0)
            out.append(([int(v) for v in pl.data], int(pl.t)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in (put_w, put_a, put_p):
        sim.add_testbench(tb, background=True)
    sim.add_testbench(get)
    sim.run()
    return out


PARAMS = ChipParams(rows=4, cols=8)  # 4 x 4 PEs, 8 W4A8 / 4 INT8 output columns


@pytest.mark.parametrize("bits, offsets, stall", [(4, True, 0.3), (8, False, 0.0)])
def test_gemm_matches_golden(rng, bits, offsets, stall):
    T, K, N = 5, 64, 10
    x, qw, bias = random_gemm(rng, T, K, N, bits, offsets)  # offsets: Q4_1-like
    x8, xs = G.quantize_rows(x)
    want = G.gemm(x8, xs, qw, bias)
    mode = GridMode.W4A8 if bits == 4 else GridMode.INT8
    ga = xs.group
    plan = plan_gemm(
        PARAMS, [(x8.astype(np.int64), xs.mant, xs.exp, 1)], qw.q.astype(np.int64),
        col_scale=lambda n, k: int(qw.scale[n, k // 32]),
        col_offset=lambda n, k: int(qw.offset[n, k // 32]) if qw.offset is not None else 0,
        col_shift=lambda n: int(qw.shift[n]), bias=bias, mode=mode, a_group=ga)
    ncols = PARAMS.cols if mode == GridMode.W4A8 else PARAMS.cols // 2
    n_out = T * -(-N // ncols)
    got = collect(run_unit(PARAMS, plan, n_out, stall, int(rng.integers(1 << 30))), T, N, ncols)
    assert np.array_equal(got, want)


def test_gemm_act_qk_with_partial_tile(rng):
    """QKᵀ: K's group mantissas as column scales, shift = F - exp_k; d = 40 is not a multiple
    of the tile (zero padded) and ends in a partial activation group."""
    T, S, d = 3, 6, 40
    q8, qs = G.quantize_rows(to_wide(rng.normal(size=(T, d))))
    k8, ks = G.quantize_rows(to_wide(rng.normal(size=(S, d)) * 3))
    want = G.gemm_act(q8, qs, k8, ks)
    ga = qs.group
    plan = plan_gemm(
        PARAMS, [(q8.astype(np.int64), np.pad(qs.mant, ((0, 0), (0, 1))), qs.exp, 1)],
        k8.astype(np.int64),
        col_scale=lambda n, k: int(ks.mant[n, k // ga]) if k < d else 0,
        col_offset=lambda n, k: 0, col_shift=lambda n: F - int(ks.exp[n]),
        bias=np.zeros(S, np.int64), mode=GridMode.INT8, a_group=ga)
    ncols = PARAMS.cols // 2
    got = collect(run_unit(PARAMS, plan, T * -(-S // ncols)), T, S, ncols)
    assert np.array_equal(got, want)


def test_gemm_act_pv_a15_two_passes(rng):
    """P·V with A15 probabilities: hi plane (x >> 7, INT8) with column scale 128, then the lo
    plane (x & 127) with scale 1, accumulating into the same sums."""
    T, S, d = 2, 21, 4
    pp = rng.integers(0, 1 << 20, size=(T, S))
    p15, ps = G.quantize_rows(pp, bits=15)
    v8 = rng.integers(-127, 128, size=(S, d))
    shift = 9
    want = G.gemm_act(p15, ps, v8.T, None, shift=shift)
    p15 = p15.astype(np.int64)
    hi, lo = p15 >> 7, p15 & 127
    mant = np.pad(ps.mant, ((0, 0), (0, 1)))
    plan = plan_gemm(
        PARAMS, [(hi, mant, ps.exp, 128), (lo, mant, ps.exp, 1)], v8.T.astype(np.int64),
        col_scale=lambda n, k: 1, col_offset=lambda n, k: 0, col_shift=lambda n: shift,
        bias=np.zeros(d, np.int64), mode=GridMode.INT8, a_group=ps.group)
    got = collect(run_unit(PARAMS, plan, T), T, d, PARAMS.cols // 2)
    assert np.array_equal(got, want)

"""The systolic grid (hw/grid.py) in amaranth.sim, against the golden model's group sums.

Every stream gets random valid/ready stalls; tiles of both modes, random lengths (GEMV tiles of
one row included) and extreme values (-128, INT4 -8 and 7) follow each other back to back.
Random tests print their seed; replay with GRID_SEED=<seed>.
"""

import os

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.grid import GridMode, ProcessingElement, Skew, SystolicArray
from hw.params import ChipParams
from sim.grid_ref import expected_rows, pack_tile, random_tile
from tests.streams import feed

SEED = int(os.environ.get("GRID_SEED", np.random.SeedSequence().entropy % 2**32))


@pytest.fixture
def rng():
    print(f"GRID_SEED={SEED}")
    return np.random.default_rng(SEED)


# -- processing element ------------------------------------------------------------------------


def test_pe_products_both_modes(rng):
    pe = ProcessingElement(psum_w=20)
    a_vals = list(range(-128, 128))
    cases = [(int(a), int(w), int(mode)) for a in a_vals
             for w, mode in ((0x88, 1), (0x77, 1), (0x78, 1), (0x87, 1), (0x80, 0), (0x7F, 0))]
    cases += [(int(rng.integers(-128, 128)), int(rng.integers(0, 256)), int(rng.integers(0, 2)))
              for _ in range(1500)]
    results = []

    async def bench(ctx):
        for a, w, mode in cases:
            # latch w into bank 1 with its mode, then multiply
            ctx.set(pe.w_in, w)
            ctx.set(pe.mode_in, mode)
            ctx.set(pe.w_latch, 1)
            ctx.set(pe.w_bank, 1)
            await ctx.tick()
            ctx.set(pe.w_latch, 0)
            ctx.set(pe.a_in, a)
            ctx.set(pe.bank_in, 1)
            ctx.set(pe.psum_in[0], 1000)
            ctx.set(pe.psum_in[1], -1000)
            for _ in range(pe.LATENCY):  # product registered
                await ctx.tick()
            await ctx.tick()  # psum registered
            results.append((ctx.get(pe.psum_out[0]), ctx.get(pe.psum_out[1])))

    sim = Simulator(pe)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for (a, w, mode), (p0, p1) in zip(cases, results, strict=True):
        if mode:
            lo, hi = ((w & 15) ^ 8) - 8, ((w >> 4) ^ 8) - 8
            assert (p0, p1) == (1000 + a * lo, -1000 + a * hi), (a, w, mode)
        else:
            assert (p0, p1) == (1000 + a * (((w & 255) ^ 128) - 128), -1000), (a, w, mode)


def test_skew_delays():
    sk = Skew(8, 4)
    dsk = Skew(8, 4, reverse=True)
    seen = []

    async def bench(ctx):
        for t in range(8):
            for i in range(4):
                ctx.set(sk.i[i], t * 10 + i)
                ctx.set(dsk.i[i], t * 10 + i)
            await ctx.delay(1e-9)
            seen.append(([ctx.get(sk.o[i]) for i in range(4)],
                         [ctx.get(dsk.o[i]) for i in range(4)]))
            await ctx.tick()

    from amaranth.hdl import Module
    top = Module()
    top.submodules.sk = sk
    top.submodules.dsk = dsk
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    t = 6
    assert seen[t][0] == [(t - i) * 10 + i for i in range(4)]
    assert seen[t][1] == [(t - 3 + i) * 10 + i for i in range(4)]


# -- the array with streams ------------------------------------------------------------------------


def run_array(params, tiles, stall=0.0, seed=0):
    """Drive ``tiles`` = [(mode, w [R, n], a [T, R])] through a SystolicArray; returns
    (output rows as [T, 2P] arrays per tile, output modes, cycle of each accepted a row)."""
    dut = SystolicArray(params)
    prng = np.random.default_rng(seed)
    outs, accepted = [], []

    async def put_weights(ctx):
        await feed(ctx, prng, dut.w_row, [{"data": row, "mode": mode} for mode, w, _ in tiles
                                          for row in pack_tile(w, mode)], stall)

    async def put_acts(ctx):
        cycle = 0
        for _, _, a in tiles:
            for t, row in enumerate(a):
                while prng.random() < stall:
                    await ctx.tick()
                ctx.set(dut.a_row.payload, {"data": [int(v) for v in row],
                                            "last": int(t == len(a) - 1)})
                ctx.set(dut.a_row.valid, 1)
                while True:
                    ready = ctx.get(dut.a_row.ready)
                    await ctx.tick()
                    cycle += 1
                    if ready:
                        accepted.append(cycle)
                        break
                ctx.set(dut.a_row.valid, 0)

    async def get_outputs(ctx):
        for _, _, a in tiles:
            rows, modes = [], []
            for t in range(len(a)):
                while prng.random() < stall:
                    ctx.set(dut.o_row.ready, 0)
                    await ctx.tick()
                ctx.set(dut.o_row.ready, 1)
                (payload,) = await ctx.tick().sample(dut.o_row.payload).until(dut.o_row.valid)
                ctx.set(dut.o_row.ready, 0)
                rows.append([int(v) for v in payload.data])
                modes.append(int(payload.mode))
                assert payload.last == (t == len(a) - 1)
            outs.append((np.array(rows), modes))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(put_weights, background=True)
    sim.add_testbench(put_acts, background=True)
    sim.add_testbench(get_outputs)
    sim.run()
    return outs, accepted, dut


def _random_tiles(rng, R, P, n, t_range=(1, 12)):
    tiles = []
    for i in range(n):
        mode = GridMode(int(rng.integers(0, 2)))
        extreme = i % 4 == 3
        w = random_tile(rng, R, P, mode, extreme)
        T = int(rng.integers(*t_range))
        a = rng.choice([-128, 127], size=(T, R)) if extreme else rng.integers(-128, 128, (T, R))
        tiles.append((mode, w, a))
    return tiles


@pytest.mark.parametrize("stall", [0.0, 0.3])
def test_array_matches_golden_with_stalls(rng, stall):
    params = ChipParams(rows=4, cols=8)  # 4 x 4 PEs
    tiles = _random_tiles(rng, 4, 4, 12)
    outs, _, _ = run_array(params, tiles, stall=stall, seed=int(rng.integers(1 << 30)))
    for (mode, w, a), (got, modes) in zip(tiles, outs, strict=True):
        assert modes == [int(mode)] * len(a)
        assert np.array_equal(got, expected_rows(a, w, mode, 4))


def test_back_to_back_tiles_have_no_bubbles(rng):
    """Tiles of T = rows activation rows with no stalls: after the first tile's load, one row
    is accepted every cycle (every PE busy)."""
    R = 4
    params = ChipParams(rows=R, cols=8)
    tiles = [(GridMode(i % 2), random_tile(rng, R, 4, GridMode(i % 2)),
              rng.integers(-128, 128, (R, R))) for i in range(8)]
    outs, accepted, _ = run_array(params, tiles)
    gaps = np.diff(accepted)
    assert (gaps == 1).all(), f"bubbles between accepted rows: {gaps.tolist()}"
    for (mode, w, a), (got, _) in zip(tiles, outs, strict=True):
        assert np.array_equal(got, expected_rows(a, w, mode, 4))


def test_gemv_runs_at_the_weight_rate(rng):
    """Tiles of one activation row: one tile per ``rows`` cycles, i.e. the grid consumes a full
    weight row (cols weights) every cycle."""
    R = 4
    params = ChipParams(rows=R, cols=8)
    tiles = [(GridMode.W4A8, random_tile(rng, R, 4, GridMode.W4A8),
              rng.integers(-128, 128, (1, R))) for _ in range(8)]
    outs, accepted, _ = run_array(params, tiles)
    assert (np.diff(accepted)[1:] == R).all(), np.diff(accepted).tolist()
    for (mode, w, a), (got, _) in zip(tiles, outs, strict=True):
        assert np.array_equal(got, expected_rows(a, w, mode, 4))

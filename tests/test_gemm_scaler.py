"""The group scaler (hw/gemm.py, GroupScaler) alone against the golden output formula, with
the output shift over its whole range: right shifts with rounding, ``s >= 63`` (zero), left
shifts with saturation, sums near the 36-bit clamp and the INT32 saturation, and back-pressure
on the output. Each row is the first and final contribution to its accumulator row, so
``Y = (scale * acc + offset * xsum) << (gshift + kshift)`` and
``out = saturate32(rshift_round(Y, shift - exp) + bias)`` (``sim.golden``).
Random test; replay with SCALER_SEED=<seed>.
"""

import os

import numpy as np
from amaranth.sim import Simulator

from hw.gemm import SCALE_BITS, GroupScaler, xsum_width
from hw.grid import psum_width
from hw.params import ChipParams
from sim import golden as G
from tests.streams import feed

SEED = int(os.environ.get("SCALER_SEED", np.random.SeedSequence().entropy % 2**32))
P = ChipParams(rows=4, cols=8)


def _rows(rng, n):
    C = P.cols
    pw, xw = psum_width(P.rows), xsum_width(P.rows)
    rows, params, want = [], [], []
    for i in range(n):
        acc = rng.integers(-(1 << (pw - 1)), 1 << (pw - 1), C)
        # small sums too, so that left shifts do not always saturate
        acc = np.where(rng.random(C) < 0.4, acc >> rng.integers(0, pw, C), acc)
        xsum = int(rng.integers(-(1 << (xw - 1)), 1 << (xw - 1)))
        scale = rng.integers(-(1 << (SCALE_BITS - 1)), 1 << (SCALE_BITS - 1), C)
        scale = np.where(rng.random(C) < 0.4, scale >> rng.integers(0, SCALE_BITS, C), scale)
        offset = rng.integers(-(1 << 15), 1 << 15, C)
        offset = np.where(rng.random(C) < 0.5, 0, offset)
        z = [int(scale[c]) * int(acc[c]) + int(offset[c]) * xsum for c in range(C)]
        zb = max(abs(v).bit_length() for v in z)
        # keep |Y| < 2**61 (the golden bound)
        room = max(60 - zb, 0)
        gshift = int(rng.integers(0, min(room, 31) + 1))
        kshift = [int(rng.integers(0, min(room - gshift, 31) + 1)) for _ in range(C)]
        gzero = int(rng.random() < 0.05)
        exp = int(rng.integers(-128, 128))
        shift = (exp + rng.integers(-45, 75, C)).clip(-256, 255)
        bias = rng.integers(-(1 << 31), 1 << 31, C)
        bias = np.where(rng.random(C) < 0.3, bias >> 20, bias)
        t = i % P.acc_entries
        rows.append({"acc": acc.tolist(), "xsum": xsum, "last": 1,
                     "info": {"gshift": gshift, "gzero": gzero, "exp": exp, "t": t,
                              "first": 1, "final": 1}})
        params.append({"scale": scale.tolist(), "offset": offset.tolist(), "kshift": kshift,
                       "shift": shift.tolist(), "bias": bias.tolist()})
        y = [0 if gzero else z[c] << (gshift + kshift[c]) for c in range(C)]
        out = G.saturate(G.rshift_round(np.array(y, dtype=np.int64), shift - exp) + bias)
        want.append(([int(v) for v in out], t))
    return rows, params, want


def _simulate(dut, prng, row_runs, params, get):
    """Run ``dut`` (a GroupScaler) with its rows fed as ``row_runs`` = [(rows, stall)] in turn,
    its parameter words back to back, and the testbench ``get`` taking the outputs."""

    async def put_rows(ctx):
        for items, stall in row_runs:
            await feed(ctx, prng, dut.i_row, items, stall)

    async def put_params(ctx):
        await feed(ctx, prng, dut.i_param, params, 0.0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(put_rows, background=True)
    sim.add_testbench(put_params, background=True)
    sim.add_testbench(get)
    sim.run()


def test_scaler_output_shift_and_saturation():
    print(f"SCALER_SEED={SEED}")
    rng = np.random.default_rng(SEED)
    rows, params, want = _rows(rng, 300)
    dut = GroupScaler(P)
    prng = np.random.default_rng(SEED + 1)
    got = []

    async def get(ctx):
        for i in range(len(want)):
            # bursts of back-pressure, then free-running stretches
            ctx.set(dut.o_row.ready, 0 if (i // 40) % 2 and prng.random() < 0.6 else 1)
            if not ctx.get(dut.o_row.ready):
                await ctx.tick().repeat(int(prng.integers(1, 6)))
                ctx.set(dut.o_row.ready, 1)
            (pl,) = await ctx.tick().sample(dut.o_row.payload).until(dut.o_row.valid)
            got.append(([int(v) for v in pl.data], int(pl.t)))
        ctx.set(dut.o_row.ready, 0)
        await ctx.tick().repeat(GroupScaler.STAGES + 3)
        assert not ctx.get(dut.o_row.valid), "an output row beyond the rows put in"
        assert not ctx.get(dut.busy), "busy after every row came out"

    _simulate(dut, prng, [(rows, 0.1)], params, get)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"row {i}: got {g}, want {w} (row {rows[i]}, params {params[i]})"


def test_scaler_one_row_per_cycle():
    """Without back-pressure the scaler takes a row every cycle and the first output leaves
    its FIFO ``STAGES`` + the FIFO's latency after the first row is accepted."""
    rng = np.random.default_rng(SEED + 2)
    rows, params, want = _rows(rng, 40)
    dut = GroupScaler(P)
    times = {}

    async def tb(ctx):
        ctx.set(dut.o_row.ready, 1)
        ctx.set(dut.i_row.valid, 1)
        ctx.set(dut.i_param.valid, 1)
        cycle, i, o = 0, 0, 0
        while o < len(want):
            if i < len(rows):
                ctx.set(dut.i_row.payload, rows[i])
                ctx.set(dut.i_param.payload, params[i])
            else:
                ctx.set(dut.i_row.valid, 0)
                ctx.set(dut.i_param.valid, 0)
            taken = i < len(rows) and ctx.get(dut.i_row.ready)
            if ctx.get(dut.o_row.valid):
                assert [int(v) for v in ctx.get(dut.o_row.payload.data)] == want[o][0]
                times.setdefault("out0", cycle)
                o += 1
            if taken:
                times.setdefault("in0", cycle)
                i += 1
            await ctx.tick()
            cycle += 1
            assert cycle < 500
        times["end"] = cycle

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    # FIFO write in cycle in0 + STAGES, readable 1 (SyncFIFOBuffered) + 1 later
    assert times["out0"] - times["in0"] == GroupScaler.STAGES + 2
    assert times["end"] - times["out0"] == len(want)


def test_scaler_accumulation():
    """Rows that accumulate (``first`` / ``final`` flags) on a few accumulator rows, often
    the same row back to back (GEMV), with the row valid gapped or not: every ``final`` row
    gives ``saturate32(rshift_round(Σ P, shift - exp) + bias)`` over its row's contributions
    since the last ``first`` (sums modulo 2**64 in the hardware; kept below 2**61 here)."""
    rng = np.random.default_rng(SEED + 3)
    C = P.cols
    pw, xw = psum_width(P.rows), xsum_width(P.rows)
    rows, params, want = [], [], []
    acc_y = {}
    open_t = []
    t_pool = [0, 1, 2]
    for _ in range(400):
        t = int(rng.choice(t_pool)) if rng.random() < 0.5 or not open_t else open_t[-1]
        first = int(t not in acc_y or rng.random() < 0.15)
        final = int(rng.random() < 0.3)
        acc = rng.integers(-(1 << (pw - 1)), 1 << (pw - 1), C)
        xsum = int(rng.integers(-(1 << (xw - 1)), 1 << (xw - 1)))
        scale = rng.integers(-(1 << (SCALE_BITS - 1)), 1 << (SCALE_BITS - 1), C)
        offset = rng.integers(-(1 << 15), 1 << 15, C)
        gshift = int(rng.integers(0, 12))
        kshift = [int(v) for v in rng.integers(0, 4, C)]
        exp = int(rng.integers(-20, 20))
        shift = exp + rng.integers(-10, 70, C)
        bias = rng.integers(-(1 << 31), 1 << 31, C)
        p_row = [(int(scale[c]) * int(acc[c]) + int(offset[c]) * xsum) << (gshift + kshift[c])
                 for c in range(C)]
        y = p_row if first else [a + b for a, b in zip(acc_y[t], p_row, strict=True)]
        acc_y[t] = y
        if t not in open_t:
            open_t.append(t)
        rows.append({"acc": acc.tolist(), "xsum": xsum, "last": 1,
                     "info": {"gshift": gshift, "gzero": 0, "exp": exp, "t": t,
                              "first": first, "final": final}})
        params.append({"scale": scale.tolist(), "offset": offset.tolist(), "kshift": kshift,
                       "shift": shift.tolist(), "bias": bias.tolist()})
        assert max(abs(v) for v in y) < 1 << 61
        if final:
            out = G.saturate(G.rshift_round(np.array(y, dtype=np.int64), shift - exp) + bias)
            want.append(([int(v) for v in out], t))
    dut = GroupScaler(P)
    prng = np.random.default_rng(SEED + 4)
    got = []

    async def get(ctx):
        ctx.set(dut.o_row.ready, 1)
        for _ in want:
            (pl,) = await ctx.tick().sample(dut.o_row.payload).until(dut.o_row.valid)
            got.append(([int(v) for v in pl.data], int(pl.t)))

    # the first 200 rows back to back, the rest gapped
    _simulate(dut, prng, [(rows[:200], 0.0), (rows[200:], 0.4)], params, get)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"final row {i}: got {g}, want {w}"

"""cocotb testbench for the systolic array (``hw/grid.py``) on its Verilator build.

Run from ``tests/test_grid_rtl.py`` (and ``scripts/bench_grid.py``) through
``sim.rtl.run_cocotb``. :class:`GridTestbench` holds everything: a driver per input stream
(``w_row``: each tile's feed rows as ``sim.grid_ref.pack_tile`` gives them; ``a_row``: the
tiles' activation rows, ``last`` on each tile's final row), both with random valid gaps and
random payload bits while idle; a monitor on ``o_row`` with random back-pressure (single
cycles and bursts long enough to fill the output FIFO, so the credit check is exercised) that
also checks the stream rule (a valid row stays valid and stable until taken); and a scoreboard
that compares every output row bit-exactly (data, mode, last) with
``sim.grid_ref.expected_rows``, the golden model's group sums.

All timing is sampled in one place per cycle: inputs are driven after the falling edge, the
handshakes are read in the read-only phase before the next rising edge, which is when they
happen. ``cycle`` counts rising edges since reset; a transfer is stamped with the cycle it
completes at the end of.

Parameters (environment, set by the pytest side):

``GRID_ROWS``, ``GRID_COLS``
    ``ChipParams.rows`` / ``.cols`` of the build (``cols / 2`` PE columns).
``GRID_SEED``
    Seed of everything random; printed. Replay: ``GRID_SEED=<seed> pytest tests/test_grid_rtl.py``.
``GRID_STALL``
    Probability of an idle cycle before each input row (valid gaps).
``GRID_BACKPRESSURE``
    Probability per cycle that ``o_row.ready`` drops (default ``GRID_STALL``), for a burst of
    up to ``GRID_BURST`` more cycles (default ``2 * LATENCY``).
``GRID_N_TILES``, ``GRID_MAX_T``
    Tiles in the random test and their longest activation run (default ``3 * rows``).
``GRID_MODES``
    Modes the random tiles use, comma-separated names (default ``INT8,W4A8``).
"""

import os
import zlib
from collections import deque
from dataclasses import dataclass

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from hw.grid import (
    GridMode,
    SystolicArray,
    act_row_layout,
    out_row_layout,
    weight_row_layout,
)
from hw.params import ChipParams
from sim.grid_ref import expected_rows, pack_tile, random_tile


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Tile:
    """One weight tile [rows, ncols] and the activation rows [T, rows] that use it."""

    mode: GridMode
    w: np.ndarray
    a: np.ndarray


@dataclass
class Expected:
    tile: int
    row: int
    mode: GridMode
    data: list
    last: bool


class GridTestbench:
    """Drivers for ``w_row`` and ``a_row``, monitor on ``o_row``, golden scoreboard.

    ``stall``: probability of an idle cycle before each input row; ``backpressure``/``burst``:
    how often and how long ``o_row.ready`` is low. Statistics for the benchmarks:
    ``w_accepts``, ``a_accepts``, ``o_cycles`` (cycle of every transfer) and ``latencies``
    (output cycle minus accept cycle of each row).
    """

    def __init__(
        self,
        dut,
        rows: int,
        cols: int,
        seed: int,
        *,
        stall: float = 0.0,
        backpressure: float = 0.0,
        burst: int = 0,
        replay: str | None = None,
    ):
        self.dut = dut
        self.rows, self.pcols = rows, cols // 2
        self.latency = SystolicArray(ChipParams(rows=rows, cols=cols)).latency
        self.seed = seed
        self.replay = replay or f"GRID_SEED={seed}"  # how to reproduce, in every message
        self.rng = np.random.default_rng(seed)  # timing only; tile data has its own generator
        self.stall, self.backpressure, self.burst = stall, backpressure, burst
        self.w_layout = weight_row_layout(self.pcols)
        self.a_layout = act_row_layout(rows)
        self.o_layout = out_row_layout(rows, self.pcols)
        self.w_queue: deque[int] = deque()  # payload bits of every weight feed row
        self.a_queue: deque[int] = deque()
        self.expected: deque[Expected] = deque()
        self.accept_of_row: deque[int] = deque()  # accept cycle of rows not yet out
        self.n_tiles = 0
        self.cycle = 0
        self.w_accepts: list[int] = []
        self.a_accepts: list[int] = []
        self.o_cycles: list[int] = []
        self.latencies: list[int] = []
        self.busy_gaps: list[int] = []  # cycles with busy low while rows were in flight
        self.failure: str | None = None
        self._bp_left = 0

    # -- setup ----------------------------------------------------------------------------

    async def start(self):
        """Clock, reset (two cycles), then the drivers, the monitor and the cycle counter."""
        dut = self.dut
        dut.rst.value = 1
        dut.w_row__valid.value = 0
        dut.a_row__valid.value = 0
        dut.o_row__ready.value = 0
        dut.w_row__payload.value = 0
        dut.a_row__payload.value = 0
        Clock(dut.clk, 10, unit="ns").start()
        for _ in range(2):
            await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
        dut.rst.value = 0
        cocotb.start_soon(self._count_cycles())
        cocotb.start_soon(self._drive_weights())
        cocotb.start_soon(self._drive_activations())
        cocotb.start_soon(self._monitor_outputs())
        dut._log.info(
            f"{self.replay} rows={self.rows} pcols={self.pcols} "
            f"stall={self.stall} backpressure={self.backpressure} burst={self.burst}"
        )

    def add_tile(self, tile: Tile):
        """Queue a tile's weight rows, activation rows and expected output rows."""
        for row in pack_tile(tile.w, tile.mode):
            self.w_queue.append(self.w_layout.const({"data": row, "mode": tile.mode}).as_bits())
        T = len(tile.a)
        want = expected_rows(tile.a, tile.w, tile.mode, self.pcols)
        for t, row in enumerate(tile.a):
            last = t == T - 1
            payload = {"data": [int(v) for v in row], "last": int(last)}
            self.a_queue.append(self.a_layout.const(payload).as_bits())
            self.expected.append(
                Expected(self.n_tiles, t, tile.mode, [int(v) for v in want[t]], last)
            )
        self.n_tiles += 1

    async def run(self, tiles, what: str = "tiles"):
        """Queue ``tiles``, wait until every expected row came out, then check the array is
        idle (no spurious output, ``busy`` low)."""
        n_rows, gaps0 = 0, len(self.busy_gaps)
        for tile in tiles:
            self.add_tile(tile)
            n_rows += len(tile.a) + self.rows
        slow = 1.0 / (1.0 - max(self.stall, self.backpressure))
        limit = (
            self.cycle
            + 200
            + int(
                4 * slow * (n_rows + len(tiles) * self.latency)
                + 2 * self.burst * n_rows * self.backpressure
            )
        )
        while self.expected:
            await RisingEdge(self.dut.clk)
            self._check()
            if self.cycle > limit:
                raise AssertionError(
                    f"{what}: timeout at cycle {self.cycle}: {len(self.expected)} output rows "
                    f"missing, {len(self.w_queue)} weight and {len(self.a_queue)} activation rows "
                    f"not taken (w_row.ready={self.dut.w_row__ready.value}, "
                    f"a_row.ready={self.dut.a_row__ready.value}) {self.replay}"
                )
        for _ in range(self.latency + 8):
            await RisingEdge(self.dut.clk)
            self._check()
        gaps = self.busy_gaps[gaps0:]
        assert not gaps, (f"{what}: busy low with rows in flight at cycles {gaps[:10]} "
                          f"({len(gaps)} cycles) {self.replay}")
        await ReadOnly()
        assert int(self.dut.busy.value) == 0, f"{what}: busy after all rows {self.replay}"
        await FallingEdge(self.dut.clk)

    def _check(self):
        if self.failure:
            raise AssertionError(self.failure)

    def fail(self, message: str):
        if self.failure is None:
            self.failure = f"{message} {self.replay}"

    # -- drivers and monitor --------------------------------------------------------------

    def _idle(self) -> bool:
        return self.stall > 0 and self.rng.random() < self.stall

    async def _count_cycles(self):
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1

    async def _drive(self, queue, valid, payload, ready, width, accepts):
        """Valid/ready source: hold each row until taken; random bits on idle cycles."""
        pending = None
        while True:
            await FallingEdge(self.dut.clk)
            if pending is None and queue and not self._idle():
                pending = queue.popleft()
                payload.value = pending
                valid.value = 1
            elif pending is None:
                valid.value = 0
                noise = int.from_bytes(self.rng.bytes((width + 7) // 8), "little")
                payload.value = noise % (1 << width)
            await ReadOnly()
            if pending is not None and int(ready.value):
                accepts.append(self.cycle)
                pending = None

    def _drive_weights(self):
        d = self.dut
        return self._drive(
            self.w_queue,
            d.w_row__valid,
            d.w_row__payload,
            d.w_row__ready,
            self.w_layout.size,
            self.w_accepts,
        )

    def _drive_activations(self):
        d = self.dut
        return self._drive(
            self.a_queue,
            d.a_row__valid,
            d.a_row__payload,
            d.a_row__ready,
            self.a_layout.size,
            self.a_accepts,
        )

    def _ready(self) -> bool:
        if self._bp_left:
            self._bp_left -= 1
            return False
        if self.backpressure > 0 and self.rng.random() < self.backpressure:
            self._bp_left = int(self.rng.integers(0, self.burst + 1)) if self.burst else 0
            return False
        return True

    async def _monitor_outputs(self):
        d = self.dut
        held = None  # payload of a valid row not taken last cycle: must still be there
        n_accepted = 0
        while True:
            await FallingEdge(d.clk)
            ready = self._ready()
            d.o_row__ready.value = int(ready)
            await ReadOnly()
            while n_accepted < len(self.a_accepts):  # rows accepted so far, in order
                self.accept_of_row.append(self.a_accepts[n_accepted])
                n_accepted += 1
            # rows taken before this cycle and not yet out (this cycle's output included)
            in_flight = len(self.accept_of_row) - (self.a_accepts[-1:] == [self.cycle])
            if in_flight > 0 and not int(d.busy.value):
                self.busy_gaps.append(self.cycle)
            valid = int(d.o_row__valid.value)
            bits = d.o_row__payload.value.to_unsigned() if valid else None
            if held is not None and bits != held:
                self.fail(f"cycle {self.cycle}: o_row dropped or changed a row while not ready")
            held = bits if valid and not ready else None
            if valid and ready:
                self._score(self.o_layout.from_bits(bits))

    def _score(self, got):
        if not self.expected:
            self.fail(f"cycle {self.cycle}: spurious output row (nothing expected)")
            return
        exp = self.expected.popleft()
        accepted = self.accept_of_row.popleft() if self.accept_of_row else None
        self.o_cycles.append(self.cycle)
        if accepted is None:
            self.fail(f"cycle {self.cycle}: output row before its activation row was accepted")
            return
        self.latencies.append(self.cycle - accepted)
        if self.cycle - accepted < self.latency:
            self.fail(
                f"cycle {self.cycle}: tile {exp.tile} row {exp.row} out "
                f"{self.cycle - accepted} cycles after acceptance (< LATENCY)"
            )
        data = list(got.data)
        where = f"tile {exp.tile} ({exp.mode.name}) row {exp.row}, cycle {self.cycle}"
        if data != exp.data:
            cols = [j for j, (g, e) in enumerate(zip(data, exp.data, strict=True)) if g != e]
            self.fail(
                f"{where}: columns {cols} differ: got {[data[j] for j in cols]}, "
                f"expected {[exp.data[j] for j in cols]}"
            )
        elif GridMode(got.mode) != exp.mode:
            self.fail(f"{where}: mode {GridMode(got.mode).name}, expected {exp.mode.name}")
        elif bool(got.last) != exp.last:
            self.fail(f"{where}: last={got.last}, expected {int(exp.last)}")


# -- tile generators ---------------------------------------------------------------------------


def tile_rng(seed: int, name: str) -> np.random.Generator:
    """Tile data per test from (seed, test name): each test replays on its own."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def make_tile(rng, R, P, mode, T, extreme=False) -> Tile:
    w = random_tile(rng, R, P, mode, extreme)
    a = rng.choice([-128, 127], size=(T, R)) if extreme else rng.integers(-128, 128, (T, R))
    return Tile(GridMode(mode), w, a)


def random_length(rng, R, max_t) -> int:
    """Tile lengths around the interesting points: 1 (GEMV), < rows, rows, > rows."""
    kind = rng.integers(0, 4)
    if kind == 0:
        return 1
    if kind == 1:
        return int(rng.integers(1, max(R, 2)))
    if kind == 2:
        return R
    return int(rng.integers(R, max(max_t, R) + 1))


def extreme_tiles(R, P, T) -> list[Tile]:
    """Every sign combination of the range ends, both modes: the largest column sums
    (-128 x -128 in INT8, -128 x -8 in W4A8) and the most negative ones."""
    tiles = []
    for mode in GridMode:
        n = 2 * P if mode == GridMode.W4A8 else P
        lo, hi = (-8, 7) if mode == GridMode.W4A8 else (-128, 127)
        for a_val in (-128, 127):
            for w_val in (lo, hi):
                tiles.append(Tile(mode, np.full((R, n), w_val), np.full((T, R), a_val)))
    return tiles


class Config:
    """The test parameters from the environment."""

    def __init__(self):
        self.rows = env_int("GRID_ROWS", 16)
        self.cols = env_int("GRID_COLS", 16)
        self.pcols = self.cols // 2
        self.latency = SystolicArray(ChipParams(rows=self.rows, cols=self.cols)).latency
        self.seed = env_int("GRID_SEED", 1)
        self.stall = env_float("GRID_STALL", 0.3)
        self.backpressure = env_float("GRID_BACKPRESSURE", self.stall)
        self.burst = env_int("GRID_BURST", 2 * self.latency)
        self.n_tiles = env_int("GRID_N_TILES", 16)
        self.max_t = env_int("GRID_MAX_T", 3 * self.rows)
        names = os.environ.get("GRID_MODES", "INT8,W4A8")
        self.modes = [GridMode[m.strip().upper()] for m in names.split(",") if m.strip()]

    def testbench(self, dut, name: str, stalls: bool = True) -> GridTestbench:
        seed = (self.seed + zlib.crc32(name.encode())) % 2**32
        replay = f"GRID_SEED={self.seed}"
        if not stalls:
            return GridTestbench(dut, self.rows, self.cols, seed, replay=replay)
        return GridTestbench(
            dut,
            self.rows,
            self.cols,
            seed,
            stall=self.stall,
            backpressure=self.backpressure,
            burst=self.burst,
            replay=replay,
        )


# -- tests ----------------------------------------------------------------------------------


@cocotb.test()
async def random_tiles_mixed_modes(dut):
    """Random tiles of both modes and lengths 1..GRID_MAX_T, with valid gaps and
    back-pressure; every fourth tile extreme values."""
    cfg = Config()
    tb = cfg.testbench(dut, "random_tiles_mixed_modes")
    await tb.start()
    rng = tile_rng(cfg.seed, "random_tiles_mixed_modes")
    tiles = []
    for i in range(cfg.n_tiles):
        mode = cfg.modes[int(rng.integers(0, len(cfg.modes)))]
        T = random_length(rng, cfg.rows, cfg.max_t)
        tiles.append(make_tile(rng, cfg.rows, cfg.pcols, mode, T, extreme=i % 4 == 3))
    await tb.run(tiles, "random tiles")
    dut._log.info(
        f"{len(tb.o_cycles)} rows checked in {tb.cycle} cycles; "
        f"latency min {min(tb.latencies)} max {max(tb.latencies)}"
    )


@cocotb.test()
async def extreme_values(dut):
    """Range ends only: constant tiles of every (activation, weight) sign pair in both modes
    (all -128 x -128 / -8: the largest column sums), then random mixes of the ends."""
    cfg = Config()
    tb = cfg.testbench(dut, "extreme_values")
    await tb.start()
    rng = tile_rng(cfg.seed, "extreme_values")
    tiles = extreme_tiles(cfg.rows, cfg.pcols, T=2)
    for i in range(8):
        tiles.append(
            make_tile(
                rng,
                cfg.rows,
                cfg.pcols,
                GridMode(i % 2),
                random_length(rng, cfg.rows, cfg.max_t),
                extreme=True,
            )
        )
    await tb.run(tiles, "extreme values")


@cocotb.test()
async def gemv_tiles(dut):
    """Tiles of one activation row: first with stalls and back-pressure (values), then back
    to back with none, where the array must take one tile per ``rows`` cycles (the weight
    rate: ``cols`` weights a cycle)."""
    cfg = Config()
    rng = tile_rng(cfg.seed, "gemv_tiles")
    tb = cfg.testbench(dut, "gemv_tiles")
    await tb.start()
    await tb.run(
        [make_tile(rng, cfg.rows, cfg.pcols, GridMode(i % 2), 1) for i in range(8)],
        "GEMV with stalls",
    )
    tb.stall = tb.backpressure = 0.0
    for mode in GridMode:
        first = len(tb.a_accepts)
        await tb.run(
            [make_tile(rng, cfg.rows, cfg.pcols, mode, 1) for _ in range(8)], f"GEMV {mode.name}"
        )
        gaps = np.diff(tb.a_accepts[first:])
        assert (gaps[1:] == cfg.rows).all(), (
            f"GEMV {mode.name}: cycles between tiles {gaps.tolist()}, expected {cfg.rows} "
            f"(one tile per rows cycles) {tb.replay}"
        )


@cocotb.test()
async def back_to_back_no_bubbles(dut):
    """Tiles of T >= rows rows (T = rows included), modes alternating, no stalls and no
    back-pressure: once the first tile is loaded, an activation row is accepted every cycle."""
    cfg = Config()
    rng = tile_rng(cfg.seed, "back_to_back_no_bubbles")
    tb = cfg.testbench(dut, "back_to_back_no_bubbles", stalls=False)
    await tb.start()
    lengths = (
        [cfg.rows, cfg.rows]
        + [int(rng.integers(cfg.rows, 2 * cfg.rows + 1)) for _ in range(6)]
        + [cfg.rows]
    )
    tiles = [make_tile(rng, cfg.rows, cfg.pcols, GridMode(i % 2), T) for i, T in enumerate(lengths)]
    await tb.run(tiles, "back to back")
    gaps = np.diff(tb.a_accepts)
    bubbles = [(i, int(g)) for i, g in enumerate(gaps) if g != 1]
    assert not bubbles, (
        f"bubbles (row index, gap) after the first tile: {bubbles}; "
        f"tile lengths {lengths} {tb.replay}"
    )
    assert len(set(tb.latencies)) == 1, (
        f"latency varies with no back-pressure: {sorted(set(tb.latencies))} {tb.replay}"
    )
    dut._log.info(
        f"{len(tb.a_accepts)} rows in {tb.a_accepts[-1] - tb.a_accepts[0] + 1} "
        f"cycles; latency accept->o_row.valid {min(tb.latencies)} cycles "
        f"(LATENCY={cfg.latency})"
    )


@cocotb.test()
async def busy_while_rows_in_flight(dut):
    """``busy`` stays high while any accepted activation row has not left ``o_row`` (lone
    rows: an isolated GEMV tile, then a short tile; a row written to the empty output FIFO
    spends a cycle inside it before it is visible)."""
    cfg = Config()
    rng = tile_rng(cfg.seed, "busy_while_rows_in_flight")
    tb = cfg.testbench(dut, "busy_while_rows_in_flight", stalls=False)
    await tb.start()
    for mode, T in ((GridMode.INT8, 1), (GridMode.W4A8, 3)):
        await tb.run([make_tile(rng, cfg.rows, cfg.pcols, mode, T)], f"lone {mode.name} tile")
    assert not tb.busy_gaps, f"busy low with rows in flight at cycles {tb.busy_gaps} {tb.replay}"

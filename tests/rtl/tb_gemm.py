"""cocotb testbench for the GEMM datapath (``hw/gemm.py``: grid + group scaler) on its
Verilator build.

Run from ``tests/test_gemm_rtl.py`` through ``sim.rtl.run_cocotb``. The testbench plays the
controller, as ``tests/test_gemm.py`` does under ``amaranth.sim``: random problems built the
same way (``sw.quantize`` weights, ``sim.golden.quantize_rows`` activations) are tiled by
``sim.gemm_ref.plan_gemm`` into GemmUnit's three input streams. :class:`GemmTestbench` holds a
driver per input stream (``w_row``: the weight tiles' feed rows; ``a_row``: activation rows
with their scaler info; ``i_param``: one column-parameter entry per K-tile), each with random
valid gaps and random payload bits while idle; a monitor on ``o_row`` with random
back-pressure (single cycles and bursts long enough to fill the scaler's output FIFO and back
up the grid) that checks the stream rule (a valid row stays valid and stable until taken);
and a scoreboard that compares every output row (its defined columns and its ``t``)
bit-exactly with ``sim.golden.gemm`` / ``gemm_act``, never with a model of the testbench's own.

Timing as in ``tb_grid.py``: inputs are driven after the falling edge, the handshakes read in
the read-only phase before the next rising edge.

Parameters (environment, set by the pytest side):

``GEMM_ROWS``, ``GEMM_COLS``
    ``ChipParams.rows`` / ``.cols`` of the build.
``GEMM_SEED``
    Seed of everything random; printed. Replay: ``GEMM_SEED=<seed> pytest tests/test_gemm_rtl.py``.
``GEMM_STALL``
    Probability of an idle cycle before each input row on each stream (valid gaps).
``GEMM_BACKPRESSURE``, ``GEMM_BURST``
    Probability per cycle that ``o_row.ready`` drops (default ``GEMM_STALL``), for a burst of
    up to ``GEMM_BURST`` more cycles (default ``2 * (rows + cols / 2) + 16``).
``GEMM_N``
    Random problems per test (default 4).
``GEMM_MAX_T``
    Longest activation run T (default 20; every test also runs T = 1).
``GEMM_KS``
    The K values of the weight GEMMs, comma-separated multiples of 32 (default ``32,64,128``);
    the largest is always used once.
"""

import os
import zlib
from collections import deque
from dataclasses import dataclass

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from hw.gemm import GemmUnit, GroupScaler, scaler_in_layout
from hw.grid import GridMode
from hw.params import ChipParams
from sim import golden as G
from sim.gemm_ref import plan_gemm
from sw.quantize import QWeight, quantize_float, to_wide

F = G.NUM.frac_bits
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


# -- problems --------------------------------------------------------------------------------


@dataclass
class Problem:
    """One product tiled for the unit: ``plan`` from ``plan_gemm`` and the golden ``want``
    [T, N]; ``ncols`` output columns per N-tile."""

    label: str
    plan: tuple
    want: np.ndarray
    ncols: int


def ncols_of(params: ChipParams, mode: GridMode) -> int:
    return params.cols if mode == GridMode.W4A8 else params.cols // 2


def weight_problem(params, x8, xs, qw: QWeight, bias, label) -> Problem:
    """``sim.golden.gemm`` of A8 activations and a grouped weight (as tests/test_gemm.py)."""
    want = G.gemm(x8, xs, qw, bias)
    mode = GridMode.W4A8 if qw.bits == 4 else GridMode.INT8
    plan = plan_gemm(
        params, [(np.asarray(x8, np.int64), xs.mant, xs.exp, 1)], qw.q.astype(np.int64),
        col_scale=lambda n, k: int(qw.scale[n, k // 32]),
        col_offset=lambda n, k: int(qw.offset[n, k // 32]) if qw.offset is not None else 0,
        col_shift=lambda n: int(qw.shift[n]), bias=bias, mode=mode, a_group=xs.group)
    T, K = x8.shape
    return Problem(f"{label} T={T} K={K} N={len(bias)}", plan, want, ncols_of(params, mode))


def gemm_problem(rng, params, T, K, N, bits, offsets) -> Problem:
    """A random GEMM exactly as tests/test_gemm.py builds it: activations spread over three
    decades per group of 16, weights quantized from normals, Q4_1-like random offsets."""
    x = rng.normal(size=(T, K)) * np.repeat(10.0 ** rng.uniform(-2, 1, (T, K // 16)), 16, 1)
    x8, xs = G.quantize_rows(to_wide(x))
    qw = quantize_float(rng.normal(size=(N, K)) * 0.1, bits=bits)
    if offsets:  # Q4_1-like: scale and offset per group
        qw = QWeight(qw.q, qw.scale, (rng.integers(-3000, 3000, qw.scale.shape)).astype(np.int16),
                     qw.shift, bits)
    bias = to_wide(rng.normal(size=N))
    return weight_problem(params, x8, xs, qw, bias, f"gemm INT{bits}{'+offsets' * offsets}")


def qk_problem(rng, params, T, S, d, extreme=False) -> Problem:
    """QKᵀ as tests/test_gemm.py: K's group mantissas as column scales, shift = F - exp_k;
    d need not be a multiple of the tile. ``extreme``: every element ±127 (rows scaled by
    powers of two), so the 64-bit sums reach 2**61 and rows saturate or shift left."""
    if extreme:
        def side(n):
            return (rng.choice([-127, 127], size=(n, d))
                    << rng.choice([0, 8, 20, 30, 40], size=(n, 1))).astype(np.int64)
        q8, qs = G.quantize_rows(side(T))
        k8, ks = G.quantize_rows(side(S))
        assert (np.abs(q8) == 127).all() and (np.abs(k8) == 127).all()
    else:
        q8, qs = G.quantize_rows(to_wide(rng.normal(size=(T, d))))
        k8, ks = G.quantize_rows(to_wide(rng.normal(size=(S, d)) * 3))
    want = G.gemm_act(q8, qs, k8, ks)
    ga = qs.group
    plan = plan_gemm(
        params, [(q8.astype(np.int64), np.pad(qs.mant, ((0, 0), (0, 1))), qs.exp, 1)],
        k8.astype(np.int64),
        col_scale=lambda n, k: int(ks.mant[n, k // ga]) if k < d else 0,
        col_offset=lambda n, k: 0, col_shift=lambda n: F - int(ks.exp[n]),
        bias=np.zeros(S, np.int64), mode=GridMode.INT8, a_group=ga)
    return Problem(f"QKT{' extreme' * extreme} T={T} S={S} d={d}", plan, want,
                   ncols_of(params, GridMode.INT8))


def pv_problem(rng, params, T, S, d, shift, extreme=False) -> Problem:
    """P·V with A15 probabilities as tests/test_gemm.py: the hi plane (x >> 7) with column
    scale 128, then the lo plane (x & 127) with scale 1, into the same sums."""
    if extreme:
        pp = rng.choice([0, (1 << 20) - 1, (1 << 20) - (1 << 13), 1 << 19], size=(T, S))
        v8 = rng.choice([-127, 127], size=(S, d))
    else:
        pp = rng.integers(0, 1 << 20, size=(T, S))
        v8 = rng.integers(-127, 128, size=(S, d))
    p15, ps = G.quantize_rows(pp, bits=15)
    want = G.gemm_act(p15, ps, v8.T, None, shift=shift)
    p15 = p15.astype(np.int64)
    hi, lo = p15 >> 7, p15 & 127
    mant = np.pad(ps.mant, ((0, 0), (0, 1)))
    plan = plan_gemm(
        params, [(hi, mant, ps.exp, 128), (lo, mant, ps.exp, 1)], v8.T.astype(np.int64),
        col_scale=lambda n, k: 1, col_offset=lambda n, k: 0, col_shift=lambda n: shift,
        bias=np.zeros(d, np.int64), mode=GridMode.INT8, a_group=ps.group)
    return Problem(f"PV A15{' extreme' * extreme} T={T} S={S} d={d} shift={shift}", plan, want,
                   ncols_of(params, GridMode.INT8))


def extreme_gemm_problem(rng, params, T, K, N, bits):
    """Range ends: activations ±127 (groups 2**0..2**26 apart, so some groups are more than
    ``act_headroom`` binades below the row max: mantissa 0), weights at the INT4 / INT8 ends,
    INT16 scales and offsets at their ends, column shifts from left shifts past the INT32
    range to right shifts of 63 and more, biases at and near ±2**31.

    Returns the problem and the golden output without bias, so the caller can check the
    bias really drives golden into INT32 saturation."""
    e = rng.choice([0, 3, 12, 20, 26], size=(T, K // 16))
    x = rng.choice([-127, 127], size=(T, K)) << np.repeat(e, 16, 1)
    x8, xs = G.quantize_rows(x.astype(np.int64))
    assert (np.abs(x8) == 127).all()
    lo, hi = (-8, 7) if bits == 4 else (-128, 127)
    q = rng.choice([lo, hi], size=(N, K)).astype(np.int8)
    scale = rng.choice([-32768, 32767, 1], size=(N, K // 32)).astype(np.int16)
    offset = rng.choice([-32768, 32767, 0], size=(N, K // 32)).astype(np.int16)
    exp_max = int(xs.exp.max())
    # sh = shift - exp: mostly around where |out| lands near 2**31, plus both far ends
    shift = np.where(rng.random(N) < 0.7, rng.integers(10, 45, N) + exp_max,
                     rng.integers(-40, 90, N))
    # three columns pinned on the rounding stage's cases: a left shift past its 35-bit clamp
    # (sh <= -35 on every row), a right shift of 63 or more, and sh = 0 on the top rows
    exp_min = int(xs.exp.min())
    shift[:3] = [exp_min - 40, exp_max + 63 + int(rng.integers(0, 3)), exp_max]
    shift = shift.clip(-128, 127)
    qw = QWeight(q, scale, offset if bits == 4 else None, shift.astype(np.int64), bits)
    bias = rng.choice([I32_MIN, I32_MAX, I32_MIN + 12345, I32_MAX - 12345, -(1 << 30), 0],
                      size=N).astype(np.int64)
    p = weight_problem(params, x8, xs, qw, bias, f"gemm INT{bits} extreme")
    return p, G.gemm(x8, xs, qw, None)


# -- the testbench ---------------------------------------------------------------------------


@dataclass
class Expected:
    label: str
    t: int
    n0: int
    data: list  # the golden values of the tile's defined columns


class GemmTestbench:
    """Drivers for ``w_row``, ``a_row`` and ``i_param``, monitor on ``o_row``, golden
    scoreboard. ``stall``: probability of an idle cycle before each input row;
    ``backpressure``/``burst``: how often and how long ``o_row.ready`` is low."""

    def __init__(self, dut, params: ChipParams, seed: int, *, stall=0.0, backpressure=0.0,
                 burst=0, replay: str | None = None):
        self.dut = dut
        self.params = params
        self.seed = seed
        self.replay = replay or f"GEMM_SEED={seed}"
        self.rng = np.random.default_rng(seed)  # timing only; problems have their own
        self.stall, self.backpressure, self.burst = stall, backpressure, burst
        unit = GemmUnit(params)
        sig = unit.signature.members
        self.w_layout = sig["w_row"].signature.members["payload"].shape
        self.a_layout = sig["a_row"].signature.members["payload"].shape
        self.p_layout = sig["i_param"].signature.members["payload"].shape
        self.o_layout = sig["o_row"].signature.members["payload"].shape
        self.latency = unit.array.latency + GroupScaler.STAGES  # for timeouts only
        self.w_queue: deque[int] = deque()
        self.a_queue: deque[int] = deque()
        self.p_queue: deque[int] = deque()
        self.pending = {"w_row": False, "a_row": False, "i_param": False}
        self.stalled = {"w_row": 0, "a_row": 0, "i_param": 0}  # cycles valid and not ready
        self.hold = False  # o_row.ready held low (run(..., hold=True))
        self.expected: deque[Expected] = deque()
        self.cycle = 0
        self.n_rows = 0  # input rows queued so far (for the timeout)
        self.n_checked = 0
        self.o_cycles: list[int] = []
        self.failure: str | None = None
        self._bp_left = 0
        # coverage, seen on the scaler's input inside the unit (``scaler.i_row``)
        self.s_layout = scaler_in_layout(params)
        self.cover = {"same_t_back_to_back": 0, "gzero_rows": 0, "scaler_rows": 0}

    async def start(self):
        """Clock, reset (two cycles), then the drivers, the monitor and the cycle counter."""
        dut = self.dut
        dut.rst.value = 1
        for s in ("w_row", "a_row", "i_param"):
            getattr(dut, f"{s}__valid").value = 0
            getattr(dut, f"{s}__payload").value = 0
        dut.o_row__ready.value = 0
        Clock(dut.clk, 10, unit="ns").start()
        for _ in range(2):
            await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
        dut.rst.value = 0
        cocotb.start_soon(self._count_cycles())
        for queue, strm, layout in ((self.w_queue, "w_row", self.w_layout),
                                    (self.a_queue, "a_row", self.a_layout),
                                    (self.p_queue, "i_param", self.p_layout)):
            cocotb.start_soon(self._drive(strm, queue, getattr(dut, f"{strm}__valid"),
                                          getattr(dut, f"{strm}__payload"),
                                          getattr(dut, f"{strm}__ready"), layout.size))
        cocotb.start_soon(self._monitor_outputs())
        cocotb.start_soon(self._cover_scaler())
        p = self.params
        dut._log.info(f"{self.replay} rows={p.rows} cols={p.cols} stall={self.stall} "
                      f"backpressure={self.backpressure} burst={self.burst}")

    def add_problem(self, prob: Problem):
        """Queue a problem's weight rows, activation rows and tile parameters, and the golden
        rows the unit must output (one per t per N-tile, in that order)."""
        tiles, acts, prms, mode = prob.plan
        for tile in tiles:
            for row in tile:
                self.w_queue.append(self.w_layout.const({"data": row, "mode": mode}).as_bits())
        for a in acts:
            self.a_queue.append(self.a_layout.const(a).as_bits())
        for pr in prms:
            self.p_queue.append(self.p_layout.const(pr).as_bits())
        self.n_rows += len(acts) + sum(len(t) for t in tiles)
        T, N = prob.want.shape
        for n0 in range(0, N, prob.ncols):
            for t in range(T):
                w = min(prob.ncols, N - n0)
                self.expected.append(Expected(prob.label, t, n0,
                                              [int(v) for v in prob.want[t, n0:n0 + w]]))

    async def run(self, problems, what: str, hold: bool = False) -> bool:
        """Queue ``problems`` back to back, wait for every expected row, then check that
        every input was taken and nothing more comes out. ``hold``: keep ``o_row.ready`` low
        until the whole unit has backed up (``a_row`` refused for ``3 * latency`` cycles in a
        row: scaler output FIFO, scaler credit, grid FIFO and side FIFO full; returns whether
        it did) or the time budget ran out, then let go."""
        start, rows0 = self.cycle, self.n_rows
        for prob in problems:
            self.add_problem(prob)
        n_rows = self.n_rows - rows0
        slow = 1.0 / (1.0 - max(self.stall, self.backpressure))
        budget = 200 + int(4 * slow * (n_rows + len(problems) * self.latency)
                           + 2 * self.burst * n_rows * self.backpressure)
        limit = start + budget
        self.hold = hold
        backed_up = None
        while self.expected:
            await RisingEdge(self.dut.clk)
            self._check()
            if self.hold and (self.stalled["a_row"] >= 3 * self.latency or self.cycle > limit):
                self.hold = False
                backed_up = self.cycle if self.stalled["a_row"] >= 3 * self.latency else None
                limit = self.cycle + budget
            if self.cycle > limit:
                raise AssertionError(
                    f"{what}: timeout at cycle {self.cycle}: {len(self.expected)} output rows "
                    f"missing (next: {self.expected[0].label} t={self.expected[0].t} "
                    f"n0={self.expected[0].n0}); not taken: {len(self.w_queue)} weight, "
                    f"{len(self.a_queue)} activation, {len(self.p_queue)} parameter rows "
                    f"{self.replay}")
        for _ in range(self.latency + 16):
            await RisingEdge(self.dut.clk)
            self._check()
        left = [k for k, q in (("w_row", self.w_queue), ("a_row", self.a_queue),
                               ("i_param", self.p_queue)) if q or self.pending[k]]
        assert not left, f"{what}: inputs not taken after the last output: {left} {self.replay}"
        held = ""
        if hold:
            held = (f", o_row held until the unit backed up at cycle {backed_up - start}"
                    if backed_up is not None else ", o_row held (the unit never backed up)")
        self.dut._log.info(f"{what}: {len(problems)} problems, {n_rows} input rows, "
                           f"{self.cycle - start} cycles{held}, {self.n_checked} rows checked "
                           f"so far, coverage {self.cover}: "
                           + "; ".join(p.label for p in problems))
        return backed_up is not None

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

    async def _drive(self, key, queue, valid, payload, ready, width):
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
            self.pending[key] = pending is not None
            await ReadOnly()
            if pending is not None and int(ready.value):
                pending = None
                self.pending[key] = False
                self.stalled[key] = 0
            elif pending is not None:
                self.stalled[key] += 1

    async def _cover_scaler(self):
        """Count the scaler's hard cases: a row accumulating onto the row it directly follows
        (same t, not first: the accumulator memory's transparent read) and zero mantissas."""
        sc = self.dut.scaler
        prev_t = None
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            if int(sc.i_row__valid.value) and int(sc.i_row__ready.value):
                info = self.s_layout.from_bits(sc.i_row__payload.value.to_unsigned()).info
                self.cover["scaler_rows"] += 1
                self.cover["gzero_rows"] += int(info.gzero)
                if prev_t == int(info.t) and not int(info.first):
                    self.cover["same_t_back_to_back"] += 1
                prev_t = int(info.t)
            else:
                prev_t = None

    def _ready(self) -> bool:
        if self.hold:
            return False
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
        while True:
            await FallingEdge(d.clk)
            ready = self._ready()
            d.o_row__ready.value = int(ready)
            await ReadOnly()
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
        self.o_cycles.append(self.cycle)
        self.n_checked += 1
        data = [int(v) for v in got.data][: len(exp.data)]
        where = f"{exp.label}: row t={exp.t} columns {exp.n0}+, cycle {self.cycle}"
        if int(got.t) != exp.t:
            self.fail(f"{where}: t={int(got.t)}, expected {exp.t}")
        elif data != exp.data:
            cols = [j for j, (g, e) in enumerate(zip(data, exp.data, strict=True)) if g != e]
            self.fail(f"{where}: columns {[exp.n0 + j for j in cols]} differ: got "
                      f"{[data[j] for j in cols]}, golden {[exp.data[j] for j in cols]}")


# -- configuration -------------------------------------------------------------------------


def problem_rng(seed: int, name: str) -> np.random.Generator:
    """Problem data per test from (seed, test name): each test replays on its own."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


class Config:
    """The test parameters from the environment."""

    def __init__(self):
        self.rows = env_int("GEMM_ROWS", 16)
        self.cols = env_int("GEMM_COLS", 16)
        self.params = ChipParams(rows=self.rows, cols=self.cols)
        self.seed = env_int("GEMM_SEED", 1)
        self.stall = env_float("GEMM_STALL", 0.3)
        self.backpressure = env_float("GEMM_BACKPRESSURE", self.stall)
        self.burst = env_int("GEMM_BURST", 2 * (self.rows + self.cols // 2) + 16)
        self.n = env_int("GEMM_N", 4)
        self.max_t = env_int("GEMM_MAX_T", 20)
        self.ks = [int(k) for k in os.environ.get("GEMM_KS", "32,64,128").split(",") if k]

    def testbench(self, dut, name: str, stalls: bool = True) -> GemmTestbench:
        seed = (self.seed + zlib.crc32(name.encode())) % 2**32
        replay = f"GEMM_SEED={self.seed} ({name})"
        if not stalls:
            return GemmTestbench(dut, self.params, seed, replay=replay)
        return GemmTestbench(dut, self.params, seed, stall=self.stall,
                             backpressure=self.backpressure, burst=self.burst, replay=replay)

    def lengths(self, rng, n: int) -> list[int]:
        """n activation run lengths: 1 (GEMV) and max_t first, then random in 1..max_t."""
        fixed = [1, self.max_t][:n]
        return fixed + [int(v) for v in rng.integers(1, self.max_t + 1, n - len(fixed))]

    def n_cols(self, rng, mode: GridMode) -> int:
        """An output width from one column to 2.5 N-tiles (partial last tile)."""
        nc = ncols_of(self.params, mode)
        return int(rng.integers(1, 2 * nc + nc // 2 + 1))


# -- tests ----------------------------------------------------------------------------------


async def run_weight_gemms(dut, name, bits, offsets):
    cfg = Config()
    rng = problem_rng(cfg.seed, name)
    tb = cfg.testbench(dut, name)
    await tb.start()
    mode = GridMode.W4A8 if bits == 4 else GridMode.INT8
    probs = []
    for i, T in enumerate(cfg.lengths(rng, cfg.n)):
        K = max(cfg.ks) if i < 2 else int(rng.choice(cfg.ks))
        probs.append(gemm_problem(rng, cfg.params, T, K, cfg.n_cols(rng, mode), bits, offsets))
    await tb.run(probs, name)


@cocotb.test()
async def gemm_w4a8_offsets(dut):
    """INT4 weights with Q4_1-like offsets vs ``golden.gemm``: T = 1 and 20 on the largest K
    (several activation and weight groups), then random T, K, N; problems back to back."""
    await run_weight_gemms(dut, "gemm_w4a8_offsets", 4, True)


@cocotb.test()
async def gemm_int8(dut):
    """INT8 weights (no offsets) vs ``golden.gemm``, as above."""
    await run_weight_gemms(dut, "gemm_int8", 8, False)


@cocotb.test()
async def gemv_both_modes(dut):
    """GEMV (T = 1) in both modes. First wide outputs (several N-tiles) with ``o_row`` held
    until the unit backs up: on release, rows of the same t leave the grid's FIFO and reach
    the scaler back to back, accumulating through the accumulator memory's transparent read
    (checked to happen). Then random stalls and long back-pressure bursts, then no stalls."""
    cfg = Config()
    name = "gemv_both_modes"
    rng = problem_rng(cfg.seed, name)
    tb = cfg.testbench(dut, name, stalls=False)
    await tb.start()

    def probs(wide=False):
        out = []
        for i in range(4):
            mode = GridMode(i % 2)
            N = 4 * ncols_of(cfg.params, mode) - 1 if wide else cfg.n_cols(rng, mode)
            out.append(gemm_problem(rng, cfg.params, 1, max(cfg.ks), N, 8 if i % 2 == 0 else 4,
                                    i % 4 == 1))
        return out

    assert await tb.run(probs(wide=True), "GEMV backed up", hold=True), (
        f"the unit never backed up with o_row held low {tb.replay}")
    assert tb.cover["same_t_back_to_back"] > 0, (
        f"no two rows of the same t reached the scaler back to back {tb.replay}")
    tb.stall, tb.backpressure, tb.burst = cfg.stall, cfg.backpressure, 4 * cfg.burst
    await tb.run(probs(), "GEMV with stalls")
    tb.stall = tb.backpressure = 0.0
    await tb.run(probs(), "GEMV without stalls")


@cocotb.test()
async def qk_partial_tile(dut):
    """QKᵀ vs ``golden.gemm_act``: K's group mantissas as column scales; d (<= 128, one head)
    not a multiple of the tile, ending in a partial activation group (d = 40, one d below
    the tile height, then random)."""
    cfg = Config()
    name = "qk_partial_tile"
    rng = problem_rng(cfg.seed, name)
    tb = cfg.testbench(dut, name)
    await tb.start()
    R = cfg.rows
    ds = [d for d in range(1, 129) if d % R and d % 16] or [40]
    probs = []
    for i, T in enumerate(cfg.lengths(rng, cfg.n)):
        short = [d for d in ds if d < R] or ds  # one K-tile: its rows are first and final
        d = 40 if i == 0 else int(rng.choice(short if i == 1 else ds))
        probs.append(qk_problem(rng, cfg.params, T, cfg.n_cols(rng, GridMode.INT8), d))
    await tb.run(probs, name)


@cocotb.test()
async def pv_a15_two_passes(dut):
    """P·V with A15 probabilities as two INT8 passes (hi plane, column scale 128, then lo) vs
    ``golden.gemm_act``; S (the contraction) and d random, S not a multiple of the tile."""
    cfg = Config()
    name = "pv_a15_two_passes"
    rng = problem_rng(cfg.seed, name)
    tb = cfg.testbench(dut, name)
    await tb.start()
    probs = []
    for i, T in enumerate(cfg.lengths(rng, cfg.n)):
        S = 21 if i == 0 else int(rng.integers(1, 49))
        shift = 9 if i == 0 else int(rng.integers(0, 24))
        probs.append(pv_problem(rng, cfg.params, T, S, cfg.n_cols(rng, GridMode.INT8), shift))
    await tb.run(probs, name)


@cocotb.test()
async def extreme_values(dut):
    """Range ends: W4A8 (activations ±127, weights -8 / 7, scales and offsets at the INT16
    ends) and INT8 (weights -128 / 127), biases at and near ±2**31, column shifts from left
    shifts beyond INT32 to right shifts >= 63; golden must saturate (checked, including cases
    where only the bias takes it out of range). Then QKᵀ with every element ±127 at K = 128
    (the 64-bit sums near 2**61) and P·V with probabilities at the A15 top."""
    cfg = Config()
    name = "extreme_values"
    rng = problem_rng(cfg.seed, name)
    tb = cfg.testbench(dut, name)
    await tb.start()
    K = max(cfg.ks)
    probs = []
    for bits in (4, 8):
        for T in (1, int(rng.integers(2, cfg.max_t + 1))):
            mode = GridMode.W4A8 if bits == 4 else GridMode.INT8
            N = 2 * ncols_of(cfg.params, mode) + 1
            for _ in range(50):  # redraw until golden really saturates through the bias
                p, nobias = extreme_gemm_problem(rng, cfg.params, T, K, N, bits)
                by_bias = np.isin(p.want, (I32_MIN, I32_MAX)) & ~np.isin(nobias, (I32_MIN,
                                                                                   I32_MAX))
                if (p.want == I32_MAX).any() and (p.want == I32_MIN).any() and by_bias.any():
                    break
            else:
                raise AssertionError(f"{p.label}: golden never saturates {tb.replay}")
            probs.append(p)
    d = min(128, max(cfg.ks))
    for T in (1, int(rng.integers(2, cfg.max_t + 1))):
        probs.append(qk_problem(rng, cfg.params, T, cfg.n_cols(rng, GridMode.INT8), d, True))
        probs.append(qk_problem(rng, cfg.params, T, cfg.n_cols(rng, GridMode.INT8),
                                d - cfg.rows // 2 - 1 if cfg.rows > 1 else d - 1, True))
    sat_qk = [p for p in probs if p.label.startswith("QKT")]
    assert any(np.isin(p.want, (I32_MIN, I32_MAX)).any() for p in sat_qk), "QK never saturates"
    for T in (1, int(rng.integers(2, cfg.max_t + 1))):
        probs.append(pv_problem(rng, cfg.params, T, int(rng.integers(30, 49)),
                                cfg.n_cols(rng, GridMode.INT8), int(rng.integers(-4, 40)), True))
    await tb.run(probs, name)
    assert tb.cover["gzero_rows"] > 0, f"no zero activation mantissa reached the scaler {tb.replay}"


@cocotb.test()
async def mixed_stream(dut):
    """Problems of every kind (W4A8 with and without offsets, INT8, QKᵀ, P·V) in random
    order, back to back: the modes and the accumulator rows change between tiles."""
    cfg = Config()
    name = "mixed_stream"
    rng = problem_rng(cfg.seed, name)
    tb = cfg.testbench(dut, name)
    await tb.start()
    R = cfg.rows
    probs = []
    for T in cfg.lengths(rng, 2 * cfg.n):
        kind = int(rng.integers(0, 5))
        if kind < 3:
            bits = 8 if kind == 2 else 4
            mode = GridMode.W4A8 if bits == 4 else GridMode.INT8
            probs.append(gemm_problem(rng, cfg.params, T, int(rng.choice(cfg.ks)),
                                      cfg.n_cols(rng, mode), bits, kind == 0))
        elif kind == 3:
            probs.append(qk_problem(rng, cfg.params, T, cfg.n_cols(rng, GridMode.INT8),
                                    int(rng.integers(R + 1, min(128, max(cfg.ks)) + 1))))
        else:
            probs.append(pv_problem(rng, cfg.params, T, int(rng.integers(1, 49)),
                                    cfg.n_cols(rng, GridMode.INT8), int(rng.integers(0, 24))))
    half = len(probs) // 2
    await tb.run(probs[:half], f"{name}, o_row held until backed up", hold=True)
    await tb.run(probs[half:], name)

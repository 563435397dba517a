"""Cycle-exact timing model of the chip (``hw/chip.py``): how many cycles a micro-op program
takes, and when each micro-op was issued, started and finished, without simulating cycles.

:func:`predict` returns a :class:`Timing`: the job's ``Counter.CYCLES`` as the chip counts it
(from ``start`` to ``done``), the other timed counters (``BUSY_*``, ``STALL_WAIT``,
``STALL_QUEUE``, ``STALL_MEM``; ``sim.isa_sim.TIMED_COUNTERS``) and per micro-op its
``issue`` cycle (the sequencer pushed it into its unit's queue), ``start`` (the unit took
it) and ``end`` (the unit's ``done`` pulse). Cycle 0 is the cycle the chip sees ``start``;
``CYCLES`` counts cycles 1 .. the last cycle of ``running``.

It models the chip at micro-op granularity, event by event, in program order:

- **boot**: ``prog_len * ceil(128 / bus_bits)`` bus reads at one per ``max(1, interval)``
  cycles from cycle 2, the first fetch ``offchip_latency + 2`` cycles after the last;
- **sequencer**: ``FETCH`` + ``EXEC`` (two cycles per micro-op); a queued op is pushed in the
  first ``EXEC`` cycle its unit's queue has room (``SyncFIFOBuffered(queue_depth)``: an entry
  reaches the output register one cycle after it is written or in the cycle the one before
  leaves, and is readable the cycle after); ``WAIT unit, n`` ends in the first cycle after the
  ``done`` pulse that leaves ``n`` ops of ``unit`` unfinished; ``HALT`` drains every unit;
- **GEMM** (closed form, :meth:`Model.gemm_cycles`): ``GemmEngine.SETUP`` cycles, the first
  weight tile through its ``MemReader`` (``1 + Pipe.FIFO_LATENCY`` cycles) into the grid,
  then one K-tile per ``max(rows, t_len + 1)`` cycles (the weight tile's ``rows`` rows, or
  the tile's ``t_len`` activation rows plus the group scaler's one-cycle gap while it pairs
  the next tile's two parameter words), ``SystolicArray.latency`` + its output FIFO, and the
  ``GroupScaler.STAGES`` pipeline (final rows: to the ACC write);
- **KV_APPEND** (closed form): the ``KvEngine`` FSM, ``2 + rows + 1`` cycles per ACT word plus
  a scale byte per activation group and an exponent byte per token;
- **LOAD** (closed form per command): requests at one per ``max(1, interval)`` cycles, the
  front end's cycle between commands, responses ``offchip_latency`` later, the response FIFO
  (2 cycles) and the buffer write; commands overlap as the DMA's front end runs ahead
  (``hw/dma.py``);
- **STORE**: a per-cycle mirror of the ``StoreEngine`` control (request credits, the chip's
  ``MemReader`` on the buffer port, response FIFO, word splitting, the write channel's
  ``interval``), run lazily only while a STORE is in flight (stores are results: small);
- **VEC** (:class:`VecModel`, :func:`vec_cycles`): the ``VecEngine`` FSM's states before the
  sweep (``EFF`` .. ``EPS``; ``LOADV``: two KV reads per ``PC`` keys with ``vfold``), then each
  sweep (two for ``QUANT`` ``A15`` / ``A8X2``, ``SWEEP2`` between) as max-plus recurrences over
  its items: the reader's pieces through its ``MemReader``, the beat assembler's register, the
  fn's component (``Pipe`` latencies and credits; the row components' passes, row FIFOs and
  serial units, ``LAYERNORM`` / ``RMSNORM`` parameters through their own reader and register;
  the vfold stage; A8X2's residual and second quantizer), the writer's pieces; per distinct op
  (its fields, ``pos`` where the op depends on it), memoized. :func:`measure_vec` runs
  ``VecEngine`` alone in ``amaranth.sim``: the oracle the tests compare the model with.

Every latency comes from the hw classes (``SystolicArray.latency``, ``GroupScaler.STAGES`` /
``NONFINAL_STAGES`` / ``fifo_depth``, ``Pipe.FIFO_LATENCY`` / ``depth_for``,
``MemReader.depth``, ``LoadEngine.resp_depth``, ``StoreEngine.resp_depth``, the vector
components' ``*_STAGES``, row FIFO depths and latencies (``ROW_FIFO_LATENCY``,
``PAR_FIFO_LATENCY``) and serial units' ``LATENCY``) or from their FSMs' state
sequences (named below, with the states they count); the tests (``tests/test_timing.py``)
compare every figure with the Verilator chip.

Predictability rules
--------------------
Units share buffer write ports (ACC: GEMM > VEC > LOAD; ACT: VEC > LOAD; KV: KV_APPEND >
LOAD): a lower-priority write waits while a higher one writes, which this model does not
follow cycle by cycle. A program must therefore keep these apart in time (enforced with
``WAIT``; :func:`predict` checks them on its own schedule and raises :class:`RuleViolation`
naming both ops, never returning a wrong number):

1. no ``LOAD`` into ACC while a ``GEMM`` with ``final`` writes its outputs or a ``VEC``
   writing ACC runs;
2. no ``LOAD`` into ACT while a ``VEC`` writing ACT (``QUANT``, ``COPY`` of ACT) runs;
3. no ``LOAD`` into KV while a ``KV_APPEND`` runs;
4. no ``VEC`` writing ACC while a ``GEMM`` with ``final`` writes its outputs.

A LOAD's window is from its first buffer write to its last; a final GEMM's from its first
output write to its ``done``; a VEC's and a KV_APPEND's from start to end. Also: the memory
must be deterministic (no jitter: ``Job.jitter = 0``), ``offchip_latency + 3`` must stay
below ``LoadEngine.resp_depth`` (it does for the default), and the program must run without
error (check it with ``sim.isa_sim.IsaSim``; :func:`predict` raises ``ValueError`` for the
sequencer's own errors and does not model unit errors).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from hw.bus import MemReader
from hw.chip import QUEUED_UNITS
from hw.dma import LoadEngine, StoreEngine
from hw.gemm import GroupScaler
from hw.gemm_engine import GemmEngine
from hw.grid import SystolicArray
from hw.isa import (
    INSTR_BITS,
    OP_BITS,
    OP_UNIT,
    Buf,
    Counter,
    Dyn,
    Op,
    PosReg,
    QuantMode,
    Unit,
    VecBuf,
    VecFn,
    WSrc,
    buffer_depth,
    bus_bits,
    bus_words_per,
    decode,
)
from hw.kv import KvEngine
from hw.params import ChipParams
from hw.vector.common import Pipe

__all__ = ["predict", "Timing", "OpTiming", "RuleViolation", "Model", "vec_cycles",
           "MODELED_COUNTERS"]

#: Timed counters :func:`predict` models (``STALL_MEM`` only when no LOAD stalls while a STORE
#: stalls; otherwise it is left out of :attr:`Timing.counters`).
MODELED_COUNTERS = (Counter.CYCLES, Counter.BUSY_LOAD, Counter.BUSY_STORE, Counter.BUSY_GEMM,
                    Counter.BUSY_VEC, Counter.BUSY_KV, Counter.STALL_WAIT, Counter.STALL_QUEUE,
                    Counter.STALL_MEM)

# -- FSM state counts (hw/chip.py, hw/gemm_engine.py, hw/kv.py): named after their states -----
#: Sequencer: ``IDLE`` (start seen) -> ``BOOTCHK`` -> ``BOOT``: the first boot request in 2.
_BOOT_FIRST_REQUEST = 2
#: ``BOOT`` sees the last micro-op complete one cycle after its last word, then ``PREFETCH``
#: (micro-op 0 read into the decode register), ``FETCH`` next.
_BOOT_TO_FETCH = 3
#: GEMM: ``IDLE`` (accept) -> ... -> the start pulse: ``GemmEngine.SETUP`` cycles.
_GEMM_SETUP = GemmEngine.SETUP
#: GEMM: the tile's two parameter words are paired one per cycle (``have`` toggles), so the
#: next tile's entry is valid 2 cycles after the last row of a tile enters the scaler.
_PARAM_GAP = 1
#: KV: ``IDLE`` (accept) -> ... -> the first ``TOKEN``: ``KvEngine.SETUP`` cycles.
_KV_SETUP = KvEngine.SETUP
#: KV: per token ``TOKEN``; per ACT word ``READ``, ``LATCH``, ``rows`` x ``ELEM``, ``NEXT``
#: (+ ``SCALE`` on a group's first word, + ``EXP`` on word 0).
_KV_TOKEN = 1
_KV_WORD = 3
#: KV: the activation group of a scale byte (``hw/kv.py`` tests ``(w << lr) & 15``).
_KV_SCALE_GROUP = 16
#: DMA: a command waits ``CHECK`` cycles in the check register, is accepted in the front
#: end's ``IDLE``, its first request loads into the request register in ``ISSUE`` the next
#: cycle (offered the cycle after).
_DMA_CHECK = LoadEngine.CHECK
_DMA_ISSUE = 1


class RuleViolation(ValueError):
    """The program breaks a predictability rule (module docstring): its timing depends on
    write-port arbitration this model does not follow."""


@dataclass
class OpTiming:
    """One micro-op of the schedule: ``pc``, the decoded op, its unit (``None`` for the
    sequencer's own ops), and cycles: ``issue`` (the sequencer's ``EXEC`` cycle that
    executed or pushed it), ``start`` (its unit accepted it), ``end`` (its ``done`` pulse)."""

    pc: int
    op: Op
    unit: Unit | None
    issue: int
    start: int | None = None
    end: int | None = None
    fields: dict = field(default_factory=dict, repr=False)
    pos: int = 0


@dataclass
class Timing:
    cycles: int
    counters: dict          #: Counter -> int, the modelled timed counters
    ops: list               #: OpTiming per executed micro-op, in program order

    def schedule(self, limit: int | None = None) -> str:
        """The schedule as text: one line per micro-op."""
        lines = [f"{'pc':>5} {'op':<10} {'unit':<6} {'issue':>9} {'start':>9} {'end':>9}"]
        for o in self.ops[:limit]:
            lines.append(f"{o.pc:>5} {o.op.name:<10} {o.unit.name if o.unit is not None else '':<6}"
                         f" {o.issue:>9} {'' if o.start is None else o.start:>9}"
                         f" {'' if o.end is None else o.end:>9}")
        return "\n".join(lines)


def _constants_of(component):
    """A hw component built only to read its constants (never elaborated: no warning)."""
    component._MustUse__silence = True
    return component


def _union_len(intervals) -> int:
    """Cycles covered by closed intervals ``[a, b]``."""
    total, cur_a, cur_b = 0, None, None
    for a, b in sorted(intervals):
        if cur_b is None or a > cur_b + 1:
            if cur_b is not None:
                total += cur_b - cur_a + 1
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a + 1
    return total


# -- unit models -------------------------------------------------------------------------------


class _Unit:
    """Per-unit bookkeeping: each command ``c`` has ``qr`` (readable at the queue head),
    ``start`` (accepted), ``end`` (done pulse), the busy interval and a write window."""

    def __init__(self, model: Model, unit: Unit):
        self.model = model
        self.unit = unit
        self.cmds: list[OpTiming] = []
        self.busy: list[tuple[int, int]] = []
        self.windows: list[tuple[int, int]] = []   # write window per command (rules)

    def start_of(self, c: int) -> int:
        return self.cmds[c].start

    def take_of(self, c: int) -> int:
        """The cycle the unit took command ``c`` from its queue (``r_en``)."""
        return self.start_of(c)

    def end_of(self, c: int) -> int:
        return self.cmds[c].end


class _SerialUnit(_Unit):
    """A unit that takes its next command in ``IDLE``, the cycle after the previous ``done``,
    and whose op takes a duration given by ``duration(op) -> (cycles, window)``: GEMM, KV,
    VEC (``busy = running | cmd.valid``: from acceptance to done)."""

    def __init__(self, model, unit, duration):
        super().__init__(model, unit)
        self.duration = duration

    def submit(self, o: OpTiming, qr: int) -> None:
        prev = self.cmds[-1].end + 1 if self.cmds else 0
        o.start = a = max(qr, prev)
        dur, win = self.duration(o)
        o.end = a + dur
        self.cmds.append(o)
        self.busy.append((a, o.end))
        self.windows.append((a + win[0], a + win[1]) if win is not None else None)


class _LoadUnit(_Unit):
    """``LoadEngine`` (``hw/dma.py``) in closed form per command (module docstring)."""

    def __init__(self, model):
        super().__init__(model, Unit.LOAD)
        self.front_idle = 0     # first cycle the front end is back in IDLE
        self.x_last = None      # memory accept of the previous command's last request
        self.p_last = None      # the previous command's last response pop
        self.job_pops = []      # cycle each command's job left the jobs FIFO
        self.stalls = []        # (active_lo, active_hi, first_pop, step, n) per command

    def submit(self, o: OpTiming, qr: int) -> None:
        m = self.model
        f = o.fields
        I, L = m.I, m.L
        n = f["words"] * m.bus_words[Buf(f["buf"])]
        c = len(self.cmds)
        # taken into the check register once it is empty (the previous command left it at
        # its acceptance), accepted from there in IDLE when the 2-deep jobs FIFO has room
        # (the job two back has left it)
        s = max(qr, self.cmds[-1].start + 1 if self.cmds else 0)
        o.take = s
        a = max(s + _DMA_CHECK, self.front_idle, self.job_pops[c - 2] + 1 if c >= 2 else 0)
        # the back end takes the job once the previous command's last word has left
        pj = max(a + 1, self.p_last + 1 if self.p_last is not None else 0)
        r0 = max(a + _DMA_ISSUE, self.x_last if self.x_last is not None else 0)
        x0 = max(r0 + 1, m.rd_free)
        x_end = x0 + (n - 1) * I
        r_last = x0 + (n - 2) * I if n >= 2 else r0
        self.front_idle = r_last + 1
        m.rd_free = x_end + I
        self.x_last = x_end
        # response valid L cycles after acceptance, readable 2 later from the response FIFO
        p0 = x0 + L + Pipe.FIFO_LATENCY
        p_end = x_end + L + Pipe.FIFO_LATENCY
        assert p0 >= pj + 1, "LOAD: response before its job is active (model assumption broken)"
        self.p_last = p_end
        self.job_pops.append(pj)
        o.start, o.end = a, p_end + 2   # buffer write the cycle after the pop; done registered
        self.cmds.append(o)
        self.busy.append((s + 1, p_end + 1))   # from the check register on
        self.windows.append((p0 + 1, p_end + 1))
        self.stalls.append((pj + 1, p_end, p0, I, n))

    def take_of(self, c: int) -> int:
        return self.cmds[c].take

    def stalling(self, t: int) -> bool:
        """Whether ``stall_mem`` of the LOAD engine is high in cycle ``t``."""
        for lo, hi, p0, step, n in self.stalls:
            if lo <= t <= hi:
                return not (t >= p0 and (t - p0) % step == 0 and (t - p0) // step < n)
        return False

    def stall_count(self) -> int:
        return sum(hi - lo + 1 - n for lo, hi, _, _, n in self.stalls)


class _Fifo:
    """Occupancy of an ``amaranth.lib.fifo`` FIFO (``buffered``: SyncFIFOBuffered), one cycle
    at a time: :meth:`step` takes this cycle's ``w_en`` / ``r_en`` (after reading
    :attr:`w_rdy` / :attr:`r_rdy`)."""

    def __init__(self, depth: int, buffered: bool):
        self.depth, self.buffered = depth, buffered
        self.inner = 0
        self.out = 0

    @property
    def level(self):
        return self.inner + self.out

    @property
    def w_rdy(self):
        return self.inner != self.depth - 1 if self.buffered else self.inner != self.depth

    @property
    def r_rdy(self):
        return bool(self.out) if self.buffered else self.inner != 0

    def step(self, w_en, r_en):
        w = w_en and self.w_rdy
        if not self.buffered:
            self.inner += int(w) - int(r_en and self.r_rdy)
            return
        inner_read = self.inner != 0 and (not self.out or r_en)
        self.inner += int(w) - int(inner_read)
        if inner_read:
            self.out = 1
        elif r_en:
            self.out = 0

    def empty(self):
        return self.inner == 0 and self.out == 0


class _StoreUnit(_Unit):
    """``StoreEngine`` (``hw/dma.py``) with the chip's store ``MemReader``, mirrored cycle by
    cycle while a STORE is in flight (lazily: only up to the event asked for)."""

    def __init__(self, model):
        super().__init__(model, Unit.STORE)
        p = model.p
        se = _constants_of(StoreEngine(p))
        self.resp_depth = se.resp_depth
        self.check = se.CHECK
        self.credit_pop = se.CREDIT_POP
        self.rd_depth = _constants_of(MemReader(16, 8)).depth
        self.t = 0
        self.front = "IDLE"
        self.iss_left = 0
        self.req_valid = False
        self.reserved = 0
        self.jobs = []              # (index, written cycle)
        self.srd_inflight = False
        self.srd_q = _Fifo(self.rd_depth, True)
        self.resp = _Fifo(self.resp_depth, False)
        self.active = False
        self.j_left = 0
        self.j_bpw = 1
        self.j_cmd = None
        self.wr_valid = False
        self.w_k = 0
        self.w_last_k = 0
        self.w_last = False
        self.w_cmd = None
        self.wr_wait = 0
        self.next_accept = 0        # index of the next command to accept
        self.p1 = None              # the command in the check register (index, taken cycle)
        self.next_take = 0          # index of the next command to take from the queue
        self.stall_cycles = []
        self.busy_cycles = 0
        self.busy_first = None

    def submit(self, o: OpTiming, qr: int) -> None:
        o.start = None
        o.end = None
        o.take = None
        o._qr = qr
        self.cmds.append(o)

    def _idle(self):
        return (self.p1 is None and self.front == "IDLE" and not self.jobs and not self.active
                and not self.wr_valid and self.reserved == 0 and not self.srd_inflight
                and self.srd_q.empty() and self.resp.empty())

    def _step(self):
        """One cycle of the store engine, at cycle ``self.t``."""
        t, m = self.t, self.model
        I = m.I
        # fast-forward over idle stretches to the next command's arrival
        if self._idle():
            nxt = self.cmds[self.next_take]._qr if self.next_take < len(self.cmds) else None
            if nxt is not None and nxt > t:
                self.wr_wait = max(0, self.wr_wait - (nxt - t))
                self.t = t = nxt
        srd_i_ready = self.srd_q.level + int(self.srd_inflight) < self.rd_depth
        srd_take = self.req_valid and srd_i_ready
        wr_ready = self.wr_wait == 0
        wr_take = self.wr_valid and wr_ready
        word_done = wr_take and self.w_k == self.w_last_k
        pop = self.active and self.resp.r_rdy and (not self.wr_valid or word_done)
        jobs_rdy = any(w < t for _, w in self.jobs)
        job_pop = (not self.active) and jobs_rdy
        accept = False
        req_load = False
        take = (self.p1 is None and self.next_take < len(self.cmds)
                and self.cmds[self.next_take]._qr <= t)
        if self.front == "IDLE":
            if (self.p1 is not None and self.p1[1] + self.check <= t and len(self.jobs) < 2):
                accept = True
        else:
            credit = self.reserved < self.resp_depth or (self.credit_pop and pop)
            req_free = (not self.req_valid) or srd_i_ready
            req_load = req_free and credit
        busy = (self.p1 is not None or self.front != "IDLE" or jobs_rdy or self.active
                or self.wr_valid or self.reserved != 0)
        if busy:
            self.busy_cycles += 1
        if self.wr_valid and not wr_ready:
            self.stall_cycles.append(t)
        # -- next state --
        self.reserved += int(req_load) - int(pop)
        if self.req_valid and srd_i_ready:
            self.req_valid = False
        if req_load:
            self.req_valid = True
        q_r_rdy = self.srd_q.r_rdy
        resp_w_rdy = self.resp.w_rdy
        self.srd_q.step(self.srd_inflight, resp_w_rdy)
        self.srd_inflight = srd_take
        self.resp.step(q_r_rdy, pop)
        if word_done and self.w_last:
            self.w_cmd.end = t + 1          # done is registered
        if job_pop:
            idx, _ = self.jobs.pop(0)
            o = self.cmds[idx]
            self.active = True
            self.j_left = o.fields["words"]
            self.j_bpw = m.bus_words[Buf(o.fields["buf"])]
            self.j_cmd = o
        if wr_take:
            if self.w_k == self.w_last_k:
                self.wr_valid = False
            self.w_k += 1
            self.wr_wait = I - 1
        elif self.wr_wait:
            self.wr_wait -= 1
        if pop:
            self.wr_valid = True
            self.w_k = 0
            self.w_last_k = self.j_bpw - 1
            self.w_last = self.j_left == 1
            self.w_cmd = self.j_cmd
            if self.j_left == 1:
                self.active = False
            self.j_left -= 1
        if take:
            self.cmds[self.next_take].take = t
            self.p1 = (self.next_take, t)
            self.next_take += 1
        if accept:
            self.p1 = None
            o = self.cmds[self.next_accept]
            o.start = t
            self.jobs.append((self.next_accept, t))
            self.next_accept += 1
            self.front = "ISSUE"
            self.iss_left = o.fields["words"]
        elif req_load:
            if self.iss_left == 1:
                self.front = "IDLE"
            self.iss_left -= 1
        self.t = t + 1

    def start_of(self, c: int) -> int:
        while self.cmds[c].start is None:
            self._step()
        return self.cmds[c].start

    def take_of(self, c: int) -> int:
        while self.cmds[c].take is None:
            self._step()
        return self.cmds[c].take

    def end_of(self, c: int) -> int:
        while self.cmds[c].end is None:
            self._step()
        return self.cmds[c].end


# -- the model ---------------------------------------------------------------------------------


class Model:
    """The per-unit duration models of one chip configuration (``params``, ``vector``)."""

    def __init__(self, params: ChipParams, *, vector: bool = False, interval: int = 0,
                 latency: int | None = None):
        p = self.p = params
        self.vector = vector
        if not 0 <= interval <= 255:
            raise ValueError(f"interval = {interval} is not a memory interval (0..255)")
        self.I = max(1, interval)
        self.L = p.offchip_latency if latency is None else latency
        if self.L != p.offchip_latency:
            raise ValueError(f"latency = {self.L}: the memory model's latency is "
                             f"ChipParams.offchip_latency = {p.offchip_latency}")
        resp = _constants_of(LoadEngine(p)).resp_depth
        if self.L + 3 >= resp:
            raise NotImplementedError(
                f"LOAD credits bind (latency {self.L} + 3 >= resp_depth {resp}): not modelled")
        arr = _constants_of(SystolicArray(p))
        self.grid_out = arr.latency + Pipe.FIFO_LATENCY   # accepted row -> scaler input
        sc = _constants_of(GroupScaler(p))
        self.scaler_stages = sc.STAGES
        self.scaler_nonfinal = sc.NONFINAL_STAGES
        if sc.STAGES + Pipe.FIFO_LATENCY >= sc.fifo_depth:
            raise NotImplementedError(
                f"GroupScaler credits bind ({sc.STAGES} stages, FIFO {sc.fifo_depth}): final "
                f"rows below one per cycle are not modelled")
        self.reader = 1 + Pipe.FIFO_LATENCY   # MemReader: read port + SyncFIFOBuffered
        self.bus_words = {b: bus_words_per(p, b) for b in Buf}
        self.rd_free = 0

    # -- closed forms ---------------------------------------------------------------------
    def gemm_eff(self, f: dict, pos: int) -> tuple[int, int, int]:
        R, PC = self.p.rows, self.p.cols // 2
        T, n, k = f["t_len"], f["n_tiles"], f["k_tiles"]
        if f["dyn"] == Dyn.POS:
            if f["wsrc"] == WSrc.KV_TILED:
                n = -(-(pos + T) // PC)
            elif f["wsrc"] == WSrc.KV_ROWS:
                k = -(-(pos + T) // R)
        return T, n, k

    def gemm_cycles(self, f: dict, pos: int) -> tuple[int, tuple[int, int] | None]:
        """(cycles from acceptance to ``done``, the ACC write window relative to
        acceptance or None) of a GEMM."""
        R = self.p.rows
        T, n, k = self.gemm_eff(f, pos)
        N = n * k
        s = _GEMM_SETUP                       # CHECK: generators start the next cycle
        latch0 = s + self.reader + R          # tile 0's last weight row enters the grid
        e0 = latch0 + 1 + self.grid_out       # its first activation row enters the scaler
        period = max(R, T + _PARAM_GAP)
        y = e0 + (N - 1) * period + T - 1     # the last row enters the scaler
        if f["final"]:
            end = y + self.scaler_stages + Pipe.FIFO_LATENCY + 1
            first_final = e0 + (k - 1) * period + self.scaler_stages + Pipe.FIFO_LATENCY
            return end, (first_final, end)
        return y + self.scaler_nonfinal + 1, None

    def kv_cycles(self, f: dict, pos: int) -> tuple[int, tuple[int, int]]:
        R = self.p.rows
        words = f["d"] // R
        per_token = _KV_TOKEN + sum(
            _KV_WORD + R + int((w * R) % _KV_SCALE_GROUP == 0) + int(w == 0)
            for w in range(words))
        end = _KV_SETUP + f["t_len"] * per_token
        return end, (0, end)

    def vec_cycles(self, f: dict, pos: int) -> tuple[int, tuple[int, int]]:
        cyc = vec_cycles(self.p, f, pos)
        return cyc, (0, cyc)


def _vec_writes(f: dict) -> Buf:
    fn = VecFn(f["fn"])
    if fn == VecFn.QUANT or (fn == VecFn.COPY and f["buf"] == VecBuf.ACT):
        return Buf.ACT
    return Buf.ACC


# -- VEC durations: the vector unit's stages as max-plus recurrences -----------------------------
#
# ``VecEngine`` (hw/vector/engine.py) runs an op as a chain of handshaked stages: the reader
# (a MemReader: one read per piece, ``min(L, E)`` elements), the beat assembler (one register),
# the fn's component (Pipes: credit-checked pipelines ending in SyncFIFOBuffered FIFOs; the
# row components' passes joined by row FIFOs, their serial units), the output skid (two
# registers), the writer (one piece per cycle). Each stage is a recurrence over the items it
# passes, in cycles after acceptance:
#
# - a FIFO entry written in cycle w is readable from max(w + FIFO_LATENCY, the cycle the entry
#   before it left + 1); a Pipe of latency S writes item k S cycles after admitting it;
# - a Pipe (or MemReader) of depth D admits item k only after item k - D left its FIFO;
# - a serial unit accepts the cycle after its previous result left, and offers the result
#   LATENCY cycles after accepting;
# - a one-entry register (the beat assembler, the normalizer's parameters) takes the next
#   beat's first item from the cycle the beat it holds leaves.
#
# They are evaluated row by row in phases (front end and pass 1; the row's scalars; pass 2;
# ...; the last pass and the writer), beat by beat within a phase: every credit a stage waits
# for belongs to an earlier beat of the same phase or to an earlier row (a row FIFO holds more
# than a row: ``vector_row`` bounds the rows), so each value is known when it is needed.

#: ``LOADV`` (vfold): two KV reads per block of ``PC`` keys, then one cycle for the last word
#: to arrive and one that sees none arriving (-> ``SETUP``), plus ``VecEngine.loadv_stages``
#: for the last block's entry to be written.
_VEC_LOADV_TAIL = 2
#: ``RUN`` sees the sweep finished the cycle after its last write (plus
#: ``VecEngine.FINISH_STAGES``); ``SWEEP2`` (``go``) next.
_VEC_SWEEP_GAP = 2


class _Pipe:
    """Per-item cycles of one :class:`hw.vector.common.Pipe` (or ``MemReader``: latency 1):
    :meth:`admit` the cycle item k is admitted (credit: item ``k - depth`` left the FIFO),
    :meth:`avail` the cycle its FIFO offers it, :meth:`left` the cycle it was taken out.
    ``fifo``: the FIFO's latency (``Pipe.fifo_latency``)."""

    __slots__ = ("lat", "depth", "takes", "pops")

    def __init__(self, latency: int, depth: int, fifo: int = Pipe.FIFO_LATENCY):
        self.lat, self.depth = latency + fifo, depth
        self.takes: list[int] = []
        self.pops: list[int] = []

    def admit(self, ready: int) -> int:
        k = len(self.takes)
        t = max(ready, self.pops[k - self.depth] + 1) if k >= self.depth else ready
        self.takes.append(t)
        return t

    def avail(self, k: int) -> int:
        a = self.takes[k] + self.lat
        return max(a, self.pops[k - 1] + 1) if k else a

    def left(self, t: int) -> None:
        self.pops.append(t)


class _Serial:
    """``SerialDivider`` / ``SerialIsqrt``: accepts the cycle after its last result left;
    offers the result ``LATENCY`` cycles after accepting (:meth:`run`: that cycle;
    ``lat``)."""

    __slots__ = ("lat", "last_pop")

    def __init__(self, latency: int):
        self.lat, self.last_pop = latency, None

    def run(self, ready: int) -> int:
        a = ready if self.last_pop is None else max(ready, self.last_pop + 1)
        return a + self.lat

    def left(self, t: int) -> None:
        self.last_pop = t


class _QuantPasses:
    """One ``Quantizer``'s two passes: pass 1 into the row FIFO (group and row maxima into
    theirs), pass 2 once the beat's group and row entries are there."""

    def __init__(self, q):
        self.q = q
        self.beats = _Pipe(q.P1_BEAT_STAGES, q.row_depth, q.ROW_FIFO_LATENCY)
        self.out = _Pipe(q.P2_STAGES, Pipe.depth_for(q.P2_STAGES))
        self.g_of: list[int] = []       # group of each beat
        self.is_gend: list[bool] = []
        self.gend: list[int] = []       # pass-1 take of each group's end beat
        self.rend: list[int] = []       # ... of each row's last beat
        self.gend2: list[int] = []      # pass-2 take of each group's end beat (entry leaves)
        self.rend2: list[int] = []
        self.gbeat = 0

    def pass1(self, ready: int, last: bool) -> int:
        t = self.beats.admit(ready)
        self.g_of.append(len(self.gend))
        end = last or self.gbeat == self.q.group_beats - 1
        self.is_gend.append(end)
        self.gbeat = 0 if end else self.gbeat + 1
        if end:
            self.gend.append(t)
        if last:
            self.rend.append(t)
        return t

    def pass2(self, b: int, r: int, last: bool) -> int:
        """Beat ``b`` (of row ``r``) through pass 2: the cycle its output FIFO offers it."""
        q, FL = self.q, self.q.ROW_FIFO_LATENCY
        g = self.g_of[b]
        ga = self.gend[g] + q.P1_ROW_STAGES + FL
        if g:
            ga = max(ga, self.gend2[g - 1] + 1)
        ra = self.rend[r] + q.P1_ROW_STAGES + FL
        if r:
            ra = max(ra, self.rend2[r - 1] + 1)
        t = self.out.admit(max(self.beats.avail(b), ga, ra))
        self.beats.left(t)
        if self.is_gend[b]:
            self.gend2.append(t)
        if last:
            self.rend2.append(t)
        return self.out.avail(b)


class VecModel:
    """Cycles from a VEC op's acceptance to its ``done`` on ``VecEngine(params)``, from the
    stages of ``hw/vector`` (their latencies, FIFO depths and serial units as the hw classes
    name them), computed item by item as max-plus recurrences (section comment above).
    An op the unit refuses (``Err.BAD_FIELD``) raises ``ValueError``: its time is not
    modelled."""

    def __init__(self, p: ChipParams):
        from hw.vector.engine import FoldStage, VecEngine, datapath_parts

        self.p = p
        L, R, C = p.vector_lanes, p.rows, p.cols
        PC = C // 2
        self.L, self.R, self.C, self.PC = L, R, C, PC
        parts = {n: _constants_of(c) for n, c in datapath_parts(p).items()}
        self.rd_depth = _constants_of(MemReader(16, 8)).depth
        self.fold_stages = FoldStage.STAGES
        self.res_stages = VecEngine.RES_STAGES
        # VecEngine FSM: IDLE (accept) -> EFF -> PROD -> the checks -> SETUP -> EPS (go: the
        # generators start the next cycle); the writer's output register after the writer
        self.go_cycles = VecEngine.GO_CYCLES
        self.loadv_tail = _VEC_LOADV_TAIL + VecEngine.loadv_stages(p)
        self.wr_stages = VecEngine.WR_STAGES
        self.finish = VecEngine.FINISH_STAGES
        self.beat_stages, self.beat_depth = VecEngine.BEAT_STAGES, VecEngine.BEAT_DEPTH
        self.out_stages, self.out_depth = VecEngine.OUT_STAGES, VecEngine.OUT_DEPTH
        self.row_fns = VecEngine.ROW_FNS
        self.ew_stages = {VecFn.RESIDUAL: parts["add"].STAGES, VecFn.GELU: parts["pwl"].STAGES,
                          VecFn.SILU_MUL: parts["pwl"].STAGES, VecFn.ROPE: parts["rope"].STAGES,
                          VecFn.COPY: VecEngine.COPY_STAGES}
        self.q = parts["q1"]
        self.n = n = parts["norm"]
        self.s = s = parts["smax"]
        self.norm_serial = n.SERIAL_LATENCY   # mean, variance, square root, inverse
        self.smax_serial = s.SERIAL_LATENCY
        self.memo: dict = {}

    # -- geometry -------------------------------------------------------------------------
    def _pieces(self, length: int, piece: int, per_beat: int) -> list[int]:
        """Pieces of each beat of a row of ``length`` elements."""
        n = -(-length // piece)
        return [min(per_beat, n - k) for k in range(0, n, per_beat)]

    def cycles(self, f: dict, pos: int) -> int:
        key = _vec_key(self.p, f, pos)
        c = self.memo.get(key)
        if c is None:
            c = self.memo[key] = self._cycles(f, pos)
        return c

    def _cycles(self, f: dict, pos: int) -> int:
        L, R, C, PC = self.L, self.R, self.C, self.PC
        if not isinstance(f["fn"], VecFn) or not isinstance(f["qmode"], QuantMode):
            raise ValueError(f"VEC fn {f['fn']} / qmode {f['qmode']}: Err.BAD_FIELD")
        fn = VecFn(f["fn"])
        rows = f["rows"]
        length = pos + rows if f["dyn"] == Dyn.POS else f["length"]
        if (rows == 0 or length == 0 or (fn in self.row_fns and length > self.p.vector_row)
                or (fn == VecFn.ROPE and length % 2)
                or (fn == VecFn.QUANT and f["vfold"] and f["vgroups"] == 0)):
            raise ValueError(f"VEC {fn.name} of {rows} rows x {length}: Err.BAD_FIELD (the "
                             f"timing model covers ops that run)")
        half = bool(f["half"])
        copy_act = fn == VecFn.COPY and f["buf"] == VecBuf.ACT
        out_half = half != (fn == VecFn.COPY and bool(f["repack"]))
        quant = fn == VecFn.QUANT
        Pf, Ph, Pq = min(L, C), min(L, PC), min(L, R)
        if copy_act:
            pin, pout = (R, 1), (R, 1)
        else:
            pin = (Ph, L // Ph) if half else (Pf, L // Pf)
            pout = (Pq, L // Pq) if quant else (Ph, L // Ph) if out_half else (Pf, L // Pf)
        beats_in = self._pieces(length, *pin)
        beats_out = self._pieces(length, *pout)
        assert len(beats_in) == len(beats_out)
        go = self.go_cycles
        if quant and f["vfold"]:
            go += 2 * (-(-length // PC)) + self.loadv_tail
        two = quant and QuantMode(f["qmode"]) != QuantMode.INT8
        last = self._sweep(fn, f, rows, beats_in, beats_out, go, second=False)
        if two:
            last = self._sweep(fn, f, rows, beats_in, beats_out,
                               last + _VEC_SWEEP_GAP + self.finish, second=True)
        return last + 1 + self.finish

    # -- one sweep ------------------------------------------------------------------------
    def _sweep(self, fn, f, rows, beats_in, beats_out, go, second) -> int:
        """The cycle of the sweep's last write at the port (``go``: the cycle of its ``go``
        pulse): the writer's last piece, then ``WR_STAGES`` (its output register)."""
        return self._sweep_writer(fn, f, rows, beats_in, beats_out, go, second) + self.wr_stages

    def _sweep_writer(self, fn, f, rows, beats_in, beats_out, go, second) -> int:
        """The cycle the writer takes the sweep's last piece."""
        # reader (MemReader: latency 1), beat assembler (one register) and, except for COPY
        # (its own Pipe takes from the assembler), the beat skid: a 2-entry buffer that takes
        # a beat while it holds at most one (VecEngine.BEAT_STAGES, BEAT_DEPTH)
        rd = _Pipe(1, self.rd_depth)
        rd_issue = [go]             # previous issue (go: the first issues at go + 1)
        asm_free = [0]              # the cycle the assembler's beat left
        skid = None if fn == VecFn.COPY else _Pipe(self.beat_stages, self.beat_depth, 0)

        def front(n_pieces: int) -> int:
            """The cycle the next beat (``n_pieces`` reads) is offered to its consumer."""
            t = 0
            for _ in range(n_pieces):
                k = len(rd.takes)
                issue = rd.admit(rd_issue[0] + 1)
                rd_issue[0] = issue
                t = max(rd.avail(k), asm_free[0])
                rd.left(t)
            if skid is None:
                return t + 1
            k = len(skid.takes)
            asm_free[0] = skid.admit(t + 1)
            return skid.avail(k)

        def took(t: int) -> None:
            """The consumer took the beat ``front`` offered, in cycle ``t``."""
            if skid is None:
                asm_free[0] = t
            else:
                skid.left(t)

        wr_last = [0]
        # the output skid between the op's source and the writer (VecEngine.OUT_STAGES,
        # OUT_DEPTH): a 2-entry buffer like the beat skid
        oskid = _Pipe(self.out_stages, self.out_depth, 0)

        def writer(avail: int, n_pieces: int) -> int:
            """A beat its source offers from ``avail``: the output skid takes it (the cycle
            returned: the beat leaves the source's FIFO then), the writer its pieces in
            consecutive cycles once the skid offers it (the beat leaves the skid with the
            last)."""
            k = len(oskid.takes)
            t = oskid.admit(avail)
            s = max(oskid.avail(k), wr_last[0] + 1)
            wr_last[0] = s + n_pieces - 1
            oskid.left(wr_last[0])
            return t

        if fn in self.ew_stages:
            S = self.ew_stages[fn]
            comp = _Pipe(S, Pipe.depth_for(S))
            b = 0
            for _ in range(rows):
                for nin, nout in zip(beats_in, beats_out, strict=True):
                    took(comp.admit(front(nin)))
                    comp.left(writer(comp.avail(b), nout))
                    b += 1
            return wr_last[0]
        if fn == VecFn.QUANT:
            return self._quant(f, rows, beats_in, beats_out, go, second, front, took, writer,
                               wr_last)
        if fn == VecFn.SOFTMAX:
            return self._softmax(rows, beats_in, beats_out, front, took, writer, wr_last)
        return self._norm(fn, rows, beats_in, beats_out, go, front, took, writer, wr_last)

    def _quant(self, f, rows, beats_in, beats_out, go, second, front, took, writer, wr_last):
        q = self.q
        vfold = bool(f["vfold"])
        a8x2 = second and QuantMode(f["qmode"]) == QuantMode.A8X2
        fold = _Pipe(self.fold_stages, Pipe.depth_for(self.fold_stages))
        res = _Pipe(self.res_stages, Pipe.depth_for(self.res_stages))
        q1, q2 = _QuantPasses(q), _QuantPasses(q)
        B = len(beats_in)
        b0 = 0
        for r in range(rows):
            for k, nin in enumerate(beats_in):              # front end, fold, q1 pass 1
                v = front(nin)
                if vfold:
                    t = fold.admit(v)
                    took(t)
                    t1 = q1.pass1(fold.avail(b0 + k), k == B - 1)
                    fold.left(t1)
                else:
                    took(q1.pass1(v, k == B - 1))
            for k, nout in enumerate(beats_out):            # q1 pass 2 -> writer / residual
                b = b0 + k
                a = q1.pass2(b, r, k == B - 1)
                if a8x2:
                    t = res.admit(a)
                    q1.out.left(t)
                    t2 = q2.pass1(res.avail(b), k == B - 1)
                    res.left(t2)
                else:
                    q1.out.left(writer(a, nout))
            if a8x2:
                for k, nout in enumerate(beats_out):        # q2 pass 2 -> writer
                    b = b0 + k
                    q2.out.left(writer(q2.pass2(b, r, k == B - 1), nout))
            b0 += B
        return wr_last[0]

    def _softmax(self, rows, beats_in, beats_out, front, took, writer, wr_last):
        s = self.s
        FL = s.ROW_FIFO_LATENCY
        A = _Pipe(s.P1_BEAT_STAGES, s.depth_a, FL)      # pass 1 -> row FIFO A
        Bf = _Pipe(s.P2_E_STAGES, s.depth_b, FL)        # pass 2 -> row FIFO B
        out = _Pipe(s.P3_STAGES, Pipe.depth_for(s.P3_STAGES))
        par3 = _Pipe(s.PAR_STAGES, s.PAR_FIFO_DEPTH, s.PAR_FIFO_LATENCY)
        div = _Serial(self.smax_serial)
        nb = len(beats_in)
        row_take2 = []      # pass-2 take of each row's last beat (its row entry leaves)
        div_acc = None
        b0 = 0
        for r in range(rows):
            for nin in beats_in:
                v = front(nin)
                took(A.admit(v if not A.takes else max(v, A.takes[-1] + 1)))
            ra = A.takes[b0 + nb - 1] + s.P1_STAGES + FL       # the row's max
            if r:
                ra = max(ra, row_take2[r - 1] + 1)
            for k in range(nb):
                b = b0 + k
                t = Bf.admit(max(A.avail(b), ra))
                A.left(t)
            row_take2.append(Bf.takes[-1])
            sa = Bf.takes[-1] + s.P2_SUM_STAGES + FL            # the row's sum
            if div_acc is not None:
                sa = max(sa, div_acc + 1)
            ready = div.run(sa)
            div_acc = ready - div.lat
            t = par3.admit(ready)
            div.left(t)
            pa = par3.avail(r)
            for k, nout in enumerate(beats_out):
                b = b0 + k
                t = out.admit(max(Bf.avail(b), pa))
                Bf.left(t)
                out.left(writer(out.avail(b), nout))
            par3.left(out.takes[-1])
            b0 += nb
        return wr_last[0]

    def _norm(self, fn, rows, beats_in, beats_out, go, front, took, writer, wr_last):
        n = self.n
        FL = n.ROW_FIFO_LATENCY
        L, C = self.L, self.C
        A = _Pipe(n.P1_BEAT_STAGES, n.depth_a, FL)
        Bf = _Pipe(n.P2_BEAT_STAGES, n.depth_b, FL)
        out = _Pipe(n.P3_STAGES, Pipe.depth_for(n.P3_STAGES))
        par2 = _Pipe(n.PAR2_STAGES, n.PAR2_FIFO_DEPTH, n.PAR_FIFO_LATENCY)
        par3 = _Pipe(n.PAR3_STAGES, n.PAR3_FIFO_DEPTH, n.PAR_FIFO_LATENCY)
        mean, var, sqrt, inv = (_Serial(lat) for lat in self.norm_serial)
        # PRM reader: per beat KC pieces of gamma (and of beta for LAYERNORM)
        prd = _Pipe(1, self.rd_depth)
        p_issue = [go]
        per_beat = (L // min(L, C)) * (2 if fn == VecFn.LAYERNORM else 1)
        par_free = [0]
        nb = len(beats_in)
        st_acc = var_acc = None
        b0 = 0
        for r in range(rows):
            for nin in beats_in:
                v = front(nin)
                took(A.admit(v if not A.takes else max(v, A.takes[-1] + 1)))
            sa = A.takes[-1] + n.P1_STAGES + FL              # the row's statistics
            if st_acc is not None:
                sa = max(sa, st_acc + 1)
            ready = mean.run(sa)
            st_acc = ready - mean.lat
            t = par2.admit(ready)
            mean.left(t)
            pa2 = par2.avail(r)
            for k in range(nb):
                b = b0 + k
                t = Bf.admit(max(A.avail(b), pa2))
                A.left(t)
            par2.left(Bf.takes[-1])
            qa = Bf.takes[-1] + n.P2_STAGES + FL              # Σcs²
            if var_acc is not None:
                qa = max(qa, var_acc + 1)
            ready = var.run(qa)
            var_acc = ready - var.lat
            ready2 = sqrt.run(ready)
            var.left(ready2 - sqrt.lat)
            ready3 = inv.run(ready2)
            sqrt.left(ready3 - inv.lat)
            t = par3.admit(ready3)
            inv.left(t)
            pa3 = par3.avail(r)
            for k, nout in enumerate(beats_out):
                b = b0 + k
                pv = 0
                for _ in range(per_beat):                     # the beat's parameters
                    j = len(prd.takes)
                    p_issue[0] = prd.admit(p_issue[0] + 1)
                    pv = max(prd.avail(j), par_free[0])
                    prd.left(pv)
                t = out.admit(max(Bf.avail(b), pa3, pv + 1))
                par_free[0] = t
                Bf.left(t)
                out.left(writer(out.avail(b), nout))
            par3.left(out.takes[-1])
            b0 += nb
        return wr_last[0]


def _vec_key(p: ChipParams, f: dict, pos: int) -> tuple:
    """The fields a VEC op's duration depends on (addresses and strides do not)."""
    fn = VecFn(f["fn"])
    length = pos + f["rows"] if f["dyn"] == Dyn.POS else f["length"]
    keep = ["fn", "rows", "half"]
    if fn == VecFn.QUANT:
        keep += ["qmode", "per_row", "vfold", "causal", "vgroups"]
    if fn == VecFn.SOFTMAX:
        keep += ["causal"]
    if fn == VecFn.COPY:
        keep += ["buf", "repack"]
    k = tuple((name, int(f[name])) for name in keep)
    causal_pos = pos if (fn in (VecFn.SOFTMAX, VecFn.QUANT) and f["causal"]) else 0
    return k + (("length", length), ("pos", causal_pos))








def measure_vec(p: ChipParams, ops: list[tuple[dict, int]]) -> list[int]:
    """Cycles from acceptance to ``done`` of each VEC op ``(fields, pos)``, run one after the
    other on ``VecEngine(p)`` alone in ``amaranth.sim`` (read data 0, write ports always
    ready: the rules keep other units' writes away). The ops must pass their checks (a
    failing op's cycles are those of its error report)."""
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    from hw.isa import encode
    from hw.vector.engine import VecEngine

    eng = VecEngine(p)
    top = Module()
    top.submodules.eng = eng
    now = Signal(40)
    top.d.sync += now.eq(now + 1)
    sim = Simulator(top)
    sim.add_clock(1e-8)
    out = []
    width = len(eng.cmd.payload.args.as_value())

    async def tb(ctx):
        ctx.set(eng.acc_wr.ready, 1)
        ctx.set(eng.act_wr.ready, 1)
        for f, pos in ops:
            word = encode(Op.VEC, **f)
            ctx.set(eng.cmd.payload.args.as_value(), (word >> OP_BITS) & ((1 << width) - 1))
            ctx.set(eng.cmd.payload.pos, pos)
            ctx.set(eng.cmd.valid, 1)
            assert ctx.get(eng.cmd.ready), "VecEngine not idle"
            a = ctx.get(now)                 # accepted at this cycle's edge
            await ctx.tick()
            ctx.set(eng.cmd.valid, 0)
            if ctx.get(eng.done):
                out.append(ctx.get(now) - a)
            else:
                # until() samples done before each edge and returns after it: one cycle late
                await ctx.tick().until(eng.done)
                out.append(ctx.get(now) - 1 - a)
            await ctx.tick()

    sim.add_testbench(tb)
    sim.run()
    return out


_VEC_MODELS: dict = {}


def vec_model(p: ChipParams) -> VecModel:
    """The :class:`VecModel` of ``p`` (one per configuration)."""
    m = _VEC_MODELS.get(p)
    if m is None:
        m = _VEC_MODELS[p] = VecModel(p)
    return m


def vec_cycles(p: ChipParams, f: dict, pos: int) -> int:
    """Cycles from a VEC op's acceptance to its ``done`` (:class:`VecModel`, memoized per
    distinct op)."""
    return vec_model(p).cycles(f, pos)


# -- predict ------------------------------------------------------------------------------------


_DECODED: dict = {}


def _decode(word: int) -> tuple:
    """:func:`hw.isa.decode`, memoized (the runtime predicts the same programs again and again;
    the fields are only read)."""
    d = _DECODED.get(word)
    if d is None:
        if len(_DECODED) > 1 << 18:
            _DECODED.clear()
        d = _DECODED[word] = decode(word)
    return d


def _overlaps(low: list, high: list):
    """The first ``(low op, window, high op, window)`` whose closed windows overlap, or None
    (sorted by start, with the running maximum of the high windows' ends)."""
    if not low or not high:
        return None
    hs = sorted(high, key=lambda x: x[1][0])
    starts = [w[0] for _, w in hs]
    run_end, best = [], None
    for _, (_, b) in hs:
        best = b if best is None or b > best else best
        run_end.append(best)
    for ol, (la, lb) in low:
        i = bisect.bisect_right(starts, lb)   # high windows starting at or before lb
        if i and run_end[i - 1] >= la:
            for oh, (ha, hb) in hs[:i]:
                if hb >= la:
                    return ol, (la, lb), oh, (ha, hb)
    return None


def _check_rules(units: dict, ops: list) -> None:
    def spans(unit, pred):
        u = units.get(unit)
        if u is None:
            return []
        return [(o, w) for o, w in zip(u.cmds, u.windows, strict=True) if w is not None and pred(o)]

    loads = units[Unit.LOAD]
    load_w = {b: [(o, w) for o, w in zip(loads.cmds, loads.windows, strict=True)
                  if o.fields["buf"] == b] for b in Buf}
    gemm_acc = spans(Unit.GEMM, lambda o: o.fields["final"])
    vec_acc = spans(Unit.VEC, lambda o: _vec_writes(o.fields) == Buf.ACC)
    vec_act = spans(Unit.VEC, lambda o: _vec_writes(o.fields) == Buf.ACT)
    kv = spans(Unit.KV, lambda o: True)
    pairs = [(1, load_w[Buf.ACC], gemm_acc + vec_acc), (2, load_w[Buf.ACT], vec_act),
             (3, load_w[Buf.KV], kv), (4, vec_acc, gemm_acc)]
    for rule, low, high in pairs:
        hit = _overlaps(low, high)
        if hit is not None:
            ol, (la, lb), oh, (ha, hb) = hit
            raise RuleViolation(
                f"predictability rule {rule}: {ol.op.name} at pc {ol.pc} (writes cycles "
                f"{la}..{lb}) overlaps {oh.op.name} at pc {oh.pc} (cycles {ha}..{hb}) on "
                f"a shared buffer write port; separate them with a WAIT "
                f"(sim/timing.py)")


def predict(params: ChipParams, program_words, *, vector: bool = False, interval: int = 0,
            latency: int | None = None, pos_init: int = 0, check_rules: bool = True) -> Timing:
    """The cycle-exact timing of a job running ``program_words`` (the micro-ops as ints, as
    loaded at ``prog_addr``) on ``Chip(params, vector=vector)`` with the memory model's
    ``interval`` (no jitter) and ``pos_init``. Raises :class:`RuleViolation` for a program
    that breaks a predictability rule (module docstring) and ``ValueError`` for one that ends
    in a sequencer error."""
    p = params
    words = [int(w) for w in program_words]
    model = Model(p, vector=vector, interval=interval, latency=latency)
    I, L = model.I, model.L
    D = p.queue_depth
    if not words:
        raise ValueError("predict: an empty program ends in Err.PROG_RANGE")
    if len(words) > p.uop_depth:
        raise ValueError(f"predict: {len(words)} micro-ops do not fit uop_depth = {p.uop_depth}")
    queued = QUEUED_UNITS + ((Unit.VEC,) if vector else ())

    units = {
        Unit.LOAD: _LoadUnit(model),
        Unit.STORE: _StoreUnit(model),
        Unit.GEMM: _SerialUnit(model, Unit.GEMM, lambda o: model.gemm_cycles(o.fields, o.pos)),
        Unit.KV: _SerialUnit(model, Unit.KV, lambda o: model.kv_cycles(o.fields, o.pos)),
    }
    if vector:
        units[Unit.VEC] = _SerialUnit(model, Unit.VEC,
                                      lambda o: model.vec_cycles(o.fields, o.pos))
    ys = {u: [] for u in queued}     # cycle each entry moved to its queue's output register

    # boot
    IB = math.ceil(INSTR_BITS / bus_bits(p))
    n_boot = len(words) * IB
    last_boot = _BOOT_FIRST_REQUEST + (n_boot - 1) * I
    model.rd_free = last_boot + I
    fetch = last_boot + L + _BOOT_TO_FETCH
    stall_wait = stall_queue = 0
    pos, kv_base = pos_init, 0
    ops = []
    pc = 0
    while True:
        if pc >= len(words):
            raise ValueError(f"predict: pc {pc} runs past the program: Err.PROG_RANGE")
        op, f = _decode(words[pc])
        x = fetch + 1  # EXEC
        if not isinstance(op, Op):
            raise ValueError(f"predict: pc {pc}: opcode {op:#x} is Err.ILLEGAL_OP")
        o = OpTiming(pc, op, None, x, fields=f, pos=pos)
        if op == Op.HALT:
            o.start = x
            ops.append(o)
            break
        if op == Op.NOP:
            pass
        elif op == Op.SETPOS:  # kv_base moves no unit's timing: only its range matters
            kvb = f["reg"] == PosReg.KV_BASE
            new = (kv_base if kvb else pos) + f["value"] if f["add"] else f["value"]
            if new >= (buffer_depth(p, Buf.KV) if kvb else 1 << 16):
                raise ValueError(f"predict: pc {pc}: SETPOS {f['reg'].name} to {new} is "
                                 "Err.BAD_FIELD")
            if kvb:
                kv_base = new
            else:
                pos = new
        elif op == Op.WAIT:
            if not isinstance(f["unit"], Unit):
                raise ValueError(f"predict: pc {pc}: WAIT on unit {f['unit']}: Err.BAD_FIELD")
            u = units.get(f["unit"])   # a unit without a queue (VEC) has nothing pending
            k = len(u.cmds) - f["count"] - 1 if u is not None else -1
            if k >= 0:
                x = max(x, u.end_of(k) + 1)
            stall_wait += x - o.issue
            o.issue = o.start = x
        else:
            uid = OP_UNIT[op]
            if uid not in units:
                raise ValueError(f"predict: pc {pc}: {op.name} without its unit is "
                                 f"Err.UNSUPPORTED")
            u = units[uid]
            o.unit = uid
            c = len(u.cmds)
            y = ys[uid]
            if c >= D - 1:
                x = max(x, y[c - D + 1] + 1)      # the queue's inner storage has room
            stall_queue += x - o.issue
            o.issue = x
            yc = max(x + 1, u.take_of(c - 1)) if c else x + 1
            y.append(yc)
            u.submit(o, yc + 1)
        ops.append(o)
        fetch = x + 1
        pc += 1

    halt = ops[-1].issue
    ends = [u.end_of(c) for u in units.values() for c in range(len(u.cmds))]
    last = max([halt + 1] + [e + 1 for e in ends])
    for u in units.values():  # resolve every start of a lazily modelled unit
        for c in range(len(u.cmds)):
            u.start_of(c)
    counters = {Counter.CYCLES: last, Counter.STALL_WAIT: stall_wait,
                Counter.STALL_QUEUE: stall_queue}
    busy = {Unit.LOAD: Counter.BUSY_LOAD, Unit.STORE: Counter.BUSY_STORE,
            Unit.GEMM: Counter.BUSY_GEMM, Unit.VEC: Counter.BUSY_VEC, Unit.KV: Counter.BUSY_KV}
    for uid, cnt in busy.items():
        u = units.get(uid)
        if u is None:
            counters[cnt] = 0
        elif uid == Unit.STORE:
            counters[cnt] = u.busy_cycles
        else:
            counters[cnt] = _union_len(u.busy)
    lu, su = units[Unit.LOAD], units[Unit.STORE]
    if not any(lu.stalling(t) for t in su.stall_cycles):
        counters[Counter.STALL_MEM] = lu.stall_count() + len(su.stall_cycles)
    if check_rules:
        _check_rules(units, ops)
    return Timing(last, counters, ops)

"""Differential fuzzing of the chip RTL (``hw/chip.py`` under Verilator,
:func:`sim.chip_rtl.run_jobs`) against the instruction-level simulator
(:class:`sim.isa_sim.IsaSim`). The command line is ``scripts/fuzz_chip.py``; the tests are
``tests/test_chip_fuzz.py``.

What is generated (everything from one integer seed, program ``i`` from ``(seed, i)`` alone):

- an off-chip memory image per Verilator run (:func:`make_image`): random bytes, split into a
  *data area* (random LOADs read anywhere in memory; STOREs write only here) whose top holds
  one *dump region* per buffer and whose bottom two *zones* of tame ACT and PRM words (group
  shifts, exponents, scales, output shifts in their working ranges: LOADs prefer them, so
  that GEMM outputs are often neither 0 nor saturated), and a *program area* (the programs
  of the jobs, never written);
- **valid programs**: random ``LOAD`` / ``STORE`` (random buffer, in-range sizes and
  addresses, biased to the edges), ``GEMM`` (both modes, ``wsrc`` WGT / KV_TILED / KV_ROWS,
  ``psrc`` PRM / KV, ``dyn = POS``, chains of non-``first`` ops carrying sums with the same
  ``n_tiles`` / ``t_len``, long ``t_len`` now and then, overlapping ACT rows and ACC outputs
  now and then, fields an op does not use left random), ``KV_APPEND`` (legal ``d``, ``cap``
  and ``pos``; its data and scale words apart, as ``hw/isa.py`` orders no writes within one
  op), attention-shaped sequences (append keys and values, QKᵀ with ``psrc = KV`` and P·V,
  both ``dyn``), ``SETPOS`` (now and then a long context), ``SETPOS reg = KV_BASE`` (KV
  fields of later ops relative to it), ``NOP``, redundant ``WAIT``\\ s,
  random bits above an op's arguments now and then, and at the end STOREs of the buffers to
  their dump regions (every buffer the program wrote, ACC and KV; big buffers whole now and
  then, else the hull of the words written), then ``HALT``. Units run concurrently, so the
  generator makes the result deterministic: it tracks, per unit, the buffer / off-chip
  regions (read or written) of the ops issued since its last ``WAIT``, and before issuing an
  op it waits for every *other* unit whose pending ops conflict (overlap, one of them
  writing) with ``WAIT unit, n``, ``n`` the number of that unit's ops issued after the newest
  conflicting one, or 0 (ops of one unit run in order: no wait). Independent ops stay in
  flight together.
- **illegal programs**: a valid prefix, then exactly one op that must fail (illegal opcode,
  an undefined enum value patched into a legal word through :func:`hw.isa.leaf_fields`
  offsets, ``BAD_FIELD`` sizes, ``SRAM_RANGE`` and ``OFFCHIP_RANGE`` at the boundary and far
  beyond (incl. 16/32-bit wrap-around values), ``KV_OVERFLOW``, ``VEC`` -> ``UNSUPPORTED``,
  ``SETPOS`` overflow of ``pos`` or ``kv_base``, a KV op that a new ``kv_base`` pushes out of
  its buffer (``SRAM_RANGE``), a missing ``HALT`` -> ``PROG_RANGE``, a program longer than
  ``uop_depth`` or past the end of memory -> ``PROG_LOAD``), followed by ``WAIT`` on the failing
  unit and ops that must never run. The expected error and ``error_pc`` are the generator's
  intent (:data:`ILLEGAL_KINDS`), checked against IsaSim too. Either the prefix is drained
  first (*quiesced*: every result compared), or the error hits while ops of the prefix are in
  flight (*abort*: the chip drops them; only status, ``UOPS`` and the rule "off-chip bytes
  change only inside the destinations of issued STOREs, and where one STORE covers them, to
  IsaSim's values" are checked, and the next job, a *resync* program, reloads the buffer
  words the prefix may have written);
- **jitter twins**: now and then a valid program runs again under another memory
  configuration (stalls if it had none, else none): compared with IsaSim like any job, and
  the run with stalls must take more cycles;
- every job gets a random configuration of the memory model (bandwidth ``interval``, latency
  ``jitter`` probability and maximum, its seed), none in about half of them.

:func:`run_campaign` (:func:`make_programs` + :func:`run_programs`) lays the programs out in
images (as many per :func:`run_jobs` call as the program area holds, at most
``jobs_per_run``; each run starts with a job loading every buffer from its image), runs them
and compares each job with IsaSim (one instance per image, state carried from job to job as
the chip's buffers are): ``error``, ``error_pc``, ``pos``, the counters ``UOPS`` /
``GRID_ROWS`` / ``LOAD_WORDS`` / ``STORE_WORDS``, and the whole off-chip memory after every
job; every job runs under a cycle bound derived from its ops (:meth:`Program.max_cycles`)
and must finish in it. A mismatch (:class:`Mismatch`) lists the differences (off-chip bytes
with the STORE that wrote them and the op that last wrote the stored buffer word) and the
program with those ops marked; IsaSim then takes the chip's memory and dumped buffers, so
later jobs are compared on equal state where possible.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from hw.board_top import CHIP_85F
from hw.chip import QUEUED_UNITS
from hw.isa import (
    INSTR,
    INSTR_BITS,
    KV_BASE_BITS,
    PRM_STEP_NEVER,
    Buf,
    Counter,
    Dyn,
    Err,
    GridMode,
    KvKind,
    Op,
    PosReg,
    PSrc,
    Unit,
    WSrc,
    buffer_depth,
    bus_bits,
    bus_words_per,
    decode,
    encode,
    leaf_fields,
)
from hw.isa import OP_UNIT as ISA_OP_UNIT
from hw.params import ChipParams
from sim.isa_sim import UNTIMED_COUNTERS

__all__ = [
    "SMALL", "R16", "DEFAULT", "DEEPKV", "FPGA", "PARAMS", "MemLayout", "Program", "Mismatch",
    "CampaignReport",
    "mem_layout", "gen_valid", "gen_illegal", "gen_resync", "make_programs", "run_campaign",
    "format_program", "compare_job", "run_programs", "ILLEGAL_KINDS", "check_order",
]

#: A 4x8 grid with 2 KiB buffers: ops reach the buffer ends and collide often; a quick build.
SMALL = ChipParams(rows=4, cols=8, weight_sram_kib=2, act_sram_kib=2, acc_sram_kib=2,
                   kv_sram_kib=2, prm_entries=32, acc_entries=32, uop_depth=256, offchip_kib=64)
#: A 16x16 grid with small buffers.
R16 = ChipParams(rows=16, cols=16, weight_sram_kib=4, act_sram_kib=4, acc_sram_kib=4,
                 kv_sram_kib=8, prm_entries=64, acc_entries=64, uop_depth=512, offchip_kib=256)
#: The chip as built (``ChipParams()``): its Verilator build is the one ``tests/test_chip_rtl.py``
#: uses too (``run_jobs`` names builds by configuration).
DEFAULT = ChipParams()
#: A KV buffer deeper than the 16-bit KV fields (98,304 words: ``kv_base`` reaches the rest;
#: LOAD / STORE reach it up to 2 * (2**16 - 1)), the rest as ``SMALL``.
DEEPKV = ChipParams(rows=4, cols=8, weight_sram_kib=2, act_sram_kib=2, acc_sram_kib=2,
                    kv_sram_kib=384, prm_entries=32, acc_entries=32, uop_depth=256,
                    offchip_kib=2048)
#: The FPGA boards' chip (``hw.board_top.CHIP_85F``: 16 x 4 grid, 16 KiB WGT / ACT / ACC,
#: 8 KiB KV, 1024 micro-ops), without its vector unit, as the fuzzer's programs need.
FPGA = CHIP_85F
PARAMS = {"small": SMALL, "r16": R16, "default": DEFAULT, "deepkv": DEEPKV, "fpga": FPGA}
#: Largest value of a 16-bit field (DMA ``sram`` / ``words``, KV address fields).
_F16 = (1 << 16) - 1
#: Buffers of more bus words than this are dumped whole only now and then (else the hull of
#: the words the program wrote), and DMA sizes beyond ``_BIG_DMA`` words are rare.
_DUMP_WHOLE = 4096
_BIG_DMA = 512

QUEUED = QUEUED_UNITS  # VEC only as an illegal op (a chip without the vector unit)
OP_UNIT = {op: u for op, u in ISA_OP_UNIT.items() if u in QUEUED}
OFF = "OFF"  # the off-chip memory as a footprint space (buffers are Buf members)
#: Counters IsaSim models (the rest need timing).
COMPARED = UNTIMED_COUNTERS

_LEAVES = {path: (off, width) for path, off, width, _, _ in leaf_fields(INSTR)}
#: Bits of an INSTR word used by each op (opcode and its argument struct).
_USED_BITS = {}
for _op, _member in ((Op.LOAD, "dma"), (Op.STORE, "dma"), (Op.GEMM, "gemm"),
                     (Op.KV_APPEND, "kv"), (Op.WAIT, "wait"), (Op.SETPOS, "pos"),
                     (Op.VEC, "vec"), (Op.NOP, None), (Op.HALT, None)):
    _top = 6
    for _path, (_off, _w) in _LEAVES.items():
        if _member and _path.startswith(f"args.{_member}."):
            _top = max(_top, _off + _w)
    _USED_BITS[_op] = _top


def patch(word: int, path: str, value: int) -> int:
    """``word`` with the INSTR leaf ``path`` (e.g. ``"args.dma.buf"``) set to ``value``."""
    off, width = _LEAVES[path]
    assert 0 <= value < 1 << width, (path, value)
    mask = ((1 << width) - 1) << off
    return (word & ~mask) | (value << off)


# -- memory layout ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MemLayout:
    """Off-chip memory (bus-word addresses): the data area ``[0, data_end)`` (STOREs land only
    there), the dump regions (one per buffer, whole buffer, inside the data area at its top),
    the program area ``[prog_base, bus_words)``. The image is random bytes, but for two
    *zones* at the bottom of the data area (``zones``: Buf -> (lo, hi)), where
    :func:`make_image` writes ACT and PRM words with tame fields (group shifts, exponents and
    output shifts in their working ranges), so that LOADs from there give GEMMs outputs that
    are neither 0 nor saturated."""

    bus_words: int
    data_end: int
    dump: dict
    prog_base: int
    uop_bus: int  # bus words per micro-op
    zones: dict = field(default_factory=dict)

    @property
    def prog_words(self) -> int:
        return self.bus_words - self.prog_base


def mem_layout(p: ChipParams) -> MemLayout:
    bus_words = p.offchip_kib * 1024 // p.offchip_bytes_per_cycle
    sizes = {b: buffer_depth(p, b) * bus_words_per(p, b) for b in Buf}
    dump_total = sum(sizes.values())
    data_end = dump_total + max(dump_total // 2, bus_words // 8)
    if data_end > bus_words * 3 // 4:
        raise ValueError(f"fuzz: off-chip memory of {bus_words} bus words too small for dumps "
                         f"of {dump_total}")
    dump, a = {}, data_end - dump_total
    for b in Buf:
        dump[b] = a
        a += sizes[b]
    free = data_end - dump_total
    zones, lo = {}, 0
    for b, share in ((Buf.ACT, 0.4), (Buf.PRM, 0.3)):
        bpw = bus_words_per(p, b)
        n = int(free * share) // bpw * bpw
        zones[b] = (lo, lo + n)
        lo += n
    return MemLayout(bus_words, data_end, dump, data_end, math.ceil(INSTR_BITS / bus_bits(p)),
                     zones)


def make_image(p: ChipParams, lay: MemLayout, seed: int, run: int) -> np.ndarray:
    """The off-chip image of run ``run`` (uint8): random bytes, tame ACT and PRM words in the
    zones of ``lay``. Programs are placed in the program area later."""
    from hw.isa import act_word, pack_words, prm_word

    rng = _rng(seed, run, 4)
    B = p.offchip_bytes_per_cycle
    image = rng.integers(0, 256, p.offchip_kib * 1024, dtype=np.uint8)
    C = p.cols
    for buf, (lo, hi) in lay.zones.items():
        bpw = bus_words_per(p, buf)
        n = (hi - lo) // bpw
        if buf == Buf.ACT:
            gshift = np.where(rng.random(n) < 0.7, rng.integers(0, 9, n),
                              rng.integers(0, p.numerics.act_headroom + 1, n))
            raw = pack_words(act_word(p), {
                "data": rng.integers(-128, 128, (n, p.rows)), "gshift": gshift,
                "gzero": (rng.random(n) < 0.05).astype(np.int64),
                "exp": rng.integers(-6, 7, n)})
        else:  # PRM: group or out words, at random
            group = pack_words(prm_word(p), {
                "group.scale": np.where(rng.random((n, C)) < 0.3, rng.integers(-64, 65, (n, C)),
                                        rng.integers(-(1 << 15), 1 << 15, (n, C))),
                "group.offset": np.where(rng.random((n, C)) < 0.5, 0,
                                         rng.integers(-1024, 1025, (n, C)))})
            out = pack_words(prm_word(p), {
                "out.shift": rng.integers(0, 61, (n, C)),
                "out.bias": rng.integers(-(1 << 16), 1 << 16, (n, C))})
            raw = np.where((rng.random(n) < 0.5)[:, None], group, out)
        words = np.zeros((n, bpw * B), np.uint8)
        words[:, :raw.shape[1]] = raw
        image[lo * B:(lo + n * bpw) * B] = words.ravel()
    return image


# -- checks by the spec (the generator's intent; IsaSim is checked against them) --------------


def _dma_check(p, lay, f):
    try:
        buf = Buf(f["buf"])
    except ValueError:
        return Err.BAD_FIELD, []
    if f["words"] == 0:
        return Err.BAD_FIELD, []
    if f["sram"] + f["words"] > buffer_depth(p, buf):
        return Err.SRAM_RANGE, []
    n_bus = f["words"] * bus_words_per(p, buf)
    if f["off"] + n_bus > lay.bus_words:
        return Err.OFFCHIP_RANGE, []
    return Err.NONE, [(buf, f["sram"], f["sram"] + f["words"]), (OFF, f["off"], f["off"] + n_bus)]


def gemm_check(p: ChipParams, f: dict, pos: int, kv_base: int = 0):
    """(Err, footprint, (n, k, T)) of a GEMM by ``hw/isa.py``, dispatched with ``pos`` and
    ``kv_base``: the footprint is [(space, lo, hi, write)] hulls of every word it reads or
    writes (absolute addresses)."""
    R, PC = p.rows, p.cols // 2
    try:
        wsrc = WSrc(f["wsrc"])
    except ValueError:
        return Err.BAD_FIELD, [], None
    T, n, k = f["t_len"], f["n_tiles"], f["k_tiles"]
    if f["dyn"] == Dyn.POS:
        if wsrc == WSrc.WGT:
            return Err.BAD_FIELD, [], None
        if wsrc == WSrc.KV_TILED:
            n = -(-(pos + T) // PC)
        else:
            k = -(-(pos + T) // R)
    if min(T, n, k) < 1:
        return Err.BAD_FIELD, [], None
    both = f["first"] and f["final"]
    if (T if both else n * T) > p.acc_entries:
        return Err.BAD_FIELD, [], None
    wbuf = Buf.WGT if wsrc == WSrc.WGT else Buf.KV
    G = -(-k // (1 << f["prm_step"]))
    w0 = f["w_addr"] + (kv_base if wbuf == Buf.KV else 0)
    fp = [(wbuf, w0, w0 + n * k * R, False),
          (Buf.ACT, f["a_addr"], f["a_addr"] + (T - 1) * f["a_stride"] + k, False)]
    if f["psrc"] == PSrc.PRM:
        fp += [(Buf.PRM, f["prm_addr"], f["prm_addr"] + n * G, False),
               (Buf.PRM, f["oprm_addr"], f["oprm_addr"] + n, False)]
    else:
        p0 = kv_base + f["prm_addr"]
        fp += [(Buf.KV, p0, p0 + n * (G + 1), False)]
    if f["final"]:
        fp += [(Buf.ACC, f["acc_addr"], f["acc_addr"] + (T - 1) * f["acc_stride"] + n, True)]
    for space, _, hi, _ in fp:
        if hi > buffer_depth(p, space):
            return Err.SRAM_RANGE, [], None
    return Err.NONE, fp, (n, k, T)


def kv_check(p: ChipParams, f: dict, pos: int, kv_base: int = 0):
    """(Err, footprint) of a KV_APPEND by ``hw/isa.py`` (absolute addresses)."""
    R, PC = p.rows, p.cols // 2
    ag = p.numerics.act_group
    T, d, cap = f["t_len"], f["d"], f["cap"]
    if T == 0 or d == 0 or d % ag or d % PC:
        return Err.BAD_FIELD, []
    if pos + T > cap:
        return Err.KV_OVERFLOW, []
    G = d // ag
    blocks = -(-cap // PC)
    key = f["kind"] == KvKind.KEY
    depth = buffer_depth(p, Buf.KV)
    kv_addr, kv_saddr = kv_base + f["kv_addr"], kv_base + f["kv_saddr"]
    if kv_addr + (blocks * d if key else cap * d // PC) > depth:
        return Err.SRAM_RANGE, []
    if kv_saddr + blocks * (G + 1) > depth:
        return Err.SRAM_RANGE, []
    act_hi = f["a_addr"] + (T - 1) * f["a_stride"] + d // R
    if act_hi > buffer_depth(p, Buf.ACT):
        return Err.SRAM_RANGE, []
    b0, b1 = pos // PC, (pos + T - 1) // PC + 1
    if key:
        data = (kv_addr + b0 * d, kv_addr + b1 * d)
    else:
        data = (kv_addr + pos * d // PC, kv_addr + (pos + T) * d // PC)
    fp = [(Buf.ACT, f["a_addr"], act_hi, False), (Buf.KV, *data, True),
          (Buf.KV, kv_saddr + b0 * (G + 1), kv_saddr + b1 * (G + 1), True)]
    return Err.NONE, fp


def intent(p: ChipParams, lay: MemLayout, word: int, pos: int, kv_base: int = 0) -> Err:
    """The error a LOAD / STORE / GEMM / KV_APPEND word must raise at ``pos`` and ``kv_base``
    (``hw/isa.py``)."""
    op, f = decode(word)
    if op in (Op.LOAD, Op.STORE):
        return _dma_check(p, lay, f)[0]
    if op == Op.GEMM:
        return gemm_check(p, f, pos, kv_base)[0]
    if op == Op.KV_APPEND:
        return kv_check(p, f, pos, kv_base)[0]
    raise ValueError(f"intent: {op!r}")


def _conflict(fa, fb) -> bool:
    for sa, la, ha, wa in fa:
        for sb, lb, hb, wb in fb:
            if sa == sb and (wa or wb) and la < hb and lb < ha:
                return True
    return False


def check_order(words: list, fps: list) -> list[str]:
    """The ordering the micro-ops ``words`` state, checked against the footprints ``fps`` (per
    word, ``[(space, lo, hi, write)]`` of a queued op, or None): for every queued op, the
    ops of *other* units issued before it that no ``WAIT`` has surely finished (``WAIT unit,
    n`` finishes all but the newest ``n`` of the unit's ops, which finish in order) must not
    conflict with it. Returns the violations (empty: the program's results do not depend on
    the units' timing). Independent of the generator's own bookkeeping."""
    issued = {u: [] for u in QUEUED}
    done = {u: 0 for u in QUEUED}  # how many of the unit's ops surely finished
    out = []
    for pc, w in enumerate(words):
        op, f = decode(w)
        if op == Op.WAIT and f["unit"] in issued:
            u = Unit(f["unit"])
            done[u] = max(done[u], len(issued[u]) - f["count"])
        elif op == Op.HALT:
            break
        elif op in OP_UNIT:
            me = OP_UNIT[op]
            fp = fps[pc] if pc < len(fps) else None
            for u in QUEUED:
                if u == me or fp is None:
                    continue
                for q in issued[u][done[u]:]:
                    if _conflict(fps[q] or [], fp):
                        out.append(f"op {pc} ({op.name}) overlaps op {q} ({u.name}) that may "
                                   f"still run")
            issued[me].append(pc)
    return out


# -- programs ---------------------------------------------------------------------------------


@dataclass
class Program:
    """One job: its micro-ops, what the generator meant, the memory model's configuration."""

    index: int
    kind: str                       # "valid" | "illegal" | "resync"
    words: list = field(default_factory=list)
    pos_init: int = 0
    expect: Err = Err.NONE
    expect_pc: int = 0
    tainted: bool = False           # the error hits with ops in flight (abort)
    late: list = field(default_factory=list)    # (lo, hi) STOREs after the failing op that
    #                                 may issue before its unit reports the error (abort)
    uops: tuple | None = None       # (lo, hi): UOPS depends on when the error arrives
    illegal: str = ""               # the ILLEGAL_KINDS entry of an illegal program
    note: str = ""
    prog_len: int | None = None     # job's prog_len if not len(words)
    placed: bool = True             # words go into the image
    prog_addr: int | None = None    # fixed job address (not placed)
    sim_skip: bool = False          # IsaSim cannot express it (program beyond memory)
    stores: list = field(default_factory=list)  # (lo, hi) bus words of STOREs issued
    budget: int = 0                 # serial cycle estimate
    mem: tuple = (0, 0, 0, 1)       # interval, jitter, jitter_max, seed
    fps: list = field(default_factory=list)     # per word: footprint of a queued op, or None
    writes: dict = field(default_factory=dict)  # Buf -> (lo, hi) hull of words written
    dumped: list = field(default_factory=list)  # (Buf, lo, hi): final STOREs to dump regions
    twin_of: int | None = None      # a valid program run again under another memory config
    resync_all: bool = False        # a resync of every buffer, whole

    @property
    def length(self) -> int:
        return len(self.words) if self.prog_len is None else self.prog_len

    @property
    def stalls(self) -> bool:
        """Whether the memory model stalls (interval > 1 or jitter)."""
        return self.mem[0] > 1 or (self.mem[1] > 0 and self.mem[2] > 0)

    def max_cycles(self, p: ChipParams, lay: MemLayout) -> int:
        """The cycle bound of the job: 3x the serial estimate of its ops (every bus word at
        the worst interval and jitter), plus the boot."""
        memf = max(1, self.mem[0]) + self.mem[2] + 1
        boot = (min(self.length, p.uop_depth + 1) * lay.uop_bus * memf
                + p.offchip_latency + self.mem[2] + 20)
        return 3 * (self.budget + boot) + 2000


class _Builder:
    """Emits micro-ops, tracking the pending footprint of every unit, ``pos`` and ``kv_base``
    (0 at the start of every job, as the chip's ``start`` sets it)."""

    def __init__(self, p: ChipParams, lay: MemLayout, rng: np.random.Generator, pos: int,
                 mem: tuple, junk: float = 0.08):
        self.p, self.lay, self.rng, self.pos, self.mem = p, lay, rng, pos, mem
        self.kv_base = 0
        self.words: list[int] = []
        self.pending = {u: [] for u in QUEUED}
        self.gemm_left = None   # (n, T) of the sums the last GEMM left, if chainable
        self.written: set = set()
        self.writes: dict = {}
        self.fps: list = []
        self.stores: list = []
        self.dumped: list = []
        self.cost = 0
        self.junk = junk
        self.memf = max(1, mem[0]) + mem[2] + 1
        self.lat = p.offchip_latency + mem[2] + 10
        self.depth = {b: buffer_depth(p, b) for b in Buf}
        self.bpw = {b: bus_words_per(p, b) for b in Buf}

    # -- low level ------------------------------------------------------------------------------

    def raw(self, word: int, cost: int = 4) -> int:
        self.words.append(int(word))
        self.fps.append(None)
        self.cost += cost
        return len(self.words) - 1

    def _junk(self, op, word):
        """Random bits above the op's argument struct (unused: the chip ignores them)."""
        top = _USED_BITS[op]
        if top < INSTR_BITS and self.rng.random() < self.junk:
            word |= int(self.rng.integers(0, 1 << 62)) << top
            word &= (1 << INSTR_BITS) - 1
        return word

    def emit(self, op, cost=4, **f) -> int:
        return self.raw(self._junk(op, encode(op, **f)), cost)

    def wait(self, unit: Unit, count: int = 0):
        self.emit(Op.WAIT, unit=unit, count=count)
        if unit in self.pending:  # at most ``count`` of the unit's ops still run: the newest
            pend = self.pending[unit]
            self.pending[unit] = pend[max(0, len(pend) - count):] if count else []

    def drain(self):
        for u in QUEUED:
            if self.pending[u]:
                self.wait(u, 0)

    def issue(self, op: Op, f: dict, fp: list, cost: int) -> int:
        """Wait for conflicting ops of other units, then emit ``op``."""
        me = OP_UNIT[op]
        for u in QUEUED:
            if u == me:
                continue
            pend = self.pending[u]
            last = max((i for i, q in enumerate(pend) if _conflict(q, fp)), default=None)
            if last is None:
                continue
            n = len(pend) - 1 - last
            if n > 15 or self.rng.random() < 0.3:
                n = 0
            self.wait(u, n)
        idx = self.emit(op, cost=cost, **f)
        self.fps[idx] = fp
        self.pending[me].append(fp)
        for space, lo, hi, w in fp:
            if w and space != OFF:
                self.written.add(space)
                a, b = self.writes.get(space, (lo, hi))
                self.writes[space] = (min(a, lo), max(b, hi))
        return idx

    def program(self, index: int, kind: str, **kw) -> Program:
        return Program(index, kind, self.words, stores=self.stores, budget=self.cost,
                       mem=self.mem, fps=self.fps, writes=dict(self.writes),
                       dumped=self.dumped, **kw)

    def _zone_off(self, buf, words) -> int | None:
        """Often, for a buffer with a zone of tame words that holds ``words`` of them: an
        address there, on a word boundary."""
        if buf not in self.lay.zones or self.rng.random() < 0.3:
            return None
        lo, hi = self.lay.zones[buf]
        bpw = self.bpw[buf]
        n = (hi - lo) // bpw
        if words > n:
            return None
        return lo + int(self.rng.integers(0, n - words + 1)) * bpw

    def _addr(self, hi: int) -> int:
        """An address in ``0 .. hi``, often an edge."""
        r = self.rng.random()
        if r < 0.12:
            return 0
        if r < 0.24:
            return hi
        return int(self.rng.integers(0, hi + 1))

    def _count(self, hi: int, bpw: int = 1) -> int:
        """A word count in ``1 .. hi``: often small, now and then ``hi`` (rarely for big
        buffers: every bus word is a cycle)."""
        r = self.rng.random()
        if r < (0.08 if hi * bpw <= _DUMP_WHOLE else 0.02):
            return hi
        if r < 0.7:
            return int(self.rng.integers(1, min(hi, 8) + 1))
        return int(self.rng.integers(1, min(hi, _BIG_DMA) + 1))

    # -- ops ------------------------------------------------------------------------------------

    def dma_cost(self, buf, words):
        return words * self.bpw[buf] * self.memf + self.lat + 20

    def load(self, buf=None, words=None, sram=None, off=None):
        rng, lay = self.rng, self.lay
        buf = Buf(int(rng.integers(0, 5))) if buf is None else buf
        depth, bpw = self.depth[buf], self.bpw[buf]
        words = self._count(min(depth, _F16), bpw) if words is None else words
        sram = self._addr(min(depth - words, _F16)) if sram is None else sram
        if off is None:
            off = self._zone_off(buf, words)
        if off is None:
            hi = (lay.data_end if rng.random() < 0.8 else lay.bus_words) - words * bpw
            off = self._addr(hi)
        f = dict(buf=buf, sram=sram, words=words, off=off)
        err, ((_, a, b), (_, c, d)) = _dma_check(self.p, lay, f)
        assert err == Err.NONE
        fp = [(buf, a, b, True), (OFF, c, d, False)]
        return self.issue(Op.LOAD, f, fp, self.dma_cost(buf, words))

    def store(self, buf=None, words=None, sram=None, off=None):
        rng, lay = self.rng, self.lay
        buf = Buf(int(rng.integers(0, 5))) if buf is None else buf
        depth, bpw = self.depth[buf], self.bpw[buf]
        words = self._count(min(depth, _F16), bpw) if words is None else words
        sram = self._addr(min(depth - words, _F16)) if sram is None else sram
        off = self._addr(lay.data_end - words * bpw) if off is None else off
        f = dict(buf=buf, sram=sram, words=words, off=off)
        err, ((_, a, b), (_, c, d)) = _dma_check(self.p, lay, f)
        assert err == Err.NONE and d <= lay.data_end
        fp = [(buf, a, b, False), (OFF, c, d, True)]
        self.stores.append((c, d))
        return self.issue(Op.STORE, f, fp, self.dma_cost(buf, words))

    def setpos(self, value=None, add=None):
        rng = self.rng
        if value is None:
            add = rng.random() < 0.4
            value = int(rng.integers(0, 6)) if add else int(rng.integers(0, 3 * self.p.cols))
            if not add and rng.random() < 0.08:  # a long context now and then
                value = int(rng.integers(0, 64 * self.p.cols))
        new = self.pos + value if add else value
        assert 0 <= new < 1 << 16
        self.pos = new
        return self.emit(Op.SETPOS, add=int(bool(add)), value=value)

    def set_kv_base(self, value=None, add=None):
        """``SETPOS reg = KV_BASE``: often back to 0, else anywhere in the KV buffer (near
        its top the KV ops that follow mostly do not fit, and are not generated)."""
        rng, kvd = self.rng, self.depth[Buf.KV]
        if value is None:
            r = rng.random()
            add = r < 0.15 and self.kv_base < kvd - 1
            if add:
                value = int(rng.integers(0, min(kvd - 1 - self.kv_base, 64) + 1))
            elif r < 0.45:
                value = 0
            elif r < 0.8:
                value = int(rng.integers(0, max(1, kvd // 2)))
            else:
                value = int(rng.integers(0, kvd))
        new = self.kv_base + value if add else value
        assert 0 <= new < kvd
        self.kv_base = new
        return self.emit(Op.SETPOS, reg=PosReg.KV_BASE, add=int(bool(add)), value=value)

    def kv_room(self, span: int) -> int | None:
        """The largest KV address field with ``span`` words at ``kv_base + field`` in the
        buffer (None if there is none)."""
        hi = min(self.depth[Buf.KV] - self.kv_base - span, _F16)
        return hi if hi >= 0 else None

    def gemm_cost(self, n, k, T):
        p = self.p
        return n * k * (2 * p.rows + T + 8) + n * T + 2 * (p.rows + p.cols) + 60

    def gemm_fields(self, chain: bool | None = None, tries: int = 40):
        """Random legal GEMM fields for the current ``pos`` (None if none found)."""
        p, rng = self.p, self.rng
        R, PC = p.rows, p.cols // 2
        for _ in range(tries):
            cont = self.gemm_left is not None and (rng.random() < 0.35 if chain is None
                                                    else chain)
            big = rng.random() < 0.12  # now and then longer runs and more tiles
            if cont:
                n, T = self.gemm_left
            elif big:
                T = int(rng.integers(1, max(2, p.acc_entries // 2) + 1))
                n = int(rng.integers(1, 9))
            else:
                T = int(rng.integers(1, 5))
                n = int(rng.integers(1, 5))
            k = int(rng.integers(1, 13 if big else 5))
            first = 0 if cont else 1
            final = int(rng.random() < (0.75 if first else 0.6))
            wsrc = WSrc(int(rng.choice(3, p=[0.5, 0.25, 0.25])))
            dyn = Dyn.STATIC
            n_field, k_field = n, k
            if wsrc != WSrc.WGT and rng.random() < 0.4:
                if wsrc == WSrc.KV_TILED:
                    ne = -(-(self.pos + T) // PC)
                    if not cont or ne == n:
                        dyn, n = Dyn.POS, ne
                        n_field = int(rng.integers(0, 256)) if rng.random() < 0.5 else 0
                else:
                    dyn, k = Dyn.POS, -(-(self.pos + T) // R)
                    k_field = int(rng.integers(0, 128)) if rng.random() < 0.5 else k
            if dyn == Dyn.STATIC:
                n_field, k_field = n, k
            if (T if first and final else n * T) > p.acc_entries:
                continue
            psrc = PSrc(int(rng.random() < 0.3))
            step = int(rng.integers(0, 8))
            G = -(-k // (1 << step))
            w_hi = self.depth[Buf.WGT] - n * k * R if wsrc == WSrc.WGT \
                else self.kv_room(n * k * R)
            if w_hi is None or w_hi < 0:
                continue
            a_stride = int(rng.integers(k, k + 4)) if rng.random() < 0.8 \
                else int(rng.integers(0, k + 1))
            a_span = (T - 1) * a_stride + k
            if a_span > self.depth[Buf.ACT]:
                continue
            f = dict(mode=GridMode(int(rng.integers(0, 2))), wsrc=wsrc, psrc=psrc,
                     first=first, final=final, dyn=dyn, w_addr=self._addr(w_hi),
                     a_addr=self._addr(self.depth[Buf.ACT] - a_span), a_stride=a_stride,
                     prm_step=step, t_len=T, k_tiles=k_field, n_tiles=n_field)
            if psrc == PSrc.PRM:
                if n * G > self.depth[Buf.PRM] or n > self.depth[Buf.PRM]:
                    continue
                f["prm_addr"] = self._addr(self.depth[Buf.PRM] - n * G)
                f["oprm_addr"] = self._addr(self.depth[Buf.PRM] - n)
            else:
                p_hi = self.kv_room(n * (G + 1))
                if p_hi is None:
                    continue
                f["prm_addr"] = self._addr(p_hi)
                f["oprm_addr"] = int(rng.integers(0, 1 << 10))  # unused with psrc = KV
            if final:
                acc_stride = int(rng.integers(n, n + 3)) if rng.random() < 0.85 \
                    else int(rng.integers(0, n + 1))  # < n: outputs overlap
                span = (T - 1) * acc_stride + n
                if span > self.depth[Buf.ACC]:
                    continue
                f["acc_addr"] = self._addr(self.depth[Buf.ACC] - span)
                f["acc_stride"] = acc_stride
            else:  # not written: any value
                f["acc_addr"] = int(rng.integers(0, 1 << 14))
                f["acc_stride"] = int(rng.integers(0, 1 << 9))
            err, fp, eff = gemm_check(p, f, self.pos, self.kv_base)
            assert err == Err.NONE, (err, f, self.pos, self.kv_base)
            return f, fp, eff
        return None

    def gemm(self, f=None, fp=None, eff=None, chain=None):
        if f is None:
            got = self.gemm_fields(chain)
            if got is None:
                return None
            f, fp, eff = got
        n, k, T = eff
        idx = self.issue(Op.GEMM, f, fp, self.gemm_cost(n, k, T))
        self.gemm_left = None if (f["first"] and f["final"] and n > 1) else (n, T)
        return idx

    def kv_cost(self, f):
        R = self.p.rows
        d = f["d"]
        return f["t_len"] * ((d // R) * (R + 5) + d // 16 + 4) + 30

    def kv_fields(self, kind=None, d=None, T=None, tries=40):
        p, rng = self.p, self.rng
        R, PC = p.rows, p.cols // 2
        L = math.lcm(p.numerics.act_group, PC)
        actd = self.depth[Buf.ACT]
        for _ in range(tries):
            kk = KvKind(int(rng.integers(0, 2))) if kind is None else kind
            dd = L * int(rng.integers(1, 5)) if d is None else d
            if dd > 255:
                continue
            TT = int(rng.integers(1, 5)) if T is None else T
            cap = self.pos + TT + (int(rng.integers(0, 9)) if rng.random() < 0.8 else 0)
            if cap >= 1 << 12:
                return None
            G = dd // p.numerics.act_group
            blocks = -(-cap // PC)
            region = blocks * dd if kk == KvKind.KEY else cap * dd // PC
            sregion = blocks * (G + 1)
            d_hi, s_hi = self.kv_room(region), self.kv_room(sregion)
            if d_hi is None or s_hi is None:
                return None
            wpr = dd // R
            a_stride = int(rng.integers(wpr, wpr + 4)) if rng.random() < 0.85 \
                else int(rng.integers(0, wpr + 1))
            span = (TT - 1) * a_stride + wpr
            if span > actd:
                continue
            f = dict(kind=kk, t_len=TT, a_addr=self._addr(actd - span), a_stride=a_stride,
                     kv_addr=self._addr(d_hi), kv_saddr=self._addr(s_hi), d=dd, cap=cap)
            err, fp = kv_check(p, f, self.pos, self.kv_base)
            assert err == Err.NONE, (err, f, self.pos, self.kv_base)
            if _conflict([fp[1]], [fp[2]]):
                continue  # data and scales on the same words: hw/isa.py orders no writes
            return f, fp
        return None

    def kv_append(self, f=None, fp=None):
        if f is None:
            got = self.kv_fields()
            if got is None:
                if self.pos:
                    self.setpos(value=int(self.rng.integers(0, 8)), add=False)
                    got = self.kv_fields()
                if got is None:
                    return None
            f, fp = got
        return self.issue(Op.KV_APPEND, f, fp, self.kv_cost(f))

    def attention(self):
        """Append a token block's keys and values, then QKᵀ (``psrc = KV``) and P·V over every
        visible key (``dyn = POS``), as a decode step does."""
        p, rng = self.p, self.rng
        R, PC = p.rows, p.cols // 2
        if self.pos > 2 * PC or rng.random() < 0.3:
            self.setpos(value=int(rng.integers(0, 2 * PC)), add=False)
        d = math.lcm(p.numerics.act_group, PC) * int(rng.integers(1, 3))
        T = int(rng.integers(1, 4))
        kf, vf = self.kv_fields(KvKind.KEY, d, T), self.kv_fields(KvKind.VALUE, d, T)
        if kf is None or vf is None:
            return
        k, v = kf[0], vf[0]
        # P·V reads k_tiles * R token rows: make them part of the region
        k["cap"] = v["cap"] = max(k["cap"], v["cap"], R * -(-(self.pos + T) // R))
        (ek, fk), (ev, fv) = kv_check(p, k, self.pos, self.kv_base), \
            kv_check(p, v, self.pos, self.kv_base)
        if ek != Err.NONE or ev != Err.NONE:
            return
        self.kv_append(k, fk)
        self.kv_append(v, fv)
        nq = -(-(self.pos + T) // PC)
        qk = dict(mode=GridMode.INT8, wsrc=WSrc.KV_TILED, psrc=PSrc.KV, first=1, final=1,
                  dyn=Dyn.POS, w_addr=k["kv_addr"],
                  a_addr=self._addr(max(0, self.depth[Buf.ACT] - T * (d // R))),
                  a_stride=d // R, acc_addr=self._addr(max(0, self.depth[Buf.ACC] - T * nq)),
                  acc_stride=nq, prm_addr=k["kv_saddr"],
                  prm_step=max(0, (p.numerics.act_group // R).bit_length() - 1),
                  oprm_addr=int(rng.integers(0, 1 << 10)), t_len=T, k_tiles=d // R,
                  n_tiles=int(rng.integers(0, 256)))
        err, fp, eff = gemm_check(p, qk, self.pos, self.kv_base)
        if err == Err.NONE:
            self.gemm(qk, fp, eff)
        kt = -(-(self.pos + T) // R)
        npv = d // PC
        pv = dict(mode=GridMode.INT8, wsrc=WSrc.KV_ROWS, psrc=PSrc.PRM,
                  first=1, final=int(rng.random() < 0.5), dyn=Dyn.POS, w_addr=v["kv_addr"],
                  a_addr=self._addr(max(0, self.depth[Buf.ACT] - T * kt)), a_stride=kt,
                  acc_addr=self._addr(max(0, self.depth[Buf.ACC] - T * npv)),
                  acc_stride=npv, prm_addr=self._addr(max(0, self.depth[Buf.PRM] - npv)),
                  prm_step=PRM_STEP_NEVER,
                  oprm_addr=self._addr(max(0, self.depth[Buf.PRM] - npv)),
                  t_len=T, k_tiles=int(rng.integers(0, 128)), n_tiles=npv)
        err, fp, eff = gemm_check(p, pv, self.pos, self.kv_base)
        if err != Err.NONE:
            return
        self.gemm(pv, fp, eff)
        if not pv["final"]:  # the second A15 plane carries on the sums
            pv2 = dict(pv, first=0, final=1,
                       a_addr=self._addr(max(0, self.depth[Buf.ACT] - T * kt)))
            err, fp, eff = gemm_check(p, pv2, self.pos, self.kv_base)
            if err == Err.NONE:
                self.gemm(pv2, fp, eff)

    def random_queued_op(self):
        """A LOAD, STORE, GEMM or KV_APPEND (no SETPOS, no WAIT but those ``issue`` needs)."""
        r = self.rng.random()
        got = None
        if r < 0.3:
            got = self.gemm()
        elif r < 0.45:
            kv = self.kv_fields()
            if kv is not None:
                got = self.kv_append(*kv)
        elif r < 0.7:
            got = self.store()
        if got is None:
            self.load()

    def random_op(self):
        rng = self.rng
        r = rng.random()
        if r < 0.22:
            self.load()
        elif r < 0.34:
            self.store()
        elif r < 0.62:
            if self.gemm() is None:
                self.load()
        elif r < 0.72:
            if self.kv_append() is None:
                self.load()
        elif r < 0.78:
            self.attention()
        elif r < 0.85:
            self.setpos()
        elif r < 0.89:
            self.set_kv_base()
        elif r < 0.93:
            self.emit(Op.NOP)
        else:  # a redundant WAIT (VEC: no such unit in this build, never waits)
            self.wait(Unit(int(rng.integers(0, 5))), int(rng.integers(0, 16)))

    def final_stores(self):
        """STORE the buffers to their dump regions: every buffer the program wrote, ACC and KV
        (stray writes of the GEMM and KV units), others now and then. A buffer of more than
        ``_DUMP_WHOLE`` bus words is dumped whole now and then, else the hull of the words
        the program wrote (so its cycles stay reasonable)."""
        for b in Buf:
            small = self.depth[b] * self.bpw[b] <= _DUMP_WHOLE
            r = self.rng.random()
            if small and (b in self.written or b in (Buf.ACC, Buf.KV) or r < 0.2):
                lo, hi = 0, self.depth[b]
            elif not small and r < 0.1:
                lo, hi = 0, self.depth[b]
            elif not small and b in self.writes:
                lo, hi = self.writes[b]
            else:
                continue
            for sram, words in _dma_chunks(lo, hi):
                self.store(b, words, sram, self.lay.dump[b] + sram * self.bpw[b])
            self.dumped.append((b, lo, hi))


def _dma_chunks(lo: int, hi: int) -> list[tuple[int, int]]:
    """(sram, words) of DMAs that cover buffer words ``lo .. hi - 1`` with 16-bit fields
    (words beyond ``2 * (2**16 - 1)`` are out of a DMA's reach: not asked for)."""
    out = []
    while lo < hi:
        sram = min(lo, _F16)
        words = min(hi - sram, _F16)
        assert words > 0, (lo, hi)
        out.append((sram, words))
        lo = sram + words
    return out


def _mem_cfg(rng) -> tuple:
    if rng.random() < 0.45:
        return (0, 0, 0, int(rng.integers(1, 1 << 31)))
    return (int(rng.choice([0, 1, 2, 3])), int(rng.choice([0, 16, 64, 200, 255])),
            int(rng.choice([1, 3, 8, 30])), int(rng.integers(1, 1 << 31)))


#: Program index of the resync job that starts run ``r``: ``_RUN_INDEX + r``.
_RUN_INDEX = 1_000_000


def _rng(seed: int, index: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, index, salt])


def gen_valid(p: ChipParams, lay: MemLayout, seed: int, index: int, n_ops: int | None = None
              ) -> Program:
    """A random valid program (ends with STOREs of the buffers to their dump regions, HALT)."""
    rng = _rng(seed, index)
    mem = _mem_cfg(rng)
    pos = int(rng.integers(0, 2 * p.cols))
    b = _Builder(p, lay, rng, pos, mem)
    n_ops = int(rng.integers(8, 30)) if n_ops is None else n_ops
    for _ in range(n_ops):
        b.random_op()
    b.final_stores()
    b.emit(Op.HALT)
    assert len(b.words) <= p.uop_depth
    bad = check_order(b.words, b.fps)
    assert not bad, f"generator: program {index} of seed {seed} races: {bad[:3]}"
    return b.program(index, "valid", pos_init=pos)


def gen_resync(p: ChipParams, lay: MemLayout, seed: int, index: int,
               regions: dict | None = None) -> Program:
    """LOAD buffer words from the data area: ``regions`` ({Buf: (lo, hi)}, the words an
    aborted job may or may not have written), or every buffer whole."""
    rng = _rng(seed, index, 1)
    mem = _mem_cfg(rng)
    b = _Builder(p, lay, rng, 0, mem, junk=0)
    whole = regions is None
    if whole:
        regions = {buf: (0, b.depth[buf]) for buf in Buf}
    for buf, (lo, hi) in sorted(regions.items()):
        for sram, words in _dma_chunks(lo, hi):
            off = b._zone_off(buf, words)
            if off is None:
                off = b._addr(lay.data_end - words * b.bpw[buf])
            b.load(buf, words, sram, off)
    b.emit(Op.HALT)
    return b.program(index, "resync", resync_all=whole, note="resync " + ", ".join(
        f"{buf.name} {lo}..{hi - 1}" for buf, (lo, hi) in sorted(regions.items())))


#: Illegal-program kinds: name -> expected error.
ILLEGAL_KINDS = {
    "illegal_op": Err.ILLEGAL_OP,
    "vec": Err.UNSUPPORTED,
    "wait_unit": Err.BAD_FIELD,
    "setpos_overflow": Err.BAD_FIELD,
    "setpos_kv_base": Err.BAD_FIELD,
    "kv_base_sram": Err.SRAM_RANGE,
    "dma_buf": Err.BAD_FIELD,
    "dma_words0": Err.BAD_FIELD,
    "dma_sram": Err.SRAM_RANGE,
    "dma_offchip": Err.OFFCHIP_RANGE,
    "gemm_wsrc": Err.BAD_FIELD,
    "gemm_dyn_wgt": Err.BAD_FIELD,
    "gemm_zero": Err.BAD_FIELD,
    "gemm_yrows": Err.BAD_FIELD,
    "gemm_sram": Err.SRAM_RANGE,
    "kv_field": Err.BAD_FIELD,
    "kv_overflow": Err.KV_OVERFLOW,
    "kv_sram": Err.SRAM_RANGE,
    "prog_range": Err.PROG_RANGE,
    "prog_load": Err.PROG_LOAD,
    "prog_beyond": Err.PROG_LOAD,
}


def _beyond(rng, hi: int, limit: int) -> int:
    """A value > ``hi`` (and < ``limit``): just past it, or far, or at the top of the field."""
    r = rng.random()
    if r < 0.5 or hi + 1 >= limit - 1:
        return min(hi + 1 + int(rng.integers(0, 3)), limit - 1)
    if r < 0.8:
        return int(rng.integers(hi + 1, limit))
    return limit - 1


def _bad_dma(b: _Builder, kind: str, rng):
    lay = b.lay
    op = Op.LOAD if rng.random() < 0.5 else Op.STORE
    buf = Buf(int(rng.integers(0, 5)))
    depth, bpw = b.depth[buf], b.bpw[buf]
    words = b._count(min(depth, _F16))
    f = dict(buf=buf, sram=b._addr(min(depth - words, _F16)), words=words,
             off=b._addr((lay.data_end if op == Op.STORE else lay.bus_words) - words * bpw))
    if kind == "dma_words0":
        f["words"] = 0
    elif kind == "dma_sram":
        r = rng.random()
        if r < 0.4:
            f["sram"] = _beyond(rng, depth - words, 1 << 16)
        elif r < 0.7 and depth - words + 1 <= _F16:  # sram + words wraps 16 bits
            f["sram"] = int(rng.integers(max(depth - words + 1, (1 << 16) - words), 1 << 16))
        else:
            f["words"] = _beyond(rng, depth - f["sram"], 1 << 16)
    elif kind == "dma_offchip":
        n_bus = words * bpw
        r = rng.random()
        if r < 0.4:
            f["off"] = _beyond(rng, lay.bus_words - n_bus, 1 << 32)
        elif r < 0.7:  # off + words wraps 32 bits
            f["off"] = int(rng.integers((1 << 32) - n_bus, 1 << 32))
        else:
            f["off"] = int(rng.integers(max(0, lay.bus_words - n_bus + 1), lay.bus_words + 1))
    word = encode(op, **f)
    if kind == "dma_buf":
        word = patch(word, "args.dma.buf", int(rng.integers(5, 8)))
    return word, op, f


def _bad_gemm(b: _Builder, kind: str, rng):
    p = b.p
    got = b.gemm_fields(chain=False)
    if got is None:
        return None
    f = dict(got[0])
    word = None
    if kind == "gemm_wsrc":
        word = patch(encode(Op.GEMM, **f), "args.gemm.wsrc", 3)
    elif kind == "gemm_dyn_wgt":
        f.update(wsrc=WSrc.WGT, dyn=Dyn.POS)
    elif kind == "gemm_zero":
        opts = ["t_len"]
        if not (f["dyn"] == Dyn.POS and f["wsrc"] == WSrc.KV_TILED):
            opts.append("n_tiles")
        if not (f["dyn"] == Dyn.POS and f["wsrc"] == WSrc.KV_ROWS):
            opts.append("k_tiles")
        f[opts[int(rng.integers(0, len(opts)))]] = 0
    elif kind == "gemm_yrows":
        both = f["first"] and f["final"]
        if f["dyn"] == Dyn.POS and f["wsrc"] == WSrc.KV_TILED:
            f["dyn"] = Dyn.STATIC
        n = max(1, f["n_tiles"])
        if both:
            f["t_len"] = _beyond(rng, p.acc_entries, 1 << 9)
        else:
            f["t_len"] = min((1 << 9) - 1, p.acc_entries // n + 1 + int(rng.integers(0, 3)))
            if f["t_len"] * n <= p.acc_entries:
                f["n_tiles"] = _beyond(rng, p.acc_entries // f["t_len"], 1 << 8)
    elif kind == "gemm_sram":
        _, _, (n, k, T) = got
        R = p.rows
        which = ["w", "a", "prm"] + (["oprm"] if f["psrc"] == PSrc.PRM else []) \
            + (["acc"] if f["final"] else [])
        w = which[int(rng.integers(0, len(which)))]
        wroom = b.depth[Buf.WGT] if f["wsrc"] == WSrc.WGT else b.depth[Buf.KV] - b.kv_base
        if w == "w":
            f["w_addr"] = _beyond(rng, max(0, wroom - n * k * R), 1 << 16)
        elif w == "a":
            f["a_addr"] = _beyond(rng, b.depth[Buf.ACT] - (T - 1) * f["a_stride"] - k, 1 << 14)
        elif w == "prm":
            G = -(-k // (1 << f["prm_step"]))
            if f["psrc"] == PSrc.PRM:
                f["prm_addr"] = _beyond(rng, b.depth[Buf.PRM] - n * G, 1 << 16)
            else:
                f["prm_addr"] = _beyond(rng, max(0, b.depth[Buf.KV] - b.kv_base - n * (G + 1)),
                                        1 << 16)
        elif w == "oprm":
            f["oprm_addr"] = _beyond(rng, b.depth[Buf.PRM] - n, 1 << 10)
        else:
            f["acc_addr"] = _beyond(rng, b.depth[Buf.ACC] - (T - 1) * f["acc_stride"] - n,
                                    1 << 14)
    if word is None:
        word = encode(Op.GEMM, **f)
    return word, Op.GEMM, f


def _bad_kv(b: _Builder, kind: str, rng):
    p = b.p
    got = b.kv_fields()
    if got is None:
        b.setpos(value=0, add=False)
        got = b.kv_fields()
        if got is None:
            return None
    f = dict(got[0])
    if kind == "kv_field":
        r = rng.random()
        if r < 0.3:
            f["t_len"] = 0
        elif r < 0.5:
            f["d"] = 0
        else:
            bad = [d for d in range(1, 256)
                   if d % p.numerics.act_group or d % (p.cols // 2)]
            f["d"] = int(rng.choice(bad))
    elif kind == "kv_overflow":
        f["cap"] = int(rng.integers(0, b.pos + f["t_len"]))
        if f["cap"] >= 1 << 12:
            f["cap"] = (1 << 12) - 1
    elif kind == "kv_sram":
        R, PC = p.rows, p.cols // 2
        d, cap = f["d"], f["cap"]
        G = d // p.numerics.act_group
        blocks = -(-cap // PC)
        region = blocks * d if f["kind"] == KvKind.KEY else cap * d // PC
        kvd = b.depth[Buf.KV] - b.kv_base  # KV words above the base
        r = rng.random()
        if r < 0.35:
            f["kv_addr"] = _beyond(rng, max(0, kvd - region), 1 << 16)
        elif r < 0.6:
            f["kv_saddr"] = _beyond(rng, max(0, kvd - blocks * (G + 1)), 1 << 16)
        elif r < 0.8:
            f["a_addr"] = _beyond(rng, b.depth[Buf.ACT] - (f["t_len"] - 1) * f["a_stride"]
                                  - d // R, 1 << 14)
        else:  # a capacity whose region leaves the buffer (pos + t_len still fits)
            per = d if f["kind"] == KvKind.KEY else d // PC
            need = (kvd - f["kv_addr"]) // per + 1  # tokens (keys: blocks) that overflow
            f["cap"] = min((1 << 12) - 1, need * (PC if f["kind"] == KvKind.KEY else 1)
                           + int(rng.integers(0, 4)))
    return encode(Op.KV_APPEND, **f), Op.KV_APPEND, f


def _base_push(b: _Builder, rng):
    """A GEMM (weights or parameters from KV) or KV_APPEND legal at the current ``kv_base``,
    after a ``SETPOS KV_BASE`` that moves its KV words past the buffer's end (the same fields
    with a smaller base fit): ``(word, op, fields)``, or None."""
    p, kvd = b.p, b.depth[Buf.KV]
    for _ in range(30):
        if rng.random() < 0.5:
            got = b.gemm_fields(chain=False)
            if got is None or (got[0]["wsrc"] == WSrc.WGT and got[0]["psrc"] == PSrc.PRM):
                continue
            op, f, fp = Op.GEMM, got[0], got[1]
        else:
            got = b.kv_fields()
            if got is None:
                continue
            op, (f, fp) = Op.KV_APPEND, got
            # the region for cap tokens (checked whole), not only the tokens written
            d, cap, PC = f["d"], f["cap"], p.cols // 2
            blocks = -(-cap // PC)
            size = blocks * d if f["kind"] == KvKind.KEY else cap * d // PC
            fp = [(Buf.KV, b.kv_base + f["kv_addr"], b.kv_base + f["kv_addr"] + size, True),
                  (Buf.KV, b.kv_base + f["kv_saddr"],
                   b.kv_base + f["kv_saddr"] + blocks * (d // p.numerics.act_group + 1), True)]
        end = max(hi for space, _, hi, _ in fp if space == Buf.KV) - b.kv_base
        lo = kvd - end + 1  # the smallest base that pushes the op out
        if lo > kvd - 1:
            continue
        base = int(rng.integers(max(lo, 0), kvd))
        word = encode(op, **f)
        if intent(p, b.lay, word, b.pos, base) != Err.SRAM_RANGE:
            continue
        b.set_kv_base(value=base, add=False)
        return word, op, f
    return None


def gen_illegal(p: ChipParams, lay: MemLayout, seed: int, index: int, kind: str | None = None
                ) -> Program:
    """A valid prefix, then one op that fails with a known error (``ILLEGAL_KINDS``); the
    prefix is drained before it (quiesced) or still in flight (``tainted``)."""
    rng = _rng(seed, index)
    mem = _mem_cfg(rng)
    kind = kind or list(ILLEGAL_KINDS)[int(rng.integers(0, len(ILLEGAL_KINDS)))]
    expect = ILLEGAL_KINDS[kind]
    pos = int(rng.integers(0, 2 * p.cols))
    b = _Builder(p, lay, rng, pos, mem)
    if kind == "prog_load":
        n = p.uop_depth + 1 + int(rng.integers(0, 40))
        if rng.random() < 0.1:
            n = (1 << 16) - 1
        return Program(index, "illegal", [encode(Op.NOP)] * n, illegal=kind, pos_init=pos,
                       expect=expect, expect_pc=0,
                       note=f"{kind}: prog_len {n} > uop_depth {p.uop_depth}",
                       placed=False, prog_addr=int(rng.integers(0, lay.bus_words)), mem=mem)
    if kind == "prog_beyond":
        n = int(rng.integers(1, 12))
        addr = (int(rng.integers(lay.bus_words - n * lay.uop_bus + 1, lay.bus_words + 1))
                if rng.random() < 0.7 else int(rng.integers(lay.bus_words, 1 << 32)))
        return Program(index, "illegal", [encode(Op.HALT)] * n, illegal=kind, pos_init=pos,
                       expect=expect, expect_pc=0, note=f"{kind}: {n} micro-ops at bus word {addr}",
                       placed=False, prog_addr=addr, sim_skip=True, mem=mem)
    for _ in range(int(rng.integers(0, 10))):
        b.random_op()
    tainted = rng.random() < 0.4 and any(b.pending.values())
    if kind == "prog_range":
        if not tainted:
            b.drain()
        return b.program(index, "illegal", illegal=kind, pos_init=pos, expect=expect,
                         expect_pc=len(b.words), tainted=tainted, note=f"{kind}: no HALT")
    if not tainted:
        b.drain()
    if kind == "setpos_overflow" and b.pos == 0:
        b.setpos(value=int(rng.integers(1, 1 << 16)), add=False)
    unit = None
    if kind == "illegal_op":
        legal = {int(o) for o in Op}
        code = int(rng.choice([c for c in range(64) if c not in legal]))
        word = code | (int(rng.integers(0, 1 << 62)) << 6 if rng.random() < 0.7 else 0)
        note = f"opcode {code:#x}"
    elif kind == "vec":
        word = Op.VEC | (int(rng.integers(0, 1 << 62)) << 6 if rng.random() < 0.7 else 0)
        note = "VEC"
    elif kind == "wait_unit":
        word = patch(encode(Op.WAIT, count=int(rng.integers(0, 16))), "args.wait.unit",
                     int(rng.integers(5, 8)))
        note = "WAIT unit 5..7"
    elif kind == "setpos_overflow":
        if rng.random() < 0.7:
            v = int(rng.integers((1 << 16) - b.pos, 1 << 16))
            word = encode(Op.SETPOS, add=1, value=v)
            note = f"SETPOS add {v} at pos {b.pos}"
        else:  # an absolute value beyond 16 bits
            v = _beyond(rng, _F16, 1 << KV_BASE_BITS)
            word = encode(Op.SETPOS, value=v)
            note = f"SETPOS {v}"
    elif kind == "setpos_kv_base":
        kvd = b.depth[Buf.KV]
        if rng.random() < 0.5:
            v = _beyond(rng, kvd - 1, 1 << KV_BASE_BITS)
            word = encode(Op.SETPOS, reg=PosReg.KV_BASE, value=v)
            note = f"SETPOS KV_BASE {v} (KV depth {kvd})"
        else:
            v = int(rng.integers(kvd - b.kv_base, (1 << KV_BASE_BITS)))
            word = encode(Op.SETPOS, reg=PosReg.KV_BASE, add=1, value=v)
            note = f"SETPOS KV_BASE add {v} at {b.kv_base} (KV depth {kvd})"
    elif kind == "kv_base_sram":
        got = _base_push(b, rng)
        if got is None:
            return gen_illegal(p, lay, seed, index, "illegal_op")
        word, op, f = got
        unit = OP_UNIT[op]
        note = f"{op.name} {f} at kv_base {b.kv_base}"
        b.cost += 200
    else:
        make = _bad_dma if kind.startswith("dma") else \
            _bad_gemm if kind.startswith("gemm") else _bad_kv
        for _ in range(30):
            got = make(b, kind, rng)
            if got is not None and intent(p, lay, got[0], b.pos, b.kv_base) == expect:
                break
        else:  # no such op found here: fall back to an illegal opcode
            return gen_illegal(p, lay, seed, index, "illegal_op")
        word, op, f = got
        unit = OP_UNIT[op]
        note = f"{op.name} {f}"
        b.cost += 200
    bad_pc = b.raw(word, 200)
    # what ran: the STOREs and buffer writes of the prefix (the ops below never issue)
    stores, writes = list(b.stores), dict(b.writes)
    # late: no WAIT on the failing unit, so queued ops after it may issue (and run, in part)
    # before the unit reports the error; they are dropped then
    late = tainted and unit is not None and rng.random() < 0.5
    if unit is not None:
        b.pending[unit].append([])
        if not late:
            b.wait(unit, 0)
    n_stores = len(b.stores)
    if late:
        for _ in range(int(rng.integers(1, 5))):
            b.random_queued_op()
    else:  # ops that must never run: they would write memory or buffers if they did
        for _ in range(int(rng.integers(0, 4))):
            b.random_op()
    if rng.random() < 0.5:
        b.store(Buf.ACC, b.depth[Buf.ACC], 0, lay.dump[Buf.ACC])
    b.emit(Op.HALT)
    prog = b.program(index, "illegal", illegal=kind, pos_init=pos, expect=expect, expect_pc=bad_pc,
                     tainted=tainted, note=f"{kind}{' (late)' if late else ''}: {note}")
    races = check_order(b.words, b.fps)
    assert not races, f"generator: program {index} of seed {seed} races: {races[:3]}"
    prog.stores, prog.dumped = stores, []
    prog.writes = dict(b.writes) if late else writes
    if late:
        prog.late = b.stores[n_stores:]
        prog.uops = (bad_pc + 1, len(b.words))
    return prog


def _stall_cfg(rng) -> tuple:
    """A memory configuration that surely stalls."""
    return (int(rng.choice([2, 3, 5])), int(rng.choice([64, 200, 255])),
            int(rng.choice([3, 8, 30])), int(rng.integers(1, 1 << 31)))


def gen_twin(prog: Program, seed: int, position: int) -> Program:
    """``prog`` (valid) again under another memory configuration: with stalls if it ran
    without, else without. Its results are compared with IsaSim like any job, and its cycle
    count with the original's (the ops' timing does not depend on data)."""
    rng = _rng(seed, prog.index, 5)
    mem = (0, 0, 0, int(rng.integers(1, 1 << 31))) if prog.stalls else _stall_cfg(rng)
    f_old = max(1, prog.mem[0]) + prog.mem[2] + 1
    f_new = max(1, mem[0]) + mem[2] + 1
    return Program(prog.index, prog.kind, prog.words, pos_init=prog.pos_init,
                   note=f"jitter twin of program {prog.index}: mem {prog.mem} -> {mem}",
                   stores=prog.stores, budget=prog.budget * max(1, -(-f_new // f_old)),
                   mem=mem, fps=prog.fps, writes=prog.writes, dumped=prog.dumped,
                   twin_of=position)


def make_programs(p: ChipParams, seed: int, n_valid: int, n_illegal: int, *,
                  twins: float = 0.1) -> list[Program]:
    """The campaign's jobs: valid and illegal programs in a random order (program ``i`` from
    ``(seed, i)`` alone); each aborted job is followed by a resync program of the words it
    may have written, and a whole resync comes now and then anyway; a fraction ``twins`` of
    the valid programs run a second time under another memory configuration
    (:func:`gen_twin`)."""
    lay = mem_layout(p)
    order = ["valid"] * n_valid + ["illegal"] * n_illegal
    _rng(seed, 0, 3).shuffle(order)
    out = []
    for i, kind in enumerate(order):
        prog = (gen_valid if kind == "valid" else gen_illegal)(p, lay, seed, i)
        out.append(prog)
        r = _rng(seed, i, 2)
        if prog.kind == "valid" and r.random() < twins:
            out.append(gen_twin(prog, seed, len(out) - 1))
        if prog.tainted:
            out.append(gen_resync(p, lay, seed, i, prog.writes))
        elif r.random() < 0.05:
            out.append(gen_resync(p, lay, seed, i))
    return out


# -- reporting ----------------------------------------------------------------------------------


def format_program(words, marks: dict | None = None, limit: int = 400) -> str:
    """A listing of micro-ops, one per line; ``marks`` {pc: two-character tag} flags lines.
    Longer than ``limit``: the start, the end and the lines around each mark."""
    marks = marks or {}
    show = set(range(len(words)))
    if len(words) > limit:
        show = set(range(20)) | set(range(len(words) - 10, len(words)))
        for m in marks:
            show |= set(range(max(0, m - 15), min(len(words), m + 6)))
    lines, gap = [], False
    for i, w in enumerate(words):
        if i not in show:
            if not gap:
                lines.append("   ...")
            gap = True
            continue
        gap = False
        try:
            op, f = decode(w)
        except ValueError as e:
            op, f = w & 63, {"?": str(e)}
        name = op.name if isinstance(op, Op) else f"op {op:#x}"
        args = ", ".join(f"{k}={v.name if hasattr(v, 'name') else v}" for k, v in f.items())
        lines.append(f"{marks.get(i, '  '):2}{i:4d}  {name:<9} {args}")
    return "\n".join(lines)


def _where(p: ChipParams, lay: MemLayout, bus: int, places: dict) -> str:
    """The region of the image a bus word lies in."""
    for b in Buf:
        lo = lay.dump[b]
        n = buffer_depth(p, b) * bus_words_per(p, b)
        if lo <= bus < lo + n:
            return f"dump region of {b.name}"
    if bus < lay.data_end:
        return "data area"
    for j, (a, n) in places.items():
        if a <= bus < a + n:
            return f"program of job {j}"
    return "program area (unused)"


def _last_writer(prog: Program, space, word: int, before: int) -> int | None:
    """The last op before pc ``before`` that writes ``word`` of ``space`` (sequentially, as
    the generator's WAITs make it on the chip too)."""
    for i in range(min(before, len(prog.fps)) - 1, -1, -1):
        for sp, lo, hi, w in prog.fps[i] or ():
            if w and sp == space and lo <= word < hi:
                return i
    return None


def _culprit(p: ChipParams, prog: Program, bus: int, marks: dict) -> str:
    """Which ops made off-chip bus word ``bus``: the STORE that wrote it, and the op that
    last wrote the buffer word it stored (marked in ``marks``: ``S>`` and ``>>``)."""
    if not prog.fps:
        return ""
    store = _last_writer(prog, OFF, bus, len(prog.fps))
    if store is None:
        return "; no STORE of this program writes it"
    marks.setdefault(store, "S>")
    (buf, a, _, _), (_, c, _, _) = prog.fps[store]
    bpw = bus_words_per(p, buf)
    word, part = a + (bus - c) // bpw, (bus - c) % bpw
    w = _last_writer(prog, buf, word, store)
    src = (f"written last by op {w} ({Op(prog.words[w] & 63).name})" if w is not None
           else "not written by this program before (state from earlier jobs)")
    if w is not None:
        marks.setdefault(w, ">>")
    return f"; STORE op {store} of {buf.name} word {word} (bus word {part} of it), {src}"


def _bytes_diff(p, lay, prog, got, ref, idx, places, ref_name, marks, limit=6) -> list[str]:
    B = p.offchip_bytes_per_cycle
    out = []
    words = np.unique(idx // B)
    for w in words[:limit]:
        a, b = w * B, (w + 1) * B
        out.append(f"  bus word {w} ({_where(p, lay, int(w), places)}"
                   f"{_culprit(p, prog, int(w), marks)}):\n"
                   f"      RTL {got[a:b].tobytes().hex()}\n"
                   f"      {ref_name:<6}{ref[a:b].tobytes().hex()}")
    if words.size > limit:
        out.append(f"  ... {words.size - limit} more bus words")
    return out


@dataclass
class Mismatch:
    seed: int
    batch: int
    job: int          # index in the batch
    program: int      # campaign program index
    kind: str
    cascade: bool     # an earlier mismatch in this run may explain it
    lines: list
    text: str = ""

    def __str__(self):
        return self.text


@dataclass
class CampaignReport:
    seed: int
    params: ChipParams
    programs: int = 0
    jobs: int = 0
    batches: int = 0
    by_kind: dict = field(default_factory=dict)
    illegal: dict = field(default_factory=dict)   # illegal kind -> jobs
    cycles: int = 0
    ops: int = 0                                  # micro-ops the chip issued (UOPS)
    worst_budget: float = 0.0                     # max cycles / max_cycles of a job
    twins: list = field(default_factory=list)     # (program, cycles no stalls, with stalls)
    late_issued: int = 0                          # jobs that issued ops past a failing op
    mismatches: list = field(default_factory=list)
    t_gen: float = 0.0
    t_rtl: float = 0.0
    t_sim: float = 0.0
    timing: bool = False                          # predicted cycles compared (--timing)
    timed_jobs: int = 0                           # jobs whose prediction was compared
    timed_cycles: int = 0                         # their RTL cycles
    timed_mismatches: int = 0                     # jobs whose prediction differs
    timed_rules: int = 0                          # legal jobs that break a timing rule
    timed_other: int = 0                          # jobs not predicted (errors, jitter)
    t_timing: float = 0.0

    def summary(self) -> str:
        slower = sum(b > a for _, a, b in self.twins)
        ill = ", ".join(f"{k} {v}" for k, v in sorted(self.illegal.items()))
        return (f"seed {self.seed}: {self.programs} programs, {self.jobs} jobs in "
                f"{self.batches} run(s) "
                f"({', '.join(f'{v} {k}' for k, v in sorted(self.by_kind.items()))}), "
                f"{self.ops} micro-ops, {self.cycles} chip cycles (slowest job at "
                f"{self.worst_budget:.0%} of its cycle bound); jitter twins: {len(self.twins)}, "
                f"{slower} slower with stalls, all compared with IsaSim"
                + (f"\n  illegal kinds: {ill}; {self.late_issued} job(s) issued ops past the "
                   f"failing one before its error arrived" if ill else "")
                + f"\n  {len(self.mismatches)} mismatching job(s); generate {self.t_gen:.1f} s, "
                f"RTL {self.t_rtl:.1f} s (incl. build), ISA sim + compare {self.t_sim:.1f} s"
                + (f"\n  timing (sim.timing.predict vs RTL): {self.timed_jobs} jobs compared, "
                   f"{self.timed_cycles} cycles, {self.timed_mismatches} mismatching; "
                   f"{self.timed_rules} legal job(s) break a predictability rule, "
                   f"{self.timed_other} not predicted (error-ending jobs); "
                   f"{self.t_timing:.1f} s" if self.timing else ""))


def compare_job(p: ChipParams, lay: MemLayout, prog: Program, rtl, sim, before: np.ndarray,
                max_cycles: int, places: dict, marks: dict | None = None) -> list[str]:
    """Run ``prog`` on ``sim`` (state carried over) and compare with the RTL's JobResult;
    returns the differences (empty: agree). ``before``: off-chip memory before the job;
    ``marks`` ({pc: tag}) receives the ops a difference points at."""
    marks = {} if marks is None else marks
    diffs = []
    # -- the ISA simulator --------------------------------------------------------------------
    if prog.sim_skip:
        s_err, s_pc, s_pos, s_cnt = prog.expect, prog.expect_pc, prog.pos_init, \
            {c: 0 for c in Counter}
    else:
        sim.pos = prog.pos_init
        sim.load_program(prog.words)
        try:
            sim.run(max_ops=prog.length + 2)
        except RuntimeError as e:
            diffs.append(f"IsaSim did not stop: {e}")
            return diffs
        s_err, s_pc, s_pos, s_cnt = sim.error, sim.error_pc, sim.pos, sim.counters
    if prog.expect != Err.NONE:
        marks[prog.expect_pc] = ">>"
    # -- the generator's intent vs IsaSim ------------------------------------------------------
    if (s_err, s_pc if s_err else 0) != (prog.expect, prog.expect_pc if prog.expect else 0):
        diffs.append(f"INTENT: generator expects {prog.expect.name} at pc {prog.expect_pc}, "
                     f"IsaSim gives {Err(s_err).name} at pc {s_pc}")
        if s_err:
            marks.setdefault(s_pc, "I>")
    # -- RTL vs IsaSim ------------------------------------------------------------------------
    if rtl.timed_out:
        diffs.append(f"RTL timed out after {max_cycles} cycles (the bound for this job)")
    if rtl.range_error:
        diffs.append("RTL: the off-chip memory model saw an out-of-range access (range_error)")
    if rtl.error != s_err:
        diffs.append(f"error: RTL {rtl.error.name}, IsaSim {Err(s_err).name}")
    if (s_err != Err.NONE or rtl.error != Err.NONE) and rtl.error_pc != s_pc:
        diffs.append(f"error_pc: RTL {rtl.error_pc}, IsaSim {s_pc}")
        if rtl.error != Err.NONE:
            marks.setdefault(rtl.error_pc, "R>")
    if rtl.pos != s_pos:
        diffs.append(f"pos: RTL {rtl.pos}, IsaSim {s_pos}")
    counters = (Counter.UOPS,) if prog.tainted else COMPARED
    for c in counters:
        got_c = rtl.counters.get(c, 0)
        if c == Counter.UOPS and prog.uops is not None:
            lo, hi = prog.uops
            if not lo <= got_c <= hi:
                diffs.append(f"counter UOPS: RTL {got_c}, not in {lo}..{hi} (the failing op, "
                             f"and ops after it issued before its unit reported the error)")
        elif got_c != s_cnt[c]:
            diffs.append(f"counter {c.name}: RTL {got_c}, IsaSim {s_cnt[c]}")
    got = rtl.offchip
    B = p.offchip_bytes_per_cycle
    if prog.tainted:
        # the chip dropped ops in flight: bytes may change only inside issued STOREs, and
        # where one STORE before the failing op covers them, to IsaSim's values (the STOREs
        # after it, ``late``, IsaSim never ran)
        allowed = np.zeros(got.size, bool)
        cover = np.zeros(got.size, np.int32)
        for lo, hi in prog.stores:
            allowed[lo * B:hi * B] = True
            cover[lo * B:hi * B] += 1
        for lo, hi in prog.late:
            allowed[lo * B:hi * B] = True
            cover[lo * B:hi * B] += 2
        changed = got != before
        bad = np.flatnonzero(changed & ~allowed)
        if bad.size:
            diffs.append(f"abort: {bad.size} off-chip bytes changed outside the program's "
                         f"STORE destinations")
            diffs += _bytes_diff(p, lay, prog, got, before, bad, places, "before", marks)
        wrong = np.flatnonzero(changed & (cover == 1) & (got != sim.offchip))
        if wrong.size:
            diffs.append(f"abort: {wrong.size} off-chip bytes written with values IsaSim's "
                         f"complete STOREs do not have")
            diffs += _bytes_diff(p, lay, prog, got, sim.offchip, wrong, places, "IsaSim",
                                 marks)
    else:
        bad = np.flatnonzero(got != sim.offchip)
        if bad.size:
            diffs.append(f"off-chip memory: {bad.size} bytes differ")
            diffs += _bytes_diff(p, lay, prog, got, sim.offchip, bad, places, "IsaSim", marks)
    return diffs


def compare_timing(p: ChipParams, prog: Program, rtl) -> tuple[str, list[str]]:
    """``sim.timing.predict`` of a job against the RTL's counters: ``("compared", diffs)``,
    ``("rule", [why])`` for a legal job that breaks a predictability rule, or ``("skip", [])``
    for a job the model does not predict (one that ends in an error, memory jitter)."""
    from sim.timing import RuleViolation, predict

    iv, jit, jmax, _ = prog.mem
    if (rtl.error != Err.NONE or prog.expect != Err.NONE or not prog.placed
            or (jit and jmax) or rtl.timed_out):
        return "skip", []
    try:
        t = predict(p, prog.words[:prog.length], interval=iv, pos_init=prog.pos_init)
    except RuleViolation as e:
        return "rule", [str(e)]
    diffs = [f"timing: counter {c.name}: predicted {v}, RTL {rtl.counters.get(c, 0)}"
             for c, v in t.counters.items() if v != rtl.counters.get(c, 0)]
    return "compared", diffs


def _pack_batches(programs: list[Program], lay: MemLayout, jobs_per_run: int, reserve: int = 0
                  ) -> list[list[Program]]:
    """Consecutive programs per memory image: as many as its program area holds (less
    ``reserve`` bus words), at most ``jobs_per_run``."""
    batches, cur, used = [], [], reserve
    for prog in programs:
        need = len(prog.words) * lay.uop_bus if prog.placed else 0
        if cur and (used + need > lay.prog_words or len(cur) >= jobs_per_run):
            batches.append(cur)
            cur, used = [], reserve
        cur.append(prog)
        used += need
    if cur:
        batches.append(cur)
    return batches


def _sync_from_dumps(p: ChipParams, lay: MemLayout, prog: Program, rtl, sim) -> bool:
    """After a mismatching job that ran to its final STOREs: take the chip's buffer words from
    its dumps into IsaSim, so later jobs are compared on equal state. True if the dumps cover
    every word the program wrote."""
    if rtl.error != Err.NONE or prog.expect != Err.NONE or not prog.dumped:
        return False
    B = p.offchip_bytes_per_cycle
    for buf, lo, hi in prog.dumped:
        bpw = bus_words_per(p, buf)
        a = (lay.dump[buf] + lo * bpw) * B
        sim.bufs[buf][lo:hi] = sim._from_bus(buf, rtl.offchip[a:a + (hi - lo) * bpw * B])
    return all(any(b == buf and lo <= wlo and whi <= hi for b, lo, hi in prog.dumped)
               for buf, (wlo, whi) in prog.writes.items())


def run_campaign(p: ChipParams, seed: int, n_valid: int, n_illegal: int, *,
                 name: str | None = None, log=print, replay: str = "",
                 jobs_per_run: int = 60, twins: float = 0.1,
                 timing: bool = False) -> CampaignReport:
    """Generate a campaign (:func:`make_programs`), run it on the RTL and compare with IsaSim
    (:func:`run_programs`); ``timing``: also the cycles ``sim.timing.predict`` predicts."""
    t0 = time.perf_counter()
    programs = make_programs(p, seed, n_valid, n_illegal, twins=twins)
    t_gen = time.perf_counter() - t0
    rep = run_programs(p, programs, seed, name=name, log=log, replay=replay,
                       jobs_per_run=jobs_per_run, timing=timing)
    rep.t_gen += t_gen
    rep.programs = n_valid + n_illegal
    return rep


def run_programs(p: ChipParams, programs: list[Program], seed: int, *, name: str | None = None,
                 log=print, replay: str = "", jobs_per_run: int = 60,
                 timing: bool = False) -> CampaignReport:
    """With ``timing`` every job runs without memory jitter (its interval kept) and each
    legal one is also compared with :func:`sim.timing.predict` (:func:`compare_timing`): its
    predicted timed counters must equal the RTL's.

    Lay ``programs`` out in memory images (random bytes from ``seed`` and the run's
    number; as many programs per image as its program area holds, at most ``jobs_per_run``),
    run each image's programs as jobs of one :func:`sim.chip_rtl.run_jobs` call, and compare
    every job with IsaSim (one instance per image, its state carried from job to job as the
    chip's buffers are). ``log`` gets a progress line per run and every mismatch."""
    from sim.chip_rtl import Job, run_jobs
    from sim.isa_sim import IsaSim

    rep = CampaignReport(seed, p, timing=timing)
    t0 = time.perf_counter()
    lay = mem_layout(p)
    if timing:  # deterministic memory: the jitter dropped, the interval kept
        for prog in programs:
            prog.mem = (prog.mem[0], 0, 0, prog.mem[3])
    # every run starts with the buffers loaded whole from its image (random and tame words)
    where = {id(prog): i for i, prog in enumerate(programs)}  # twin_of: a list position
    reserve = (len(Buf) + 1) * lay.uop_bus
    batches = _pack_batches(programs, lay, jobs_per_run, reserve)
    batches = [[gen_resync(p, lay, seed, _RUN_INDEX + bi), *batch]
               for bi, batch in enumerate(batches)]
    rep.t_gen = time.perf_counter() - t0
    rep.programs = sum(prog.kind != "resync" and prog.twin_of is None for prog in programs)
    B = p.offchip_bytes_per_cycle
    cycles_at = {}
    t_start = time.perf_counter()
    for bi, batch in enumerate(batches):
        t0 = time.perf_counter()
        image = make_image(p, lay, seed, bi)
        jobs, places, addr = [], {}, lay.prog_base
        for ji, prog in enumerate(batch):
            if prog.placed:
                raw = b"".join(w.to_bytes(lay.uop_bus * B, "little") for w in prog.words)
                image[addr * B:addr * B + len(raw)] = np.frombuffer(raw, np.uint8)
                pa = addr
                places[ji] = (addr, len(prog.words) * lay.uop_bus)
                addr += len(prog.words) * lay.uop_bus
            else:
                pa = prog.prog_addr
            iv, jit, jmax, mseed = prog.mem
            jobs.append(Job(prog_addr=pa, prog_len=prog.length, pos_init=prog.pos_init,
                            interval=iv, jitter=jit, jitter_max=jmax, seed=mseed,
                            max_cycles=prog.max_cycles(p, lay)))
        rep.t_gen += time.perf_counter() - t0
        t0 = time.perf_counter()
        results = run_jobs(p, image, jobs, name=name)
        t_run = time.perf_counter() - t0
        rep.t_rtl += t_run
        t0 = time.perf_counter()
        sim = IsaSim(p, offchip=image)
        dirty = False
        run_cycles, run_bad = 0, 0
        for ji, (prog, res, job) in enumerate(zip(batch, results, jobs, strict=True)):
            rep.jobs += 1
            k = prog.kind + (" (abort)" if prog.tainted else "") + \
                (" (jitter twin)" if prog.twin_of is not None else "")
            rep.by_kind[k] = rep.by_kind.get(k, 0) + 1
            if prog.kind == "illegal":
                ik = prog.illegal + (" (late)" if prog.late or prog.uops else "")
                rep.illegal[ik] = rep.illegal.get(ik, 0) + 1
            cyc = res.counters.get(Counter.CYCLES, 0)
            rep.cycles += cyc
            run_cycles += cyc
            rep.ops += res.counters.get(Counter.UOPS, 0)
            rep.worst_budget = max(rep.worst_budget, cyc / job.max_cycles)
            if prog.uops is not None and res.counters.get(Counter.UOPS, 0) > prog.uops[0]:
                rep.late_issued += 1
            before = sim.offchip.copy()
            marks: dict = {}
            diffs = compare_job(p, lay, prog, res, sim, before, job.max_cycles, places, marks)
            if timing:
                t1 = time.perf_counter()
                what, tdiffs = compare_timing(p, prog, res)
                rep.t_timing += time.perf_counter() - t1
                if what == "compared":
                    rep.timed_jobs += 1
                    rep.timed_cycles += cyc
                    rep.timed_mismatches += bool(tdiffs)
                    diffs += tdiffs
                elif what == "rule":
                    rep.timed_rules += 1
                else:
                    rep.timed_other += 1
            if id(prog) in where:
                cycles_at[where[id(prog)]] = (cyc, prog.stalls)
            if prog.twin_of is not None and prog.twin_of in cycles_at and not timing:
                other = cycles_at[prog.twin_of][0]
                quiet, stalled = (other, cyc) if prog.stalls else (cyc, other)
                rep.twins.append((prog.index, quiet, stalled))
                if stalled <= quiet and not res.timed_out:
                    diffs.append(f"jitter twin: {stalled} cycles with memory stalls, "
                                 f"{quiet} without (the stalls were not applied?)")
            if prog.tainted:  # IsaSim completed what the chip dropped: take the chip's memory
                sim.offchip[:] = res.offchip
            if diffs:
                run_bad += 1
                m = Mismatch(seed, bi, ji, prog.index, prog.kind, dirty, diffs)
                hdr = (f"MISMATCH seed {seed} run {bi} job {ji} (program {prog.index}, "
                       f"{prog.kind}{', abort' if prog.tainted else ''}"
                       f"{', after an earlier mismatch in this run' if dirty else ''})"
                       f"{': ' + prog.note if prog.note else ''}\n"
                       f"  job: prog_addr {job.prog_addr} prog_len {job.prog_len} pos_init "
                       f"{job.pos_init} mem interval/jitter/max/seed {prog.mem} "
                       f"max_cycles {job.max_cycles}; RTL {res.error.name} pc {res.error_pc} "
                       f"cycles {cyc}\n")
                body = "\n".join("  " + d for d in diffs)
                legend = ("  program (>> the failing op or the last writer of a differing "
                          "word, S> its STORE, R> the RTL's error_pc, I> IsaSim's):\n")
                listing = format_program(prog.words, marks) if prog.placed else \
                    f"  ({prog.length} micro-ops, not placed)"
                m.text = hdr + body + "\n" + legend + listing + (
                    f"\n  replay: {replay}" if replay else "")
                rep.mismatches.append(m)
                log(m.text)
                # keep comparing: take the chip's memory (and the buffers it dumped)
                sim.offchip[:] = res.offchip
                if not (not prog.tainted and _sync_from_dumps(p, lay, prog, res, sim)):
                    dirty = True
            if prog.kind == "resync" and prog.resync_all:
                dirty = False
        rep.batches += 1
        rep.t_sim += time.perf_counter() - t0
        log(f"run {bi + 1}/{len(batches)}: {len(batch)} jobs, {run_cycles} cycles in "
            f"{t_run:.1f} s, {run_bad} mismatching; total {rep.jobs} jobs, "
            f"{len(rep.mismatches)} mismatching, {time.perf_counter() - t_start:.0f} s")
    return rep

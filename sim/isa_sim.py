"""The instruction-level simulator: micro-op programs on numpy state, bit for bit what the chip
computes (the ISA and its data formats are ``hw/isa.py``; the arithmetic is ``sim/golden.py``).

The simulator runs the program sequentially, one micro-op at a time, each to completion. That
is what the chip computes for any program whose ``WAIT``\\ s order every two ops of different
units that share data (the compiler's contract, ``hw/isa.py``): each op sees the same operands.
It models no time.

State (:class:`IsaSim`): off-chip memory ``offchip`` (uint8, ``ChipParams.offchip_kib`` KiB;
bus word ``i`` is bytes ``[i * B, (i + 1) * B)``, ``B = offchip_bytes_per_cycle``); every
buffer of :class:`hw.isa.Buf` as raw little-endian words ``bufs[buf]`` (uint8
``[buffer_depth, word_bytes]``, the bits above the word's width kept 0), decoded and encoded
by the leaves of their layouts (:func:`hw.isa.leaf_fields`): the host helpers with
:func:`hw.isa.unpack_words` / :func:`hw.isa.pack_words`, the micro-ops through a faster codec
of the same bits (byte-aligned fields as numpy views, :class:`_Codec`); the group scaler's 64-bit
sums ``y`` (int64 ``[acc_entries, cols]``, kept between micro-ops as the RTL's accumulator
memory); the context registers ``pos`` and ``kv_base`` (every KV address an op computes is
``kv_base + field``, ``hw/isa.py``); ``pc``, ``done``, ``error``, ``error_pc``; the
performance counters ``counters``.

Micro-ops are decoded with :func:`hw.isa.decode`. A word whose enum field holds a value the
enum does not define (``decode`` refuses it) is decoded field by field with the same layout
through :func:`hw.isa.unpack_words` of :data:`hw.isa.INSTR`, and the op then fails with
``Err.BAD_FIELD``.

Execution: every op runs through a dispatch table, ``IsaSim.handlers`` (:class:`hw.isa.Op` ->
``handler(args)``, ``args`` the decoded fields). A handler checks everything first, raising
:class:`OpError` with the :class:`hw.isa.Err`, and only then writes: a failing op writes
nothing. ``VEC`` runs only on a simulator built with ``vector=True`` (the chip with its
vector unit); otherwise, as on the RTL without it, ``VEC`` is ``Err.UNSUPPORTED``.
``done`` means stopped, as the chip's ``done``: by ``HALT``
(``pc`` stays on it) or by an error (``error``, ``error_pc`` = the failing op's index, ``pc``
stays there). Checks and their order:

- ``pc`` beyond the program: ``PROG_RANGE`` (``error_pc = pc``); a program longer than
  ``uop_depth`` (or, with :meth:`IsaSim.boot`, beyond the off-chip memory): ``PROG_LOAD``
  (``error_pc = 0``, nothing runs);
- an opcode not in ``Op``: ``ILLEGAL_OP``; an op without a handler: ``UNSUPPORTED`` (before its
  fields are looked at: a chip without the unit cannot judge them);
- ``WAIT``: ``unit`` not a ``Unit``: ``BAD_FIELD`` (otherwise nothing to do sequentially);
- ``SETPOS``: ``BAD_FIELD`` if the register's new value leaves its range (``pos``:
  0..65535, 16 bits; ``kv_base``: 0 .. KV depth - 1); the register keeps its value;
- ``LOAD`` / ``STORE``: unknown ``buf`` or ``words = 0``: ``BAD_FIELD``;
  ``sram + words > depth``: ``SRAM_RANGE``; ``off + words * bus_words_per > bus words``:
  ``OFFCHIP_RANGE``. An on-chip word is ``bus_words_per`` bus words, low bits first; STORE
  writes zeros above the word's width, LOAD ignores those bits;
- ``GEMM``: unknown ``wsrc``, ``dyn = POS`` with ``wsrc = WGT``, ``t_len``, ``k_tiles``,
  ``n_tiles`` (after ``dyn``) < 1, or more ``y`` rows than ``acc_entries``: ``BAD_FIELD``;
  then every word the op reads or writes: ``SRAM_RANGE``;
- ``KV_APPEND``: ``t_len = 0``, ``d`` 0 or not a multiple of ``act_group`` and of ``PC``:
  ``BAD_FIELD``; ``pos + t_len > cap``: ``KV_OVERFLOW``; the region for ``cap`` tokens (data
  and scales) or the ACT rows beyond their buffers: ``SRAM_RANGE``.
- ``VEC``: the checks of :class:`hw.isa.VecArgs`, in its order (fields, ranges, V scales).

Readings where ``hw/isa.py`` leaves a choice (closest to the RTL, ``hw/gemm.py``):

- GEMM ``exp`` of row ``t`` is that of its ACT word on the last K-tile (the scaler rounds with
  the ``exp`` of the row that carries ``final``); with ``dyn = POS`` the computed
  ``n_tiles`` / ``k_tiles`` replaces the field's value;
- all arithmetic of the group scaler is modulo 2**64 as in its 64-bit registers
  (``Z << gshift`` and ``Y`` wrap; the golden model's inputs never get there), and the rounding
  shift is exact for every 64-bit ``Y`` (the RTL's 65-bit adder; :func:`round_output`) where
  ``sim.golden.rshift_round`` assumes ``|Y| < 2**62``;
- INT8-mode lanes ``c >= PC`` see ``acc = 0`` and still go through the scaler with their PRM
  column parameters (``offset * xsum``, ``bias``): they are 0 when those parameters are 0,
  as the compiler writes them;
- ``psrc = KV``: lanes ``c >= PC`` have no key lane: scale 0 and exponent 0 (``shift =
  frac_bits``, which matters when such an op carries on sums a W4A8 op left);
- every tile reads its group word and its out word (PRM ``oprm_addr + j``, or the KV exponent
  word), so both are range-checked for every op, final or not (as ``hw/gemm_engine.py``);
  ACC words only for ``final`` ops;
- ``prm_step = 7`` (:data:`hw.isa.PRM_STEP_NEVER`) follows the formula too: one group word per
  block while ``k_tiles <= 128`` (a ``dyn`` ``k_tiles`` may exceed it);
- ACC outputs land in tile order (block ``j``, then row ``t``): if two land on one word
  (``acc_stride`` too small), the later one stays;
- VEC runs the ``sim.golden`` function of its ``fn`` on whole operands, every source read
  before any word is written; ``eps`` of the norms goes to the golden function as
  ``eps_q32 / 2**(2 F)`` (which it rounds back to ``eps_q32`` exactly);
- KV_APPEND takes a token's row ``exp`` from its first ACT word and group ``g``'s scale from the
  ACT word where the group starts (word ``g * act_group / R``); the "16" of the KV layout is
  ``Numerics.act_group``; a KV scale lane is ``gshift | gzero << 5`` (bits 6, 7 zero; ignored
  when read); lanes of the KV words that KV_APPEND does not address keep their contents.

Speed (the simulator is the default device of the runtime; ``scripts/bench_isa.py``): a GEMM
regroups the scaler's sums (exactly, modulo 2**64) into float64 matmuls whose every partial sum
is an integer below 2**53 (:meth:`IsaSim._gemm`; ``tests/test_isa_gemm_exact.py`` checks every
way against the formula in Python integers); what a GEMM's fields fix (checks, addresses) is
kept per op, as programs run once per token; big temporaries live in reused scratch memory.

Counters (:class:`hw.isa.Counter`): ``UOPS`` (micro-ops fetched: every executed op including
``HALT`` and a failing one), ``GRID_ROWS`` (per GEMM ``n_tiles * k_tiles * t_len``),
``LOAD_WORDS`` / ``STORE_WORDS`` (bus words moved by completed LOAD / STORE). ``CYCLES``,
``BUSY_*`` and ``STALL_*`` need a timing model: only the RTL measures them; here they stay 0
(:data:`TIMED_COUNTERS`). :meth:`IsaSim.run` zeroes every counter when it starts.
"""

import enum as py_enum
import math
from collections.abc import Callable

import numpy as np
from amaranth.lib import data

from hw.isa import (
    ARGS,
    INSTR,
    INSTR_BITS,
    OP_ARGS,
    OP_UNIT,
    Buf,
    Counter,
    Dyn,
    Err,
    GridMode,
    KvKind,
    Op,
    PosReg,
    PSrc,
    QuantMode,
    Unit,
    VecBuf,
    VecFn,
    WSrc,
    act_word,
    buffer_depth,
    bus_words_per,
    check_params,
    decode,
    leaf_fields,
    pack_words,
    unpack_words,
    word_bytes,
    word_layout,
)
from hw.params import ChipParams
from hw.vector.elementwise import ROPE_TRIG_BITS
from hw.vector.norm import EPS_BITS
from sim import golden as G
from sim.golden import rshift_round, saturate

__all__ = ["IsaSim", "OpError", "TIMED_COUNTERS", "UNTIMED_COUNTERS", "round_output", "isa_jobs"]

#: Counters only a timing model (the RTL) measures; the simulator leaves them 0.
TIMED_COUNTERS = (
    Counter.CYCLES,
    Counter.BUSY_LOAD,
    Counter.BUSY_STORE,
    Counter.BUSY_GEMM,
    Counter.BUSY_VEC,
    Counter.BUSY_KV,
    Counter.STALL_WAIT,
    Counter.STALL_QUEUE,
    Counter.STALL_MEM,
)
#: Counters the simulator counts as the chip does (the RTL must match them exactly).
UNTIMED_COUNTERS = tuple(c for c in Counter if c not in TIMED_COUNTERS)

POS_MAX = (1 << 16) - 1
#: VEC functions that hold a whole row (``ChipParams.vector_row`` bounds their length).
_ROW_FNS = (VecFn.QUANT, VecFn.LAYERNORM, VecFn.RMSNORM, VecFn.SOFTMAX)
#: ``VEC QUANT vfold`` reads probabilities as their low 17 bits (``0 .. 2**F``).
_P_MASK = (1 << 17) - 1
#: Bound on the int64 temporaries of one GEMM chunk (elements).
_CHUNK = 1 << 21
#: GEMM plans (and weight row indices) kept at most; all are dropped when full.
_PLANS = 1 << 14


class OpError(Exception):
    """Raised by a handler when its micro-op fails (before it has written anything)."""

    def __init__(self, err: Err, why: str = ""):
        super().__init__(f"{err.name}: {why}" if why else err.name)
        self.err = Err(err)


def _enum(cls, value, name):
    """An enum field's value, or ``BAD_FIELD`` if the raw value is not one of ``cls``."""
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        raise OpError(Err.BAD_FIELD, f"{name} = {value} is not a {cls.__name__}") from None


def _leaf(layout) -> str:
    """The path of a layout's only leaf (an array of scalars: WGT, KV and ACC words)."""
    (leaf,) = leaf_fields(layout)
    return leaf[0]


def _signed(v, bits):
    """``bits``-bit two's complement values of unsigned ``v`` (int64)."""
    half = 1 << (bits - 1)
    return ((np.asarray(v, np.int64) + half) & ((1 << bits) - 1)) - half


def round_output(y, sh):
    """The scaler's output rounding of 64-bit sums ``y`` by ``sh = shift - exp``:
    ``sim.golden.rshift_round``, and beyond its ``|y| < 2**62`` domain the exact result of the
    RTL's 65-bit rounding adder, ``(y >> s) + bit s - 1 of y`` (``hw/gemm.py``, stage 5).
    When every shift is a right shift below 63 (the usual case) that formula alone gives the
    result: it equals ``rshift_round``'s ``(y + 2**(s - 1)) >> s`` wherever that is defined."""
    y, sh = np.asarray(y, np.int64), np.asarray(sh, np.int64)
    if sh.size and 0 < sh.min() and sh.max() < 63:
        return np.right_shift(y, sh) + (np.right_shift(y, sh - 1) & 1)
    out = rshift_round(y, sh)
    big = (sh > 0) & (sh < 63) & ((y >= 1 << 62) | (y < -(1 << 62)))
    if np.any(big):
        s = np.clip(sh, 1, 62)
        exact = np.right_shift(y, s) + (np.right_shift(y, s - 1) & 1)
        out = np.where(big, exact, out)
    return out


def _fits(dtype, lo, hi) -> bool:
    """Every value of integer (or bool) ``dtype`` lies in ``lo .. hi``."""
    if dtype.kind == "b":
        return lo <= 0 and 1 <= hi
    if dtype.kind in "iu":
        info = _INFO.get(dtype)
        if info is None:
            info = _INFO[dtype] = np.iinfo(dtype)
        return lo <= info.min and info.max <= hi
    return False


_INFO: dict = {}


class _Codec:
    """Fast access to the fields of one layout's raw words (the layout's leaves,
    :func:`hw.isa.leaf_fields`; the same bits :func:`hw.isa.unpack_words` /
    :func:`hw.isa.pack_words` decode and encode, without their int64 copies and bit arrays).

    :meth:`get`: byte-aligned 8/16/32-bit leaves are numpy *views* of the raw bytes (int8,
    uint8, int16, ... as the leaf's signedness says; read them before the bytes change),
    other scalar leaves int64 from the bytes that hold them, shifted and masked, other array
    leaves of up to 25 bits (the PRM group word's 22-bit scales) int32 / uint32 from a 4-byte
    window per element, anything else through ``unpack_words``. :meth:`pack`:
    {path: values} -> raw words, values range-checked as ``pack_words`` does (same
    ``ValueError``); a layout with a sub-byte array leaf (the PRM group word's 22-bit
    scales; the simulator never writes one) packs through ``pack_words``."""

    def __init__(self, layout):
        self.layout = layout
        self.nbytes = word_bytes(layout)
        self.plan = {}
        self.packable = True
        for path, off, width, sgn, count in leaf_fields(layout):
            lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if sgn else (0, (1 << width) - 1)
            if off % 8 == 0 and width in (8, 16, 32):
                nb = width // 8
                dtype = np.dtype(f"<{'i' if sgn else 'u'}{nb}")
                kind = ("view", off // 8, off // 8 + nb * count, dtype)
            elif count == 1 and (off + width - 1) // 8 - off // 8 < 7:
                # a scalar: the (at most 7) bytes it spans, shifted together in an int64
                kind = ("scalar", off // 8, (off + width - 1) // 8, off % 8)
            elif width <= 25:  # an array: each element's 4 bytes (clipped to the word) as a
                # uint32, shifted up to its top bit and back down (sign-extending if signed)
                starts = off + width * np.arange(count)
                idx = np.minimum((starts // 8)[:, None] + np.arange(4), self.nbytes - 1)
                up = (32 - width - starts % 8).astype(np.uint32)
                kind = ("array", idx, up, np.dtype("<i4" if sgn else "<u4"), 32 - width)
                self.packable = False
            else:
                kind = ("codec",)  # through unpack_words / pack_words
                self.packable = False
            self.plan[path] = (kind, width, sgn, count, lo, hi)
        # pack ORs the scalar leaves together in one int64: their bytes must fit in 7
        spans = [(k[1], k[2]) for k, *_ in self.plan.values() if k[0] == "scalar"]
        self.tail_bytes = (min(a for a, _ in spans), max(b for _, b in spans)) if spans \
            else (0, -1)
        self.packable &= self.tail_bytes[1] - self.tail_bytes[0] < 7

    def get(self, raw, path):
        """Field ``path`` of the words ``raw`` (uint8 [..., nbytes], the last axis contiguous):
        [...] for a scalar leaf, [..., count] for an array."""
        kind, width, sgn, count, _, _ = self.plan[path]
        if kind[0] == "view":
            v = raw[..., kind[1]: kind[2]].view(kind[3])
            return v[..., 0] if count == 1 else v
        if kind[0] == "codec":
            return unpack_words(self.layout, raw)[path]
        if kind[0] == "array":
            _, idx, up, dtype, down = kind
            g = np.take(raw, idx, axis=-1).view("<u4")[..., 0]  # [..., count]
            return (g << up).view(dtype) >> down
        _, first, last, sh = kind
        v = raw[..., first].astype(np.int64)
        for k in range(1, last - first + 1):
            v |= raw[..., first + k].astype(np.int64) << (8 * k)
        v = (v >> sh) & ((1 << width) - 1)
        if sgn:
            half = 1 << (width - 1)
            v = (v ^ half) - half
        return v

    def tail(self, raw):
        """The bytes of the scalar leaves of words ``raw`` as one integer per word (a view;
        the index of :meth:`tail_table`), or None if they span more than 2 bytes."""
        lo, hi = self.tail_bytes
        if hi - lo > 1:
            return None
        return raw[..., lo: hi + 1].view("<u2" if hi > lo else "u1")[..., 0]

    def tail_table(self, path):
        """Scalar leaf ``path`` for every value of :meth:`tail` (int64)."""
        kind, width, sgn, _, _, _ = self.plan[path]
        lo, hi = self.tail_bytes
        v = (np.arange(1 << (8 * (hi - lo + 1))) >> (8 * (kind[1] - lo) + kind[3])) & (
            (1 << width) - 1)
        if sgn:
            half = 1 << (width - 1)
            v = (v ^ half) - half
        return v

    def get_scalars(self, raw, paths):
        """:meth:`get` of several scalar leaves, their bytes gathered once (int64 each)."""
        plans = [self.plan[p] for p in paths]
        if any(k[0][0] != "scalar" for k in plans):
            return [np.asarray(self.get(raw, p), np.int64) for p in paths]
        first = min(k[0][1] for k in plans)
        last = max(k[0][2] for k in plans)
        v = raw[..., first].astype(np.int64)
        for b in range(first + 1, last + 1):
            v |= raw[..., b].astype(np.int64) << (8 * (b - first))
        out = []
        for (kind, width, sgn, _, _, _) in plans:
            f = v >> (8 * (kind[1] - first) + kind[3]) & ((1 << width) - 1)
            if sgn:
                half = 1 << (width - 1)
                f = (f ^ half) - half
            out.append(f)
        return out

    def pack(self, fields: dict, n: int | None = None):
        """{field path: int array [n, ...]} -> raw words uint8 [n, nbytes]; missing fields 0."""
        if not self.packable or not set(fields) <= set(self.plan):
            return pack_words(self.layout, fields, n)  # (its ValueError names unknown fields)
        if n is None:
            n = len(np.asarray(next(iter(fields.values())))) if fields else 1
        raw = np.zeros((n, self.nbytes), np.uint8)
        tail, base = 0, self.tail_bytes[0]  # the scalar leaves, OR-ed from byte base on
        for path, value in fields.items():
            kind, width, sgn, count, lo, hi = self.plan[path]
            v = np.asarray(value)
            if v.size and not _fits(v.dtype, lo, hi) and (v.min() < lo or v.max() > hi):
                raise ValueError(f"pack_words: field {path} has values in {v.min()}..{v.max()}, "
                                 f"outside its {width}-bit range {lo}..{hi}")
            if kind[0] == "view":
                raw[:, kind[1]: kind[2]].view(kind[3])[...] = v.reshape(n, count)
                continue
            _, first, last, sh = kind
            tail = tail | (np.asarray(v, np.int64).reshape(n) & ((1 << width) - 1)) << (
                8 * (first - base) + sh)
        if not isinstance(tail, int):
            top = self.tail_bytes[1]
            if top - base < 2:
                raw[:, base: top + 1].view("<u2" if top > base else "u1")[:, 0] = tail
            else:
                for b in range(base, top + 1):
                    raw[:, b] = (tail >> (8 * (b - base))) & 0xFF
        return raw


class _GemmPlan:
    """What a ``GEMM``'s fields fix (:meth:`IsaSim._gemm_plan`)."""

    __slots__ = ("mode", "wsrc", "psrc", "t_len", "k_tiles", "n_tiles", "first", "final", "step",
                 "groups", "act", "pbuf", "params", "out", "wbuf", "weights", "lut", "lanes",
                 "bound", "group_starts", "acc_idx", "distinct")


class IsaSim:
    """Executes micro-op programs (see the module docstring for state, checks and counters).

    ``offchip``: initial off-chip contents (uint8, at most ``offchip_kib`` KiB, copied to the
    start of a zeroed memory). ``vector``: the chip has the vector unit (``VEC`` runs;
    ``hw.chip.Chip(params, vector=True)``); without it, as ``Chip(params)``, ``VEC`` is
    ``Err.UNSUPPORTED``. Typical
    use::

        sim = IsaSim(params)
        sim.write_offchip(addr, sim.image_words(Buf.ACT, fields))
        sim.load_program([encode(Op.LOAD, ...), ..., encode(Op.HALT)])
        assert sim.run() == Err.NONE
        out = sim.offchip_words(Buf.ACC, sim.read_offchip(out_addr, n))
    """

    def __init__(self, params: ChipParams = ChipParams(), offchip: np.ndarray | None = None,
                 vector: bool = False):
        check_params(params)
        self.params = params
        p = params
        size = p.offchip_kib * 1024
        self.offchip = np.zeros(size, np.uint8)
        if offchip is not None:
            init = np.asarray(offchip, np.uint8).ravel()
            if init.size > size:
                raise ValueError(f"IsaSim: offchip has {init.size} bytes, the memory {size}")
            self.offchip[: init.size] = init
        self.bus_bytes = p.offchip_bytes_per_cycle
        self.bus_words = size // self.bus_bytes

        self.layouts = {b: word_layout(p, b) for b in Buf}
        self.depth = {b: buffer_depth(p, b) for b in Buf}
        self.bus_per = {b: bus_words_per(p, b) for b in Buf}
        self._nbytes = {b: word_bytes(self.layouts[b]) for b in Buf}
        self._mask = {}
        for b in Buf:
            m = np.full(self._nbytes[b], 0xFF, np.uint8)
            rem = data.Layout.cast(self.layouts[b]).size % 8
            if rem:
                m[-1] = (1 << rem) - 1
            self._mask[b] = m
        #: The last byte's mask where a word's width is not a whole number of bytes (LOAD).
        self._mask_last = {b: int(self._mask[b][-1]) for b in Buf if self._mask[b][-1] != 0xFF}
        self._codec = {b: _Codec(self.layouts[b]) for b in Buf}
        self.bufs = {b: np.zeros((self.depth[b], self._nbytes[b]), np.uint8) for b in Buf}
        # the grid's view of a weight byte, as float64 (exact): INT8, or two INT4 lanes lo, hi
        byte = np.arange(256)
        self._w_lut = {GridMode.INT8: _signed(byte, 8).astype(np.float64),
                       GridMode.W4A8: np.stack([_signed(byte & 15, 4), _signed(byte >> 4, 4)],
                                               axis=-1).astype(np.float64)}
        self._w_max = {m: int(np.abs(lut).max()) for m, lut in self._w_lut.items()}  # |weight|
        self._w_int8 = self._w_lut[GridMode.INT8]
        if not np.array_equal(self._w_int8, byte.astype(np.uint8).view(np.int8)):
            self._w_int8 = None
        act = self._codec[Buf.ACT]
        self._x_max = 1 << (act.plan["data"][1] - 1)  # largest |activation|
        # an ACT word's mantissa 2**gshift (0 if gzero) and exp, by the bytes that hold them
        self._act_mant = self._act_exp = None
        if act.tail(np.zeros((1, act.nbytes), np.uint8)) is not None:
            gshift, gzero = act.tail_table("gshift"), act.tail_table("gzero")
            self._act_mant = np.where(gzero != 0, 0, np.left_shift(1, gshift))
            self._act_exp = act.tail_table("exp")
        self._scratch_bufs: dict[str, np.ndarray] = {}
        # whether ACC words are just C int32 lanes: GEMM outputs, saturated to 32 bits, are
        # then written through an int32 view
        kind = self._codec[Buf.ACC].plan[_leaf(self.layouts[Buf.ACC])][0]
        self._acc_int32 = kind == ("view", 0, 4 * p.cols, np.dtype("<i4")) \
            and self._nbytes[Buf.ACC] == 4 * p.cols
        self._plans: dict[tuple, _GemmPlan] = {}
        self._tile_rows_cache: dict[tuple, np.ndarray] = {}
        self.y = np.zeros((p.acc_entries, p.cols), np.int64)
        # the KV scale lane: gshift | gzero << (width of an ACT word's gshift)
        self._gshift_bits = {path: w for path, _, w, _, _ in leaf_fields(act_word(p))}["gshift"]

        self.pos = 0
        self.kv_base = 0
        self.program: list[int] = []
        self._boot_fail = False
        self.pc = 0
        self.done = False
        self.error = Err.NONE
        self.error_pc = 0
        self.counters = {c: 0 for c in Counter}
        self._decoded: dict[int, tuple] = {}
        #: The dispatch table: op -> handler(args dict). No entry: ``Err.UNSUPPORTED``.
        self.handlers: dict[Op, Callable[[dict], None]] = {
            Op.NOP: self._nop,
            Op.HALT: self._halt,
            Op.WAIT: self._wait,
            Op.SETPOS: self._setpos,
            Op.LOAD: self._load,
            Op.STORE: self._store,
            Op.GEMM: self._gemm,
            Op.KV_APPEND: self._kv_append,
        }
        if vector:
            self.handlers[Op.VEC] = self._vec

    # -- program and control ------------------------------------------------------------------

    def load_program(self, words) -> None:
        """Load micro-ops: ints (``INSTR_BITS`` wide, from :func:`hw.isa.encode`), or a uint8
        array [n, 16] of little-endian words (a memory image). Resets ``pc``, ``done``,
        ``error``, ``kv_base`` and the counters; a program longer than ``uop_depth`` fails
        when run (``Err.PROG_LOAD``)."""
        arr = np.asarray(words) if not isinstance(words, list) else None
        nbytes = word_bytes(INSTR)
        if arr is not None and arr.dtype == np.uint8 and arr.ndim == 2:
            if arr.shape[1] != nbytes:
                raise ValueError(f"load_program: words of {arr.shape[1]} bytes, not {nbytes}")
            prog = [int.from_bytes(row.tobytes(), "little") for row in arr]
        else:
            prog = [int(w) for w in words]
        for i, w in enumerate(prog):
            if not 0 <= w < 1 << INSTR_BITS:
                raise ValueError(f"load_program: word {i} ({w:#x}) is not {INSTR_BITS} bits")
        self.program = prog
        self._restart()

    def boot(self, prog_addr: int, prog_len: int, pos_init: int = 0) -> None:
        """What the chip's ``start`` does (``hw/chip.py``): ``pos = pos_init``, ``kv_base = 0``
        and the program
        is the ``prog_len`` micro-ops at off-chip bus word ``prog_addr`` (``ceil(128 / bus
        bits)`` bus words each, low first). A program longer than ``uop_depth`` or beyond the
        off-chip memory fails with ``Err.PROG_LOAD`` when run. Then :meth:`run`."""
        self.pos = pos_init
        self.kv_base = 0
        per = -(-INSTR_BITS // (8 * self.bus_bytes))
        if prog_len > self.params.uop_depth or prog_addr + prog_len * per > self.bus_words:
            self.program = []
            self._restart()
            self._boot_fail = True
            return
        raw = self.read_offchip(prog_addr, prog_len * per).reshape(prog_len, per * self.bus_bytes)
        self.load_program(raw[:, : word_bytes(INSTR)])

    def _restart(self):
        self.kv_base = 0  # the chip's start
        self._boot_fail = False
        self.pc = 0
        self.done = False
        self.error = Err.NONE
        self.error_pc = 0
        self.counters = {c: 0 for c in Counter}

    def run(self, max_ops: int = 10**7) -> Err:
        """Execute from ``pc = 0`` until ``HALT`` or an error; returns ``error``. Memory,
        buffers, ``y`` and ``pos`` carry over from before; ``kv_base`` starts at 0 (as the
        chip's ``start`` sets it). ``RuntimeError`` if ``max_ops``
        micro-ops run without either."""
        boot_fail = self._boot_fail
        self._restart()
        self._boot_fail = boot_fail
        if boot_fail or len(self.program) > self.params.uop_depth:
            self.step()  # PROG_LOAD
            return self.error
        # step(), repeated, with what it looks up kept at hand
        program, handlers, counters, decode = self.program, self.handlers, self.counters, \
            self._decode
        n = len(program)
        for _ in range(max_ops):
            pc = self.pc
            if pc >= n:
                return self._fail(Err.PROG_RANGE, pc)
            counters[Counter.UOPS] += 1
            op, args = decode(program[pc])
            if not isinstance(op, Op):
                return self._fail(Err.ILLEGAL_OP, pc)
            handler = handlers.get(op)
            if handler is None:
                return self._fail(Err.UNSUPPORTED, pc)
            try:
                handler(args)
            except OpError as e:
                return self._fail(e.err, pc)
            if self.done:  # HALT: pc stays on it
                return self.error
            self.pc = pc + 1
        raise RuntimeError(f"IsaSim.run: no HALT within {max_ops} micro-ops (pc = {self.pc})")

    def run_scheduled(self, words, rng, *, wait_ok: bool = True, late: bool = False,
                      pos: int | None = None) -> "IsaSim":
        """Run the micro-ops ``words`` (valid ones: no error handling) as the chip could order
        them, each op atomic: the sequencer dispatches in order to per-unit queues
        (``queue_depth + 1`` deep, the op in the engine included), ``WAIT unit, n`` stalls
        while more than ``n`` ops of ``unit`` are unfinished (never, without ``wait_ok``),
        ``HALT`` until all are; each unit executes its oldest op at a random moment (``rng``),
        with the ``pos`` and ``kv_base`` it was dispatched with. ``late``: units run only while
        the sequencer is stalled (ops stay in flight as long as the program lets them). Starts
        at ``pos`` (default: the current one) and ``kv_base = 0``. A program whose results
        differ from :meth:`run`'s under some schedule lacks a ``WAIT``. Returns ``self``."""
        from collections import deque

        ops = [self._decode(w) for w in words]
        queues = {u: deque() for u in Unit}
        pc, pos = 0, self.pos if pos is None else pos
        base = 0
        depth = self.params.queue_depth + 1
        while True:
            op, f = ops[pc]
            unit = OP_UNIT.get(op)
            if op == Op.WAIT:
                ready = len(queues[f["unit"]]) <= f["count"] or not wait_ok
            elif op == Op.HALT:
                ready = not any(queues.values())
            elif unit is not None:
                ready = len(queues[unit]) < depth
            else:
                ready = True
            busy = [u for u in Unit if queues[u]]
            if ready and (not busy or late or rng.random() < 0.55):
                if op == Op.HALT:
                    break
                if unit is not None:
                    queues[unit].append((op, f, pos, base))
                elif op == Op.SETPOS and f["reg"] == PosReg.KV_BASE:
                    base = base + f["value"] if f["add"] else f["value"]
                elif op == Op.SETPOS:
                    pos = pos + f["value"] if f["add"] else f["value"]
                pc += 1
            else:
                u = busy[int(rng.integers(0, len(busy)))]
                qop, qf, self.pos, self.kv_base = queues[u].popleft()
                self.handlers[qop](qf)
                self.pos, self.kv_base = pos, base
        self.pos, self.kv_base = pos, base
        return self

    def step(self) -> Err:
        """Execute the micro-op at ``pc`` (nothing once halted or failed); returns ``error``.
        ``pc`` advances past every op but ``HALT``, and stays on a failing one."""
        if self.done or self.error != Err.NONE:
            return self.error
        if self._boot_fail or len(self.program) > self.params.uop_depth:
            return self._fail(Err.PROG_LOAD, 0)
        if self.pc >= len(self.program):
            return self._fail(Err.PROG_RANGE, self.pc)
        self.counters[Counter.UOPS] += 1
        op, args = self._decode(self.program[self.pc])
        if not isinstance(op, Op):
            return self._fail(Err.ILLEGAL_OP, self.pc)
        handler = self.handlers.get(op)
        if handler is None:
            return self._fail(Err.UNSUPPORTED, self.pc)
        try:
            handler(args)
        except OpError as e:
            return self._fail(e.err, self.pc)
        if not self.done:
            self.pc += 1
        return self.error

    def _fail(self, err: Err, pc: int) -> Err:
        self.error = Err(err)
        self.error_pc = pc
        self.done = True
        return self.error

    def _decode(self, word: int) -> tuple:
        hit = self._decoded.get(word)
        if hit is None:
            try:
                hit = decode(word)
            except ValueError:  # an enum field holds a value its enum does not define
                hit = self._decode_raw(word)
            self._decoded[word] = hit
        return hit

    @staticmethod
    def _decode_raw(word: int) -> tuple:
        """Decode through the INSTR layout's numpy codec, leaving undefined enum values as
        ints (the handler turns them into ``BAD_FIELD``)."""
        raw = np.frombuffer(word.to_bytes(word_bytes(INSTR), "little"), np.uint8)[None]
        vals = unpack_words(INSTR, raw)
        op = Op(int(vals["op"][0]))  # decode() accepted the opcode, so it is an Op
        member = OP_ARGS[op]
        fields = {}
        for name, f in data.Layout.cast(ARGS[member].shape):
            v = int(vals[f"args.{member}.{name}"][0])
            if isinstance(f.shape, type) and issubclass(f.shape, py_enum.Enum):
                try:
                    v = f.shape(v)
                except ValueError:
                    pass
            fields[name] = v
        return op, fields

    # -- host access ----------------------------------------------------------------------------

    def _check_words(self, buf, addr, n, who):
        if addr < 0 or n < 0 or addr + n > self.depth[buf]:
            raise ValueError(
                f"{who}: {buf.name} words {addr}..{addr + n - 1} beyond its depth {self.depth[buf]}"
            )

    def read_buffer(self, buf: Buf, addr: int, n: int = 1) -> dict:
        """Words ``addr .. addr + n - 1`` of ``buf`` as {field path: int64 array [n, ...]}
        (:func:`hw.isa.unpack_words`; WGT, KV and ACC words have one field, ``""``)."""
        buf = Buf(buf)
        self._check_words(buf, addr, n, "read_buffer")
        return unpack_words(self.layouts[buf], self.bufs[buf][addr : addr + n])

    def write_buffer(self, buf: Buf, addr: int, fields: dict) -> None:
        """Write words from {field path: array [n, ...]} (:func:`hw.isa.pack_words`; missing
        fields are 0) at ``addr``."""
        buf = Buf(buf)
        raw = pack_words(self.layouts[buf], fields)
        self._check_words(buf, addr, len(raw), "write_buffer")
        self.bufs[buf][addr : addr + len(raw)] = raw

    def write_offchip(self, bus_addr: int, raw) -> None:
        """Bytes ``raw`` into off-chip memory from bus word ``bus_addr`` on."""
        raw = (
            np.frombuffer(raw, np.uint8)
            if isinstance(raw, bytes | bytearray)
            else np.asarray(raw, np.uint8).ravel()
        )
        start = bus_addr * self.bus_bytes
        if bus_addr < 0 or start + raw.size > self.offchip.size:
            raise ValueError(
                f"write_offchip: {raw.size} bytes at bus word {bus_addr} leave "
                f"the {self.offchip.size}-byte memory"
            )
        self.offchip[start : start + raw.size] = raw

    def read_offchip(self, bus_addr: int, n_bus_words: int) -> np.ndarray:
        """A copy of bus words ``bus_addr .. bus_addr + n_bus_words - 1`` (uint8, flat)."""
        if bus_addr < 0 or n_bus_words < 0 or bus_addr + n_bus_words > self.bus_words:
            raise ValueError(
                f"read_offchip: bus words {bus_addr}..{bus_addr + n_bus_words - 1} "
                f"beyond the {self.bus_words} of the memory"
            )
        B = self.bus_bytes
        return self.offchip[bus_addr * B : (bus_addr + n_bus_words) * B].copy()

    def image_words(self, buf: Buf, fields: dict) -> np.ndarray:
        """Words of ``buf`` ({field path: array}) in their off-chip form: each
        ``bus_words_per`` bus words, little-endian, zero above the word (uint8, flat)."""
        buf = Buf(buf)
        raw = pack_words(self.layouts[buf], fields)
        out = np.zeros((len(raw), self.bus_per[buf] * self.bus_bytes), np.uint8)
        out[:, : raw.shape[1]] = raw
        return out.ravel()

    def offchip_words(self, buf: Buf, raw) -> dict:
        """The inverse of :meth:`image_words`: off-chip bytes (whole words of ``buf``) ->
        {field path: int64 array [n, ...]} (bits above the word ignored)."""
        buf = Buf(buf)
        return unpack_words(self.layouts[buf], self._from_bus(buf, raw))

    def _from_bus(self, buf, raw):
        raw = np.asarray(raw, np.uint8).ravel()
        per = self.bus_per[buf] * self.bus_bytes
        if raw.size % per:
            raise ValueError(f"{raw.size} bytes are not whole {buf.name} words of {per} bytes")
        return raw.reshape(-1, per)[:, : self._nbytes[buf]] & self._mask[buf]

    # -- micro-ops --------------------------------------------------------------------------------

    def _nop(self, args):
        pass

    def _halt(self, args):
        self.done = True

    def _wait(self, args):
        _enum(Unit, args["unit"], "unit")

    def _setpos(self, args):
        reg = _enum(PosReg, args["reg"], "reg")
        name = "kv_base" if reg == PosReg.KV_BASE else "pos"
        top = self.depth[Buf.KV] - 1 if reg == PosReg.KV_BASE else POS_MAX
        new = getattr(self, name) + args["value"] if args["add"] else args["value"]
        if not 0 <= new <= top:
            raise OpError(Err.BAD_FIELD, f"{name} {new} leaves 0..{top}")
        setattr(self, name, new)

    def _dma_check(self, args):
        buf = _enum(Buf, args["buf"], "buf")
        sram, words, off = args["sram"], args["words"], args["off"]
        if words == 0:
            raise OpError(Err.BAD_FIELD, "words = 0")
        if sram + words > self.depth[buf]:
            raise OpError(Err.SRAM_RANGE, f"{buf.name} {sram} + {words} > {self.depth[buf]}")
        n_bus = words * self.bus_per[buf]
        if off + n_bus > self.bus_words:
            raise OpError(Err.OFFCHIP_RANGE, f"bus {off} + {n_bus} > {self.bus_words}")
        B = self.bus_bytes
        return buf, sram, words, slice(off * B, (off + n_bus) * B), n_bus

    def _load(self, args):
        buf, sram, words, span, n_bus = self._dma_check(args)
        dst = self.bufs[buf][sram : sram + words]
        dst[...] = self.offchip[span].reshape(words, -1)[:, : self._nbytes[buf]]
        if buf in self._mask_last:  # the bits above the word's width stay 0
            dst[:, -1] &= self._mask_last[buf]
        self.counters[Counter.LOAD_WORDS] += n_bus

    def _store(self, args):
        buf, sram, words, span, n_bus = self._dma_check(args)
        out = np.zeros((words, self.bus_per[buf] * self.bus_bytes), np.uint8)
        out[:, : self._nbytes[buf]] = self.bufs[buf][sram : sram + words] & self._mask[buf]
        self.offchip[span] = out.ravel()
        self.counters[Counter.STORE_WORDS] += n_bus

    def _range(self, buf, idx, what):
        """``SRAM_RANGE`` unless every address in ``idx`` lies in ``buf``."""
        idx = np.asarray(idx)
        if idx.size:
            self._range_top(buf, int(idx.max()), what)

    def _range_top(self, buf, top, what):
        """``SRAM_RANGE`` if ``top``, the largest address an op touches, lies beyond ``buf``."""
        if top >= self.depth[buf]:
            raise OpError(Err.SRAM_RANGE, f"{what}: {buf.name} word {top} >= {self.depth[buf]}")

    def _words(self, buf, idx):
        """The raw words at addresses ``idx`` (any shape; a copy)."""
        return np.take(self.bufs[buf], idx, axis=0)

    def _field(self, buf, raw, path):
        """Field ``path`` of raw words of ``buf`` (:class:`_Codec`: possibly a view)."""
        return self._codec[buf].get(raw, path)

    def _scratch(self, slot: str, shape):
        """A float64 array of ``shape`` in memory the simulator keeps for ``slot`` (contents
        undefined; valid until the next call for the slot): the GEMM's big temporaries,
        allocated afresh for every op, cost page faults."""
        size = math.prod(shape)
        buf = self._scratch_bufs.get(slot)
        if buf is None or buf.size < size:
            buf = self._scratch_bufs[slot] = np.empty(size, np.float64)
        return buf[:size].reshape(shape)

    def _gemm_plan(self, a) -> "_GemmPlan":
        """Every check of a ``GEMM`` (raising :class:`OpError`) and what its fields fix: the
        addresses it reads and writes. A plan depends on the fields alone, and on ``pos`` /
        ``kv_base`` where the op uses them; :meth:`_gemm` keeps those that do not depend on
        ``pos`` for the next time the op runs (a program runs once per token)."""
        p = self.params
        R, C = p.rows, p.cols
        PC = C // 2
        mode = _enum(GridMode, a["mode"], "mode")
        wsrc = _enum(WSrc, a["wsrc"], "wsrc")
        psrc = _enum(PSrc, a["psrc"], "psrc")
        dyn = _enum(Dyn, a["dyn"], "dyn")
        t_len, k_tiles, n_tiles = a["t_len"], a["k_tiles"], a["n_tiles"]
        if dyn == Dyn.POS:
            visible = self.pos + t_len
            if wsrc == WSrc.KV_TILED:
                n_tiles = -(-visible // PC)
            elif wsrc == WSrc.KV_ROWS:
                k_tiles = -(-visible // R)
            else:
                raise OpError(Err.BAD_FIELD, "dyn = POS needs wsrc KV_TILED or KV_ROWS")
        if min(t_len, k_tiles, n_tiles) < 1:
            raise OpError(Err.BAD_FIELD, f"t_len {t_len}, k_tiles {k_tiles}, n_tiles {n_tiles}")
        first, final = bool(a["first"]), bool(a["final"])
        y_rows = t_len if first and final else n_tiles * t_len
        if y_rows > p.acc_entries:
            raise OpError(Err.BAD_FIELD, f"{y_rows} accumulator rows > {p.acc_entries}")

        # -- every address the op touches: each is affine in (j, kt, t, r) with non-negative
        # steps, so its last index is its largest; the weight rows of every wsrc are one
        # contiguous region (WGT / KV_TILED tile-major, KV_ROWS K-major) --------------------------
        wbuf = Buf.WGT if wsrc == WSrc.WGT else Buf.KV
        w_addr = a["w_addr"] + (self.kv_base if wbuf == Buf.KV else 0)
        n_w = n_tiles * k_tiles * R
        a_addr, a_stride = a["a_addr"], a["a_stride"]
        acc_addr, acc_stride = a["acc_addr"], a["acc_stride"]
        step = a["prm_step"]
        groups = -(-k_tiles // (1 << step))  # K-tile kt uses group kt >> step
        pbuf = Buf.PRM if psrc == PSrc.PRM else Buf.KV
        if psrc == PSrc.PRM:  # block j's group words at s_addr + j * s_per
            s_addr, s_per = a["prm_addr"], groups
            o_top = a["oprm_addr"] + n_tiles - 1
        else:
            s_addr, s_per = self.kv_base + a["prm_addr"], groups + 1
            o_top = s_addr + (n_tiles - 1) * s_per + groups
        self._range_top(wbuf, w_addr + n_w - 1, "weight rows")
        self._range_top(Buf.ACT, a_addr + (t_len - 1) * a_stride + k_tiles - 1, "activation rows")
        self._range_top(pbuf, s_addr + (n_tiles - 1) * s_per + groups - 1, "group parameters")
        self._range_top(pbuf, o_top, "out parameters")
        if final:
            self._range_top(Buf.ACC, acc_addr + (t_len - 1) * acc_stride + n_tiles - 1, "outputs")

        g = _GemmPlan()
        g.mode, g.wsrc, g.psrc = mode, wsrc, psrc
        g.t_len, g.k_tiles, g.n_tiles, g.first, g.final = t_len, k_tiles, n_tiles, first, final
        g.step, g.groups = step, groups
        if a_stride == k_tiles or t_len == 1:  # ACT rows back to back
            g.act = slice(a_addr, a_addr + t_len * k_tiles)
        else:
            g.act = a_addr + np.arange(t_len)[:, None] * a_stride + np.arange(k_tiles)
        g.pbuf, g.params = pbuf, slice(s_addr, s_addr + n_tiles * s_per)
        g.out = slice(a["oprm_addr"], a["oprm_addr"] + n_tiles)
        g.wbuf, g.weights = wbuf, slice(w_addr, w_addr + n_w)
        g.lut = self._w_lut[mode]
        g.lanes = C if mode == GridMode.W4A8 else PC  # INT8: lanes c >= PC have acc = 0
        g.bound = self._x_max * self._w_max[mode] * R  # |Σ_r x w| of one K-tile, at most
        g.group_starts = np.arange(0, k_tiles, 1 << step)
        g.acc_idx = (acc_addr + np.arange(t_len)[None, :] * acc_stride
                     + np.arange(n_tiles)[:, None]).ravel() if final else None
        # tile order: block j, then row t; the addresses differ unless acc_stride < n_tiles
        g.distinct = t_len == 1 or acc_stride >= n_tiles
        return g

    def _gemm(self, a):
        if a["dyn"] == Dyn.POS:  # a plan for this pos: seldom met again
            g = self._gemm_plan(a)  # raises OpError before anything is written
        else:
            uses_kv = a["wsrc"] != WSrc.WGT or a["psrc"] != PSrc.PRM
            key = (tuple(a.items()), self.kv_base if uses_kv else None)
            g = self._plans.get(key)
            if g is None:
                g = self._gemm_plan(a)
                if len(self._plans) >= _PLANS:
                    self._plans.clear()
                self._plans[key] = g
        p = self.params
        R, C = p.rows, p.cols
        PC = C // 2
        t_len, k_tiles, n_tiles, step = g.t_len, g.k_tiles, g.n_tiles, g.step
        first, final, groups, Cw = g.first, g.final, g.groups, g.lanes

        # -- operands -----------------------------------------------------------------------------
        act_codec = self._codec[Buf.ACT]
        if isinstance(g.act, slice):
            act = self.bufs[Buf.ACT][g.act].reshape(t_len, k_tiles, -1)
        else:
            act = self._words(Buf.ACT, g.act)
        x8 = act_codec.get(act, "data")  # [t, kt, R]
        xsum = x8.sum(-1, dtype=np.int64)  # [t, kt]
        tail = act_codec.tail(act)  # the scale fields of each word, as a table index
        if tail is not None:
            mant = np.take(self._act_mant, tail)  # [t, kt]
            exp = np.take(self._act_exp, tail[:, -1])  # the row's exp on its final K-tile
        else:
            gshift, gzero, exp = act_codec.get_scalars(act, ("gshift", "gzero", "exp"))
            mant = np.where(gzero != 0, 0, np.left_shift(1, gshift))
            exp = exp[:, -1]
        sw = self.bufs[g.pbuf][g.params].reshape(n_tiles, -1, self._nbytes[g.pbuf])
        if g.psrc == PSrc.PRM:
            prm = self._codec[Buf.PRM]
            scale = np.asarray(prm.get(sw, "group.scale"), np.int64)  # [n, groups, C]
            offset = np.asarray(prm.get(sw, "group.offset"), np.int64)
            if final:
                ow = self.bufs[Buf.PRM][g.out]
                shift = np.asarray(prm.get(ow, "out.shift"), np.int64)  # [n, C]
                bias = np.asarray(prm.get(ow, "out.bias"), np.int64)
        else:
            kv_leaf = _leaf(self.layouts[Buf.KV])
            lanes = np.asarray(self._field(Buf.KV, sw[:, :groups], kv_leaf), np.int64)
            gb = self._gshift_bits
            gs = lanes & ((1 << gb) - 1)
            scale = np.zeros((n_tiles, groups, C), np.int64)  # W4A8 lanes c >= PC: scale 0
            scale[..., :PC] = np.where((lanes >> gb) & 1, 0, np.left_shift(1, gs))
            offset = None  # 0
            if final:
                e = _signed(self._field(Buf.KV, sw[:, groups], kv_leaf), 8)  # [n, PC]
                shift = np.full((n_tiles, C), p.numerics.frac_bits, np.int64)
                shift[:, :PC] -= e
                bias = np.zeros((n_tiles, C), np.int64)

        # -- the grid and the group scaler --------------------------------------------------------
        # Per column, Y = Σ_kt mant[t, kt] * (scale[g(kt)] * acc[kt] + offset[g(kt)] * xsum[kt])
        # modulo 2**64 (the scaler's 64-bit registers; the shift by gshift is the product by
        # mant), acc[kt] = Σ_r x[t, kt, r] * w[kt, r]. Ring algebra regroups it exactly into
        # float64 matmuls whose partial sums are all integers below 2**53 (exact), over
        # sub-groups of s K-tiles, then int64 sums:
        # - "scaled": Y1 = Σ_sub scale[g] * P[sub], P[sub] = Σ_{kt in sub} mant * acc[kt], the
        #   sub-groups inside one weight group (g);
        # - "folded": Y1 = Σ_sub P'[sub], P'[sub] = Σ_{kt in sub} mant * Σ_r x * (w * scale[g])
        #   (the scale folded into the weights: any sub-groups; costs a pass over the weights,
        #   saves the products with scale: for long t_len);
        # and Y = Y1 + Σ_g offset[g] * XS[g], XS[g] = Σ_{kt in g} mant * xsum[kt].
        big = g.bound * int(mant.max())  # |P| of one K-tile, at most
        s = k_tiles if k_tiles <= 1 << step else 1 << step
        while s > 1 and s * big >= 1 << 53:
            s = 1 << ((s - 1).bit_length() - 1)  # a power of two: sub-groups stay in one group
        n_sub = -(-k_tiles // s)
        fold = False
        if n_sub > 1 and k_tiles * R < 3 * n_sub * t_len:  # else folding cannot pay
            big_f = big * int(np.abs(scale[..., :Cw]).max())  # |P'| of one K-tile, at most
            most = ((1 << 53) - 1) // big_f if big_f else k_tiles
            if most >= 1:
                n_sub_f = -(-k_tiles // min(most, k_tiles))
                # element passes per output column: products, sums and conversions
                fold = k_tiles * R + 2 * n_sub_f * t_len < 3 * n_sub * t_len
            if fold:
                n_sub = n_sub_f
                s = -(-k_tiles // n_sub)  # <= most
                n_sub = -(-k_tiles // s)
        kt_pad = n_sub * s
        xa = np.zeros((t_len, kt_pad, R)) if kt_pad > k_tiles else np.empty((t_len, kt_pad, R))
        xa[:, :k_tiles] = x8
        xa[:, :k_tiles] *= mant[..., None]  # exact: |x * mant| < 2**39
        xa = xa.reshape(t_len, n_sub, s * R).transpose(1, 0, 2)  # [sub, t, s R]
        if offset is not None:
            xs = np.add.reduceat(xsum * mant, g.group_starts, axis=1)  # [t, groups]
        if g.wsrc == WSrc.KV_ROWS:
            wk = self.bufs[g.wbuf][g.weights].reshape(k_tiles, R, n_tiles, -1)
        else:
            wk = self.bufs[g.wbuf][g.weights]
        if fold:
            scale_k = scale[:, np.arange(k_tiles) >> step, :Cw].astype(np.float64)  # [n, kt, Cw]
        elif n_sub == 1:
            scale_sub = scale[:, :1, :Cw]
        elif s == 1 << step:  # a sub-group per weight group
            scale_sub = scale[..., :Cw]
        else:
            scale_sub = scale[:, (np.arange(n_sub) * s) >> step, :Cw]  # [n, sub, Cw]
        lut = g.lut
        ysum = np.zeros((n_tiles, t_len, C), np.int64)
        chunk = max(1, _CHUNK // max(kt_pad * R * Cw, n_sub * t_len * C))
        for j0 in range(0, n_tiles, chunk):
            nj = min(chunk, n_tiles - j0)
            js = slice(j0, j0 + nj)
            if g.wsrc == WSrc.KV_ROWS:
                wb = wk[:, :, js]  # [kt, R, nj, PC]
            else:  # the tiles' rows gathered K-major
                wb = np.take(wk, self._tile_rows(k_tiles * R, j0, nj), axis=0)
                wb = wb.reshape(k_tiles, R, nj, -1)
            wf = self._scratch("w", (kt_pad, R, nj, wb.shape[3], *lut.shape[1:]))
            if lut is self._w_int8:  # the byte as a signed byte: a plain conversion
                wf[:k_tiles] = wb.view(np.int8)
            else:
                np.take(lut, wb, axis=0, out=wf[:k_tiles], mode="clip")  # bytes: in range
            wf[k_tiles:] = 0
            if fold:  # exact: |w * scale| < 2**29
                wf.reshape(kt_pad, R, nj, Cw)[:k_tiles] *= scale_k[js].transpose(1, 0, 2)[:, None]
            prod = self._scratch("p", (n_sub, t_len, nj * Cw))
            np.matmul(xa, wf.reshape(n_sub, s * R, nj * Cw), out=prod)
            if fold or n_sub == 1:
                part = prod[0].astype(np.int64) if n_sub == 1 else prod.astype(np.int64).sum(0)
                y1 = part.reshape(t_len, nj, Cw)  # [t, nj, Cw]
                if not fold:
                    y1 *= scale_sub[js, 0]
            else:
                part = prod.astype(np.int64).reshape(n_sub, t_len, nj, Cw)
                y1 = (part * scale_sub[js].transpose(1, 0, 2)[:, None]).sum(axis=0)
            ys = ysum[js]
            ys[..., :Cw] = y1.transpose(1, 0, 2)
            if offset is not None:
                off = offset[js].transpose(1, 0, 2).reshape(groups, nj * C)
                ys += np.matmul(xs, off).reshape(t_len, nj, C).transpose(1, 0, 2)
        if first and final:
            yfull = ysum  # y = t: every block starts from 0
        else:
            prev = 0 if first else self.y[: n_tiles * t_len].reshape(n_tiles, t_len, C)
            yfull = prev + ysum

        out = None
        if final:
            sh = shift[:, None, :] - exp[None, :, None]  # [n, t, C]
            out = saturate(round_output(yfull, sh) + bias[:, None, :])

        # -- writes (nothing above may fail) ------------------------------------------------------
        if first and final:
            self.y[:t_len] = yfull[-1]
        else:
            self.y[: n_tiles * t_len] = yfull.reshape(n_tiles * t_len, C)
        if final and g.distinct and self._acc_int32:  # saturated: every value fits
            self.bufs[Buf.ACC].view("<i4")[g.acc_idx] = out.reshape(-1, C)
        elif final:
            words = self._codec[Buf.ACC].pack({_leaf(self.layouts[Buf.ACC]): out.reshape(-1, C)})
            self._write_last(Buf.ACC, g.acc_idx, words, distinct=g.distinct)
        self.counters[Counter.GRID_ROWS] += n_tiles * k_tiles * t_len

    def _tile_rows(self, tile, j0, nj):
        """Row indices [tile, nj] of blocks ``j0 ..`` of a tile-major weight region of
        ``tile`` rows per block: row ``q`` of block ``j0 + i`` at ``[q, i]`` (K-major)."""
        key = (tile, j0, nj)
        rows = self._tile_rows_cache.get(key)
        if rows is None:
            rows = np.arange(j0 * tile, (j0 + nj) * tile, tile) + np.arange(tile)[:, None]
            if len(self._tile_rows_cache) >= _PLANS:
                self._tile_rows_cache.clear()
            self._tile_rows_cache[key] = rows
        return rows

    def _kv_append(self, a):
        p = self.params
        R, PC = p.rows, p.cols // 2
        ag = p.numerics.act_group
        kind = _enum(KvKind, a["kind"], "kind")
        t_len, d, cap = a["t_len"], a["d"], a["cap"]
        if t_len == 0 or d == 0 or d % ag or d % PC:
            raise OpError(Err.BAD_FIELD, f"t_len {t_len}, d {d}")
        if self.pos + t_len > cap:
            raise OpError(Err.KV_OVERFLOW, f"pos {self.pos} + {t_len} > cap {cap}")
        G = d // ag
        wpr = d // R  # ACT words per row
        blocks = -(-cap // PC)
        kv_addr, kv_saddr = self.kv_base + a["kv_addr"], self.kv_base + a["kv_saddr"]
        data_end = kv_addr + (blocks * d if kind == KvKind.KEY else cap * (d // PC))
        if data_end > self.depth[Buf.KV]:
            raise OpError(Err.SRAM_RANGE, f"KV data region ends at {data_end}")
        if kv_saddr + blocks * (G + 1) > self.depth[Buf.KV]:
            raise OpError(Err.SRAM_RANGE, "KV scale region")
        t = np.arange(t_len)
        a_idx = a["a_addr"] + t[:, None] * a["a_stride"] + np.arange(wpr)  # [t, wpr]
        self._range(Buf.ACT, a_idx, "activation rows")

        act = self._words(Buf.ACT, a_idx)
        x = np.asarray(self._field(Buf.ACT, act, "data"), np.int64).reshape(t_len, d) & 0xFF
        first_word = np.arange(G) * (ag // R)
        gb = self._gshift_bits
        gshift = self._field(Buf.ACT, act, "gshift")[:, first_word]
        scl = gshift | self._field(Buf.ACT, act, "gzero")[:, first_word] << gb  # [t, G]
        exp = np.asarray(self._field(Buf.ACT, act, "exp")[:, :1], np.int64) & 0xFF
        lanes_s = np.concatenate([scl, exp], axis=1)  # [t, G + 1]
        s = self.pos + t
        blk, lane = s // PC, s % PC
        kv_leaf = _leaf(self.layouts[Buf.KV])
        if kind == KvKind.KEY:
            rows = kv_addr + blk[:, None] * d + np.arange(d)  # [t, d]
            self._write_lanes(rows, lane, x)
        else:
            rows = kv_addr + s[:, None] * (d // PC) + np.arange(d // PC)  # [t, d / PC]
            words = self._codec[Buf.KV].pack({kv_leaf: x.reshape(-1, PC)})
            self.bufs[Buf.KV][rows.ravel()] = words
        srows = kv_saddr + blk[:, None] * (G + 1) + np.arange(G + 1)  # [t, G + 1]
        self._write_lanes(srows, lane, lanes_s)

    def _write_lanes(self, rows, lane, vals):
        """KV byte lane ``lane[t]`` of the words ``rows[t, i]`` := ``vals[t, i]``; the other
        lanes keep their contents (tokens of one block share words)."""
        kv_leaf = _leaf(self.layouts[Buf.KV])
        uniq, inv = np.unique(rows.ravel(), return_inverse=True)
        words = np.asarray(self._field(Buf.KV, self._words(Buf.KV, uniq), kv_leaf), np.int64)
        words[inv, np.repeat(lane, rows.shape[1])] = vals.ravel()  # [u, PC]
        self.bufs[Buf.KV][uniq] = self._codec[Buf.KV].pack({kv_leaf: words})

    # -- the vector unit ----------------------------------------------------------------------

    def _rows(self, buf, base, stride, rows, W, what):
        """The words ``base + t * stride + w`` (``t < rows``, ``w < W``) of ``buf``, checked
        (``SRAM_RANGE`` naming ``what`` if the last lies beyond the buffer): a slice when they
        are back to back (one row, or ``stride = W``), else their addresses [rows, W]."""
        self._range_top(buf, base + (rows - 1) * stride + W - 1, what)
        if rows == 1 or stride == W:
            return slice(base, base + rows * W)
        return base + np.arange(rows)[:, None] * stride + np.arange(W)

    def _rows_words(self, buf, sel, rows):
        """The raw words [rows, W, bytes] of a :meth:`_rows` selection (a view of a slice)."""
        if isinstance(sel, slice):
            return self.bufs[buf][sel].reshape(rows, -1, self._nbytes[buf])
        return self._words(buf, sel)

    def _wide_read(self, sel, rows, E, length):
        """Wide rows [rows, length] from the ACC words ``sel`` (:meth:`_rows`), ``E`` per
        word."""
        words = self._field(Buf.ACC, self._rows_words(Buf.ACC, sel, rows),
                            _leaf(self.layouts[Buf.ACC]))  # [rows, W, C]
        W = words.shape[1]
        wide = words[..., :E].astype(np.int64).reshape(rows, W * E)
        return wide if W * E == length else wide[:, :length]

    def _wide_words(self, vals, E, W):
        """Wide rows [rows, length] -> ACC words [rows * W, C]: ``E`` per word, the other
        lanes 0."""
        rows, length = vals.shape
        if W * E == length:
            flat = vals
        else:
            flat = np.zeros((rows, W * E), np.int64)
            flat[:, :length] = vals
        words = np.zeros((rows, W, self.params.cols), np.int64)
        words[..., :E] = flat.reshape(rows, W, E)
        return self._codec[Buf.ACC].pack({_leaf(self.layouts[Buf.ACC]): words.reshape(
            rows * W, -1)})

    def _act_words(self, x8, mant, exp, group):
        """A8 rows [rows, length] with their scales (``sim.golden.ActScale`` fields ``mant``
        [rows, groups], ``exp`` [rows], ``group``) -> ACT words [rows * ceil(length / R)]:
        each word with the scale of its first element's group (``hw/isa.py``, ``VecArgs``)."""
        R = self.params.rows
        x8 = np.asarray(x8)
        rows, length = x8.shape
        nw = -(-length // R)
        if length == nw * R:
            data_ = x8
        else:
            data_ = np.zeros((rows, nw * R), x8.dtype)
            data_[:, :length] = x8
        m = np.asarray(mant, np.int64)[:, (np.arange(nw) * R) // group]  # [rows, nw]
        gshift = np.where(m > 0, np.frexp(m)[1] - 1, 0)  # 2**k = 0.5 * 2**(k + 1), exactly
        assert np.array_equal(np.where(m > 0, np.left_shift(1, gshift), 0), m)
        e = (np.asarray(exp, np.int64) + 128) % 256 - 128  # the 8-bit exp field wraps
        return self._codec[Buf.ACT].pack({
            "data": data_.reshape(rows * nw, R),
            "gshift": gshift.ravel(),
            "gzero": (m == 0).ravel(),
            "exp": np.repeat(e, nw),
        })

    def _write_last(self, buf, idx, words, distinct: bool = False):
        """Words [n] at addresses ``idx`` [n] (in row order; or a slice): where two land on one
        address the later stays. ``distinct``: the caller knows the addresses differ."""
        if isinstance(idx, slice):
            self.bufs[buf][idx] = words
            return
        flat = np.asarray(idx).ravel()
        if distinct or flat.size < 2 or bool((flat[1:] > flat[:-1]).all()):
            self.bufs[buf][flat] = words
            return
        _, last = np.unique(flat[::-1], return_index=True)
        keep = np.sort(flat.size - 1 - last)
        self.bufs[buf][flat[keep]] = words[keep]

    def _vec(self, a):
        """``VEC`` (``hw/isa.py``, :class:`hw.isa.VecArgs`): checks, then the golden function
        of ``fn`` on the rows."""
        p = self.params
        num = p.numerics
        R, C = p.rows, p.cols
        PC = C // 2
        fn = _enum(VecFn, a["fn"], "fn")
        qmode, vfold = QuantMode.INT8, False
        if fn == VecFn.QUANT:
            qmode = _enum(QuantMode, a["qmode"], "qmode")
            vfold = bool(a["vfold"])
            if vfold and a["vgroups"] == 0:
                raise OpError(Err.BAD_FIELD, "vfold with vgroups = 0")
        rows = a["rows"]
        length = self.pos + rows if a["dyn"] == Dyn.POS else a["length"]
        if rows == 0 or length == 0:
            raise OpError(Err.BAD_FIELD, f"rows {rows}, length {length}")
        if fn in _ROW_FNS and length > p.vector_row:
            raise OpError(Err.BAD_FIELD, f"{fn.name} row of {length} > {p.vector_row}")
        if fn == VecFn.ROPE and length % 2:
            raise OpError(Err.BAD_FIELD, f"ROPE of odd length {length}")

        # -- every address the op touches -----------------------------------------------------
        half = bool(a["half"])
        E = PC if half else C
        W = -(-length // E)
        Wc = -(-length // C)  # PRM constant words
        Wq = -(-length // R)  # ACT words of an A8 row
        src_a, src_b, sst = a["src_a"], a["src_b"], a["src_stride"]
        dst, dstr = a["dst"], a["dst_stride"]
        copy_act = fn == VecFn.COPY and _enum(VecBuf, a["buf"], "buf") == VecBuf.ACT
        if copy_act:
            a_sel = self._rows(Buf.ACT, src_a, sst, rows, Wq, "source rows")
        else:
            a_sel = self._rows(Buf.ACC, src_a, sst, rows, W, "source rows")
        if fn in (VecFn.RESIDUAL, VecFn.SILU_MUL):
            b_sel = self._rows(Buf.ACC, src_b, sst, rows, W, "b rows")
        if fn == VecFn.ROPE:
            tab_sel = self._rows(Buf.ACC, src_b + self.pos * W, W, rows, W, "RoPE table rows")
        if fn in (VecFn.LAYERNORM, VecFn.RMSNORM):
            n_vec = 2 if fn == VecFn.LAYERNORM else 1
            prm_sel = self._rows(Buf.PRM, a["prm"], 0, 1, n_vec * Wc + 1, "norm constants")
        if vfold:
            Gv = a["vgroups"]
            blk = self.kv_base + src_b + np.arange(-(-length // PC)) * (Gv + 1)
            self._range(Buf.KV, blk + Gv, "V scales")
        if fn == VecFn.QUANT:
            blocks = 1 if qmode == QuantMode.INT8 else 2
            d_sel = self._rows(Buf.ACT, dst, dstr, blocks * rows, Wq, "destination rows")
        elif copy_act:
            d_sel = self._rows(Buf.ACT, dst, dstr, rows, Wq, "destination rows")
        else:
            E_out = (C if half else PC) if fn == VecFn.COPY and a["repack"] else E
            W_out = -(-length // E_out)
            d_sel = self._rows(Buf.ACC, dst, dstr, rows, W_out, "destination rows")

        # -- operands and the golden function ---------------------------------------------------
        if copy_act:
            words = self._rows_words(Buf.ACT, a_sel, rows).reshape(rows * Wq, -1).copy()
            self._write_last(Buf.ACT, d_sel, words)
            return
        x = self._wide_read(a_sel, rows, E, length)
        q_pos = self.pos + np.arange(rows) if a["causal"] else None
        if fn == VecFn.QUANT:
            group = None if a["per_row"] else num.act_group
            e_add = np.zeros(rows, np.int64)
            if vfold:
                kv_leaf = _leaf(self.layouts[Buf.KV])
                j = np.arange(length)
                kvw = self._words(Buf.KV, np.stack([blk, blk + Gv]))  # scale, exp words
                lanes = np.asarray(self._field(Buf.KV, kvw[0], kv_leaf), np.int64)[
                    j // PC, j % PC]  # [length]
                gb = self._gshift_bits
                gshift, gzero = lanes & ((1 << gb) - 1), (lanes >> gb) & 1
                if np.any((gzero == 0) & (gshift > num.act_headroom)):
                    raise OpError(Err.BAD_FIELD, "a V scale with gshift > act_headroom")
                exp_v = _signed(self._field(Buf.KV, kvw[1], kv_leaf)[j // PC, j % PC], 8)
                mant_v = np.where(gzero == 1, 0, np.left_shift(1, gshift))
                p_ = x & _P_MASK
                if q_pos is not None:  # keys a row does not see are masked (p = 0)
                    p_ = np.where(j[None, :] <= q_pos[:, None], p_, 0)
                x, e_max = G.fold_v_scales(p_, mant_v, exp_v, q_pos)
                e_add = e_max[:, 0]
            if qmode == QuantMode.A8X2:
                (hi, hs), (lo, ls) = G.quantize_residual(x, group, num=num)
                blocks = [(hi, hs), (lo, ls)]
            else:
                xq, xs = G.quantize_rows(x, group, bits=15 if qmode == QuantMode.A15 else 8,
                                         num=num)
                if qmode == QuantMode.A15:
                    xq = np.asarray(xq, np.int64)
                    blocks = [(xq >> 7, xs), (xq & 127, xs)]
                else:
                    blocks = [(xq, xs)]
            words = np.concatenate([self._act_words(v, s.mant, s.exp + e_add, s.group)
                                    for v, s in blocks])
            self._write_last(Buf.ACT, d_sel, words)
            return
        if fn == VecFn.COPY:
            self._write_last(Buf.ACC, d_sel, self._wide_words(x, E_out, W_out))
            return
        if fn in (VecFn.RESIDUAL, VecFn.SILU_MUL):
            b = self._wide_read(b_sel, rows, E, length)
            out = G.residual_add(x, b) if fn == VecFn.RESIDUAL else G.silu_mul(x, b, num=num)
        elif fn in (VecFn.LAYERNORM, VecFn.RMSNORM):
            bias = np.asarray(self._field(Buf.PRM, self.bufs[Buf.PRM][prm_sel], "out.bias"),
                              np.int64)  # [n_vec * Wc + 1, C]
            consts = bias[:-1].reshape(n_vec, Wc * C)[:, :length]
            eps = int(bias[-1, 0] & ((1 << EPS_BITS) - 1)) / (1 << (2 * num.frac_bits))
            out = G.layernorm(x, consts[0], consts[1], eps, num=num) if fn == VecFn.LAYERNORM \
                else G.rmsnorm(x, consts[0], eps, num=num)
        elif fn == VecFn.SOFTMAX:
            out = G.softmax(x, q_pos, num=num)
        elif fn == VecFn.GELU:
            out = G.gelu(x, num=num)
        else:  # ROPE
            tab = _signed(self._wide_read(tab_sel, rows, E, length)
                          & ((1 << ROPE_TRIG_BITS) - 1), ROPE_TRIG_BITS)
            out = G.rope(x[:, None, :], tab[:, 0::2], tab[:, 1::2], num=num)[:, 0, :]
        self._write_last(Buf.ACC, d_sel, self._wide_words(out, E, W))


def isa_jobs(p: ChipParams, image, jobs, sim=None) -> list:
    """Run ``sim.chip_rtl.Job``\\ s one after the other on one :class:`sim.isa_sim.IsaSim`
    whose off-chip memory starts as ``image`` (buffers, scaler sums and the memory carry over
    from job to job, as on the chip): each job boots its program from off-chip memory with
    its ``pos_init`` (:meth:`~sim.isa_sim.IsaSim.boot`) and runs to ``HALT`` or an error.
    Returns ``sim.chip_rtl.JobResult``\\ s (the timed counters 0, the memory after the job);
    the memory model's settings and ``max_cycles`` have no meaning here. ``sim``: continue
    on that simulator instead of a new one."""
    from sim.chip_rtl import JobResult

    sim = sim or IsaSim(p, image)
    out = []
    for job in jobs:
        sim.boot(job.prog_addr, job.prog_len, job.pos_init)
        sim.run()
        out.append(JobResult(error=sim.error, error_pc=sim.error_pc, pos=sim.pos,
                             counters=dict(sim.counters), offchip=sim.offchip.copy()))
    return out

"""The vector unit of the chip: runs ``VEC`` micro-ops (``hw/isa.py``, :class:`hw.isa.VecArgs`)
on the components of ``hw/vector``.

A micro-op is checked first (``Err.BAD_FIELD`` / ``Err.SRAM_RANGE`` in the order of the
``VecArgs`` docstring; with ``vfold`` the V scales are then loaded and checked, from
``kv_base + src_b``: the base the op was dispatched with, added as it is accepted), before any
word is written. Then it runs as one *sweep* (two for the two-block ``QUANT`` modes) of four
concurrent generators::

    reader ── ACC a, ACC b (or ACT) ──> beat assembler ──> component(s) ──> writer ── ACC / ACT
    params ── PRM gamma, beta ───────────────────────────> Normalizer

- **reader**: for each row ``t`` and word ``w`` one read of operand ``a`` (ACC, or ACT for
  ``COPY`` of A8 rows) and, in step, one of ``b`` (ACC: ``RESIDUAL`` / ``SILU_MUL`` operand
  ``b``, the ``ROPE`` table row ``pos + t``); one word per cycle through two ACC read ports;
- **beat assembler**: ``L / E`` words (``E`` elements each: ``C``, or ``PC`` with ``half``)
  into one beat of ``L = vector_lanes`` elements; the last beat of a row may be partial (its
  other lanes are stale: every component masks lanes beyond the row, and so does the writer);
- **components**: one per ``fn``, as ``hw/vector`` defines them (``ResidualAdd``,
  ``PwlUnit``, ``Rope``, ``Normalizer``, ``Softmax``, ``Quantizer``); ``COPY`` goes straight
  to the writer. ``QUANT`` with ``vfold`` passes a fold stage first (per element
  ``rshift_round(p * mant_v, e_max - exp_v)``, from a local copy of V's scales with their
  running maximum); ``A8X2``'s second sweep quantizes again, subtracts the dequantized first
  pass (``golden.quantize_residual``) and quantizes the residual with a second ``Quantizer``;
- **writer**: each output beat into ``L / E_out`` ACC words (lanes beyond the row, and lanes
  ``PC ..`` with ``half``, 0) or ``L / R`` ACT words (A8: data, the beat's group scale, the
  row exponent, plus ``e_max`` with ``vfold``), in row order, one word per cycle;
- **params** (``LAYERNORM`` / ``RMSNORM``): per output beat its gamma (and beta) words from
  PRM, into the normalizer's parameter stream.

Throughput: one ACC word read and one word written per cycle: one beat per cycle in the full
layout with ``vector_lanes = cols``, one per two cycles in the half layout; row operations as
their components allow (norms and softmax at full rate for rows of >= 18 beats; ``LAYERNORM``
in the full layout reads two PRM words per beat, so half rate). ``QUANT`` ``A15`` / ``A8X2``
run two sweeps over the source (the second after the first has drained), ``vfold`` first
loads ``ceil(length / PC)`` pairs of KV words (two cycles each). Between micro-ops the unit
drains (about the latency of the op's component).

``abort`` drops the current micro-op: the generators stop, the datapath (components, FIFOs)
is reset while it is held, nothing more is written.
"""

from types import SimpleNamespace

from amaranth.hdl import (
    Array,
    Cat,
    Const,
    Module,
    Mux,
    ResetInserter,
    Signal,
    Value,
    signed,
    unsigned,
)
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..bus import MemReader
from ..gemm_engine import cmd_layout, pc_bits
from ..isa import (
    Buf,
    Dyn,
    Err,
    QuantMode,
    VecArgs,
    VecBuf,
    VecFn,
    acc_word,
    act_word,
    buffer_depth,
    kv_addr_bits,
    kv_word,
    prm_word,
)
from ..params import ChipParams
from .common import WIDE, Pipe, clamp_unsigned, connect_out, delay, saturate, wide_lanes
from .elementwise import ROPE_TRIG_BITS, PwlFn, PwlUnit, ResidualAdd, Rope
from .norm import EPS_BITS, Normalizer
from .quant import EXP_BITS, GSHIFT_BITS, Quantizer
from .softmax import Softmax

__all__ = ["VecEngine", "FoldStage", "FOLD_BITS", "PART_NAMES", "datapath_parts"]

#: ``vfold`` values: ``p`` (17 bits) times ``mant_v`` (up to ``2**act_headroom``), signed.
FOLD_BITS = 17 + 20 + 1
#: The ``vfold`` probability: the low 17 bits of each element, unsigned.
P_BITS = 17


def _bits(layout) -> int:
    return data.Layout.cast(layout).size


def _log2(n: int, what: str) -> int:
    k = n.bit_length() - 1
    if 1 << k != n:
        raise ValueError(f"VecEngine: {what} = {n} must be a power of two")
    return k


def _any(values):
    """The OR of a list of 1-bit expressions."""
    out = 0
    for v in values:
        out = out | v
    return out


def _reg_credit(m, pipe: Pipe, name: str, with_next: bool = False):
    """``pipe.credit`` as a register: the beats admitted and not yet read out (what
    ``inflight + level`` counts), kept here as a thermometer code with ``count < depth``
    registered, so a take depends on a flop instead of an adder and compare. Equal to
    ``pipe.credit`` every cycle (both start empty and see the same takes and reads).
    ``with_next``: also its next value (an expression), for a register derived from it."""
    d = pipe.depth
    th = Signal(d, name=f"{name}_th")  # thermometer: th[i] = count > i
    ok = Signal(name=f"{name}_ok", init=1)
    pop = pipe.out.valid & pipe.out.ready
    inc = pipe.take & ~pop
    dec = pop & ~pipe.take
    nxt = [Mux(inc, th[i - 1] if i else 1, Mux(dec, th[i + 1] if i + 1 < d else 0, th[i]))
           for i in range(d)]
    m.d.sync += [th.eq(Cat(*nxt)), ok.eq(~nxt[d - 1])]
    return (ok, ~nxt[d - 1]) if with_next else ok


def _ceil_shift(v, k: int):
    """``ceil(v / 2**k)``."""
    return (v + (1 << k) - 1) >> k if k else v


def _pick(values, index):
    """``values[index]`` for a list of expressions and a run-time index (a mux)."""
    values = list(values)
    if len(values) == 1:
        return values[0]
    return Array(values)[index[:(len(values) - 1).bit_length()]]


class FoldStage(wiring.Component):
    """``vfold``'s fold of V's scales into the probabilities ahead of the quantizer: per
    element ``rshift_round(p * 2**gshift_v, e_max - exp_v)``, 0 for keys the row does not see
    (``j >= visible``) and for keys whose V group is zero (``golden``'s masked ``p = 0``).

    ``i_beat``: the beat's probabilities ``p`` (``P_BITS`` unsigned each), its index ``b_idx``
    in the row, the row's ``visible`` keys and ``last``. V's scales come from the engine's
    local copy: ``vsc_addr`` / ``vsc_data`` (per key ``sc = gshift | gzero << 5`` and
    ``ev = exp_v``) and ``vmax_addr`` / ``vmax_data`` (the running maximum of ``exp_v`` up to
    each key; the row's ``e_max`` is the one of its last visible key), two synchronous read
    ports the engine owns, with :meth:`entry_keys` keys per entry (a beat's, or a KV word's
    ``cols / 2`` if more). ``o_beat``: ``FOLD_BITS`` values, ``last`` and
    ``emax``. Pipeline (``STAGES`` = 6, one beat per cycle): memories read; their words
    registered; shift by gshift and mask, the rounding shift ``e_max - exp_v``; shift by its
    multiple of 8; by the rest; round."""

    STAGES = 6
    #: A key's entry in ``vsc_data``.
    KEY_LAYOUT = data.StructLayout({"sc": unsigned(GSHIFT_BITS + 1), "ev": signed(EXP_BITS)})

    def __init__(self, params: ChipParams, max_beats: int):
        L = params.vector_lanes
        self.params, self.max_beats = params, max_beats
        EW = self.entry_keys(params)
        entries = -(-max_beats * L // EW)
        super().__init__({
            "i_beat": In(stream.Signature(data.StructLayout({
                "p": data.ArrayLayout(unsigned(P_BITS), L), "b_idx": unsigned(13),
                "visible": unsigned(18), "last": 1}))),
            "vsc_addr": Out(range(entries)),
            "vsc_data": In(data.ArrayLayout(self.KEY_LAYOUT, EW)),
            "vmax_addr": Out(range(entries)),
            "vmax_data": In(data.ArrayLayout(signed(EXP_BITS), EW)),
            "o_beat": Out(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(FOLD_BITS), L), "last": 1,
                "emax": signed(EXP_BITS)}))),
            "busy": Out(1),
        })

    @staticmethod
    def entry_keys(params: ChipParams) -> int:
        """Keys per entry of the V-scale copy: ``max(vector_lanes, cols / 2)``."""
        return max(params.vector_lanes, params.cols // 2)

    def elaborate(self, platform):
        m = Module()
        L = self.params.vector_lanes
        ll = _log2(L, "vector_lanes")
        EW = self.entry_keys(self.params)
        lew = _log2(EW, "V-scale entry")
        lsub = lew - ll  # beats per entry: 2**lsub
        fold = Pipe(m, "fold", self.o_beat.payload.shape(), self.STAGES)
        bp = self.i_beat.payload
        ok = _reg_credit(m, fold, "fold")
        m.d.comb += [self.i_beat.ready.eq(ok),
                     fold.take.eq(self.i_beat.valid & ok),
                     self.busy.eq(fold.busy)]
        kk = Signal(18)  # the row's last visible key: its running max is e_max
        m.d.comb += [kk.eq(bp.visible - 1),
                     self.vsc_addr.eq(bp.b_idx >> lsub), self.vmax_addr.eq(kk >> lew)]
        p1 = Signal(data.ArrayLayout(unsigned(P_BITS), L))
        b1 = Signal(13)
        vis1 = Signal(18)
        lane1 = Signal(range(EW))
        m.d.sync += [b1.eq(bp.b_idx), vis1.eq(bp.visible), lane1.eq(kk[:lew] if lew else 0),
                     p1.eq(bp.p)]
        last = delay(m, bp.last, self.STAGES - 1, "fold_last")
        # stage 1: the memories' words, the lanes picked
        emax2 = Signal(signed(EXP_BITS))
        key2 = Signal(data.ArrayLayout(self.KEY_LAYOUT, L))
        seen2 = Signal(L)
        p2 = Signal.like(p1)
        m.d.sync += [emax2.eq(_pick((self.vmax_data[i] for i in range(EW)), lane1)),
                     p2.eq(p1)]
        sub1 = b1[:lsub] if lsub else 0  # the beat's keys within the entry
        for lane in range(L):
            m.d.sync += [key2[lane].eq(_pick((self.vsc_data[j * L + lane].as_value()
                                              for j in range(1 << lsub)), sub1)),
                         seen2[lane].eq((b1 << ll) + lane < vis1)]
        # stage 2: the value p << gshift (0 unseen or zero group), the shift e_max - exp_v
        v3 = Signal(data.ArrayLayout(unsigned(FOLD_BITS - 1), L))
        s3 = Signal(data.ArrayLayout(unsigned(6), L))
        emax = delay(m, emax2, self.STAGES - 3, "fold_emax")
        for lane in range(L):
            key = key2[lane]
            s = Signal(signed(EXP_BITS + 2), name=f"fold_s{lane}")
            m.d.comb += s.eq(emax2 - key.ev)
            m.d.sync += [
                v3[lane].eq(Mux(seen2[lane] & ~key.sc[GSHIFT_BITS],
                                p2[lane] << key.sc[:GSHIFT_BITS], 0)),
                s3[lane].eq(clamp_unsigned(s, 6)),
            ]
        # stages 3 and 4: v >> (s - 1) as (v << 1) >> s (no subtraction before the shifter;
        # s = 0 takes v itself), by s's multiple of 8, then by the rest; stage 5: rounded
        u4 = Signal(data.ArrayLayout(unsigned(FOLD_BITS), L))
        s4 = Signal(data.ArrayLayout(unsigned(3), L))
        t5 = Signal.like(v3)
        v4, v5 = Signal.like(v3), Signal.like(v3)
        z4, z5 = Signal(L), Signal(L)
        m.d.sync += [v4.eq(v3), v5.eq(v4), z5.eq(z4)]
        for lane in range(L):
            m.d.sync += [u4[lane].eq(Cat(Const(0, 1), v3[lane]) >> Cat(Const(0, 3), s3[lane][3:])),
                         s4[lane].eq(s3[lane][:3]), z4[lane].eq(s3[lane] == 0),
                         t5[lane].eq(u4[lane] >> s4[lane])]
            m.d.sync += fold.result.data[lane].eq(Mux(z5[lane], v5[lane], (t5[lane] + 1) >> 1))
        m.d.sync += [fold.result.last.eq(last[-1]), fold.result.emax.eq(emax[-1])]
        connect_out(m, fold.out, self.o_beat)
        return m


#: The components of the vector unit's datapath (:func:`datapath_parts`), by name.
PART_NAMES = ("q1", "q2", "norm", "smax", "pwl", "rope", "add", "fold")


def datapath_parts(params: ChipParams, names=PART_NAMES) -> dict:
    """Fresh instances of the datapath's components (``names`` of :data:`PART_NAMES`), as
    :class:`VecEngine` builds them: ``q1`` quantizes rows (and the fold's output), ``q2``
    A8X2's residual, ``fold`` is :class:`FoldStage`. ``scripts/synth.py --design vector``
    synthesizes each on its own."""
    mb = -(-params.vector_row // params.vector_lanes)
    side = signed(EXP_BITS)  # vfold's e_max, carried to the writer
    make = {
        "q1": lambda: Quantizer(params, max_beats=mb, data_bits=FOLD_BITS, pass_x=True,
                                side=side),
        "q2": lambda: Quantizer(params, max_beats=mb, data_bits=FOLD_BITS + 1, side=side),
        "norm": lambda: Normalizer(params, max_beats=mb),
        "smax": lambda: Softmax(params, max_beats=mb),
        "pwl": lambda: PwlUnit(params),
        "rope": lambda: Rope(params),
        "add": lambda: ResidualAdd(params),
        "fold": lambda: FoldStage(params, mb),
    }
    return {n: make[n]() for n in names}


class VecEngine(wiring.Component):
    """Executes VEC micro-ops (module docstring). Read ports wired by the chip: ``acc_a_*``,
    ``acc_b_*`` (ACC), ``act_*`` (ACT), ``prm_*`` (PRM), ``kv_*`` (KV); writes: ``acc_wr``
    (ACC words), ``act_wr`` (ACT words), each a valid/ready stream (the chip's write-port
    arbiter may hold ``ready`` low). ``done`` / ``err_*`` pulse once per micro-op; ``abort``
    drops the current one. ``reset_ports``: the engine has two more inputs, ``rst`` (resets
    the control logic) and ``dp_rst`` (resets the datapath; the caller makes it include
    ``rst`` and ``abort``), and is not put under a ``ResetInserter`` itself: each flop then
    sees one reset net (the chip puts both on global buffers on an FPGA) rather than a LUT
    that ORs two, which fanned out to 15 k flops. Needs ``cols``, ``rows`` and
    ``vector_lanes`` powers of two,
    ``vector_lanes >= 2``. Beats and buffer words meet in *pieces* of ``min(L, E)`` elements
    (``E``: ``cols``, ``cols / 2`` or ``rows`` elements per ACC, half ACC or ACT word): a beat
    wider than a word takes several words; a word wider than a beat (fewer lanes, e.g. the
    FPGA configuration's) is read once per piece, and the writer gathers a word's pieces
    before it writes the word (pieces past the row's end as 0). Either way one piece moves
    per cycle."""

    #: ``VecFn`` values of the row operations (``ChipParams.vector_row`` bounds them).
    ROW_FNS = (VecFn.QUANT, VecFn.LAYERNORM, VecFn.RMSNORM, VecFn.SOFTMAX)
    #: A8X2's residual ``x - dequantize(q1)`` between the two quantizers: its stages.
    RES_STAGES = 4
    #: The op's checks after ``EFF`` and ``PROD``: ``SUMS``, ``CMP``, ``CHECK`` (a state each).
    CHECK_STAGES = 3
    #: Cycles from a micro-op's acceptance (``IDLE``) to its first ``go`` pulse (``EPS``):
    #: ``EFF``, ``PROD``, the checks, ``SETUP``, ``EPS`` (without ``vfold``'s ``LOADV``).
    GO_CYCLES = 2 + CHECK_STAGES + 2
    #: ``COPY``'s pipeline between the beat assembler and the writer (a register and FIFO).
    COPY_STAGES = 1
    #: The beat skid between the assembler and the components: latency and entries.
    BEAT_STAGES, BEAT_DEPTH = 1, 2
    #: The output skid between the components (the op's selected source) and the writer:
    #: latency and entries.
    OUT_STAGES, OUT_DEPTH = 1, 2
    #: ``RUN`` sees a sweep finished (its last word written, the datapath empty) this many
    #: cycles after the fact: ``finished`` is a register.
    FINISH_STAGES = 1
    #: The writer's output register: a word reaches the write port this many cycles after
    #: the writer takes its last piece.
    WR_STAGES = 1

    def __init__(self, params: ChipParams = ChipParams(), *, reset_ports: bool = False):
        p = params
        self.params = p
        self.reset_ports = reset_ports
        L, R, C = p.vector_lanes, p.rows, p.cols
        _log2(L, "vector_lanes")
        _log2(R, "rows")
        _log2(C, "cols")
        if L < 2:
            raise ValueError(f"VecEngine: vector_lanes = {L} must be at least 2 (RoPE pairs)")
        self.max_beats = -(-p.vector_row // L)
        ab, cb = _bits(act_word(p)), _bits(acc_word(p))
        ports = {}
        for name, bits in (("acc_a", cb), ("acc_b", cb), ("act", ab), ("prm", _bits(prm_word(p))),
                           ("kv", _bits(kv_word(p)))):
            ports[f"{name}_addr"] = Out(kv_addr_bits(p) if name == "kv" else 16)
            ports[f"{name}_en"] = Out(1)
            ports[f"{name}_data"] = In(bits)
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(p))),
            **ports,
            "acc_wr": Out(stream.Signature(data.StructLayout({"addr": unsigned(16),
                                                              "data": unsigned(cb)}))),
            "act_wr": Out(stream.Signature(data.StructLayout({"addr": unsigned(16),
                                                              "data": unsigned(ab)}))),
            "done": Out(1),
            "err_valid": Out(1),
            "err_code": Out(Err),
            "err_pc": Out(pc_bits(p)),
            "busy": Out(1),
            "abort": In(1),
            **({"rst": In(1), "dp_rst": In(1)} if reset_ports else {}),
        })

    @staticmethod
    def loadv_stages(params: ChipParams) -> int:
        """``LOADV``: the stages after a KV exp word arrives before its block's entry is
        written: a register, then one per level of the block's prefix maxima (at least
        one: the mask)."""
        return 1 + max(1, (params.cols // 2 - 1).bit_length())

    def elaborate(self, platform):
        m = Module()
        p = self.params
        num = p.numerics
        R, C, L = p.rows, p.cols, p.vector_lanes
        PC = C // 2
        lr, lc = _log2(R, "rows"), _log2(C, "cols")
        lpc = lc - 1
        ll = _log2(L, "vector_lanes")
        H = num.act_headroom
        depth = {b: buffer_depth(p, b) for b in Buf}
        max_beats = self.max_beats
        EW = max(L, PC)  # keys per entry of the V-scale copy: a beat's, or a KV word's
        KE = EW // PC    # KV words per entry
        lke = _log2(KE, "V-scale chunks")

        # -- the micro-op and its derived sizes (registered in IDLE / EFF / PROD) -------------
        a = Signal(VecArgs)
        pos = Signal(16)
        kv_src = Signal(kv_addr_bits(p))  # kv_base + src_b: V's scales (vfold)
        pc = Signal.like(self.err_pc)
        fn = a.fn
        # the op's decoded flags: registers, set in EFF from ``a`` (registered in IDLE), so
        # that no path runs from the op's fields through a decoder into the datapath
        dec = Signal()  # EFF: the flags load
        is_ = {f: Signal(name=f"is_{f.name.lower()}") for f in VecFn}
        quant = is_[VecFn.QUANT]
        norm = Signal()
        copy_act = Signal()
        vfold = Signal()
        two = Signal()       # QUANT A15 / A8X2: two blocks, two sweeps
        a8x2 = Signal()
        a15 = Signal()
        half = a.half
        out_half = Signal()  # the written layout (COPY with repack: the other one)
        to_act = Signal()    # writes ACT (QUANT, COPY of A8 rows)
        use_b = Signal()     # reads operand b (RESIDUAL, SILU_MUL, ROPE)
        row_fn = Signal()    # a row operation (ROW_FNS)
        c_is = {f: fn == f for f in VecFn}
        c_quant = c_is[VecFn.QUANT]
        c_copy_act = c_is[VecFn.COPY] & (a.buf == VecBuf.ACT)
        c_two = c_quant & ((a.qmode == QuantMode.A15) | (a.qmode == QuantMode.A8X2))
        c_out_half = half ^ (c_is[VecFn.COPY] & a.repack)
        with m.If(dec):
            m.d.sync += [is_[f].eq(c_is[f]) for f in VecFn]
            m.d.sync += [
                norm.eq(c_is[VecFn.LAYERNORM] | c_is[VecFn.RMSNORM]),
                copy_act.eq(c_copy_act),
                vfold.eq(c_quant & a.vfold),
                a15.eq(c_quant & (a.qmode == QuantMode.A15)),
                a8x2.eq(c_quant & (a.qmode == QuantMode.A8X2)),
                two.eq(c_two),
                out_half.eq(c_out_half),
                to_act.eq(c_quant | c_copy_act),
                use_b.eq(c_is[VecFn.RESIDUAL] | c_is[VecFn.SILU_MUL] | c_is[VecFn.ROPE]),
                row_fn.eq(_any(c_is[f] for f in self.ROW_FNS)),
            ]

        length = Signal(18)  # after dyn
        W = Signal(18)       # ACC words of a row (E = C, or PC with half)
        Wo = Signal(18)      # ACC words of a written row
        Wq = Signal(18)      # ACT words of an A8 row
        Wc = Signal(18)      # PRM words of a constant vector
        Bt_m1 = Signal(18)   # beats of a row - 1
        Wr = Signal(18)      # words read per row
        Ww = Signal(18)      # words written per row
        dst_ww = Signal(19)  # dst + Ww
        pos_rows = Signal(17)  # pos + rows
        rows_m1 = Signal(9)    # rows - 1
        nblk_m1 = Signal(18)   # KV key blocks (vfold) - 1 (the check refuses length 0 first)
        vg1 = Signal(5)        # vgroups + 1: KV words per key block
        p_src = Signal(24)   # (rows - 1) * src_stride
        p_dst = Signal(24)   # (rows - 1) * dst_stride (the second block adds p_blk)
        p_blk = Signal(24)   # rows * dst_stride: the second block
        p_tab = Signal(40)   # (pos + rows) * W: end of the RoPE table rows
        p_posw = Signal(40)  # pos * W: the first table row
        p_kv = Signal(28)    # (nblk - 1) * (vgroups + 1)
        prm_eps = Signal(20)  # prm + n_vec * Wc: the eps word (n_vec: 2 LAYERNORM, else 1)

        running = Signal()
        m.d.comb += [self.busy.eq(running | (self.cmd.valid & ~self.abort)),
                     self.err_pc.eq(pc)]
        # the error's code and valid as registers, set on the way into ERROR and cleared in
        # it (the chip's error logic starts at flops, not at a decode of the FSM state)
        err_code = Signal(Err)
        err_v = Signal()
        m.d.comb += [self.err_valid.eq(err_v), self.err_code.eq(err_code)]
        sweep = Signal()
        go = Signal()        # one-cycle pulse: a sweep's generators start
        finished = Signal()  # the sweep's last word written, the datapath empty (a cycle ago)
        eps = Signal(EPS_BITS)
        setup = Signal()

        # local copy of V's scales (vfold): per key gshift | gzero << 5, exp; its running max
        key_l = FoldStage.KEY_LAYOUT
        entries = -(-max_beats * L // EW)
        vsc = Memory(shape=data.ArrayLayout(key_l, EW), depth=entries, init=[])
        vmax = Memory(shape=data.ArrayLayout(signed(EXP_BITS), EW), depth=entries, init=[])
        m.submodules.vsc = vsc
        m.submodules.vmax = vmax
        vsc_w = vsc.write_port(granularity=PC)
        vmax_w = vmax.write_port(granularity=PC)
        vsc_r = vsc.read_port()
        vmax_r = vmax.read_port()

        # V-scale loading (state LOADV): alternate reads of a block's scale and exp words
        lv_blk = Signal(18)
        lv_addr = Signal(24)    # scale word of block lv_blk
        lv_addr_e = Signal(24)  # its exp word: lv_addr + vgroups
        lv_ph = Signal()        # 0: read the scale word, 1: the exp word
        lv_got = Signal(2)      # the data arriving: 1 scale word, 2 exp word
        lv_scale = Signal(kv_word(p))
        lv_bad = Signal()
        lv_run = Signal(signed(EXP_BITS))  # running max of exp_v
        lv_wblk = Signal(18)    # block of the data arriving
        lv_issue = Signal()
        lv_more = Signal()      # lv_blk < nblk (registered)
        lv_busy = Signal()      # a block in the LOADV_STAGES pipeline
        kvd = kv_word(p)(self.kv_data)

        # the checks, a stage per state (SUMS, CMP, CHECK): sums, compares, decision
        acc_d, act_d = depth[Buf.ACC], depth[Buf.ACT]
        s_a = Signal(27)     # src_a + p_src + Wr: the end of the rows read
        s_b = Signal(27)     # src_b + p_src + W
        s_tab = Signal(41)   # src_b + p_tab
        s_kv = Signal(30)    # kv_src + p_kv + vgroups + 1
        s_dst = Signal(27)   # dst + Ww + p_dst (+ p_blk: two blocks)
        bad_r = Signal()     # Err.BAD_FIELD (SUMS)
        bad_c = Signal()     # ... carried (CMP)
        rng_r = Signal()     # Err.SRAM_RANGE (CMP)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~self.abort)
                with m.If(self.cmd.valid & ~self.abort):
                    cmd = self.cmd.payload
                    m.d.sync += [a.eq(cmd.args.vec), pos.eq(cmd.pos), pc.eq(cmd.pc),
                                 kv_src.eq(cmd.args.vec.src_b + cmd.kv_base),
                                 running.eq(1)]
                    m.next = "EFF"
            with m.State("EFF"):
                m.d.comb += dec.eq(1)
                ln = Signal(18)
                pr = pos + a.rows
                m.d.comb += ln.eq(Mux(a.dyn == Dyn.POS, pr, a.length))
                w = Mux(half, _ceil_shift(ln, lpc), _ceil_shift(ln, lc))
                m.d.sync += [
                    length.eq(ln), W.eq(w),
                    Wo.eq(Mux(c_out_half, _ceil_shift(ln, lpc), _ceil_shift(ln, lc))),
                    Wq.eq(_ceil_shift(ln, lr)), Wc.eq(_ceil_shift(ln, lc)),
                    nblk_m1.eq((ln - 1)[lpc:]),
                    Bt_m1.eq((ln - 1)[ll:]),
                    pos_rows.eq(pr), rows_m1.eq(a.rows - 1),
                    vg1.eq(a.vgroups + 1),
                ]
                m.next = "PROD"
            with m.State("PROD"):
                m.d.sync += [
                    p_src.eq(rows_m1 * a.src_stride),
                    p_dst.eq(rows_m1 * a.dst_stride),
                    p_blk.eq(a.rows * a.dst_stride),
                    p_tab.eq(pos_rows * W),
                    p_posw.eq(pos * W),
                    p_kv.eq(nblk_m1 * vg1),
                    Wr.eq(Mux(copy_act, Wq, W)),
                    Ww.eq(Mux(to_act, Wq, Wo)), dst_ww.eq(a.dst + Mux(to_act, Wq, Wo)),
                    prm_eps.eq(a.prm + Mux(is_[VecFn.LAYERNORM], Wc << 1, Wc)),
                ]
                m.next = "SUMS"
            with m.State("SUMS"):
                m.d.sync += [
                    s_a.eq(a.src_a + p_src + Wr), s_b.eq(a.src_b + p_src + W),
                    s_tab.eq(a.src_b + p_tab), s_kv.eq(kv_src + p_kv + vg1),
                    s_dst.eq(dst_ww + p_dst + Mux(two, p_blk, 0)),
                    bad_r.eq((fn > max(VecFn))
                             | (quant & ((a.qmode > max(QuantMode))
                                         | (a.vfold & (a.vgroups == 0))))
                             | (a.rows == 0) | (length == 0)
                             | (row_fn & (length > p.vector_row))
                             | (is_[VecFn.ROPE] & length[0])),
                ]
                m.next = "CMP"
            with m.State("CMP"):
                m.d.sync += [
                    bad_c.eq(bad_r),
                    rng_r.eq(Mux(copy_act, s_a > act_d, s_a > acc_d)
                             | ((is_[VecFn.RESIDUAL] | is_[VecFn.SILU_MUL]) & (s_b > acc_d))
                             | (is_[VecFn.ROPE] & (s_tab > acc_d))
                             | (norm & (prm_eps >= depth[Buf.PRM]))
                             | (vfold & (s_kv > depth[Buf.KV]))
                             | Mux(to_act, s_dst > act_d, s_dst > acc_d)),
                ]
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(bad_c | rng_r):
                    m.d.sync += [err_code.eq(Mux(bad_c, Err.BAD_FIELD, Err.SRAM_RANGE)),
                                 err_v.eq(1)]
                    m.next = "ERROR"
                with m.Elif(vfold):
                    m.d.sync += [lv_blk.eq(0), lv_addr.eq(kv_src), lv_addr_e.eq(kv_src + a.vgroups),
                                 lv_ph.eq(0), lv_bad.eq(0), lv_more.eq(1)]
                    m.next = "LOADV"
                with m.Else():
                    m.next = "SETUP"
            with m.State("LOADV"):  # the reads: below, while lv_more
                with m.If(self.abort):
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
                with m.Elif(~lv_more & (lv_got == 0) & ~lv_busy):
                    with m.If(lv_bad):
                        m.d.sync += [err_code.eq(Err.BAD_FIELD), err_v.eq(1)]
                        m.next = "ERROR"
                    with m.Else():
                        m.next = "SETUP"
            with m.State("ERROR"):
                m.d.comb += self.done.eq(1)
                m.d.sync += [running.eq(0), err_v.eq(0), err_code.eq(Err.NONE)]
                m.next = "IDLE"
            with m.State("SETUP"):  # the norm's eps: one PRM word
                m.d.comb += [setup.eq(1), self.prm_addr.eq(prm_eps),
                             self.prm_en.eq(1)]
                m.d.sync += sweep.eq(0)
                m.next = "EPS"
            with m.State("EPS"):
                m.d.sync += eps.eq(prm_word(p)(self.prm_data).out.bias[0][:EPS_BITS])
                m.d.comb += go.eq(1)
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(self.abort):
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
                with m.Elif(finished):
                    with m.If(two & ~sweep):
                        m.d.sync += sweep.eq(1)
                        m.next = "SWEEP2"
                    with m.Else():
                        m.d.comb += self.done.eq(1)
                        m.d.sync += running.eq(0)
                        m.next = "IDLE"
            with m.State("SWEEP2"):
                m.d.comb += go.eq(1)
                m.next = "RUN"

        # LOADV's reads (lv_more: in LOADV, blocks left): scale word, then exp word of block
        # lv_blk
        m.d.comb += [lv_issue.eq(lv_more),
                     self.kv_addr.eq(Mux(lv_ph, lv_addr_e, lv_addr)),
                     self.kv_en.eq(lv_issue)]
        m.d.sync += lv_got.eq(Mux(lv_issue, Mux(lv_ph, 2, 1), 0))
        with m.If(lv_issue):
            m.d.sync += lv_ph.eq(~lv_ph)
            with m.If(lv_ph):
                m.d.sync += [lv_blk.eq(lv_blk + 1), lv_addr.eq(lv_addr + vg1),
                             lv_addr_e.eq(lv_addr_e + vg1), lv_wblk.eq(lv_blk),
                             lv_more.eq(lv_blk != nblk_m1)]
        with m.If(self.abort):
            m.d.sync += lv_more.eq(0)
        with m.If(lv_got == 1):
            m.d.sync += lv_scale.eq(self.kv_data)

        # LOADV's pipeline (loadv_stages): stage 1 registers the exp word as the block RAM
        # gives it (with the block's scale word, its live keys j < length, whether it is block
        # 0); the next stages compute the block's prefix maxima, a level of a Kogge-Stone
        # prefix each (the first also masks: a dead lane takes lane 0's exp, live lanes being
        # a prefix and lane 0 live in every block) and the scale check; then the write merges
        # them with the running max of the blocks before and writes the block's entry.
        n_st = self.loadv_stages(p)
        ev_l = data.ArrayLayout(signed(EXP_BITS), PC)
        st = [SimpleNamespace(v=Signal(name=f"lv{k}_v"), ev=Signal(ev_l, name=f"lv{k}_ev"),
                              pm=Signal(ev_l, name=f"lv{k}_pm"),
                              sc=Signal(kv_word(p), name=f"lv{k}_sc"),
                              blk=Signal(18, name=f"lv{k}_blk"), first=Signal(name=f"lv{k}_first"),
                              bad=Signal(name=f"lv{k}_bad"))
              for k in range(1, n_st + 1)]
        lv1_live = Signal(PC)
        m.d.comb += lv_busy.eq(_any(x.v for x in st))
        m.d.sync += st[0].v.eq(lv_got == 2)
        with m.If(lv_got == 2):
            m.d.sync += [st[0].blk.eq(lv_wblk), st[0].sc.eq(lv_scale),
                         st[0].first.eq(lv_wblk == 0)]
            for lane in range(PC):
                m.d.sync += [st[0].ev[lane].eq(kvd[lane].as_signed()),
                             lv1_live[lane].eq(Cat(Const(lane, lpc), lv_wblk) < length)]
        vmx = lambda u, v: Mux(v > u, v, u)  # noqa: E731
        pm = [Mux(lv1_live[lane], st[0].ev[lane], st[0].ev[0]) for lane in range(PC)]
        m.d.sync += st[1].bad.eq(_any(lv1_live[lane] & ~st[0].sc[lane][GSHIFT_BITS]
                                      & (st[0].sc[lane][:GSHIFT_BITS] > H)
                                      for lane in range(PC)))
        for k in range(1, n_st):
            prev, cur = st[k - 1], st[k]
            d = 1 << (k - 1)  # this stage's level of the prefix
            m.d.sync += [cur.v.eq(prev.v), cur.ev.eq(prev.ev), cur.sc.eq(prev.sc),
                         cur.blk.eq(prev.blk), cur.first.eq(prev.first)]
            if k > 1:
                m.d.sync += cur.bad.eq(prev.bad)
                pm = [prev.pm[lane] for lane in range(PC)]
            for lane in range(PC):
                m.d.sync += cur.pm[lane].eq(vmx(pm[lane - d], pm[lane]) if lane >= d
                                            else pm[lane])
        last = st[-1]
        with m.If(last.v):
            chunk = last.blk[:lke] if lke else 0  # the block's PC keys in an entry
            run = [Mux(last.first | (last.pm[lane] > lv_run), last.pm[lane], lv_run)
                   for lane in range(PC)]
            m.d.sync += [lv_run.eq(run[PC - 1]), lv_bad.eq(lv_bad | last.bad)]
            for lane in range(PC):
                sc = last.sc[lane]
                for k in range(KE):  # the lane of key j in the entry
                    m.d.comb += [
                        vsc_w.data[k * PC + lane].sc.eq(sc[:GSHIFT_BITS + 1]),
                        vsc_w.data[k * PC + lane].ev.eq(last.ev[lane]),
                        vmax_w.data[k * PC + lane].eq(run[lane]),
                    ]
            m.d.comb += [vsc_w.addr.eq(last.blk >> lke), vmax_w.addr.eq(last.blk >> lke)]
            for k in range(KE):
                m.d.comb += [vsc_w.en[k].eq(chunk == k), vmax_w.en[k].eq(chunk == k)]

        # the PRM port: the eps word in SETUP, else the normalizer's parameters
        prd_addr = Signal(16)
        prd_en = Signal()
        with m.If(~setup):
            m.d.comb += [self.prm_addr.eq(prd_addr), self.prm_en.eq(prd_en)]

        # -- the datapath: reset while abort holds ----------------------------------------------
        dp = Module()
        if self.reset_ports:
            # the control logic and the datapath side by side, each under its one reset port
            top = Module()
            top.submodules.ctl = ResetInserter(self.rst)(m)
            top.submodules.dp = ResetInserter(self.dp_rst)(dp)
        else:
            top = m
            m.submodules.dp = ResetInserter(self.abort)(dp)
        op = SimpleNamespace(
            a=a, pos=pos, is_=is_, quant=quant, norm=norm, copy_act=copy_act, vfold=vfold,
            a15=a15, a8x2=a8x2, out_half=out_half, to_act=to_act, use_b=use_b, length=length,
            W=W, Wr=Wr, Ww=Ww, Wc=Wc, Bt_m1=Bt_m1, rows_m1=rows_m1,
            p_posw=p_posw, p_blk=p_blk, eps=eps, sweep=sweep, go=go, finished=finished,
            vsc_r=vsc_r, vmax_r=vmax_r, prd_addr=prd_addr, prd_en=prd_en)
        self._datapath(dp, op)
        return top

    def _datapath(self, m, e):
        """The generators, assembler, components and writer of a running micro-op (``m`` is
        the datapath module; ``e``: the op's registers and the signals shared with
        :meth:`elaborate`)."""
        p = self.params
        R, C, L = p.rows, p.cols, p.vector_lanes
        PC = C // 2
        _log2(L, "vector_lanes")  # checks the lane count
        # A word and a beat meet in *pieces* of min(L, E) elements (E = C, PC, or R elements
        # per ACC / half ACC / ACT word): a beat takes L / piece of them, a word gives
        # E / piece (one of the two is 1).
        Pf, Ph, Pq = min(L, C), min(L, PC), min(L, R)
        KF, KH, KQ, KC = L // Pf, L // Ph, L // Pq, L // Pf  # pieces per beat
        SF, SH, SQ = C // Pf, PC // Ph, R // Pq              # pieces per word
        a, pos, length, W, Wc = e.a, e.pos, e.length, e.W, e.Wc
        is_, go, sweep = e.is_, e.go, e.sweep
        half, out_half, copy_act, vfold, a15, a8x2 = (a.half, e.out_half, e.copy_act, e.vfold,
                                                       e.a15, e.a8x2)
        quant, norm = e.quant, e.norm
        cb = _bits(acc_word(p))
        ab = _bits(act_word(p))

        # -- reader: operand a (ACC, or ACT for COPY of A8 rows) and b, in step ---------------
        rmeta_l = data.StructLayout({"k": range(KH), "j": range(SF), "beat_last": 1,
                                     "last": 1, "vis": unsigned(18), "b": unsigned(13)})
        m.submodules.ard = ard = MemReader(16, max(cb, ab), rmeta_l)
        m.submodules.brd = brd = MemReader(16, cb, unsigned(1))
        use_b = e.use_b
        r_on = Signal()
        rt = Signal(9)
        rw = Signal(18)
        rk = Signal(range(KH))
        rj = Signal(range(SF))    # piece of the word
        r_rem = Signal(signed(20))  # elements of the row from the piece on
        row_end = Signal()        # r_rem <= piece: the row's last piece (registered)
        rb = Signal(13)
        r_vis = Signal(18)        # pos + rt + 1: the keys row rt sees with causal
        a_row = Signal(24)
        b_row = Signal(40)
        # the read addresses a_row + rw, b_row + rw (16 bits) as registers kept beside them,
        # so the buffers' read ports get flops, not an adder
        a_addr = Signal(16)
        b_addr = Signal(16)
        kin_last = Mux(copy_act, 0, Mux(half, KH - 1, KF - 1))
        jin_last = Mux(copy_act, 0, Mux(half, SH - 1, SF - 1))
        # the op's piece size (elements) and whether a row is one piece: registers loaded
        # every cycle from the op's registers (set in EFF, several cycles before go), so
        # that no op flag runs through a multiplexer into a compare
        piece = Signal(range(max(R, Ph, Pf) + 1))
        piece2 = Signal(range(2 * max(R, Ph, Pf) + 1))
        len_le_piece = Signal()
        m.d.sync += [piece.eq(Mux(copy_act, R, Mux(half, Ph, Pf))),
                     piece2.eq(Mux(copy_act, R, Mux(half, Ph, Pf)) << 1),
                     len_le_piece.eq(length <= Mux(copy_act, R, Mux(half, Ph, Pf)))]
        with m.If(go):
            m.d.sync += [r_on.eq(1), rt.eq(0), rw.eq(0), rk.eq(0), rj.eq(0), rb.eq(0),
                         r_rem.eq(length), row_end.eq(len_le_piece), r_vis.eq(pos + 1),
                         a_row.eq(a.src_a), a_addr.eq(a.src_a),
                         b_row.eq(Mux(is_[VecFn.ROPE], a.src_b + e.p_posw, a.src_b)),
                         b_addr.eq(Mux(is_[VecFn.ROPE], a.src_b + e.p_posw, a.src_b))]
        issue = Signal()
        word_end = row_end | (rj == jin_last)
        beat_end = row_end | (rk == kin_last)
        m.d.comb += [
            issue.eq(r_on & ard.i.ready & brd.i.ready),
            ard.i.valid.eq(issue), brd.i.valid.eq(issue),
            ard.i.payload.addr.eq(a_addr),
            ard.i.payload.meta.k.eq(rk),
            ard.i.payload.meta.j.eq(rj),
            ard.i.payload.meta.beat_last.eq(beat_end),
            ard.i.payload.meta.last.eq(row_end),
            ard.i.payload.meta.vis.eq(Mux(a.causal & (r_vis < length), r_vis, length)),
            ard.i.payload.meta.b.eq(rb),
            brd.i.payload.addr.eq(Mux(use_b, b_addr, 0)),
        ]
        with m.If(issue):
            with m.If(row_end):
                m.d.sync += [rw.eq(0), rk.eq(0), rj.eq(0), rb.eq(0), rt.eq(rt + 1),
                             r_vis.eq(r_vis + 1),
                             r_rem.eq(length), row_end.eq(len_le_piece),
                             a_row.eq(a_row + a.src_stride), a_addr.eq(a_row + a.src_stride),
                             b_row.eq(b_row + Mux(is_[VecFn.ROPE], W, a.src_stride)),
                             b_addr.eq(b_row + Mux(is_[VecFn.ROPE], W, a.src_stride))]
                with m.If(rt == e.rows_m1):
                    m.d.sync += r_on.eq(0)
            with m.Else():
                m.d.sync += [rw.eq(rw + word_end), rj.eq(Mux(word_end, 0, rj + 1)),
                             a_addr.eq(a_addr + word_end), b_addr.eq(b_addr + word_end),
                             rk.eq(Mux(beat_end, 0, rk + 1)), rb.eq(rb + beat_end),
                             r_rem.eq(r_rem - piece), row_end.eq(r_rem <= piece2)]
        m.d.comb += [
            self.acc_a_addr.eq(ard.rd_addr), self.act_addr.eq(ard.rd_addr),
            self.acc_a_en.eq(ard.rd_en & ~copy_act), self.act_en.eq(ard.rd_en & copy_act),
            ard.rd_data.eq(Mux(copy_act, self.act_data, self.acc_a_data)),
            self.acc_b_addr.eq(brd.rd_addr), self.acc_b_en.eq(brd.rd_en & use_b),
            brd.rd_data.eq(self.acc_b_data),
        ]

        # -- beat assembler: L / E words into one beat ----------------------------------------
        beat_l = data.StructLayout({"a": wide_lanes(L), "b": wide_lanes(L), "vis": unsigned(18),
                                    "b_idx": unsigned(13), "last": 1})
        asm = stream.Signature(beat_l).create(path=("asm",))
        asm_valid = Signal()
        asm_ready = Signal()
        raw_act = Signal(ab)  # COPY of A8 rows: the ACT word as it is
        word_take = Signal()
        asm_free = Signal(init=1)  # ~asm_valid | asm_ready, a register (below)
        m.d.comb += [
            word_take.eq(ard.o.valid & brd.o.valid & asm_free),
            ard.o.ready.eq(word_take), brd.o.ready.eq(word_take),
            asm.valid.eq(asm_valid),
        ]
        wa = acc_word(p)(ard.o.payload.data[:cb])
        wb = acc_word(p)(brd.o.payload.data)
        k_in = ard.o.payload.meta.k
        j_in = ard.o.payload.meta.j
        with m.If(word_take):
            for lane in range(L):
                def elem(w, lane=lane):  # the lane's element of the word's piece j_in
                    full = _pick((w[j * Pf + lane % Pf] for j in range(SF)), j_in)
                    hv = _pick((w[j * Ph + lane % Ph] for j in range(SH)), j_in)
                    return Mux(half, hv, full)
                with m.If(Mux(half, k_in == lane // Ph, k_in == lane // Pf)):
                    m.d.sync += [asm.payload.a[lane].eq(elem(wa)),
                                 asm.payload.b[lane].eq(elem(wb))]
            m.d.sync += raw_act.eq(ard.o.payload.data[:ab])
            meta = ard.o.payload.meta
            with m.If(meta.beat_last):
                m.d.sync += [asm_valid.eq(1), asm.payload.vis.eq(meta.vis),
                             asm.payload.b_idx.eq(meta.b), asm.payload.last.eq(meta.last)]
            with m.Elif(asm_ready):
                m.d.sync += asm_valid.eq(0)
        with m.Elif(asm_valid & asm_ready):
            m.d.sync += asm_valid.eq(0)

        # COPY: the assembled beat through a register and FIFO (COPY_STAGES), as a component,
        # so that the writer's ready reaches a FIFO only (never the assembler and the readers)
        sel_copy = Signal()
        with m.If(go):
            m.d.sync += sel_copy.eq(is_[VecFn.COPY])
        cp_l = data.StructLayout({"data": unsigned(max(L * WIDE, ab))})
        cp = Pipe(m, "copy", cp_l, self.COPY_STAGES)
        cp_d = delay(m, Mux(copy_act, raw_act, asm.payload.a.as_value()), self.COPY_STAGES - 1,
                     "copy")
        m.d.sync += cp.result.data.eq(cp_d[-1])
        cp_ok, cp_ok_n = _reg_credit(m, cp, "copy", with_next=True)
        m.d.comb += cp.take.eq(sel_copy & asm_valid & cp_ok)

        # the beat skid (BEAT_STAGES, BEAT_DEPTH): the assembled beat into a main and a skid
        # register, taken only while the skid is empty (a registered ready), so the
        # components' ready reaches these registers only, never the assembler and the readers
        beat = stream.Signature(beat_l).create(path=("beat",))
        sk_v = Signal()
        sk_d = Signal(beat_l)
        mv = Signal()
        push = Signal()
        m.d.comb += [asm_ready.eq(Mux(sel_copy, cp_ok, ~sk_v)),
                     push.eq(asm_valid & ~sel_copy & ~sk_v),
                     beat.valid.eq(mv)]
        # (the skid register copies the assembler whenever it is empty: its load does not
        # wait for the components' ready; sk_v says whether it holds a beat)
        with m.If(~sk_v):
            m.d.sync += sk_d.eq(asm.payload)
        with m.If(~mv | beat.ready):
            m.d.sync += [beat.payload.eq(Mux(sk_v, sk_d, asm.payload)), mv.eq(sk_v | push),
                         sk_v.eq(0)]
        with m.Elif(push):
            m.d.sync += sk_v.eq(1)
        # the assembler takes a word while it is empty or its beat leaves: that decision
        # (~asm_valid | asm_ready) as a register, loaded from the next values of the flags it
        # reads (as the branches above set them), so the readers' FIFOs see a register and
        # their own valid only, not the skid's and the copy FIFO's state through a mux
        asm_valid_n = ((word_take & ard.o.payload.meta.beat_last) | (asm_valid & ~asm_ready))
        sk_v_n = Mux(~mv | beat.ready, 0, sk_v | push)
        sel_copy_n = Mux(go, is_[VecFn.COPY], sel_copy)
        m.d.sync += asm_free.eq(~asm_valid_n | Mux(sel_copy_n, cp_ok_n, ~sk_v_n))

        # -- components ------------------------------------------------------------------------
        side_l = signed(EXP_BITS)  # vfold's e_max, carried to the writer
        parts = datapath_parts(p)
        m.submodules.add = add = parts["add"]
        m.submodules.pwl = pwl = parts["pwl"]
        m.submodules.rope = rope = parts["rope"]
        m.submodules.norm = nrm = parts["norm"]
        m.submodules.smax = smx = parts["smax"]
        m.submodules.q1 = q1 = parts["q1"]
        m.submodules.q2 = q2 = parts["q2"]
        bp = beat.payload
        visible = bp.vis  # the keys the beat's row sees (causal: pos + t + 1, at most length)
        m.d.comb += [
            add.i_beat.payload.a.eq(bp.a), add.i_beat.payload.b.eq(bp.b),
            pwl.i_beat.payload.fn.eq(Mux(is_[VecFn.SILU_MUL], PwlFn.SILU_MUL, PwlFn.GELU)),
            pwl.i_beat.payload.x.eq(bp.a), pwl.i_beat.payload.up.eq(bp.b),
            rope.i_beat.payload.x.eq(bp.a),
            nrm.i_beat.payload.data.eq(bp.a), nrm.i_beat.payload.last.eq(bp.last),
            nrm.i_beat.payload.count.eq(length), nrm.i_beat.payload.rms.eq(is_[VecFn.RMSNORM]),
            nrm.i_beat.payload.eps_q32.eq(e.eps),
            smx.i_beat.payload.data.eq(bp.a), smx.i_beat.payload.last.eq(bp.last),
            smx.i_beat.payload.visible.eq(visible),
        ]
        for i in range(L // 2):
            m.d.comb += [rope.i_beat.payload.cos[i].eq(bp.b[2 * i][:ROPE_TRIG_BITS]),
                         rope.i_beat.payload.sin[i].eq(bp.b[2 * i + 1][:ROPE_TRIG_BITS])]

        # vfold: p' = rshift_round(p * mant_v, e_max - exp_v) (0 for keys the row does not see)
        m.submodules.fold = fold = parts["fold"]
        fi = fold.i_beat.payload
        m.d.comb += [fi.b_idx.eq(bp.b_idx), fi.visible.eq(visible), fi.last.eq(bp.last),
                     e.vsc_r.addr.eq(fold.vsc_addr), fold.vsc_data.eq(e.vsc_r.data),
                     e.vmax_r.addr.eq(fold.vmax_addr), fold.vmax_data.eq(e.vmax_r.data)]
        for lane in range(L):
            m.d.comb += fi.p[lane].eq(bp.a[lane][:P_BITS])

        # Q1: the row (sweep 0), or again for A8X2's residual (sweep 1)
        qi = q1.i_beat.payload
        fo = fold.o_beat
        m.d.comb += [
            qi.count.eq(length), qi.a15.eq(a15), qi.per_row.eq(a.per_row),
        ]
        with m.If(vfold):
            m.d.comb += [qi.data.eq(fo.payload.data), qi.last.eq(fo.payload.last),
                         qi.side.eq(fo.payload.emax), q1.i_beat.valid.eq(fo.valid),
                         fo.ready.eq(q1.i_beat.ready)]
        with m.Else():
            for lane in range(L):
                m.d.comb += qi.data[lane].eq(bp.a[lane])
            m.d.comb += [qi.last.eq(bp.last), qi.side.eq(0)]

        # A8X2 residual: r = x - dequantize(q1), into Q2
        res_l = data.StructLayout({"data": data.ArrayLayout(signed(FOLD_BITS + 1), L),
                                   "last": 1, "side": side_l})
        res = Pipe(m, "res", res_l, self.RES_STAGES)
        qo = q1.o_beat.payload
        # RES_STAGES: (1) the dequantized value v = q << gshift and the shift s = -exp
        # (clamped as the shifts need it); (2) the shifts: v >> (s - 1) for s > 0, v << -s
        # otherwise; (3) round (right) or saturate (left): dequantize(q1); (4) x - it
        v1r = Signal(data.ArrayLayout(signed(8 + 2 ** GSHIFT_BITS), L))
        x1r = Signal(data.ArrayLayout(signed(FOLD_BITS), L))
        shr1 = Signal(6)   # min(s - 1, 40) (s > 0)
        kl1 = Signal(6)    # min(-s, 32) (s <= 0)
        right1 = Signal()  # s > 0
        # s = -exp without an adder: s - 1 = ~exp, -s = exp, s > 0 is exp's sign
        exp_u = qo.exp.as_unsigned()[:EXP_BITS]
        shr = ~exp_u
        kl = exp_u
        m.d.sync += [x1r.eq(qo.x), right1.eq(qo.exp[-1]), shr1.eq(Mux(shr > 40, 40, shr)),
                     kl1.eq(Mux(kl > 32, 32, kl))]
        for lane in range(L):
            m.d.sync += v1r[lane].eq(Mux(qo.gzero, 0, qo.data[lane] << qo.gshift))
        vr2 = Signal(data.ArrayLayout(signed(len(v1r[0])), L))
        vl2 = Signal(data.ArrayLayout(signed(len(v1r[0]) + 32), L))
        x2r = Signal.like(x1r)
        right2 = Signal()
        deq3 = Signal(data.ArrayLayout(signed(WIDE + 9), L))
        x3r = Signal.like(x1r)
        m.d.sync += [x2r.eq(x1r), right2.eq(right1), x3r.eq(x2r)]
        for lane in range(L):
            m.d.sync += [vr2[lane].eq(v1r[lane] >> shr1), vl2[lane].eq(v1r[lane] << kl1),
                         deq3[lane].eq(Mux(right2, (vr2[lane] + 1) >> 1, saturate(vl2[lane]))),
                         res.result.data[lane].eq(x3r[lane] - deq3[lane])]
        side_d = delay(m, qo.side, self.RES_STAGES - 1, "res_side")
        last_d = delay(m, qo.last, self.RES_STAGES - 1, "res_last")
        m.d.sync += [res.result.side.eq(side_d[-1]), res.result.last.eq(last_d[-1])]
        r2 = q2.i_beat.payload
        m.d.comb += [r2.data.eq(res.out.payload.data), r2.last.eq(res.out.payload.last),
                     r2.side.eq(res.out.payload.side), r2.count.eq(length), r2.a15.eq(0),
                     r2.per_row.eq(a.per_row), q2.i_beat.valid.eq(res.out.valid),
                     res.out.ready.eq(q2.i_beat.ready)]
        res_ok = _reg_credit(m, res, "res")
        sel_res = Signal()  # A8X2's second sweep, registered at go
        with m.If(go):
            m.d.sync += sel_res.eq(a8x2 & sweep)
        m.d.comb += [res.take.eq(sel_res & q1.o_beat.valid & res_ok)]

        # beat -> the fn's component (one-hot selects, registered at go)
        sel_in = {"add": (add.i_beat, is_[VecFn.RESIDUAL]),
                  "pwl": (pwl.i_beat, is_[VecFn.GELU] | is_[VecFn.SILU_MUL]),
                  "rope": (rope.i_beat, is_[VecFn.ROPE]),
                  "norm": (nrm.i_beat, norm),
                  "smax": (smx.i_beat, is_[VecFn.SOFTMAX]),
                  "fold": (fold.i_beat, quant & vfold),
                  "q1": (q1.i_beat, quant & ~vfold)}
        ready_in = 0
        for name, (port, cond) in sel_in.items():
            sel = Signal(name=f"sel_in_{name}")
            with m.If(go):
                m.d.sync += sel.eq(cond)
            if name != "q1":
                m.d.comb += port.valid.eq(sel & beat.valid)
            else:
                with m.If(sel):
                    m.d.comb += port.valid.eq(beat.valid)
            ready_in = ready_in | (sel & port.ready)
        m.d.comb += beat.ready.eq(ready_in)

        # -- normalizer parameters: gamma (and beta) words per output beat -----------------------
        pmeta_l = data.StructLayout({"v": 1, "k": range(KC), "j": range(SF), "beat_last": 1})
        m.submodules.prd = prd = MemReader(16, _bits(prm_word(p)), pmeta_l)
        p_on = Signal()
        pt = Signal(9)
        pb = Signal(13)   # beat of the row
        pv = Signal()     # 0 gamma, 1 beta
        pk = Signal(range(KC))
        pw = Signal(18)   # piece of the vector: pb * KC + pk
        lsf = _log2(SF, "pieces per word")
        pword = pw >> lsf  # its word
        p_blast = Signal()  # pb == Bt_m1: the row's last beat (registered)
        p_tlast = Signal()  # pt == rows_m1: the last row (registered)
        prm_b = Signal(20)  # prm + Wc: beta (LAYERNORM)
        with m.If(go):
            m.d.sync += [p_on.eq(norm), pt.eq(0), pb.eq(0), pv.eq(0), pk.eq(0), pw.eq(0),
                         p_blast.eq(e.Bt_m1 == 0), p_tlast.eq(e.rows_m1 == 0),
                         prm_b.eq(a.prm + Wc)]
        # the word's offset in the vector: pieces past the row's end (a beat wider than a
        # word, KC > 1) read its last word; with KC = 1 a beat's piece never passes the row's
        # last word (pw <= Bt_m1 and Bt_m1 >> lsf = (length - 1) >> lc = Wc - 1), no clamp
        p_off = Mux(pword < Wc, pword, Wc - 1) if KC > 1 else pword
        p_issue = Signal()
        vec_end = pk == KC - 1
        lastv = pv | is_[VecFn.RMSNORM]
        m.d.comb += [
            p_issue.eq(p_on & prd.i.ready),
            prd.i.valid.eq(p_issue),
            prd.i.payload.addr.eq(Mux(pv, prm_b, a.prm) + p_off),
            prd.i.payload.meta.v.eq(pv), prd.i.payload.meta.k.eq(pk),
            prd.i.payload.meta.j.eq(pw[:lsf] if lsf else 0),
            prd.i.payload.meta.beat_last.eq(vec_end & lastv),
        ]
        with m.If(p_issue):
            with m.If(~vec_end):
                m.d.sync += [pk.eq(pk + 1), pw.eq(pw + 1)]
            with m.Elif(~lastv):
                m.d.sync += [pk.eq(0), pv.eq(1), pw.eq(pw - (KC - 1))]
            with m.Else():
                m.d.sync += [pk.eq(0), pv.eq(0)]
                with m.If(p_blast):
                    m.d.sync += [pb.eq(0), pw.eq(0), pt.eq(pt + 1), p_blast.eq(e.Bt_m1 == 0),
                                 p_tlast.eq(pt + 1 == e.rows_m1)]
                    with m.If(p_tlast):
                        m.d.sync += p_on.eq(0)
                with m.Else():
                    m.d.sync += [pb.eq(pb + 1), pw.eq(pw + 1), p_blast.eq(pb + 1 == e.Bt_m1)]
        m.d.comb += [e.prd_addr.eq(prd.rd_addr), e.prd_en.eq(prd.rd_en)]
        m.d.comb += prd.rd_data.eq(self.prm_data)
        par = nrm.i_param
        par_valid = Signal()
        par_take = Signal()
        m.d.comb += [par_take.eq(prd.o.valid & (~par_valid | par.ready)),
                     prd.o.ready.eq(par_take), par.valid.eq(par_valid)]
        bias = prm_word(p)(prd.o.payload.data).out.bias
        pm = prd.o.payload.meta
        with m.If(par_take):
            for lane in range(L):
                bl = _pick((bias[j * Pf + lane % Pf] for j in range(SF)), pm.j)
                with m.If(pm.k == lane // Pf):
                    with m.If(pm.v):
                        m.d.sync += par.payload.beta[lane].eq(bl)
                    with m.Else():
                        m.d.sync += par.payload.gamma[lane].eq(bl)
            with m.If(pm.beat_last):
                m.d.sync += par_valid.eq(1)
            with m.Elif(par.ready):
                m.d.sync += par_valid.eq(0)
        with m.Elif(par_valid & par.ready):
            m.d.sync += par_valid.eq(0)

        # -- the writer's input: the op's output beat through a register and a skid -----------
        # (OUT_STAGES, OUT_DEPTH): the selected source's beat into a main and a skid register,
        # taken only while the skid is empty (a registered ready), so the writer's ready
        # reaches these registers only, never the components' FIFOs, and the writer starts
        # from registers, not from the one-hot select of eight sources' valids and data.
        # ``wide``: wide lanes, or COPY's raw ACT word; ``q8`` .. ``exp``: an A8 beat.
        ob_l = data.StructLayout({"wide": unsigned(max(L * WIDE, ab)),
                                  "q8": data.ArrayLayout(signed(8), L),
                                  "gshift": unsigned(GSHIFT_BITS), "gzero": 1,
                                  "exp": unsigned(EXP_BITS)})
        ob_in = Signal(ob_l)
        ob = Signal(ob_l)      # the main register: the writer's input
        ob_sk = Signal(ob_l)   # the skid register
        ob_v = Signal()        # main holds a beat
        ob_sk_v = Signal()     # skid holds a beat (then nothing is taken)
        o_ready = Signal()     # the writer takes the main register's beat (its last piece)
        a8x2_res_go = a8x2 & sweep
        cpo = cp.out
        wide_src = {"add": (add.o_beat, add.o_beat.payload, is_[VecFn.RESIDUAL]),
                    "pwl": (pwl.o_beat, pwl.o_beat.payload,
                            is_[VecFn.GELU] | is_[VecFn.SILU_MUL]),
                    "rope": (rope.o_beat, rope.o_beat.payload, is_[VecFn.ROPE]),
                    "norm": (nrm.o_beat, nrm.o_beat.payload.data, norm),
                    "smax": (smx.o_beat, smx.o_beat.payload.data, is_[VecFn.SOFTMAX]),
                    "copy": (cpo, cpo.payload.data, is_[VecFn.COPY]),
                    "q1": (q1.o_beat, None, quant & ~a8x2_res_go),
                    "q2": (q2.o_beat, None, quant & a8x2_res_go)}
        # one-hot selects, registered at go (sweep is set by then): the valid, the data and
        # each source's ready as AND-OR terms, no priority chain
        ov, ow = 0, 0
        sel_out = {}
        for name, (port, payload, cond) in wide_src.items():
            sel = sel_out[name] = Signal(name=f"sel_out_{name}")
            with m.If(go):
                m.d.sync += sel.eq(cond)
            ov = ov | (sel & port.valid)
            if payload is not None:
                ow = ow | Mux(sel, Value.cast(payload), 0)
            if name == "q1":
                # A8X2's second sweep: Q1 feeds the residual (its credit), not the writer
                m.d.comb += port.ready.eq((sel_res & res_ok) | (sel & ~ob_sk_v))
            else:
                m.d.comb += port.ready.eq(sel & ~ob_sk_v)
        q1p, q2p = q1.o_beat.payload, q2.o_beat.payload
        lo_plane = Signal()  # A15's second sweep: Q1's low plane
        with m.If(go):
            m.d.sync += lo_plane.eq(a15 & sweep)
        from_q2 = sel_out["q2"]
        m.d.comb += ob_in.wide.eq(ow)
        for lane in range(L):
            m.d.comb += ob_in.q8[lane].eq(Mux(from_q2, q2p.data[lane],
                                              Mux(lo_plane, q1p.lo[lane], q1p.data[lane])))
        m.d.comb += [
            ob_in.gshift.eq(Mux(from_q2, q2p.gshift, q1p.gshift)),
            ob_in.gzero.eq(Mux(from_q2, q2p.gzero, q1p.gzero)),
            ob_in.exp.eq(Mux(from_q2, q2p.exp + q2p.side, q1p.exp + q1p.side)),
        ]
        ob_push = ov & ~ob_sk_v
        # (the skid register copies the input whenever it is empty; ob_sk_v says whether it
        # holds a beat)
        with m.If(~ob_sk_v):
            m.d.sync += ob_sk.eq(ob_in)
        with m.If(~ob_v | o_ready):
            m.d.sync += [ob.eq(Mux(ob_sk_v, ob_sk, ob_in)), ob_v.eq(ob_sk_v | ob_push),
                         ob_sk_v.eq(0)]
        with m.Elif(ob_push):
            m.d.sync += ob_sk_v.eq(1)

        # -- writer --------------------------------------------------------------------------------
        # the output beat of the op's fn: wide lanes, or an A8 beat, or a raw ACT word
        o_valid = ob_v
        o_wide = Signal(wide_lanes(L))
        o_q8 = ob.q8
        m.d.comb += o_wide.eq(ob.wide[:L * WIDE])

        w_on = Signal()
        wt = Signal(9)
        ww = Signal(18)
        wk = Signal(range(max(KF, KH, KQ)))  # piece of the beat
        NS = max(SF, SH, SQ)
        wj = Signal(range(NS))  # piece of the word
        # wj decoded, registered with it: wj_eq[k] = (wj == k), wj_gt[k] = (wj > k)
        wj_eq = Signal(NS, init=1)
        wj_gt = Signal(NS)
        w_row = Signal(24)
        w_rem = Signal(signed(20))   # elements of the row from word ww on
        wp_rem = Signal(signed(20))  # elements of the row from the piece on
        w_row_end = Signal()         # wp_rem <= po: the row's last piece (registered)
        w_live = Signal(C)           # element c of word ww is in the row: c < w_rem
        E_w = Mux(out_half, PC, C)
        # the written piece size (as ``piece`` above: registers loaded every cycle)
        po_c = Mux(quant, Pq, Mux(copy_act, R, Mux(out_half, Ph, Pf)))
        po = Signal(range(max(Pq, R, Ph, Pf) + 1))
        po2 = Signal(range(2 * max(Pq, R, Ph, Pf) + 1))
        len_le_po = Signal()
        m.d.sync += [po.eq(po_c), po2.eq(po_c << 1), len_le_po.eq(length <= po_c)]
        # the op's last piece indices, registered at go
        kout_last = Signal.like(wk)
        jout_last = Signal.like(wj)
        w_kl = Signal()  # wk == kout_last (registered)
        w_jl = Signal()  # wj == jout_last (registered)
        row_live = Signal(C)  # a row's first word's live mask (loaded every cycle, as po)
        m.d.sync += row_live.eq(Cat(Const(c, 20) < length for c in range(C)))
        kl_c = Mux(quant, KQ - 1, Mux(copy_act, 0, Mux(out_half, KH - 1, KF - 1)))
        jl_c = Mux(quant, SQ - 1, Mux(copy_act, 0, Mux(out_half, SH - 1, SF - 1)))
        with m.If(go):
            m.d.sync += [w_on.eq(1), wt.eq(0), ww.eq(0), wk.eq(0), wj.eq(0), wj_eq.eq(1),
                         wj_gt.eq(0), w_rem.eq(length), wp_rem.eq(length),
                         w_row_end.eq(len_le_po), w_live.eq(row_live),
                         w_row.eq(a.dst + Mux(sweep, e.p_blk, 0)),
                         kout_last.eq(kl_c), jout_last.eq(jl_c),
                         w_kl.eq(kl_c == 0), w_jl.eq(jl_c == 0)]
        to_act = e.to_act
        # the output register (WR_STAGES): the word written, held until its port is ready
        # (and a skid register behind it, so that the writer's go is a register, not the
        # port's ready: with the port ready the skid stays empty, the latency is WR_STAGES)
        wo_valid = Signal()
        # wo_valid & ~to_act, wo_valid & to_act: the ports' valids as registers of their own
        # (to_act is constant while the op runs), no LUT on the chip's arbitration path
        wo_acc_v = Signal()
        wo_act_v = Signal()
        wo_addr = Signal(16)
        wo_data = Signal(max(cb, ab))
        ws_valid = Signal()
        ws_addr = Signal(16)
        ws_data = Signal(max(cb, ab))
        wo_ready = Mux(to_act, self.act_wr.ready, self.acc_wr.ready)
        wo_free = ~ws_valid
        m.d.comb += [self.acc_wr.payload.addr.eq(wo_addr), self.act_wr.payload.addr.eq(wo_addr),
                     self.acc_wr.payload.data.eq(wo_data[:cb]),
                     self.act_wr.payload.data.eq(wo_data[:ab]),
                     self.acc_wr.valid.eq(wo_acc_v), self.act_wr.valid.eq(wo_act_v)]
        w_addr = w_row + ww
        w_word = w_row_end | w_jl  # a word's last piece: write it
        # words wider than a beat (L < E) gather their earlier pieces here
        hold_w = Signal(wide_lanes(C)) if SF > 1 else None
        hold_q = Signal(data.ArrayLayout(signed(8), R)) if SQ > 1 else None

        def gathered(c, P, S, K, E, src, hold):
            """Element c of the written word (pieces of P elements, S per word, K per
            beat, E per word) from the beat ``src`` and the pieces held. Pieces after the
            current one are 0: a row ending in an early piece of its last word writes the
            word then, and ``hold`` still has an earlier word's pieces there."""
            if S == 1:
                return _pick((src[k * E + c] for k in range(K)), wk)
            return Mux(wj_eq[c // P], src[c % P], Mux(wj_gt[c // P], hold[c], 0))

        word = acc_word(p)(Signal(cb, name="acc_word_out"))
        for c in range(C):
            full = gathered(c, Pf, SF, KF, C, o_wide, hold_w)
            live = w_live[c]
            if c < PC:
                hv = gathered(c, Ph, SH, KH, PC, o_wide, hold_w)
                m.d.comb += word[c].eq(Mux(live, Mux(out_half, hv, full), 0))
            else:
                m.d.comb += word[c].eq(Mux(live & ~out_half, full, 0))
        aw = act_word(p)(Signal(ab, name="act_word_out"))
        for r in range(R):
            m.d.comb += aw.data[r].eq(gathered(r, Pq, SQ, KQ, R, o_q8, hold_q))
        m.d.comb += [aw.gshift.eq(ob.gshift), aw.gzero.eq(ob.gzero), aw.exp.eq(ob.exp)]
        # the writer takes a piece when one is offered and it can go: w_go from registers and
        # the port's ready only; o_ready (a beat's last piece) does not wait for o_valid
        w_go = Signal()
        w_step = Signal()  # a piece is written, or held for its word
        m.d.comb += [w_go.eq(w_on & (~w_word | wo_free)), w_step.eq(w_go & o_valid),
                     o_ready.eq(w_go & (w_row_end | w_kl))]
        w_put = Signal()  # w_step & w_word (w_go is w_on & wo_free then): a word written
        m.d.comb += w_put.eq(w_on & o_valid & w_word & wo_free)
        w_data = Mux(to_act, Mux(copy_act, ob.wide[:ab], aw.as_value()),
                     word.as_value())
        with m.If(~ws_valid):  # the skid copies the word offered while it is empty
            m.d.sync += [ws_addr.eq(w_addr), ws_data.eq(w_data)]
        with m.If(~wo_valid | wo_ready):
            m.d.sync += [wo_valid.eq(ws_valid | w_put), ws_valid.eq(0),
                         wo_acc_v.eq((ws_valid | w_put) & ~to_act),
                         wo_act_v.eq((ws_valid | w_put) & to_act),
                         wo_addr.eq(Mux(ws_valid, ws_addr, w_addr)),
                         wo_data.eq(Mux(ws_valid, ws_data, w_data))]
        with m.Elif(w_put):
            m.d.sync += ws_valid.eq(1)
        # (a piece held: w_step & ~w_word, where w_go is w_on: written so, the hold registers'
        # enable does not go through wo_free)
        with m.If(w_on & o_valid & ~w_word):
            if hold_w is not None:  # L < C: a piece is the whole beat
                for c in range(C):
                    m.d.sync += hold_w[c].eq(Mux(wj_eq[c // L], o_wide[c % L], hold_w[c]))
            if hold_q is not None:
                for r in range(R):
                    m.d.sync += hold_q[r].eq(Mux(wj_eq[r // L], o_q8[r % L], hold_q[r]))
        with m.If(w_step):
            with m.If(w_row_end):
                m.d.sync += [wk.eq(0), wj.eq(0), wj_eq.eq(1), wj_gt.eq(0),
                             wt.eq(wt + 1), wp_rem.eq(length), w_row_end.eq(len_le_po),
                             w_row.eq(w_row + a.dst_stride),
                             w_kl.eq(kout_last == 0), w_jl.eq(jout_last == 0)]
                with m.If(wt == e.rows_m1):
                    m.d.sync += w_on.eq(0)
            with m.Else():
                m.d.sync += [wk.eq(Mux(w_kl, 0, wk + 1)), wp_rem.eq(wp_rem - po),
                             w_row_end.eq(wp_rem <= po2),
                             wj.eq(Mux(w_word, 0, wj + 1)),
                             wj_eq.eq(Mux(w_word, 1, wj_eq << 1)),
                             wj_gt.eq(Mux(w_word, 0, wj_gt | wj_eq)),
                             w_kl.eq(Mux(w_kl, kout_last == 0, wk + 1 == kout_last)),
                             w_jl.eq(Mux(w_word, jout_last == 0, wj + 1 == jout_last))]
        # a word written (w_put): the word index, the elements left and the next word's live
        # mask, under one enable and selected by the registered w_row_end (the next row's
        # first word, or the row's next word), not nested in the piece's branches above
        live_nx = Cat(Mux(out_half, Const(c + PC, 20) < w_rem, Const(c + C, 20) < w_rem)
                      for c in range(C))
        with m.If(w_put):
            m.d.sync += [ww.eq(Mux(w_row_end, 0, ww + 1)),
                         w_rem.eq(Mux(w_row_end, length, w_rem - E_w)),
                         w_live.eq(Mux(w_row_end, row_live, live_nx))]

        busy = (r_on | w_on | wo_valid | ws_valid | cp.busy | mv | sk_v | p_on
                | ob_v | ob_sk_v | ard.busy | brd.busy | prd.busy
                | asm_valid | par_valid
                | add.busy | pwl.busy | rope.busy | nrm.busy | smx.busy | q1.busy | q2.busy
                | fold.busy | res.busy)
        m.d.sync += e.finished.eq(~go & ~busy)  # FINISH_STAGES: registered

"""The chip: on-chip buffers, the static-graph sequencer, and the units it drives.

::

    host ports ── start, prog_addr, prog_len, pos_init ──> sequencer ── status, counters
                                                              │ per-unit command queues
          ┌─────────────── LOAD ─── STORE ─── GEMM ─── KV ─── VEC (optional)
    off-chip bus <──> DMA engines     │         │        │       │
                        │  WGT ACT ACC PRM KV buffers (amaranth.lib.memory)  UOP memory

The vector unit (``hw/vector/engine.py``) is built with ``Chip(params, vector=True)``;
without it ``VEC`` is ``Err.UNSUPPORTED`` (``sim.isa_sim.IsaSim(vector=...)`` models both).
Buffer write ports are shared: ACC takes GEMM outputs first, then VEC results, then LOADs;
ACT takes VEC results before LOADs (a unit's write waits while one before it writes).

On ``start`` (a one-cycle pulse) every unit, queue and counter is reset (the buffers keep their
contents: the KV cache lives across runs; the units and queues take the reset one cycle later,
:data:`UNIT_RESET_DELAY`, from one register on a global buffer, see below), ``pos = pos_init``,
``kv_base = 0``, and the sequencer loads ``prog_len`` micro-ops from off-chip bus-word address
``prog_addr`` into the micro-op memory (each micro-op is ``ceil(128 / bus_bits)`` bus words,
low first; ``Err.PROG_LOAD`` if it does not fit ``uop_depth`` or the off-chip memory). It then
fetches micro-ops in order (two cycles each) and dispatches each to its unit's in-order queue,
or executes it itself (``NOP``, ``WAIT``, ``SETPOS``, ``HALT``; ``hw/isa.py``). Units run
concurrently; only ``WAIT`` orders them. ``HALT`` waits until every unit is idle, then raises
``done``.

An illegal micro-op, or an error a unit reports (it checks a micro-op before touching any
memory), latches ``error`` / ``error_pc`` (the first one wins), aborts every unit (queued
micro-ops are dropped, in-flight bus reads drained) and ends in ``done`` with the error set:
the chip never hangs and never writes outside a buffer.

Counters (:class:`hw.isa.Counter`, 48 bits) are reset by ``start`` and readable at any
time on ``counters``.

``rst`` resets the chip's logic, not its buffers (a board's link aborts a run with it): the
sequencer, errors and counters at once, the units and queues :data:`UNIT_RESET_DELAY` cycles
later, so a caller holds ``rst`` that many cycles longer than
one (``hw.link.Link``'s ``abort`` does) or keeps the units' requests out meanwhile. The units'
reset (``start`` or ``rst``) fans out to most of the chip's flops: it is one register, put on a
global clock network on ECP5 (a ``DCCA``; nextpnr promotes only clocks by itself) rather than a
tree of LUTs; so are the GEMM and vector units' abort copies and the vector datapath's reset
(the units' reset or abort, one register: ``VecEngine(reset_ports=True)``). The control
logic's reset is ``rst`` itself (a few thousand flops).
"""

import math

from amaranth.hdl import (
    C,
    Cat,
    ClockSignal,
    Instance,
    Module,
    Mux,
    ResetInserter,
    ResetSignal,
    Signal,
    unsigned,
)
from amaranth.lib import data, fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .bus import DMA_ADDR_BITS, BusSignature, MemReader, max_word_bits, word_bits
from .dma import LoadEngine, StoreEngine
from .gemm_engine import GemmEngine, cmd_layout, pc_bits
from .isa import (
    INSTR,
    INSTR_BITS,
    Buf,
    Counter,
    Err,
    Op,
    PosReg,
    Unit,
    buffer_depth,
    bus_bits,
    check_params,
    kv_base_bits,
)
from .kv import KvEngine
from .params import ChipParams
from .vector.engine import VecEngine

__all__ = ["Chip", "COUNTER_BITS", "QUEUED_UNITS", "UNIT_RESET_DELAY"]

COUNTER_BITS = 48
#: Units with a command queue in a build without the vector unit (``VEC`` is UNSUPPORTED);
#: ``Chip.queued_units`` is the tuple of a build.
QUEUED_UNITS = (Unit.LOAD, Unit.STORE, Unit.GEMM, Unit.KV)
#: Cycles from ``start`` / ``rst`` to the units' and queues' reset (module docstring).
UNIT_RESET_DELAY = 1


def global_net(m: Module, platform, sig: Signal, name: str) -> Signal:
    """``sig`` through a global clock buffer where the platform has one (ECP5: ``DCCA``, which
    nextpnr routes to flops' reset and LUT inputs too), else ``sig`` itself (simulation)."""
    if getattr(platform, "family", None) != "ecp5":
        return sig
    out = Signal(name=f"{name}_g")
    m.submodules[f"{name}_gbuf"] = Instance("DCCA", i_CLKI=sig, i_CE=C(1, 1), o_CLKO=out)
    return out


def kept_flop(m: Module, platform, q: Signal, d, rst, name: str) -> None:
    """``q`` = ``d`` a cycle later (reset to 0 by ``rst`` or the domain's reset) in ``m``'s
    sync domain. On ECP5 it is a ``TRELLIS_FF`` instance marked ``keep``: Yosys merges
    plain flops with the same input (``opt_merge``), which would turn a set of copies meant
    to split a large fanout back into one net; elsewhere (simulation) a plain register."""
    if getattr(platform, "family", None) != "ecp5":
        m.d.sync += q.eq(d)
        return
    dv = Signal(name=f"{name}_d")
    m.d.comb += dv.eq(d)
    m.submodules[f"{name}_ff"] = Instance(
        "TRELLIS_FF", p_GSR="DISABLED", p_CEMUX="1", p_CLKMUX="CLK", p_LSRMUX="LSR",
        p_REGSET="RESET", p_SRMODE="LSR_OVER_CE", a_keep=1,
        i_CLK=ClockSignal(), i_LSR=rst | ResetSignal(allow_reset_less=True), i_CE=C(1, 1),
        i_DI=dv, o_Q=q)


_OP_UNIT = {Op.LOAD: Unit.LOAD, Op.STORE: Unit.STORE, Op.GEMM: Unit.GEMM,
            Op.KV_APPEND: Unit.KV}


class Chip(wiring.Component):
    """The accelerator (``ChipParams`` sizes everything); ``vector``: with the vector unit."""

    def __init__(self, params: ChipParams = ChipParams(), vector: bool = False):
        check_params(params)
        self.params = params
        self.vector = vector
        self.queued_units = QUEUED_UNITS + ((Unit.VEC,) if vector else ())
        self.load = LoadEngine(params)
        self.store = StoreEngine(params)
        self.gemm = GemmEngine(params)
        self.kv = KvEngine(params)
        self.vec = VecEngine(params, reset_ports=True) if vector else None
        super().__init__({
            "bus": Out(BusSignature(params)),
            "start": In(1),
            "rst": In(1),
            "prog_addr": In(32),
            "prog_len": In(16),
            "pos_init": In(16),
            "running": Out(1),
            "done": Out(1),
            "error": Out(Err),
            "error_pc": Out(pc_bits(params) + 1),  # PROG_RANGE may report pc = uop_depth
            "pos": Out(16),
            "counters": Out(data.ArrayLayout(unsigned(COUNTER_BITS), len(Counter))),
        })

    def elaborate(self, platform):
        top = Module()  # buffers, units and queues (reset by ``unit_rst``)
        m = Module()  # the control logic (reset by ``rst``), a submodule of ``top``
        p = self.params
        pcw = pc_bits(p)
        B = bus_bits(p)
        start = self.start
        assert UNIT_RESET_DELAY == 1  # one register below
        unit_rst_r = Signal()
        top.d.sync += unit_rst_r.eq(start | self.rst)
        unit_rst = global_net(top, platform, unit_rst_r, "unit_rst")

        def unit(name, component):
            top.submodules[name] = ResetInserter(unit_rst)(component)
            return component

        # -- buffers -----------------------------------------------------------------------
        mems = {}
        for buf in Buf:
            gran = {"granularity": 8} if buf == Buf.KV else {}
            mems[buf] = Memory(shape=unsigned(word_bits(p, buf)), depth=buffer_depth(p, buf),
                               init=[])
            top.submodules[f"mem_{buf.name.lower()}"] = mems[buf]
            mems[buf]._gran = gran
        wports = {b: mems[b].write_port(**mems[b]._gran) for b in Buf}
        store_ports = {b: mems[b].read_port() for b in Buf}
        top.submodules.uop = uop = Memory(shape=unsigned(INSTR_BITS), depth=p.uop_depth, init=[])
        uop_w = uop.write_port()
        uop_r = uop.read_port()

        # -- units ----------------------------------------------------------------------------
        load = unit("load", self.load)
        store = unit("store", self.store)
        gemm = unit("gemm", self.gemm)
        kv = unit("kv", self.kv)
        units = {Unit.LOAD: load, Unit.STORE: store, Unit.GEMM: gemm, Unit.KV: kv}
        vec = None
        if self.vector:
            # its own resets (``reset_ports``): the units' reset, and below the datapath's
            vec = units[Unit.VEC] = top.submodules.vec = self.vec
            top.d.comb += vec.rst.eq(unit_rst)
        queued = self.queued_units
        op_unit = {**_OP_UNIT, **({Op.VEC: Unit.VEC} if vec is not None else {})}
        done_of = {u: e.done for u, e in units.items()}
        busy_of = {u: e.busy for u, e in units.items()}
        errs = list(units.values())
        units_busy = Signal(1)
        m.d.comb += units_busy.eq(Cat(*busy_of.values()).any())

        # GEMM read ports
        for name, buf in (("wgt", Buf.WGT), ("kvw", Buf.KV), ("act", Buf.ACT),
                          ("prm", Buf.PRM), ("kvp", Buf.KV)):
            port = mems[buf].read_port()
            m.d.comb += [port.addr.eq(getattr(gemm, f"{name}_addr")),
                         port.en.eq(getattr(gemm, f"{name}_en")),
                         getattr(gemm, f"{name}_data").eq(port.data)]
        # KV engine: an ACT read port
        kv_act = mems[Buf.ACT].read_port()
        m.d.comb += [kv_act.addr.eq(kv.act_addr), kv_act.en.eq(kv.act_en),
                     kv.act_data.eq(kv_act.data)]
        # vector unit: ACC (two, operands a and b), ACT, PRM and KV read ports
        if vec is not None:
            for name, buf in (("acc_a", Buf.ACC), ("acc_b", Buf.ACC), ("act", Buf.ACT),
                              ("prm", Buf.PRM), ("kv", Buf.KV)):
                port = mems[buf].read_port()
                m.d.comb += [port.addr.eq(getattr(vec, f"{name}_addr")),
                             port.en.eq(getattr(vec, f"{name}_en")),
                             getattr(vec, f"{name}_data").eq(port.data)]

        # -- buffer writes: DMA loads, GEMM outputs (ACC), KV appends (KV), VEC results ---------
        # (ACC: GEMM, then VEC, then LOAD; ACT: VEC, then LOAD)
        lw = load.buf_wr
        vec_acc = vec.acc_wr.valid if vec is not None else C(0, 1)
        vec_act = vec.act_wr.valid if vec is not None else C(0, 1)
        for buf in Buf:
            wp = wports[buf]
            mine = lw.valid & (lw.payload.buf == buf)
            nb = word_bits(p, buf)
            if buf == Buf.ACC:
                g = gemm.acc_wr
                addr, wdata = lw.payload.addr, lw.payload.data[:nb]
                if vec is not None:
                    v = vec.acc_wr
                    addr = Mux(v.valid, v.payload.addr, addr)
                    wdata = Mux(v.valid, v.payload.data, wdata)
                    m.d.comb += v.ready.eq(~g.valid)
                m.d.comb += [
                    wp.addr.eq(Mux(g.valid, g.payload.addr, addr)),
                    wp.data.eq(Mux(g.valid, g.payload.data, wdata)),
                    wp.en.eq(g.valid | vec_acc | mine),
                    g.ready.eq(1),
                ]
            elif buf == Buf.ACT and vec is not None:
                v = vec.act_wr
                m.d.comb += [
                    wp.addr.eq(Mux(v.valid, v.payload.addr, lw.payload.addr)),
                    wp.data.eq(Mux(v.valid, v.payload.data, lw.payload.data[:nb])),
                    wp.en.eq(v.valid | mine),
                    v.ready.eq(1),
                ]
            elif buf == Buf.KV:
                k = kv.kv_wr
                lanes = len(wp.en)
                m.d.comb += [
                    wp.addr.eq(Mux(k.valid, k.payload.addr, lw.payload.addr)),
                    wp.data.eq(Mux(k.valid, k.payload.data, lw.payload.data[:nb])),
                    wp.en.eq(Mux(k.valid, k.payload.en, Mux(mine, (1 << lanes) - 1, 0))),
                    k.ready.eq(1),
                ]
            else:
                m.d.comb += [wp.addr.eq(lw.payload.addr), wp.data.eq(lw.payload.data[:nb]),
                             wp.en.eq(mine)]
        m.d.comb += lw.ready.eq(Mux(lw.payload.buf == Buf.ACC, ~gemm.acc_wr.valid & ~vec_acc,
                                    Mux(lw.payload.buf == Buf.KV, ~kv.kv_wr.valid,
                                        Mux(lw.payload.buf == Buf.ACT, ~vec_act, 1))))

        # -- buffer reads for STORE -------------------------------------------------------------
        top.submodules.store_rd = srd = ResetInserter(unit_rst)(
            MemReader(DMA_ADDR_BITS, max_word_bits(p), Buf))
        m.d.comb += [
            srd.i.valid.eq(store.buf_rd.valid),
            srd.i.payload.addr.eq(store.buf_rd.payload.addr),
            srd.i.payload.meta.eq(store.buf_rd.payload.buf),
            store.buf_rd.ready.eq(srd.i.ready),
            store.buf_rd_data.valid.eq(srd.o.valid),
            store.buf_rd_data.payload.eq(srd.o.payload.data),
            srd.o.ready.eq(store.buf_rd_data.ready),
        ]
        sbuf_d = Signal(Buf)
        with m.If(srd.rd_en):
            m.d.sync += sbuf_d.eq(store.buf_rd.payload.buf)
        rdata = 0
        for buf in Buf:
            port = store_ports[buf]
            m.d.comb += [port.addr.eq(srd.rd_addr),
                         port.en.eq(srd.rd_en & (store.buf_rd.payload.buf == buf))]
            rdata = Mux(sbuf_d == buf, port.data, rdata)
        m.d.comb += srd.rd_data.eq(rdata)

        # -- command queues ---------------------------------------------------------------------
        cl = cmd_layout(p)
        queues = {}
        for u in queued:
            q = ResetInserter(unit_rst)(fifo.SyncFIFOBuffered(width=cl.size,
                                                              depth=p.queue_depth))
            top.submodules[f"q_{u.name.lower()}"] = q
            queues[u] = q
        for u in queued:
            if u in (Unit.LOAD, Unit.STORE):
                continue
            q, eng = queues[u], units[u]
            m.d.comb += [eng.cmd.valid.eq(q.r_rdy), eng.cmd.payload.eq(q.r_data),
                         q.r_en.eq(eng.cmd.ready)]
        for u, eng in ((Unit.LOAD, load), (Unit.STORE, store)):
            q = queues[u]
            entry = cl(q.r_data)
            m.d.comb += [eng.cmd.valid.eq(q.r_rdy), eng.cmd.payload.args.eq(entry.args.dma),
                         eng.cmd.payload.pc.eq(entry.pc), q.r_en.eq(eng.cmd.ready)]

        # -- sequencer --------------------------------------------------------------------------
        pc = Signal(pcw + 1)
        prog_len = Signal(16)
        pos = Signal(16)
        kv_base = Signal(kv_base_bits(p))
        kv_depth = buffer_depth(p, Buf.KV)
        err = Signal(Err)
        err_pc = Signal(pcw + 1)
        m.d.comb += [self.error.eq(err), self.error_pc.eq(err_pc), self.pos.eq(pos)]
        outstanding = {u: Signal(range(p.queue_depth + 3), name=f"out_{u.name.lower()}")
                       for u in queued}
        push = {u: Signal(1, name=f"push_{u.name.lower()}") for u in queued}
        for u in queued:
            with m.If(start):
                m.d.sync += outstanding[u].eq(0)
            with m.Else():
                m.d.sync += outstanding[u].eq(outstanding[u] + push[u] - done_of[u])
        any_busy = Signal(1)
        m.d.comb += any_busy.eq(Cat(*(outstanding[u] != 0 for u in queued)).any() | units_busy)

        # unit-reported errors (the first one wins; a sequencer error has the same rule)
        unit_err = Signal(1)
        unit_code = Signal(Err)
        unit_pc = Signal(pcw)
        for e in reversed(errs):
            with m.If(e.err_valid):
                m.d.comb += [unit_err.eq(1), unit_code.eq(e.err_code), unit_pc.eq(e.err_pc)]
        seq_err = Signal(1)
        seq_code = Signal(Err)
        err_next = Signal(Err)
        m.d.comb += err_next.eq(err)
        with m.If(start):
            m.d.comb += err_next.eq(Err.NONE)
            m.d.sync += err_pc.eq(0)
        with m.Elif((err == Err.NONE) & unit_err):
            m.d.comb += err_next.eq(unit_code)
            m.d.sync += err_pc.eq(unit_pc)
        with m.Elif((err == Err.NONE) & seq_err):
            m.d.comb += err_next.eq(seq_code)
            m.d.sync += err_pc.eq(pc)
        m.d.sync += err.eq(err_next)
        # the abort broadcast: ``err != NONE``, as registers of their own (one per unit: the
        # fanout is large), loaded from the error's next value so they equal it every cycle
        abort = Signal(1)
        m.d.sync += abort.eq(err_next != Err.NONE)
        # (GEMM's and VEC's reset their datapaths with it: placed, those copies' fanout spans
        # the die, so on ECP5 they go on global buffers as the units' reset does)
        for name, eng in zip(("load", "store", "gemm", "kv", "vec")[:len(errs)], errs,
                             strict=True):
            ab = Signal(1, name=f"abort_{name}")
            kept_flop(m, platform, ab, err_next != Err.NONE, self.rst, f"abort_{name}")
            if name in ("gemm", "vec"):
                ab = global_net(m, platform, ab, f"abort_{name}")
            m.d.comb += eng.abort.eq(ab)
        if vec is not None:
            # the vector datapath's reset: the units' reset or abort, as one register (equal
            # to ``unit_rst_r | abort_vec`` every cycle) on one global buffer
            dp_rst = Signal(1)
            # (in ``top``, as ``unit_rst_r``: ``rst`` sets it, so it is not under ``rst``)
            kept_flop(top, platform, dp_rst, start | self.rst | (err_next != Err.NONE),
                      C(0, 1), "vec_dp_rst")
            top.d.comb += vec.dp_rst.eq(global_net(top, platform, dp_rst, "vec_dp_rst"))

        # counters
        cnt = {c: Signal(COUNTER_BITS, name=f"cnt_{c.name.lower()}") for c in Counter}
        inc = {c: Signal(1, name=f"inc_{c.name.lower()}") for c in Counter}
        # the sequencer's own counters (EXEC's decisions) count a cycle late, from registered
        # increments: EXEC is followed by at least one cycle (FETCH, or DRAIN before
        # ``done``), so they are complete by the time ``done`` rises
        late = (Counter.UOPS, Counter.STALL_WAIT, Counter.STALL_QUEUE)
        for c in Counter:
            m.d.comb += self.counters[c].eq(cnt[c])
            go = inc[c]
            if c in late:
                go = Signal(1, name=f"inc_{c.name.lower()}_r")
                m.d.sync += go.eq(inc[c])
            with m.If(start):
                m.d.sync += cnt[c].eq(0)
            with m.Elif(go):
                m.d.sync += cnt[c].eq(cnt[c] + 1)
        m.d.comb += [
            inc[Counter.CYCLES].eq(self.running),
            inc[Counter.BUSY_LOAD].eq(load.busy),
            inc[Counter.BUSY_STORE].eq(store.busy),
            inc[Counter.BUSY_GEMM].eq(gemm.busy),
            inc[Counter.BUSY_KV].eq(kv.busy),
            inc[Counter.BUSY_VEC].eq(vec.busy if vec is not None else C(0, 1)),
            inc[Counter.STALL_MEM].eq(load.stall_mem | store.stall_mem),
            inc[Counter.GRID_ROWS].eq(gemm.rows),
            inc[Counter.LOAD_WORDS].eq(load.words),
            inc[Counter.STORE_WORDS].eq(store.words),
        ]

        # boot: the program from off-chip memory into the micro-op memory
        IB = math.ceil(INSTR_BITS / B)
        offchip_words = p.offchip_kib * 1024 // p.offchip_bytes_per_cycle
        req_left = Signal(32)
        req_addr = Signal(32)
        rsp_word = Signal(range(IB + 1))
        rsp_uop = Signal(pcw + 1)
        shreg = Signal(IB * B)
        boot = Signal(1)  # in BOOT (a register of its own: the bus channel's select)
        # BOOTCHK's check, registered every cycle from the ports: in BOOTCHK (the cycle after
        # ``start``) it is the check of the values IDLE loaded, with no adder before the FSM
        boot_bad = Signal(1)
        m.d.sync += boot_bad.eq((self.prog_len > p.uop_depth)
                                | (self.prog_addr + self.prog_len * IB > offchip_words))
        # the bus read channel: boot loader, else the LOAD engine; writes: STORE engine
        bus = self.bus
        m.d.comb += [
            bus.rd_addr.valid.eq(Mux(boot, req_left != 0, load.bus_rd_addr.valid)),
            bus.rd_addr.payload.eq(Mux(boot, req_addr, load.bus_rd_addr.payload)),
            load.bus_rd_addr.ready.eq(~boot & bus.rd_addr.ready),
            load.bus_rd_data.valid.eq(~boot & bus.rd_data.valid),
            load.bus_rd_data.payload.eq(bus.rd_data.payload),
            bus.rd_data.ready.eq(Mux(boot, 1, load.bus_rd_data.ready)),
        ]
        wiring.connect(m, store.bus_wr, wiring.flipped(bus.wr))

        # The micro-op pipeline: the word of pc + 1 is read while pc is in FETCH / EXEC and
        # held in ``nxt_word``; FETCH moves it to ``cur`` and decodes it into registers (one-hot
        # op classes, the WAIT unit, the SETPOS result and its range check), so EXEC decides
        # from registers. ``PREFETCH`` (after BOOT) reads micro-op 0.
        nxt_word = Signal(INSTR_BITS)
        cur = Signal(INSTR)
        instr = cur
        d_nop, d_halt, d_wait, d_setpos, d_unsup, d_illegal = (
            Signal(1, name=f"d_{n}") for n in ("nop", "halt", "wait", "setpos", "unsup",
                                               "illegal"))
        d_queue = {u: Signal(1, name=f"d_q_{u.name.lower()}") for u in queued}
        d_wait_bad = Signal(1)
        d_wait_sel = {u: Signal(1, name=f"d_wsel_{u.name.lower()}") for u in queued}
        d_wait_any = Signal(1)  # WAIT on a unit without a queue: nothing pending
        d_set_bad = Signal(1)
        lvl_ok, lvl_ok0, lvl_ok1, done_d = ({u: Signal(1, name=f"{x}_{u.name.lower()}")
                                             for u in queued}
                                            for x in ("lvl_ok", "lvl_ok0", "lvl_ok1", "done_d"))
        d_set_kvb = Signal(1)
        d_set_new = Signal(len(instr.args.pos.value) + 1)
        with m.FSM() as seq_fsm:
            m.d.comb += [uop_r.addr.eq(Mux(boot, 0, pc + 1)), uop_r.en.eq(1)]
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [pc.eq(0), prog_len.eq(self.prog_len), pos.eq(self.pos_init),
                                 kv_base.eq(0),
                                 req_left.eq(self.prog_len * IB), req_addr.eq(self.prog_addr),
                                 rsp_word.eq(0), rsp_uop.eq(0), self.running.eq(1),
                                 self.done.eq(0)]
                    m.next = "BOOTCHK"
            with m.State("BOOTCHK"):
                with m.If(boot_bad):  # prog_len > uop_depth | req_addr + req_left > memory
                    m.d.comb += [seq_err.eq(1), seq_code.eq(Err.PROG_LOAD)]
                    m.next = "DRAIN"
                with m.Else():
                    m.d.sync += boot.eq(1)
                    m.next = "BOOT"
            with m.State("BOOT"):
                with m.If(bus.rd_addr.valid & bus.rd_addr.ready):
                    m.d.sync += [req_left.eq(req_left - 1), req_addr.eq(req_addr + 1)]
                with m.If(bus.rd_data.valid):
                    word = Signal(IB * B)
                    m.d.comb += word.eq(Mux(
                        rsp_word == 0, bus.rd_data.payload,
                        shreg | (bus.rd_data.payload << (rsp_word * B)).as_unsigned()))
                    with m.If(rsp_word == IB - 1):
                        m.d.comb += [uop_w.addr.eq(rsp_uop), uop_w.data.eq(word[:INSTR_BITS]),
                                     uop_w.en.eq(1)]
                        m.d.sync += [rsp_word.eq(0), rsp_uop.eq(rsp_uop + 1), shreg.eq(0)]
                    with m.Else():
                        m.d.sync += [rsp_word.eq(rsp_word + 1), shreg.eq(word)]
                with m.If(rsp_uop == prog_len):  # every word written: micro-op 0 is read
                    m.d.sync += boot.eq(0)
                    m.next = "PREFETCH"
            # WAIT's comparisons a cycle ahead: lvl_ok[u] == (outstanding[u] <= count) in EXEC,
            # from the next outstanding value (nothing is pushed in FETCH or in a WAIT's EXEC,
            # the only cycles before one it is read in) and the next cycle's micro-op
            in_fetch = seq_fsm.ongoing("FETCH")
            count_next = Mux(in_fetch, INSTR(nxt_word).args.wait.count, cur.args.wait.count)
            # (both outcomes of this cycle's done pulse, which is registered beside them)
            for u in queued:
                m.d.sync += [lvl_ok0[u].eq(outstanding[u] <= count_next),
                             lvl_ok1[u].eq(outstanding[u] - 1 <= count_next),
                             done_d[u].eq(done_of[u])]
                m.d.comb += lvl_ok[u].eq(Mux(done_d[u], lvl_ok1[u], lvl_ok0[u]))
            with m.State("PREFETCH"):
                m.d.sync += nxt_word.eq(uop_r.data)
                m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(abort):
                    m.next = "DRAIN"
                with m.Elif(pc >= prog_len):
                    m.d.comb += [seq_err.eq(1), seq_code.eq(Err.PROG_RANGE)]
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "EXEC"
                # decode the next micro-op
                w_ = INSTR(nxt_word)
                wo = w_.op
                known = [Op.NOP, Op.HALT, Op.WAIT, Op.SETPOS, *op_unit]
                if vec is None:
                    known.append(Op.VEC)
                wa = w_.args.wait
                sa = w_.args.pos
                kvb = sa.reg == PosReg.KV_BASE
                new = Signal.like(d_set_new)
                sum_kv, sum_pos = kv_base + sa.value, pos + sa.value  # (both: no mux before)
                m.d.comb += new.eq(Mux(sa.add, Mux(kvb, sum_kv, sum_pos), sa.value))
                m.d.sync += [
                    cur.eq(nxt_word),
                    d_nop.eq(wo == Op.NOP), d_halt.eq(wo == Op.HALT), d_wait.eq(wo == Op.WAIT),
                    d_setpos.eq(wo == Op.SETPOS),
                    d_unsup.eq((wo == Op.VEC) if vec is None else 0),
                    d_illegal.eq(~Cat(*(wo == o for o in known)).any()),
                    *(d_queue[u].eq(Cat(*(wo == o for o, uu in op_unit.items()
                                          if uu == u)).any()) for u in queued),
                    d_wait_bad.eq(wa.unit > max(Unit)),
                    *(d_wait_sel[u].eq(wa.unit == u) for u in queued),
                    d_wait_any.eq(~Cat(*(wa.unit == u for u in queued)).any()),
                    d_set_kvb.eq(kvb), d_set_new.eq(new),
                    d_set_bad.eq(Mux(sa.add,
                                     Mux(kvb, sum_kv >= kv_depth, sum_pos >= 1 << 16),
                                     Mux(kvb, sa.value >= kv_depth, sa.value >= 1 << 16))),
                ]
            with m.State("EXEC"):
                m.d.sync += nxt_word.eq(uop_r.data)
                for u in queued:  # (written only with w_en)
                    entry = Signal(cl, name=f"entry_{u.name.lower()}")
                    m.d.comb += [entry.args.eq(instr.args), entry.pos.eq(pos),
                                 entry.kv_base.eq(kv_base), entry.pc.eq(pc),
                                 queues[u].w_data.eq(entry)]
                nxt = Signal(1)
                with m.If(abort):
                    m.next = "DRAIN"
                with m.Else():  # the decoded classes are one-hot: no priority chain
                    with m.If(d_nop):
                        m.d.comb += nxt.eq(1)
                    with m.If(d_halt):
                        m.d.comb += inc[Counter.UOPS].eq(1)
                        m.next = "DRAIN"
                    with m.If(d_wait):
                        with m.If(d_wait_bad):
                            m.d.comb += [seq_err.eq(1), seq_code.eq(Err.BAD_FIELD),
                                         inc[Counter.UOPS].eq(1)]
                            m.next = "DRAIN"
                        with m.Else():
                            ok = Cat(d_wait_any, *(d_wait_sel[u] & lvl_ok[u]
                                                   for u in queued)).any()
                            with m.If(ok):
                                m.d.comb += nxt.eq(1)
                            with m.Else():
                                m.d.comb += inc[Counter.STALL_WAIT].eq(1)
                    with m.If(d_setpos):
                        with m.If(d_set_bad):
                            m.d.comb += [seq_err.eq(1), seq_code.eq(Err.BAD_FIELD),
                                         inc[Counter.UOPS].eq(1)]
                            m.next = "DRAIN"
                        with m.Else():
                            with m.If(d_set_kvb):
                                m.d.sync += kv_base.eq(d_set_new)
                            with m.Else():
                                m.d.sync += pos.eq(d_set_new)
                            m.d.comb += nxt.eq(1)
                    with m.If(d_unsup):
                        m.d.comb += [seq_err.eq(1), seq_code.eq(Err.UNSUPPORTED),
                                     inc[Counter.UOPS].eq(1)]
                        m.next = "DRAIN"
                    with m.If(d_illegal):
                        m.d.comb += [seq_err.eq(1), seq_code.eq(Err.ILLEGAL_OP),
                                     inc[Counter.UOPS].eq(1)]
                        m.next = "DRAIN"
                    for u in queued:
                        q = queues[u]
                        with m.If(d_queue[u]):
                            with m.If(q.w_rdy):
                                m.d.comb += [q.w_en.eq(1), push[u].eq(1), nxt.eq(1)]
                            with m.Else():
                                m.d.comb += inc[Counter.STALL_QUEUE].eq(1)
                    with m.If(nxt):
                        m.d.comb += inc[Counter.UOPS].eq(1)
                        m.d.sync += pc.eq(pc + 1)
                        m.next = "FETCH"
            with m.State("DRAIN"):
                with m.If(~any_busy | (abort & ~units_busy)):
                    m.d.sync += [self.running.eq(0), self.done.eq(1)]
                    m.next = "IDLE"
        top.submodules.ctl = ResetInserter(self.rst)(m)
        return top

"""The DMA engines: whole buffer words between the off-chip bus and the on-chip buffers.

:class:`LoadEngine` runs ``LOAD`` (off-chip -> buffer), :class:`StoreEngine` runs ``STORE``
(buffer -> off-chip). Each takes :func:`dma_cmd_layout` commands (a :class:`hw.isa.DmaArgs`
and the micro-op's ``pc``, for error reports) from its unit queue, one at a time, in order.
Off-chip addresses are bus words; a buffer word of ``W`` bits occupies
``bpw = hw.isa.bus_words_per(p, buf)`` consecutive bus words, little-endian: bus word ``k`` of
buffer word ``i`` is at ``off + i * bpw + k`` and holds bits ``k * B .. (k + 1) * B - 1``
(``B = hw.isa.bus_bits(p)``) of the word, zero above ``W`` (the ``hw/isa.py`` layout).
Buffer words travel to and from the chip's buffer arbiter left-aligned in
``hw.bus.max_word_bits(p)`` bits, zero above their own width (``hw/bus.py``).

Checks, on the command as taken (registered, per buffer, in a check register the front end
accepts it from), before anything is requested or written; the first that fails is
reported (``p`` the :class:`~hw.params.ChipParams`):

1. ``Err.BAD_FIELD``: ``buf`` not a :class:`~hw.isa.Buf` value (0..4), or ``words == 0``;
2. ``Err.SRAM_RANGE``: ``sram + words > hw.isa.buffer_depth(p, buf)``;
3. ``Err.OFFCHIP_RANGE``: ``off + words * bpw > offchip_kib * 1024 // offchip_bytes_per_cycle``.

A rejected command moves no data: once every earlier command has completed, ``err_valid``
and ``done`` pulse together (one cycle), with ``err_code`` / ``err_pc`` valid in that cycle.

Both engines have the same status ports:

``done`` (out)
    One-cycle pulse, registered: the cycle after a command's last word was accepted (by
    ``buf_wr`` for a LOAD, by ``bus_wr`` for a STORE), or with ``err_valid``.
``err_valid``, ``err_code`` (:class:`~hw.isa.Err`), ``err_pc`` (out)
    A command was rejected (one-cycle pulse); code and pc hold until the next rejection.
``busy`` (out)
    A command is in progress (accepted and not yet done), or an abort is draining.
``stall_mem`` (out)
    LOAD: a command is being assembled and no off-chip data is there this cycle.
    STORE: a bus write is offered and the memory does not accept it this cycle.
``words`` (out)
    One pulse per off-chip bus word moved (read response taken, or write accepted).
``abort`` (in)
    The chip halts (an error elsewhere): while high, no command is accepted; the current
    commands are dropped (no ``done``). Handshakes already offered complete (a stream never
    retracts ``valid``): at most one buffer write (LOAD) or bus write (STORE) of the dropped
    command after ``abort``, both in range. Every request already sent is still answered
    and its response drained, so the bus and the arbiter are left idle; ``busy`` falls once
    that is done, and the engine takes commands again once ``abort`` is low.

Throughput: requests go out at one per cycle without waiting for responses; up to the
response FIFO's depth are outstanding (issued, in flight, or received and not yet used), so
back-pressure never loses data and the memory latency is covered: steady state is one bus
word per cycle (``offchip_bytes_per_cycle`` bytes per cycle) when the memory and the buffer
side keep up. Each command costs one extra cycle at the front (its acceptance); commands
overlap (the next one's requests follow the previous one's without waiting for its data).
A command waits a cycle in the check register before its acceptance (:attr:`_DmaEngine.CHECK`);
the next one is taken the cycle after, so that costs no throughput.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .bus import (
    ADDR_BITS,
    DMA_ADDR_BITS,
    buf_read_layout,
    buf_write_layout,
    max_word_bits,
    word_bits,
)
from .isa import Buf, DmaArgs, Err, buffer_depth, bus_bits, bus_words_per
from .params import ChipParams

__all__ = ["dma_cmd_layout", "LoadEngine", "StoreEngine", "pc_bits"]


def pc_bits(p: ChipParams) -> int:
    """Width of a program counter: addresses ``uop_depth`` micro-ops (at least 1 bit)."""
    return max(1, (p.uop_depth - 1).bit_length())


def dma_cmd_layout(p: ChipParams) -> data.StructLayout:
    """What a unit queue hands a DMA engine: the ``LOAD``/``STORE`` arguments and the
    micro-op's ``pc`` (reported with an error)."""
    return data.StructLayout({"args": DmaArgs, "pc": unsigned(pc_bits(p))})


def _status_ports(p: ChipParams) -> dict:
    return {
        "done": Out(1),
        "err_valid": Out(1),
        "err_code": Out(Err),
        "err_pc": Out(pc_bits(p)),
        "busy": Out(1),
        "stall_mem": Out(1),
        "words": Out(1),
        "abort": In(1),
    }


def _times(v, k: int):
    """``v * k`` for a constant ``k >= 0`` as shifts and adds: Yosys maps a constant product
    that is not a power of two to a DSP block, which these address checks do not need."""
    terms = [v << i for i in range(k.bit_length()) if k >> i & 1]
    return sum(terms[1:], terms[0]) if terms else 0


def _max_bpw(p: ChipParams) -> int:
    return max(bus_words_per(p, b) for b in Buf)


class _DmaEngine(wiring.Component):
    """The command side both engines share: intake, checks, rejection, request issue
    against credits, and the abort drain. Subclasses add the data path (:meth:`_back`)."""

    #: Cycles from taking a command (``cmd`` handshake) to its acceptance by the front end at
    #: the earliest: it waits in the check register (its checks, registered).
    CHECK = 1
    #: A response popped this cycle frees a request credit in the same cycle.
    CREDIT_POP = True

    def __init__(self, params: ChipParams, members: dict, resp_depth: int):
        self.params = params
        self.resp_depth = resp_depth
        super().__init__({"cmd": In(stream.Signature(dma_cmd_layout(params))), **members,
                          **_status_ports(params)})

    def _issue_plan(self, args, total):
        """(first request address, request count) for an accepted command."""
        raise NotImplementedError

    def _back(self, m, jobs, stop, req_load, resp_pop, iss_buf) -> "_Back":
        """Build the data path: take accepted commands (:class:`hw.isa.DmaArgs`) from the
        FIFO ``jobs``, drive ``resp_pop``; return a :class:`_Back`."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        p = self.params
        args = self.cmd.payload.args
        bpw = {b: bus_words_per(p, b) for b in Buf}
        mem_words = p.offchip_kib * 1024 // p.offchip_bytes_per_cycle

        # -- the check register: the command taken from ``cmd`` with its checks, per buffer
        # (constants) in parallel; the front end accepts it from here, the cycle after at the
        # earliest. It takes a command only when empty (the front end spends at least two
        # cycles per command, so this costs no throughput).
        c_v = Signal()                        # a command is held
        c_cmd = Signal(dma_cmd_layout(p))
        total = Signal(range(0xFFFF * _max_bpw(p) + 1))  # bus words the command moves
        c_bad = Signal()                      # not a buffer, or no words
        c_sram_bad = Signal(len(Buf))         # per buffer: sram + words > depth
        c_off_bad = Signal(len(Buf))          # per buffer: off + words * bpw > memory
        take_cmd = Signal()
        m.d.comb += take_cmd.eq(self.cmd.valid & self.cmd.ready)
        with m.If(take_cmd):
            totals = {b: _times(args.words, bpw[b]) for b in Buf}
            m.d.sync += [
                c_v.eq(1), c_cmd.eq(self.cmd.payload),
                c_bad.eq(~Cat(*(args.buf == b for b in Buf)).any() | (args.words == 0)),
                c_sram_bad.eq(Cat(*(args.sram + args.words > buffer_depth(p, b)
                                    for b in Buf))),
                c_off_bad.eq(Cat(*(args.off + totals[b] > mem_words for b in Buf))),
            ]
            with m.Switch(args.buf):
                for b in Buf:
                    with m.Case(b):
                        m.d.sync += total.eq(totals[b])
        cargs = c_cmd.args
        sel = Signal(len(Buf))  # one-hot buffer of the held command (0 if not a buffer)
        with m.If(take_cmd):
            m.d.sync += sel.eq(Cat(*(args.buf == b for b in Buf)))
        code = Signal(Err)
        with m.If(c_bad):
            m.d.comb += code.eq(Err.BAD_FIELD)
        with m.Elif((c_sram_bad & sel).any()):
            m.d.comb += code.eq(Err.SRAM_RANGE)
        with m.Elif((c_off_bad & sel).any()):
            m.d.comb += code.eq(Err.OFFCHIP_RANGE)
        with m.Else():
            m.d.comb += code.eq(Err.NONE)

        # -- shared state -------------------------------------------------------------------
        # Accepted commands on their way to the data path (the front runs ahead of it).
        m.submodules.jobs = jobs = fifo.SyncFIFO(width=data.Layout.cast(DmaArgs).size, depth=2)
        stop = Signal()       # abort now or draining: drop, issue nothing, discard responses
        flushing = Signal()
        # Requests issued (in the request register, in flight, or answered and not yet used):
        # bounded by the response FIFO's depth, so every response has room.
        reserved = Signal(range(self.resp_depth + 1))
        req_load = Signal()   # a request enters the request register this cycle
        resp_pop = Signal()   # a response leaves the response FIFO this cycle
        m.d.comb += stop.eq(self.abort | flushing)
        m.d.sync += reserved.eq(reserved + req_load - resp_pop)

        iss_addr = Signal(ADDR_BITS)      # next request's address
        iss_left = Signal.like(total)     # requests still to issue
        iss_buf = Signal(Buf)             # the buffer of the command being issued

        # -- data path (subclass) --------------------------------------------------------------
        back = self._back(m, jobs, stop, req_load, resp_pop, iss_buf)

        # -- front end: accept, check, hand the job to the data path, issue requests ----------
        req_free = ~back.req_valid | back.req_ready
        m.d.comb += jobs.w_data.eq(cargs)  # (written only with w_en: no select before it)
        m.d.sync += [self.done.eq(back.done), self.err_valid.eq(0)]
        with m.FSM(name="front") as front:
            with m.State("IDLE"):
                with m.If(c_v & ~stop & jobs.w_rdy):
                    m.d.sync += c_v.eq(0)
                    with m.If(~c_bad & ~(c_sram_bad & sel).any() & ~(c_off_bad & sel).any()):
                        start, count = self._issue_plan(cargs, total)
                        m.d.comb += jobs.w_en.eq(1)
                        m.d.sync += [iss_addr.eq(start), iss_left.eq(count),
                                     iss_buf.eq(cargs.buf)]
                        m.next = "ISSUE"
                    with m.Else():
                        m.d.sync += [self.err_code.eq(code), self.err_pc.eq(c_cmd.pc)]
                        m.next = "REJECT"
            with m.State("ISSUE"):
                # A response leaving the FIFO this cycle frees its entry for a request now
                # (STORE); a LOAD's deeper FIFO does without, so its requests do not wait on
                # the buffer-write side's handshake.
                credit = (reserved < self.resp_depth) | (resp_pop if self.CREDIT_POP else 0)
                m.d.comb += req_load.eq(~stop & req_free & credit)
                with m.If(stop):
                    m.next = "IDLE"
                with m.Elif(req_load):
                    m.d.sync += [iss_addr.eq(iss_addr + 1), iss_left.eq(iss_left - 1)]
                    with m.If(iss_left == 1):
                        m.next = "IDLE"
            with m.State("REJECT"):
                # Report after every earlier command is done: done pulses never coincide.
                with m.If(stop):
                    m.next = "IDLE"
                with m.Elif(back.idle & ~jobs.r_rdy):
                    m.d.sync += [self.err_valid.eq(1), self.done.eq(1)]
                    m.next = "IDLE"

        # The request register: loaded from the issue counter, held until taken.
        with m.If(back.req_valid & back.req_ready):
            m.d.sync += back.req_valid.eq(0)
        with m.If(req_load):
            m.d.sync += [back.req_valid.eq(1), back.req_addr.eq(iss_addr)]

        # -- abort: drain until nothing is outstanding ----------------------------------------
        drained = (reserved == 0) & back.idle
        with m.If(self.abort):
            m.d.sync += flushing.eq(1)
        with m.Elif(drained):
            m.d.sync += flushing.eq(0)
        with m.If(stop):
            m.d.comb += jobs.r_en.eq(1)  # discard queued jobs
            m.d.sync += c_v.eq(0)        # and the held command
        m.d.comb += [
            self.cmd.ready.eq(~stop & ~c_v),
            self.busy.eq(c_v | ~front.ongoing("IDLE") | jobs.r_rdy | ~back.idle |
                         (reserved != 0)),
        ]
        return m


class _Back:
    """What a data path tells the front end."""

    def __init__(self, *, req_valid, req_ready, req_addr, idle, done):
        self.req_valid = req_valid  # request register (driven by the front end)
        self.req_ready = req_ready
        self.req_addr = req_addr
        self.idle = idle            # no job in progress, nothing held for output
        self.done = done            # a command's last word was accepted this cycle


class LoadEngine(_DmaEngine):
    """``LOAD``: ``words`` buffer words from off-chip ``off`` to buffer ``buf`` at ``sram``.

    Ports: ``cmd`` (in, :func:`dma_cmd_layout`), ``bus_rd_addr`` (out, bus-word addresses),
    ``bus_rd_data`` (in, bus words in request order), ``buf_wr`` (out,
    :func:`hw.bus.buf_write_layout`), and the status ports (module docstring).

    The command's ``words * bpw`` bus words are requested at up to one per cycle, without
    waiting for data, while fewer than ``resp_depth`` (default ``offchip_latency + 4``) are
    outstanding. Responses go into a FIFO of that depth (``bus_rd_data`` is always ready:
    room was reserved); every ``bpw`` of them are assembled, first one lowest, into a buffer
    word (cut to the buffer's word width) written to ``sram + i``.

    Timing, with a memory answering ``L`` cycles after a request and ``buf_wr`` always
    ready: command taken in cycle 0, accepted from the check register in cycle 1
    (:attr:`CHECK`), first request offered in cycle 3, bus word ``j`` arrives in cycle
    ``3 + L + j``, leaves the FIFO 2 cycles later, the buffer word it completes is offered
    the next cycle; ``done`` pulses in cycle ``n + L + 6`` for ``n`` bus words.
    ``resp_depth >= L + 4`` sustains one bus word per cycle (a request is counted from its
    request register to its response's pop, ``L + 3`` cycles; a credit frees the cycle
    after the pop: :attr:`CREDIT_POP` is off, so issue never waits on ``buf_wr.ready``).
    """

    def __init__(self, params: ChipParams = ChipParams(), resp_depth: int | None = None):
        p = params
        super().__init__(p, {
            "bus_rd_addr": Out(stream.Signature(unsigned(ADDR_BITS))),
            "bus_rd_data": In(stream.Signature(unsigned(bus_bits(p)))),
            "buf_wr": Out(stream.Signature(buf_write_layout(p))),
        }, resp_depth or p.offchip_latency + 4)

    CREDIT_POP = False

    def _issue_plan(self, args, total):
        return args.off, total

    def _back(self, m, jobs, stop, req_load, resp_pop, iss_buf):
        p = self.params
        B = bus_bits(p)
        nslot = _max_bpw(p)

        m.submodules.resp = resp = fifo.SyncFIFOBuffered(width=B, depth=self.resp_depth)
        m.d.comb += [
            resp.w_data.eq(self.bus_rd_data.payload),
            resp.w_en.eq(self.bus_rd_data.valid),
            self.bus_rd_data.ready.eq(resp.w_rdy),  # always: room was reserved
            self.words.eq(self.bus_rd_data.valid & self.bus_rd_data.ready),
        ]

        # The job being assembled.
        active = Signal()
        j_buf = Signal(Buf)
        j_addr = Signal(DMA_ADDR_BITS)
        j_left = Signal(16)
        last_k = Signal(range(max(nslot, 2)))
        k = Signal(range(max(nslot, 2)))          # slot the next bus word fills
        completes = Signal(init=1)  # k == last_k (the next bus word ends a buffer word), kept
        #                              as a register beside them
        # Slots already received of the word being assembled. The top slot is never held: it
        # is filled only by the word's last bus word, which goes straight to the output.
        asm = Signal((nslot - 1) * B)

        # The output (buf_wr): a two-entry ring of finished words (``count`` of them, the
        # oldest in slot ``head``), each with the flag marking a command's last word. A word
        # completes only while a slot is free, and goes into the slot after the held ones, so
        # that taking a response (``pop``) and loading a slot depend on registers only, not on
        # ``buf_wr.ready`` (the chip's write-port arbitration), which moves ``head`` and
        # ``count`` alone. (Cycle for cycle the output register with a skid register behind
        # it that this replaces.) Without back-pressure at most one slot is used.
        out = self.buf_wr
        wr_take = out.valid & out.ready
        count = Signal(range(3))
        head = Signal()
        slots = [Signal.like(out.payload, name=f"slot{i}") for i in range(2)]
        lasts = [Signal(name=f"slot{i}_last") for i in range(2)]
        full = Signal()
        m.d.comb += [full.eq(count == 2), out.valid.eq(count != 0),
                     out.payload.eq(Mux(head, slots[1], slots[0]))]

        job = DmaArgs(jobs.r_data)
        with m.If(~active & jobs.r_rdy & ~stop):
            m.d.comb += jobs.r_en.eq(1)
            m.d.sync += [active.eq(1), j_buf.eq(job.buf), j_addr.eq(job.sram),
                         j_left.eq(job.words), k.eq(0)]
            with m.Switch(job.buf):
                for b in Buf:
                    with m.Case(b):
                        m.d.sync += [last_k.eq(bus_words_per(p, b) - 1),
                                     completes.eq(bus_words_per(p, b) == 1)]
                with m.Default():  # (not a buffer: never accepted)
                    m.d.sync += completes.eq(last_k == 0)
        with m.If(stop):
            m.d.sync += active.eq(0)

        # ``pop_d`` moves the data registers (assembly, slots, counters): it is ``pop``
        # without ``stop``, so the abort's fanout does not reach them. Under ``stop`` they may
        # load, but only where nothing is offered: ``count`` follows ``pop``, and the next
        # job resets the counters.
        pop_d = Signal()
        pop = Signal()
        m.d.comb += [
            pop_d.eq(active & resp.r_rdy & (~completes | ~full)),
            pop.eq(pop_d & ~stop),
            # pop | (stop & r_rdy), with stop last (pop_d implies r_rdy); abort: discard
            resp_pop.eq(pop_d | (stop & resp.r_rdy)),
            resp.r_en.eq(resp_pop),
            self.stall_mem.eq(active & ~resp.r_rdy),
        ]
        nxt = Cat(*(Mux(k == j, resp.r_data, asm[j * B:(j + 1) * B]) for j in range(nslot - 1)),
                  resp.r_data)

        enq = pop & completes
        with m.If(wr_take):
            m.d.sync += head.eq(~head)
        with m.If(stop):  # the offered word stays until taken; the one behind it is dropped
            m.d.sync += count.eq((count != 0) & ~wr_take)
        with m.Else():
            m.d.sync += count.eq(count + enq - wr_take)
        tail = head ^ count[0]  # the free slot after the held ones (when not full)
        with m.If(pop_d):
            m.d.sync += asm.eq(nxt[:len(asm)])
            with m.If(completes):
                word = Signal.like(out.payload)
                m.d.comb += [word.buf.eq(j_buf), word.addr.eq(j_addr)]
                with m.Switch(j_buf):
                    for b in Buf:
                        with m.Case(b):
                            m.d.comb += word.data.eq(nxt[:word_bits(p, b)])
                m.d.sync += [k.eq(0), completes.eq(last_k == 0), j_addr.eq(j_addr + 1),
                             j_left.eq(j_left - 1)]
                for i in range(2):
                    with m.If(tail == i):
                        m.d.sync += [slots[i].eq(word), lasts[i].eq(j_left == 1)]
                with m.If(j_left == 1):
                    m.d.sync += active.eq(0)
            with m.Else():
                m.d.sync += [k.eq(k + 1), completes.eq(k + 1 == last_k)]

        req_valid = self.bus_rd_addr.valid
        return _Back(req_valid=req_valid, req_ready=self.bus_rd_addr.ready,
                     req_addr=self.bus_rd_addr.payload, idle=~active & (count == 0),
                     done=wr_take & Mux(head, lasts[1], lasts[0]))


class StoreEngine(_DmaEngine):
    """``STORE``: ``words`` buffer words from buffer ``buf`` at ``sram`` to off-chip ``off``.

    Ports: ``cmd`` (in, :func:`dma_cmd_layout`), ``buf_rd`` (out, read requests,
    :func:`hw.bus.buf_read_layout`), ``buf_rd_data`` (in, the words, in request order),
    ``bus_wr`` (out, ``{addr, data}`` bus writes), and the status ports (module docstring).

    Buffer reads are requested at up to one per cycle while fewer than ``resp_depth``
    (default 5) are outstanding (issued, in the arbiter, or received and not yet split); the
    answers queue in a FIFO of that depth (``buf_rd_data`` is always ready). Each word is cut
    to its buffer's width and split into ``bpw`` bus words, lowest first, written to
    ``off + i * bpw + k``, one per cycle.

    Timing, with the arbiter answering ``D`` cycles after a request and ``bus_wr`` always
    ready: command taken in cycle 0, accepted from the check register in cycle 1
    (:attr:`CHECK`), first read offered in cycle 3, its word is in the FIFO in cycle
    ``4 + D`` and its first bus write offered in cycle ``5 + D``; ``done`` pulses in cycle
    ``n + D + 5`` for ``n`` bus words. ``resp_depth >= D + 3`` sustains one
    bus word per cycle for buffers of one bus word per word; wider ones need fewer (a
    credit frees the cycle after its response's pop: :attr:`CREDIT_POP` is off, so the
    request side does not wait on the split logic's ``pop``).
    """

    CREDIT_POP = False

    def __init__(self, params: ChipParams = ChipParams(), resp_depth: int = 5):
        p = params
        super().__init__(p, {
            "buf_rd": Out(stream.Signature(buf_read_layout(p))),
            "buf_rd_data": In(stream.Signature(unsigned(max_word_bits(p)))),
            "bus_wr": Out(stream.Signature(data.StructLayout({
                "addr": unsigned(ADDR_BITS), "data": unsigned(bus_bits(p))}))),
        }, resp_depth)

    def _issue_plan(self, args, total):
        return args.sram, args.words

    def _back(self, m, jobs, stop, req_load, resp_pop, iss_buf):
        p = self.params
        B = bus_bits(p)
        nslot = _max_bpw(p)

        # Read requests carry the buffer of the command being issued.
        req_addr = Signal(DMA_ADDR_BITS)
        with m.If(req_load):
            m.d.sync += self.buf_rd.payload.buf.eq(iss_buf)
        m.d.comb += self.buf_rd.payload.addr.eq(req_addr)

        m.submodules.resp = resp = fifo.SyncFIFO(width=max_word_bits(p), depth=self.resp_depth)
        m.d.comb += [
            resp.w_data.eq(self.buf_rd_data.payload),
            resp.w_en.eq(self.buf_rd_data.valid),
            self.buf_rd_data.ready.eq(resp.w_rdy),  # always: room was reserved
        ]

        # The job whose words are being split.
        active = Signal()
        j_buf = Signal(Buf)
        j_addr = Signal(ADDR_BITS)
        j_left = Signal(16)
        j_bpw = Signal(range(nslot + 1))

        # The word being written out: its own address, slot counter and last-word flag, so
        # the next job can start while it finishes.
        wr = self.bus_wr
        w_data = Signal(nslot * B)
        w_k = Signal(range(max(nslot, 2)))
        w_last_k = Signal(range(max(nslot, 2)))
        w_last = Signal()
        w_at_last = Signal()  # registered w_k == w_last_k: the word's last slot is out
        wr_take = wr.valid & wr.ready
        m.d.comb += [wr.payload.data.eq(w_data.word_select(w_k, B)),
                     self.words.eq(wr_take), self.stall_mem.eq(wr.valid & ~wr.ready)]

        job = DmaArgs(jobs.r_data)
        with m.If(~active & jobs.r_rdy & ~stop):
            m.d.comb += jobs.r_en.eq(1)
            m.d.sync += [active.eq(1), j_buf.eq(job.buf), j_addr.eq(job.off),
                         j_left.eq(job.words)]
            with m.Switch(job.buf):
                for b in Buf:
                    with m.Case(b):
                        m.d.sync += j_bpw.eq(bus_words_per(p, b))
        with m.If(stop):
            m.d.sync += active.eq(0)

        word_done = wr_take & w_at_last
        pop = Signal()
        m.d.comb += [
            pop.eq(active & resp.r_rdy & ~stop & (~wr.valid | word_done)),
            resp_pop.eq(pop | (stop & resp.r_rdy)),  # abort: discard
            resp.r_en.eq(resp_pop),
        ]

        with m.If(wr_take):
            m.d.sync += [wr.payload.addr.eq(wr.payload.addr + 1), w_k.eq(w_k + 1),
                         w_at_last.eq(w_k + 1 == w_last_k)]
            with m.If(w_at_last | stop):
                m.d.sync += wr.valid.eq(0)
        with m.If(pop):
            m.d.sync += [
                wr.valid.eq(1), wr.payload.addr.eq(j_addr), w_k.eq(0), w_last_k.eq(j_bpw - 1),
                w_at_last.eq(j_bpw == 1),
                w_last.eq(j_left == 1), j_addr.eq(j_addr + j_bpw), j_left.eq(j_left - 1),
            ]
            with m.Switch(j_buf):
                for b in Buf:
                    with m.Case(b):
                        m.d.sync += w_data.eq(resp.r_data[:word_bits(p, b)])
            with m.If(j_left == 1):
                m.d.sync += active.eq(0)

        return _Back(req_valid=self.buf_rd.valid, req_ready=self.buf_rd.ready,
                     req_addr=req_addr, idle=~active & ~wr.valid,
                     done=word_done & w_last)

"""The board's host link: a UART, and the framed protocol of ``hw/isa.py`` (``LinkFrame``)
between the runtime (``sw/board.py``) and the chip.

::

    uart rx ─> UartRx ─> deframer ── commands: START / STATUS / COUNTERS / ABORT / PING
                            │ DATA words (after their CRC matched)
                            v
                      rx buffer ── bus.rd_data ──> chip
    chip ── bus.rd_addr / bus.wr ──> burst coalescer ── READ / WRITE jobs ──┐
    replies (ACK, NAK, INFO, STATE, COUNTS), DONE ───────────────────────────┴─> framer
    framer ─> UartTx ─> uart tx

The off-chip memory is the host's (``hw/isa.py``, the link section): :class:`Link` is the
memory end of the chip's bus (:class:`hw.bus.BusSignature`, flipped).

- **UART** (:class:`UartRx`, :class:`UartTx`): 8N1, ``divisor`` clock cycles per bit. The
  receiver synchronizes ``rx`` through two flops, takes a start bit that is still low half a
  bit after the falling edge and samples every bit in its middle; a byte whose stop bit is
  low is dropped (the frame around it then fails its CRC or times out). It cannot be
  stalled: ``o.valid`` is a one-cycle pulse and the deframer is always ready.
- **Deframer**: bytes outside a frame are dropped until ``LINK_SYNC``. The type and length
  are checked as soon as the length is in (``LinkNak.TYPE``, ``LENGTH``, ``UNEXPECTED``: a
  ``DATA`` frame with more words than are owed); after such a frame the line is ignored
  until it has been idle for ``timeout_cycles``, then the ``NAK`` goes out. No byte for
  ``timeout_cycles`` inside a frame is ``TRUNCATED``, a CRC mismatch ``CHECKSUM``. A
  command acts only after its CRC matched. ``DATA`` words go into the rx buffer behind a
  tentative write pointer that is committed when the CRC matches and rolled back otherwise,
  so the chip never sees a word of a rejected frame.
- **Bus proxy**: the chip's requests enter through 2-entry FIFOs (their ready is a
  register's decision: no path from the proxy back into the chip's engines). Read
  addresses are taken against credits (free words in the
  rx buffer, ``2 * link_max_burst`` deep), so a ``DATA`` frame always has room and the UART
  never has to be stalled. Consecutive addresses of one kind (reads, or writes with their
  data in a FIFO) are coalesced into a pending burst of at most ``link_max_burst`` words; it
  is sent as a ``READ`` / ``WRITE`` job when full, when another kind or a non-consecutive
  address waits, or after ``LINGER`` cycles without a new request. A request joins a burst
  once its registered address compare has settled (at most one every other cycle, far above
  the link's rate); reads and writes leave in the order the chip issued them (writes first
  when both wait, as before the FIFOs).
- **Framer**: one frame at a time, by priority ``NAK``, ``ACK``, ``INFO``, ``STATE``,
  ``COUNTS``, bus bursts, then ``DONE`` (only once no burst is pending and the write FIFO is
  empty: every ``WRITE`` of the run goes up before its ``DONE``). Fixed payloads are
  snapshots taken when the frame starts (no torn counters).
- **Commands**: ``START`` pulses the chip's ``start`` (``NAK BUSY`` while a run is active or
  its ``DONE`` unsent) and is ACKed; the run's ``DONE`` follows when the chip is done.
  ``ABORT`` waits for the framer to finish its frame, then raises ``abort`` for
  ``1 + hw.chip.UNIT_RESET_DELAY`` cycles (the board top resets the chip's logic with it, the
  buffers keep their contents; the chip's units take their reset that much later, and no bus
  request is taken meanwhile) and resets the bus state, then ACKs.

Throughput: the link moves one byte per ``10 * divisor`` cycles each way, plus 6 bytes of
framing per frame; a ``LOAD`` is limited by the round trip of a burst (the chip's LOAD
engine keeps ``offchip_latency + 4`` reads outstanding).
"""

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, Value, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .bus import BusSignature, MemReader
from .chip import UNIT_RESET_DELAY
from .isa import (
    LINK_ACK,
    LINK_BURST,
    LINK_COUNTER_BYTES,
    LINK_COUNTS,
    LINK_CRC_INIT,
    LINK_CRC_POLY,
    LINK_DONE,
    LINK_HOST_FRAMES,
    LINK_INFO,
    LINK_NAK,
    LINK_STATE,
    LINK_SYNC,
    LINK_VERSION,
    Counter,
    Err,
    LinkFrame,
    LinkNak,
    bus_bits,
    link_max_burst,
    link_params_hash,
    link_payload_bytes,
)
from .params import ChipParams

__all__ = ["UartRx", "UartTx", "Link", "crc16_next", "link_divisor"]


def link_divisor(clock_hz: float, baud: float) -> int:
    """Clock cycles per UART bit for ``baud`` at ``clock_hz``; ``ValueError`` if the nearest
    divisor misses the baud rate by more than 2 % (8N1 tolerates about 4 % in all)."""
    div = round(clock_hz / baud)
    if div < 4 or abs(clock_hz / div - baud) > 0.02 * baud:
        raise ValueError(f"no UART divisor for {baud:g} baud at {clock_hz / 1e6:g} MHz "
                         f"(nearest {div}: {clock_hz / max(div, 1):.0f} baud; at least 4)")
    return div


def crc16_next(crc, byte):
    """The CRC-16/CCITT-FALSE (``hw.isa.link_crc``) after one more byte, as an Amaranth
    expression (eight shift steps unrolled; MSB first)."""
    for i in range(8):
        bit = crc[15] ^ byte[7 - i]
        crc = Cat(Const(0, 1), crc[:15]) ^ Mux(bit, LINK_CRC_POLY, 0)
    return crc[:16]


def _or_all(values, width):
    """The bitwise OR of ``values``, each cut or zero-extended to ``width`` bits."""
    out = Const(0, width)
    for v in values:
        out = out | Value.cast(v)[:width]
    return out


class UartTx(wiring.Component):
    """8N1 transmitter: one byte from ``i`` per ``10 * divisor`` cycles onto ``tx`` (idle
    high). ``i.ready`` while idle."""

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError(f"UART divisor {divisor} must be at least 4")
        self.divisor = divisor
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        shreg = Signal(10, init=0x3FF)  # stop bit, data LSB first, start bit; sent from bit 0
        bits = Signal(range(11))
        timer = Signal(range(self.divisor))
        m.d.comb += [self.tx.eq(shreg[0]), self.i.ready.eq(bits == 0)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shreg.eq(Cat(Const(0, 1), self.i.payload, Const(1, 1))),
                         bits.eq(10), timer.eq(self.divisor - 1)]
        with m.Elif(bits != 0):
            with m.If(timer == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], Const(1, 1))), bits.eq(bits - 1),
                             timer.eq(self.divisor - 1)]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


class UartRx(wiring.Component):
    """8N1 receiver (module docstring): ``o.valid`` pulses one cycle per byte (no
    back-pressure); ``frame_error`` pulses for a byte dropped for its low stop bit."""

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError(f"UART divisor {divisor} must be at least 4")
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "o": Out(stream.Signature(8)),
                          "frame_error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        s0, s1 = Signal(init=1), Signal(init=1)
        m.d.sync += [s0.eq(self.rx), s1.eq(s0)]
        timer = Signal(range(d))
        bit = Signal(range(10))
        shreg = Signal(8)
        m.d.sync += [self.o.valid.eq(0), self.frame_error.eq(0)]
        m.d.comb += self.o.payload.eq(shreg)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~s1):
                    m.d.sync += timer.eq(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):  # the start bit must still be low in its middle
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(s1):
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [timer.eq(d - 1), bit.eq(0)]
                    m.next = "BITS"
            with m.State("BITS"):  # 8 data bits, then the stop bit, each in its middle
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(bit == 8):
                    m.d.sync += [self.o.valid.eq(s1), self.frame_error.eq(~s1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], s1)), bit.eq(bit + 1),
                                 timer.eq(d - 1)]
        return m


# The byte-wide views of the fixed payloads the framer sends.
_REPLY_BYTES = max(link_payload_bytes(f) for f in LinkFrame if f not in LINK_HOST_FRAMES)
_CMD_BYTES = max(link_payload_bytes(f) for f in LINK_HOST_FRAMES)  # DATA's header included


class Link(wiring.Component):
    """The host link of a board (module docstring) for a chip of ``params`` (``vector``:
    built with the vector unit, for ``INFO``'s params hash).

    Ports: ``rx`` / ``tx`` (the UART pins, idle high); ``bus`` (the chip's off-chip bus,
    memory side); to the chip ``start``, ``prog_addr``, ``prog_len``, ``pos_init`` and
    ``abort`` (reset the chip's logic), from it ``running``, ``done``, ``error``,
    ``error_pc``, ``pos``, ``counters``. ``divisor``: clock cycles per UART bit;
    ``timeout_cycles``: the inter-byte timeout inside a frame (also the idle time that ends
    a rejected frame). Status pulses for tests and LEDs: ``nak`` (a NAK was queued),
    ``frame_ok`` (a host frame passed its checks).
    """

    #: Cycles without a new request after which a pending burst is sent anyway.
    LINGER = 16
    #: READ bursts that may await their DATA (more wait until one is answered).
    READS = 8

    def __init__(self, params: ChipParams, *, vector: bool = True, divisor: int = 33,
                 timeout_cycles: int = 1_000_000):
        B = params.offchip_bytes_per_cycle
        if B & (B - 1):
            raise ValueError(f"the host link needs a power-of-two bus width, got "
                             f"offchip_bytes_per_cycle = {B}")
        if timeout_cycles < 20 * divisor:
            raise ValueError(f"timeout_cycles = {timeout_cycles} is shorter than two UART "
                             f"bytes ({20 * divisor} cycles at divisor {divisor})")
        self.params = params
        self.vector = vector
        self.divisor = divisor
        self.timeout_cycles = timeout_cycles
        self.max_burst = link_max_burst(params)
        self.rx_depth = 2 * self.max_burst
        n_counters = len(Counter)
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "bus": In(BusSignature(params)),
            "start": Out(1),
            "prog_addr": Out(32),
            "prog_len": Out(16),
            "pos_init": Out(16),
            "abort": Out(1),
            "running": In(1),
            "done": In(1),
            "error": In(Err),
            "error_pc": In(32),
            "pos": In(16),
            "counters": In(data.ArrayLayout(unsigned(8 * LINK_COUNTER_BYTES), n_counters)),
            "nak": Out(1),
            "frame_ok": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        B = p.offchip_bytes_per_cycle
        BB = bus_bits(p)
        lgB = B.bit_length() - 1
        MAXB = self.max_burst
        D = self.rx_depth
        bus = self.bus
        abort = self.abort

        m.submodules.uart_rx = urx = UartRx(self.divisor)
        m.submodules.uart_tx = utx = UartTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]

        # -- rx buffer: DATA words, committed per frame ---------------------------------------
        m.submodules.rxbuf = rxbuf = Memory(shape=unsigned(BB), depth=D, init=[])
        rxw = rxbuf.write_port()
        rxr = rxbuf.read_port()
        m.submodules.rx_reader = reader = ResetInserter(abort)(
            MemReader(rxw.addr.shape().width, BB, depth=4))
        m.d.comb += [rxr.addr.eq(reader.rd_addr), rxr.en.eq(reader.rd_en),
                     reader.rd_data.eq(rxr.data),
                     bus.rd_data.valid.eq(reader.o.valid),
                     bus.rd_data.payload.eq(reader.o.payload.data),
                     reader.o.ready.eq(bus.rd_data.ready)]

        def wrap(ptr):
            return Mux(ptr == D - 1, 0, ptr + 1)

        commit = Signal(range(D))     # the next word a committed frame would fill
        tent = Signal(range(D))       # the tentative write pointer of the frame coming in
        rd_ptr = Signal(range(D))
        avail = Signal(range(D + 1))  # committed words not yet handed to the reader
        credit = Signal(range(D + 1), init=D)  # rx buffer words no read request holds
        owed = Signal(range(D + 1))   # read requests accepted, their DATA not yet committed
        commit_now = Signal()
        commit_words = Signal(range(MAXB + 1))
        issue = Signal()
        m.d.comb += [reader.i.valid.eq(avail != 0), reader.i.payload.addr.eq(rd_ptr),
                     issue.eq(reader.i.valid & reader.i.ready)]

        # -- bus proxy: the chip's requests through 2-entry FIFOs (their ready a register's
        # decision, so no path runs from the proxy's logic back into the chip's engines; the
        # proxy takes from their registered outputs, writes first, so the order holds) -------
        wr_layout = bus.wr.payload.shape()
        m.submodules.in_rd = in_rd = ResetInserter(abort)(
            fifo.SyncFIFOBuffered(width=len(bus.rd_addr.payload), depth=2))
        m.submodules.in_wr = in_wr = ResetInserter(abort)(
            fifo.SyncFIFOBuffered(width=data.Layout.cast(wr_layout).size, depth=2))
        m.d.comb += [in_rd.w_data.eq(bus.rd_addr.payload), in_rd.w_en.eq(bus.rd_addr.valid),
                     bus.rd_addr.ready.eq(in_rd.w_rdy),
                     in_wr.w_data.eq(bus.wr.payload), in_wr.w_en.eq(bus.wr.valid),
                     bus.wr.ready.eq(in_wr.w_rdy)]
        rq_addr = in_rd.r_data
        rq_valid = in_rd.r_rdy
        wq = data.View(wr_layout, in_wr.r_data)
        wq_valid = in_wr.r_rdy

        # -- bus proxy: pending burst ---------------------------------------------------------
        # the pending burst's kind, one-hot (no decoding before the take logic)
        KIND_NONE, KIND_READ, KIND_WRITE = 1, 2, 4
        kind = Signal(3, init=KIND_NONE)
        k_none, k_read, k_write = kind[0], kind[1], kind[2]
        pend_addr = Signal(32)
        pend_count = Signal(range(MAXB + 1))
        linger = Signal(range(self.LINGER + 1))
        launch = Signal()
        m.submodules.wfifo = wfifo = ResetInserter(abort)(
            fifo.SyncFIFOBuffered(width=BB, depth=2 * MAXB))
        # the READ bursts sent and not yet answered: a DATA frame must answer the oldest
        m.submodules.rdq = rdq = ResetInserter(abort)(
            fifo.SyncFIFOBuffered(width=data.Layout.cast(LINK_BURST).size, depth=self.READS))
        rdq_head = data.View(LINK_BURST, rdq.r_data)
        # the address after the pending burst's last word, kept in a register (not
        # ``pend_addr + pend_count``: a 32-bit adder before the join compare)
        nxt_addr = Signal(32)
        grows = pend_count < MAXB
        joins_wr = Signal()
        joins_rd = Signal()
        can_wr = Signal()
        can_rd = Signal()
        take_wr = Signal()
        take_rd = Signal()
        # A request joins the pending burst if its address is the next one. The compare is
        # registered: it counts only for a request that was already waiting in the cycle
        # before, with no take, launch or abort since (so neither side changed; a waiting
        # request's payload holds by the stream rule). Requests are taken at most every other
        # cycle, far above the link's rate.
        # (``jw`` / ``jr``: the whole join condition but ``quiet``, of the cycle before; while
        # ``quiet`` the kind and the burst's length are unchanged since)
        jw, jr, quiet, wr_v, rd_v = Signal(), Signal(), Signal(), Signal(), Signal()
        m.d.sync += [jw.eq(k_write & (wq.addr == nxt_addr) & wq_valid & grows),
                     jr.eq(k_read & (rq_addr == nxt_addr) & rq_valid & grows),
                     quiet.eq(~take_wr & ~take_rd & ~launch & ~abort),
                     wr_v.eq(wq_valid), rd_v.eq(rq_valid)]
        stable_wr = wr_v & quiet
        stable_rd = rd_v & quiet
        m.d.comb += [
            joins_wr.eq(jw & quiet),
            joins_rd.eq(jr & quiet),
            # (no ~abort here: in an abort's cycle the chip is reset too, and the bus state
            # below is reset after any take)
            can_wr.eq(~launch & wfifo.w_rdy & (k_none | joins_wr)),
            can_rd.eq(~launch & (credit != 0) & (k_none | joins_rd)),
            take_wr.eq(wq_valid & can_wr),
            take_rd.eq(rq_valid & can_rd & ~take_wr),
            in_wr.r_en.eq(take_wr),
            in_rd.r_en.eq(take_rd),
            wfifo.w_data.eq(wq.data),
            wfifo.w_en.eq(take_wr),
        ]
        with m.If(launch):
            m.d.sync += [kind.eq(KIND_NONE), pend_count.eq(0), linger.eq(0)]
        with m.Elif(take_wr | take_rd):
            with m.If(k_none):
                # (the increments from the FIFOs' output registers, before the select)
                m.d.sync += [kind.eq(Mux(take_wr, KIND_WRITE, KIND_READ)),
                             pend_addr.eq(Mux(take_wr, wq.addr, rq_addr)),
                             nxt_addr.eq(Mux(take_wr, (wq.addr + 1)[:32], (rq_addr + 1)[:32]))]
            with m.Else():
                m.d.sync += nxt_addr.eq(nxt_addr + 1)
            m.d.sync += [pend_count.eq(pend_count + 1), linger.eq(0)]
        with m.Elif(~k_none & (linger != self.LINGER)):
            m.d.sync += linger.eq(linger + 1)
        # a request that cannot join this burst (another kind or address) ends it at once
        other_waits = ((wq_valid & stable_wr & ~joins_wr)
                       | (rq_valid & stable_rd & ~joins_rd))
        # registered: the framer launches a burst the cycle after it became ready (a take in
        # between only grows it; a launch or an abort clears it)
        burst_ready = Signal()
        m.d.sync += burst_ready.eq(
            ~launch & ~abort & ~k_none & (k_write | rdq.w_rdy) & (
                (pend_count == MAXB) | (linger == self.LINGER) | other_waits))

        # credits and owed words
        rd_taken = bus.rd_data.valid & bus.rd_data.ready
        m.d.sync += [credit.eq(credit - take_rd + rd_taken),
                     owed.eq(owed + take_rd - Mux(commit_now, commit_words, 0)),
                     avail.eq(avail + Mux(commit_now, commit_words, 0) - issue)]
        with m.If(issue):
            m.d.sync += rd_ptr.eq(wrap(rd_ptr))

        # -- deframer -------------------------------------------------------------------------
        byte = urx.o.payload
        got = urx.o.valid
        ftype = Signal(8)
        flen_m1 = Signal(16)  # the frame's length - 1 (PAYLOAD's end is an equality)
        cnt = Signal(16)
        crc = Signal(16, init=LINK_CRC_INIT)
        crc_lo = Signal(8)
        cmd = Signal(8 * _CMD_BYTES)
        wshift = Signal(BB)
        wbyte = Signal(range(B))
        words_in = Signal(range(MAXB + 1))
        timer = Signal(range(self.timeout_cycles + 1))
        reject = Signal(8)  # the LinkNak a discarded frame gets
        execute = Signal()  # a host frame passed every check (one cycle)

        # replies: pending flags and fields
        nak_pend = Signal()
        nak_reason = Signal(8)
        nak_frame = Signal(8)
        ack_pend = Signal()
        ack_frame = Signal(8)
        info_pend = Signal()
        state_pend = Signal()
        counts_pend = Signal()
        done_pend = Signal()
        abort_req = Signal()
        armed = Signal()
        active = Signal()
        queue_nak = Signal()
        queue_reason = Signal(8)
        m.d.comb += self.nak.eq(queue_nak)
        with m.If(queue_nak):
            m.d.sync += [nak_pend.eq(1), nak_reason.eq(queue_reason), nak_frame.eq(ftype)]

        with m.If(got):
            m.d.sync += timer.eq(0)
        with m.Elif(timer != self.timeout_cycles):
            m.d.sync += timer.eq(timer + 1)
        idle_out = timer == self.timeout_cycles

        known = Signal()
        m.d.comb += known.eq(Cat(ftype == f for f in LINK_HOST_FRAMES).any())
        len_in = Cat(crc_lo, byte)  # the length, as its high byte arrives (low byte kept)
        len_ok = Signal()
        fixed_ok = Const(0)
        for f in LINK_HOST_FRAMES:
            if f != LinkFrame.DATA:
                fixed_ok = fixed_ok | ((ftype == f) & (len_in == link_payload_bytes(f)))
        HB = link_payload_bytes(LinkFrame.DATA)  # the LINK_BURST header before the words
        data_bytes = Signal(16)
        m.d.comb += data_bytes.eq(len_in - HB)
        data_words = data_bytes[lgB:]
        data_len_ok = (len_in > HB) & (data_bytes <= MAXB * B)
        if lgB:
            data_len_ok = data_len_ok & (data_bytes[:lgB] == 0)
        m.d.comb += len_ok.eq(Mux(ftype == LinkFrame.DATA, data_len_ok, fixed_ok))
        is_data = Signal()  # registered: ``ftype`` is set in TYPE, read from LEN1 on
        m.d.sync += is_data.eq(ftype == LinkFrame.DATA)
        data_hdr = data.View(LINK_BURST, cmd[:data.Layout.cast(LINK_BURST).size])

        # a DATA frame's header against the oldest READ burst, registered each cycle (read in
        # CHECK, one cycle after CRC1: the bytes that set it came earlier, and the burst
        # queue's head only moves on an executed DATA frame)
        crc_ok = Signal()
        hdr_ok = Signal()
        len_bad, data_long, len_zero = Signal(), Signal(), Signal()
        m.d.sync += hdr_ok.eq(rdq.r_rdy & (data_hdr.addr == rdq_head.addr)
                              & (data_hdr.count == rdq_head.count)
                              & (data_hdr.count == words_in))
        m.d.comb += [rxw.addr.eq(tent), rxw.data.eq(Cat(wshift[8:], byte))]
        with m.FSM(name="deframer"):
            with m.State("IDLE"):
                with m.If(got & (byte == LINK_SYNC)):
                    m.d.sync += [crc.eq(LINK_CRC_INIT), tent.eq(commit), words_in.eq(0),
                                 wbyte.eq(0), cnt.eq(0)]
                    m.next = "TYPE"
            with m.State("TYPE"):
                with m.If(got):
                    m.d.sync += [ftype.eq(byte), crc.eq(crc16_next(crc, byte))]
                    m.next = "LEN0"
                with m.Elif(idle_out):
                    m.d.comb += [queue_nak.eq(1), queue_reason.eq(LinkNak.TRUNCATED)]
                    m.next = "IDLE"
            with m.State("LEN0"):
                with m.If(got):
                    m.d.sync += [crc_lo.eq(byte), crc.eq(crc16_next(crc, byte))]
                    m.next = "LEN1"
                with m.Elif(idle_out):
                    m.d.comb += [queue_nak.eq(1), queue_reason.eq(LinkNak.TRUNCATED)]
                    m.next = "IDLE"
            with m.State("LEN1"):
                with m.If(got):
                    m.d.sync += [flen_m1.eq(len_in - 1), crc.eq(crc16_next(crc, byte)),
                                 len_bad.eq(~len_ok), data_long.eq(is_data & (data_words > owed)),
                                 len_zero.eq(len_in == 0)]
                    m.next = "LENCHK"
                with m.Elif(idle_out):
                    m.d.comb += [queue_nak.eq(1), queue_reason.eq(LinkNak.TRUNCATED)]
                    m.next = "IDLE"
            with m.State("LENCHK"):  # the length's checks, registered in LEN1 (no byte now)
                with m.If(~known):
                    m.d.sync += reject.eq(LinkNak.TYPE)
                    m.next = "DISCARD"
                with m.Elif(len_bad):
                    m.d.sync += reject.eq(LinkNak.LENGTH)
                    m.next = "DISCARD"
                with m.Elif(data_long):
                    m.d.sync += reject.eq(LinkNak.UNEXPECTED)
                    m.next = "DISCARD"
                with m.Elif(len_zero):
                    m.next = "CRC0"
                with m.Else():
                    m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                with m.If(got):
                    m.d.sync += [crc.eq(crc16_next(crc, byte)), cnt.eq(cnt + 1)]
                    for i in range(_CMD_BYTES):
                        with m.If(cnt == i):
                            m.d.sync += cmd[8 * i:8 * i + 8].eq(byte)
                    with m.If(is_data & (cnt >= HB)):
                        m.d.sync += wshift.eq(Cat(wshift[8:], byte))
                        with m.If(wbyte == B - 1):
                            m.d.comb += rxw.en.eq(1)
                            m.d.sync += [wbyte.eq(0), tent.eq(wrap(tent)),
                                         words_in.eq(words_in + 1)]
                        with m.Else():
                            m.d.sync += wbyte.eq(wbyte + 1)
                    with m.If(cnt == flen_m1):  # the last payload byte
                        m.next = "CRC0"
                with m.Elif(idle_out):
                    m.d.comb += [queue_nak.eq(1), queue_reason.eq(LinkNak.TRUNCATED)]
                    m.next = "IDLE"
            with m.State("CRC0"):
                with m.If(got):
                    m.d.sync += crc_lo.eq(byte)
                    m.next = "CRC1"
                with m.Elif(idle_out):
                    m.d.comb += [queue_nak.eq(1), queue_reason.eq(LinkNak.TRUNCATED)]
                    m.next = "IDLE"
            with m.State("CRC1"):
                with m.If(got):
                    m.d.sync += crc_ok.eq(Cat(crc_lo, byte) == crc)
                    m.next = "CHECK"
                with m.Elif(idle_out):
                    m.d.comb += [queue_nak.eq(1), queue_reason.eq(LinkNak.TRUNCATED)]
                    m.next = "IDLE"
            with m.State("CHECK"):  # the checks, registered in CRC1 (no byte comes now)
                with m.If(~crc_ok):
                    m.d.comb += [queue_nak.eq(1), queue_reason.eq(LinkNak.CHECKSUM)]
                with m.Elif(is_data & ~hdr_ok):
                    m.d.comb += [queue_nak.eq(1), queue_reason.eq(LinkNak.UNEXPECTED)]
                with m.Else():
                    m.d.comb += execute.eq(1)
                m.next = "IDLE"
            with m.State("DISCARD"):  # ignore the line until it has been idle, then NAK
                with m.If(idle_out):
                    m.d.comb += [queue_nak.eq(1), queue_reason.eq(reject)]
                    m.next = "IDLE"
        # a rejected frame never moves ``commit``: the next frame's ``tent`` restarts from it
        m.d.comb += self.frame_ok.eq(execute)

        # -- commands ---------------------------------------------------------------------------
        start_args = data.View(data.StructLayout({"prog_addr": unsigned(32),
                                                  "prog_len": unsigned(16),
                                                  "pos": unsigned(16)}), cmd)
        busy = armed | active | done_pend | self.running
        m.d.comb += [self.prog_addr.eq(start_args.prog_addr),
                     self.prog_len.eq(start_args.prog_len),
                     self.pos_init.eq(start_args.pos),
                     commit_words.eq(words_in)]
        m.d.sync += self.start.eq(0)
        with m.If(execute):
            with m.Switch(ftype):
                with m.Case(LinkFrame.PING):
                    m.d.sync += info_pend.eq(1)
                with m.Case(LinkFrame.STATUS):
                    m.d.sync += state_pend.eq(1)
                with m.Case(LinkFrame.COUNTERS):
                    m.d.sync += counts_pend.eq(1)
                with m.Case(LinkFrame.START):
                    with m.If(busy | abort_req):
                        m.d.comb += [queue_nak.eq(1), queue_reason.eq(LinkNak.BUSY)]
                    with m.Else():
                        m.d.sync += [self.start.eq(1), armed.eq(1), ack_pend.eq(1),
                                     ack_frame.eq(LinkFrame.START)]
                with m.Case(LinkFrame.ABORT):
                    m.d.sync += abort_req.eq(1)
                with m.Case(LinkFrame.DATA):
                    m.d.comb += [commit_now.eq(1), rdq.r_en.eq(1)]
                    m.d.sync += commit.eq(tent)
        # a run: armed by START, active once the chip runs, DONE queued when it is done
        with m.If(armed & self.running):
            m.d.sync += [armed.eq(0), active.eq(1)]
        with m.If(active & self.done & ~self.running):
            m.d.sync += [active.eq(0), done_pend.eq(1)]

        # -- framer -----------------------------------------------------------------------------
        jtype = Signal(8)
        jlen = Signal(16)
        jfixed = Signal(8 * _REPLY_BYTES)
        jfixed_len = Signal(range(_REPLY_BYTES + 1))
        jwords = Signal(range(MAXB + 1))
        tcrc = Signal(16, init=LINK_CRC_INIT)
        tcnt = Signal(range(_REPLY_BYTES + 1))
        wreg = Signal(BB)
        wbyte_t = Signal(range(B))
        tx_idle = Signal()
        out = utx.i
        sent = out.valid & out.ready

        def fields(layout, **values):
            view = Signal(layout)
            for name, value in values.items():
                m.d.comb += view[name].eq(value)
            return view.as_value()

        counts = Signal(LINK_COUNTS)
        m.d.comb += counts.eq(self.counters)
        state_v = Signal(LINK_STATE)
        m.d.comb += [state_v.running.eq(self.running), state_v.error.eq(self.error),
                     state_v.error_pc.eq(self.error_pc), state_v.pos.eq(self.pos)]
        done_v = Signal(LINK_DONE)
        m.d.comb += [done_v.state.eq(state_v), done_v.counters.eq(counts)]
        info_v = fields(LINK_INFO, version=LINK_VERSION, bus_bytes=B, max_burst=MAXB,
                        params_hash=link_params_hash(p, self.vector), vector=int(self.vector))
        burst_v = fields(LINK_BURST, addr=pend_addr, count=pend_count)

        # the next frame, by priority (only while the framer is idle and no abort waits)
        jobs = [
            (nak_pend, LinkFrame.NAK, fields(LINK_NAK, reason=nak_reason, frame=nak_frame),
             nak_pend),
            (ack_pend, LinkFrame.ACK, fields(LINK_ACK, frame=ack_frame), ack_pend),
            (info_pend, LinkFrame.INFO, info_v, info_pend),
            (state_pend, LinkFrame.STATE, state_v.as_value(), state_pend),
            (counts_pend, LinkFrame.COUNTS, counts.as_value(), counts_pend),
        ]
        # Two cycles: while the framer is idle (and no abort waits) the highest-priority
        # pending frame is chosen into ``sel`` (one-hot: the jobs, a bus burst, DONE); in
        # ``PICK`` its fields are loaded and its flag cleared (the choice holds: a chosen
        # burst only grows until launched, an abort waits for the framer to be idle).
        n_sel = len(jobs) + 2
        SEL_BURST, SEL_DONE = len(jobs), len(jobs) + 1
        want = Signal(n_sel)
        sel = Signal(n_sel)
        pick = Signal()
        with m.If(tx_idle & ~abort_req & ~abort):
            chosen = Const(0)
            for i, (cond, *_rest) in enumerate(jobs):
                m.d.comb += want[i].eq(cond & ~chosen)
                chosen = chosen | cond
            m.d.comb += [
                want[SEL_BURST].eq(~chosen & burst_ready),
                want[SEL_DONE].eq(~chosen & ~burst_ready & done_pend & k_none
                                  & ~wfifo.r_rdy),
                pick.eq(want.any()),
            ]
            m.d.sync += sel.eq(want)
        # registered: high in the PICK cycle (``pick`` moves the framer there)
        in_pick = Signal()
        launch_q = Signal()
        m.d.sync += [in_pick.eq(pick), launch_q.eq(pick & want[SEL_BURST])]
        m.d.comb += launch.eq(launch_q)
        # the chosen frame's fields: ``sel`` is one-hot, so an AND-OR of the candidates
        wr_burst = k_write
        n_rd = link_payload_bytes(LinkFrame.READ)
        cands = [(ftyp, link_payload_bytes(ftyp), value, 0) for _c, ftyp, value, _f in jobs]
        cands.append((Mux(wr_burst, LinkFrame.WRITE, LinkFrame.READ),
                      n_rd + Mux(wr_burst, pend_count * B, 0), burst_v,
                      Mux(wr_burst, pend_count, 0)))
        cands.append((LinkFrame.DONE, link_payload_bytes(LinkFrame.DONE), done_v, 0))

        def one_of(k, width):
            return _or_all([Mux(sel[i], c[k], 0) for i, c in enumerate(cands)], width)

        def fixed_len(c):
            return n_rd if c is cands[SEL_BURST] else c[1]

        # ``jfixed`` shifts the cycle after a byte of it is sent (a register's enable, not the
        # transmitter's state, drives its ~700 flops; the transmitter takes the next byte
        # 10 x divisor cycles later), and loads in PICK (never the same cycle)
        jshift = Signal()
        m.d.sync += jshift.eq(0)
        with m.If(jshift):
            m.d.sync += jfixed.eq(jfixed >> 8)
        with m.If(in_pick):
            m.d.sync += [jtype.eq(one_of(0, 8)), jlen.eq(one_of(1, 16)),
                         jfixed.eq(one_of(2, len(jfixed))),
                         jfixed_len.eq(_or_all([Mux(sel[i], fixed_len(c), 0)
                                                for i, c in enumerate(cands)],
                                               len(jfixed_len))),
                         jwords.eq(one_of(3, len(jwords)))]
            for i, (_c, _t, _v, flag) in enumerate(jobs):
                with m.If(sel[i]):
                    m.d.sync += flag.eq(0)
            with m.If(sel[SEL_BURST]):
                m.d.comb += [rdq.w_en.eq(k_read), rdq.w_data.eq(burst_v)]
            with m.If(sel[SEL_DONE]):
                m.d.sync += done_pend.eq(0)

        # abort: once the framer is idle (a frame is never cut), reset the chip and bus state
        abort_left = Signal(range(UNIT_RESET_DELAY + 1))  # cycles of ``abort`` after this one
        m.d.sync += abort.eq(abort_left != 0)
        with m.If(abort_left != 0):
            m.d.sync += abort_left.eq(abort_left - 1)
        with m.If(abort_req & tx_idle):
            m.d.sync += [abort.eq(1), abort_left.eq(UNIT_RESET_DELAY), abort_req.eq(0),
                         armed.eq(0), active.eq(0),
                         done_pend.eq(0), ack_pend.eq(1), ack_frame.eq(LinkFrame.ABORT)]
        with m.If(abort):  # while the chip is reset: the bus state back to empty
            m.d.sync += [kind.eq(KIND_NONE), pend_count.eq(0), linger.eq(0), credit.eq(D),
                         owed.eq(0), avail.eq(0), commit.eq(0), rd_ptr.eq(0)]

        upd = Signal()
        m.d.comb += upd.eq(sent)
        with m.FSM(name="framer"):
            with m.State("IDLE"):
                m.d.comb += tx_idle.eq(1)
                with m.If(pick):
                    m.next = "PICK"
            with m.State("PICK"):
                m.next = "SYNC"
            with m.State("SYNC"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(LINK_SYNC), upd.eq(0)]
                with m.If(out.ready):
                    m.d.sync += [tcrc.eq(LINK_CRC_INIT), tcnt.eq(0), wbyte_t.eq(0)]
                    m.next = "TYPE"
            with m.State("TYPE"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(jtype)]
                with m.If(out.ready):
                    m.next = "LEN0"
            with m.State("LEN0"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(jlen[:8])]
                with m.If(out.ready):
                    m.next = "LEN1"
            with m.State("LEN1"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(jlen[8:])]
                with m.If(out.ready):
                    with m.If(jfixed_len != 0):
                        m.next = "FIXED"
                    with m.Elif(jwords != 0):
                        m.next = "WORD"
                    with m.Else():
                        m.next = "CRC0"
            with m.State("FIXED"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(jfixed[:8])]
                with m.If(out.ready):
                    m.d.sync += [jshift.eq(1), tcnt.eq(tcnt + 1)]
                    with m.If(tcnt + 1 != jfixed_len):
                        pass
                    with m.Elif(jwords != 0):
                        m.next = "WORD"
                    with m.Else():
                        m.next = "CRC0"
            with m.State("WORD"):  # the next write word from the FIFO (pushed before launch)
                m.d.comb += [wfifo.r_en.eq(1), upd.eq(0)]
                with m.If(wfifo.r_rdy):
                    m.d.sync += [wreg.eq(wfifo.r_data), wbyte_t.eq(0)]
                    m.next = "STREAM"
            with m.State("STREAM"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(wreg[:8])]
                with m.If(out.ready):
                    m.d.sync += [wreg.eq(wreg >> 8), wbyte_t.eq(wbyte_t + 1)]
                    with m.If(wbyte_t == B - 1):
                        m.d.sync += jwords.eq(jwords - 1)
                        with m.If(jwords == 1):
                            m.next = "CRC0"
                        with m.Else():
                            m.next = "WORD"
            with m.State("CRC0"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(tcrc[:8]), upd.eq(0)]
                with m.If(out.ready):
                    m.next = "CRC1"
            with m.State("CRC1"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(tcrc[8:]), upd.eq(0)]
                with m.If(out.ready):
                    m.next = "IDLE"
        with m.If(upd):
            m.d.sync += tcrc.eq(crc16_next(tcrc, out.payload))
        return m

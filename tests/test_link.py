"""The board's UART host link (``hw/link.py``) in amaranth.sim, against the protocol of
``hw/isa.py`` as the runtime speaks it (``sw/board.py``).

The UART lines are driven and decoded bit by bit by testbench processes (:class:`SimSerial`,
a serial-port-like object whose other end is the simulated pins), so the real host code
(``encode_frame``, ``FrameParser``, ``BoardDevice``) runs against the gateware:

- the CRC of the gateware equals ``hw.isa.link_crc``; UART bytes survive tx -> rx;
- commands: ``PING`` -> ``INFO`` (version, bus width, params hash), ``STATUS`` / ``COUNTERS``
  report what the chip ports show, ``START`` pulses ``start`` with its arguments;
- bad frames: a wrong checksum, a wrong length, an unknown type, a truncated frame, a
  ``DATA`` frame nobody asked for, ``START`` while running: each is NAKed with its reason and
  nothing happens (no ``start`` pulse, no word reaches the chip);
- the bus proxy: a testbench chip issues reads (runs of consecutive addresses and jumps) and
  writes; reads are coalesced into bursts, answered in order, a corrupted ``DATA`` frame is
  NAKed and its words never reach the chip, writes go up in order with their data;
- the whole :class:`hw.board_top.LinkBoardTop` (a small chip) driven by ``BoardDevice``: a
  GEMM program's memory after the run equals the ISA simulator's and the golden GEMM, a
  program with an error reports the ISA simulator's error and pc.

The bus-proxy and program runs take ~40 s and ~2 min in amaranth.sim: slow-marked (the
Verilator board tests, ``tests/test_board_rtl.py``, run a program through the same link in
the default suite).
"""

import os

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hw.board_top import LinkBoardTop
from hw.isa import (
    LINK_BURST,
    LINK_PAYLOAD,
    LINK_VERSION,
    Buf,
    Counter,
    Err,
    LinkFrame,
    LinkNak,
    Op,
    encode,
    link_crc,
    link_max_burst,
    link_max_payload,
    link_params_hash,
)
from hw.link import Link, UartRx, UartTx, crc16_next
from hw.params import ChipParams
from sim import golden as G
from sim.isa_sim import UNTIMED_COUNTERS, IsaSim
from sw.board import BoardDevice, FrameParser, encode_frame, pack_payload, unpack_payload
from sw.programs import Image, weight_gemm
from sw.quantize import random_gemm
from sw.runtime import DeviceError

#: The UART processes of a SimSerial run forever (background testbenches); Python closes
#: them when the simulator is collected, which asyncio reports as an unraisable exception.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SEED = int(os.environ.get("LINK_SEED", np.random.SeedSequence().entropy % 2**32))
DIV = 4
TIMEOUT = 400  # inter-byte timeout, cycles (10 byte times)
PERIOD = 1e-8
#: A small chip (fast in amaranth.sim), as in tests/test_synth.py.
SMALL = ChipParams(rows=4, cols=8, weight_sram_kib=2, act_sram_kib=2, acc_sram_kib=2,
                   kv_sram_kib=2, prm_entries=32, acc_entries=32, uop_depth=256, offchip_kib=64)
B = SMALL.offchip_bytes_per_cycle


def setup_module():
    print(f"\nlink tests: seed {SEED} (replay with LINK_SEED={SEED})")


class SimSerial:
    """A serial port (``write``, ``read``, ``in_waiting``, ``close``) whose other end is a
    UART in amaranth.sim: testbench processes drive ``rx`` bit by bit at ``divisor`` cycles
    per bit and decode ``tx``. ``read`` runs the simulation (``chunk`` cycles at a time, at
    most ``budget`` per call) until a byte arrives."""

    def __init__(self, top, rx, tx, divisor=DIV, chunk=500, budget=20000, extra=()):
        self.rx, self.tx, self.div = rx, tx, divisor
        self.to_board = bytearray()
        self.from_board = bytearray()
        self.chunk, self.budget = chunk, budget
        self.t = 0
        self.sim = Simulator(top)
        self.sim.add_clock(PERIOD)
        self.sim.add_testbench(self._drive, background=True)
        self.sim.add_testbench(self._watch, background=True)
        for bench in extra:
            self.sim.add_testbench(bench, background=True)
        self.gap_after = None  # [bytes, cycles]: a pause after the next bytes (truncation)

    async def _drive(self, ctx):
        while True:
            if not self.to_board:
                await ctx.tick().repeat(4)
                continue
            b = self.to_board.pop(0)
            for bit in [0, *((b >> i) & 1 for i in range(8)), 1]:
                ctx.set(self.rx, bit)
                await ctx.tick().repeat(self.div)
            if self.gap_after is not None:
                self.gap_after[0] -= 1
                if self.gap_after[0] == 0:
                    await ctx.tick().repeat(self.gap_after[1])

    async def _watch(self, ctx):
        while True:
            await ctx.negedge(self.tx)
            await ctx.tick().repeat(self.div // 2)
            assert ctx.get(self.tx) == 0, "a glitch on tx, not a start bit"
            b = 0
            for i in range(8):
                await ctx.tick().repeat(self.div)
                b |= ctx.get(self.tx) << i
            await ctx.tick().repeat(self.div)
            assert ctx.get(self.tx) == 1, "stop bit low"
            self.from_board.append(b)

    def run(self, cycles):
        self.t += cycles * PERIOD
        self.sim.run_until(self.t)

    @property
    def in_waiting(self):
        return len(self.from_board)

    def write(self, data):
        self.to_board += data

    def read(self, n=1):
        spent = 0
        while not self.from_board and spent < self.budget:
            self.run(self.chunk)
            spent += self.chunk
        out = bytes(self.from_board[:n])
        del self.from_board[:n]
        return out

    def close(self):
        pass


class Host:
    """Raw frames over a :class:`SimSerial` (for the link-only tests)."""

    def __init__(self, port, p=SMALL):
        self.port = port
        self.parser = FrameParser(link_max_payload(p))
        self.backlog = []  # bus frames that arrived while a reply was awaited

    def send(self, ftype, payload=b"", raw=None):
        self.port.write(raw if raw is not None else encode_frame(ftype, payload))

    def recv(self, cycles=60000):
        """The next frame: a stashed bus frame first, else from the line (None if none
        comes within ``cycles``)."""
        return self.backlog.pop(0) if self.backlog else self._wire(cycles)

    def _wire(self, cycles):
        spent = 0
        while True:
            frame = self.parser.next()
            if frame is not None:
                return frame
            if spent > cycles:
                return None
            self.port.run(500)
            spent += 500
            self.parser.feed(self.port.read(self.port.in_waiting) if self.port.in_waiting
                             else b"")

    def expect(self, ftype, cycles=60000):
        """The next reply from the line, decoded; bus frames (READ / WRITE) that come first
        are stashed for :meth:`recv`."""
        while True:
            got = self._wire(cycles)
            assert got is not None, f"no frame, expected {ftype.name}"
            if got[0] in (LinkFrame.READ, LinkFrame.WRITE):
                self.backlog.append(got)
                continue
            assert got[0] == ftype, (got, ftype)
            return unpack_payload(LINK_PAYLOAD[ftype], got[1])


def test_crc_matches_isa():
    """The gateware's CRC step (``crc16_next``) equals ``hw.isa.link_crc`` on random bytes."""
    rng = np.random.default_rng(SEED)
    data = bytes(rng.integers(0, 256, 64, dtype=np.uint8))
    m = Module()
    crc, byte = Signal(16), Signal(8)
    out = Signal(16)
    m.d.comb += out.eq(crc16_next(crc, byte))
    got = []

    async def bench(ctx):
        c = 0xFFFF
        for b in data:
            ctx.set(crc, c)
            ctx.set(byte, b)
            c = ctx.get(out)
            got.append(c)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert got[-1] == link_crc(data)
    assert got == [link_crc(data[:i + 1]) for i in range(len(data))]


@pytest.mark.parametrize("div", [4, 7])
def test_uart_round_trip(div):
    """Random bytes through UartTx into UartRx, back to back: every byte arrives, in order."""
    rng = np.random.default_rng(SEED + div)
    data = [int(b) for b in rng.integers(0, 256, 24)]
    m = Module()
    m.submodules.tx = tx = UartTx(div)
    m.submodules.rx = rx = UartRx(div)
    m.d.comb += rx.rx.eq(tx.tx)
    got, errors = [], []

    async def send(ctx):
        for b in data:
            ctx.set(tx.i.valid, 1)
            ctx.set(tx.i.payload, b)
            await ctx.tick().until(tx.i.ready)
        ctx.set(tx.i.valid, 0)

    async def watch(ctx):
        for _ in range(len(data) * 10 * div + 50):
            await ctx.tick()
            if ctx.get(rx.o.valid):
                got.append(ctx.get(rx.o.payload))
            errors.append(ctx.get(rx.frame_error))

    sim = Simulator(m)
    sim.add_clock(PERIOD)
    sim.add_testbench(send)
    sim.add_testbench(watch)
    sim.run()
    assert got == data and not any(errors)


# -- the link alone: a testbench plays the chip ------------------------------------------------


class FakeChip:
    """Testbench processes on :class:`Link`'s chip ports: ``start`` pulses are recorded
    with their arguments; status and counters are what the test sets; optional bus traffic:
    reads of ``reads`` (addresses, checked against ``mem``) and ``writes``."""

    def __init__(self, link, mem=None, reads=(), writes=()):
        self.link = link
        self.starts = []
        self.mem = mem
        self.reads, self.writes = list(reads), list(writes)
        self.got = []       # read data in order
        self.issued = 0
        self.wrote = 0

    async def watch_start(self, ctx):
        while True:
            await ctx.tick()
            if ctx.get(self.link.start):
                self.starts.append((ctx.get(self.link.prog_addr), ctx.get(self.link.prog_len),
                                    ctx.get(self.link.pos_init)))

    async def bus(self, ctx):
        bus = self.link.bus
        ctx.set(bus.rd_data.ready, 1)
        while True:
            if self.wrote < len(self.writes):
                a, d = self.writes[self.wrote]
                ctx.set(bus.wr.valid, 1)
                ctx.set(bus.wr.payload, {"addr": a, "data": d})
            else:
                ctx.set(bus.wr.valid, 0)
            if self.issued < len(self.reads):
                ctx.set(bus.rd_addr.valid, 1)
                ctx.set(bus.rd_addr.payload, self.reads[self.issued])
            else:
                ctx.set(bus.rd_addr.valid, 0)
            _, _, wr_ok, rd_ok, rsp, rsp_v = await ctx.tick().sample(
                bus.wr.ready, bus.rd_addr.ready, bus.rd_data.payload, bus.rd_data.valid)
            if self.wrote < len(self.writes) and wr_ok:
                self.wrote += 1
            if self.issued < len(self.reads) and rd_ok:
                self.issued += 1
            if rsp_v:
                self.got.append(rsp)


def _link_rig(**chip_kw):
    link = Link(SMALL, vector=False, divisor=DIV, timeout_cycles=TIMEOUT)
    chip = FakeChip(link, **chip_kw)
    port = SimSerial(link, link.rx, link.tx, extra=[chip.watch_start, chip.bus])
    return link, chip, port, Host(port)


def test_link_commands():
    """PING, STATUS, COUNTERS, START and ABORT: the answers carry what the ports show."""
    link, chip, port, host = _link_rig()

    async def ports(ctx):
        ctx.set(link.error, Err.SRAM_RANGE)
        ctx.set(link.error_pc, 77)
        ctx.set(link.pos, 1234)
        for c in Counter:
            ctx.set(link.counters[c], (c + 1) * 2**40 + c)

    port.sim.add_testbench(ports)
    host.send(LinkFrame.PING)
    info = host.expect(LinkFrame.INFO)
    assert info == {"version": LINK_VERSION, "bus_bytes": B, "max_burst": link_max_burst(SMALL),
                    "params_hash": link_params_hash(SMALL, False), "vector": 0}
    host.send(LinkFrame.STATUS)
    assert host.expect(LinkFrame.STATE) == {"running": 0, "error": Err.SRAM_RANGE,
                                            "error_pc": 77, "pos": 1234}
    host.send(LinkFrame.COUNTERS)
    assert host.expect(LinkFrame.COUNTS)[""] == [(c + 1) * 2**40 + c for c in Counter]
    host.send(LinkFrame.START, pack_payload(LINK_PAYLOAD[LinkFrame.START], prog_addr=0x123456,
                                            prog_len=300, pos=9))
    assert host.expect(LinkFrame.ACK)["frame"] == LinkFrame.START
    assert chip.starts == [(0x123456, 300, 9)]
    # the run is armed: a second START is refused until the chip has run and DONE is out
    host.send(LinkFrame.START, pack_payload(LINK_PAYLOAD[LinkFrame.START], prog_addr=1,
                                            prog_len=1, pos=0))
    assert host.expect(LinkFrame.NAK) == {"reason": LinkNak.BUSY, "frame": LinkFrame.START}
    host.send(LinkFrame.ABORT)
    assert host.expect(LinkFrame.ACK)["frame"] == LinkFrame.ABORT
    host.send(LinkFrame.START, pack_payload(LINK_PAYLOAD[LinkFrame.START], prog_addr=5,
                                            prog_len=6, pos=7))
    assert host.expect(LinkFrame.ACK)["frame"] == LinkFrame.START
    assert chip.starts == [(0x123456, 300, 9), (5, 6, 7)]


def _start_frame(**kw):
    return encode_frame(LinkFrame.START, pack_payload(LINK_PAYLOAD[LinkFrame.START], **kw))


def test_bad_frames_are_rejected():
    """Each bad frame is NAKed with its reason and executes nothing; the link then takes the
    next good frame."""
    link, chip, port, host = _link_rig()
    good = _start_frame(prog_addr=1, prog_len=2, pos=3)
    flipped = bytearray(good)
    flipped[6] ^= 0x10  # a payload bit: the CRC no longer matches
    cases = [
        ("checksum", bytes(flipped), LinkNak.CHECKSUM, LinkFrame.START),
        ("length", encode_frame(LinkFrame.START, b"\x00" * 7), LinkNak.LENGTH, LinkFrame.START),
        ("length", encode_frame(LinkFrame.PING, b"\x00"), LinkNak.LENGTH, LinkFrame.PING),
        ("type", encode_frame(0x44, b"\x01\x02"), LinkNak.TYPE, 0x44),
        ("type", encode_frame(LinkFrame.DONE), LinkNak.TYPE, LinkFrame.DONE),
        ("unexpected", encode_frame(LinkFrame.DATA, pack_payload(LINK_BURST, addr=0, count=1)
                                    + bytes(B)), LinkNak.UNEXPECTED, LinkFrame.DATA),
    ]
    for name, raw, reason, frame in cases:
        host.send(None, raw=raw)
        assert host.expect(LinkFrame.NAK) == {"reason": reason, "frame": frame}, name
    # truncated: the line goes idle after 5 bytes of the frame
    port.gap_after = [5, 3 * TIMEOUT]
    host.send(None, raw=good)
    assert host.expect(LinkFrame.NAK)["reason"] == LinkNak.TRUNCATED
    # the rest of the truncated frame arrives as noise: no sync byte in it, so it is dropped
    assert host.recv(cycles=4000) is None
    port.gap_after = None
    assert chip.starts == []
    host.send(None, raw=good)
    assert host.expect(LinkFrame.ACK)["frame"] == LinkFrame.START
    assert chip.starts == [(1, 2, 3)]


@pytest.mark.slow
def test_bus_proxy():
    """Reads in runs and jumps are coalesced into READ bursts (never more than the burst
    limit), answered in order; a corrupted DATA frame and a DATA frame that answers the
    wrong READ are NAKed and none of their words reaches the chip; writes go up as WRITE
    frames, in order, with their data."""
    rng = np.random.default_rng(SEED)
    mem = [int(v) for v in rng.integers(0, 2**63, 4096, dtype=np.uint64)]
    MAXB = link_max_burst(SMALL)
    reads = [*range(100, 150), 7, 8, 9, 3000, *range(500, 520)]
    writes = [(2000 + i, int(rng.integers(0, 2**63))) for i in range(20)] + [(9, 1), (11, 2)]
    link, chip, port, host = _link_rig(mem=mem, reads=reads, writes=writes)
    bursts, wrote, naks = [], [], []
    corrupt_next, misdirect_next = True, False
    deadline = 0
    while len(chip.got) < len(reads) or len(wrote) < len(writes):
        deadline += 1
        assert deadline < 400, (len(chip.got), len(wrote), bursts)
        f = host.recv(cycles=40000)
        if f is None:  # all frames in: the last words may have reached the chip meanwhile
            assert len(chip.got) == len(reads) and len(wrote) == len(writes), (
                "the link fell silent", len(chip.got), chip.issued, len(wrote), bursts)
            break
        ftype, payload = f
        if ftype == LinkFrame.READ:
            h = unpack_payload(LINK_BURST, payload)
            bursts.append((h["addr"], h["count"]))
            words = b"".join(mem[a].to_bytes(B, "little")
                             for a in range(h["addr"], h["addr"] + h["count"]))
            good = encode_frame(LinkFrame.DATA, payload + words)
            if corrupt_next:  # the first answer arrives corrupted, then again intact
                bad = bytearray(good)
                bad[12] ^= 0x01
                host.send(None, raw=bytes(bad))
                assert host.expect(LinkFrame.NAK) == {"reason": LinkNak.CHECKSUM,
                                                      "frame": LinkFrame.DATA}
                naks.append("checksum")
                corrupt_next, misdirect_next = False, True
            elif misdirect_next and h["count"] > 1:  # words of the right length, wrong READ
                other = pack_payload(LINK_BURST, addr=h["addr"] + 1, count=h["count"])
                host.send(LinkFrame.DATA, other + words)
                assert host.expect(LinkFrame.NAK) == {"reason": LinkNak.UNEXPECTED,
                                                      "frame": LinkFrame.DATA}
                naks.append("unexpected")
                misdirect_next = False
            host.send(None, raw=good)
        elif ftype == LinkFrame.WRITE:
            h = unpack_payload(LINK_BURST, payload[:6])
            data = payload[6:]
            assert len(data) == h["count"] * B
            for i in range(h["count"]):
                wrote.append((h["addr"] + i, int.from_bytes(data[i * B:(i + 1) * B], "little")))
        else:
            raise AssertionError(f"unexpected {ftype.name}")
    port.run(2000)
    assert naks == ["checksum", "unexpected"]
    assert chip.got == [mem[a] for a in reads]  # in order, no word of a rejected frame
    assert wrote == writes
    flat = [a for a0, n in bursts for a in range(a0, a0 + n)]
    assert flat == reads
    assert max(n for _, n in bursts) <= MAXB
    assert len(bursts) < len(reads) // 4, bursts  # coalesced


# -- the whole board top (a small chip) with the runtime's BoardDevice --------------------------


def _board(p=SMALL):
    top = LinkBoardTop(p, "ulx3s-85f", vector=False, divisor=DIV, timeout_cycles=TIMEOUT)
    port = SimSerial(top, top.uart_rx, top.uart_tx, budget=4000)
    return top, port


@pytest.mark.slow
def test_board_runs_a_program():
    """A weight GEMM (loads, GEMM, store) through the link: the off-chip memory after the
    run equals the ISA simulator's and holds the golden GEMM; the counters the ISA simulator
    counts agree. Then a program with an error: the ISA simulator's error and pc."""
    rng = np.random.default_rng(SEED)
    img = Image(SMALL)
    x, qw, bias = random_gemm(rng, 2, 32, 8, 8)
    x8, xs = G.quantize_rows(x)
    wg = weight_gemm(SMALL, img, x8, xs, qw, bias)
    prog_addr, prog_len = img.put_program(wg.prog)
    bad = [encode(Op.LOAD, buf=Buf.ACT, sram=0, words=1, off=0), encode(Op.NOP),
           encode(Op.LOAD, buf=Buf.WGT, sram=4000, words=8, off=0), encode(Op.HALT)]
    bad_addr, bad_len = img.put_program(bad)
    image = img.mem[:img.next * B]

    isa = IsaSim(SMALL, image.copy(), vector=False)
    isa.boot(prog_addr, prog_len, 0)
    assert isa.run() == Err.NONE
    want_mem = isa.read_offchip(0, img.next)
    want_counters = dict(isa.counters)
    isa.boot(bad_addr, bad_len, 0)
    want_err = isa.run()
    assert want_err == Err.SRAM_RANGE

    top, port = _board()
    dev = BoardDevice(SMALL, image, transport=port, vector=False, timeout_s=120)
    r = dev.run(prog_addr, prog_len, 0)
    assert r.error == Err.NONE and not r.timed_out
    got = dev.read(0, img.next)
    assert np.array_equal(got, want_mem)
    assert np.array_equal(wg.result(got), G.gemm(x8, xs, qw, bias))
    for c in UNTIMED_COUNTERS:
        assert r.counters[c] == want_counters[c], c.name
    assert r.cycles > 0 and r.bytes_in > 0 and r.bytes_out > 0
    r = dev.run(bad_addr, bad_len, 0)
    assert (r.error, r.error_pc) == (want_err, isa.error_pc)
    assert dev.status()["error"] == want_err
    assert dev.counters()[Counter.UOPS] == r.counters[Counter.UOPS]


def test_board_device_reports_bad_frames():
    """The runtime's view of a rejected frame: a START corrupted on the line is a
    DeviceError naming the checksum, and nothing ran; a board built for other parameters
    is refused at open."""
    top, port = _board()
    img = Image(SMALL)
    addr, n = img.put_program([encode(Op.HALT)])

    def corrupt_start(ftype, frame):
        if ftype == LinkFrame.START:
            frame = bytearray(frame)
            frame[5] ^= 0x40
        return bytes(frame)

    dev = BoardDevice(SMALL, img.mem[:img.next * B], transport=port, vector=False,
                      timeout_s=120, tamper=corrupt_start)
    with pytest.raises(DeviceError, match=r"rejected a START frame.*CHECKSUM.*nothing of it"):
        dev.run(addr, n, 0)
    assert dev.status()["running"] == 0
    dev.tamper = None
    assert dev.run(addr, n, 0).error == Err.NONE
    with pytest.raises(DeviceError, match="built with other parameters"):
        BoardDevice(ChipParams(rows=4, cols=8), transport=port, vector=False, timeout_s=120)


def test_board_device_open_errors():
    """No port, a port that does not exist, and a port nobody answers on (``loop://`` hears
    its own PING) are DeviceErrors that say so."""
    with pytest.raises(DeviceError, match="needs a serial port"):
        BoardDevice(SMALL)
    with pytest.raises(DeviceError, match="cannot open the board's serial port"):
        BoardDevice(SMALL, port="/dev/no-such-tty")
    with pytest.raises(DeviceError, match="unknown type 0x01.*is a board"):
        BoardDevice(SMALL, port="loop://", timeout_s=0.5)

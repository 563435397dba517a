"""The runtime's board backend: a dev board's chip over its UART host link.

The board (``hw/board_top.py``'s ``LinkBoardTop``: the chip, a clock, ``hw/link.py``) speaks
the framed protocol defined in ``hw/isa.py`` (the link section: ``LinkFrame``, the
``LINK_*`` payload layouts, ``link_crc``); this module is its host end, and a runtime
device (``sw.runtime.Device``)::

    dev = BoardDevice(compiled.p, compiled.image_bytes(), port="/dev/ttyUSB0", baud=3_000_000)
    r = dev.run(prog.addr, prog.length, pos)      # error, error_pc, counters, cycles, ...

``port`` is anything ``serial.serial_for_url`` opens: a device (``/dev/ttyUSB0``), a
pseudo-terminal (the Verilator board harness, ``sim/board_rtl.py``), ``loop://``...

**Where memory and programs live.** The boards have no memory controller for their SDRAM,
so the chip's off-chip memory is this host's: ``BoardDevice`` keeps the memory image
(``mem``, ``offchip_kib`` KiB) and serves the chip's bus over the link. What the issue calls
"write/read memory regions" is :meth:`write` / :meth:`read`, host-local and immediate (no
frame: the chip reads the words when its program asks for them); "load program" is writing
the program's micro-op words into the image (the compiler's image already holds them) and
:meth:`run`'s ``START`` (``prog_addr``, ``prog_len``, ``pos``), after which the chip's boot
loader fetches the words through the link like any other read; "start, read status and
counters" are :meth:`run`, :meth:`status` and :meth:`counters`. The on-chip buffers (the KV
cache) stay on the board between runs.

During :meth:`run` the host answers every ``READ`` with one ``DATA`` frame, applies every
``WRITE`` to the image, and returns at ``DONE`` (the chip's error, error pc, pos and
counters; ``cycles`` is the chip's ``CYCLES`` counter). Errors are :class:`DeviceError` with
what went wrong: a port that cannot be opened, a board that does not answer ``PING`` with
a matching ``INFO`` (other protocol version, bus width or chip parameters than the programs
were compiled for), a frame the board rejected (``NAK``: bad checksum, wrong length,
unknown type, truncated, unexpected, busy; the host then aborts the run), a corrupted or
malformed frame from the board, an address outside the memory, or a board that falls
silent for ``timeout_s``. A run longer than ``run_timeout_s`` is aborted and returned with
``timed_out``. ``progress`` (a callable taking a message, or ``True`` for stderr) hears
about long runs every ``progress_s`` seconds.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from hw.isa import (
    LINK_BURST,
    LINK_CRC_BYTES,
    LINK_HEADER_BYTES,
    LINK_PAYLOAD,
    LINK_SYNC,
    LINK_VERSION,
    Counter,
    Err,
    LinkFrame,
    LinkNak,
    leaf_fields,
    link_crc,
    link_max_burst,
    link_max_payload,
    link_params_hash,
    link_payload_bytes,
)
from hw.params import ChipParams
from sw.runtime import DeviceError

__all__ = ["BoardDevice", "BoardRun", "FrameParser", "encode_frame", "pack_payload",
           "unpack_payload", "NAK_MEANING"]

#: What each NAK reason means, for error messages.
NAK_MEANING = {
    LinkNak.CHECKSUM: "bad checksum (the frame was corrupted on the line)",
    LinkNak.LENGTH: "a length its type does not allow",
    LinkNak.TYPE: "unknown frame type",
    LinkNak.TRUNCATED: "truncated (the line went idle inside the frame)",
    LinkNak.BUSY: "the chip is busy with a run",
    LinkNak.UNEXPECTED: "a DATA frame that answers no outstanding READ",
}


def _name(enum_cls, value) -> str:
    try:
        return enum_cls(value).name
    except ValueError:
        return f"0x{int(value):02x}"


def pack_payload(layout, **fields) -> bytes:
    """A ``LINK_*`` layout's payload bytes (little-endian) from its fields."""
    from amaranth.lib import data

    layout = data.Layout.cast(layout)
    return layout.const(fields).as_bits().to_bytes(layout.size // 8, "little")


def unpack_payload(layout, raw: bytes) -> dict:
    """A ``LINK_*`` payload -> {field path: int, or list of ints for an array}."""
    v = int.from_bytes(bytes(raw), "little")
    out = {}
    for path, off, width, _sgn, count in leaf_fields(layout):
        vals = [(v >> (off + i * width)) & ((1 << width) - 1) for i in range(count)]
        out[path] = vals if count > 1 or path == "" else vals[0]
    return out


def encode_frame(ftype: int, payload: bytes = b"") -> bytes:
    """One frame: sync, type, length, payload, CRC (``hw/isa.py``)."""
    body = bytes([int(ftype)]) + len(payload).to_bytes(2, "little") + bytes(payload)
    return bytes([LINK_SYNC]) + body + link_crc(body).to_bytes(LINK_CRC_BYTES, "little")


class FrameParser:
    """Board-to-host frames out of a byte stream: :meth:`feed` bytes, :meth:`next` returns
    ``(type, payload)`` or None; a corrupted or malformed frame raises :class:`DeviceError`
    naming what is wrong (bytes before a sync byte are skipped and counted in ``skipped``)."""

    def __init__(self, max_payload: int):
        self.max_payload = max_payload
        self.buf = bytearray()
        self.skipped = 0

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self):
        buf = self.buf
        i = buf.find(LINK_SYNC)
        if i < 0:
            self.skipped += len(buf)
            buf.clear()
            return None
        if i:
            self.skipped += i
            del buf[:i]
        if len(buf) < LINK_HEADER_BYTES:
            return None
        ftype, n = buf[1], int.from_bytes(buf[2:4], "little")
        if ftype not in LinkFrame._value2member_map_ or ftype in (
                f.value for f in LinkFrame if f < 0x80):
            del buf[:1]
            raise DeviceError(f"the board sent a frame of unknown type 0x{ftype:02x} "
                              f"(a corrupted header)")
        if n > self.max_payload:
            del buf[:1]
            raise DeviceError(f"the board sent a {LinkFrame(ftype).name} frame of {n} bytes, "
                              f"more than the {self.max_payload} of any frame (a corrupted "
                              f"length)")
        end = LINK_HEADER_BYTES + n + LINK_CRC_BYTES
        if len(buf) < end:
            return None
        body, crc = bytes(buf[1:end - LINK_CRC_BYTES]), int.from_bytes(buf[end - 2:end], "little")
        del buf[:end]
        if link_crc(body) != crc:
            raise DeviceError(f"the board sent a corrupted {LinkFrame(ftype).name} frame "
                              f"(checksum 0x{crc:04x}, computed 0x{link_crc(body):04x})")
        return LinkFrame(ftype), body[3:]


@dataclass
class BoardRun:
    """One run on the board (the fields of ``sim.devices.RunResult``, plus ``pos`` and the
    bytes the link moved each way)."""

    error: Err
    error_pc: int
    counters: dict = field(default_factory=dict)
    cycles: int | None = None
    wall_s: float = 0.0
    timed_out: bool = False
    pos: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class BoardDevice:
    """A dev board over its UART host link (module docstring).

    ``p``: the chip parameters the programs were compiled for (the board must report the
    same, ``INFO``'s params hash, unless ``check_params`` is False); ``image``: the initial
    off-chip memory (uint8 bytes; the rest is 0). ``port``: a ``serial_for_url`` URL, or
    ``transport``: an open serial-like object (``write``, ``read``, ``in_waiting``,
    ``close``). ``tamper(ftype, frame) -> bytes``: fault injection on every frame sent
    (tests).
    """

    name = "board"

    def __init__(self, p: ChipParams, image=None, *, port: str | None = None,
                 baud: int = 3_000_000, vector: bool = True, transport=None,
                 timeout_s: float = 5.0, run_timeout_s: float | None = None,
                 progress=None, progress_s: float = 10.0, check_params: bool = True,
                 tamper=None):
        self.p = p
        self.vector = vector
        self.bus_bytes = B = p.offchip_bytes_per_cycle
        self.words = p.offchip_kib * 1024 // B
        self.mem = np.zeros(self.words * B, np.uint8)
        if image is not None:
            image = np.asarray(image, np.uint8).reshape(-1)
            if image.size > self.mem.size:
                raise ValueError(f"memory image of {image.size} bytes does not fit the "
                                 f"{self.mem.size}-byte off-chip memory (ChipParams.offchip_kib"
                                 f" = {p.offchip_kib})")
            self.mem[:image.size] = image
        self.timeout_s = timeout_s
        self.run_timeout_s = run_timeout_s
        self.progress = (lambda msg: print(msg, file=sys.stderr, flush=True)) \
            if progress is True else progress
        self.progress_s = progress_s
        self.tamper = tamper
        self.max_burst = link_max_burst(p)
        self.parser = FrameParser(link_max_payload(p))
        self.bytes_in = self.bytes_out = 0
        if transport is None:
            if port is None:
                raise DeviceError("the board device needs a serial port: pass port= (e.g. "
                                  "/dev/ttyUSB0, or --port on the command line)")
            import serial

            try:
                transport = serial.serial_for_url(port, baudrate=baud, timeout=0.05)
            except (serial.SerialException, ValueError) as exc:
                raise DeviceError(f"cannot open the board's serial port {port!r}: {exc}") \
                    from None
        self.port = transport
        self.where = port or type(transport).__name__
        self.info: dict = {}
        try:
            self.info = self.ping(check_params)
        except BaseException:
            self.port.close()
            raise

    # -- memory (host-local) ---------------------------------------------------------------

    def _check_region(self, what: str, bus_addr: int, n: int) -> None:
        if bus_addr < 0 or n < 0 or bus_addr + n > self.words:
            raise ValueError(f"BoardDevice.{what}: bus words {bus_addr}..{bus_addr + n - 1} "
                             f"are not all in the {self.words}-word off-chip memory")

    def write(self, bus_addr: int, raw) -> None:
        """Write bytes into the off-chip memory image from bus word ``bus_addr`` on."""
        raw = np.frombuffer(bytes(raw), np.uint8) if isinstance(
            raw, (bytes, bytearray, memoryview)) else np.asarray(raw, np.uint8).reshape(-1)
        B = self.bus_bytes
        self._check_region("write", bus_addr, -(-raw.size // B))
        self.mem[bus_addr * B: bus_addr * B + raw.size] = raw

    def read(self, bus_addr: int, n_bus: int) -> np.ndarray:
        """Bus words ``bus_addr ..`` of the image (uint8, a copy)."""
        self._check_region("read", bus_addr, n_bus)
        B = self.bus_bytes
        return self.mem[bus_addr * B: (bus_addr + n_bus) * B].copy()

    write_offchip = write
    read_offchip = read

    # -- frames ----------------------------------------------------------------------------

    def _send(self, ftype: LinkFrame, payload: bytes = b"") -> None:
        frame = encode_frame(ftype, payload)
        if self.tamper is not None:
            frame = self.tamper(ftype, frame)
        self.port.write(frame)
        self.bytes_out += len(frame)

    def _recv(self, what: str, timeout_s: float | None = None):
        """The next frame from the board; DeviceError if none comes within ``timeout_s``
        (default ``self.timeout_s``) of silence."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            frame = self.parser.next()
            if frame is not None:
                return frame
            chunk = self.port.read(max(1, getattr(self.port, "in_waiting", 0) or 0))
            if chunk:
                self.bytes_in += len(chunk)
                self.parser.feed(chunk)
                deadline = time.monotonic() + timeout_s
            elif time.monotonic() > deadline:
                raise DeviceError(f"the board on {self.where} sent nothing for {timeout_s:g} s "
                                  f"while {what}")

    def _nak_error(self, payload: bytes, what: str) -> DeviceError:
        f = unpack_payload(LINK_PAYLOAD[LinkFrame.NAK], payload)
        reason, frame = f["reason"], f["frame"]
        meaning = NAK_MEANING.get(reason, "unknown reason")
        return DeviceError(f"the board rejected a {_name(LinkFrame, frame)} frame while {what}: "
                           f"{_name(LinkNak, reason)} ({meaning}); nothing of it was executed")

    def _expect(self, want: LinkFrame, what: str, ack_of: LinkFrame | None = None) -> bytes:
        ftype, payload = self._recv(what)
        if ftype == LinkFrame.NAK:
            raise self._nak_error(payload, what)
        if ftype != want:
            raise DeviceError(f"the board answered {ftype.name} instead of {want.name} while "
                              f"{what}")
        if ack_of is not None:
            frame = unpack_payload(LINK_PAYLOAD[LinkFrame.ACK], payload)["frame"]
            if frame != ack_of:
                raise DeviceError(f"the board acknowledged {_name(LinkFrame, frame)} instead "
                                  f"of {ack_of.name} while {what}")
        return payload

    # -- commands --------------------------------------------------------------------------

    def ping(self, check_params: bool = True) -> dict:
        """``PING`` -> the board's ``INFO`` (dict); DeviceError if its protocol version or bus
        width differ, or (``check_params``) its chip was built with other parameters."""
        what = f"asking the board on {self.where} who it is (PING)"
        self._send(LinkFrame.PING)
        try:
            info = unpack_payload(LINK_PAYLOAD[LinkFrame.INFO],
                                  self._expect(LinkFrame.INFO, what))
        except DeviceError as exc:
            raise DeviceError(f"{exc} (is a board with the chip's host link on this port, at "
                              f"this baud rate?)") from None
        if info["version"] != LINK_VERSION:
            raise DeviceError(f"the board speaks link protocol version {info['version']}, this "
                              f"runtime {LINK_VERSION}: rebuild the bitstream")
        if info["bus_bytes"] != self.bus_bytes:
            raise DeviceError(f"the board's chip has a {info['bus_bytes']}-byte bus, the "
                              f"programs were compiled for {self.bus_bytes} bytes")
        want = link_params_hash(self.p, self.vector)
        if check_params and info["params_hash"] != want:
            raise DeviceError(f"the board's chip was built with other parameters (params hash "
                              f"0x{info['params_hash']:08x}) than the programs were compiled "
                              f"for (0x{want:08x}: {self.p!r}, vector={self.vector})")
        return info

    def status(self) -> dict:
        """``STATUS`` -> {running, error, error_pc, pos} (only between runs)."""
        self._send(LinkFrame.STATUS)
        return unpack_payload(LINK_PAYLOAD[LinkFrame.STATE],
                              self._expect(LinkFrame.STATE, "reading the status"))

    def counters(self) -> dict:
        """``COUNTERS`` -> {Counter: value} of the last run (only between runs)."""
        self._send(LinkFrame.COUNTERS)
        raw = unpack_payload(LINK_PAYLOAD[LinkFrame.COUNTS],
                             self._expect(LinkFrame.COUNTS, "reading the counters"))[""]
        return {c: raw[c] for c in Counter}

    def abort(self) -> None:
        """``ABORT``: the chip's logic and the link's bus state are reset (buffers keep their
        contents); frames of the aborted run that arrive before the ``ACK`` are dropped."""
        self._send(LinkFrame.ABORT)
        while True:
            ftype, payload = self._recv("aborting the run")
            if ftype == LinkFrame.ACK and unpack_payload(
                    LINK_PAYLOAD[LinkFrame.ACK], payload)["frame"] == LinkFrame.ABORT:
                return

    def run(self, prog_addr: int, prog_len: int, pos: int) -> BoardRun:
        """``START`` the program, serve the chip's bus until ``DONE`` (module docstring)."""
        if not (0 <= prog_addr < 1 << 32 and 0 <= prog_len < 1 << 16 and 0 <= pos < 1 << 16):
            raise ValueError(f"BoardDevice.run: prog_addr {prog_addr}, prog_len {prog_len} or "
                             f"pos {pos} does not fit the START frame (32, 16, 16 bits)")
        what = f"running the {prog_len} micro-ops at bus word {prog_addr}"
        t0 = time.monotonic()
        in0, out0 = self.bytes_in, self.bytes_out
        next_report = t0 + self.progress_s
        served = written = 0
        self._send(LinkFrame.START, pack_payload(LINK_PAYLOAD[LinkFrame.START],
                                                 prog_addr=prog_addr, prog_len=prog_len,
                                                 pos=pos))
        B = self.bus_bytes
        hb = link_payload_bytes(LinkFrame.DATA)
        try:
            while True:
                ftype, payload = self._recv(what)
                if ftype == LinkFrame.READ:
                    h = unpack_payload(LINK_BURST, payload)
                    addr, n = h["addr"], h["count"]
                    self._check_burst("READ", addr, n, len(payload), hb)
                    self._send(LinkFrame.DATA, payload + self.mem[addr * B:(addr + n) * B]
                               .tobytes())
                    served += n
                elif ftype == LinkFrame.WRITE:
                    h = unpack_payload(LINK_BURST, payload[:hb])
                    addr, n = h["addr"], h["count"]
                    self._check_burst("WRITE", addr, n, len(payload), hb + n * B)
                    self.mem[addr * B:(addr + n) * B] = np.frombuffer(payload[hb:], np.uint8)
                    written += n
                elif ftype == LinkFrame.ACK:
                    continue
                elif ftype == LinkFrame.DONE:
                    d = unpack_payload(LINK_PAYLOAD[LinkFrame.DONE], payload)
                    counters = {c: d["counters"][c] for c in Counter}
                    return BoardRun(Err(d["state.error"]), d["state.error_pc"], counters,
                                    counters[Counter.CYCLES], time.monotonic() - t0, False,
                                    d["state.pos"], self.bytes_in - in0,
                                    self.bytes_out - out0)
                elif ftype == LinkFrame.NAK:
                    raise self._nak_error(payload, what)
                else:
                    raise DeviceError(f"the board sent an unexpected {ftype.name} frame while "
                                      f"{what}")
                now = time.monotonic()
                if self.run_timeout_s is not None and now - t0 > self.run_timeout_s:
                    self.abort()
                    return BoardRun(Err.NONE, 0, {}, None, now - t0, True, pos,
                                    self.bytes_in - in0, self.bytes_out - out0)
                if self.progress is not None and now >= next_report:
                    next_report = now + self.progress_s
                    self.progress(f"board: {what}: {now - t0:.0f} s, {served} bus words read, "
                                  f"{written} written, {self.bytes_in - in0} bytes in, "
                                  f"{self.bytes_out - out0} out")
        except DeviceError:
            try:  # leave the board idle for the next run, if it still answers
                self.abort()
            except DeviceError:
                pass
            raise

    def _check_burst(self, kind: str, addr: int, n: int, got: int, want: int) -> None:
        if got != want or not 1 <= n <= self.max_burst:
            raise DeviceError(f"the board sent a malformed {kind} frame: {n} words "
                              f"(at most {self.max_burst}) in {got} payload bytes")
        if addr + n > self.words:
            raise DeviceError(f"the chip {'read' if kind == 'READ' else 'wrote'} bus words "
                              f"{addr}..{addr + n - 1}, outside the {self.words}-word off-chip "
                              f"memory")

    def close(self) -> None:
        self.port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


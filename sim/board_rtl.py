"""A dev board under Verilator, its UART on a pseudo-terminal: the runtime's real board
backend (``sw.board.BoardDevice``) opens the pty with pyserial and talks bytes to it.

:class:`BoardSim` is the board top (``hw.board_top.LinkBoardTop``: the chip, its vector unit
and the UART host link) with a clock and reset port and the UART pins as ports; without a
platform there is no PLL and no I/O buffer, so what runs is the board top's logic minus the
EHXPLLL and the pin buffers (the clock is the design clock). The C++ harness
(``sim/board_harness/main.cpp``) clocks it and turns the pins into bytes on the pty's master
side: 8N1 at ``divisor`` cycles per bit both ways, so every byte crosses the board's UART
receiver and transmitter bit by bit. Python is never called per cycle.

::

    with BoardRtl(params) as board:          # builds (cached in build/rtl/board_<...>/)
        dev = BoardDevice(params, image, port=board.port)
        r = dev.run(prog_addr, prog_len, pos)
    board.cycles                              # cycles simulated (after close)

The build (Verilog from Amaranth, then Verilator ``--cc --exe --build``) takes minutes for
the chip with its vector unit; it is keyed by the parameters and the sources (``hw/``, the
harness), so it is reused until one of them changes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import time
import tty
from pathlib import Path

import amaranth
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.board_top import LINK_LED_SIGNALS, LinkBoardTop
from hw.params import ChipParams
from sim.chip_rtl import CHIP_VERILATOR_ARGS
from sim.chip_sim import sim_clock
from sim.rtl import BUILD, ROOT, VERILATOR_ARGS, source_key, verilator_executable, write_verilog

__all__ = ["BoardSim", "BoardRtl", "BoardRtlError", "HARNESS", "SIM_DIVISOR"]

HARNESS = Path(__file__).resolve().parent / "board_harness" / "main.cpp"
#: Clock cycles per UART bit in simulation (the UART's minimum: a layer's weights cross the
#: link in minutes rather than hours).
SIM_DIVISOR = 4
#: Inter-byte timeout inside a frame, in simulation: the harness polls the pty every 128
#: cycles and a host write may arrive in pieces.
SIM_TIMEOUT_CYCLES = 20_000


class BoardRtlError(RuntimeError):
    """The board simulation could not be built or started, or died."""


class BoardSim(wiring.Component):
    """:class:`LinkBoardTop` with ``clk``, ``rst`` (registered once), ``uart_rx``,
    ``uart_tx`` and ``leds`` ports: the top Verilator simulates."""

    def __init__(self, params: ChipParams, *, board: str = "ulx3s-85f", vector: bool = True,
                 divisor: int = SIM_DIVISOR, timeout_cycles: int = SIM_TIMEOUT_CYCLES):
        self.top = LinkBoardTop(params, board, vector=vector, divisor=divisor,
                                timeout_cycles=timeout_cycles)
        super().__init__({"clk": In(1), "rst": In(1), "uart_rx": In(1, init=1),
                          "uart_tx": Out(1, init=1), "leds": Out(len(LINK_LED_SIGNALS))})

    def elaborate(self, platform):
        m = sim_clock(self.clk, self.rst)
        m.submodules.board = top = self.top
        m.d.comb += [top.uart_rx.eq(self.uart_rx), self.uart_tx.eq(top.uart_tx),
                     self.leds.eq(top.leds)]
        return m


def build(params: ChipParams, *, board: str = "ulx3s-85f", vector: bool = True,
          divisor: int = SIM_DIVISOR, timeout_cycles: int = SIM_TIMEOUT_CYCLES) -> Path:
    """The harness executable for these parameters (built if missing or stale)."""
    key = source_key(params, board, vector, divisor, timeout_cycles, amaranth.__version__,
                     paths=[ROOT / "hw", ROOT / "sim" / "board_rtl.py", HARNESS])
    digest = hashlib.sha256(repr((params, board, vector, divisor, timeout_cycles)).encode())
    name = (f"board_{board}_r{params.rows}c{params.cols}{'_vec' if vector else ''}_"
            f"{digest.hexdigest()[:8]}")  # (not hash(): str hashes differ between processes)
    bdir = BUILD / name
    bdir.mkdir(parents=True, exist_ok=True)
    exe = bdir / "obj" / "Vboard_sim"
    stamp = bdir / "build.key"
    with open(bdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists() and stamp.exists() and stamp.read_text() == key:
            return exe
        stamp.unlink(missing_ok=True)
        top = BoardSim(params, board=board, vector=vector, divisor=divisor,
                       timeout_cycles=timeout_cycles)
        vfile = write_verilog(top, "board_sim", bdir)
        cmd = [verilator_executable(), "--cc", "--exe", "--build", "-j", "2",
               "--top-module", "board_sim", "-Mdir", str(bdir / "obj"), "-o", "Vboard_sim",
               *VERILATOR_ARGS, *CHIP_VERILATOR_ARGS, str(vfile), str(HARNESS)]
        log = bdir / "build.log"
        with open(log, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=bdir)
        if proc.returncode != 0 or not exe.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise BoardRtlError(f"the Verilator build of the board failed; log: {log}\n{tail}")
        stamp.write_text(key)
    return exe


class BoardRtl:
    """The board simulation as a live process on a pseudo-terminal (module docstring).

    ``port``: the pty's device path (open it with pyserial); ``cycles``: cycles simulated,
    known after :meth:`close`; ``build_s``: seconds the (cached) build took."""

    def __init__(self, params: ChipParams, *, board: str = "ulx3s-85f", vector: bool = True,
                 divisor: int = SIM_DIVISOR, timeout_cycles: int = SIM_TIMEOUT_CYCLES):
        t0 = time.monotonic()
        exe = build(params, board=board, vector=vector, divisor=divisor,
                    timeout_cycles=timeout_cycles)
        self.build_s = time.monotonic() - t0
        self.params, self.divisor = params, divisor
        self.cycles: int | None = None
        master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing, no CR/LF translation
        self.port = os.ttyname(self._slave)
        self.run_dir = exe.parent.parent
        self._cycles_file = self.run_dir / f"cycles_{os.getpid()}_{id(self)}.txt"
        self.log = self.run_dir / f"sim_{os.getpid()}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([str(exe), str(master), str(divisor),
                                          str(self._cycles_file)], pass_fds=[master],
                                         stdout=log, stderr=subprocess.STDOUT)
        os.close(master)
        time.sleep(0.05)
        if self.proc.poll() is not None:
            raise BoardRtlError(f"the board simulation exited at once "
                                f"(code {self.proc.returncode}); log: {self.log}")

    def __enter__(self) -> BoardRtl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        if self._cycles_file.exists():
            self.cycles = int(self._cycles_file.read_text())
            self._cycles_file.unlink()

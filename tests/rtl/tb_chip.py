"""cocotb testbench of the chip's Verilog (``sim.chip_sim.ChipSim``); ``sim.chip_rtl`` picks
one of its two tests.

``run_jobs`` (``sim.chip_rtl.run_jobs``): for each job (``CHIP_JOBS``, JSON) configure the
off-chip memory model, pulse ``start``, wait for ``done`` or the job's cycle budget (awaiting
an edge: Verilator runs freely), then pulse ``dump`` (the memory lands in ``+offchip_dump``,
copied to ``offchip_dump_<i>.hex``) and record status and counters in ``CHIP_RESULTS``.

``session`` (``sim.chip_rtl.RtlSession``): connect to the host's Unix socket
(``CHIP_SESSION``), say ``{"hello": <pid>}``, then serve commands, one JSON line each,
answered by one JSON line (``{"ok": true, ...}`` or ``{"ok": false, "error": why}``):

- ``{"op": "write", "first": a, "last": b}``: bus words ``a .. b`` from the ``+offchip_load``
  file (the storage's ``load``: ``$fread``);
- ``{"op": "read", "first": a, "last": b}``: bus words ``a .. b`` to the ``+offchip_save``
  file (``save``: ``$fwrite``);
- ``{"op": "run", <the fields of sim.chip_rtl.Job>}``: one job, answered with its status and
  counters as in ``run_jobs`` (no dump); a job that runs out of cycles is stopped by a reset
  of the chip (``rst``; the buffers keep whatever they hold);
- ``{"op": "close"}``: end the test. The end of the connection (the host died) ends it too.

While the test waits for a command the simulation stands still (simulated time advances only
when the test awaits), so a session may idle for as long as the host likes.
"""

import json
import os
import shutil
import socket
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, ReadOnly, RisingEdge, Timer

from hw.isa import Counter

#: Host inputs of ChipSim that the testbench drives (all 0 when idle).
_INPUTS = ("start", "prog_addr", "prog_len", "pos_init", "cfg_interval", "cfg_jitter",
           "cfg_jitter_max", "cfg_seed", "dump", "load", "save", "region_first",
           "region_last")


@cocotb.test()
async def run_jobs(dut):
    jobs = json.loads(Path(os.environ["CHIP_JOBS"]).read_text())
    run = Path(os.environ["CHIP_RUN"])
    await _start(dut)
    results = []
    for i, job in enumerate(jobs):
        res = await _run_job(dut, job)
        await _pulse(dut, "dump")
        shutil.copy(run / "offchip_dump.hex", run / f"offchip_dump_{i}.hex")
        results.append(res)
    Path(os.environ["CHIP_RESULTS"]).write_text(json.dumps(results))


@cocotb.test()
async def session(dut):
    await _start(dut)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ["CHIP_SESSION"])
    rfile = sock.makefile("rb")

    def reply(**msg):
        sock.sendall(json.dumps(msg).encode() + b"\n")

    reply(hello=os.getpid())
    while True:
        line = rfile.readline()  # blocks the simulation (and its clock) while idle
        if not line:
            dut._log.warning("session: the host closed the connection")
            break
        try:
            cmd = json.loads(line)
            op = cmd.pop("op")
            if op == "close":
                reply(ok=True)
                break
            if op in ("write", "read"):
                dut.region_first.value = cmd["first"]
                dut.region_last.value = cmd["last"]
                await _pulse(dut, "load" if op == "write" else "save")
                reply(ok=True)
            elif op == "run":
                res = await _run_job(dut, cmd)
                if res["timed_out"]:
                    await _reset(dut)  # stop the chip: the host may read memory next
                reply(ok=True, **res)
            else:
                reply(ok=False, error=f"unknown command {op!r}")
        except (KeyError, TypeError, ValueError) as exc:
            reply(ok=False, error=f"bad command {line!r}: {exc!r}")
    rfile.close()
    sock.close()


async def _start(dut):
    """Start the clock, hold every host input at 0 and reset the chip."""
    Clock(dut.clk, 10, unit="ns").start()
    for s in _INPUTS:
        getattr(dut, s).value = 0
    await _reset(dut)


async def _reset(dut):
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


async def _pulse(dut, name):
    """One cycle of input ``name`` high, from the falling edge we are at; returns (at a
    falling edge) once the storage has acted on it."""
    getattr(dut, name).value = 1
    await FallingEdge(dut.clk)
    getattr(dut, name).value = 0
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)  # the registered input reaches the memory a cycle late


async def _run_job(dut, job):
    """Configure the memory model, start ``job`` (the fields of ``sim.chip_rtl.Job``) and
    wait for ``done`` or ``max_cycles``; returns status and counters."""
    dut.cfg_interval.value = job["interval"]
    dut.cfg_jitter.value = job["jitter"]
    dut.cfg_jitter_max.value = job["jitter_max"]
    dut.cfg_seed.value = job["seed"]
    dut.prog_addr.value = job["prog_addr"]
    dut.prog_len.value = job["prog_len"]
    dut.pos_init.value = job["pos_init"]
    await FallingEdge(dut.clk)
    t0 = time.perf_counter()
    dut.start.value = 1
    await FallingEdge(dut.clk)
    dut.start.value = 0
    await FallingEdge(dut.clk)  # ChipSim registers its inputs: the chip sees start now
    timed_out = False
    if not int(dut.done.value):
        # a Timer, not ClockCycles: ClockCycles wakes Python every cycle
        await First(RisingEdge(dut.done), Timer(10 * job["max_cycles"], unit="ns"))
        timed_out = not int(dut.done.value)
    await ReadOnly()
    wall = time.perf_counter() - t0
    counters = {c.name: _counter(dut, c) for c in Counter}
    res = {"error": int(dut.error.value), "error_pc": int(dut.error_pc.value),
           "pos": int(dut.pos.value), "counters": counters,
           "range_error": int(dut.range_error.value), "timed_out": timed_out,
           "wall_s": wall}
    dut._log.info(f"job: error {res['error']} pc {res['error_pc']} cycles "
                  f"{counters['CYCLES']}{' TIMED OUT' if timed_out else ''}")
    await FallingEdge(dut.clk)
    return res


def _counter(dut, c):
    """Counter ``c`` from the flat ``counters`` port (48 bits each, counter 0 lowest)."""
    v = dut.counters.value.to_unsigned()
    return (v >> (48 * int(c))) & ((1 << 48) - 1)

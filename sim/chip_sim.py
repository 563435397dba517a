"""The chip with its modelled off-chip memory: the top that Verilator simulates.

:class:`ChipSim` joins :class:`hw.chip.Chip` and :class:`sim.offchip.OffchipMemory` (Verilog
storage by default, so a whole memory image is loaded in bulk by ``$readmemh`` and read
back by ``$writememh``, never word by word from Python) and exposes the host ports of both:
``start``, ``prog_addr``, ``prog_len``, ``pos_init``, status (``running``, ``done``,
``error``, ``error_pc``, ``pos``), ``counters`` and the memory model's configuration
(``cfg_interval``, ``cfg_jitter``, ``cfg_jitter_max``, ``cfg_seed``), ``dump`` and
``range_error``.
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from hw.chip import Chip
from hw.params import ChipParams
from sim.offchip import STORAGE_VERILOG, OffchipMemory

__all__ = ["ChipSim", "STORAGE_VERILOG"]


class ChipSim(wiring.Component):
    def __init__(self, params: ChipParams = ChipParams(), storage: str = "verilog", init=None):
        self.params = params
        self.chip = Chip(params)
        self.mem = OffchipMemory(params, storage=storage, init=init)
        chip_members = {k: v for k, v in self.chip.signature.members.items() if k != "bus"}
        mem_members = {k: self.mem.signature.members[k] for k in (
            "cfg_interval", "cfg_jitter", "cfg_jitter_max", "cfg_seed", "dump",
            "range_error")}
        super().__init__({**chip_members, **mem_members})

    def elaborate(self, platform):
        m = Module()
        m.submodules.chip = chip = self.chip
        m.submodules.mem = mem = self.mem
        wiring.connect(m, chip.bus, mem.bus)
        for name, member in self.signature.members.items():
            ours = getattr(self, name)
            if name in ("cfg_interval", "cfg_jitter", "cfg_jitter_max", "cfg_seed", "dump"):
                m.d.comb += getattr(mem, name).eq(ours)
            elif name == "range_error":
                m.d.comb += ours.eq(mem.range_error)
            elif member.flow == In:
                m.d.comb += getattr(chip, name).eq(ours)
            else:
                m.d.comb += ours.eq(getattr(chip, name))
        return m



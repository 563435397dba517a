"""The simulated devices of the runtime (``sw/runtime.py``): the chip as the ISA simulator
and as its Verilog under Verilator, each holding an off-chip memory image and the chip's
state across runs, as a board does.

Both have the runtime's device interface (``sw.runtime.Device``; ``sim/`` does not import
``sw/``, so they match it by shape): ``name``, ``write(bus_addr, raw)``, ``read(bus_addr,
n_bus) -> uint8``, ``run(prog_addr, prog_len, pos) -> RunResult``, ``close()``.

- :class:`IsaDevice`: ``sim.isa_sim.IsaSim`` with the vector unit. ``timing``: each run's
  cycles are predicted by ``sim.timing.predict`` (from the program's words).
- :class:`RtlDevice`: ``sim.chip_rtl.RtlSession`` (one live simulation of the chip with its
  vector unit); cycles are measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hw.isa import Counter, Err
from hw.params import ChipParams

__all__ = ["RunResult", "IsaDevice", "RtlDevice", "SIM_DEVICES", "open_sim_device"]


@dataclass
class RunResult:
    """One run: the chip's error and its pc, the counters, cycles (measured or predicted;
    None if neither) and the host's wall time."""

    error: Err
    error_pc: int
    counters: dict = field(default_factory=dict)
    cycles: int | None = None
    wall_s: float = 0.0
    timed_out: bool = False


class _Closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class IsaDevice(_Closing):
    """The ISA simulator on ``image`` (uint8 bytes; copied)."""

    name = "isa"

    def __init__(self, p: ChipParams, image, timing: bool = False):
        from sim.isa_sim import IsaSim

        self.p = p
        self.sim = IsaSim(p, image, vector=True)
        self.timing = timing

    def write(self, bus_addr: int, raw) -> None:
        self.sim.write_offchip(bus_addr, raw)

    def read(self, bus_addr: int, n_bus: int) -> np.ndarray:
        return self.sim.read_offchip(bus_addr, n_bus)

    def run(self, prog_addr: int, prog_len: int, pos: int) -> RunResult:
        t0 = time.monotonic()
        self.sim.boot(prog_addr, prog_len, pos)
        err = self.sim.run(max_ops=prog_len + 1)
        wall = time.monotonic() - t0
        cycles = None
        if self.timing and err == Err.NONE:
            from sim.timing import predict

            words = [int(w) for w in self.sim.program]
            cycles = predict(self.p, words, vector=True, pos_init=pos).cycles
        return RunResult(err, self.sim.error_pc, dict(self.sim.counters), cycles, wall)

    def close(self) -> None:
        pass


class RtlDevice(_Closing):
    """The chip's Verilog under Verilator (``RtlSession``), ``image`` bulk-loaded."""

    name = "rtl"

    def __init__(self, p: ChipParams, image, waves: bool | None = None,
                 max_cycles: int = 200_000_000):
        from sim.chip_rtl import RtlSession

        self.p = p
        self.max_cycles = max_cycles
        self.session = RtlSession(p, image, vector=True, waves=waves)
        self.session.__enter__()

    def write(self, bus_addr: int, raw) -> None:
        self.session.write(bus_addr, raw)

    def read(self, bus_addr: int, n_bus: int) -> np.ndarray:
        return self.session.read(bus_addr, n_bus)

    def run(self, prog_addr: int, prog_len: int, pos: int) -> RunResult:
        from sim.chip_rtl import ChipTimeout

        t0 = time.monotonic()
        try:
            r = self.session.run(prog_addr, prog_len, pos_init=pos, max_cycles=self.max_cycles)
        except ChipTimeout as exc:
            r = exc.result
        return RunResult(r.error, r.error_pc, dict(r.counters), r.counters.get(Counter.CYCLES),
                         time.monotonic() - t0, r.timed_out)

    def close(self) -> None:
        self.session.__exit__(None, None, None)


SIM_DEVICES = {"isa": IsaDevice, "rtl": RtlDevice}


def open_sim_device(name: str, model, **kw):
    """A simulated device (``isa`` or ``rtl``; ``ValueError`` naming them for another name)
    on a compiled model's image (``sw.compiler.CompiledModel``: ``p``, ``image_bytes()``)."""
    if name not in SIM_DEVICES:
        raise ValueError(f"unknown device {name!r}; the simulated ones are "
                         f"{', '.join(SIM_DEVICES)}")
    return SIM_DEVICES[name](model.p, model.image_bytes(), **kw)



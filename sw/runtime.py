"""The runtime: compiled programs (``sw/compiler.py``) on a device, and the models' host loops.

One device interface, :class:`Device`, three backends (:func:`open_device`):

- ``isa``: the ISA simulator (``sim/isa_sim.py``), the golden arithmetic op by op; fast.
  Cycles are the timing model's prediction (``sim/timing.py``) when asked for.
- ``rtl``: the chip's Verilog under Verilator (``sim.chip_rtl.RtlSession``): the off-chip
  memory is bulk-loaded once, the chip runs freely (no Python per cycle), the host writes
  inputs and reads results between runs; cycles are measured.
- ``board``: a board over its UART host link (the board issue); the seam is here.

A device holds the off-chip memory image and the chip's state (the KV cache, every buffer)
across runs, as a board does. :meth:`Device.run` starts one program and returns its
:class:`RunStats`; a chip error becomes a :class:`ChipError` naming the error, the micro-op
and its fields.

The host loops: :class:`SmolLM2Runner` (prefill in chunks, then greedy decode with the KV
cache on chip; the host only looks up token embeddings and picks the argmax of the logits)
and :class:`MiniLMRunner` (sentence embeddings: the chip computes the last hidden states, the
host mean-pools and L2-normalizes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hw.isa import Counter, Err, decode
from hw.params import ChipParams
from sw.compiler import CompiledModel, MiniLMCompiled, Program, SmolLM2Compiled

__all__ = ["DEVICES", "Device", "IsaDevice", "RtlDevice", "BoardDevice", "ChipError",
           "DeviceError", "RunStats", "open_device", "SmolLM2Runner", "MiniLMRunner"]

DEVICES = ("isa", "rtl", "board")


class DeviceError(RuntimeError):
    """A device that cannot be opened or used (no board, a simulator that died...)."""


class ChipError(RuntimeError):
    """The chip raised its error flag: ``err`` at micro-op ``pc`` of program ``prog``."""

    def __init__(self, prog: Program, err: Err, pc: int):
        self.prog, self.err, self.pc = prog, err, pc
        what = ""
        if 0 <= pc < prog.length:
            op, fields = decode(prog.words[pc])
            what = f": {getattr(op, 'name', op)} " + ", ".join(
                f"{k}={getattr(v, 'name', v)}" for k, v in fields.items())
        super().__init__(f"the chip stopped with {err.name} at micro-op {pc} of "
                         f"{prog.name}{what}")


@dataclass
class RunStats:
    """One program run: the chip's cycles (measured on ``rtl``, predicted on ``isa`` when
    asked for; None otherwise), its counters, and the host's wall time."""

    cycles: int | None
    counters: dict = field(default_factory=dict)
    wall_s: float = 0.0
    predicted: int | None = None


class Device:
    """A chip with its off-chip memory (the image of a :class:`CompiledModel`)."""

    name = "?"

    def __init__(self, model: CompiledModel):
        self.model = model
        self.p: ChipParams = model.p
        #: bus words of the image the device holds: programs compiled after the device was
        #: opened (the image only grows) are written to it before they run
        self.synced = model.img.next

    def sync(self) -> None:
        """Write what the compiler placed in the image since the last sync."""
        img, B = self.model.img, self.p.offchip_bytes_per_cycle
        if img.next > self.synced:
            self.write(self.synced, img.mem[self.synced * B: img.next * B])
            self.synced = img.next

    def write(self, bus_addr: int, raw) -> None:
        raise NotImplementedError

    def read(self, bus_addr: int, n_bus: int) -> np.ndarray:
        raise NotImplementedError

    def run(self, prog: Program, pos: int) -> RunStats:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one compiled step: input rows in, output rows out ------------------------------------
    def step(self, prog: Program, rows, pos: int) -> tuple[np.ndarray, RunStats]:
        """Write ``rows`` (wide [T, d]) to the program's input slot, run it at ``pos``, and
        return its output rows and stats."""
        m = self.model
        self.sync()
        self.write(prog.in_off, m.input_bytes(prog, rows))
        stats = self.run(prog, pos)
        n = m.output_bus_words(prog)
        raw = self.read(prog.out_off, n)
        B = self.p.offchip_bytes_per_cycle
        mem = np.zeros((prog.out_off + n) * B, np.uint8)
        mem[prog.out_off * B:] = raw
        return m.result(prog, mem), stats


class IsaDevice(Device):
    """The ISA simulator. ``timing``: predict each run's cycles with ``sim/timing.py``."""

    name = "isa"

    def __init__(self, model: CompiledModel, timing: bool = False):
        from sim.isa_sim import IsaSim

        super().__init__(model)
        # the simulator works on the image in place: the compiled model keeps no other copy
        self.sim = IsaSim(self.p, model.img.mem, vector=True)
        self.timing = timing

    def write(self, bus_addr: int, raw) -> None:
        self.sim.write_offchip(bus_addr, raw)

    def read(self, bus_addr: int, n_bus: int) -> np.ndarray:
        return self.sim.read_offchip(bus_addr, n_bus)

    def run(self, prog: Program, pos: int) -> RunStats:
        t0 = time.monotonic()
        self.sim.boot(prog.addr, prog.length, pos)
        err = self.sim.run(max_ops=prog.length + 1)
        wall = time.monotonic() - t0
        if err != Err.NONE:
            raise ChipError(prog, err, self.sim.error_pc)
        predicted = None
        if self.timing:
            from sim.timing import predict

            predicted = predict(self.p, prog.words, vector=True, pos_init=pos).cycles
        return RunStats(predicted, dict(self.sim.counters), wall, predicted)


class RtlDevice(Device):
    """The chip's Verilog under Verilator, one simulation kept alive across runs."""

    name = "rtl"

    def __init__(self, model: CompiledModel, waves: bool | None = None):
        super().__init__(model)
        try:
            from sim.chip_rtl import RtlSession
        except ImportError as exc:  # pragma: no cover - until the session lands
            raise DeviceError(f"the rtl device needs sim.chip_rtl.RtlSession: {exc}") from exc
        img = model.img
        used = img.next * self.p.offchip_bytes_per_cycle
        self.session = RtlSession(self.p, img.mem[:used], vector=True, waves=waves)
        self.session.__enter__()

    def write(self, bus_addr: int, raw) -> None:
        self.session.write(bus_addr, raw)

    def read(self, bus_addr: int, n_bus: int) -> np.ndarray:
        return self.session.read(bus_addr, n_bus)

    def run(self, prog: Program, pos: int) -> RunStats:
        t0 = time.monotonic()
        r = self.session.run(prog.addr, prog.length, pos_init=pos)
        wall = time.monotonic() - t0
        if r.timed_out:
            raise DeviceError(f"{prog.name}: the chip did not finish (Verilator timeout)")
        if r.error != Err.NONE:
            raise ChipError(prog, r.error, r.error_pc)
        return RunStats(r.counters.get(Counter.CYCLES), dict(r.counters), wall)

    def close(self) -> None:
        self.session.__exit__(None, None, None)


class BoardDevice(Device):
    """A dev board over its UART host link: not built yet (the board issue)."""

    name = "board"

    def __init__(self, model: CompiledModel, port: str | None = None):
        raise DeviceError("the board backend is not built yet: it needs the board tops and "
                          "their UART host link (the FPGA-board issue); use --device isa "
                          "or rtl")


def open_device(name: str, model: CompiledModel, **kw) -> Device:
    """The backend ``name`` (one of :data:`DEVICES`) on ``model``'s image."""
    if name == "isa":
        return IsaDevice(model, **kw)
    if name == "rtl":
        return RtlDevice(model, **kw)
    if name == "board":
        return BoardDevice(model, **kw)
    raise DeviceError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")


# -- host loops -------------------------------------------------------------------------------


class SmolLM2Runner:
    """Prefill and greedy decode of a :class:`SmolLM2Compiled` on a device."""

    def __init__(self, compiled: SmolLM2Compiled, device: Device):
        self.c, self.dev = compiled, device
        self.pos = 0          # tokens in the KV cache
        self.stats: list[tuple[str, int, RunStats]] = []  # (phase, tokens, stats)

    def _check_room(self, n: int) -> None:
        if self.pos + n > self.c.cap:
            raise ValueError(f"{self.pos} tokens in the KV cache + {n} more exceed its "
                             f"{self.c.cap} positions")

    def prefill(self, ids, progress=None) -> np.ndarray:
        """Run the prompt in chunks; returns the last token's logits (wide [vocab])."""
        ids = list(ids)
        if not ids:
            raise ValueError("empty prompt: nothing to run")
        self._check_room(len(ids))
        i = 0
        chunks = self.c.chunks(len(ids))
        for n, T in enumerate(chunks):
            logits, st = self.dev.step(self.c.program(T), self.c.embed(ids[i:i + T]), self.pos)
            self.stats.append(("prefill", T, st))
            self.pos += T
            i += T
            if progress is not None:
                progress(n + 1, len(chunks))
        return logits[0]

    def decode(self, tok: int) -> np.ndarray:
        self._check_room(1)
        logits, st = self.dev.step(self.c.program(1), self.c.embed([tok]), self.pos)
        self.stats.append(("decode", 1, st))
        self.pos += 1
        return logits[0]

    def generate(self, ids, max_new_tokens: int, stop_ids=(), progress=None):
        """Greedy decoding (``sim.golden_models.SmolLM2Golden.generate``'s loop): yields token
        ids as they are produced; a stop id is yielded, then generation ends."""
        logits = self.prefill(ids, progress)
        for n in range(max_new_tokens):
            tok = int(np.argmax(logits))
            yield tok
            if tok in stop_ids or n + 1 == max_new_tokens:
                return
            logits = self.decode(tok)


class MiniLMRunner:
    """Sentence embeddings of a :class:`MiniLMCompiled` on a device."""

    def __init__(self, compiled: MiniLMCompiled, device: Device):
        self.c, self.dev = compiled, device
        self.stats: list[tuple[str, int, RunStats]] = []

    def hidden(self, ids) -> np.ndarray:
        """The last hidden states (wide [T, d]) of token ids ``ids``."""
        ids = list(ids)
        if not ids:
            raise ValueError("empty input: nothing to run")
        prog = self.c.program(len(ids))
        h, st = self.dev.step(prog, self.c.embed(ids), 0)
        self.stats.append(("encode", len(ids), st))
        return h

    def embed(self, ids) -> np.ndarray:
        """Mean-pooled, L2-normalized sentence embedding (float64 [d])."""
        from sw.quantize import from_wide

        e = from_wide(self.hidden(ids)).mean(axis=0)
        return e / max(np.linalg.norm(e), 1e-12)

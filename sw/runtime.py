"""The runtime: compiled programs (``sw/compiler.py``) on a device, and the models' host loops.

A **device** is a chip with its off-chip memory; it keeps the chip's state (the KV cache,
every buffer) across runs, as a board does. Its interface (:class:`Device`, matched by
shape):

- ``name``; ``write(bus_addr, raw)`` and ``read(bus_addr, n_bus) -> uint8`` of off-chip
  memory regions (bus-word addresses);
- ``run(prog_addr, prog_len, pos)`` starts the program at ``prog_addr`` with the context
  register at ``pos`` and returns when the chip is done, with ``error``, ``error_pc``,
  ``counters``, ``cycles`` (or None), ``wall_s``, ``timed_out``;
- ``close()``.

Backends: the ISA simulator and the chip's Verilog under Verilator (``sim/devices.py``:
``isa``, ``rtl``), and a dev board over its UART host link (:class:`BoardDevice`,
``sw/board.py``: the off-chip memory is the host's, served over the link). The caller opens a
device on the compiled model's image (:meth:`~sw.compiler.CompiledModel.image_bytes`) and
hands it to a runner.

The host loops: :class:`SmolLM2Runner` (prefill in chunks, then greedy decode with the KV
cache on chip) and :class:`MiniLMRunner` (sentence embeddings: the chip computes the last
hidden states, the host mean-pools and L2-normalizes). A step longer than the chip's
micro-op memory is a sequence of programs (``Program.parts``, e.g. MiniLM on the FPGA
boards' chip): :meth:`Runner.step` runs them one after another on the device, which keeps
its buffers and memory between them. The host's only model arithmetic is
the embedding-table lookup, which the caller passes as ``lookup(ids, table)`` (the golden
model's, ``sim.golden.embed``, in ``chip`` and the tests); a chip error becomes a
:class:`ChipError` naming the error, the micro-op and its fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from hw.isa import Err, decode
from sw.compiler import CompiledModel, Program, SmolLM2Compiled

__all__ = ["Device", "ChipError", "DeviceError", "RunStats", "Runner",  # and BoardDevice
           "SmolLM2Runner", "MiniLMRunner"]


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


class Device(Protocol):
    """What a runner needs of a device (module docstring)."""

    name: str

    def write(self, bus_addr: int, raw) -> None: ...

    def read(self, bus_addr: int, n_bus: int) -> np.ndarray: ...

    def run(self, prog_addr: int, prog_len: int, pos: int): ...

    def close(self) -> None: ...


@dataclass
class RunStats:
    """One program run: the chip's cycles (measured on ``rtl``, predicted on ``isa`` when
    asked for; None otherwise), its counters, and the host's wall time."""

    cycles: int | None
    counters: dict = field(default_factory=dict)
    wall_s: float = 0.0
    #: a step of several programs (``Program.parts``): each one's cycles (``cycles`` is
    #: their sum)
    part_cycles: list = field(default_factory=list)


class Runner:
    """A compiled model on a device that holds its image up to ``synced`` bus words (default:
    the whole image as it is now, i.e. the device was opened on :meth:`image_bytes`)."""

    def __init__(self, compiled: CompiledModel, device, lookup, synced: int | None = None):
        self.c, self.dev, self.lookup = compiled, device, lookup
        self.synced = compiled.img.next if synced is None else synced
        self.stats: list[tuple[str, int, RunStats]] = []  # (phase, tokens, stats)

    def sync(self) -> None:
        """Write what the compiler placed in the image since the device got it (programs
        compiled later: the image only grows)."""
        img, B = self.c.img, self.c.p.offchip_bytes_per_cycle
        if img.next > self.synced:
            self.dev.write(self.synced, img.mem[self.synced * B: img.next * B])
            self.synced = img.next

    def step(self, prog: Program, rows, pos: int) -> tuple[np.ndarray, RunStats]:
        """Write ``rows`` (wide) to the program's input slot, run it at ``pos`` (a step of
        several programs, :attr:`~sw.compiler.Program.parts`: each in turn), return its
        output rows and stats; :class:`ChipError` if the chip raised its error flag."""
        c = self.c
        self.sync()
        self.dev.write(prog.in_off, c.input_bytes(prog, rows))
        cycles, counters, wall, each = 0, {}, 0.0, []
        for part in prog.runs():  # a step longer than the micro-op memory: its programs
            r = self.dev.run(part.addr, part.length, pos)
            if getattr(r, "timed_out", False):
                raise DeviceError(f"{part.name}: the chip did not finish within its cycle "
                                  "budget")
            if r.error != Err.NONE:
                raise ChipError(part, Err(r.error), r.error_pc)
            cycles = None if cycles is None or r.cycles is None else cycles + r.cycles
            each.append(r.cycles)
            for k, v in r.counters.items():
                counters[k] = counters.get(k, 0) + v
            wall += r.wall_s
        raw = self.dev.read(prog.out_off, c.output_bus_words(prog))
        return c.output(prog, raw), RunStats(cycles, counters, wall,
                                             each if prog.parts else [])


class SmolLM2Runner(Runner):
    """Prefill and greedy decode of a :class:`SmolLM2Compiled` on a device."""

    def __init__(self, compiled: SmolLM2Compiled, device, lookup, synced: int | None = None):
        super().__init__(compiled, device, lookup, synced)
        self.pos = 0          # tokens in the KV cache

    def _check_room(self, n: int) -> None:
        if self.pos + n > self.c.cap:
            raise ValueError(f"{self.pos} tokens in the KV cache + {n} more exceed its "
                             f"{self.c.cap} positions")

    def _run(self, phase: str, ids) -> np.ndarray:
        T = len(ids)
        logits, st = self.step(self.c.program(T), self.c.inputs(self.lookup, ids), self.pos)
        self.stats.append((phase, T, st))
        self.pos += T
        return logits[0]

    def prefill(self, ids, progress=None) -> np.ndarray:
        """Run the prompt in chunks; returns the last token's logits (wide [vocab])."""
        ids = list(ids)
        if not ids:
            raise ValueError("empty prompt: nothing to run")
        self._check_room(len(ids))
        chunks = self.c.chunks(len(ids))
        i = 0
        for n, T in enumerate(chunks):
            logits = self._run("prefill", ids[i:i + T])
            i += T
            if progress is not None:
                progress(n + 1, len(chunks))
        return logits

    def decode(self, tok: int) -> np.ndarray:
        self._check_room(1)
        return self._run("decode", [tok])

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


class MiniLMRunner(Runner):
    """Sentence embeddings of a :class:`MiniLMCompiled` on a device."""

    def hidden(self, ids) -> np.ndarray:
        """The last hidden states (wide [T, d]) of token ids ``ids``."""
        ids = list(ids)
        if not ids:
            raise ValueError("empty input: nothing to run")
        prog = self.c.program(len(ids))
        h, st = self.step(prog, self.c.inputs(self.lookup, ids), 0)
        self.stats.append(("encode", len(ids), st))
        return h

    def embed(self, ids) -> np.ndarray:
        """Mean-pooled, L2-normalized sentence embedding (float64 [d])."""
        from sw.quantize import from_wide

        e = from_wide(self.hidden(ids)).mean(axis=0)
        return e / max(np.linalg.norm(e), 1e-12)


def __getattr__(name):
    # the board backend lives in sw/board.py (it takes DeviceError from here): imported on use
    if name == "BoardDevice":
        from sw.board import BoardDevice

        return BoardDevice
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

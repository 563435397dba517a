"""The stream harness of the vector unit's Verilator benches (``tests/rtl/tb_vec_units.py``).

:class:`StreamBench` drives a component's ``amaranth.lib.stream`` ports on its Verilog: every
input port (``<port>__valid`` / ``__payload`` / ``__ready``) gets a queue of payloads, sent
in order with random idle cycles before each (valid gaps, random bits on the payload while
idle); every output port is drained with random back-pressure (single cycles and bursts
long enough to fill the component's FIFOs) and checked for the stream rule (a valid payload
stays valid and unchanged until taken). Once every expected output has arrived, nothing more
may come out and ``busy`` must drop.

Python runs once per clock cycle in ONE coroutine for all ports (drive after the falling
edge, sample the handshakes in the read-only phase before the rising one), and touches only
the handshake signals and the payloads of beats taken: payloads are packed before the run
and unpacked after it with :func:`pack_beats` / :func:`unpack_beats` (numpy, per field, not
per cycle). So a bench costs a few tens of microseconds of Python per cycle.
"""

import numpy as np
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from hw.isa import leaf_fields

__all__ = ["StreamBench", "pack_beats", "unpack_beats"]


def pack_beats(layout, fields: dict, n: int | None = None) -> list[int]:
    """Payload words of ``n`` beats of ``layout`` from ``{leaf path: values}``: a scalar
    (the same for every beat), an array ``[n]`` for a scalar leaf, ``[n, count]`` for an
    array leaf. Leaves not given are 0. Values are masked to their width (two's
    complement)."""
    leaves = {path: (off, width, count) for path, off, width, _, count in
              leaf_fields(data.Layout.cast(layout))}
    unknown = set(fields) - set(leaves)
    if unknown:
        raise KeyError(f"pack_beats: no leaf {sorted(unknown)} in {sorted(leaves)}")
    if n is None:
        n = max(len(np.atleast_1d(v)) for v in fields.values() if np.ndim(v))
    words = np.zeros(n, dtype=object)
    for path, v in fields.items():
        off, width, count = leaves[path]
        v = np.broadcast_to(np.asarray(v, np.int64), (n, count) if count > 1 else (n,))
        v = v.reshape(n, count)
        if width in (8, 16, 32, 64):  # lanes as little-endian bytes: one int per beat
            u = (v & ((1 << width) - 1) if width < 64 else v).astype(f"<u{width // 8}")
            packed = np.array([int.from_bytes(r.tobytes(), "little") for r in u], dtype=object)
        else:
            packed = np.zeros(n, dtype=object)
            m = (1 << width) - 1
            for i in range(count):
                packed = packed | ((v[:, i] & m).astype(object) << (i * width))
        words = words | (packed << off)
    return [int(w) for w in words]


def unpack_beats(layout, words) -> dict:
    """``{leaf path: int64 array}`` (``[n]`` or ``[n, count]``) from payload words."""
    w = np.array([int(x) for x in words], dtype=object)
    out = {}
    for path, off, width, sgn, count in leaf_fields(data.Layout.cast(layout)):
        m = (1 << width) - 1
        cols = []
        for i in range(count):
            c = ((w >> (off + i * width)) & m).astype(np.int64) if width < 64 else \
                np.array([(int(x) >> (off + i * width)) & m for x in w], np.uint64).view(np.int64)
            if sgn and width < 64:
                c = np.where(c >> (width - 1) & 1, c - (1 << width), c)
            cols.append(c)
        a = np.stack(cols, axis=-1) if cols else np.zeros((len(w), 0), np.int64)
        out[path] = a if count > 1 else a[:, 0]
    return out


class StreamBench:
    """Valid/ready drivers and monitors for all stream ports of one component.

    ``inputs``: port names; ``outputs``: port names. ``stall``: probability of an idle cycle
    before each input beat (per port); ``backpressure``: probability per cycle that an
    output's ready drops (one drop in eight starts a burst of up to ``burst`` more cycles).
    ``seed`` drives the timing only. ``replay`` is appended to every failure message."""

    def __init__(self, dut, inputs, outputs, *, seed: int, stall=0.0, backpressure=0.0,
                 burst=0, replay: str = ""):
        self.dut = dut
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.rng = np.random.default_rng(seed)
        self.stall, self.backpressure, self.burst = stall, backpressure, burst
        self.replay = replay
        self.widths = {p: len(getattr(dut, f"{p}__payload")) for p in self.inputs}
        self.cycle = 0

    async def reset(self):
        dut = self.dut
        Clock(dut.clk, 10, unit="ns").start()
        dut.rst.value = 1
        for p in self.inputs:
            getattr(dut, f"{p}__valid").value = 0
            getattr(dut, f"{p}__payload").value = 0
        for p in self.outputs:
            getattr(dut, f"{p}__ready").value = 0
        for _ in range(2):
            await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
        dut.rst.value = 0

    def _randoms(self, n=4096):
        return iter(self.rng.random(n).tolist())

    async def run(self, feeds: dict, counts: dict, what: str, *, max_cycles: int | None = None,
                  busy: bool = True) -> dict:
        """Send ``feeds`` (port -> payload words), collect ``counts`` (port -> beats) output
        payloads; returns ``{port: words}`` and records ``self.when`` ({port: cycle of each
        transfer}) and ``self.cycles`` (the run's length). ``busy``: the component has a
        ``busy`` output that must be low once all is out."""
        dut = self.dut
        names = list(self.inputs)
        queues = {p: list(feeds.get(p, ())) for p in names}
        pos = dict.fromkeys(names, 0)
        pending = dict.fromkeys(names, False)
        h_in = {p: (getattr(dut, f"{p}__valid"), getattr(dut, f"{p}__payload"),
                    getattr(dut, f"{p}__ready")) for p in names}
        h_out = {p: (getattr(dut, f"{p}__valid"), getattr(dut, f"{p}__payload"),
                     getattr(dut, f"{p}__ready")) for p in self.outputs}
        got = {p: [] for p in self.outputs}
        when = {p: [] for p in (*names, *self.outputs)}
        held = dict.fromkeys(self.outputs)  # payload offered and not taken last cycle
        bp_left = dict.fromkeys(self.outputs, 0)
        ready_now = dict.fromkeys(self.outputs, 0)
        valid_now = dict.fromkeys(names, 0)
        noise = {p: [int.from_bytes(self.rng.bytes((self.widths[p] + 7) // 8), "little")
                     % (1 << self.widths[p]) for _ in range(7)] for p in names}
        stall, bp, burst = self.stall, self.backpressure, self.burst
        rnd = self._randoms()
        total = sum(len(q) for q in queues.values()) + sum(counts.values())
        if max_cycles is None:
            slow = (1 + bp * (1 + burst / 16)) / (1 - stall)  # mean cycles per beat, bound
            max_cycles = 2000 + int(4 * slow * total)
        start = self.cycle
        fe, ro = FallingEdge(dut.clk), ReadOnly()

        def rand():
            nonlocal rnd
            try:
                return next(rnd)
            except StopIteration:
                rnd = self._randoms()
                return next(rnd)

        def missing():
            return {p: counts[p] - len(got[p]) for p in self.outputs if len(got[p]) < counts[p]}

        while missing():
            await fe
            self.cycle += 1
            if self.cycle - start > max_cycles:
                raise AssertionError(
                    f"{what}: timeout after {max_cycles} cycles; outputs missing {missing()}, "
                    f"inputs not taken {dict((p, len(queues[p]) - pos[p]) for p in names)} "
                    f"{self.replay}")
            for p in names:
                valid, payload, _ = h_in[p]
                if not pending[p]:
                    if pos[p] < len(queues[p]) and not (stall and rand() < stall):
                        payload.value = queues[p][pos[p]]
                        if not valid_now[p]:
                            valid.value = 1
                            valid_now[p] = 1
                        pending[p] = True
                    elif valid_now[p]:
                        valid.value = 0
                        valid_now[p] = 0
                        payload.value = noise[p][self.cycle % len(noise[p])]
            for p in self.outputs:
                if bp_left[p]:
                    bp_left[p] -= 1
                    r = 0
                elif bp and rand() < bp:  # one drop in 8 starts a burst
                    bp_left[p] = int(rand() * (burst + 1)) if rand() < 0.125 else 0
                    r = 0
                else:
                    r = 1
                if r != ready_now[p]:
                    h_out[p][2].value = r
                    ready_now[p] = r
            await ro
            for p in names:
                if pending[p] and h_in[p][2].value:
                    pending[p] = False
                    pos[p] += 1
                    when[p].append(self.cycle)
            for p in self.outputs:
                valid, payload, _ = h_out[p]
                if not valid.value:
                    if held[p] is not None:
                        raise AssertionError(f"{what}: cycle {self.cycle}: {p} dropped valid "
                                             f"before the beat was taken {self.replay}")
                    continue
                r = ready_now[p]
                if r or held[p] is not None:
                    bits = payload.value.to_unsigned()
                    if held[p] is not None and bits != held[p]:
                        raise AssertionError(f"{what}: cycle {self.cycle}: {p} changed its "
                                             f"payload before it was taken {self.replay}")
                    held[p] = None if r else bits
                    if r:
                        if len(got[p]) >= counts[p]:
                            raise AssertionError(f"{what}: cycle {self.cycle}: {p} delivered "
                                                 f"more than {counts[p]} beats {self.replay}")
                        got[p].append(bits)
                        when[p].append(self.cycle)
                else:
                    held[p] = payload.value.to_unsigned()
        # the tail: inputs all taken, nothing more out, busy low
        await fe
        for p in names:
            h_in[p][0].value = 0
        for p in self.outputs:
            h_out[p][2].value = 1
        for _ in range(64):
            await ro
            for p in self.outputs:
                if h_out[p][0].value:
                    raise AssertionError(f"{what}: {p} offers a beat after all {counts[p]} "
                                         f"expected ones {self.replay}")
            await fe
        left = {p: len(queues[p]) - pos[p] for p in names if pos[p] < len(queues[p])}
        if left:
            raise AssertionError(f"{what}: inputs not taken after the last output: {left} "
                                 f"{self.replay}")
        if busy:
            await ro
            if dut.busy.value:
                raise AssertionError(f"{what}: busy still high after the run {self.replay}")
            await fe
        for p in self.outputs:
            h_out[p][2].value = 0
            ready_now[p] = 0
        self.when = when
        self.cycles = self.cycle - start
        return got

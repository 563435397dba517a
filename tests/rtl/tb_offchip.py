"""cocotb testbench for the modelled off-chip memory with the Verilog storage
(``sim/offchip.py``, ``OffchipMemory(storage="verilog")``) on its Verilator build.

Run from ``tests/test_offchip.py`` through ``sim.rtl.run_cocotb``, which passes
``+offchip_init=<image>`` and ``+offchip_dump=<file>``. The image was loaded in bulk by
``$readmemh`` at time 0; this bench reads every word back through the bus (random order,
random request gaps, random back-pressure, latency jitter) and compares it with the image file
(read here with ``sim.offchip.read_memh``), writes the words listed in ``OFFCHIP_WRITES``, reads
them back, checks ``cfg_interval`` spacing, pulses ``dump`` (the pytest side compares the dump
with the image plus the writes), and last reads one word beyond the memory to see 0 and
``range_error`` latch.

One coroutine does everything, cycle by cycle: inputs driven after the falling edge,
handshakes sampled in the read-only phase before the next rising edge.

Parameters (environment): ``OFFCHIP_SEED``, ``OFFCHIP_INIT`` (image path), ``OFFCHIP_WRITES``
(lines ``<addr> <hex data>``), ``OFFCHIP_LATENCY``, ``OFFCHIP_BUS_BYTES``, ``OFFCHIP_WORDS``.
"""

import os
import random
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from sim.offchip import read_memh


class OffchipBench:
    """Requester, writer and response consumer of the bus, with a stream-rule check."""

    def __init__(self, dut, seed: int, latency: int):
        self.dut = dut
        self.rng = random.Random(seed)
        self.latency = latency
        self.cycle = 0

    async def start(self):
        dut = self.dut
        dut.rst.value = 1
        for name in (
            "rd_addr__valid",
            "rd_addr__payload",
            "wr__valid",
            "wr__payload",
            "rd_data__ready",
            "cfg_interval",
            "cfg_jitter",
            "cfg_jitter_max",
            "cfg_seed",
            "dump",
        ):
            getattr(dut, name).value = 0
        Clock(dut.clk, 10, unit="ns").start()
        for _ in range(2):
            await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
        dut.rst.value = 0

    def config(self, interval=0, jitter=0, jitter_max=0, seed=1):
        d = self.dut
        d.cfg_interval.value, d.cfg_jitter.value = interval, jitter
        d.cfg_jitter_max.value, d.cfg_seed.value = jitter_max, seed

    async def traffic(self, reads=(), writes=(), gap=0.0, backpressure=0.0, limit=100000):
        """Issue ``reads`` (addresses) and ``writes`` ((addr, data)) concurrently; return the
        response words in order, with the request and response cycles. Called right after a
        falling edge; returns right after one."""
        dut = self.dut
        reads, writes = list(reads), list(writes)
        ri = wi = 0
        r_idle = w_idle = 0
        held = None
        got, acc_cycles, rsp_cycles = [], [], []
        for _ in range(limit):
            if len(got) == len(reads) and wi == len(writes):
                return got, acc_cycles, rsp_cycles
            r_on = ri < len(reads) and r_idle == 0
            w_on = wi < len(writes) and w_idle == 0
            dut.rd_addr__valid.value = int(r_on)
            dut.rd_addr__payload.value = reads[ri] if r_on else self.rng.getrandbits(32)
            dut.wr__valid.value = int(w_on)
            if w_on:
                addr, data = writes[wi]
                dut.wr__payload.value = addr | data << 32
            ready = self.rng.random() >= backpressure
            dut.rd_data__ready.value = int(ready)
            await ReadOnly()
            valid = bool(dut.rd_data__valid.value)
            if held is not None:
                assert valid, f"cycle {self.cycle}: rd_data.valid dropped before taken"
                assert int(dut.rd_data__payload.value) == held, (
                    f"cycle {self.cycle}: rd_data.payload changed while stalled"
                )
            if valid:
                word = int(dut.rd_data__payload.value)
                if ready:
                    got.append(word)
                    rsp_cycles.append(self.cycle)
                    held = None
                else:
                    held = word
            if r_on and dut.rd_addr__ready.value:
                acc_cycles.append(self.cycle)
                ri += 1
                r_idle = self.rng.randint(1, 3) if self.rng.random() < gap else 0
            elif r_idle:
                r_idle -= 1
            if w_on and dut.wr__ready.value:
                wi += 1
                w_idle = self.rng.randint(1, 3) if self.rng.random() < gap else 0
            elif w_idle:
                w_idle -= 1
            await RisingEdge(dut.clk)
            await FallingEdge(dut.clk)
            self.cycle += 1
        raise AssertionError(
            f"traffic not done in {limit} cycles: {len(got)}/{len(reads)} "
            f"responses, {wi}/{len(writes)} writes"
        )


@cocotb.test()
async def bulk_image_read_write_dump(dut):
    seed = int(os.environ.get("OFFCHIP_SEED", "1"))
    latency = int(os.environ["OFFCHIP_LATENCY"])
    bus_bytes = int(os.environ["OFFCHIP_BUS_BYTES"])
    words = int(os.environ["OFFCHIP_WORDS"])
    raw = read_memh(os.environ["OFFCHIP_INIT"], bus_bytes)
    image = [
        int.from_bytes(raw[i * bus_bytes : (i + 1) * bus_bytes].tobytes(), "little")
        for i in range(len(raw) // bus_bytes)
    ]
    image += [0] * (words - len(image))  # words the file does not give are 0
    writes = []
    for line in Path(os.environ["OFFCHIP_WRITES"]).read_text().splitlines():
        if line.strip():
            a, d = line.split()
            writes.append((int(a), int(d, 16)))

    tb = OffchipBench(dut, seed, latency)
    await tb.start()
    t0 = time.perf_counter()

    # 1. every word of the image, random order, with gaps, back-pressure and jitter
    tb.config(jitter=40, jitter_max=12, seed=seed | 1)
    order = list(range(words))
    tb.rng.shuffle(order)
    got, acc, rsp = await tb.traffic(reads=order, gap=0.2, backpressure=0.3)
    bad = [a for a, g in zip(order, got, strict=True) if g != image[a]]
    assert not bad, (
        f"{len(bad)} words differ from the image, first at {bad[0]:#x}: "
        f"got {got[order.index(bad[0])]:#x}, image {image[bad[0]]:#x}"
    )
    lat = [r - a for a, r in zip(acc, rsp, strict=True)]
    assert min(lat) >= latency, f"a response after {min(lat)} cycles < latency {latency}"

    # 2. writes, then read them back at full rate: exactly `latency` cycles each
    tb.config()
    await tb.traffic(writes=writes, gap=0.2)
    expect = list(image)
    for a, d in writes:
        expect[a] = d
    addrs = [a for a, _ in writes]
    got, acc, rsp = await tb.traffic(reads=addrs)
    assert got == [expect[a] for a in addrs], "written words not read back"
    assert acc == list(range(acc[0], acc[0] + len(addrs))), "not one request per cycle"
    assert all(r - a == latency for a, r in zip(acc, rsp, strict=True))

    # 3. bandwidth limit: one request every 3 cycles
    tb.config(interval=3)
    got, acc, _ = await tb.traffic(reads=range(30))
    assert got == expect[:30]
    assert [b - a for a, b in zip(acc, acc[1:], strict=False)] == [3] * 29

    # 4. dump the memory (the pytest side compares the file)
    tb.config()
    assert not dut.range_error.value
    dut.dump.value = 1
    await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.dump.value = 0

    # 5. a read beyond the memory: 0 and range_error
    got, _, _ = await tb.traffic(reads=[words])
    assert got == [0]
    await RisingEdge(dut.clk)
    assert dut.range_error.value == 1

    dt = time.perf_counter() - t0
    dut._log.info(
        f"OFFCHIP_SEED={seed}: {words} image words read, {len(writes)} written, "
        f"{tb.cycle} cycles in {dt:.2f} s ({tb.cycle / dt / 1e3:.1f} k cycles/s with "
        f"the bench in Python every cycle)"
    )

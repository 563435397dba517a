# amaranth: UnusedElaboratable=no
"""The modelled off-chip memory (``sim/offchip.py``).

``amaranth.sim`` tests of :class:`OffchipMemory` with the Amaranth storage: exact latency and
one word per cycle at full rate, the ``cfg_interval`` bandwidth limit, latency jitter (timing
changes, data and order never), random valid gaps and back-pressure with the stream rule
checked, read-after-write, out-of-range accesses. Then one cocotb + Verilator run of the Verilog
storage (``tests/rtl/tb_offchip.py``): a memory image loaded by ``+offchip_init``, read back
through the bus, partly overwritten, dumped by ``+offchip_dump`` and compared here.
Random tests print their seed; replay with ``OFFCHIP_SEED=<seed>``.
"""

import os
import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator

from hw.bus import BusSignature
from hw.params import ChipParams
from sim.offchip import (
    JITTER_MAX,
    STORAGE_VERILOG,
    OffchipMemory,
    jitter_extra,
    offchip_words,
    read_memh,
    write_memh,
)
from sim.rtl import BUILD, run_cocotb

SEED = int(os.environ.get("OFFCHIP_SEED", np.random.SeedSequence().entropy % 2**32))
SMALL = ChipParams(offchip_kib=4)  # 512 words of 64 bits, latency 16


@pytest.fixture
def rng():
    print(f"OFFCHIP_SEED={SEED}")
    return random.Random(SEED)


class BusRun:
    """One run of an OffchipMemory under a single cycle-by-cycle testbench: a read requester
    (``reads``: addresses, random valid gaps), a writer (``writes``: (addr, data), its own
    gaps), and a response consumer with random back-pressure that checks the stream rule.
    Inputs are set, then the handshakes sampled, then the clock ticks: an event "in cycle c"
    is a handshake sampled before the c-th rising edge."""

    def __init__(
        self,
        params,
        *,
        init=None,
        reads=(),
        writes=(),
        cfg=None,
        gap=0.0,
        backpressure=0.0,
        reads_after_writes=False,
        stall=None,
        seed=0,
        max_cycles=20000,
    ):
        self.dut = OffchipMemory(params, init=init)
        self.reads, self.writes = list(reads), list(writes)
        self.cfg = {
            "cfg_interval": 0,
            "cfg_jitter": 0,
            "cfg_jitter_max": 0,
            "cfg_seed": 1,
            **(cfg or {}),
        }
        self.gap, self.bp, self.after = gap, backpressure, reads_after_writes
        self.stall = stall or (lambda cycle: False)
        self.rng = random.Random(seed)
        self.max_cycles = max_cycles
        self.rd_accepts, self.wr_accepts, self.responses = [], [], []  # cycles / (cycle, data)
        self.range_error = None
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)
        sim.add_testbench(self._bench)
        sim.run()

    def _bench_gap(self):
        return self.rng.randint(1, 3) if self.rng.random() < self.gap else 0

    async def _bench(self, ctx):
        dut = self.dut
        for name, value in self.cfg.items():
            ctx.set(getattr(dut, name), value)
        ri = wi = 0
        r_idle, w_idle = self._bench_gap(), self._bench_gap()
        held = None  # (payload) of a response seen valid and not taken
        for cycle in range(self.max_cycles):
            if len(self.responses) == len(self.reads) and wi == len(self.writes):
                break
            r_on = (
                ri < len(self.reads) and r_idle == 0 and not (self.after and wi < len(self.writes))
            )
            w_on = wi < len(self.writes) and w_idle == 0
            ctx.set(dut.rd_addr.valid, r_on)
            ctx.set(dut.rd_addr.payload, self.reads[ri] if r_on else 0)
            ctx.set(dut.wr.valid, w_on)
            if w_on:
                ctx.set(dut.wr.payload, {"addr": self.writes[wi][0], "data": self.writes[wi][1]})
            ready = not self.stall(cycle) and self.rng.random() >= self.bp
            ctx.set(dut.rd_data.ready, ready)

            if held is not None:
                assert ctx.get(dut.rd_data.valid), f"cycle {cycle}: rd_data.valid dropped"
                assert ctx.get(dut.rd_data.payload) == held, (
                    f"cycle {cycle}: rd_data.payload changed while waiting"
                )
            if ctx.get(dut.rd_data.valid):
                data = ctx.get(dut.rd_data.payload)
                if ready:
                    self.responses.append((cycle, data))
                    held = None
                else:
                    held = data
            if r_on and ctx.get(dut.rd_addr.ready):
                self.rd_accepts.append(cycle)
                ri += 1
                r_idle = self._bench_gap()
            elif r_idle:
                r_idle -= 1
            if w_on and ctx.get(dut.wr.ready):
                self.wr_accepts.append(cycle)
                wi += 1
                w_idle = self._bench_gap()
            elif w_idle:
                w_idle -= 1
            await ctx.tick()
        else:
            raise AssertionError(
                f"not done in {self.max_cycles} cycles: {len(self.responses)}"
                f"/{len(self.reads)} responses, {wi}/{len(self.writes)} writes"
            )
        self.range_error = ctx.get(dut.range_error)

    @property
    def data(self):
        return [d for _, d in self.responses]

    @property
    def latencies(self):
        return [c - a for (c, _), a in zip(self.responses, self.rd_accepts, strict=True)]


def random_words(rng, params, n):
    return [rng.getrandbits(8 * params.offchip_bytes_per_cycle) for _ in range(n)]


# -- timing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("latency, bus_bytes", [(1, 8), (5, 4), (16, 8)])
def test_exact_latency_at_full_rate(rng, latency, bus_bytes):
    """Back-to-back requests: accepted every cycle, each answered exactly ``offchip_latency``
    cycles later, one word per cycle, in order, with the initial contents."""
    p = ChipParams(offchip_kib=4, offchip_latency=latency, offchip_bytes_per_cycle=bus_bytes)
    init = random_words(rng, p, offchip_words(p))
    addrs = [rng.randrange(offchip_words(p)) for _ in range(60)]
    run = BusRun(p, init=init, reads=addrs)
    assert run.rd_accepts == list(range(len(addrs)))
    assert run.latencies == [latency] * len(addrs)
    assert run.data == [init[a] for a in addrs]
    assert run.range_error == 0


@pytest.mark.parametrize("interval", [0, 1])
def test_full_throughput_reads_and_writes(rng, interval):
    """With cfg_interval 0 or 1 reads and writes each go at one per cycle, concurrently."""
    init = random_words(rng, SMALL, 512)
    writes = [(256 + i, w) for i, w in enumerate(random_words(rng, SMALL, 100))]
    run = BusRun(SMALL, init=init, reads=range(100), writes=writes, cfg={"cfg_interval": interval})
    assert run.rd_accepts == list(range(100))
    assert run.wr_accepts == list(range(100))
    assert [c for c, _ in run.responses] == list(range(16, 116))
    assert run.data == init[:100]


def test_interval_limits_bandwidth(rng):
    """cfg_interval = 4: one read and one write accepted every 4 cycles, whatever is asked."""
    init = random_words(rng, SMALL, 512)
    writes = [(300 + i, i) for i in range(20)]
    run = BusRun(SMALL, init=init, reads=range(30), writes=writes, cfg={"cfg_interval": 4})
    assert run.rd_accepts == list(range(0, 120, 4))
    assert run.wr_accepts == list(range(0, 80, 4))
    assert run.latencies == [16] * 30
    assert run.data == init[:30]


def expected_due(accepts, latency, extra):
    """Response cycles of an always-ready consumer: the model's contract
    ``due[i] = max(c[i] + latency, due[i - 1] + 1) + extra[i]``."""
    due, last = [], -1
    for c, e in zip(accepts, extra, strict=True):
        last = max(c + latency, last + 1) + e
        due.append(last)
    return due


def test_jitter_changes_timing_not_data(rng):
    """Jitter: the response cycles are exactly those of the contract with the reference
    generator's draws (``jitter_extra``), so some latencies are longer, never shorter, order
    and data unchanged; another seed gives other timing, the same data."""
    init = random_words(rng, SMALL, 512)
    addrs = [rng.randrange(512) for _ in range(150)]
    cfg = {"cfg_jitter": 64, "cfg_jitter_max": 20, "cfg_seed": rng.getrandbits(32)}
    run = BusRun(SMALL, init=init, reads=addrs, cfg=cfg)
    extra = jitter_extra(cfg["cfg_seed"], 150, 64, 20)
    assert sum(e > 0 for e in extra) > 10 and max(extra) <= 20
    assert run.data == [init[a] for a in addrs]
    assert [c for c, _ in run.responses] == expected_due(run.rd_accepts, 16, extra)
    assert min(run.latencies) >= 16 and max(run.latencies) > 16
    other = BusRun(SMALL, init=init, reads=addrs, cfg={**cfg, "cfg_seed": cfg["cfg_seed"] ^ 1})
    assert other.data == run.data
    assert other.responses != run.responses
    # probability 0 or a maximum of 0: no jitter
    for quiet in (
        {"cfg_jitter": 0, "cfg_jitter_max": 255},
        {"cfg_jitter": 255, "cfg_jitter_max": 0},
    ):
        assert BusRun(SMALL, init=init, reads=addrs, cfg=quiet).latencies == [16] * 150


def test_worst_jitter(rng):
    """Every request delayed by up to JITTER_MAX: bubbles of up to 255 cycles in the response
    stream; the in-flight FIFO fills and throttles requests, and data stays intact and in
    order, timing as the contract says."""
    init = random_words(rng, SMALL, 512)
    addrs = list(range(300))
    cfg = {"cfg_jitter": 255, "cfg_jitter_max": JITTER_MAX, "cfg_seed": 7}
    run = BusRun(SMALL, init=init, reads=addrs, cfg=cfg, max_cycles=60000)
    assert run.data == init[:300]
    extra = jitter_extra(7, 300, 255, JITTER_MAX)
    assert [c for c, _ in run.responses] == expected_due(run.rd_accepts, 16, extra)
    depth = OffchipMemory(SMALL).fifo_depth
    assert run.rd_accepts[:depth] == list(range(depth))
    assert run.rd_accepts[-1] > 300


def test_random_gaps_and_backpressure(rng):
    """Random request gaps, random response back-pressure, jitter: data in order, every
    response at least offchip_latency after its request, the stream rule held (checked by
    the consumer every cycle)."""
    p = ChipParams(offchip_kib=4, offchip_latency=6)
    init = random_words(rng, p, 512)
    addrs = [rng.randrange(512) for _ in range(300)]
    run = BusRun(
        p,
        init=init,
        reads=addrs,
        gap=0.3,
        backpressure=0.4,
        seed=rng.random(),
        cfg={"cfg_jitter": 30, "cfg_jitter_max": 9, "cfg_seed": 99},
    )
    assert run.data == [init[a] for a in addrs]
    due = expected_due(run.rd_accepts, 6, jitter_extra(99, 300, 30, 9))
    assert all(c >= d for (c, _), d in zip(run.responses, due, strict=True))


def test_long_stall_fills_fifo_then_drains(rng):
    """The consumer stalls for 600 cycles: the model accepts requests until its in-flight FIFO
    is full, then holds rd_addr.ready low; nothing is lost when the consumer resumes."""
    init = random_words(rng, SMALL, 512)
    addrs = [rng.randrange(512) for _ in range(500)]
    run = BusRun(SMALL, init=init, reads=addrs, stall=lambda c: c < 600)
    depth = OffchipMemory(SMALL).fifo_depth
    assert run.rd_accepts[:depth] == list(range(depth))
    assert run.rd_accepts[depth] >= 600
    assert run.responses[0][0] == 600
    assert run.data == [init[a] for a in addrs]


# -- contents ---------------------------------------------------------------------------------


def test_writes_then_reads(rng):
    """Random writes (with gaps), then reads of every word: written words changed, the others
    as initialized."""
    init = random_words(rng, SMALL, 512)
    expect = list(init)
    writes = []
    for _ in range(200):
        a, d = rng.randrange(512), rng.getrandbits(64)
        writes.append((a, d))
        expect[a] = d
    run = BusRun(
        SMALL,
        init=init,
        reads=range(512),
        writes=writes,
        gap=0.2,
        reads_after_writes=True,
        seed=rng.random(),
    )
    assert run.data == expect
    assert run.range_error == 0


def test_read_after_write_same_and_next_cycle():
    """A write is visible to reads requested after the cycle it is accepted in; a read
    accepted in the same cycle sees the old word."""
    p = ChipParams(offchip_kib=4, offchip_latency=2)
    run = BusRun(p, init=[11, 22], reads=[1, 1, 0], writes=[(1, 99)])
    assert run.rd_accepts == [0, 1, 2] and run.wr_accepts == [0]
    assert run.data == [22, 99, 11]


def test_out_of_range_latches_error(rng):
    """Reads beyond the memory return 0, writes beyond are dropped (no aliasing onto
    addr % depth), and range_error latches; in-range traffic leaves it low."""
    init = random_words(rng, SMALL, 512)
    ok = BusRun(SMALL, init=init, reads=[0, 511], writes=[(511, 5)])
    assert ok.range_error == 0
    bad_read = BusRun(SMALL, init=init, reads=[3, 512, 1 << 31, 4])
    assert bad_read.data == [init[3], 0, 0, init[4]]
    assert bad_read.range_error == 1
    bad_write = BusRun(
        SMALL,
        init=init,
        writes=[(512 + 3, 1234), ((1 << 32) - 1, 5)],
        reads=[3, 511],
        reads_after_writes=True,
    )
    assert bad_write.data == [init[3], init[511]]
    assert bad_write.range_error == 1


def test_bus_connects_to_an_initiator():
    """``OffchipMemory.bus`` is a flipped BusSignature interface: wiring.connect takes it."""

    class Initiator(wiring.Component):
        bus: Out(BusSignature(SMALL))

        def elaborate(self, platform):
            return Module()

    m = Module()
    m.submodules.chip = chip = Initiator()
    m.submodules.mem = mem = OffchipMemory(SMALL)
    wiring.connect(m, chip.bus, mem.bus)


def test_constructor_checks():
    with pytest.raises(ValueError, match="storage"):
        OffchipMemory(SMALL, storage="sram")
    with pytest.raises(ValueError, match="init has 513 words"):
        OffchipMemory(SMALL, init=[0] * 513)
    with pytest.raises(ValueError, match=r"init\[1\]"):
        OffchipMemory(SMALL, init=[0, 1 << 64])
    with pytest.raises(ValueError, match="offchip_init"):
        OffchipMemory(SMALL, storage="verilog", init=[0])


# -- memory image files -----------------------------------------------------------------------


def test_memh_round_trip(tmp_path):
    raw = np.random.default_rng(1).integers(0, 256, 8 * 5 + 3, dtype=np.uint8)
    path = write_memh(tmp_path / "img.hex", raw.tobytes(), 8)
    lines = path.read_text().split()
    assert len(lines) == 6 and all(len(w) == 16 for w in lines)
    assert int(lines[0], 16) == int.from_bytes(raw[:8].tobytes(), "little")
    back = read_memh(path, 8)
    assert back.tobytes() == raw.tobytes() + bytes(5)
    # @address lines and comments, as $writememh may write them
    (tmp_path / "a.hex").write_text("// dump\n@0\n01\n02 03\n@3 04\n")
    assert read_memh(tmp_path / "a.hex", 1).tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "text, message",
    [
        ("00\nxx\n", "undefined"),
        ("00\n0z\n", "undefined"),
        ("00\n@5\n01\n", "missing"),
        ("0102\n", "wider"),
        ("00\nqq\n", "not a hex word"),
    ],
)
def test_memh_errors(tmp_path, text, message):
    (tmp_path / "bad.hex").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_memh(tmp_path / "bad.hex", 1)


def test_memh_word_count(tmp_path):
    write_memh(tmp_path / "w.hex", bytes(16), 4)
    assert len(read_memh(tmp_path / "w.hex", 4, words=4)) == 16
    with pytest.raises(ValueError, match="4 words, expected 8"):
        read_memh(tmp_path / "w.hex", 4, words=8)


# -- Verilog storage under Verilator ------------------------------------------------------------


def test_offchip_verilator_bulk_load_and_dump(rng):
    """OffchipMemory(storage="verilog") under cocotb + Verilator: an image loaded with
    +offchip_init is read back through the bus (jitter, gaps, back-pressure), words are
    written, ``dump`` writes the memory to +offchip_dump, and the dump equals the image with
    the writes applied."""
    p = SMALL
    name = "offchip_k4"
    build = BUILD / name
    build.mkdir(parents=True, exist_ok=True)
    bus_bytes = p.offchip_bytes_per_cycle
    words = offchip_words(p)
    nprng = np.random.default_rng(rng.getrandbits(32))
    image = nprng.integers(0, 256, (words - 8) * bus_bytes, dtype=np.uint8)  # last 8: zeros
    init_path = write_memh(build / "init.hex", image.tobytes(), bus_bytes)
    dump_path = build / "dump.hex"
    dump_path.unlink(missing_ok=True)
    writes = {int(a): int(nprng.integers(0, 2**63)) for a in nprng.choice(words, 40, False)}
    (build / "writes.txt").write_text("".join(f"{a} {d:x}\n" for a, d in writes.items()))
    run_cocotb(
        OffchipMemory(p, storage="verilog"),
        "offchip_top",
        "tests.rtl.tb_offchip",
        name=name,
        sources=[STORAGE_VERILOG],
        plusargs=[f"+offchip_init={init_path}", f"+offchip_dump={dump_path}"],
        extra_env={
            "OFFCHIP_SEED": str(SEED),
            "OFFCHIP_INIT": str(init_path),
            "OFFCHIP_WRITES": str(build / "writes.txt"),
            "OFFCHIP_LATENCY": str(p.offchip_latency),
            "OFFCHIP_BUS_BYTES": str(bus_bytes),
            "OFFCHIP_WORDS": str(words),
        },
    )
    expect = np.concatenate([image, np.zeros(8 * bus_bytes, np.uint8)]).reshape(words, bus_bytes)
    for a, d in writes.items():
        expect[a] = np.frombuffer(d.to_bytes(bus_bytes, "little"), np.uint8)
    got = read_memh(dump_path, bus_bytes, words=words).reshape(words, bus_bytes)
    bad = np.flatnonzero((got != expect).any(1))
    assert not len(bad), f"dumped words differ at {bad[:10].tolist()}"

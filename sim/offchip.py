"""The modelled off-chip memory: the target of the chip's bus (``hw.bus.BusSignature``) in
simulation.

:class:`OffchipMemory` is an Amaranth component with the flipped bus members (``rd_addr``,
``rd_data``, ``wr``) plus configuration inputs, so one Verilator build serves every bandwidth,
latency-jitter and seed setting (set them once at the start of a run; they may change at any
time but are meant as static configuration):

``cfg_interval`` (8 bits)
    Accept at most one read request every ``N`` cycles (0 and 1: every cycle), and likewise
    at most one write every ``N`` cycles. Reads and writes are limited independently (separate
    channels, as AXI's). Models a memory slower than the bus is wide.
``cfg_jitter`` (8 bits), ``cfg_jitter_max`` (8 bits), ``cfg_seed`` (32 bits)
    Each accepted read request, with probability ``cfg_jitter / 256``, gets an extra latency
    drawn in ``0 .. cfg_jitter_max`` from a xorshift32 generator (a linear-feedback shift
    generator) seeded with ``cfg_seed`` (0 is replaced by a fixed non-zero seed). The
    generator advances once per accepted read, so for a seed the draws depend only on the
    request's index, never on timing (:func:`jitter_extra` is the reference). The seed is
    taken while no read has been accepted yet. Responses stay in order, so an extra latency
    is a bubble of that many cycles in the response stream that moves every later response
    too (like a DRAM refresh or page miss): jitter costs bandwidth in a burst.
``dump`` (1 bit)
    ``storage="verilog"`` only: on a cycle where it is high the storage writes its whole
    contents to the ``+offchip_dump=<path>`` file (writes accepted in that same cycle are not
    included). Ignored with ``storage="amaranth"``.
``load``, ``save`` (1 bit each), ``region_first``, ``region_last`` (bus-word addresses)
    ``storage="verilog"`` only, for a host that accesses the memory between runs of the chip
    (``sim.chip_rtl.RtlSession``): on a cycle where ``load`` is high, bus words
    ``region_first .. region_last`` (inclusive) are read from the ``+offchip_load=<path>``
    file (:func:`write_region_bin` writes it); where ``save`` is high they are written to
    ``+offchip_save=<path>`` (:func:`read_region_bin` reads it). Binary files, so a region
    of a hundred megabytes takes a second, not a minute of hex. Ignored with
    ``storage="amaranth"``.

Contract (the bus's streams are ``amaranth.lib.stream`` valid/ready):

- **Latency**: a read request accepted in cycle ``c`` has its response valid in cycle
  ``due[i] = max(c + offchip_latency, due[i - 1] + 1) + extra[i]`` (``extra`` the jitter,
  usually 0) when the consumer is ready: exactly ``offchip_latency`` without jitter, never
  less; responses come strictly in request order.
- **Throughput**: with ``cfg_interval <= 1`` and no jitter, one request accepted and one
  response delivered every cycle (the in-flight FIFO holds ``offchip_latency + 258`` words,
  so it never throttles itself at full rate).
- **Back-pressure**: ``rd_data`` may be stalled for any time; the response stays valid and
  stable until taken. Requests keep being accepted until the in-flight FIFO would overflow.
- **Writes** (``wr``): accepted one per cycle (subject to ``cfg_interval``) and applied on
  acceptance: a read requested in a later cycle sees the data; a read accepted in the same
  cycle sees the old word.
- **Size**: ``params.offchip_kib * 1024 // params.offchip_bytes_per_cycle`` bus words. A read
  beyond returns 0, a write beyond is dropped, and ``range_error`` latches high (the chip is
  supposed to check addresses itself, ``Err.OFFCHIP_RANGE``: this flag is a testbench
  assertion).

Storage backends: ``"amaranth"`` (an ``amaranth.lib.memory.Memory``, optional ``init`` list of
bus words; for ``amaranth.sim`` and small configurations) and ``"verilog"`` (an ``Instance`` of
``sim/verilog/offchip_storage.v``, :data:`STORAGE_VERILOG`, which must be compiled with the
design: ``sim.rtl.run_cocotb(..., sources=[STORAGE_VERILOG])``). The Verilog storage loads a
whole memory image at time 0 with ``$readmemh`` from the file named by the plusarg
``+offchip_init=<path>`` and dumps it with ``$writememh`` to ``+offchip_dump=<path>`` when
``dump`` is high: a model image goes into Verilator in bulk, with no per-word Python access
(DESIGN.md §5). :func:`write_memh` / :func:`read_memh` convert between raw bytes and those
files (one bus word per line, hex, little-endian bytes within a word).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from amaranth.hdl import ClockSignal, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.bus import BusSignature
from hw.isa import bus_bits
from hw.params import ChipParams

__all__ = [
    "OffchipMemory",
    "STORAGE_VERILOG",
    "offchip_words",
    "jitter_extra",
    "write_memh",
    "read_memh",
    "write_region_bin",
    "read_region_bin",
]

#: The Verilog storage module of ``storage="verilog"``.
STORAGE_VERILOG = Path(__file__).resolve().parent / "verilog" / "offchip_storage.v"

#: Largest extra latency ``cfg_jitter_max`` can ask for.
JITTER_MAX = 255
#: Width of the cycle counter and the due times (wrap-safe: every due time still waiting is
#: less than ``offchip_latency + (JITTER_MAX + 1) * fifo depth`` cycles ahead, below 2**23).
TIME_BITS = 24
_SEED_ZERO = 0x2545F491


def offchip_words(p: ChipParams) -> int:
    """Bus words of the modelled memory."""
    return p.offchip_kib * 1024 // p.offchip_bytes_per_cycle


def jitter_extra(seed: int, n: int, jitter: int, jitter_max: int) -> list[int]:
    """The extra latencies of the first ``n`` read requests accepted after reset with
    ``cfg_seed = seed``, ``cfg_jitter = jitter``, ``cfg_jitter_max = jitter_max``: the
    Python reference of the model's generator."""
    x = seed & 0xFFFFFFFF or _SEED_ZERO
    out = []
    for _ in range(n):
        hit = (x & 0xFF) < jitter
        out.append(((x >> 8 & 0xFF) * (jitter_max + 1)) >> 8 if hit else 0)
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
    return out


def _xorshift32(x):
    """One xorshift32 step (Marsaglia 2003) on a 32-bit Amaranth value."""
    x = (x ^ (x << 13))[:32]
    x = x ^ (x >> 17)
    return (x ^ (x << 5))[:32]


class OffchipMemory(wiring.Component):
    """The modelled off-chip memory (module docstring: contract and configuration).

    Members: ``rd_addr``, ``rd_data``, ``wr`` (``hw.bus.BusSignature(params)`` flipped; also
    available together as :attr:`bus`, for ``wiring.connect(m, chip.bus, offchip.bus)``),
    inputs ``cfg_interval``, ``cfg_jitter``, ``cfg_jitter_max``, ``cfg_seed``, ``dump``, output
    ``range_error``.
    """

    def __init__(self, params: ChipParams, storage: str = "amaranth", init=None):
        if storage not in ("amaranth", "verilog"):
            raise ValueError(
                f"OffchipMemory: storage must be 'amaranth' or 'verilog', got {storage!r}"
            )
        self.params = params
        self.storage = storage
        self.depth = offchip_words(params)
        self.width = bus_bits(params)
        #: Width of a bus-word address of the storage.
        self.abits = max(1, (self.depth - 1).bit_length())
        if init is not None:
            if storage != "amaranth":
                raise ValueError(
                    "OffchipMemory: init is for storage='amaranth'; the Verilog "
                    "storage loads '+offchip_init=<file>' (sim.offchip.write_memh)"
                )
            init = [int(v) for v in init]
            if len(init) > self.depth:
                raise ValueError(
                    f"OffchipMemory: init has {len(init)} words, the memory {self.depth}"
                )
            bad = [i for i, v in enumerate(init) if not 0 <= v < 1 << self.width]
            if bad:
                raise ValueError(
                    f"OffchipMemory: init[{bad[0]}] = {init[bad[0]]:#x} does not "
                    f"fit a {self.width}-bit bus word"
                )
        self.init = init
        #: Entries of the in-flight response FIFO.
        self.fifo_depth = params.offchip_latency + JITTER_MAX + 3
        self._bus_signature = BusSignature(params).flip()
        members = dict(self._bus_signature.members.items())
        members.update(
            {
                "cfg_interval": In(8),
                "cfg_jitter": In(8),
                "cfg_jitter_max": In(8),
                "cfg_seed": In(32),
                "dump": In(1),
                "load": In(1),
                "save": In(1),
                "region_first": In(self.abits),
                "region_last": In(self.abits),
                "range_error": Out(1),
            }
        )
        super().__init__(members)

    @property
    def bus(self):
        """The bus members as one interface of ``wiring.flipped(BusSignature(params))``."""
        return _BusPort(self._bus_signature, self.rd_addr, self.rd_data, self.wr)

    def elaborate(self, platform):
        m = Module()
        p = self.params
        depth, width, abits = self.depth, self.width, self.abits

        # -- storage: one registered read port, one write port ---------------------------------
        st_rd_en, st_rd_addr, st_rd_data = Signal(), Signal(abits), Signal(width)
        st_wr_en, st_wr_addr, st_wr_data = Signal(), Signal(abits), Signal(width)
        if self.storage == "amaranth":
            mem = m.submodules.storage = Memory(
                shape=unsigned(width), depth=depth, init=self.init or []
            )
            rp, wp = mem.read_port(), mem.write_port()
            m.d.comb += [
                rp.en.eq(st_rd_en),
                rp.addr.eq(st_rd_addr),
                st_rd_data.eq(rp.data),
                wp.en.eq(st_wr_en),
                wp.addr.eq(st_wr_addr),
                wp.data.eq(st_wr_data),
            ]
        else:
            m.submodules.storage = Instance(
                "offchip_storage",
                p_WIDTH=width,
                p_DEPTH=depth,
                p_ABITS=abits,
                i_clk=ClockSignal(),
                i_dump=self.dump,
                i_load=self.load,
                i_save=self.save,
                i_region_first=self.region_first,
                i_region_last=self.region_last,
                i_rd_en=st_rd_en,
                i_rd_addr=st_rd_addr,
                o_rd_data=st_rd_data,
                i_wr_en=st_wr_en,
                i_wr_addr=st_wr_addr,
                i_wr_data=st_wr_data,
            )

        now = Signal(TIME_BITS)
        m.d.sync += now.eq(now + 1)

        # -- bandwidth limit: a request at most every cfg_interval cycles, per channel ---------
        interval_m1 = Mux(self.cfg_interval == 0, 0, self.cfg_interval - 1)
        rd_wait, wr_wait = Signal(8), Signal(8)
        for wait, acc in (
            (rd_wait, self.rd_addr.valid & self.rd_addr.ready),
            (wr_wait, self.wr.valid & self.wr.ready),
        ):
            with m.If(acc):
                m.d.sync += wait.eq(interval_m1)
            with m.Elif(wait != 0):
                m.d.sync += wait.eq(wait - 1)

        # -- writes: applied on acceptance ----------------------------------------------------
        wr_acc = self.wr.valid & self.wr.ready
        wr_in_range = self.wr.payload.addr < depth
        m.d.comb += [
            self.wr.ready.eq(wr_wait == 0),
            st_wr_en.eq(wr_acc & wr_in_range),
            st_wr_addr.eq(self.wr.payload.addr[:abits]),
            st_wr_data.eq(self.wr.payload.data),
        ]

        # -- reads: storage read on acceptance (stage s1 holds the word the next cycle) --------
        data_q = m.submodules.data_q = fifo.SyncFIFO(width=width, depth=self.fifo_depth)
        due_q = m.submodules.due_q = fifo.SyncFIFO(width=TIME_BITS, depth=self.fifo_depth)
        s1_valid, s1_in_range = Signal(), Signal()
        rd_acc = self.rd_addr.valid & self.rd_addr.ready
        rd_in_range = self.rd_addr.payload < depth
        m.d.comb += [
            # Room for the word in s1 and this one, whatever the consumer does.
            self.rd_addr.ready.eq((rd_wait == 0) & (data_q.level + s1_valid < self.fifo_depth)),
            st_rd_en.eq(rd_acc),
            st_rd_addr.eq(self.rd_addr.payload[:abits]),
        ]
        m.d.sync += [s1_valid.eq(rd_acc), s1_in_range.eq(rd_in_range)]
        s1_data = Mux(s1_in_range, st_rd_data, 0)

        with m.If((rd_acc & ~rd_in_range) | (wr_acc & ~wr_in_range)):
            m.d.sync += self.range_error.eq(1)

        # -- due times: now + latency + jitter, strictly increasing -----------------------------
        lfsr, started = Signal(32), Signal()
        seed = Mux(self.cfg_seed == 0, _SEED_ZERO, self.cfg_seed)
        draw = Mux(started, lfsr, seed)
        with m.If(rd_acc):
            m.d.sync += [lfsr.eq(_xorshift32(draw)), started.eq(1)]
        hit = draw[0:8] < self.cfg_jitter
        extra = Mux(hit, (draw[8:16] * (self.cfg_jitter_max + 1)) >> 8, 0)
        # next_min: the earliest due the next response may have (one after the last due); it
        # follows now when idle, so it never falls behind now and comparisons stay wrap-safe.
        next_min = Signal(TIME_BITS, init=1)
        base, due = Signal(TIME_BITS), Signal(TIME_BITS)
        m.d.comb += [
            base.eq(now + p.offchip_latency),
            due.eq(Mux((base - next_min)[TIME_BITS - 1], next_min, base) + extra),
        ]
        with m.If(rd_acc):
            m.d.sync += next_min.eq(due + 1)
        with m.Elif((now - next_min + 1)[TIME_BITS - 1] == 0):  # next_min <= now + 1
            m.d.sync += next_min.eq(now + 2)
        m.d.comb += [due_q.w_en.eq(rd_acc), due_q.w_data.eq(due)]

        # An item ripens in the cycle its due time comes (dues are distinct, so one at most);
        # ripe counts ripened responses not yet delivered, whatever the back-pressure.
        ripen = due_q.r_rdy & ((due_q.r_data - now)[TIME_BITS - 1] | (due_q.r_data == now))
        ripe = Signal(range(self.fifo_depth + 1))
        m.d.comb += due_q.r_en.eq(ripen)

        # -- responses: the FIFO head, or s1 directly when the FIFO is empty --------------------
        pop = self.rd_data.valid & self.rd_data.ready
        m.d.comb += [
            self.rd_data.valid.eq(((ripe != 0) | ripen) & (data_q.r_rdy | s1_valid)),
            self.rd_data.payload.eq(Mux(data_q.r_rdy, data_q.r_data, s1_data)),
            data_q.r_en.eq(pop),
            data_q.w_en.eq(s1_valid & ~(pop & ~data_q.r_rdy)),
            data_q.w_data.eq(s1_data),
        ]
        m.d.sync += ripe.eq(ripe + ripen - pop)
        return m


class _BusPort:
    """The three bus streams of an :class:`OffchipMemory` as one interface object."""

    def __init__(self, signature, rd_addr, rd_data, wr):
        self.signature = signature
        self.rd_addr, self.rd_data, self.wr = rd_addr, rd_data, wr


# -- memory images for the Verilog storage ($readmemh / $writememh) ----------------------------


def write_memh(path, raw_bytes, bus_bytes: int) -> Path:
    """Write ``raw_bytes`` as a ``$readmemh`` file: one bus word of ``bus_bytes`` bytes per
    line, in hex, byte ``i`` of a word its ``i``-th least significant byte (little-endian,
    as the chip reads bus words). A last partial word is padded with zeros."""
    raw = (
        np.frombuffer(bytes(raw_bytes), np.uint8)
        if not isinstance(raw_bytes, np.ndarray)
        else np.asarray(raw_bytes, np.uint8).reshape(-1)
    )
    pad = (-len(raw)) % bus_bytes
    if pad:
        raw = np.concatenate([raw, np.zeros(pad, np.uint8)])
    words = raw.reshape(-1, bus_bytes)[:, ::-1]  # most significant byte first
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hexed = words.tobytes().hex()
    n = 2 * bus_bytes
    path.write_text("".join(hexed[i : i + n] + "\n" for i in range(0, len(hexed), n)))
    return path


_HEX = re.compile(r"[0-9a-fA-F]*")


def _read_memh_fast(text: str, bus_bytes: int, words: int | None) -> np.ndarray | None:
    """:func:`read_memh` for the common case, vectorized (a 1 MiB dump in ~20 ms instead of
    ~0.2 s): ``//`` comments on their own lines, at most a leading ``@0``, plain hex words of
    at most ``2 * bus_bytes`` digits. Anything else returns None (the careful path then reads
    the file and names the problem)."""
    toks = [t for ln in text.splitlines() if not ln.lstrip().startswith("//")
            for t in ln.split()]
    if toks and toks[0].startswith("@"):
        if toks[0] != "@0":
            return None
        toks = toks[1:]
    if words is not None and len(toks) != words:
        return None
    width = 2 * bus_bytes
    if not toks or max(map(len, toks)) > width:
        return None
    joined = "".join(t.zfill(width) for t in toks)
    if not _HEX.fullmatch(joined):
        return None
    raw = np.frombuffer(bytes.fromhex(joined), np.uint8).reshape(len(toks), bus_bytes)
    return raw[:, ::-1].reshape(-1).copy()


_ADDR = re.compile(r"@([0-9a-fA-F]+)$")
_WORD = re.compile(r"[0-9a-fA-F_]+$")


def read_memh(path, bus_bytes: int, words: int | None = None) -> np.ndarray:
    """Read a ``$writememh`` / ``$readmemh`` file of bus words back to bytes (uint8,
    ``n_words * bus_bytes``, little-endian words; the inverse of :func:`write_memh`).
    ``//`` comments and ``@address`` lines are understood. ``x``/``z`` digits, a word wider
    than ``bus_bytes``, a gap or an address going backwards (missing lines), or a word count
    other than ``words`` (when given) raise ``ValueError`` naming the file and line."""
    path = Path(path)
    fast = _read_memh_fast(path.read_text(), bus_bytes, words)
    if fast is not None:
        return fast
    out: dict[int, int] = {}
    addr = 0
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        for tok in line.split("//", 1)[0].split():
            where = f"{path}:{lineno}"
            if (am := _ADDR.match(tok)) is not None:
                new = int(am.group(1), 16)
                if new != addr:
                    raise ValueError(
                        f"{where}: address @{new:x} but the next word is {addr:#x} "
                        f"(missing or repeated words)"
                    )
                continue
            if any(c in "xXzZ?" for c in tok):
                raise ValueError(
                    f"{where}: word {addr:#x} is undefined ({tok!r}: x/z bits); "
                    f"the memory was read before it was written or loaded"
                )
            if not _WORD.match(tok):
                raise ValueError(f"{where}: {tok!r} is not a hex word")
            value = int(tok.replace("_", ""), 16)
            if value >> (8 * bus_bytes):
                raise ValueError(f"{where}: word {tok!r} is wider than {bus_bytes} bytes")
            out[addr] = value
            addr += 1
    if words is not None and addr != words:
        raise ValueError(f"{path}: {addr} words, expected {words} (missing lines?)")
    raw = b"".join(out[i].to_bytes(bus_bytes, "little") for i in range(addr))
    return np.frombuffer(raw, np.uint8).copy()


# -- regions for the Verilog storage's load / save ($fread / $fwrite "%u") ---------------------


def write_region_bin(path, raw_bytes, bus_bytes: int) -> Path:
    """Write ``raw_bytes`` (a whole number of bus words) as the ``+offchip_load`` file of the
    Verilog storage: what ``$fread`` into the memory expects, each bus word's bytes most
    significant first (the chip's bus words are little-endian, so each word is reversed)."""
    raw = np.asarray(raw_bytes, np.uint8).reshape(-1)
    if raw.size % bus_bytes:
        raise ValueError(f"write_region_bin: {raw.size} bytes are not a whole number of "
                         f"{bus_bytes}-byte bus words")
    path = Path(path)
    if bus_bytes in (2, 4, 8):  # a byte swap of machine words: ~5x faster than a copy
        raw = raw.view(f"<u{bus_bytes}").byteswap() if raw.size else raw
    elif bus_bytes > 1:
        raw = np.ascontiguousarray(raw.reshape(-1, bus_bytes)[:, ::-1])
    raw.tofile(path)
    return path


def read_region_bin(path, bus_bytes: int, words: int) -> np.ndarray:
    """Read ``words`` bus words from a ``+offchip_save`` file of the Verilog storage
    (``$fwrite("%u")`` of each word: least significant byte first, padded with zero bytes to
    a multiple of 4) back to bytes (uint8, ``words * bus_bytes``, little-endian words).
    ``ValueError`` naming the file when its size is not that of ``words`` words."""
    path = Path(path)
    padded = -(-bus_bytes // 4) * 4
    raw = np.fromfile(path, np.uint8)
    if raw.size != words * padded:
        raise ValueError(f"{path}: {raw.size} bytes, expected {words} bus words of "
                         f"{padded} bytes ({bus_bytes} padded to 32-bit units)")
    return raw.reshape(words, padded)[:, :bus_bytes].reshape(-1).copy()

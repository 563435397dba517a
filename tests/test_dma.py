"""The DMA engines (hw/dma.py) in amaranth.sim against a byte-level model of both sides.

One testbench process plays everything around the engine, cycle by cycle: the unit queue
(commands with random valid gaps), the off-chip memory (a numpy byte array; read requests
answered in order after a random latency, with random gaps in the responses and random ready
on requests and writes) and the buffer arbiter (random ready on buffer writes and reads, read
answers after random delays, in order). Expected words come from the byte layout of off-chip
memory (``hw/isa.py``: a buffer word is ``bpw`` consecutive little-endian bus words, zero
above its width), never from the engine's own arithmetic.
Random tests print their seed; replay with DMA_SEED=<seed>.
"""

import os
from collections import deque

import numpy as np
import pytest
from amaranth.lib import data
from amaranth.sim import Simulator

from hw.bus import word_bits
from hw.dma import LoadEngine, StoreEngine, dma_cmd_layout
from hw.isa import (
    Buf,
    DmaArgs,
    Err,
    buffer_depth,
    bus_bits,
    bus_words_per,
    leaf_fields,
    pack_words,
    word_layout,
)
from hw.params import ChipParams

SEED = int(os.environ.get("DMA_SEED", np.random.SeedSequence().entropy % 2**32))

DEFAULT = ChipParams()
# A 32-bit bus on a 4 x 8 grid: other word widths and bus words per word (ACT: 46 bits in
# 2 bus words; 142 bits in 3 on DEFAULT).
SMALL = ChipParams(rows=4, cols=8, offchip_bytes_per_cycle=4, offchip_kib=64)
# Wide bus: every buffer word in one bus word (zero padded), no assembly at all.
WIDE = ChipParams(offchip_bytes_per_cycle=128, offchip_kib=256)
PARAMS = {"default": DEFAULT, "small": SMALL, "wide": WIDE}


@pytest.fixture
def rng(request):
    print(f"DMA_SEED={SEED}")
    return np.random.default_rng([SEED, sum(map(ord, request.node.name))])


def mem_words(p):
    return p.offchip_kib * 1024 // p.offchip_bytes_per_cycle


def cmd_bits(p, buf, sram, words, off, pc):
    """A command as raw bits (an out-of-range ``buf`` cannot go through ``Buf``)."""
    cl, al = dma_cmd_layout(p), data.Layout.cast(DmaArgs)
    args = (
        (buf << al["buf"].offset)
        | (sram << al["sram"].offset)
        | (words << al["words"].offset)
        | (off << al["off"].offset)
    )
    return (args << cl["args"].offset) | (pc << cl["pc"].offset)


class Cmd:
    def __init__(self, buf, sram, words, off, pc=0, after_abort=False):
        self.buf, self.sram, self.words, self.off, self.pc = buf, sram, words, off, pc
        self.after_abort = after_abort  # offered only once the abort has been released

    def __repr__(self):
        return f"Cmd(buf={self.buf}, sram={self.sram}, words={self.words}, off={self.off})"


# -- the world around the engine ----------------------------------------------------------------


class World:
    """Off-chip memory, buffer contents and everything observed on the engine's ports.

    ``lat`` (min, max): read latency of the memory, cycles from request to response valid;
    ``gap``: probability a due response is held back a cycle; ``rd_ready``/``wr_ready``:
    probability the memory takes a request / write; ``buf_ready``: the arbiter's ready on
    ``buf_wr`` / ``buf_rd``; ``buf_delay`` (min, max): the arbiter's read latency;
    ``cmd_gap``: probability the queue holds a command back a cycle.
    """

    def __init__(
        self,
        p,
        rng,
        *,
        lat=(1, 24),
        gap=0.2,
        rd_ready=0.8,
        wr_ready=0.8,
        buf_ready=0.7,
        buf_delay=(1, 4),
        cmd_gap=0.3,
    ):
        self.p, self.rng = p, rng
        self.BB = bus_bits(p) // 8
        self.mem = rng.integers(0, 256, mem_words(p) * self.BB, dtype=np.uint8)
        self.lat, self.gap, self.rd_ready, self.wr_ready = lat, gap, rd_ready, wr_ready
        self.buf_ready, self.buf_delay, self.cmd_gap = buf_ready, buf_delay, cmd_gap
        self.bufs = {b: {} for b in Buf}
        # observations
        self.accepted = []  # cycle each command was taken
        self.bus_reqs = []  # (cycle, address) of read requests taken
        self.bus_resps = []  # cycle of each response taken
        self.bus_writes = []  # (address, data)
        self.buf_writes = []  # (buf, address, data)
        self.buf_reads = []  # (buf, address)
        self.dones = []
        self.errs = []  # (code, pc)
        self.busy_low = []  # cycles with busy low
        self.abort_cycles = []

    def bus_word(self, a):
        return int.from_bytes(self.mem[a * self.BB : (a + 1) * self.BB].tobytes(), "little")

    def buf_word(self, buf, addr):
        """A buffer word (random on first read): a legal word of the buffer's layout, made
        with pack_words, so zero above the word's width."""
        words = self.bufs[buf]
        if addr not in words:
            layout = data.Layout.cast(word_layout(self.p, buf))
            leaves = leaf_fields(layout)
            if isinstance(layout, data.UnionLayout):  # one member's fields
                member = str(self.rng.choice(list(layout.members)))
                leaves = [f for f in leaves if f[0].startswith(member + ".")]
            fields = {}
            for path, _, width, sgn, count in leaves:
                lo, hi = (-(1 << (width - 1)), 1 << (width - 1)) if sgn else (0, 1 << width)
                fields[path] = self.rng.integers(lo, hi, (1, count))
            raw = pack_words(layout, fields, 1)[0]
            words[addr] = int.from_bytes(raw.tobytes(), "little")
        return words[addr]


def run(
    kind,
    p,
    cmds,
    world,
    *,
    abort_after=None,
    abort_len=1,
    resp_depth=None,
    max_cycles=20000,
    tail=8,
):
    """Run ``cmds`` through a ``kind`` ("load"/"store") engine in ``world``. ``abort_after``:
    raise ``abort`` for ``abort_len`` cycles once that many requests were taken."""
    kw = {} if resp_depth is None else {"resp_depth": resp_depth}
    dut = LoadEngine(p, **kw) if kind == "load" else StoreEngine(p, **kw)
    w, rng = world, world.rng
    n_expected = sum(1 for _ in cmds) - (1 if abort_after is not None else 0)

    async def bench(ctx):
        todo = deque(cmds)
        offer = None
        rd_q, rd_offer, last_due = deque(), None, -1  # memory read responses
        br_q, br_offer, br_last = deque(), None, -1  # arbiter read responses
        abort_left, aborted, idle_for = 0, False, 0
        for c in range(max_cycles):
            # -- drive ------------------------------------------------------------------------
            if offer is None and todo and (not todo[0].after_abort or (aborted and not abort_left)):
                if rng.random() >= w.cmd_gap:
                    offer = todo.popleft()
            ctx.set(dut.cmd.valid, offer is not None)
            if offer is not None:
                ctx.set(
                    dut.cmd.payload.as_value(),
                    cmd_bits(p, offer.buf, offer.sram, offer.words, offer.off, offer.pc),
                )
            n_req = len(w.bus_reqs) if kind == "load" else len(w.buf_reads)
            if abort_after is not None and not aborted and n_req >= abort_after:
                aborted, abort_left = True, abort_len
            ctx.set(dut.abort, abort_left > 0)
            if abort_left:
                w.abort_cycles.append(c)
                abort_left -= 1

            if kind == "load":
                rd_ready = rng.random() < w.rd_ready
                ctx.set(dut.bus_rd_addr.ready, rd_ready)
                if rd_offer is None and rd_q and rd_q[0][0] <= c and rng.random() >= w.gap:
                    rd_offer = rd_q.popleft()[1]
                ctx.set(dut.bus_rd_data.valid, rd_offer is not None)
                if rd_offer is not None:
                    ctx.set(dut.bus_rd_data.payload, rd_offer)
                wr_ready = rng.random() < w.buf_ready
                ctx.set(dut.buf_wr.ready, wr_ready)
            else:
                rd_ready = rng.random() < w.buf_ready
                ctx.set(dut.buf_rd.ready, rd_ready)
                if br_offer is None and br_q and br_q[0][0] <= c and rng.random() >= w.gap:
                    br_offer = br_q.popleft()[1]
                ctx.set(dut.buf_rd_data.valid, br_offer is not None)
                if br_offer is not None:
                    ctx.set(dut.buf_rd_data.payload, br_offer)
                wr_ready = rng.random() < w.wr_ready
                ctx.set(dut.bus_wr.ready, wr_ready)

            # -- observe (the design has settled on what was driven) ---------------------------
            if offer is not None and ctx.get(dut.cmd.ready):
                w.accepted.append(c)
                offer = None
            if kind == "load":
                if rd_ready and ctx.get(dut.bus_rd_addr.valid):
                    a = ctx.get(dut.bus_rd_addr.payload)
                    w.bus_reqs.append((c, a))
                    last_due = max(c + int(rng.integers(w.lat[0], w.lat[1] + 1)), last_due + 1)
                    rd_q.append((last_due, w.bus_word(a)))
                if rd_offer is not None and ctx.get(dut.bus_rd_data.ready):
                    w.bus_resps.append(c)
                    rd_offer = None
                if wr_ready and ctx.get(dut.buf_wr.valid):
                    pl = ctx.get(dut.buf_wr.payload)
                    w.buf_writes.append((int(pl.buf), int(pl.addr), int(pl.data)))
                outstanding = rd_q or rd_offer is not None
            else:
                if rd_ready and ctx.get(dut.buf_rd.valid):
                    pl = ctx.get(dut.buf_rd.payload)
                    b, a = Buf(pl.buf), int(pl.addr)
                    w.buf_reads.append((int(b), a))
                    br_last = max(
                        c + int(rng.integers(w.buf_delay[0], w.buf_delay[1] + 1)), br_last + 1
                    )
                    br_q.append((br_last, w.buf_word(b, a)))
                if br_offer is not None and ctx.get(dut.buf_rd_data.ready):
                    br_offer = None
                if wr_ready and ctx.get(dut.bus_wr.valid):
                    pl = ctx.get(dut.bus_wr.payload)
                    a, d = int(pl.addr), int(pl.data)
                    w.bus_writes.append((a, d))
                    w.mem[a * w.BB : (a + 1) * w.BB] = np.frombuffer(
                        d.to_bytes(w.BB, "little"), np.uint8
                    )
                outstanding = br_q or br_offer is not None
            if ctx.get(dut.done):
                w.dones.append(c)
            if ctx.get(dut.err_valid):
                w.errs.append((Err(ctx.get(dut.err_code)), int(ctx.get(dut.err_pc))))
            busy = ctx.get(dut.busy)
            if not busy:
                w.busy_low.append(c)
            await ctx.tick()

            finished = (
                not todo
                and offer is None
                and len(w.dones) >= n_expected
                and not busy
                and not outstanding
                and not abort_left
            )
            idle_for = idle_for + 1 if finished else 0
            if idle_for > tail:
                w.cycles = c
                return
        raise AssertionError(
            f"not finished after {max_cycles} cycles: {len(w.dones)} of {n_expected} commands done"
        )

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return w


# -- expectations from the off-chip byte layout --------------------------------------------------


def expect_load(p, w, cmd):
    """(buffer writes, bus addresses) a LOAD must produce, from the memory's bytes."""
    bpw, BB = bus_words_per(p, cmd.buf), w.BB
    wb = word_bits(p, cmd.buf)
    writes, addrs = [], []
    for i in range(cmd.words):
        a = cmd.off + i * bpw
        raw = w.mem[a * BB : (a + bpw) * BB].tobytes()
        writes.append((int(cmd.buf), cmd.sram + i, int.from_bytes(raw, "little") % (1 << wb)))
        addrs += range(a, a + bpw)
    return writes, addrs


def expect_store(p, w, cmd):
    """(bus writes, buffer reads) a STORE must produce: each word's bytes, zero padded to
    ``bpw`` bus words, cut into bus words."""
    bpw, BB = bus_words_per(p, cmd.buf), w.BB
    writes, reads = [], []
    for i in range(cmd.words):
        raw = w.buf_word(cmd.buf, cmd.sram + i).to_bytes(bpw * BB, "little")
        for k in range(bpw):
            writes.append(
                (cmd.off + i * bpw + k, int.from_bytes(raw[k * BB : (k + 1) * BB], "little"))
            )
        reads.append((int(cmd.buf), cmd.sram + i))
    return writes, reads


def check_traffic(kind, p, w, good):
    """The engine moved exactly the words of the accepted commands ``good``, in order."""
    if kind == "load":
        writes, addrs = [], []
        for cmd in good:
            wr, ad = expect_load(p, w, cmd)
            writes += wr
            addrs += ad
        assert [a for _, a in w.bus_reqs] == addrs
        assert len(w.bus_resps) == len(addrs)
        assert w.buf_writes == writes
    else:
        writes, reads = [], []
        for cmd in good:
            wr, rd = expect_store(p, w, cmd)
            writes += wr
            reads += rd
        assert w.buf_reads == reads
        assert w.bus_writes == writes


def random_cmd(p, rng, buf, max_words=6, pc=0):
    words = int(rng.integers(1, max_words + 1))
    sram = int(rng.integers(0, buffer_depth(p, buf) - words + 1))
    off = int(rng.integers(0, mem_words(p) - words * bus_words_per(p, buf) + 1))
    return Cmd(int(buf), sram, words, off, pc)


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["load", "store"])
@pytest.mark.parametrize("pname", PARAMS)
@pytest.mark.parametrize("stalls", [True, False], ids=["stalls", "back_to_back"])
def test_every_buffer(rng, kind, pname, stalls):
    """Every buffer type, random addresses and lengths; with random stalls everywhere, or
    back to back with no stall at all (commands always offered, everything ready)."""
    p = PARAMS[pname]
    cmds = [random_cmd(p, rng, b, max_words=10, pc=i) for i, b in enumerate(list(Buf) * 3)]
    rng.shuffle(cmds)
    world = (
        World(p, rng)
        if stalls
        else World(
            p,
            rng,
            lat=(p.offchip_latency,) * 2,
            gap=0,
            rd_ready=1,
            wr_ready=1,
            buf_ready=1,
            buf_delay=(1, 1),
            cmd_gap=0,
        )
    )
    w = run(kind, p, cmds, world)
    assert w.errs == []
    assert len(w.dones) == len(cmds)
    check_traffic(kind, p, w, cmds)


@pytest.mark.parametrize("kind", ["load", "store"])
@pytest.mark.parametrize("resp_depth", [1, 2])
def test_tiny_response_fifo(rng, kind, resp_depth):
    """With room for only one or two outstanding words the engine runs slowly, but loses
    nothing under random stalls and back-pressure."""
    p = SMALL
    cmds = [random_cmd(p, rng, b, max_words=5, pc=i) for i, b in enumerate(Buf)]
    w = run(kind, p, cmds, World(p, rng), resp_depth=resp_depth)
    assert w.errs == [] and len(w.dones) == len(cmds)
    check_traffic(kind, p, w, cmds)


def error_cases(p):
    """(command, expected code): every check, at the exact boundary and one past, and the
    priority between checks. ``Err.NONE`` commands must go through."""
    M = mem_words(p)

    def D(b):
        return buffer_depth(p, b)

    def bpw(b):
        return bus_words_per(p, b)

    cases = [
        (Cmd(5, 0, 1, 0), Err.BAD_FIELD),
        (Cmd(7, 0, 1, 0), Err.BAD_FIELD),
        (Cmd(6, 0xFFFF, 0xFFFF, 0xFFFFFFFF), Err.BAD_FIELD),  # before the range checks
        (Cmd(int(Buf.ACT), 0, 0, 0), Err.BAD_FIELD),  # words == 0
        (Cmd(int(Buf.ACC), 0xFFFF, 0, 0xFFFFFFFF), Err.BAD_FIELD),
        (Cmd(int(Buf.WGT), 0xFFFF, 0xFFFF, 0xFFFFFFFF), Err.SRAM_RANGE),  # before OFFCHIP
        (Cmd(int(Buf.KV), 0, 1, 0xFFFFFFFF), Err.OFFCHIP_RANGE),
    ]
    for b in Buf:
        n = 2
        cases += [
            (Cmd(int(b), D(b) - n, n, 3), Err.NONE),
            (Cmd(int(b), D(b) - n + 1, n, 3), Err.SRAM_RANGE),
            (Cmd(int(b), D(b), 1, 3), Err.SRAM_RANGE),
            (Cmd(int(b), 5, n, M - n * bpw(b)), Err.NONE),
            (Cmd(int(b), 5, n, M - n * bpw(b) + 1), Err.OFFCHIP_RANGE),
            (Cmd(int(b), 5, 1, M), Err.OFFCHIP_RANGE),
        ]
    for pc, (cmd, _) in enumerate(cases):
        cmd.pc = (pc * 37 + 1) % p.uop_depth
    return cases


@pytest.mark.parametrize("kind", ["load", "store"])
@pytest.mark.parametrize("pname", PARAMS)
def test_errors(rng, kind, pname):
    """Each rejected command reports its code and pc once (with ``done``) and moves nothing;
    the commands at the exact boundaries go through, interleaved with the rejected ones."""
    p = PARAMS[pname]
    cases = error_cases(p)
    order = rng.permutation(len(cases))
    cmds = [cases[i][0] for i in order]
    want = [(cases[i][1], cases[i][0].pc) for i in order if cases[i][1] != Err.NONE]
    w = run(kind, p, cmds, World(p, rng))
    assert w.errs == want
    assert len(w.dones) == len(cmds)
    check_traffic(kind, p, w, [c for c, e in (cases[i] for i in order) if e == Err.NONE])


@pytest.mark.parametrize("kind", ["load", "store"])
def test_errors_alone_move_nothing(rng, kind):
    p = SMALL
    cases = [(c, e) for c, e in error_cases(p) if e != Err.NONE]
    w = run(kind, p, [c for c, _ in cases], World(p, rng, cmd_gap=0))
    assert w.errs == [(e, c.pc) for c, e in cases]
    assert len(w.dones) == len(cases)
    assert w.bus_reqs == w.buf_writes == w.buf_reads == w.bus_writes == []


# -- throughput ----------------------------------------------------------------------------------

LAT = 16
#: Cycles from taking a command (cycle 0) to its ``done``, beyond n bus words and the
#: latency L (hw/dma.py LoadEngine docstring): CHECK cycles in the check register, then the
#: first request is offered 2 cycles after the acceptance, so the last bus word arrives in
#: CHECK + 2 + L + n - 1; 2 cycles through the response FIFO (SyncFIFOBuffered), 1 in the
#: output register, then the registered done: n + L + CHECK + 5.
LOAD_OVERHEAD = LoadEngine.CHECK + 5
#: STORE, the arbiter answering D cycles after a request: first read offered in cycle
#: CHECK + 2, its word in the response FIFO (SyncFIFO) in CHECK + 3 + D, first bus write
#: offered in CHECK + 4 + D, the last n - 1 cycles later, then the registered done:
#: n + D + CHECK + 4.
STORE_OVERHEAD = StoreEngine.CHECK + 4


def fast_world(p, rng, lat=LAT, buf_delay=1):
    return World(
        p,
        rng,
        lat=(lat, lat),
        gap=0,
        rd_ready=1,
        wr_ready=1,
        buf_ready=1,
        buf_delay=(buf_delay, buf_delay),
        cmd_gap=0,
    )


@pytest.mark.parametrize("buf, words", [(Buf.WGT, 256), (Buf.ACC, 32), (Buf.ACT, 86)])
def test_load_throughput(rng, buf, words):
    """One bus word per cycle: a LOAD of n bus words is done n + latency + LOAD_OVERHEAD
    cycles after it was taken, whatever the buffer (bpw 1, 8 or 3 on the default chip)."""
    p = ChipParams(offchip_latency=LAT)
    cmd = Cmd(int(buf), 0, words, 100)
    w = run("load", p, [cmd], fast_world(p, rng))
    n = words * bus_words_per(p, buf)
    took = w.dones[0] - w.accepted[0]
    print(
        f"LOAD {buf.name} {n} bus words, latency {LAT}: {took} cycles "
        f"(n + latency + {took - n - LAT})"
    )
    assert took <= n + LAT + LOAD_OVERHEAD
    check_traffic("load", p, w, [cmd])


def test_load_back_to_back_throughput(rng):
    """Commands overlap: k LOADs of n bus words in all take n + k + latency + LOAD_OVERHEAD
    cycles (one cycle per command to accept it), not k times the latency."""
    p = ChipParams(offchip_latency=LAT)
    cmds = [Cmd(int(Buf.WGT), i * 64, 64, 1000 + i * 64) for i in range(4)] + [
        Cmd(int(Buf.ACT), 0, 10, 0),
        Cmd(int(Buf.KV), 0, 30, 40),
    ]
    n = sum(c.words * bus_words_per(p, c.buf) for c in cmds)
    w = run("load", p, cmds, fast_world(p, rng))
    took = w.dones[-1] - w.accepted[0]
    print(
        f"{len(cmds)} LOADs back to back, {n} bus words: {took} cycles "
        f"({n / took:.3f} bus words per cycle)"
    )
    assert took <= n + len(cmds) + LAT + LOAD_OVERHEAD
    check_traffic("load", p, w, cmds)


@pytest.mark.parametrize("buf, words", [(Buf.WGT, 256), (Buf.PRM, 24)])
@pytest.mark.parametrize("delay", [1, 2])
def test_store_throughput(rng, buf, words, delay):
    """One bus word per cycle while the arbiter answers within resp_depth - 3 cycles."""
    p = DEFAULT
    cmd = Cmd(int(buf), 0, words, 100)
    w = run("store", p, [cmd], fast_world(p, rng, buf_delay=delay))
    n = words * bus_words_per(p, buf)
    took = w.dones[0] - w.accepted[0]
    print(
        f"STORE {buf.name} {n} bus words, arbiter delay {delay}: {took} cycles "
        f"(n + delay + {took - n - delay})"
    )
    assert took <= n + delay + STORE_OVERHEAD
    check_traffic("store", p, w, [cmd])


# -- abort --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["load", "store"])
@pytest.mark.parametrize("abort_len", [1, 60])
def test_abort(rng, kind, abort_len):
    """``abort`` mid-command: the command stops (no done; what it wrote is a correct
    prefix), every request already sent is answered and drained, ``busy`` falls (also while
    ``abort`` is still high), and the next command runs correctly."""
    p = SMALL
    first = Cmd(int(Buf.ACC), 10, 40, 0) if kind == "store" else Cmd(int(Buf.WGT), 0, 300, 0)
    second = Cmd(int(Buf.ACT), 100, 7, 5000, after_abort=True)
    world = World(p, rng, lat=(p.offchip_latency, p.offchip_latency + 8))
    w = run(kind, p, [first, second], world, abort_after=12, abort_len=abort_len)
    a0, a1 = w.abort_cycles[0], w.abort_cycles[-1]
    assert w.dones and len(w.dones) == 1 and w.dones[0] > w.accepted[1]
    assert w.errs == []
    if kind == "load":
        want1, addrs1 = expect_load(p, w, first)
        want2, addrs2 = expect_load(p, w, second)
        n1 = len(w.buf_writes) - second.words
        assert w.buf_writes[:n1] == want1[:n1] and w.buf_writes[n1:] == want2
        assert n1 < first.words
        reqs = [a for _, a in w.bus_reqs]
        r1 = len(reqs) - len(addrs2)
        assert reqs[:r1] == addrs1[:r1] and reqs[r1:] == addrs2
        # at most the request already offered goes out after abort; all of them are
        # answered before the second command is taken
        assert sum(c > a0 for c, _ in w.bus_reqs[:r1]) <= 1
        assert len(w.bus_resps) == len(reqs)
        assert w.bus_resps[r1 - 1] < w.accepted[1]
    else:
        want1, reads1 = expect_store(p, w, first)
        want2, reads2 = expect_store(p, w, second)
        n1 = len(w.bus_writes) - len(want2)
        assert w.bus_writes[:n1] == want1[:n1] and w.bus_writes[n1:] == want2
        assert n1 < len(want1)
        r1 = len(w.buf_reads) - len(reads2)
        assert w.buf_reads[:r1] == reads1[:r1] and w.buf_reads[r1:] == reads2
    # drained while abort is still high (abort_len 60 outlasts the worst response delay)
    if abort_len > 1:
        assert any(a0 < c <= a1 for c in w.busy_low)
    print(
        f"{kind}: abort at cycle {a0} for {abort_len}, busy low again at cycle "
        f"{min(c for c in w.busy_low if c > a0)}"
    )

"""``sim.chip_rtl.RtlSession``: the chip on Verilator driven the way a host drives a board.

One session (the default ``ChipParams()``: the build ``tests/test_chip_rtl.py`` uses, no extra
one) and one ``sim.isa_sim.IsaSim`` get the same host writes and jobs (:class:`Twin`); every
read, job status, ``pos`` and untimed counter must agree, and the results of the programs
must equal the golden model's:

- weight GEMMs from the initial (bulk-loaded) image;
- attention over the KV cache across runs: each step's program and input rows are written by
  the host into ONE slot of off-chip memory, overwriting the step before (as
  ``sw.programs.attention_step`` lays them out), the keys / values appended in earlier runs
  stay on chip, and each run's QKᵀ and P·V are read back;
- region writes and reads at the first and last bus words, odd lengths, partial bus words,
  and out-of-range regions refused;
- a chip error (an illegal micro-op) is the job's ``error`` and the session goes on;
- a job out of cycles raises ``ChipTimeout`` and the session goes on;
- the whole memory equals IsaSim's at the end;
- a killed simulator and one that does not answer in time raise ``RtlSessionError``;
- (slow, one small build per width) the storage's region ports at bus widths of 1 to 128
  bytes, against a ``$writememh`` dump.

Random data: seed printed; replay with SESSION_SEED=<seed>. Round-trip costs are printed
(``-s``); ``scripts/bench_rtl_session.py`` measures them and the bulk load.
"""

import json
import os
import shutil
import signal
import time

import numpy as np
import pytest

from hw.isa import Buf, Counter, Err, Op, bus_words_per, encode
from hw.params import ChipParams
from sim import golden as G
from sim.chip_rtl import ChipTimeout, RtlSession, RtlSessionError
from sim.isa_sim import UNTIMED_COUNTERS, IsaSim
from sim.offchip import (
    STORAGE_VERILOG,
    OffchipMemory,
    offchip_words,
    read_memh,
    read_region_bin,
    write_region_bin,
)
from sim.rtl import BUILD, run_cocotb
from sw.programs import Image, KvHead, acc_words, attention_step, raw_op, weight_gemm
from sw.quantize import random_gemm, to_wide

SEED = int(os.environ.get("SESSION_SEED", np.random.SeedSequence().entropy % 2**32))
P = ChipParams()
C, PC = P.cols, P.cols // 2
B = P.offchip_bytes_per_cycle
NBUS = P.offchip_kib * 1024 // B
ACC_BUS = bus_words_per(P, Buf.ACC)
#: Bus words 0 .. LOW - 1 and the last HIGH are the boundary tests' scratch.
LOW, HIGH = 64, 1024
#: Where the host writes each attention step's program and rows.
SLOT = 60_000
ATT_D, ATT_CAP, ATT_SHIFT = 32, 32, 9
ATT_STEPS = [3, 1, 1, 5, 1, 1]


class Twin:
    """An RtlSession and an IsaSim fed the same host operations, compared on every one."""

    def __init__(self, session: RtlSession, isa: IsaSim):
        self.rtl, self.isa = session, isa

    def write(self, addr, data):
        self.rtl.write(addr, data)
        self.isa.write_offchip(addr, np.asarray(data, np.uint8))

    def read(self, addr, n):
        got = self.rtl.read(addr, n)
        want = self.isa.read_offchip(addr, n)
        diff = np.flatnonzero(got != want)
        assert diff.size == 0, (f"{diff.size} bytes of bus words {addr}..{addr + n - 1} "
                                f"differ from IsaSim's, first at bus word {addr + diff[0] // B}")
        return got

    def run(self, addr, n, pos_init=0, **kw):
        r = self.rtl.run(addr, n, pos_init, **kw)
        self.isa.boot(addr, n, pos_init)
        self.isa.run()
        assert not r.range_error
        assert (r.error, r.error_pc, r.pos) == (self.isa.error, self.isa.error_pc, self.isa.pos)
        got = {k: r.counters[k] for k in UNTIMED_COUNTERS}
        want = {k: self.isa.counters[k] for k in UNTIMED_COUNTERS}
        if r.error != Err.NONE:
            # the sequential model stops counting at the failing op; the chip's sequencer may
            # issue later ops before the error arrives (tests/test_chip_rtl.py)
            assert 0 <= got[Counter.UOPS] - want[Counter.UOPS] < n - r.error_pc
            got[Counter.UOPS] = want[Counter.UOPS]
        assert got == want
        return r


def gemm_problem(rng, img, bits, T, K, N, **kw):
    x, qw, bias = random_gemm(rng, T, K, N, bits)
    x8, xs = G.quantize_rows(x)
    wg = weight_gemm(P, img, x8, xs, qw, bias, exp_rng=rng, **kw)
    addr, n = img.put_program(wg.prog)
    return wg, G.gemm(x8, xs, qw, bias), addr, n


class Plan:
    """The initial image: GEMM programs and their data from bus word LOW on."""

    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        self.img = Image(P)
        self.img.reserve(Buf.WGT, LOW)  # the low scratch (WGT: one bus word each)
        self.gemms = [gemm_problem(rng, self.img, 8, 5, 96, 37, n_ops=2),
                      gemm_problem(rng, self.img, 4, 3, 128, 50, k_ops=2, double_buffer=True)]
        assert self.img.next < SLOT
        self.image = self.img.mem[: self.img.next * B].copy()


PLAN = Plan(SEED)


@pytest.fixture(scope="module")
def twin():
    print(f"SESSION_SEED={SEED}")
    t0 = time.perf_counter()
    with RtlSession(P, PLAN.image) as s:
        print(f"session started in {time.perf_counter() - t0:.1f} s (image of "
              f"{PLAN.image.size} bytes loaded in {s.load_s * 1e3:.1f} ms)")
        yield Twin(s, IsaSim(P, PLAN.image))


def test_initial_image(twin):
    twin.read(0, PLAN.img.next + 16)


def test_gemms_from_the_image(twin):
    for wg, want, addr, n in PLAN.gemms:
        r = twin.run(addr, n)
        assert r.error == Err.NONE
        out = twin.read(wg.out_off, wg.T * wg.nb * ACC_BUS)
        mem = np.zeros(NBUS * B, np.uint8)
        mem[wg.out_off * B : wg.out_off * B + out.size] = out
        assert np.array_equal(wg.result(mem), want)
        assert {k: r.counters[k] for k in UNTIMED_COUNTERS} == wg.counters


def test_attention_state_persists_across_runs(twin):
    """The KV cache (and the P·V parameters, loaded by the first step only) stay on chip
    between runs while the host rewrites the one slot that holds each step's program and
    rows; every step's QKᵀ over all earlier keys and P·V over all earlier values are the
    golden model's."""
    rng = np.random.default_rng(SEED + 1)
    head = KvHead(P, ATT_D, ATT_CAP, base=1024)
    S = sum(ATT_STEPS)
    k8, ks = G.quantize_rows(to_wide(rng.normal(size=(S, ATT_D)) * 3))
    v8, vs = G.quantize_rows(to_wide(rng.normal(size=(S, ATT_D))), group=None)
    pos = 0
    for i, t_len in enumerate(ATT_STEPS):
        vis = pos + t_len
        q8, qs = G.quantize_rows(to_wide(rng.normal(size=(t_len, ATT_D))))
        p15, ps = G.quantize_rows(rng.integers(0, 1 << 20, size=(t_len, vis)), bits=15)
        p15 = p15.astype(np.int64)
        step_img = Image(P)
        step_img.next = SLOT
        st = attention_step(head, step_img, pos, k8[pos:vis], ks[pos:vis], v8[pos:vis],
                            vs[pos:vis], q8, qs, p15, ps, shift=ATT_SHIFT, load_prm=i == 0,
                            prm_base=40, setpos=False)
        addr, n = step_img.put_program(st.prog)
        twin.write(SLOT, step_img.mem[SLOT * B : step_img.next * B])
        r = twin.run(addr, n, pos_init=pos)
        assert r.error == Err.NONE and r.pos == pos
        assert {k: r.counters[k] for k in UNTIMED_COUNTERS} == st.counters
        qk_raw = twin.read(st.qk_off, t_len * st.nq * ACC_BUS)
        pv_raw = twin.read(st.pv_off, t_len * st.nv * ACC_BUS)
        qk = acc_words(P, qk_raw, 0, t_len * st.nq).reshape(t_len, st.nq, C)
        pv = acc_words(P, pv_raw, 0, t_len * st.nv).reshape(t_len, st.nv, C)
        assert np.array_equal(qk[:, :, :PC].reshape(t_len, -1)[:, :vis],
                              G.gemm_act(q8, qs, k8[:vis], ks[:vis])), f"QKᵀ at pos {pos}"
        assert np.array_equal(pv[:, :, :PC].reshape(t_len, -1),
                              G.gemm_act(p15, ps, v8[:vis].T, None, shift=ATT_SHIFT)), \
            f"P·V at pos {pos}"
        pos = vis


@pytest.mark.parametrize("addr,nbytes", [
    (0, 1), (0, B), (1, 3 * B + 5), (5, 37), (LOW - 1, B), (NBUS - 1, B), (NBUS - 1, 3),
    (NBUS - 3, 3 * B), (NBUS - HIGH, HIGH * B), (NBUS - 700, 4097)])
def test_region_boundaries(twin, addr, nbytes):
    """Writes keep the bytes after a partial last bus word; reads are exact at both ends of
    the memory (the whole scratch region around the write is compared with IsaSim's)."""
    rng = np.random.default_rng([SEED, addr, nbytes])
    twin.write(addr, rng.integers(0, 256, nbytes, dtype=np.uint8))
    for lo, hi in ((0, LOW), (NBUS - HIGH, NBUS)):
        twin.read(lo, hi - lo)
    twin.read(addr, 1)
    twin.read(NBUS - 1, 1)
    assert twin.rtl.read(addr, 0).size == 0


@pytest.mark.parametrize("addr,n", [(-1, 1), (NBUS, 1), (NBUS - 1, 2), (0, NBUS + 1)])
def test_region_out_of_range(twin, addr, n):
    with pytest.raises(ValueError, match="off-chip memory"):
        twin.rtl.read(addr, n)
    with pytest.raises(ValueError, match="off-chip memory"):
        twin.rtl.write(addr, np.zeros(n * B, np.uint8))


def test_chip_error_then_usable(twin):
    """An illegal micro-op ends the job with ILLEGAL_OP at its pc; the next job runs."""
    prog = Image(P)
    prog.next = LOW - 8  # in the low scratch
    a, n = prog.put_program([encode(Op.NOP), raw_op(0x04), encode(Op.HALT)])
    twin.write(a, prog.mem[a * B : prog.next * B])
    r = twin.run(a, n)
    assert (r.error, r.error_pc) == (Err.ILLEGAL_OP, 1)
    wg, want, addr, n = PLAN.gemms[0]
    assert twin.run(addr, n).error == Err.NONE
    twin.read(wg.out_off, wg.T * wg.nb * ACC_BUS)


def test_chip_timeout_then_usable(twin):
    """A job out of cycles raises ChipTimeout with its counters; the chip is reset and the
    next job runs. (A LOAD into WGT only, so memory and the other buffers are unaffected;
    the ISA twin does not run it.)"""
    load = Image(P)
    load.next = LOW - 16
    a, n = load.put_program([encode(Op.LOAD, buf=Buf.WGT, sram=0, words=4096, off=LOW),
                             encode(Op.HALT)])
    twin.write(a, load.mem[a * B : load.next * B])
    with pytest.raises(ChipTimeout, match="max_cycles = 3000") as exc:
        twin.rtl.run(a, n, interval=255, max_cycles=3000)
    assert exc.value.result.timed_out and exc.value.result.counters[Counter.CYCLES] >= 2990
    wg, want, addr, n = PLAN.gemms[1]
    assert twin.run(addr, n).error == Err.NONE
    twin.read(wg.out_off, wg.T * wg.nb * ACC_BUS)


def test_round_trip_costs(twin):
    """Prints what a host step costs: a 4 KiB write, a small job, a 256 KiB read."""
    s = twin.rtl
    wg, _, addr, n = PLAN.gemms[0]
    data = np.random.default_rng(SEED).integers(0, 256, 4096, dtype=np.uint8)
    a = NBUS - HIGH
    costs = {}
    for name, f in (("write 4 KiB", lambda: s.write(a, data)),
                    ("run a small GEMM", lambda: s.run(addr, n)),
                    ("read 256 KiB", lambda: s.read(NBUS - 32768, 32768))):
        t = []
        for _ in range(5):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
        costs[name] = f"{np.median(t) * 1e3:.1f} ms"
    twin.isa.write_offchip(a, data)
    print(f"round trips (median of 5): {costs}; the GEMM took "
          f"{s.run(addr, n).counters[Counter.CYCLES]} cycles")


def test_whole_memory_equals_isa(twin):
    twin.read(0, NBUS)


# -- the simulator itself failing ----------------------------------------------------------------


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_killed_simulator_raises():
    s = RtlSession(P)
    s.write(0, b"\1" * B)
    os.kill(s.pid, signal.SIGKILL)
    with pytest.raises(RtlSessionError, match="simulator exited while reading") as exc:
        s.read(0, 1)
    assert str(s.log) in str(exc.value)
    with pytest.raises(RtlSessionError, match="closed"):
        s.write(0, b"\0")
    s.close()
    shutil.rmtree(s.run_dir, ignore_errors=True)


def test_silent_simulator_is_killed():
    """A job far longer than the host's timeout: the host stops waiting, kills the
    simulator and says so."""
    image = Image(P)
    a, n = image.put_program([encode(Op.LOAD, buf=Buf.WGT, sram=0, words=8192, off=0),
                              encode(Op.HALT)])
    s = RtlSession(P, image.mem[: image.next * B])
    with pytest.raises(RtlSessionError, match="did not answer while running") as exc:
        s.run(a, n, interval=255, max_cycles=10**9, timeout_s=1.0)
    assert not isinstance(exc.value, ChipTimeout) and str(s.log) in str(exc.value)
    assert _gone(s.pid)
    s.close()
    shutil.rmtree(s.run_dir, ignore_errors=True)


# -- the storage's region ports at other bus widths ----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("bus_bytes", [1, 2, 4, 16, 128])
def test_storage_regions_any_width(bus_bytes):
    """``load`` / ``save`` of the Verilog storage (what RtlSession's write / read use) at bus
    widths other than the chip build's, where Verilator's $fread / $fwrite take other code
    paths (bytes, 32-bit units, wide words): each loaded region shows up in a ``$writememh``
    dump of the whole memory (an independent path) and saves back exactly; the memory starts
    at 0 and words outside the regions stay as they were. One small build per width."""
    p = ChipParams(offchip_bytes_per_cycle=bus_bytes, offchip_kib=1)
    words = offchip_words(p)
    rng = np.random.default_rng([SEED, bus_bytes])
    steps = [(0, 0), (words - 1, words - 1), (0, words - 1), (1, min(2, words - 1))]
    steps += [tuple(sorted(rng.integers(0, words, 2).tolist())) for _ in range(4)]
    name = f"offchip_regions_b{bus_bytes}"
    run = BUILD / name / "regions"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    mem = np.zeros((words, bus_bytes), np.uint8)
    want_dump, want_save = [], []
    for i, (first, last) in enumerate(steps):
        data = rng.integers(0, 256, (last - first + 1, bus_bytes), dtype=np.uint8)
        write_region_bin(run / f"load_{i}.bin", data, bus_bytes)
        mem[first : last + 1] = data
        want_dump.append(mem.copy())
        want_save.append(data)
    run_cocotb(OffchipMemory(p, storage="verilog"), "offchip_top", "tests.rtl.tb_offchip_region",
               name=name, sources=[STORAGE_VERILOG], run_dir=run,
               plusargs=[f"+offchip_load={run / 'load.bin'}", f"+offchip_save={run / 'save.bin'}",
                         f"+offchip_dump={run / 'dump.hex'}"],
               extra_env={"REGION_STEPS": json.dumps(steps), "REGION_DIR": str(run)})
    for i, (first, last) in enumerate(steps):
        dump = read_memh(run / f"dump_{i}.hex", bus_bytes, words=words).reshape(words, -1)
        assert np.array_equal(dump, want_dump[i]), f"step {i} ({first}..{last}): dump"
        saved = read_region_bin(run / f"save_{i}.bin", bus_bytes, last - first + 1)
        assert np.array_equal(saved.reshape(-1, bus_bytes), want_save[i]), f"step {i}: save"

"""The whole chip (``hw/chip.py``) on Verilator against the ISA simulator and the golden model.

One off-chip image holds every program and its data (``sw/programs.py``: encoded only with
``hw.isa.encode`` / ``raw_op``, laid out with the ``hw/isa.py`` codec); ONE
``sim.chip_rtl.run_jobs`` call runs all jobs one after the other on one Verilator simulation
(``ChipSim`` with the default ``ChipParams``), so the on-chip buffers (KV cache, PRM words,
the scaler's sums) carry over from job to job exactly as the same jobs carry over on one
``sim.isa_sim.IsaSim`` (``sim.isa_sim.isa_jobs``). The module-scoped fixtures run both once;
the test functions only check their results:

1. weight GEMMs, load -> GEMM -> store, INT8 and W4A8, N split over several micro-ops and K
   split into chained ``first`` / ``final`` ops, with and without double-buffered weight
   loads: stored results == ``sim.golden.gemm``, the whole memory, error, ``pos`` and the
   counters UOPS / GRID_ROWS / LOAD_WORDS / STORE_WORDS == IsaSim's (and ``WeightGemm``'s);
   one job where a LOAD into ACC runs beside the GEMMs writing ACC and a LOAD into KV beside
   KV_APPENDs (shared write ports, disjoint words);
2. attention on the KV cache over 32 positions (a 3-token prefill, 21 single-token decode
   jobs, a 6-token step, one job holding two decode steps): KV_APPEND of keys and values,
   QKᵀ and the A15 P·V with ``dyn = POS``; the cache and the P·V parameters stay on chip
   between jobs; results == ``sim.golden.gemm_act``, memory / ``pos`` / counters ==
   IsaSim's; every job with its own random memory latency jitter and bandwidth;
3. stalls: one double-buffered GEMM program under interval 0 / 1 / 2 / 3 and two jitter
   settings: identical results, CYCLES grows with slower memory;
4. errors: every case of ``sw.programs.error_cases`` and the boot errors end with the
   expected ``Err`` at the expected pc, within a small cycle budget, with memory outside the
   program's STORE destinations untouched; errors that abort units in flight (an illegal op
   behind running GEMMs and loads, a failing LOAD during a long STORE, a failing GEMM queued
   behind a running one), each followed by a valid job that must run correctly.

Random data: seed printed; replay with CHIP_SEED=<seed>.
"""

import os
from dataclasses import dataclass, field

import numpy as np
import pytest

from hw.isa import (
    Buf,
    Counter,
    Err,
    KvKind,
    Op,
    Unit,
    buffer_depth,
    bus_words_per,
    decode,
    encode,
)
from hw.params import ChipParams
from sim import golden as G
from sim.chip_rtl import Job, run_jobs
from sim.isa_sim import UNTIMED_COUNTERS, IsaSim
from sw.programs import (
    AttentionStep,
    Image,
    KvHead,
    WeightGemm,
    acc_words,
    act_fields,
    attention_step,
    error_cases,
    raw_op,
    weight_gemm,
)
from sw.quantize import random_gemm, to_wide

SEED = int(os.environ.get("CHIP_SEED", np.random.SeedSequence().entropy % 2**32))
P = ChipParams()
R, C, PC = P.rows, P.cols, P.cols // 2
B = P.offchip_bytes_per_cycle
NBUS = P.offchip_kib * 1024 // B
#: Counters both the RTL and the ISA simulator count.
UNTIMED = UNTIMED_COUNTERS
#: Cycle budget of a job of the error programs (boot included): the job's max_cycles.
ERR_BUDGET = 3000
#: Cycles within which a failing one-op error program must be done (boot included).
ERR_CYCLES = 200

# name, weight bits, T, K, N, n_ops, k_ops, double_buffer, base offsets
GEMM_CASES = [
    ("int8_single", 8, 5, 96, 37, 1, 1, False, None),
    ("int8_n_split", 8, 3, 128, 40, 3, 1, False, dict(wgt=5, act=3, prm=2, acc=7)),
    ("int8_nk_split", 8, 4, 128, 45, 3, 2, False, None),
    ("int8_nk_split_db", 8, 4, 128, 45, 3, 2, True, dict(wgt=9, act=1, prm=4, acc=3)),
    ("w4a8_single", 4, 4, 96, 37, 1, 1, False, dict(wgt=5, act=3, prm=2, acc=7)),
    ("w4a8_k_split", 4, 3, 128, 50, 1, 3, False, None),
    ("w4a8_nk_split_db", 4, 3, 128, 64, 2, 2, True, None),
    ("w4a8_nk_split_db_long", 4, 7, 192, 100, 4, 3, True, dict(wgt=17, act=11, prm=6, acc=2)),
]
# name, interval, jitter (/256), jitter_max, seed
STALLS = [
    ("interval0", 0, 0, 0, 1),
    ("interval1", 1, 0, 0, 1),
    ("interval2", 2, 0, 0, 1),
    ("interval3", 3, 0, 0, 1),
    ("jitter", 0, 96, 24, 7),
    ("jitter_interval2", 2, 200, 9, 12345),
]
ATT_D, ATT_CAP, ATT_SHIFT = 32, 32, 9
#: tokens per step, one job each (the 6-token step crosses a key block of PC = 8 and a value
#: K-tile of R = 16); then one job with two single-token steps, filling the cache to ATT_CAP
ATT_STEPS = [3] + [1] * 10 + [6] + [1] * 11


@dataclass
class Entry:
    """One job of the run and what to check after it."""

    name: str
    kind: str             # gemm, attn, clear, stall, error, boot, abort, recover
    job: Job
    prog: list            # the micro-ops (for STORE destinations)
    err: Err = Err.NONE
    err_pc: int = 0
    exact: bool = True    # memory and counters must equal IsaSim's
    wg: WeightGemm | None = None
    want: object = None   # golden result(s)
    steps: list = field(default_factory=list)  # (AttentionStep, want_qk, want_pv)
    budget: int | None = None  # CYCLES bound


@dataclass
class Plan:
    image: np.ndarray
    entries: list


def store_ranges(prog, upto: int):
    """Bus-word ranges [a, b) written by the STOREs among the first ``upto`` micro-ops."""
    out = []
    for w in prog[:upto]:
        op, f = decode(w)
        if op == Op.STORE:
            out.append((f["off"], f["off"] + f["words"] * bus_words_per(P, f["buf"])))
    return out


def build_plan(seed: int) -> Plan:
    rng = np.random.default_rng(seed)
    img = Image(P)
    # bus words 0.. are the STORE destination of some error cases (up to two ACC words)
    img.reserve(Buf.ACC, 4)
    entries = []

    def add(name, kind, prog, job_kw=None, **kw):
        addr, n = img.put_program(prog)
        job = Job(addr, n, **(job_kw or {}))
        entries.append(Entry(name, kind, job, prog, **kw))
        return entries[-1]

    def gemm_problem(bits, T, K, N, **kw):
        x, qw, bias = random_gemm(rng, T, K, N, bits)
        x8, xs = G.quantize_rows(x)
        wg = weight_gemm(P, img, x8, xs, qw, bias, exp_rng=rng, **kw)
        return wg, G.gemm(x8, xs, qw, bias)

    # -- 1. weight GEMMs
    for name, bits, T, K, N, n_ops, k_ops, db, base in GEMM_CASES:
        wg, want = gemm_problem(bits, T, K, N, n_ops=n_ops, k_ops=k_ops, double_buffer=db,
                                base=base)
        assert len(wg.ops) == min(n_ops, wg.nb) * k_ops
        add(f"gemm_{name}", "gemm", wg.prog, wg=wg, want=want)

    # units sharing a buffer's write port at once, on disjoint words (no WAIT needed): a LOAD
    # into ACC while GEMMs write their outputs there, a LOAD into KV while KV_APPENDs write
    # byte lanes of other KV words
    wg, want = gemm_problem(8, 8, 256, 64, n_ops=4, k_ops=2)
    assert [decode(w)[0] for w in wg.prog[-3:]] == [Op.WAIT, Op.STORE, Op.HALT]
    kvh = KvHead(P, 32, 16, base=12000)
    k8, ks = G.quantize_rows(to_wide(rng.normal(size=(8, kvh.d)) * 3))
    v8, vs = G.quantize_rows(to_wide(rng.normal(size=(8, kvh.d))), group=None)
    rows = [act_fields(R, k8, ks.mant, ks.exp, ks.group),
            act_fields(R, v8, vs.mant, vs.exp, vs.group)]
    kv_act = 3000
    a_off, a_n = img.put(Buf.ACT, {f: np.concatenate([r[f] for r in rows]) for f in rows[0]})
    n_acc, n_kv = 100, 300
    acc_src = img.put_bytes(rng.integers(0, 256, n_acc * bus_words_per(P, Buf.ACC) * B,
                                         dtype=np.uint8))
    kv_src = img.put_bytes(rng.integers(0, 256, n_kv * bus_words_per(P, Buf.KV) * B,
                                        dtype=np.uint8))
    acc_dst = img.reserve(Buf.ACC, n_acc)
    kv_dst = img.reserve(Buf.KV, n_kv)
    head_dst = img.reserve(Buf.KV, kvh.end - kvh.base)
    prog = wg.prog[:-3] + [
        encode(Op.LOAD, buf=Buf.ACT, sram=kv_act, words=a_n, off=a_off),
        encode(Op.WAIT, unit=Unit.LOAD, count=0),
        encode(Op.LOAD, buf=Buf.KV, sram=10000, words=n_kv, off=kv_src),
        kvh.append(KvKind.KEY, 8, kv_act),
        kvh.append(KvKind.VALUE, 8, kv_act + 8 * kvh.words_per_row),
        encode(Op.LOAD, buf=Buf.ACC, sram=700, words=n_acc, off=acc_src),
        encode(Op.WAIT, unit=Unit.GEMM, count=0),
        encode(Op.WAIT, unit=Unit.LOAD, count=0),
        encode(Op.WAIT, unit=Unit.KV, count=0),
        *wg.prog[-2:-1],
        encode(Op.STORE, buf=Buf.ACC, sram=700, words=n_acc, off=acc_dst),
        encode(Op.STORE, buf=Buf.KV, sram=10000, words=n_kv, off=kv_dst),
        encode(Op.STORE, buf=Buf.KV, sram=kvh.base, words=kvh.end - kvh.base, off=head_dst),
        encode(Op.HALT)]
    add("concurrent_writes", "concurrent", prog, dict(pos_init=5), wg=wg, want=want)

    # -- 2. attention over the KV cache (base clear of the error cases' KV words)
    head = KvHead(P, ATT_D, ATT_CAP, base=2048)
    S = sum(ATT_STEPS) + 2
    k8, ks = G.quantize_rows(to_wide(rng.normal(size=(S, ATT_D)) * 3))
    v8, vs = G.quantize_rows(to_wide(rng.normal(size=(S, ATT_D))), group=None)

    def step(pos, t_len, **kw):
        q8, qs = G.quantize_rows(to_wide(rng.normal(size=(t_len, ATT_D))))
        vis = pos + t_len
        p15, ps = G.quantize_rows(rng.integers(0, 1 << 20, size=(t_len, vis)), bits=15)
        p15 = p15.astype(np.int64)
        st = attention_step(head, img, pos, k8[pos:vis], ks[pos:vis], v8[pos:vis],
                            vs[pos:vis], q8, qs, p15, ps, shift=ATT_SHIFT, **kw)
        want_qk = G.gemm_act(q8, qs, k8[:vis], ks[:vis])
        want_pv = G.gemm_act(p15, ps, v8[:vis].T, None, shift=ATT_SHIFT)
        return st, want_qk, want_pv

    def mem_cfg():
        return dict(interval=int(rng.integers(0, 3)), jitter=int(rng.choice([0, 64, 255])),
                    jitter_max=int(rng.integers(0, 20)), seed=int(rng.integers(1, 2**31)))

    pos = 0
    for i, t_len in enumerate(ATT_STEPS):
        s = step(pos, t_len, load_prm=i == 0, prm_base=40)
        add(f"attn_{i:02d}_pos{pos}", "attn", s[0].prog, dict(pos_init=pos, **mem_cfg()),
            steps=[s])
        pos += t_len
    # two decode steps in one job: the second's GEMMs follow the first's SETPOS
    s1 = step(pos, 1, load_prm=False, prm_base=40)
    s2 = step(pos + 1, 1, load_prm=False, prm_base=40, act_base=200, acc_base=100)
    add(f"attn_{len(ATT_STEPS):02d}_pos{pos}_two_steps", "attn", s1[0].prog[:-1] + s2[0].prog,
        dict(pos_init=pos, **mem_cfg()), steps=[s1, s2])
    assert pos + 2 == S == ATT_CAP

    # -- 3. one program under several memory speeds; a clear job zeroes its output first
    wg, want = gemm_problem(4, 4, 128, 64, n_ops=4, double_buffer=True)
    n_out = wg.T * wg.nb
    zero_off = img.reserve(Buf.ACC, n_out)
    clear = [encode(Op.LOAD, buf=Buf.ACC, sram=512, words=n_out, off=zero_off),
             encode(Op.WAIT, unit=Unit.LOAD, count=0),
             encode(Op.STORE, buf=Buf.ACC, sram=512, words=n_out, off=wg.out_off),
             encode(Op.HALT)]
    clear_addr, clear_n = img.put_program(clear)
    stall_addr, stall_n = img.put_program(wg.prog)
    for name, interval, jitter, jitter_max, jseed in STALLS:
        entries.append(Entry(f"clear_{name}", "clear", Job(clear_addr, clear_n), clear))
        job = Job(stall_addr, stall_n, interval=interval, jitter=jitter, jitter_max=jitter_max,
                  seed=jseed)
        entries.append(Entry(f"stall_{name}", "stall", job, wg.prog, wg=wg, want=want))

    # -- 4. errors
    for c in error_cases(P):
        prog = c.prefix + [c.op, encode(Op.HALT)]
        add(f"error_{c.name}", "error", prog, dict(max_cycles=ERR_BUDGET), err=c.err,
            err_pc=len(c.prefix) if c.err != Err.NONE else 0, budget=ERR_BUDGET)
    e = add("boot_prog_range", "boot", [encode(Op.NOP), encode(Op.SETPOS, value=3)],
            dict(max_cycles=ERR_BUDGET), err=Err.PROG_RANGE, err_pc=2, budget=ERR_BUDGET)
    entries.append(Entry("boot_empty", "boot", Job(e.job.prog_addr, 0, max_cycles=ERR_BUDGET),
                         [], err=Err.PROG_RANGE, err_pc=0, budget=ERR_BUDGET))
    entries.append(Entry("boot_too_long", "boot",
                         Job(e.job.prog_addr, P.uop_depth + 1, max_cycles=ERR_BUDGET), [],
                         err=Err.PROG_LOAD, err_pc=0, budget=ERR_BUDGET))
    entries.append(Entry("boot_beyond_memory", "boot",
                         Job(NBUS - 1, 1, max_cycles=ERR_BUDGET), [], err=Err.PROG_LOAD,
                         err_pc=0, budget=ERR_BUDGET))

    n_rec = 0

    def recover(pos_init=0):
        nonlocal n_rec
        bits = 4 if n_rec % 2 else 8
        wg, want = gemm_problem(bits, 2, 64, 20, n_ops=2, k_ops=2, double_buffer=n_rec % 2 == 1)
        add(f"recover_{n_rec}", "recover", wg.prog, dict(pos_init=pos_init), wg=wg, want=want)
        n_rec += 1

    recover(pos_init=7)

    # an illegal op while loads and GEMMs are in flight (no WAIT before it)
    wg, _ = gemm_problem(4, 6, 128, 64, n_ops=2, k_ops=2)
    at = next(i for i, w in enumerate(wg.prog) if decode(w)[0] == Op.GEMM) + 1
    prog = wg.prog[:at] + [raw_op(0x04)] + wg.prog[at:]
    add("abort_illegal_in_flight", "abort", prog, dict(max_cycles=20000), err=Err.ILLEGAL_OP,
        err_pc=at, exact=False)
    recover()

    # a LOAD fails (SRAM_RANGE) while a long STORE runs; the STORE's destination may hold
    # any mix of old and new bus words, the rest of the memory nothing new
    n_src = 600
    src = rng.integers(0, 256, (n_src, bus_words_per(P, Buf.ACC) * B), dtype=np.uint8)
    src_off = img.put_bytes(src)
    dst_off = img.put_bytes(rng.integers(0, 256, src.size, dtype=np.uint8))
    prog = [encode(Op.LOAD, buf=Buf.ACC, sram=0, words=n_src, off=src_off),
            encode(Op.WAIT, unit=Unit.LOAD, count=0),
            encode(Op.STORE, buf=Buf.ACC, sram=0, words=n_src, off=dst_off),
            encode(Op.NOP),
            encode(Op.LOAD, buf=Buf.PRM, sram=P.prm_entries, words=1, off=0),
            encode(Op.WAIT, unit=Unit.STORE, count=0),
            encode(Op.HALT)]
    add("abort_store_in_flight", "abort", prog, dict(max_cycles=20000), err=Err.SRAM_RANGE,
        err_pc=4, exact=False, want=src.ravel())
    recover()

    # a GEMM that fails its range check queued behind a long one; the WAIT holds the STORE
    wg, _ = gemm_problem(8, 30, 192, 64, n_ops=1)
    at = next(i for i, w in enumerate(wg.prog) if decode(w)[0] == Op.GEMM) + 1
    op, f = decode(wg.prog[at - 1])
    bad = encode(Op.GEMM, **{**f, "acc_addr": buffer_depth(P, Buf.ACC) - 1})
    prog = wg.prog[:at] + [bad] + wg.prog[at:]
    assert decode(prog[at + 1])[0] == Op.WAIT
    add("abort_gemm_queued", "abort", prog, dict(max_cycles=40000), err=Err.SRAM_RANGE,
        err_pc=at, exact=False)
    recover(pos_init=3)
    return Plan(img.mem.copy(), entries)


PLAN = build_plan(SEED)
NAMES = [e.name for e in PLAN.entries]
assert len(set(NAMES)) == len(NAMES)
BY_NAME = {e.name: i for i, e in enumerate(PLAN.entries)}


@pytest.fixture(scope="module")
def rtl():
    print(f"CHIP_SEED={SEED}")
    res = run_jobs(P, PLAN.image, [e.job for e in PLAN.entries])
    assert len(res) == len(PLAN.entries)
    return res


@pytest.fixture(scope="module")
def isa(rtl):
    """The same jobs on one IsaSim. After a job that aborts units in flight (whose memory
    and buffers legitimately differ from the sequential model), the simulator continues
    from the RTL's memory."""
    sim = IsaSim(P, PLAN.image)
    out = []
    for e, r in zip(PLAN.entries, rtl, strict=True):
        sim.boot(e.job.prog_addr, e.job.prog_len, e.job.pos_init)
        sim.run()
        out.append(dict(error=sim.error, error_pc=sim.error_pc, pos=sim.pos,
                        counters=dict(sim.counters), offchip=sim.offchip.copy()))
        if not e.exact:
            sim.offchip[:] = r.offchip
    return out


def before(rtl, i):
    return PLAN.image if i == 0 else rtl[i - 1].offchip


def entries(*kinds):
    return [pytest.param(e.name, id=e.name) for e in PLAN.entries if e.kind in kinds]


def get(rtl, name):
    i = BY_NAME[name]
    return i, PLAN.entries[i], rtl[i]


# -- every job: status, memory and counters against the ISA simulator ----------------------------


@pytest.mark.parametrize("name", entries("gemm", "concurrent", "attn", "clear", "stall",
                                         "error", "boot", "abort", "recover"))
def test_job_matches_isa_sim(rtl, isa, name):
    i, e, r = get(rtl, name)
    ref = isa[i]
    assert not r.timed_out, f"{name}: no done within {e.job.max_cycles} cycles"
    assert not r.range_error
    assert (r.error, r.error_pc) == (ref["error"], ref["error_pc"])
    assert (r.error, r.error_pc) == (e.err, e.err_pc)
    assert r.pos == ref["pos"]
    if e.exact:
        diff = np.flatnonzero(r.offchip != ref["offchip"])
        assert diff.size == 0, f"{diff.size} bytes differ, first at bus word {diff[0] // B}"
        got = {k: r.counters[k] for k in UNTIMED}
        want = {k: ref["counters"][k] for k in UNTIMED}
        if r.error != Err.NONE:
            # the sequential model stops counting at the failing op; the chip's sequencer
            # may issue later ops (here only the HALT) before a unit reports the error
            late = got[Counter.UOPS] - want[Counter.UOPS]
            assert 0 <= late <= max(0, len(e.prog) - 1 - r.error_pc)
            got[Counter.UOPS] = want[Counter.UOPS]
        assert got == want


@pytest.mark.parametrize("name", entries("error", "boot", "abort"))
def test_error_writes_nothing_outside_stores(rtl, name):
    """An erring job ends within its budget; off-chip memory changes only inside the
    destinations of STOREs issued before the failing op."""
    i, e, r = get(rtl, name)
    assert not r.timed_out
    ok = np.zeros(NBUS, bool)
    for a, b in store_ranges(e.prog, e.err_pc if e.err != Err.NONE else len(e.prog)):
        ok[a:b] = True
    changed = (r.offchip != before(rtl, i)).reshape(NBUS, B).any(1)
    assert not (changed & ~ok).any(), np.flatnonzero(changed & ~ok)[:8]
    if e.budget is not None:
        assert r.counters[Counter.CYCLES] < e.budget
        if e.err != Err.NONE:
            assert r.counters[Counter.CYCLES] < ERR_CYCLES


# -- 1. weight GEMMs -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", entries("gemm", "stall", "recover"))
def test_gemm_matches_golden(rtl, name):
    i, e, r = get(rtl, name)
    assert r.error == Err.NONE and not r.timed_out
    assert np.array_equal(e.wg.result(r.offchip), e.want)
    acc = e.wg.acc(r.offchip)
    assert not acc[:, :, e.wg.nc:].any()  # INT8: lanes c >= PC
    assert not acc[:, :, : e.wg.nc].reshape(e.wg.T, -1)[:, e.wg.N:].any()  # padding
    assert {k: r.counters[k] for k in UNTIMED} == e.wg.counters


def test_concurrent_writes_gemm_result(rtl):
    """The GEMM of the job whose LOADs and KV_APPENDs share write ports with it (its memory
    as a whole is compared with IsaSim's by test_job_matches_isa_sim)."""
    _, e, r = get(rtl, "concurrent_writes")
    assert r.error == Err.NONE and np.array_equal(e.wg.result(r.offchip), e.want)


def test_gemm_variants_cover_the_issue():
    """Both modes, N split, K split (chained), with and without double buffering."""
    wgs = [e.wg for e in PLAN.entries if e.kind == "gemm"]
    mode = {e.name: e.wg.nc == C for e in PLAN.entries if e.kind == "gemm"}
    assert any(mode.values()) and not all(mode.values())
    assert any(len({o[0] for o in wg.ops}) > 1 and len({o[2] for o in wg.ops}) > 1
               for wg in wgs)
    assert any(GEMM_CASES[j][7] for j in range(len(GEMM_CASES)))


# -- 2. attention on the KV cache ----------------------------------------------------------------


def attention_results(step: AttentionStep, mem):
    qk = acc_words(P, mem, step.qk_off, step.t_len * step.nq).reshape(step.t_len, step.nq, C)
    pv = acc_words(P, mem, step.pv_off, step.t_len * step.nv).reshape(step.t_len, step.nv, C)
    vis = step.pos + step.t_len
    assert not qk[:, :, PC:].any() and not pv[:, :, PC:].any()
    return (qk[:, :, :PC].reshape(step.t_len, -1)[:, :vis],
            pv[:, :, :PC].reshape(step.t_len, -1))


@pytest.mark.parametrize("name", entries("attn"))
def test_attention_matches_golden(rtl, name):
    i, e, r = get(rtl, name)
    assert r.error == Err.NONE and not r.timed_out
    for st, want_qk, want_pv in e.steps:
        qk, pv = attention_results(st, r.offchip)
        assert np.array_equal(qk, want_qk), f"QKᵀ at pos {st.pos}"
        assert np.array_equal(pv, want_pv), f"P·V at pos {st.pos}"
    last = e.steps[-1][0]
    assert r.pos == last.pos + last.t_len
    if len(e.steps) == 1:
        assert {k: r.counters[k] for k in UNTIMED} == e.steps[0][0].counters


def test_attention_spans_many_positions():
    steps = [s[0] for e in PLAN.entries if e.kind == "attn" for s in e.steps]
    assert len(steps) >= 20 and steps[-1].pos + steps[-1].t_len > 20
    assert [s.pos for s in steps] == sorted(s.pos for s in steps)


# -- 3. memory stalls change the time, never the results -----------------------------------------


def test_stalls_change_cycles_not_results(rtl):
    res = {n: get(rtl, f"stall_{n}")[2] for n, *_ in STALLS}
    cyc = {n: r.counters[Counter.CYCLES] for n, r in res.items()}
    print(cyc)
    ref = res["interval0"]
    for n, r in res.items():
        assert r.error == Err.NONE and not r.timed_out and not r.range_error, n
        assert np.array_equal(r.offchip, ref.offchip), n
        assert {k: r.counters[k] for k in UNTIMED} == {k: ref.counters[k] for k in UNTIMED}
    # interval 0 and 1 both accept a request every cycle (sim/offchip.py)
    assert cyc["interval0"] <= cyc["interval1"] < cyc["interval2"] < cyc["interval3"]
    assert cyc["jitter"] > cyc["interval0"]
    assert cyc["jitter_interval2"] > cyc["interval2"]
    assert res["interval3"].counters[Counter.STALL_MEM] > res["interval0"].counters[
        Counter.STALL_MEM]


def test_clear_jobs_zero_the_stall_output(rtl):
    """Each stall job starts from a zeroed output region (so it really wrote its results)."""
    for n, *_ in STALLS:
        i, e, r = get(rtl, f"clear_{n}")
        wg = PLAN.entries[i + 1].wg
        assert r.error == Err.NONE and not wg.acc(r.offchip).any()


# -- 4. errors -----------------------------------------------------------------------------------


def test_abort_store_in_flight_writes_old_or_new(rtl):
    """Every bus word of the aborted STORE's destination holds its old or its new value."""
    i, e, r = get(rtl, "abort_store_in_flight")
    (a, b), = store_ranges(e.prog, e.err_pc)
    old = before(rtl, i).reshape(NBUS, B)[a:b]
    new = e.want.reshape(-1, B)
    got = r.offchip.reshape(NBUS, B)[a:b]
    assert ((got == old).all(1) | (got == new).all(1)).all()


def test_abort_ends_soon_after_the_error(rtl):
    """A job aborted mid-way takes fewer cycles than its valid prefix plus a bound: the
    units drop their queues and drain, they do not run the rest of the program."""
    _, _, r = get(rtl, "abort_store_in_flight")
    # the LOAD of 600 ACC words (4800 bus words) runs to the end; the STORE must not
    assert r.counters[Counter.CYCLES] < 4800 + 2000
    _, _, r = get(rtl, "abort_illegal_in_flight")
    assert r.counters[Counter.CYCLES] < 2000

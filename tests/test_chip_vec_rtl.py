"""The chip with its vector unit (``hw.chip.Chip(params, vector=True)``) on Verilator against
the ISA simulator (``IsaSim(vector=True)``) and, through it, the golden model.

ONE ``sim.chip_rtl.run_jobs`` call on the default ``ChipParams`` runs, one job after the other
on one simulation (buffers carry over, as on one ``IsaSim``):

1. every program of ``tests/test_isa_vec.py`` on the 16x16 chip (LOAD -> VEC -> STORE for
   every ``VecFn`` in both layouts, every ``QuantMode`` and ``per_row``, ``vfold`` with masked
   and garbage probabilities, ``dyn`` / ``causal`` softmax, COPY with ``repack``, an A8X2
   GEMM, a whole attention head over a prefill and two decode steps): those tests check
   ``IsaSim`` against ``sim.golden`` on the same programs, collected here by running them
   with ``Program.run`` recording (their off-chip addresses relocated into one image);
2. throughput: one VEC op per job on MiniLM / SmolLM2-sized rows, its cycles from
   ``BUSY_VEC`` (printed as a table);
3. every case of ``sw.programs.error_cases(p, vector=True)`` (the VEC checks, and every
   other check on this build).

After every job: error, error_pc, ``pos``, the whole off-chip memory and the counters both
simulators count equal IsaSim's. Random data: seed printed; replay with CHIP_SEED=<seed>.

Whole compiled layers on this chip are in ``tests/test_compiled_rtl.py`` (slow).
"""

import inspect
import itertools
import os
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from hw.isa import (
    Buf,
    Counter,
    Dyn,
    Err,
    KvKind,
    Op,
    QuantMode,
    Unit,
    VecBuf,
    VecFn,
    buffer_depth,
    bus_words_per,
    decode,
    encode,
)
from hw.params import ChipParams
from sim import golden as G
from sim.chip_rtl import Job, run_jobs
from sim.isa_sim import UNTIMED_COUNTERS, IsaSim, isa_jobs
from sw.programs import (
    Image,
    KvHead,
    act_fields,
    error_cases,
    norm_prm_fields,
    raw_op,
    wide_fields,
)

SEED = int(os.environ.get("CHIP_SEED", np.random.SeedSequence().entropy % 2**32))
P = ChipParams()
R, C, PC = P.rows, P.cols, P.cols // 2
B = P.offchip_bytes_per_cycle
NBUS = P.offchip_kib * 1024 // B
DEP = {b: buffer_depth(P, b) for b in Buf}
#: Counters both the RTL and the ISA simulator count.
UNTIMED = UNTIMED_COUNTERS
ERR_BUDGET = 20000  # cycles of an error-case job (some "fits" cases run long VEC ops)
ERR_CYCLES = 200    # a failing one-op error program is done within this (boot included)


@dataclass
class Entry:
    name: str
    kind: str          # isa_vec, bench_data, bench, error
    job: Job
    prog: list
    err: Err = Err.NONE
    err_pc: int | None = None
    words: int = 0     # bench: words the op writes
    fn: str = ""
    least: float = 0.0  # bench: least words written per cycle
    exact: bool = True  # memory must equal IsaSim's (not after an abort in flight)


# -- 1. the programs of tests/test_isa_vec.py ---------------------------------------------------


def _combos(f):
    """Keyword sets of a test function's ``parametrize`` marks (their cartesian product)."""
    axes = []
    for mark in getattr(f, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = [n.strip() for n in mark.args[0].split(",")]
        vals = []
        for v in mark.args[1]:
            if hasattr(v, "values") and hasattr(v, "marks"):  # pytest.param
                v = tuple(v.values)
            elif len(names) == 1:
                v = (v,)
            vals.append(dict(zip(names, v, strict=True)))
        axes.append(vals)
    for combo in itertools.product(*axes):
        yield {k: v for part in combo for k, v in part.items()}


def isa_vec_programs(seed: int) -> list:
    """``(name, image bytes, ops, err)`` of every program the tests of
    ``tests/test_isa_vec.py`` run on the default chip (each test's own golden checks run
    too)."""
    sys.path.insert(0, os.path.dirname(__file__))
    import test_isa_vec as T

    rec = []
    orig = T.Program.run

    def run(self, err=Err.NONE):
        out = orig(self, err)
        if self.p == P:
            rec.append((self.img.mem[: self.img.next * B].copy(), list(self.ops), err))
        return out

    out = []
    T.Program.run = run
    try:
        for name, f in inspect.getmembers(T, inspect.isfunction):
            if not name.startswith("test_"):
                continue
            params = inspect.signature(f).parameters
            for i, kw in enumerate(_combos(f)):
                if kw.get("p", P) != P:
                    continue
                if "rng" in params:
                    kw["rng"] = np.random.default_rng([seed, len(out), i])
                n0 = len(rec)
                f(**kw)
                tag = "-".join(str(getattr(v, "name", v)) for k, v in kw.items()
                               if k not in ("rng", "p"))
                for j, r in enumerate(rec[n0:]):
                    out.append((f"{name[5:]}{'-' + tag if tag else ''}"
                                f"{f'-{j}' if len(rec) - n0 > 1 else ''}", *r))
    finally:
        T.Program.run = orig
    return out


def relocate(ops, base: int) -> list:
    """Micro-ops with the off-chip addresses of their LOADs / STOREs moved by ``base``."""
    out = []
    for w in ops:
        op, f = decode(w)
        if op in (Op.LOAD, Op.STORE):
            w = encode(op, **{**f, "off": f["off"] + base})
        out.append(w)
    return out


# -- 2. throughput jobs -------------------------------------------------------------------------

#: name, VEC fields, pos, least words written per cycle: one op per job on rows of the real
#: models (MiniLM: d 384, d_ff 1536, 16 tokens, half layout; SmolLM2: d 576, d_ff 1536, head
#: dim 64, full layout). Element-wise ops stream a word per cycle; the half layout reads two
#: words per A8 (or repacked) word written; row ops add their latency (beats + 90 for norms)
#: and softmax handles a row of fewer than 18 beats in 18 cycles (its divider); one long row
#: makes three passes; vfold first loads two KV words per 8 keys. The 16-row vfold op is
#: mostly fixed latency (the unit's checks, V-scale load and two sweeps' pipeline fill). The
#: pipelining for a 100 MHz FPGA clock added 5-35 fixed cycles per op (engine checks, skids,
#: component stages): the short ops' floors (softmax 16x16, vfold, RoPE 16x64) are lower.
#: KV: a head (dim 16) of 1024 values whose scales the vfold jobs read
BENCH_HEAD = KvHead(P, 16, 1024, base=8000)
KS = BENCH_HEAD.val_s
BENCH = [
    ("residual_half_8x384", dict(fn=VecFn.RESIDUAL, half=1, rows=8, length=384, src_a=0,
                                 src_b=384, src_stride=48, dst=0, dst_stride=48), 0, 0.9),
    ("gelu_half_4x1536", dict(fn=VecFn.GELU, half=1, rows=4, length=1536, src_a=0,
                              src_stride=192, dst=0, dst_stride=192), 0, 0.9),
    ("layernorm_half_16x384", dict(fn=VecFn.LAYERNORM, half=1, rows=16, length=384, src_a=0,
                                   src_stride=48, dst=0, dst_stride=48, prm=0), 0, 0.75),
    ("quant_int8_half_16x384", dict(fn=VecFn.QUANT, half=1, rows=16, length=384, src_a=0,
                                    src_stride=48, dst=0, dst_stride=24), 0, 0.44),
    ("softmax_half_16x16", dict(fn=VecFn.SOFTMAX, half=1, rows=16, dyn=Dyn.POS, src_a=800,
                                src_stride=2, dst=800, dst_stride=2), 0, 0.085),
    ("vfold_a15_half_16x16", dict(fn=VecFn.QUANT, qmode=QuantMode.A15, vfold=1, half=1,
                                  rows=16, dyn=Dyn.POS, src_a=800, src_stride=2, src_b=KS,
                                  vgroups=1, dst=400, dst_stride=1), 0, 0.2),
    ("residual_full_8x576", dict(fn=VecFn.RESIDUAL, rows=8, length=576, src_a=0, src_b=288,
                                 src_stride=36, dst=0, dst_stride=36), 0, 0.9),
    ("silu_mul_full_4x1536", dict(fn=VecFn.SILU_MUL, rows=4, length=1536, src_a=0,
                                  src_b=384, src_stride=96, dst=0, dst_stride=96), 0, 0.9),
    ("rmsnorm_full_16x576", dict(fn=VecFn.RMSNORM, rows=16, length=576, src_a=0,
                                 src_stride=36, dst=0, dst_stride=36, prm=100), 0, 0.7),
    ("rope_full_16x64", dict(fn=VecFn.ROPE, rows=16, length=64, src_a=600, src_b=700,
                             src_stride=4, dst=600, dst_stride=4), 20, 0.7),
    ("quant_a8x2_full_8x576", dict(fn=VecFn.QUANT, qmode=QuantMode.A8X2, rows=8, length=576,
                                   src_a=0, src_stride=36, dst=1000, dst_stride=36), 0, 0.7),
    ("softmax_full_1x1024", dict(fn=VecFn.SOFTMAX, causal=1, dyn=Dyn.POS, rows=1, src_a=0,
                                 src_stride=64, dst=0, dst_stride=64), 1023, 0.24),
    ("vfold_a15_full_1x1024", dict(fn=VecFn.QUANT, qmode=QuantMode.A15, vfold=1, causal=1,
                                   dyn=Dyn.POS, rows=1, src_a=0, src_stride=64, src_b=KS,
                                   vgroups=1, dst=2000, dst_stride=64), 1023, 0.2),
    ("copy_repack_16x384", dict(fn=VecFn.COPY, half=1, repack=1, rows=16, length=384,
                                src_a=0, src_stride=48, dst=0, dst_stride=24), 0, 0.45),
    ("copy_act_16x384", dict(fn=VecFn.COPY, buf=VecBuf.ACT, rows=16, length=384, src_a=0,
                             src_stride=24, dst=3000, dst_stride=24), 0, 0.9),
]


def bench_words(f: dict, pos: int) -> int:
    """Words a bench op writes."""
    length = pos + f["rows"] if f.get("dyn") == Dyn.POS else f["length"]
    fn = f["fn"]
    if fn == VecFn.QUANT:
        blocks = 1 if f.get("qmode", QuantMode.INT8) == QuantMode.INT8 else 2
        return blocks * f["rows"] * -(-length // R)
    if fn == VecFn.COPY and f.get("buf") == VecBuf.ACT:
        return f["rows"] * -(-length // R)
    half = bool(f.get("half")) != bool(f.get("repack") and fn == VecFn.COPY)
    return f["rows"] * -(-length // (PC if half else C))


def bench_data(rng, img: Image) -> list:
    """A job's worth of LOADs: ACC full of wide values (decades apart), ACT random A8 words,
    PRM norm constants (LayerNorm at 0, RMSNorm at 100), KV V scales of 1024 keys."""
    n = DEP[Buf.ACC]
    mag = 10.0 ** rng.uniform(-3, 3, (n, 1))
    acc = np.clip(np.round(rng.normal(size=(n, C)) * mag * 65536), -(1 << 31), (1 << 31) - 1)
    ops = []

    def load(buf, sram, fields):
        off, k = img.put(buf, fields)
        ops.append(encode(Op.LOAD, buf=buf, sram=sram, words=k, off=off))

    load(Buf.ACC, 0, {"": acc.astype(np.int64)})
    x8, xs = G.quantize_rows(np.round(rng.normal(size=(16, 384)) * 1e5).astype(np.int64))
    load(Buf.ACT, 0, act_fields(R, x8, xs.mant, xs.exp, xs.group))
    g = np.round(rng.normal(size=576) * 65536).astype(np.int64)
    load(Buf.PRM, 0, norm_prm_fields(P, [g[:384], g[192:]], 1e-12))
    load(Buf.PRM, 100, norm_prm_fields(P, [g], 1e-5))
    v8, vs = G.quantize_rows(np.round(rng.normal(size=(1024, 16)) * 1e4).astype(np.int64),
                             group=None)
    load(Buf.ACT, 400, act_fields(R, v8, vs.mant, vs.exp, vs.group))
    ops.append(encode(Op.WAIT, unit=Unit.LOAD, count=0))
    for k in range(4):  # tokens 0..1023, 256 per KV_APPEND
        ops += [encode(Op.SETPOS, value=256 * k), BENCH_HEAD.append(KvKind.VALUE, 256,
                                                                     400 + 256 * k)]
    return ops


#: abort jobs: the bench op aborted, after how many NOPs (the op alone takes 787, 735 and 561
#: cycles; A8X2's first sweep ~370, vfold's V-scale load 256)
ABORTS = [("gelu", ("gelu_half_4x1536", None)), ("a8x2", ("quant_a8x2_full_8x576", None)),
          ("vfold_load", ("vfold_a15_full_1x1024", None))]
ABORT_NOPS = {"gelu": 150, "a8x2": 230, "vfold_load": 50}


def recover_program(rng, img: Image) -> list:
    """LOAD two blocks of wide rows, RESIDUAL them (full layout) into ACC words no earlier
    job wrote, STORE the result."""
    x = np.round(rng.normal(size=(2, 4, 64)) * 1e6).astype(np.int64)
    ops = []
    for k in range(2):
        off, n = img.put(Buf.ACC, wide_fields(P, x[k]))
        ops.append(encode(Op.LOAD, buf=Buf.ACC, sram=900 + 16 * k, words=n, off=off))
    out = img.reserve(Buf.ACC, 16)
    return ops + [encode(Op.WAIT, unit=Unit.LOAD, count=0),
                  encode(Op.VEC, fn=VecFn.RESIDUAL, rows=4, length=64, src_a=900, src_b=916,
                         src_stride=4, dst=940, dst_stride=4),
                  encode(Op.WAIT, unit=Unit.VEC, count=0),
                  encode(Op.STORE, buf=Buf.ACC, sram=940, words=16, off=out),
                  encode(Op.HALT)]


# -- the plan -------------------------------------------------------------------------------


@dataclass
class Plan:
    image: np.ndarray
    entries: list


def build_plan(seed: int) -> Plan:
    rng = np.random.default_rng(seed)
    img = Image(P)
    img.reserve(Buf.ACC, 4)  # bus words 0.. are the STORE destination of error cases
    entries = []

    def add(name, kind, prog, max_cycles=1_000_000, pos_init=0, **kw):
        addr, n = img.put_program(prog)
        entries.append(Entry(name, kind, Job(addr, n, pos_init=pos_init,
                                             max_cycles=max_cycles), prog, **kw))

    for name, raw, ops, err in isa_vec_programs(seed):
        base = img.put_bytes(raw) if raw.size else img.next
        add(f"isa_vec_{name}", "isa_vec", relocate(ops, base) + [encode(Op.HALT)], err=err)

    add("bench_data", "bench_data", bench_data(rng, img) + [encode(Op.HALT)])
    for name, f, pos, least in BENCH:
        add(f"bench_{name}", "bench", [encode(Op.VEC, **f), encode(Op.HALT)], pos_init=pos,
            words=bench_words(f, pos), fn=name, least=least)

    for c in error_cases(P, vector=True):
        prog = c.prefix + [c.op, encode(Op.HALT)]
        add(f"error_{c.name}", "error", prog, max_cycles=ERR_BUDGET, err=c.err,
            err_pc=len(c.prefix) if c.err != Err.NONE else 0)

    # an illegal op while a long VEC op runs (no WAIT; NOPs, two cycles each, let it get
    # going): the unit drops it mid-way (in its generators; in the second sweep of A8X2; in
    # its V-scale load); a valid VEC program follows each (the aborted op's destination
    # differs from IsaSim's, which ran it whole: these jobs come last)
    bench = {b[0]: b[1:3] for b in BENCH}
    for name, (op, _) in ABORTS:
        f, pos = bench[op]
        nops = ABORT_NOPS[name]
        add(f"abort_vec_{name}", "abort", [encode(Op.VEC, **f), *[encode(Op.NOP)] * nops,
                                            raw_op(0x04), encode(Op.HALT)],
            pos_init=pos, max_cycles=20000, err=Err.ILLEGAL_OP, err_pc=1 + nops, exact=False)
        add(f"recover_vec_{name}", "recover", recover_program(rng, img))
    assert img.next * B < img.mem.size - 4096  # the error cases' last ACT words stay free
    return Plan(img.mem.copy(), entries)


PLAN = build_plan(SEED)
NAMES = [e.name for e in PLAN.entries]
assert len(set(NAMES)) == len(NAMES), [n for n in NAMES if NAMES.count(n) > 1]
BY_NAME = {e.name: i for i, e in enumerate(PLAN.entries)}


@pytest.fixture(scope="module")
def rtl():
    print(f"CHIP_SEED={SEED}")
    res = run_jobs(P, PLAN.image, [e.job for e in PLAN.entries], vector=True)
    assert len(res) == len(PLAN.entries)
    return res


@pytest.fixture(scope="module")
def isa(rtl):
    """The same jobs on one IsaSim; after a job that aborts a unit in flight (whose memory
    legitimately differs from the sequential model's) it continues from the RTL's memory."""
    sim = IsaSim(P, PLAN.image, vector=True)
    out = []
    for e, r in zip(PLAN.entries, rtl, strict=True):
        out += isa_jobs(P, None, [e.job], sim=sim)
        if not e.exact:
            sim.offchip[:] = r.offchip
    return out


def entries(*kinds):
    return [pytest.param(e.name, id=e.name) for e in PLAN.entries if e.kind in kinds]


def get(rtl, name):
    i = BY_NAME[name]
    return i, PLAN.entries[i], rtl[i]


def store_ranges(prog, upto: int):
    """Bus-word ranges [a, b) written by the STOREs among the first ``upto`` micro-ops."""
    out = []
    for w in prog[:upto]:
        op, f = decode(w)
        if op == Op.STORE:
            out.append((f["off"], f["off"] + f["words"] * bus_words_per(P, f["buf"])))
    return out


@pytest.mark.parametrize("name", entries("isa_vec", "bench_data", "bench", "error", "abort",
                                         "recover"))
def test_job_matches_isa_sim(rtl, isa, name):
    i, e, r = get(rtl, name)
    ref = isa[i]
    assert not r.timed_out, f"{name}: no done within {e.job.max_cycles} cycles"
    assert not r.range_error
    assert (r.error, r.error_pc, r.pos) == (ref.error, ref.error_pc, ref.pos)
    assert r.error == e.err
    if e.err_pc is not None:
        assert r.error_pc == e.err_pc
    if not e.exact:
        return
    diff = np.flatnonzero(r.offchip != ref.offchip)
    assert diff.size == 0, f"{diff.size} bytes differ, first at bus word {diff[0] // B}"
    got = {k: r.counters[k] for k in UNTIMED}
    want = {k: ref.counters[k] for k in UNTIMED}
    if r.error != Err.NONE:
        # the chip's sequencer may issue later ops (here only the HALT) before a unit
        # reports the error; the sequential model stops counting at the failing op
        late = got[Counter.UOPS] - want[Counter.UOPS]
        assert 0 <= late <= max(0, len(e.prog) - 1 - r.error_pc)
        got[Counter.UOPS] = want[Counter.UOPS]
    assert got == want


def test_abort_ends_soon(rtl):
    """A VEC op aborted in flight stops: the job ends well before the op would have, and
    writes nothing off chip."""
    for name, nops in ABORT_NOPS.items():
        i, e, r = get(rtl, f"abort_vec_{name}")
        # boot (two bus words per micro-op), then two cycles per micro-op issued
        assert r.counters[Counter.CYCLES] < 2 * len(e.prog) + 2 * nops + 150, name
        assert 0 < r.counters[Counter.BUSY_VEC] < 2 * nops + 50, name
        assert np.array_equal(r.offchip, rtl[i - 1].offchip)


@pytest.mark.parametrize("name", entries("error"))
def test_error_writes_nothing_outside_stores(rtl, name):
    """An erring job ends soon; off-chip memory changes only inside the destinations of
    STOREs issued before the failing op."""
    i, e, r = get(rtl, name)
    ok = np.zeros(NBUS, bool)
    for a, b in store_ranges(e.prog, e.err_pc if e.err != Err.NONE else len(e.prog)):
        ok[a:b] = True
    before = PLAN.image if i == 0 else rtl[i - 1].offchip
    changed = (r.offchip != before).reshape(NBUS, B).any(1)
    assert not (changed & ~ok).any(), np.flatnonzero(changed & ~ok)[:8]
    if e.err != Err.NONE:
        assert r.counters[Counter.CYCLES] < ERR_CYCLES


def test_vec_throughput(rtl):
    """Cycles of one VEC op (``BUSY_VEC``: from its command in the queue to its last write)
    and words written per cycle, at least what ``BENCH`` states for each."""
    print(f"\n{'op':26} {'cycles':>7} {'words':>6} {'words/cycle':>11}")
    slow = []
    for e in PLAN.entries:
        if e.kind != "bench":
            continue
        _, _, r = get(rtl, e.name)
        cyc = r.counters[Counter.BUSY_VEC]
        print(f"{e.fn:26} {cyc:7d} {e.words:6d} {e.words / cyc:11.3f}")
        if e.words / cyc < e.least:
            slow.append(e.fn)
    assert not slow


def test_plan_covers_every_fn():
    ops = [decode(w)[1] for e in PLAN.entries for w in e.prog if decode(w)[0] == Op.VEC]
    fns = {f["fn"] for f in ops}
    assert set(VecFn) <= fns
    q = [f for f in ops if f["fn"] == VecFn.QUANT]
    assert {(f["qmode"], f["per_row"], f["vfold"]) for f in q} >= {
        (m, pr, 0) for m in QuantMode for pr in (0, 1)} | {(QuantMode.A15, 0, 1)}
    assert {(f["buf"], f["repack"]) for f in ops if f["fn"] == VecFn.COPY} >= {
        (VecBuf.ACC, 0), (VecBuf.ACC, 1), (VecBuf.ACT, 0)}
    assert any(f["dyn"] == Dyn.POS and f["causal"] for f in ops)
    assert sum(e.kind == "error" and e.err != Err.NONE for e in PLAN.entries) > 20


# -- the MiniLM layer ---------------------------------------------------------------------------

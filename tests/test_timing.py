"""The timing model (``sim/timing.py``) against the chip on Verilator: predicted counters ==
measured counters, exactly.

- the programs of ``tests/test_chip_rtl.py`` (weight GEMMs with N / K splits and double
  buffering, the KV attention steps over 32 positions, the stall program, the clear and
  recovery jobs, the error-case programs that run without error), each at one of the memory
  intervals 0 / 1 / 2 / 3 in turn (no jitter; slow: each at all four), in one ``run_jobs``
  call on ``ChipParams()`` (the build
  ``tests/test_chip_rtl.py`` uses): ``CYCLES`` and every other timed counter the model
  gives (``BUSY_*``, ``STALL_WAIT``, ``STALL_QUEUE``, ``STALL_MEM``) equal the RTL's, and
  each op's predicted ``end`` lies within the job;
- the job of that plan where a LOAD into ACC runs beside GEMMs writing ACC breaks
  predictability rule 1: ``predict`` says so, naming both ops;
- a short fuzz campaign with ``timing=True`` (``sim/fuzz.py``): every legal job's
  prediction equals the RTL's counters;
- the VEC model (:class:`sim.timing.VecModel`): random legal VEC ops (every fn, both layouts,
  short / long / odd rows, one and many rows, ``pos``-dependent ones: causal, ``dyn``, RoPE,
  vfold), a few per job, on the chip with its vector unit: predicted counters == the RTL's;
- slow: the plan at every interval, a longer fuzz campaign, the programs of
  ``tests/test_chip_vec_rtl.py`` on the chip with its vector unit,
  and the VEC model against ``sim.timing.measure_vec`` (``VecEngine`` alone in
  ``amaranth.sim``) on a broad random sample on three configurations (the default; 2 lanes
  on a 16 x 8 grid with 1536-element rows, ``hw.board_top.CHIP_85F``'s vector unit; a 4 x 8
  grid).
  The compiled layers against their measured cycles are in ``tests/test_compiled_rtl.py``.

Random data: the plans' own seeds (``CHIP_SEED``), printed; the VEC ops' ``VEC_SEED``
(printed; replay with ``VEC_SEED=<seed>``).
"""

import os
import random

import numpy as np
import pytest

from hw.isa import (
    Buf,
    Counter,
    Dyn,
    Err,
    Op,
    PosReg,
    QuantMode,
    Unit,
    VecBuf,
    VecFn,
    buffer_depth,
    decode,
    encode,
)
from hw.params import ChipParams
from sim.chip_rtl import Job, run_jobs
from sim.timing import RuleViolation, measure_vec, predict, vec_cycles

INTERVALS = (0, 1, 2, 3)
VEC_SEED = int(os.environ.get("VEC_SEED", np.random.SeedSequence().entropy % 2**32))


def _plan_jobs(plan, vector=False, every=True):
    """(name, entry, job) for every entry of a chip-test plan that ends without error, at
    each interval (``every``; else the i-th such entry at ``INTERVALS[i % 4]``), jitter off;
    the entry that breaks a rule is returned apart."""
    out, rule = [], []
    for e in plan.entries:
        if e.err != Err.NONE:
            continue
        if e.kind == "concurrent":
            rule.append(e)
            continue
        n = len(out) if every else len(out) % len(INTERVALS)
        for iv in INTERVALS if every else INTERVALS[n:n + 1]:
            job = Job(e.job.prog_addr, e.job.prog_len, pos_init=e.job.pos_init, interval=iv,
                      max_cycles=e.job.max_cycles)
            out.append((f"{e.name}@{iv}", e, job))
    return out, rule


def _compare(p, plan_jobs, results, vector=False):
    bad, cycles = [], 0
    for (name, e, job), r in zip(plan_jobs, results, strict=True):
        assert r.error == Err.NONE and not r.timed_out, name
        t = predict(p, e.prog[:job.prog_len], vector=vector, interval=job.interval,
                    pos_init=job.pos_init)
        cycles += r.counters[Counter.CYCLES]
        diff = {c.name: (v, r.counters[c]) for c, v in t.counters.items() if v != r.counters[c]}
        if diff:
            bad.append(f"{name}: (predicted, RTL) {diff}")
        assert all(o.end is None or o.end < t.cycles for o in t.ops), name
    return bad, cycles


@pytest.fixture(scope="module")
def chip_plan():
    import tests.test_chip_rtl as base

    print(f"CHIP_SEED={base.SEED}")
    return base


def _chip_programs(base, every):
    jobs, _ = _plan_jobs(base.PLAN, every=every)
    assert {e.kind for _, e, _ in jobs} >= {"gemm", "attn", "stall", "clear", "recover"}
    res = run_jobs(base.P, base.PLAN.image, [j for _, _, j in jobs])
    bad, cycles = _compare(base.P, jobs, res)
    print(f"\n{len(jobs)} jobs, {cycles} cycles compared, {len(bad)} mismatching")
    assert not bad, "\n".join(bad[:10])


def test_chip_programs(chip_plan):
    """Every program of the plan, at the intervals in turn."""
    _chip_programs(chip_plan, every=False)


@pytest.mark.slow
def test_chip_programs_at_every_interval(chip_plan):
    _chip_programs(chip_plan, every=True)


def test_rule_violation_is_reported(chip_plan):
    """The job that loads ACC beside GEMMs writing ACC (the shared write port) breaks rule 1;
    the same program with WAITs that keep those LOADs (and the ones into KV, beside
    KV_APPENDs: rule 3) apart from GEMMs and KV_APPENDs does not."""
    _, rule = _plan_jobs(chip_plan.PLAN)
    (e,) = rule
    with pytest.raises(RuleViolation, match=r"rule 1: LOAD at pc \d+ .* GEMM at pc \d+"):
        predict(chip_plan.P, e.prog)
    fixed = []
    for w in e.prog:
        op, f = decode(w)
        if op == Op.LOAD and f["buf"] in (Buf.ACC, Buf.KV):
            fixed += [encode(Op.WAIT, unit=Unit.GEMM, count=0),
                      encode(Op.WAIT, unit=Unit.KV, count=0)]
        if op in (Op.GEMM, Op.KV_APPEND):
            fixed.append(encode(Op.WAIT, unit=Unit.LOAD, count=0))
        fixed.append(w)
    predict(chip_plan.P, fixed)


def test_sequencer_errors_are_refused():
    p = ChipParams()
    with pytest.raises(ValueError, match="PROG_RANGE"):
        predict(p, [encode(Op.NOP)])
    with pytest.raises(ValueError, match="ILLEGAL_OP"):
        predict(p, [0x3F, encode(Op.HALT)])
    with pytest.raises(ValueError, match="UNSUPPORTED"):
        predict(p, [encode(Op.VEC), encode(Op.HALT)])


def test_refused_vec_op_is_not_timed():
    """A VEC op the unit refuses (``Err.BAD_FIELD``) has no modelled time: ``ValueError``."""
    p = ChipParams()
    for f in (dict(fn=VecFn.SOFTMAX, rows=1, length=p.vector_row + 1),
              dict(fn=VecFn.ROPE, rows=1, length=7), dict(fn=VecFn.GELU, rows=0, length=8)):
        with pytest.raises(ValueError, match="BAD_FIELD"):
            predict(p, [encode(Op.VEC, **f), encode(Op.HALT)], vector=True)


def _fuzz_timing(seed, n_valid, n_illegal):
    from sim.fuzz import DEFAULT, run_campaign

    rep = run_campaign(DEFAULT, seed, n_valid, n_illegal, twins=0.0, log=lambda s: None,
                       timing=True)
    print("\n" + rep.summary())
    assert not rep.mismatches, "\n\n".join(m.text for m in rep.mismatches[:3])
    return rep


def test_fuzz_campaign_timing():
    """Random legal programs of the fuzzer (``ChipParams()``, intervals 0..3, no jitter): each
    job's predicted counters equal the RTL's. Replay: scripts/fuzz_chip.py --seed 2025
    --programs 8 --params default --illegal 0.25 --timing."""
    rep = _fuzz_timing(2025, 6, 2)
    assert rep.timed_jobs >= 3


@pytest.mark.slow
def test_fuzz_campaign_timing_long():
    """As :func:`test_fuzz_campaign_timing`, 24 programs. Replay: scripts/fuzz_chip.py --seed
    2026 --programs 24 --params default --illegal 0.25 --timing."""
    rep = _fuzz_timing(2026, 18, 6)
    assert rep.timed_jobs >= 15


@pytest.mark.slow
def test_vector_programs_at_every_interval():
    """The programs of ``tests/test_chip_vec_rtl.py`` (every VecFn, layouts, modes; the
    throughput jobs) on the chip with its vector unit."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import tests.test_chip_vec_rtl as base

    print(f"CHIP_SEED={base.SEED}")
    jobs, rule = _plan_jobs(base.PLAN, vector=True)
    res = run_jobs(base.P, base.PLAN.image, [j for _, _, j in jobs], vector=True)
    bad, cycles = _compare(base.P, jobs, res, vector=True)
    print(f"\n{len(jobs)} jobs, {cycles} cycles compared, {len(bad)} mismatching")
    assert not bad, "\n".join(bad[:10])


# -- the VEC model ------------------------------------------------------------------------------


def random_vec_op(p: ChipParams, rng: random.Random, fn=None, half=None, rows=None,
                  length=None) -> tuple[dict, int]:
    """A random legal VEC op ``(fields, pos)`` on ``p``: any fn, either layout, rows of 1 to
    13, lengths from 1 to 576 (odd ones, around a beat), ``dyn`` / ``causal`` / RoPE / vfold
    at several positions, operands packed from address 0 (they fit the buffers); ``fn``,
    ``half``, ``rows``, ``length``: those fixed instead (``dyn`` may still set the length)."""
    R, C, L = p.rows, p.cols, p.vector_lanes
    PC = C // 2
    dep = {b: buffer_depth(p, b) for b in Buf}
    fn = rng.choice(list(VecFn)) if fn is None else fn
    f = {"fn": fn}
    rows = rng.choice([1, 1, 2, 3, 5, 8, 13]) if rows is None else rows
    if length is None:
        length = rng.choice([1, 2, 3, 7, L - 1, L, L + 1, 2 * L + 3, 37, 64, 100, 200, 384,
                             576])
    if fn in (VecFn.QUANT, VecFn.LAYERNORM, VecFn.RMSNORM, VecFn.SOFTMAX):
        length = min(length, p.vector_row)
    if fn == VecFn.ROPE:
        length += length % 2
    half = rng.random() < 0.4 if half is None else bool(half)
    pos = 0
    if fn == VecFn.COPY and rng.random() < 0.3:
        f["buf"], half = VecBuf.ACT, False
    elif fn == VecFn.COPY:
        f["repack"] = int(rng.random() < 0.5)
    f["half"] = int(half)
    if fn in (VecFn.SOFTMAX, VecFn.QUANT) and rng.random() < 0.5:
        f["causal"] = 1
    if fn == VecFn.QUANT:
        f["qmode"] = rng.choice(list(QuantMode))
        f["per_row"] = int(rng.random() < 0.3)
        if rng.random() < 0.35:
            f["vfold"], f["vgroups"] = 1, rng.choice([1, 2, 4])
    if fn in (VecFn.SOFTMAX, VecFn.QUANT) and rng.random() < 0.4:
        f["dyn"] = Dyn.POS
        pos = rng.choice([0, 1, 5, 17, 40, 100, 300])
        length = pos + rows
        if length > p.vector_row:
            pos, length = p.vector_row - rows, p.vector_row
    elif fn in (VecFn.SOFTMAX, VecFn.QUANT, VecFn.ROPE) and rng.random() < 0.5:
        pos = rng.choice([0, 3, 20, 77])
    copy_act = fn == VecFn.COPY and f.get("buf") == VecBuf.ACT
    out_half = half != bool(fn == VecFn.COPY and f.get("repack"))
    to_act = fn == VecFn.QUANT or copy_act
    blocks = 2 if fn == VecFn.QUANT and f["qmode"] != QuantMode.INT8 else 1
    W = -(-length // (PC if half else C))
    Wr = -(-length // R) if copy_act else W
    Ww = -(-length // R) if to_act else -(-length // (PC if out_half else C))
    while rows > 1:  # fewer rows until the operands fit
        ok = (rows * Wr <= (dep[Buf.ACT] if copy_act else dep[Buf.ACC]) // 2
              and blocks * rows * Ww <= (dep[Buf.ACT] if to_act else dep[Buf.ACC]) // 2)
        if fn in (VecFn.RESIDUAL, VecFn.SILU_MUL, VecFn.ROPE):
            ok = ok and rows * W + (pos + rows) * W <= dep[Buf.ACC] // 2
        if ok:
            break
        rows //= 2
        if f.get("dyn") == Dyn.POS:
            length = pos + rows
            W = Wr = -(-length // (PC if half else C))
            Ww = -(-length // R) if to_act else W
    if fn == VecFn.ROPE and rows * W + (pos + rows) * W > dep[Buf.ACC] // 2:
        pos = 0
    f.update(rows=rows, src_a=0, src_stride=Wr, dst=0, dst_stride=Ww)
    if copy_act or not to_act:  # ACC -> ACC / ACT -> ACT: the destination after the source
        f["dst"] = dep[Buf.ACT if copy_act else Buf.ACC] // 2
    if f.get("dyn") != Dyn.POS:
        f["length"] = length
    if fn in (VecFn.RESIDUAL, VecFn.SILU_MUL, VecFn.ROPE):
        f["src_b"] = rows * W
    if fn in (VecFn.LAYERNORM, VecFn.RMSNORM):
        f["prm"] = 0
    return decode(encode(Op.VEC, **f))[1], pos


def _vec_sample(p: ChipParams, seed: int, n: int) -> list:
    rng = random.Random(seed)
    ops = [random_vec_op(p, rng) for _ in range(n)]
    # every fn in both layouts, at one long row and at many short ones
    for fn in VecFn:
        for half in (0, 1):
            ops.append(random_vec_op(p, rng, fn, half, rows=1, length=min(576, p.vector_row)))
            ops.append(random_vec_op(p, rng, fn, half, rows=13, length=p.vector_lanes + 3))
    return ops


def _describe(f: dict, pos: int) -> str:
    keep = ("fn", "qmode", "per_row", "vfold", "causal", "dyn", "half", "buf", "repack", "rows",
            "length", "vgroups")
    return " ".join(f"{k}={int(f[k])}" for k in keep) + f" pos={pos}"


#: VEC ops per job of :func:`test_vec_model_on_rtl` (each after a ``SETPOS`` of its ``pos``).
OPS_PER_JOB = 6


def test_vec_model_on_rtl():
    """Random VEC ops (:func:`_vec_sample`, a few per job, on the default chip with its vector
    unit, interval 0): every predicted counter equals the RTL's."""
    from sw.programs import Image

    p = ChipParams()
    print(f"VEC_SEED={VEC_SEED}")
    ops = _vec_sample(p, VEC_SEED, 60)
    img = Image(p)
    jobs = []
    for i in range(0, len(ops), OPS_PER_JOB):
        part = ops[i:i + OPS_PER_JOB]
        prog = [w for f, pos in part for w in (encode(Op.SETPOS, reg=PosReg.POS, value=pos),
                                               encode(Op.VEC, **f))] + [encode(Op.HALT)]
        addr, n = img.put_program(prog)
        jobs.append((part, prog, Job(addr, n, max_cycles=500_000)))
    res = run_jobs(p, img.mem, [j for _, _, j in jobs], vector=True)
    bad = []
    for (part, prog, _), r in zip(jobs, res, strict=True):
        what = "; ".join(_describe(f, pos) for f, pos in part)
        assert r.error == Err.NONE and not r.timed_out, (what, r.error)
        t = predict(p, prog, vector=True)
        diff = {c.name: (v, r.counters[c]) for c, v in t.counters.items() if v != r.counters[c]}
        if diff:
            bad.append(f"{what}: (predicted, RTL) {diff}")
    print(f"\n{len(ops)} VEC ops in {len(jobs)} jobs, "
          f"{sum(r.counters[Counter.CYCLES] for r in res)} cycles, {len(bad)} mismatching")
    assert not bad, "\n".join(bad[:10])


#: Configurations of the model-vs-simulation comparison: the default, 2 lanes on a 16 x 8
#: grid with 1536-element rows (``hw.board_top.CHIP_85F``'s vector unit), a 4 x 8 grid.
ORACLE_PARAMS = {
    "default": (ChipParams(), 80),
    "lanes2": (ChipParams(cols=8, vector_lanes=2, vector_row=1536), 40),
    "grid4x8": (ChipParams(rows=4, cols=8), 40),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ORACLE_PARAMS))
def test_vec_model_matches_simulation(name):
    """The VEC model against ``VecEngine`` in ``amaranth.sim`` (:func:`sim.timing.measure_vec`)
    on a random sample (:func:`_vec_sample`): equal cycles for every op."""
    p, n = ORACLE_PARAMS[name]
    print(f"VEC_SEED={VEC_SEED}")
    ops = _vec_sample(p, VEC_SEED, n)
    measured = measure_vec(p, ops)
    bad = [f"{_describe(f, pos)}: model {vec_cycles(p, f, pos)}, simulation {m}"
           for (f, pos), m in zip(ops, measured, strict=True) if vec_cycles(p, f, pos) != m]
    print(f"\n{name}: {len(ops)} VEC ops, {sum(measured)} cycles, {len(bad)} mismatching")
    assert not bad, "\n".join(bad[:10])

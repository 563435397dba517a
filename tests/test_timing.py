"""The timing model (``sim/timing.py``) against the chip on Verilator: predicted counters ==
measured counters, exactly.

- the programs of ``tests/test_chip_rtl.py`` (weight GEMMs with N / K splits and double
  buffering, the KV attention steps over 32 positions, the stall program, the clear and
  recovery jobs, the error-case programs that run without error), each at memory intervals
  0 / 1 / 2 / 3 (no jitter), in one ``run_jobs`` call on ``ChipParams()`` (the build
  ``tests/test_chip_rtl.py`` uses): ``CYCLES`` and every other timed counter the model
  gives (``BUSY_*``, ``STALL_WAIT``, ``STALL_QUEUE``, ``STALL_MEM``) equal the RTL's, and
  each op's predicted ``end`` lies within the job;
- the job of that plan where a LOAD into ACC runs beside GEMMs writing ACC breaks
  predictability rule 1: ``predict`` says so, naming both ops;
- a short fuzz campaign with ``timing=True`` (``sim/fuzz.py``): every legal job's
  prediction equals the RTL's counters;
- slow: the programs of ``tests/test_chip_vec_rtl.py`` on the chip with its vector unit, and
  the MiniLM / SmolLM2 layer programs.

Random data: the plans' own seeds (``CHIP_SEED``), printed.
"""

import os

import pytest

from hw.isa import Buf, Counter, Err, Op, Unit, decode, encode
from hw.params import ChipParams
from sim.chip_rtl import Job, run_jobs
from sim.timing import RuleViolation, predict

INTERVALS = (0, 1, 2, 3)


def _plan_jobs(plan, vector=False):
    """(name, entry, job) for every entry of a chip-test plan that ends without error, at
    each interval, jitter off; the entry that breaks a rule is returned apart."""
    out, rule = [], []
    for e in plan.entries:
        if e.err != Err.NONE:
            continue
        if e.kind == "concurrent":
            rule.append(e)
            continue
        for iv in INTERVALS:
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


def test_chip_programs_at_every_interval(chip_plan):
    base = chip_plan
    jobs, _ = _plan_jobs(base.PLAN)
    assert {e.kind for _, e, _ in jobs} >= {"gemm", "attn", "stall", "clear", "recover"}
    res = run_jobs(base.P, base.PLAN.image, [j for _, _, j in jobs])
    bad, cycles = _compare(base.P, jobs, res)
    print(f"\n{len(jobs)} jobs, {cycles} cycles compared, {len(bad)} mismatching")
    assert not bad, "\n".join(bad[:10])


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


def test_fuzz_campaign_timing():
    """Random legal programs of the fuzzer (``ChipParams()``, intervals 0..3, no jitter): each
    job's predicted counters equal the RTL's. Replay: scripts/fuzz_chip.py --seed 2025
    --programs 24 --params default --illegal 0.25 --timing."""
    from sim.fuzz import DEFAULT, run_campaign

    rep = run_campaign(DEFAULT, 2025, 18, 6, twins=0.0, log=lambda s: None, timing=True)
    print("\n" + rep.summary())
    assert not rep.mismatches, "\n\n".join(m.text for m in rep.mismatches[:3])
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

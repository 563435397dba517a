"""Differential fuzzing of the chip (``sim/fuzz.py``, ``scripts/fuzz_chip.py``).

Pure Python (no Verilator): the generator is deterministic per seed; the error each illegal
program means to raise is the one IsaSim raises, at the op it means; valid programs stay
valid; the generator's ``WAIT``\\ s make every program's result independent of how the units'
work interleaves (checked on hand-made conflicts and by running programs under random
schedules of an atomic-op model of the sequencer and its queues, which does tell apart the
same programs stripped of their WAITs); the campaign pipeline reports an injected difference
(through a stand-in for the RTL) with the failing op marked and exits 1.

On the RTL (Verilator, ``ChipParams()``: the build ``tests/test_chip_rtl.py`` uses too): a
fixed-seed campaign of valid and illegal programs under random memory stalls, with jitter
twins; longer campaigns on the other configurations are ``slow``.
"""

import copy

import numpy as np
import pytest

from hw.isa import Buf, Counter, Err, Op, PosReg, Unit, decode, encode
from sim import fuzz
from sim.fuzz import (
    DEFAULT,
    ILLEGAL_KINDS,
    PARAMS,
    SMALL,
    Program,
    check_order,
    compare_job,
    gen_illegal,
    gen_resync,
    gen_valid,
    make_image,
    make_programs,
    mem_layout,
    run_campaign,
)
from sim.isa_sim import IsaSim

SEEDS = (1, 2, 3)


def _key(prog: Program):
    return (prog.index, prog.kind, tuple(prog.words), prog.pos_init, prog.expect,
            prog.expect_pc, prog.tainted, prog.prog_len, prog.prog_addr, prog.mem,
            prog.twin_of, prog.note)


# -- the generator ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small", "default"])
def test_same_seed_same_campaign(name):
    p = PARAMS[name]
    a = make_programs(p, 5, 20, 20)
    b = make_programs(p, 5, 20, 20)
    assert [_key(x) for x in a] == [_key(x) for x in b]
    c = make_programs(p, 6, 20, 20)
    assert [_key(x) for x in a] != [_key(x) for x in c]
    lay = mem_layout(p)
    assert np.array_equal(make_image(p, lay, 5, 0), make_image(p, lay, 5, 0))
    assert not np.array_equal(make_image(p, lay, 5, 0), make_image(p, lay, 5, 1))
    # program i depends on (seed, i) alone, not on what else the campaign holds
    for prog in a:
        if prog.kind == "valid" and prog.twin_of is None:
            assert _key(gen_valid(p, lay, 5, prog.index)) == _key(prog)


def _run_isa(p, image, prog) -> IsaSim:
    sim = IsaSim(p, offchip=image)
    sim.pos = prog.pos_init
    sim.load_program(prog.words)
    sim.run(max_ops=prog.length + 2)
    return sim


@pytest.mark.parametrize("name", ["small", "r16", "default", "deepkv"])
def test_illegal_intent_matches_isa_sim(name):
    """Every illegal kind, many seeds: IsaSim raises the error the generator meant, at the pc
    it meant (from a random image, buffers loaded: as in a campaign's first job)."""
    p = PARAMS[name]
    lay = mem_layout(p)
    image = make_image(p, lay, 9, 0)
    base = IsaSim(p, offchip=image)
    rs = gen_resync(p, lay, 9, 0)
    base.load_program(rs.words)
    assert base.run() == Err.NONE
    seen = {k: 0 for k in ILLEGAL_KINDS}
    for kind, err in ILLEGAL_KINDS.items():
        for i in range(12):
            prog = gen_illegal(p, lay, 100 + i, i, kind)
            assert prog.expect == ILLEGAL_KINDS[prog.illegal]
            if prog.illegal == kind:
                seen[kind] += 1
            if prog.sim_skip:  # a program beyond the memory: IsaSim.boot's check
                sim = copy.deepcopy(base)
                sim.boot(prog.prog_addr, prog.length, prog.pos_init)
                sim.run()
                assert (sim.error, sim.error_pc) == (Err.PROG_LOAD, 0), prog.note
                continue
            sim = copy.deepcopy(base)
            sim.pos = prog.pos_init
            sim.load_program(prog.words)
            sim.run(max_ops=prog.length + 2)
            assert (sim.error, sim.error_pc) == (prog.expect, prog.expect_pc), \
                (prog.note, fuzz.format_program(prog.words, {prog.expect_pc: ">>"}))
            assert err != Err.NONE
    # the generator found an op of every kind (it falls back to an illegal opcode else)
    assert all(n >= 6 for n in seen.values()), seen


def test_campaign_mix():
    """The campaign has valid, illegal (quiesced and aborting), resync programs and twins;
    every valid program runs clean on IsaSim; the whole campaign's intent matches IsaSim."""
    p = SMALL
    lay = mem_layout(p)
    for seed in SEEDS:
        progs = make_programs(p, seed, 40, 40, twins=0.2)
        kinds = {(x.kind, x.tainted, x.twin_of is not None) for x in progs}
        assert {("valid", False, False), ("valid", False, True), ("illegal", False, False),
                ("illegal", True, False), ("resync", False, False)} <= kinds
        sim = IsaSim(p, offchip=make_image(p, lay, seed, 0))
        for prog in progs:
            if prog.sim_skip:
                continue
            sim.pos = prog.pos_init
            sim.load_program(prog.words)
            sim.run(max_ops=prog.length + 2)
            assert (sim.error, sim.error_pc if sim.error else 0) == \
                (prog.expect, prog.expect_pc if prog.expect else 0), prog.note
            if prog.twin_of is not None:
                orig = progs[prog.twin_of]
                assert orig.words == prog.words and orig.stalls != prog.stalls
        assert any(x.stalls for x in progs) and any(not x.stalls for x in progs)
        assert any(x.uops is not None and x.late for x in progs)  # ops queued after the error


# -- the WAITs: results independent of timing ------------------------------------------------


def _builder(p=SMALL, pos=0):
    lay = mem_layout(p)
    return fuzz._Builder(p, lay, np.random.default_rng(0), pos, (0, 0, 0, 1), junk=0)


def _ops(b):
    return [decode(w) for w in b.words]


def _waits(b, start):
    return [(f["unit"], f["count"]) for op, f in _ops(b)[start:] if op == Op.WAIT]


def test_conflict_rules_hand_made():
    b = _builder()
    b.load(Buf.ACT, 10, 0, 0)                # writes ACT 0..9
    b.load(Buf.WGT, 4, 0, 100)               # writes WGT 0..3
    n = len(b.words)
    b.store(Buf.PRM, 2, 0, 50)               # reads PRM, writes OFF 50.. (no LOAD reads there)
    assert _waits(b, n) == []
    n = len(b.words)
    b.store(Buf.ACT, 1, 9, 60)               # reads ACT 9: the first LOAD must be done
    w = _waits(b, n)
    assert len(w) == 1 and w[0][0] == Unit.LOAD and w[0][1] in (0, 1)
    n = len(b.words)
    b.store(Buf.ACT, 1, 9, 61)               # same unit as the last STORE: in order
    assert _waits(b, n) == []
    n = len(b.words)
    b.load(Buf.KV, 1, 0, 60)                 # reads OFF 60 that a STORE writes: wait for it
    # the STORE to bus word 60 has one newer STORE pending: WAIT STORE, 1 (or 0)
    w = _waits(b, n)
    assert len(w) == 1 and w[0][0] == Unit.STORE and w[0][1] <= 1
    n = len(b.words)
    b.load(Buf.KV, 1, 5, 3000)               # disjoint: no wait
    assert _waits(b, n) == []
    # GEMM writing ACC, then a STORE of those words, then a LOAD over them
    b.drain()
    f = dict(mode=0, wsrc=0, psrc=0, first=1, final=1, dyn=0, w_addr=0, a_addr=0, a_stride=1,
             acc_addr=20, acc_stride=1, prm_addr=0, prm_step=0, oprm_addr=0, t_len=2,
             k_tiles=1, n_tiles=1)
    err, fp, eff = fuzz.gemm_check(b.p, f, b.pos)
    assert err == Err.NONE and (Buf.ACC, 20, 22, True) in fp
    b.gemm(f, fp, eff)
    n = len(b.words)
    b.store(Buf.ACC, 1, 21, 70)
    assert [u for u, _ in _waits(b, n)] == [Unit.GEMM]
    n = len(b.words)
    b.load(Buf.ACC, 4, 18, 200)              # overwrites ACC the STORE reads: wait for it
    assert [u for u, _ in _waits(b, n)] == [Unit.STORE]
    n = len(b.words)
    b.load(Buf.ACT, 1, 1, 300)               # the GEMM reads ACT 0..1: done already (waited)
    assert _waits(b, n) == []


def test_redundant_wait_keeps_older_ops_pending():
    """``WAIT unit, n`` with more than ``n`` ops pending finishes only the older ones; with
    fewer, none (a bug the RTL campaign once showed as a race: seed 8001, program 467)."""
    b = _builder()
    b.load(Buf.ACT, 10, 0, 0)
    b.load(Buf.WGT, 4, 0, 100)
    b.wait(Unit.LOAD, 3)                     # 2 pending <= 3: waits for nothing
    assert len(b.pending[Unit.LOAD]) == 2
    n = len(b.words)
    b.store(Buf.ACT, 1, 9, 60)               # still needs the first LOAD
    w = _waits(b, n)
    assert len(w) == 1 and w[0][0] == Unit.LOAD and w[0][1] <= 1
    b.load(Buf.PRM, 1, 0, 400)
    b.load(Buf.PRM, 1, 1, 401)
    b.load(Buf.PRM, 1, 2, 402)
    b.wait(Unit.LOAD, 1)                     # all but the newest
    assert [fp[0][1] for fp in b.pending[Unit.LOAD]] == [2]


def test_check_order():
    """The static order check (independent of the builder's bookkeeping) passes every
    generated program, flags a program with a WAIT taken out, and flags programs of a
    builder with the old redundant-WAIT bug."""
    for name in ("small", "r16", "default"):
        p = PARAMS[name]
        lay = mem_layout(p)
        for i in range(40):
            for prog in (gen_valid(p, lay, 31, i), gen_illegal(p, lay, 31, i)):
                assert check_order(prog.words, prog.fps) == [], prog.note
    b = _builder()
    b.load(Buf.ACT, 10, 0, 0)
    b.store(Buf.ACT, 1, 9, 60)
    assert check_order(b.words, b.fps) == []
    waits = [i for i, (op, _) in enumerate(_ops(b)) if op == Op.WAIT]
    assert len(waits) == 1
    words = [w if i != waits[0] else encode(Op.NOP) for i, w in enumerate(b.words)]
    assert check_order(words, b.fps) == ["op 2 (STORE) overlaps op 0 (LOAD) that may still run"]

    def old_wait(self, unit, count=0):
        self.emit(Op.WAIT, unit=unit, count=count)
        if unit in self.pending:
            pend = self.pending[unit]
            self.pending[unit] = pend[len(pend) - count:] if count else []

    orig = fuzz._Builder.wait
    fuzz._Builder.wait = old_wait
    caught = 0
    try:
        for i in range(300):
            try:
                gen_valid(SMALL, mem_layout(SMALL), 4, i)
            except AssertionError as e:
                assert "races" in str(e)
                caught += 1
    finally:
        fuzz._Builder.wait = orig
    assert caught >= 1


def _scheduled(p, start: IsaSim, prog: Program, rng, wait_ok=True, late=False) -> IsaSim:
    """``prog`` from ``start`` (a copy) under a random schedule of atomic ops
    (:meth:`IsaSim.run_scheduled`)."""
    return copy.deepcopy(start).run_scheduled(prog.words, rng, wait_ok=wait_ok, late=late,
                                              pos=prog.pos_init)


def _same_state(a: IsaSim, b: IsaSim) -> bool:
    return np.array_equal(a.offchip, b.offchip) and all(
        np.array_equal(a.bufs[x], b.bufs[x]) for x in Buf)


def _start(p, seed):
    lay = mem_layout(p)
    sim = IsaSim(p, offchip=make_image(p, lay, seed, 0))
    sim.load_program(gen_resync(p, lay, seed, 0).words)
    assert sim.run() == Err.NONE
    return sim, lay


@pytest.mark.parametrize("name", ["small", "r16", "deepkv"])
def test_results_independent_of_schedule(name):
    """Valid programs under random schedules give the sequential (IsaSim) result."""
    p = PARAMS[name]
    start, lay = _start(p, 4)
    rng = np.random.default_rng(4)
    for i in range(25):
        prog = gen_valid(p, lay, 4, i)
        ref = copy.deepcopy(start)
        ref.pos = prog.pos_init
        ref.load_program(prog.words)
        assert ref.run() == Err.NONE
        for k in range(4):
            got = _scheduled(p, start, prog, rng, late=k == 0)
            assert _same_state(got, ref), f"program {i}: a schedule changed the result"
            assert got.pos == ref.pos
    # SETPOS KV_BASE is in the mix (KV fields relative to it)
    assert any(op == Op.SETPOS and f["reg"] == PosReg.KV_BASE
               for i in range(25) for op, f in map(decode, gen_valid(p, lay, 4, i).words))


def test_schedule_check_sees_missing_waits():
    """The schedule check is not vacuous: without their WAITs, programs do give
    schedule-dependent results."""
    p = SMALL
    start, lay = _start(p, 4)
    rng = np.random.default_rng(5)
    differ = 0
    for i in range(25):
        prog = gen_valid(p, lay, 4, i)
        ref = copy.deepcopy(start)
        ref.pos = prog.pos_init
        ref.load_program(prog.words)
        ref.run()
        for k in range(4):
            got = _scheduled(p, start, prog, rng, wait_ok=False, late=k == 0)
            if not _same_state(got, ref):
                differ += 1
                break
    assert differ >= 15, differ


# -- reporting and the pipeline (a stand-in for the RTL) ------------------------------------


def _fake_run_jobs(bug=None):
    """``run_jobs`` on IsaSim (``sim.isa_sim.isa_jobs``): CYCLES grows with memory stalls;
    ``bug(i, result)`` may corrupt the result of job ``i``."""
    from sim.isa_sim import isa_jobs

    def run_jobs(p, image, jobs, name=None):
        res = isa_jobs(p, image, jobs)
        for i, (job, r) in enumerate(zip(jobs, res, strict=True)):
            stalls = job.interval > 1 or (job.jitter and job.jitter_max)
            r.counters[Counter.CYCLES] = 1000 * (2 if stalls else 1)
            if bug:
                bug(i, r)
        return res
    return run_jobs


def test_pipeline_agrees_with_itself(monkeypatch):
    import sim.chip_rtl

    monkeypatch.setattr(sim.chip_rtl, "run_jobs", _fake_run_jobs())
    rep = run_campaign(SMALL, 21, 15, 15, log=lambda s: None, jobs_per_run=12, twins=0.3)
    assert rep.mismatches == [] and rep.jobs > 30 and rep.batches >= 3 and rep.twins


def test_pipeline_reports_a_difference(monkeypatch, capsys):
    """A corrupted byte in one job's memory dump: the job is reported with the STORE and the
    op that wrote the word marked, the replay command, and the CLI exits 1."""
    import sim.chip_rtl
    from scripts import fuzz_chip

    hit = []

    def bug(i, r):
        if not hit and i == 3 and r.error == Err.NONE:
            lay = mem_layout(SMALL)
            B = SMALL.offchip_bytes_per_cycle
            r.offchip[lay.dump[Buf.ACC] * B + 5] ^= 0x10
            hit.append(i)

    monkeypatch.setattr(sim.chip_rtl, "run_jobs", _fake_run_jobs(bug))
    code = fuzz_chip.main(["--seed", "21", "--programs", "12", "--params", "small"])
    out = capsys.readouterr().out
    assert hit and code == 1
    assert "MISMATCH seed 21 run 0 job 3" in out
    assert "dump region of ACC; STORE op" in out and "\nS>" in out
    assert "replay: " in out and "--seed 21 --programs 12 --params small" in out
    monkeypatch.setattr(sim.chip_rtl, "run_jobs", _fake_run_jobs())
    assert fuzz_chip.main(["--seed", "21", "--programs", "12", "--params", "small"]) == 0


def test_compare_job_error_mismatch():
    """An error code or pc the RTL gets wrong is reported with both pcs marked."""
    from sim.chip_rtl import JobResult

    p = SMALL
    lay = mem_layout(p)
    prog = gen_illegal(p, lay, 3, 1, "dma_sram")
    assert prog.note.startswith("dma_sram")
    image = make_image(p, lay, 3, 0)
    ref = _run_isa(p, image, prog)
    rtl = JobResult(Err.OFFCHIP_RANGE, prog.expect_pc - 1 if prog.expect_pc else 1, ref.pos,
                    dict(ref.counters), ref.offchip.copy())
    marks = {}
    sim = IsaSim(p, offchip=image)
    diffs = compare_job(p, lay, prog, rtl, sim, image.copy(), 1000, {}, marks)
    assert any(d.startswith("error: RTL OFFCHIP_RANGE, IsaSim SRAM_RANGE") for d in diffs)
    assert any(d.startswith("error_pc") for d in diffs)
    assert marks[prog.expect_pc] == ">>" and "R>" in marks.values()


# -- on the RTL ---------------------------------------------------------------------------------


def _check(rep):
    assert not rep.mismatches, "\n\n".join(m.text for m in rep.mismatches[:3])


def test_fuzz_rtl_default_config():
    """ChipParams(): valid and illegal programs (some aborting in-flight ops), every job under
    its own memory model configuration, jitter twins. A failure prints the mismatching jobs;
    replay: scripts/fuzz_chip.py --seed 2024 --programs 24 --params default --illegal 0.5
    --twins 0.3 --jobs-per-run 60."""
    rep = run_campaign(DEFAULT, 2024, 12, 12, twins=0.3, log=lambda s: None)
    _check(rep)
    assert rep.by_kind.get("valid", 0) == 12
    assert rep.by_kind.get("illegal", 0) + rep.by_kind.get("illegal (abort)", 0) == 12
    assert rep.by_kind.get("illegal (abort)", 0) >= 1
    assert rep.twins and all(stalled > quiet for _, quiet, stalled in rep.twins)


@pytest.mark.slow
@pytest.mark.parametrize("name,seed,n", [("small", 7001, 400), ("r16", 7002, 150),
                                         ("default", 7003, 80), ("deepkv", 7004, 150)])
def test_fuzz_rtl_long(name, seed, n):
    rep = run_campaign(PARAMS[name], seed, n // 2, n - n // 2, log=print)
    print(rep.summary())
    _check(rep)
    assert rep.twins and all(stalled > quiet for _, quiet, stalled in rep.twins)

"""The instruction-level simulator (``sim/isa_sim.py``) against the golden model.

Programs are encoded with ``hw.isa.encode``; memory images and programs are laid out by
``sw/programs.py`` from the formats ``hw/isa.py`` documents (its codec, ``pack_words``), never
with the simulator's helpers; results travel back through ``STORE`` into off-chip memory and are
compared bit for bit with ``sim.golden`` (``gemm``, ``gemm_act``). Error tests check the code, the
failing ``pc`` and that the failing micro-op wrote nothing (against a run that stops right before
it). Random tests print their seed; replay with ISA_SEED=<seed>.
"""

import os

import numpy as np
import pytest
from amaranth.lib import data

from hw.isa import (
    PRM_STEP_NEVER,
    Buf,
    Counter,
    Dyn,
    Err,
    GridMode,
    KvKind,
    Op,
    Unit,
    WSrc,
    buffer_depth,
    bus_words_per,
    encode,
    word_bytes,
    word_layout,
)
from hw.params import ChipParams
from sim import golden as G
from sim.isa_sim import TIMED_COUNTERS, IsaSim, round_output
from sw.programs import (
    Image,
    KvHead,
    acc_words,
    act_fields,
    bus_image,
    error_cases,
    gscale,
    ncols_of,
    prm_fields,
    pv_planes,
    weight_fields,
    weight_gemm,
)
from sw.quantize import random_gemm, to_wide

SEED = int(os.environ.get("ISA_SEED", np.random.SeedSequence().entropy % 2**32))
F = G.NUM.frac_bits
AG = G.NUM.act_group
P16 = ChipParams(rows=16, cols=16)
P4 = ChipParams(rows=4, cols=8)


@pytest.fixture
def rng():
    print(f"ISA_SEED={SEED}")
    return np.random.default_rng(SEED)


# -- 1. weight GEMMs: load -> GEMM -> store vs sim.golden.gemm --------------------------------


@pytest.mark.parametrize("p", [P16, P4], ids=["16x16", "4x8"])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("T, split", [(1, False), (5, False), (3, True)])
def test_weight_gemm_matches_golden(rng, p, bits, T, split):
    """K = 96 (three weight groups), N = 37 (partial last block); ``split``: K as two GEMM
    micro-ops (64 + 32 on separate weight tiles), the second adding to the first's sums."""
    K, N = 96, 37
    x, qw, bias = random_gemm(rng, T, K, N, bits)
    x8, xs = G.quantize_rows(x)
    img = Image(p)
    wg = weight_gemm(p, img, x8, xs, qw, bias, k_ops=2 if split else 1,
                     base=dict(wgt=5, act=3, prm=2, acc=7), exp_rng=rng)
    assert [op[2:] for op in wg.ops] == ([(0, 64), (64, K)] if split else [(0, K)])
    sim = IsaSim(p, img.mem)
    sim.load_program(wg.prog)
    assert sim.run() == Err.NONE and sim.done
    assert np.array_equal(wg.result(sim.offchip), G.gemm(x8, xs, qw, bias))
    acc = wg.acc(sim.offchip)
    assert not acc[:, :, wg.nc :].any()  # INT8: lanes c >= PC
    assert not acc[:, :, : wg.nc].reshape(T, -1)[:, N:].any()  # padding columns
    assert wg.counters[Counter.GRID_ROWS] == wg.nb * (K // p.rows) * T
    assert all(sim.counters[k] == v for k, v in wg.counters.items())
    assert all(sim.counters[k] == 0 for k in TIMED_COUNTERS)


@pytest.mark.parametrize("p", [P16, P4], ids=["16x16", "4x8"])
@pytest.mark.parametrize("bits", [4, 8])
def test_streamed_weight_gemm_matches_golden(rng, p, bits):
    """Weights and group parameters streamed through two alternating WGT / PRM regions
    (``double_buffer``), N in four ops and K in two: each op's operands are loaded while the
    previous op runs, into the region the op before that has finished with."""
    T, K, N = 2, 128, 4 * ncols_of(p, GridMode.W4A8 if bits == 4 else GridMode.INT8) + 3
    x, qw, bias = random_gemm(rng, T, K, N, bits)
    x8, xs = G.quantize_rows(x)
    img = Image(p)
    wg = weight_gemm(p, img, x8, xs, qw, bias, n_ops=4, k_ops=2, double_buffer=True)
    assert len(wg.ops) == 8
    sim = IsaSim(p, img.mem)
    sim.load_program(wg.prog)
    assert sim.run() == Err.NONE and sim.done
    assert np.array_equal(wg.result(sim.offchip), G.gemm(x8, xs, qw, bias))
    assert all(sim.counters[k] == v for k, v in wg.counters.items())


# -- 2. attention from the KV cache: QKᵀ and P·V vs sim.golden.gemm_act -------------------------


@pytest.mark.parametrize("p", [P16, P4], ids=["16x16", "4x8"])
def test_kv_cache_qk_and_pv(rng, p):
    """Keys and values appended by a 5-token prefill and three single-token steps (SETPOS
    between them); QKᵀ (KV_TILED, psrc KV, dyn POS) after the prefill and after the last
    step, P·V (KV_ROWS, A15 as two INT8 planes, dyn POS) at pos = 6 with two query rows."""
    R, C = p.rows, p.cols
    PC = C // 2
    d, S, cap = 32, 8, 16
    head = KvHead(p, d, cap)
    wpr, Gd = head.words_per_row, head.G
    k8, ks = G.quantize_rows(to_wide(rng.normal(size=(S, d)) * 3))
    v8, vs = G.quantize_rows(to_wide(rng.normal(size=(S, d))), group=None)
    q8, qs = G.quantize_rows(to_wide(rng.normal(size=(5, d))))
    pp = rng.integers(0, 1 << 20, size=(2, S))
    p15, ps = G.quantize_rows(pp, bits=15)
    p15 = p15.astype(np.int64)
    shift = int(rng.integers(0, 20))
    kpv = -(-S // R)  # P·V K-tiles over the 8 visible keys

    # ACT: keys, values, queries, the two P planes; KV: keys, key scales, values, value scales
    rows = [
        act_fields(R, k8, ks.mant, ks.exp, ks.group),
        act_fields(R, v8, vs.mant, vs.exp, vs.group),
        act_fields(R, q8, qs.mant, qs.exp, qs.group),
        *pv_planes(R, p15, ps),
    ]
    for r in rows[:2]:  # KV_APPEND takes exp from a row's first word, a group's scale from
        w = np.arange(len(r["exp"])) % wpr  # the word where the group starts
        r["exp"][w > 0] = rng.integers(-128, 128, (w > 0).sum())
        r["gshift"][w % (AG // R) > 0] = rng.integers(0, 32, (w % (AG // R) > 0).sum())
    base = np.cumsum([0] + [len(r["exp"]) for r in rows])
    K_A, V_A, Q_A, PH_A, PL_A = (int(b) for b in base[:5])
    act = {f: np.concatenate([r[f] for r in rows]) for f in rows[0]}
    nv = d // PC  # P·V output blocks
    prm_g, prm_o = head.pv_params(shift)
    nq1, nq2 = -(-5 // PC), -(-S // PC)  # QKᵀ output blocks
    ACC1, ACC2, ACC3 = 0, 5 * nq1, 5 * nq1 + nq2

    img = Image(p)
    a_off, a_n = img.put(Buf.ACT, act)
    g_off, g_n = img.put(Buf.PRM, prm_g)
    o_off, o_n = img.put(Buf.PRM, prm_o)
    n_acc = ACC3 + 2 * nv
    out_off = img.reserve(Buf.ACC, n_acc)

    def append(kind, t0, n):
        return head.append(kind, n, (K_A if kind == KvKind.KEY else V_A) + t0 * wpr)

    def pv(plane):
        return head.pv(plane, 2, PH_A if plane == 0 else PL_A, kpv, ACC3, plane * nv, g_n)

    prog = [
        encode(Op.LOAD, buf=Buf.ACT, sram=0, words=a_n, off=a_off),
        encode(Op.LOAD, buf=Buf.PRM, sram=0, words=g_n, off=g_off),
        encode(Op.LOAD, buf=Buf.PRM, sram=g_n, words=o_n, off=o_off),
        encode(Op.SETPOS, value=0),
        append(KvKind.KEY, 0, 5),
        append(KvKind.VALUE, 0, 5),
        encode(Op.WAIT, unit=Unit.KV, count=0),
        head.qk(5, Q_A, ACC1, nq1),  # prefill: keys 0..4
        encode(Op.SETPOS, add=1, value=5),
    ]
    for i in range(3):
        prog += [append(KvKind.KEY, 5 + i, 1), append(KvKind.VALUE, 5 + i, 1)]
        if i < 2:
            prog.append(encode(Op.SETPOS, add=1, value=1))
    prog += [
        head.qk(1, Q_A, ACC2, nq2),  # pos 7: keys 0..7
        encode(Op.SETPOS, value=6),
        pv(0),
        pv(1),  # pos 6, two rows: keys 0..7
        encode(Op.STORE, buf=Buf.ACC, sram=0, words=n_acc, off=out_off),
        encode(Op.HALT),
    ]

    sim = IsaSim(p, img.mem)
    sim.load_program(prog)
    assert sim.run() == Err.NONE and sim.pos == 6
    acc = acc_words(p, sim.offchip, out_off, n_acc)

    def gather(a0, T, nb, n):
        return acc[a0 : a0 + T * nb].reshape(T, nb, C)[:, :, :PC].reshape(T, nb * PC)[:, :n]

    assert np.array_equal(gather(ACC1, 5, nq1, 5), G.gemm_act(q8, qs, k8[:5], ks[:5]))
    assert np.array_equal(gather(ACC2, 1, nq2, S), G.gemm_act(q8[:1], qs[:1], k8, ks))
    assert np.array_equal(gather(ACC3, 2, nv, d), G.gemm_act(p15, ps, v8.T, None, shift=shift))

    # the KV layout of hw/isa.py: keys transposed, values token-major, scale lanes per block
    kv = sim.read_buffer(Buf.KV, 0, head.end)[""]
    s = np.arange(S)
    key_rows = head.key + (s // PC)[:, None] * d + np.arange(d)
    assert np.array_equal(kv[key_rows, (s % PC)[:, None]], k8.astype(np.int64) & 255)
    assert np.array_equal(kv[head.val : head.val + S * d // PC].reshape(S, d),
                          v8.astype(np.int64) & 255)
    for base_s, sc in ((head.key_s, ks), (head.val_s, vs)):
        gs, gz = gscale(sc.mant)
        lanes = np.concatenate([gs | gz << 5, (sc.exp & 255)[:, None]], axis=1)
        if sc.mant.shape[1] == 1:  # per-token V scale: every group word has it
            lanes = np.concatenate([np.repeat(lanes[:, :1], Gd, 1), lanes[:, 1:]], axis=1)
        srows = base_s + (s // PC)[:, None] * (Gd + 1) + np.arange(Gd + 1)
        assert np.array_equal(kv[srows, (s % PC)[:, None]], lanes)
    assert sim.counters[Counter.GRID_ROWS] == (
        5 * nq1 * (d // R) + 1 * nq2 * (d // R) + 2 * 2 * nv * kpv
    )


def test_sums_persist_between_ops(rng):
    """``y`` outlives a micro-op: after a ``first and final`` GEMM over two blocks (y = t),
    rows t hold the last block's sums; a non-first GEMM adding a zero K-tile to them rounds
    them again with the same out words, giving that block's outputs once more."""
    p = P4
    R, C = p.rows, p.cols
    T, K, N = 3, 32, 2 * C
    x, qw, bias = random_gemm(rng, T, K, N, 4)
    x8, xs = G.quantize_rows(x)
    want = G.gemm(x8, xs, qw, bias)
    act = act_fields(R, x8, xs.mant, xs.exp, xs.group)
    zero = act_fields(R, np.zeros((T, R), np.int64), np.ones((T, 1), np.int64), xs.exp, 16)
    img = Image(p)
    a_off, a_n = img.put(Buf.ACT, {k: np.concatenate([act[k], zero[k]]) for k in act})
    w_off, w_n = img.put(Buf.WGT, weight_fields(p, qw.q, GridMode.W4A8))
    group, out = prm_fields(p, qw, bias, GridMode.W4A8)
    g_off, g_n = img.put(Buf.PRM, group)
    o_off, o_n = img.put(Buf.PRM, out)
    out_off = img.reserve(Buf.ACC, 3 * T)
    common = dict(mode=GridMode.W4A8, final=1, t_len=T, prm_step=3, acc_stride=3)
    prog = [
        encode(Op.LOAD, buf=Buf.ACT, sram=0, words=a_n, off=a_off),
        encode(Op.LOAD, buf=Buf.WGT, sram=0, words=w_n, off=w_off),
        encode(Op.LOAD, buf=Buf.PRM, sram=0, words=g_n, off=g_off),
        encode(Op.LOAD, buf=Buf.PRM, sram=g_n, words=o_n, off=o_off),
        encode(
            Op.GEMM, first=1, a_stride=K // R, oprm_addr=g_n, k_tiles=K // R, n_tiles=2, **common
        ),
        # one zero K-tile (weights: block 0's first tile), block 1's out words
        encode(
            Op.GEMM,
            first=0,
            a_addr=T * K // R,
            a_stride=1,
            acc_addr=2,
            oprm_addr=g_n + 1,
            k_tiles=1,
            n_tiles=1,
            **common,
        ),
        encode(Op.STORE, buf=Buf.ACC, sram=0, words=3 * T, off=out_off),
        encode(Op.HALT),
    ]
    sim = IsaSim(p, img.mem)
    sim.load_program(prog)
    assert sim.run() == Err.NONE
    acc = acc_words(p, sim.offchip, out_off, 3 * T).reshape(T, 3, C)
    assert np.array_equal(acc[:, :2].reshape(T, N), want)
    assert np.array_equal(acc[:, 2], want[:, C:])


# -- 3. every error: code, pc, nothing written ---------------------------------------------------


def random_state(p, seed):
    """Random contents for every buffer (bits above each word 0), ``y`` and memory."""
    r = np.random.default_rng(seed)
    bufs = {}
    for b in Buf:
        layout = word_layout(p, b)
        nb = word_bytes(layout)
        raw = r.integers(0, 256, (buffer_depth(p, b), nb), dtype=np.uint8)
        rem = data.Layout.cast(layout).size % 8
        if rem:
            raw[:, -1] &= (1 << rem) - 1
        bufs[b] = raw
    y = r.integers(-(1 << 62), 1 << 62, (p.acc_entries, p.cols), dtype=np.int64)
    mem = r.integers(0, 256, p.offchip_kib * 1024, dtype=np.uint8)
    return bufs, y, mem


def new_sim(p, state, vector=False):
    bufs, y, mem = state
    sim = IsaSim(p, mem, vector=vector)
    for b in Buf:
        sim.bufs[b][:] = bufs[b]
    sim.y[:] = y
    return sim


PC64 = ChipParams(rows=16, cols=64)  # PC = 32: d = 16 is a multiple of 16 but not of PC


def error_params():
    """Every case of ``sw.programs.error_cases`` on the default chip, and the one that needs
    ``PC > 16``; the ``VEC`` cases of a chip with the vector unit (``vector=True``) on the
    default chip and on 4x8."""
    cases = [(ChipParams(), c, False, c.name) for c in error_cases(ChipParams())]
    cases += [(PC64, c, False, c.name) for c in error_cases(PC64) if c.name == "kv_d_not_pc"]
    for p, tag in ((ChipParams(), "16x16"), (P4, "4x8")):
        cases += [(p, c, True, f"{c.name}-{tag}") for c in error_cases(p, vector=True)
                  if c.name.startswith("vec_")]
    return [pytest.param(p, c.prefix, c.op, c.err, vector, id=name)
            for p, c, vector, name in cases]


@pytest.mark.parametrize("p, prefix, op, err, vector", error_params())
def test_errors(p, prefix, op, err, vector):
    """The op fails with ``err`` at its pc and leaves every buffer, ``y``, memory and ``pos``
    exactly as a run that halts right before it (``Err.NONE`` cases: boundaries that fit)."""
    state = random_state(p, zlib_seed(prefix, op))
    sim = new_sim(p, state, vector)
    sim.load_program(prefix + [op, encode(Op.HALT)])
    assert sim.run() == err
    if err == Err.NONE:
        assert sim.done and sim.counters[Counter.UOPS] == len(prefix) + 2
        return
    ref = new_sim(p, state, vector)
    ref.load_program(prefix + [encode(Op.HALT)])
    assert ref.run() == Err.NONE
    assert sim.error_pc == sim.pc == len(prefix) and sim.done
    assert sim.counters[Counter.UOPS] == len(prefix) + 1
    for b in Buf:
        assert np.array_equal(sim.bufs[b], ref.bufs[b]), b.name
    assert np.array_equal(sim.y, ref.y)
    assert np.array_equal(sim.offchip, ref.offchip)
    assert sim.pos == ref.pos and sim.kv_base == ref.kv_base
    assert sim.step() == err and sim.counters[Counter.UOPS] == len(prefix) + 1  # stays halted


def zlib_seed(prefix, op):
    import zlib

    return zlib.crc32(repr((prefix, op)).encode())


def test_prog_range_and_load():
    sim = IsaSim(ChipParams(uop_depth=16))
    sim.load_program([encode(Op.NOP), encode(Op.SETPOS, value=3)])
    assert sim.run() == Err.PROG_RANGE
    assert sim.error_pc == 2 and sim.pos == 3 and sim.counters[Counter.UOPS] == 2
    sim.load_program([encode(Op.NOP)] * 16 + [encode(Op.HALT)])
    assert sim.run() == Err.PROG_LOAD and sim.counters[Counter.UOPS] == 0
    assert sim.error_pc == 0 and sim.done
    sim.load_program([encode(Op.NOP)] * 15 + [encode(Op.HALT)])
    assert sim.run() == Err.NONE and sim.counters[Counter.UOPS] == 16
    sim.load_program([encode(Op.NOP)] * 5 + [encode(Op.HALT)])
    with pytest.raises(RuntimeError):
        sim.run(max_ops=5)


# -- 4. counters, DMA word format, host helpers ----------------------------------------------------


def test_counters_follow_the_program():
    """UOPS counts every op run (HALT and a failing op too); LOAD/STORE_WORDS the bus words of
    completed DMAs; GRID_ROWS n_tiles * k_tiles * t_len per GEMM (dyn included)."""
    p = P4
    bpw = {b: bus_words_per(p, b) for b in Buf}
    prog = [
        encode(Op.LOAD, buf=Buf.WGT, sram=0, words=40, off=0),
        encode(Op.LOAD, buf=Buf.ACC, sram=0, words=7, off=100),
        encode(Op.NOP),
        encode(
            Op.GEMM,
            mode=GridMode.INT8,
            t_len=3,
            k_tiles=2,
            n_tiles=5,
            a_stride=2,
            acc_stride=5,
            prm_step=PRM_STEP_NEVER,
            final=1,
            first=1,
            oprm_addr=20,
        ),
        encode(Op.SETPOS, value=9),
        encode(
            Op.GEMM,
            mode=GridMode.INT8,
            wsrc=WSrc.KV_TILED,
            dyn=Dyn.POS,
            t_len=2,
            k_tiles=4,
            first=1,
            final=1,
            a_stride=4,
            acc_stride=3,
            prm_step=1,
            oprm_addr=30,
        ),
        encode(Op.STORE, buf=Buf.PRM, sram=3, words=4, off=500),
        encode(Op.WAIT, unit=Unit.STORE, count=0),
        encode(Op.HALT),
    ]
    sim = IsaSim(p)
    sim.load_program(
        np.stack([np.frombuffer(w.to_bytes(16, "little"), np.uint8) for w in prog])
    )  # the program as a memory image
    assert sim.run() == Err.NONE
    c = sim.counters
    assert c[Counter.UOPS] == len(prog)
    assert c[Counter.LOAD_WORDS] == 40 * bpw[Buf.WGT] + 7 * bpw[Buf.ACC]
    assert c[Counter.STORE_WORDS] == 4 * bpw[Buf.PRM]
    assert c[Counter.GRID_ROWS] == 5 * 2 * 3 + (-(-(9 + 2) // (p.cols // 2))) * 4 * 2
    assert all(c[k] == 0 for k in TIMED_COUNTERS)
    # a failing LOAD counts as a micro-op, not as words moved
    sim.load_program(prog[:1] + [encode(Op.LOAD, buf=Buf.PRM, sram=300, words=1), prog[-1]])
    assert sim.run() == Err.SRAM_RANGE
    assert c is not sim.counters and sim.counters[Counter.UOPS] == 2
    assert sim.counters[Counter.LOAD_WORDS] == 40 * bpw[Buf.WGT]


def test_dma_word_format(rng):
    """A buffer word is bus_words_per bus words, low bits first: LOAD ignores the bits above
    the word, STORE writes zeros there; the host helpers agree with that layout."""
    p = P16  # an ACT word is 142 bits: 18 bytes in 3 bus words of 8
    n = 5
    fields = {
        "data": rng.integers(-128, 128, (n, p.rows)),
        "gshift": rng.integers(0, 32, n),
        "gzero": rng.integers(0, 2, n),
        "exp": rng.integers(-128, 128, n),
    }
    img = bus_image(p, Buf.ACT, fields)
    per = img.shape[1]
    assert per == 24 and word_bytes(word_layout(p, Buf.ACT)) == 18
    dirty = img.copy()
    dirty[:, 17] |= 0xC0  # bits 142, 143
    dirty[:, 18:] = 0xA5
    sim = IsaSim(p)
    assert np.array_equal(sim.image_words(Buf.ACT, fields), img.ravel())
    assert all(np.array_equal(v, fields[k]) for k, v in sim.offchip_words(Buf.ACT, dirty).items())
    sim.write_offchip(10, dirty)
    sim.offchip[1000 * 8 : 1000 * 8 + n * per] = 0xFF
    sim.load_program(
        [
            encode(Op.LOAD, buf=Buf.ACT, sram=4, words=n, off=10),
            encode(Op.STORE, buf=Buf.ACT, sram=4, words=n, off=1000),
            encode(Op.HALT),
        ]
    )
    assert sim.run() == Err.NONE
    assert np.array_equal(sim.read_offchip(1000, n * 3), img.ravel())
    assert np.array_equal(sim.bufs[Buf.ACT][4 : 4 + n], img[:, :18])
    got = sim.read_buffer(Buf.ACT, 4, n)
    assert all(np.array_equal(got[k], fields[k]) for k in fields)
    sim.write_buffer(
        Buf.PRM,
        7,
        {"out.shift": np.full((2, p.cols), -3), "out.bias": np.full((2, p.cols), 1 << 30)},
    )
    prm = sim.read_buffer(Buf.PRM, 7, 2)
    assert (prm["out.shift"] == -3).all() and (prm["out.bias"] == 1 << 30).all()
    with pytest.raises(ValueError):
        sim.read_buffer(Buf.PRM, buffer_depth(p, Buf.PRM) - 1, 2)


def test_output_rounding_over_the_whole_64_bit_range(rng):
    """The output stage on any 64-bit sum, as ``hw/gemm.py``'s stage 5 computes it (a 65-bit
    rounding adder; left shifts clamped at 36 bits) in Python integers: ``sim.golden`` covers
    |Y| < 2**62, the RTL's wrapped sums can lie beyond."""
    n = 4000
    y = rng.integers(-(1 << 63), (1 << 63) - 1, n, dtype=np.int64, endpoint=True)
    y[:200] = rng.choice([-(1 << 63), (1 << 63) - 1, (1 << 62), -(1 << 62) - 1], 200)
    y[200:1000] >>= rng.integers(0, 63, 800)
    sh = rng.integers(-255, 256, n)
    bias = rng.integers(-(1 << 31), 1 << 31, n)

    def sat(v, bits):
        return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, v))

    def rtl(yv, s, b):
        if s >= 63:
            r = 0
        elif s > 0:
            r = (yv + (1 << (s - 1))) >> s
        else:
            r = sat(sat(yv, 36) << min(-s, 35), 36)
        return sat(r + b, 32)

    want = [rtl(int(a), int(s), int(b)) for a, s, b in zip(y, sh, bias, strict=True)]
    got = G.saturate(round_output(y, sh) + bias)
    assert np.array_equal(got, want)

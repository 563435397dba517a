"""The instruction-level simulator (``sim/isa_sim.py``) against the golden model.

Programs are encoded with ``hw.isa.encode``; memory images are laid out here, from the formats
``hw/isa.py`` documents, with its codec (``pack_words``), never with the simulator's helpers;
results travel back through ``STORE`` into off-chip memory and are compared bit for bit with
``sim.golden`` (``gemm``, ``gemm_act``). Error tests check the code, the failing ``pc`` and that
the failing micro-op wrote nothing (against a run that stops right before it).
Random tests print their seed; replay with ISA_SEED=<seed>.
"""

import os

import numpy as np
import pytest
from amaranth.lib import data

from hw.isa import (
    INSTR,
    PRM_STEP_NEVER,
    Buf,
    Counter,
    Dyn,
    Err,
    GridMode,
    KvKind,
    Op,
    PSrc,
    Unit,
    VecFn,
    WSrc,
    buffer_depth,
    bus_words_per,
    encode,
    pack_words,
    unpack_words,
    word_bytes,
    word_layout,
)
from hw.params import ChipParams
from sim import golden as G
from sim.isa_sim import TIMED_COUNTERS, IsaSim, round_output
from sw.quantize import QWeight, quantize_float, to_wide

SEED = int(os.environ.get("ISA_SEED", np.random.SeedSequence().entropy % 2**32))
F = G.NUM.frac_bits
AG = G.NUM.act_group
P16 = ChipParams(rows=16, cols=16)
P4 = ChipParams(rows=4, cols=8)


@pytest.fixture
def rng():
    print(f"ISA_SEED={SEED}")
    return np.random.default_rng(SEED)


# -- memory images, laid out from hw/isa.py ----------------------------------------------------


def bus_image(p, buf, fields):
    """Words of ``buf`` in off-chip form: ``bus_words_per`` bus words each, low bits first,
    zero above the word. uint8 [n, bytes per word]."""
    raw = pack_words(word_layout(p, buf), fields)
    per = bus_words_per(p, buf) * p.offchip_bytes_per_cycle
    out = np.zeros((len(raw), per), np.uint8)
    out[:, : raw.shape[1]] = raw
    return out


def from_bus(p, buf, raw, n):
    per = bus_words_per(p, buf) * p.offchip_bytes_per_cycle
    nb = word_bytes(word_layout(p, buf))
    return unpack_words(word_layout(p, buf), np.asarray(raw).reshape(n, per)[:, :nb])


class Image:
    """An off-chip memory image assembled region by region (bus-word addresses)."""

    def __init__(self, p):
        self.p = p
        self.mem = np.zeros(p.offchip_kib * 1024, np.uint8)
        self.next = 0

    def put(self, buf, fields):
        """Place words of ``buf``; returns (bus address, number of buffer words)."""
        img = bus_image(self.p, buf, fields)
        B = self.p.offchip_bytes_per_cycle
        addr = self.next
        self.mem[addr * B : addr * B + img.size] = img.ravel()
        self.next += img.size // B
        return addr, len(img)

    def reserve(self, buf, n):
        addr = self.next
        self.next += n * bus_words_per(self.p, buf)
        return addr


def gscale(mant):
    """Power-of-two group mantissas -> (gshift, gzero) fields."""
    mant = np.asarray(mant, np.int64)
    gshift = np.where(mant > 0, np.log2(np.maximum(mant, 1)).round(), 0).astype(np.int64)
    assert np.array_equal(np.where(mant > 0, np.left_shift(1, gshift), 0), mant)
    return gshift, (mant == 0).astype(np.int64)


def act_fields(R, x8, mant, exp, group):
    """A8 rows [T, K] (zero-padded to whole K-tiles) -> ACT words, row t at t * k_tiles."""
    x8 = np.asarray(x8, np.int64)
    T, K = x8.shape
    kt = -(-K // R)
    x = np.zeros((T, kt * R), np.int64)
    x[:, :K] = x8
    gidx = (np.arange(kt) * R) // group
    m = np.zeros((T, gidx.max() + 1), np.int64)
    m[:, : min(mant.shape[1], m.shape[1])] = mant[:, : m.shape[1]]
    gs, gz = gscale(m[:, gidx])
    return {
        "data": x.reshape(T * kt, R),
        "gshift": gs.ravel(),
        "gzero": gz.ravel(),
        "exp": np.repeat(np.asarray(exp, np.int64), kt),
    }


def ncols_of(p, mode):
    return p.cols if mode == GridMode.W4A8 else p.cols // 2


def weight_fields(p, q, mode):
    """Weight [N, K] -> WGT words, tile-major: tile (j, kt) row r at (j * k_tiles + kt) * R + r,
    a byte per PE column (INT8, or INT4 lo | hi << 4 for columns 2c, 2c + 1)."""
    R, PC = p.rows, p.cols // 2
    nc = ncols_of(p, mode)
    N, K = q.shape
    nb = -(-N // nc)
    qp = np.zeros((nb * nc, K), np.int64)
    qp[:N] = q
    w = qp.reshape(nb, nc, K // R, R).transpose(0, 2, 3, 1)  # [j, kt, r, column]
    b = (w[..., 0::2] & 15) | ((w[..., 1::2] & 15) << 4) if mode == GridMode.W4A8 else w & 255
    return {"": b.reshape(-1, PC)}


def prm_fields(p, qw, bias, mode):
    """Group words (block j, weight group g at j * K/32 + g) and out words (block j)."""
    C = p.cols
    nc = ncols_of(p, mode)
    N, K = qw.q.shape
    nb, ng = -(-N // nc), K // G.NUM.group

    def lanes(v, shape_tail):  # per-column values [N, ...] -> [nb, ..., C]
        vp = np.zeros((nb * nc, *shape_tail), np.int64)
        vp[:N] = v
        out = np.zeros((nb, *shape_tail, C), np.int64)
        out[..., :nc] = np.moveaxis(vp.reshape(nb, nc, *shape_tail), 1, -1)
        return out

    off = qw.offset if qw.offset is not None else np.zeros_like(qw.scale)
    group = {
        "group.scale": lanes(qw.scale, (ng,)).reshape(-1, C),
        "group.offset": lanes(off, (ng,)).reshape(-1, C),
    }
    out = {"out.shift": lanes(qw.shift, ()), "out.bias": lanes(bias, ())}
    return group, out


def random_problem(rng, T, K, N, bits):
    """As tests/test_gemm.py: activations over three decades per group of 16, weights from
    normals, Q4_1-like random offsets for INT4."""
    x = rng.normal(size=(T, K)) * np.repeat(10.0 ** rng.uniform(-2, 1, (T, K // 16)), 16, 1)
    x8, xs = G.quantize_rows(to_wide(x))
    qw = quantize_float(rng.normal(size=(N, K)) * 0.1, bits=bits)
    if bits == 4:
        qw = QWeight(
            qw.q,
            qw.scale,
            rng.integers(-3000, 3000, qw.scale.shape).astype(np.int16),
            qw.shift,
            bits,
        )
    return x8, xs, qw, to_wide(rng.normal(size=N))


def sub_weight(qw, k0, k1):
    g = G.NUM.group
    return QWeight(
        qw.q[:, k0:k1],
        qw.scale[:, k0 // g : k1 // g],
        None if qw.offset is None else qw.offset[:, k0 // g : k1 // g],
        qw.shift,
        qw.bits,
    )


# -- 1. weight GEMMs: load -> GEMM -> store vs sim.golden.gemm --------------------------------


@pytest.mark.parametrize("p", [P16, P4], ids=["16x16", "4x8"])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("T, split", [(1, False), (5, False), (3, True)])
def test_weight_gemm_matches_golden(rng, p, bits, T, split):
    """K = 96 (three weight groups), N = 37 (partial last block); ``split``: K as two GEMM
    micro-ops (64 + 32 on separate weight tiles), the second adding to the first's sums."""
    R, C = p.rows, p.cols
    K, N = 96, 37
    x8, xs, qw, bias = random_problem(rng, T, K, N, bits)
    want = G.gemm(x8, xs, qw, bias)
    mode = GridMode.W4A8 if bits == 4 else GridMode.INT8
    nc = ncols_of(p, mode)
    nb = -(-N // nc)
    step = int(np.log2(G.NUM.group // R))
    parts = [(0, 64), (64, K)] if split else [(0, K)]

    img = Image(p)
    W_SRAM, A_SRAM, P_SRAM, ACC_SRAM = 5, 3, 2, 7
    act = act_fields(R, x8, xs.mant, xs.exp, xs.group)
    # the scaler rounds with the exp of the row's final K-tile: the others may hold anything
    not_last = np.arange(len(act["exp"])) % (K // R) != K // R - 1
    act["exp"][not_last] = rng.integers(-128, 128, not_last.sum())
    a_off, a_n = img.put(Buf.ACT, act)
    prog = [encode(Op.LOAD, buf=Buf.ACT, sram=A_SRAM, words=a_n, off=a_off)]
    gemms, w_sram, p_sram, load_words = [], W_SRAM, P_SRAM, a_n * bus_words_per(p, Buf.ACT)
    for i, (k0, k1) in enumerate(parts):
        sw = sub_weight(qw, k0, k1)
        w_off, w_n = img.put(Buf.WGT, weight_fields(p, sw.q, mode))
        group, out = prm_fields(p, sw, bias, mode)
        g_off, g_n = img.put(Buf.PRM, group)
        o_off, o_n = img.put(Buf.PRM, out)
        prog += [
            encode(Op.LOAD, buf=Buf.WGT, sram=w_sram, words=w_n, off=w_off),
            encode(Op.LOAD, buf=Buf.PRM, sram=p_sram, words=g_n, off=g_off),
            encode(Op.LOAD, buf=Buf.PRM, sram=p_sram + g_n, words=o_n, off=o_off),
        ]
        load_words += w_n * bus_words_per(p, Buf.WGT) + (g_n + o_n) * bus_words_per(p, Buf.PRM)
        gemms.append(
            encode(
                Op.GEMM,
                mode=mode,
                wsrc=WSrc.WGT,
                psrc=PSrc.PRM,
                first=int(i == 0),
                final=int(i == len(parts) - 1),
                dyn=Dyn.STATIC,
                w_addr=w_sram,
                a_addr=A_SRAM + k0 // R,
                a_stride=K // R,
                acc_addr=ACC_SRAM,
                acc_stride=nb,
                prm_addr=p_sram,
                prm_step=step,
                oprm_addr=p_sram + g_n,
                t_len=T,
                k_tiles=(k1 - k0) // R,
                n_tiles=nb,
            )
        )
        w_sram += w_n
        p_sram += g_n + o_n
    out_off = img.reserve(Buf.ACC, T * nb)
    prog += gemms + [
        encode(Op.STORE, buf=Buf.ACC, sram=ACC_SRAM, words=T * nb, off=out_off),
        encode(Op.HALT),
    ]

    sim = IsaSim(p, img.mem)
    sim.load_program(prog)
    assert sim.run() == Err.NONE and sim.done
    acc = from_bus(
        p, Buf.ACC, sim.read_offchip(out_off, T * nb * bus_words_per(p, Buf.ACC)), T * nb
    )[""].reshape(T, nb, C)
    got = acc[:, :, :nc].reshape(T, nb * nc)
    assert np.array_equal(got[:, :N], want)
    assert not got[:, N:].any() and not acc[:, :, nc:].any()  # padding columns and lanes
    c = sim.counters
    assert c[Counter.UOPS] == len(prog)
    assert c[Counter.GRID_ROWS] == nb * (K // R) * T
    assert c[Counter.LOAD_WORDS] == load_words
    assert c[Counter.STORE_WORDS] == T * nb * bus_words_per(p, Buf.ACC)
    assert all(c[k] == 0 for k in TIMED_COUNTERS)


# -- 2. attention from the KV cache: QKᵀ and P·V vs sim.golden.gemm_act -------------------------


@pytest.mark.parametrize("p", [P16, P4], ids=["16x16", "4x8"])
def test_kv_cache_qk_and_pv(rng, p):
    """Keys and values appended by a 5-token prefill and three single-token steps (SETPOS
    between them); QKᵀ (KV_TILED, psrc KV, dyn POS) after the prefill and after the last
    step, P·V (KV_ROWS, A15 as two INT8 planes, dyn POS) at pos = 6 with two query rows."""
    R, C = p.rows, p.cols
    PC = C // 2
    d, S, cap = 32, 8, 16
    wpr, Gd, blocks = d // R, d // AG, -(-cap // PC)
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
        act_fields(R, p15 >> 7, ps.mant, ps.exp, ps.group),
        act_fields(R, p15 & 127, ps.mant, ps.exp, ps.group),
    ]
    for r in rows[:2]:  # KV_APPEND takes exp from a row's first word, a group's scale from
        w = np.arange(len(r["exp"])) % wpr  # the word where the group starts
        r["exp"][w > 0] = rng.integers(-128, 128, (w > 0).sum())
        r["gshift"][w % (AG // R) > 0] = rng.integers(0, 32, (w % (AG // R) > 0).sum())
    base = np.cumsum([0] + [len(r["exp"]) for r in rows])
    K_A, V_A, Q_A, PH_A, PL_A = (int(b) for b in base[:5])
    act = {f: np.concatenate([r[f] for r in rows]) for f in rows[0]}
    KEY, KEY_S = 0, blocks * d
    VAL = KEY_S + blocks * (Gd + 1)
    VAL_S = VAL + cap * d // PC
    nv = d // PC  # P·V output blocks
    one = np.zeros((nv, C), np.int64)
    one[:, :PC] = 1
    prm_g = {"group.scale": np.concatenate([one * 128, one]), "group.offset": 0 * one.repeat(2, 0)}
    prm_o = {"out.shift": one * shift, "out.bias": 0 * one}
    nq1, nq2 = -(-5 // PC), -(-S // PC)  # QKᵀ output blocks
    ACC1, ACC2, ACC3 = 0, 5 * nq1, 5 * nq1 + nq2

    img = Image(p)
    a_off, a_n = img.put(Buf.ACT, act)
    g_off, g_n = img.put(Buf.PRM, prm_g)
    o_off, o_n = img.put(Buf.PRM, prm_o)
    n_acc = ACC3 + 2 * nv
    out_off = img.reserve(Buf.ACC, n_acc)

    def append(kind, t0, n):
        a_addr = (K_A if kind == KvKind.KEY else V_A) + t0 * wpr
        kv, ksa = (KEY, KEY_S) if kind == KvKind.KEY else (VAL, VAL_S)
        return encode(
            Op.KV_APPEND,
            kind=kind,
            t_len=n,
            a_addr=a_addr,
            a_stride=wpr,
            kv_addr=kv,
            kv_saddr=ksa,
            d=d,
            cap=cap,
        )

    def qk(t_len, acc_addr, stride):
        return encode(
            Op.GEMM,
            mode=GridMode.INT8,
            wsrc=WSrc.KV_TILED,
            psrc=PSrc.KV,
            first=1,
            final=1,
            dyn=Dyn.POS,
            w_addr=KEY,
            a_addr=Q_A,
            a_stride=wpr,
            acc_addr=acc_addr,
            acc_stride=stride,
            prm_addr=KEY_S,
            prm_step=int(np.log2(AG // R)),
            t_len=t_len,
            k_tiles=d // R,
            n_tiles=0,
        )

    def pv(plane):
        return encode(
            Op.GEMM,
            mode=GridMode.INT8,
            wsrc=WSrc.KV_ROWS,
            psrc=PSrc.PRM,
            first=int(plane == 0),
            final=int(plane == 1),
            dyn=Dyn.POS,
            w_addr=VAL,
            a_addr=PH_A if plane == 0 else PL_A,
            a_stride=kpv,
            acc_addr=ACC3,
            acc_stride=nv,
            prm_addr=plane * nv,
            prm_step=PRM_STEP_NEVER,
            oprm_addr=g_n,
            t_len=2,
            k_tiles=0,
            n_tiles=nv,
        )

    prog = [
        encode(Op.LOAD, buf=Buf.ACT, sram=0, words=a_n, off=a_off),
        encode(Op.LOAD, buf=Buf.PRM, sram=0, words=g_n, off=g_off),
        encode(Op.LOAD, buf=Buf.PRM, sram=g_n, words=o_n, off=o_off),
        encode(Op.SETPOS, value=0),
        append(KvKind.KEY, 0, 5),
        append(KvKind.VALUE, 0, 5),
        encode(Op.WAIT, unit=Unit.KV, count=0),
        qk(5, ACC1, nq1),  # prefill: keys 0..4
        encode(Op.SETPOS, add=1, value=5),
    ]
    for i in range(3):
        prog += [append(KvKind.KEY, 5 + i, 1), append(KvKind.VALUE, 5 + i, 1)]
        if i < 2:
            prog.append(encode(Op.SETPOS, add=1, value=1))
    prog += [
        qk(1, ACC2, nq2),  # pos 7: keys 0..7
        encode(Op.SETPOS, value=6),
        pv(0),
        pv(1),  # pos 6, two rows: keys 0..7
        encode(Op.STORE, buf=Buf.ACC, sram=0, words=n_acc, off=out_off),
        encode(Op.HALT),
    ]

    sim = IsaSim(p, img.mem)
    sim.load_program(prog)
    assert sim.run() == Err.NONE and sim.pos == 6
    acc = from_bus(p, Buf.ACC, sim.read_offchip(out_off, n_acc * bus_words_per(p, Buf.ACC)), n_acc)[
        ""
    ]

    def gather(a0, T, nb, n):
        return acc[a0 : a0 + T * nb].reshape(T, nb, C)[:, :, :PC].reshape(T, nb * PC)[:, :n]

    assert np.array_equal(gather(ACC1, 5, nq1, 5), G.gemm_act(q8, qs, k8[:5], ks[:5]))
    assert np.array_equal(gather(ACC2, 1, nq2, S), G.gemm_act(q8[:1], qs[:1], k8, ks))
    assert np.array_equal(gather(ACC3, 2, nv, d), G.gemm_act(p15, ps, v8.T, None, shift=shift))

    # the KV layout of hw/isa.py: keys transposed, values token-major, scale lanes per block
    kv = sim.read_buffer(Buf.KV, 0, VAL_S + blocks * (Gd + 1))[""]
    s = np.arange(S)
    key_rows = KEY + (s // PC)[:, None] * d + np.arange(d)
    assert np.array_equal(kv[key_rows, (s % PC)[:, None]], k8.astype(np.int64) & 255)
    assert np.array_equal(kv[VAL : VAL + S * d // PC].reshape(S, d), v8.astype(np.int64) & 255)
    for base_s, sc in ((KEY_S, ks), (VAL_S, vs)):
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
    x8, xs, qw, bias = random_problem(rng, T, K, N, 4)
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
    acc = from_bus(p, Buf.ACC, sim.read_offchip(out_off, 3 * T * bus_words_per(p, Buf.ACC)), 3 * T)[
        ""
    ].reshape(T, 3, C)
    assert np.array_equal(acc[:, :2].reshape(T, N), want)
    assert np.array_equal(acc[:, 2], want[:, C:])


# -- 3. every error: code, pc, nothing written ---------------------------------------------------


def raw_op(op, member=None, **fields):
    """A micro-op word with any field values (also ones ``encode`` refuses: undefined enum
    values, undefined opcodes), through the INSTR layout's codec."""
    f = {"op": [int(op)]}
    f.update({f"args.{member}.{k}": [int(v)] for k, v in fields.items()})
    return int.from_bytes(pack_words(INSTR, f)[0].tobytes(), "little")


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


def new_sim(p, state):
    bufs, y, mem = state
    sim = IsaSim(p, mem)
    for b in Buf:
        sim.bufs[b][:] = bufs[b]
    sim.y[:] = y
    return sim


PC64 = ChipParams(rows=16, cols=64)  # PC = 32: d = 16 is a multiple of 16 but not of PC


def error_cases():
    p = ChipParams()
    R = p.rows
    dep = {b: buffer_depth(p, b) for b in Buf}
    nbus = p.offchip_kib * 1024 // p.offchip_bytes_per_cycle
    cases = []

    def case(name, prefix, op, err, params=p):
        cases.append(pytest.param(params, prefix, op, err, id=name))

    def gemm(**kw):
        f = dict(
            mode=GridMode.W4A8,
            wsrc=WSrc.WGT,
            psrc=PSrc.PRM,
            first=1,
            final=1,
            dyn=Dyn.STATIC,
            w_addr=0,
            a_addr=0,
            a_stride=2,
            acc_addr=0,
            acc_stride=2,
            prm_addr=0,
            prm_step=1,
            oprm_addr=100,
            t_len=3,
            k_tiles=2,
            n_tiles=2,
        )
        f.update(kw)
        return raw_op(Op.GEMM, "gemm", **f)

    def kv(**kw):
        f = dict(
            kind=KvKind.KEY, t_len=2, a_addr=0, a_stride=2, kv_addr=0, kv_saddr=1000, d=32, cap=64
        )
        f.update(kw)
        return raw_op(Op.KV_APPEND, "kv", **f)

    def dma(op, **kw):
        f = dict(buf=Buf.WGT, sram=0, words=1, off=0)
        f.update(kw)
        return raw_op(op, "dma", **f)

    case("illegal_op_04", [], raw_op(0x04), Err.ILLEGAL_OP)
    case("illegal_op_3f", [encode(Op.NOP)], raw_op(0x3F), Err.ILLEGAL_OP)
    case("vec_unsupported", [], encode(Op.VEC, fn=VecFn.SOFTMAX, rows=2), Err.UNSUPPORTED)
    case("vec_bad_fn_unsupported", [], raw_op(Op.VEC, "vec", fn=31), Err.UNSUPPORTED)
    # -- DMA
    for op in (Op.LOAD, Op.STORE):
        n = op.name.lower()
        case(f"{n}_bad_buf", [], dma(op, buf=5 if op == Op.LOAD else 7), Err.BAD_FIELD)
        case(f"{n}_zero_words", [], dma(op, words=0), Err.BAD_FIELD)
        case(
            f"{n}_zero_words_before_range",
            [],
            dma(op, buf=Buf.PRM, sram=9999, words=0),
            Err.BAD_FIELD,
        )
        for b in Buf:
            case(f"{n}_sram_{b.name}", [], dma(op, buf=b, sram=dep[b] - 1, words=2), Err.SRAM_RANGE)
        case(f"{n}_sram_fits", [], dma(op, buf=Buf.ACC, sram=dep[Buf.ACC] - 2, words=2), Err.NONE)
        bpw = bus_words_per(p, Buf.ACT)
        case(
            f"{n}_offchip",
            [],
            dma(op, buf=Buf.ACT, words=3, off=nbus - 3 * bpw + 1),
            Err.OFFCHIP_RANGE,
        )
        case(f"{n}_offchip_fits", [], dma(op, buf=Buf.ACT, words=3, off=nbus - 3 * bpw), Err.NONE)
        case(
            f"{n}_sram_before_offchip",
            [],
            dma(op, buf=Buf.PRM, sram=dep[Buf.PRM], words=1, off=nbus),
            Err.SRAM_RANGE,
        )
    # -- WAIT, SETPOS
    case("wait_bad_unit", [], raw_op(Op.WAIT, "wait", unit=5, count=1), Err.BAD_FIELD)
    case("wait_bad_unit_7", [], raw_op(Op.WAIT, "wait", unit=7), Err.BAD_FIELD)
    case("wait_ok", [], encode(Op.WAIT, unit=Unit.KV, count=15), Err.NONE)
    case(
        "setpos_overflow",
        [encode(Op.SETPOS, value=65535)],
        encode(Op.SETPOS, add=1, value=1),
        Err.BAD_FIELD,
    )
    case(
        "setpos_add_ok",
        [encode(Op.SETPOS, value=65534)],
        encode(Op.SETPOS, add=1, value=1),
        Err.NONE,
    )
    # -- GEMM fields
    case("gemm_ok", [], gemm(), Err.NONE)
    for f in ("t_len", "k_tiles", "n_tiles"):
        case(f"gemm_{f}_0", [], gemm(**{f: 0}), Err.BAD_FIELD)
    case("gemm_wsrc_3", [], gemm(wsrc=3), Err.BAD_FIELD)
    case("gemm_dyn_wgt", [], gemm(dyn=Dyn.POS), Err.BAD_FIELD)
    case("gemm_dyn_kv_rows_0", [], gemm(wsrc=WSrc.KV_ROWS, dyn=Dyn.POS, t_len=0), Err.BAD_FIELD)
    case("gemm_y_rows", [], gemm(first=0, t_len=129, a_stride=0, acc_stride=0), Err.BAD_FIELD)
    case("gemm_y_rows_fits", [], gemm(first=0, t_len=128, a_stride=0, acc_stride=0), Err.NONE)
    case("gemm_y_rows_first_final", [], gemm(t_len=257, a_stride=0, acc_stride=0), Err.BAD_FIELD)
    # -- GEMM ranges, one per buffer and source (t_len 3, k_tiles 2, n_tiles 2)
    nkr = 2 * 2 * R
    case("gemm_wgt_range", [], gemm(w_addr=dep[Buf.WGT] - nkr + 1), Err.SRAM_RANGE)
    case("gemm_wgt_fits", [], gemm(w_addr=dep[Buf.WGT] - nkr), Err.NONE)
    case(
        "gemm_kv_tiled_range",
        [],
        gemm(wsrc=WSrc.KV_TILED, w_addr=dep[Buf.KV] - nkr + 1),
        Err.SRAM_RANGE,
    )
    case(
        "gemm_kv_rows_range",
        [],
        gemm(wsrc=WSrc.KV_ROWS, w_addr=dep[Buf.KV] - nkr + 1),
        Err.SRAM_RANGE,
    )
    case("gemm_kv_rows_fits", [], gemm(wsrc=WSrc.KV_ROWS, w_addr=dep[Buf.KV] - nkr), Err.NONE)
    case(
        "gemm_dyn_range",
        [encode(Op.SETPOS, value=60000)],
        gemm(wsrc=WSrc.KV_TILED, dyn=Dyn.POS, t_len=1),
        Err.SRAM_RANGE,
    )
    case("gemm_act_range", [], gemm(a_addr=dep[Buf.ACT] - 5), Err.SRAM_RANGE)
    case("gemm_act_fits", [], gemm(a_addr=dep[Buf.ACT] - 6), Err.NONE)
    case("gemm_acc_range", [], gemm(acc_addr=dep[Buf.ACC] - 5), Err.SRAM_RANGE)
    case("gemm_acc_not_final", [], gemm(final=0, acc_addr=dep[Buf.ACC] - 1), Err.NONE)
    case("gemm_prm_group_range", [], gemm(prm_addr=dep[Buf.PRM] - 1), Err.SRAM_RANGE)
    case("gemm_prm_out_range", [], gemm(oprm_addr=dep[Buf.PRM] - 1), Err.SRAM_RANGE)
    case("gemm_prm_out_not_final", [], gemm(final=0, oprm_addr=dep[Buf.PRM] - 1), Err.SRAM_RANGE)
    case("gemm_kv_prm_range", [], gemm(psrc=PSrc.KV, prm_addr=dep[Buf.KV] - 3), Err.SRAM_RANGE)
    # out words are read with every tile (hw/gemm_engine.py), final or not
    case(
        "gemm_kv_prm_not_final",
        [],
        gemm(psrc=PSrc.KV, final=0, prm_addr=dep[Buf.KV] - 3),
        Err.SRAM_RANGE,
    )
    case("gemm_kv_prm_fits", [], gemm(psrc=PSrc.KV, prm_addr=dep[Buf.KV] - 4), Err.NONE)
    case("gemm_prm_out_fits", [], gemm(oprm_addr=dep[Buf.PRM] - 2), Err.NONE)
    # -- KV_APPEND (d 32, cap 64 -> 8 key blocks of 32 words, 24 scale words, 256 value words)
    case("kv_ok", [], kv(), Err.NONE)
    case("kv_t_len_0", [], kv(t_len=0), Err.BAD_FIELD)
    case("kv_d_0", [], kv(d=0), Err.BAD_FIELD)
    case("kv_d_24", [], kv(d=24), Err.BAD_FIELD)
    case("kv_d_not_pc", [], kv(d=16, kv_saddr=300), Err.BAD_FIELD, PC64)
    case("kv_overflow", [encode(Op.SETPOS, value=63)], kv(), Err.KV_OVERFLOW)
    case("kv_overflow_fits", [encode(Op.SETPOS, value=62)], kv(), Err.NONE)
    case(
        "kv_overflow_before_range",
        [encode(Op.SETPOS, value=4095)],
        kv(t_len=1, cap=4095, kv_addr=dep[Buf.KV] - 1),
        Err.KV_OVERFLOW,
    )
    case("kv_key_region", [], kv(kv_addr=dep[Buf.KV] - 256 + 1), Err.SRAM_RANGE)
    case("kv_key_region_fits", [], kv(kv_addr=dep[Buf.KV] - 256), Err.NONE)
    case(
        "kv_value_region", [], kv(kind=KvKind.VALUE, kv_addr=dep[Buf.KV] - 256 + 1), Err.SRAM_RANGE
    )
    case("kv_scale_region", [], kv(kv_saddr=dep[Buf.KV] - 24 + 1), Err.SRAM_RANGE)
    case("kv_scale_region_fits", [], kv(kv_saddr=dep[Buf.KV] - 24), Err.NONE)
    case("kv_act_range", [], kv(a_addr=dep[Buf.ACT] - 3), Err.SRAM_RANGE)
    return cases


@pytest.mark.parametrize("p, prefix, op, err", error_cases())
def test_errors(p, prefix, op, err):
    """The op fails with ``err`` at its pc and leaves every buffer, ``y``, memory and ``pos``
    exactly as a run that halts right before it (``Err.NONE`` cases: boundaries that fit)."""
    state = random_state(p, zlib_seed(prefix, op))
    sim = new_sim(p, state)
    sim.load_program(prefix + [op, encode(Op.HALT)])
    assert sim.run() == err
    if err == Err.NONE:
        assert sim.done and sim.counters[Counter.UOPS] == len(prefix) + 2
        return
    ref = new_sim(p, state)
    ref.load_program(prefix + [encode(Op.HALT)])
    assert ref.run() == Err.NONE
    assert sim.error_pc == sim.pc == len(prefix) and sim.done
    assert sim.counters[Counter.UOPS] == len(prefix) + 1
    for b in Buf:
        assert np.array_equal(sim.bufs[b], ref.bufs[b]), b.name
    assert np.array_equal(sim.y, ref.y)
    assert np.array_equal(sim.offchip, ref.offchip)
    assert sim.pos == ref.pos
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

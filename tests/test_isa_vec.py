"""``VEC`` on the instruction-level simulator (``IsaSim(vector=True)``) against ``sim.golden``.

Every ``VecFn`` runs in a real program (LOAD -> VEC -> STORE) on random data laid out by
``sw/programs.py`` from the formats ``hw/isa.py`` documents, on two chips (16x16 and 4x8),
in both ACC layouts (``half`` or not), with row strides that leave gaps and junk in every
lane and word the op must not read; the stored results are compared bit for bit with the
golden function, and what the op must not write (gaps, padding lanes) is checked too. A
whole attention head (QUANT, KV_APPEND, QKᵀ, SOFTMAX, QUANT with V's scales folded in,
P·V) runs a prefill and two decode steps against ``sim.golden.attention_head``. The error
cases of ``VEC`` are in ``sw.programs.error_cases(p, vector=True)``
(``tests/test_isa_sim.py``); the one that needs crafted data (a V scale outside the format)
is here. Random tests print their seed; replay with ISA_SEED=<seed>.
"""

import os

import numpy as np
import pytest

from hw.isa import (
    Buf,
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
    encode,
)
from hw.params import ChipParams
from sim import golden as G
from sim.isa_sim import IsaSim
from sw.programs import (
    Image,
    KvHead,
    act_fields,
    from_bus,
    norm_prm_fields,
    per_word,
    rope_fields,
    wide_fields,
    wide_rows,
)
from sw.quantize import rope_table, to_wide

SEED = int(os.environ.get("ISA_SEED", np.random.SeedSequence().entropy % 2**32))
F = G.NUM.frac_bits
P16 = ChipParams()
P4 = ChipParams(rows=4, cols=8)
CHIPS = [pytest.param(P16, id="16x16"), pytest.param(P4, id="4x8")]
HALF = [pytest.param(False, id="full"), pytest.param(True, id="half")]


@pytest.fixture
def rng():
    print(f"ISA_SEED={SEED}")
    return np.random.default_rng(SEED)


def wide_data(rng, T, N, lo=-3.0, hi=1.5):
    """Wide rows whose magnitude changes by decades from one group of 16 to the next, with
    an all-zero row and INT32 ends in the last row when there is room."""
    mag = 10.0 ** rng.uniform(lo, hi, (T, -(-N // 16)))
    x = to_wide(rng.normal(size=(T, N)) * np.repeat(mag, 16, axis=1)[:, :N])
    if T >= 3:
        x[1] = 0
        x[-1, :2] = [-(1 << 31), (1 << 31) - 1]
    return x


class Program:
    """A program on an :class:`Image`: loads of buffer words, any ops, stores of results."""

    def __init__(self, p: ChipParams):
        self.p = p
        self.img = Image(p)
        self.ops = []
        self.stores = []

    def load(self, buf, sram, fields) -> int:
        off, n = self.img.put(buf, fields)
        self.ops.append(encode(Op.LOAD, buf=buf, sram=sram, words=n, off=off))
        return n

    def store(self, buf, sram, n) -> int:
        """STORE ``n`` words; returns the index of the result :meth:`run` gives back."""
        off = self.img.reserve(buf, n)
        self.ops.append(encode(Op.STORE, buf=buf, sram=sram, words=n, off=off))
        self.stores.append((buf, off, n))
        return len(self.stores) - 1

    def wait(self, unit):
        self.ops.append(encode(Op.WAIT, unit=unit, count=0))

    def run(self, err=Err.NONE):
        sim = IsaSim(self.p, self.img.mem, vector=True)
        sim.load_program(self.ops + [encode(Op.HALT)])
        assert sim.run() == err
        out = []
        for buf, off, n in self.stores:
            raw = sim.read_offchip(off, n * bus_words_per(self.p, buf))
            out.append(from_bus(self.p, buf, raw, n))
        return sim, out


def vec(fn, **kw):
    return encode(Op.VEC, fn=fn, **kw)


def check_wide(p, words, want, half, stride, junk_words):
    """Stored ACC words: the rows equal ``want``; every other lane of a row's words is 0;
    gap words between rows keep ``junk_words``."""
    T, N = want.shape
    E = per_word(p, half)
    W = -(-N // E)
    assert np.array_equal(wide_rows(p, words, N, half=half, stride=stride), want)
    rows = np.arange(T)[:, None] * stride + np.arange(W)
    clean = wide_fields(p, want, half=half, stride=stride)[""]
    assert np.array_equal(words[rows], clean[rows]), "padding lanes not 0"
    gaps = np.setdiff1d(np.arange(len(words)), rows.ravel())
    assert np.array_equal(words[gaps], junk_words[gaps]), "a gap word was written"


# -- element-wise: RESIDUAL, GELU, SILU_MUL, and ROPE -------------------------------------------


@pytest.mark.parametrize("p", CHIPS)
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("fn", [VecFn.RESIDUAL, VecFn.GELU, VecFn.SILU_MUL])
def test_elementwise(rng, p, half, fn):
    """5 rows of 37 elements (a partial last word), source rows 2 words apart, destination
    rows 1 apart, junk everywhere else."""
    T, N = 5, 37
    W = -(-N // per_word(p, half))
    sst, dst_st = W + 2, W + 1
    a = wide_data(rng, T, N, -2, 1.2)  # GELU / SiLU tables span [-8, 8) / [-16, 16)
    b = wide_data(rng, T, N, -2, 1.2)
    n_src = (T - 1) * sst + W
    n_dst = (T - 1) * dst_st + W
    A0, B0, D0 = 3, 3 + n_src, 3 + 2 * n_src
    junk = wide_fields(p, np.zeros((1, n_dst * p.cols)), junk=rng)[""][:n_dst]
    pr = Program(p)
    pr.load(Buf.ACC, A0, wide_fields(p, a, half=half, stride=sst, junk=rng))
    pr.load(Buf.ACC, B0, wide_fields(p, b, half=half, stride=sst, junk=rng))
    pr.load(Buf.ACC, D0, {"": junk})
    pr.wait(Unit.LOAD)
    pr.ops.append(vec(fn, half=int(half), rows=T, length=N, src_a=A0, src_b=B0,
                      src_stride=sst, dst=D0, dst_stride=dst_st))
    pr.wait(Unit.VEC)
    pr.store(Buf.ACC, D0, n_dst)
    _, (out,) = pr.run()
    want = {VecFn.RESIDUAL: lambda: G.residual_add(a, b), VecFn.GELU: lambda: G.gelu(a),
            VecFn.SILU_MUL: lambda: G.silu_mul(a, b)}[fn]()
    check_wide(p, out[""], want, half, dst_st, junk)


@pytest.mark.parametrize("p", CHIPS)
@pytest.mark.parametrize("half", HALF)
def test_rope(rng, p, half):
    """One head (d = 64) of 3 tokens at positions 5..7 (``pos`` = 5), in place, with the
    SmolLM2 table (theta 100000) of 12 positions in ACC."""
    T, d, pos = 3, 64, 5
    cos, sin = rope_table(100000.0, d, 12)
    x = wide_data(rng, T, d, -1, 3)
    W = -(-d // per_word(p, half))
    X0, TAB = 0, 4 * W
    pr = Program(p)
    pr.load(Buf.ACC, X0, wide_fields(p, x, half=half, junk=rng))
    pr.load(Buf.ACC, TAB, rope_fields(p, cos, sin, half=half))
    pr.ops.append(encode(Op.SETPOS, value=pos))
    pr.wait(Unit.LOAD)
    pr.ops.append(vec(VecFn.ROPE, half=int(half), rows=T, length=d, src_a=X0, src_b=TAB,
                      src_stride=W, dst=X0, dst_stride=W))
    pr.wait(Unit.VEC)
    pr.store(Buf.ACC, X0, T * W)
    _, (out,) = pr.run()
    q = np.arange(pos, pos + T)
    want = G.rope(x[:, None, :], cos[q], sin[q])[:, 0, :]
    assert np.array_equal(wide_rows(p, out[""], d, half=half), want)


def test_rope_table_low_bits(rng):
    """Table entries are used as their low 18 bits, signed: junk above them changes
    nothing."""
    p, T, d = P16, 2, 32
    cos, sin = rope_table(10000.0, d, 4)
    x = wide_data(rng, T, d, 0, 2)
    high = rng.integers(-(1 << 13), 1 << 13, (4, d)) << 18
    tab = rope_fields(p, cos, sin)[""].reshape(4, d) + high
    pr = Program(p)
    pr.load(Buf.ACC, 0, wide_fields(p, x))
    pr.load(Buf.ACC, 10, {"": tab.reshape(-1, p.cols)})
    pr.ops.append(encode(Op.SETPOS, value=1))
    pr.wait(Unit.LOAD)
    pr.ops.append(vec(VecFn.ROPE, rows=T, length=d, src_a=0, src_b=10, src_stride=2,
                      dst=20, dst_stride=2))
    pr.wait(Unit.VEC)
    pr.store(Buf.ACC, 20, 2 * T)
    _, (out,) = pr.run()
    assert np.array_equal(wide_rows(p, out[""], d), G.rope(x[:, None], cos[1:3], sin[1:3])[:, 0])


# -- row operations: LAYERNORM, RMSNORM, SOFTMAX --------------------------------------------------


@pytest.mark.parametrize("p", CHIPS)
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("fn, eps", [(VecFn.LAYERNORM, 1e-12), (VecFn.LAYERNORM, 1e-5),
                                     (VecFn.RMSNORM, 1e-5)])
def test_norms(rng, p, half, fn, eps):
    """6 rows of D = 200 (all-zero, constant, INT32-end rows among them), gamma and beta
    wide in PRM after other words."""
    T, D = 6, 200
    x = wide_data(rng, T, D, -2, 2)
    x[2] = 12345
    gamma = to_wide(rng.normal(size=D))
    beta = to_wide(rng.normal(size=D))
    vecs = [gamma, beta] if fn == VecFn.LAYERNORM else [gamma]
    W = -(-D // per_word(p, half))
    PRM0 = 7
    pr = Program(p)
    pr.load(Buf.ACC, 0, wide_fields(p, x, half=half, junk=rng))
    pr.load(Buf.PRM, PRM0, norm_prm_fields(p, vecs, eps))
    pr.wait(Unit.LOAD)
    pr.ops.append(vec(fn, half=int(half), rows=T, length=D, src_a=0, src_stride=W,
                      dst=T * W, dst_stride=W, prm=PRM0))
    pr.wait(Unit.VEC)
    pr.store(Buf.ACC, T * W, T * W)
    _, (out,) = pr.run()
    want = G.layernorm(x, gamma, beta, eps) if fn == VecFn.LAYERNORM else G.rmsnorm(x, gamma, eps)
    assert np.array_equal(wide_rows(p, out[""], D, half=half), want)


def test_norm_eps_low_bits(rng):
    """eps is the low 17 bits of its lane (bits above it ignored)."""
    p, T, D = P16, 3, 64
    x = wide_data(rng, T, D, -4, -3)  # tiny rows: eps matters
    gamma = to_wide(rng.normal(size=D))
    prm = norm_prm_fields(p, [gamma], 1e-5)
    eps_q = int(prm["out.bias"][-1, 0])
    prm["out.bias"][-1, 0] += 7 << 17
    pr = Program(p)
    pr.load(Buf.ACC, 0, wide_fields(p, x))
    pr.load(Buf.PRM, 0, prm)
    pr.wait(Unit.LOAD)
    pr.ops.append(vec(VecFn.RMSNORM, rows=T, length=D, src_a=0, src_stride=4, dst=0,
                      dst_stride=4))
    pr.wait(Unit.VEC)
    pr.store(Buf.ACC, 0, T * 4)
    _, (out,) = pr.run()
    assert np.array_equal(wide_rows(p, out[""], D), G.rmsnorm(x, gamma, eps_q / 2.0**32))


@pytest.mark.parametrize("p", CHIPS)
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("mode", ["static", "causal", "causal_dyn"])
def test_softmax(rng, p, half, mode):
    """Scores of 4 query rows: over 21 keys (``static``), causal at ``pos`` = 9 with the
    static length 21 (rows 0, 1 see 10, 11 keys) or with ``dyn`` (length ``pos + rows`` =
    13)."""
    T, pos = 4, 9
    S = 13 if mode == "causal_dyn" else 21
    s = to_wide(rng.normal(size=(T, S)) * 4)
    Wmax = -(-21 // per_word(p, half))
    pr = Program(p)
    pr.load(Buf.ACC, 0, wide_fields(p, s, half=half, stride=Wmax, junk=rng))
    pr.ops.append(encode(Op.SETPOS, value=pos))
    pr.wait(Unit.LOAD)
    pr.ops.append(vec(VecFn.SOFTMAX, half=int(half), rows=T, length=0 if mode == "causal_dyn"
                      else S, dyn=Dyn.POS if mode == "causal_dyn" else Dyn.STATIC,
                      causal=int(mode != "static"), src_a=0, src_stride=Wmax, dst=0,
                      dst_stride=Wmax))
    pr.wait(Unit.VEC)
    pr.store(Buf.ACC, 0, T * Wmax)
    _, (out,) = pr.run()
    q_pos = None if mode == "static" else pos + np.arange(T)
    got = wide_rows(p, out[""], S, half=half, stride=Wmax)
    assert np.array_equal(got, G.softmax(s, q_pos))


# -- QUANT -----------------------------------------------------------------------------------


def act_want(p, blocks, e_add=0):
    """The ACT words of A8 row blocks [(x8, ActScale), ...] (``act_fields``), exponents
    plus ``e_add``."""
    out = [act_fields(p.rows, x8, s.mant, s.exp + e_add, s.group) for x8, s in blocks]
    return {f: np.concatenate([o[f] for o in out]) for f in out[0]}


def check_act(got, want):
    for f in want:
        assert np.array_equal(got[f], want[f]), f


@pytest.mark.parametrize("p", CHIPS)
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("qmode", list(QuantMode))
@pytest.mark.parametrize("per_row", [False, True])
def test_quant(rng, p, half, qmode, per_row):
    """5 rows of 70 elements (a partial last group and ACT word) to A8 rows in every mode,
    both scale granularities; the A15 planes and the A8X2 passes are the golden
    ``quantize_rows`` / ``quantize_residual`` as ``act_fields`` lays them out."""
    T, N = 5, 70
    x = wide_data(rng, T, N)
    W = -(-N // per_word(p, half))
    Wq = -(-N // p.rows)
    group = None if per_row else G.NUM.act_group
    pr = Program(p)
    pr.load(Buf.ACC, 0, wide_fields(p, x, half=half, stride=W + 1, junk=rng))
    pr.wait(Unit.LOAD)
    pr.ops.append(vec(VecFn.QUANT, qmode=qmode, per_row=int(per_row), half=int(half), rows=T,
                      length=N, src_a=0, src_stride=W + 1, dst=3, dst_stride=Wq))
    pr.wait(Unit.VEC)
    nblk = 1 if qmode == QuantMode.INT8 else 2
    pr.store(Buf.ACT, 3, nblk * T * Wq)
    _, (out,) = pr.run()
    if qmode == QuantMode.A8X2:
        blocks = list(G.quantize_residual(x, group))
    else:
        xq, xs = G.quantize_rows(x, group, bits=15 if qmode == QuantMode.A15 else 8)
        xq = xq.astype(np.int64)
        blocks = [(xq >> 7, xs), (xq & 127, xs)] if qmode == QuantMode.A15 else [(xq, xs)]
    check_act(out, act_want(p, blocks))


def test_quant_a8x2_gemm(rng):
    """A8X2 as the GEMM takes it: one weight GEMM over both blocks (t_len = 2 T) and a
    RESIDUAL of its two output halves is ``gemm_passes`` of the two passes."""
    from sw.programs import prm_fields, weight_fields
    from sw.quantize import random_gemm

    p, T, K, N = P16, 3, 64, 16
    x, qw, _ = random_gemm(rng, T, K, N, 4)
    kt = K // p.rows
    pr = Program(p)
    pr.load(Buf.ACC, 0, wide_fields(p, x))
    group, out = prm_fields(p, qw, np.zeros(N, np.int64), 1)
    pr.load(Buf.WGT, 0, weight_fields(p, qw.q, 1))
    ng = pr.load(Buf.PRM, 0, group)
    pr.load(Buf.PRM, ng, out)
    pr.wait(Unit.LOAD)
    pr.ops += [vec(VecFn.QUANT, qmode=QuantMode.A8X2, rows=T, length=K, src_a=0, src_stride=4,
                   dst=0, dst_stride=kt),
               encode(Op.WAIT, unit=Unit.VEC, count=0),
               encode(Op.GEMM, mode=1, first=1, final=1, a_addr=0, a_stride=kt, acc_addr=20,
                      acc_stride=1, prm_addr=0, prm_step=1, oprm_addr=ng, t_len=2 * T,
                      k_tiles=kt, n_tiles=1),
               encode(Op.WAIT, unit=Unit.GEMM, count=0),
               vec(VecFn.RESIDUAL, rows=T, length=N, src_a=20, src_b=20 + T, src_stride=1,
                   dst=40, dst_stride=1)]
    pr.wait(Unit.VEC)
    pr.store(Buf.ACC, 40, T)
    _, (res,) = pr.run()
    assert np.array_equal(res[""], G.gemm_passes(G.quantize_act(x, 2), qw))


# -- attention: QUANT with V's scales folded in, and a whole head -----------------------------


def attention_program(p, head: KvHead, steps, q, k, v):
    """A head's attention as micro-ops, one program per step ``(pos, t_len)``: QUANT q, k
    (groups) and v (per row) from ACC, KV_APPEND k and v, QKᵀ (dyn), SOFTMAX (causal, dyn,
    half), QUANT A15 with V's scales folded in (causal, dyn), the two P·V planes (dyn);
    returns the programs' P·V results."""
    R, PC = p.rows, p.cols // 2
    d = head.d
    cap = head.cap
    nv = d // PC
    wq = d // R
    Wd = -(-d // p.cols)
    kq = -(-cap // R)  # ACT words of a P row (the longest)
    nq = -(-cap // PC)  # ACC words of a score row (half)
    img_prog = Program(p)
    pv_g, pv_o = head.pv_params(F)
    ng = img_prog.load(Buf.PRM, 0, pv_g)
    img_prog.load(Buf.PRM, ng, pv_o)
    # ACC: q, k, v rows of the step, scores, P·V out; ACT: q8, k8, v8, P planes
    X = {"q": 0, "k": cap * Wd, "v": 2 * cap * Wd}
    SC = 3 * cap * Wd
    PV = SC + cap * nq
    A8 = {"q": 0, "k": cap * wq, "v": 2 * cap * wq}
    PP = 3 * cap * wq
    results = []
    for pos, t in steps:
        sl = slice(pos, pos + t)
        for name, val in (("q", q), ("k", k), ("v", v)):
            img_prog.load(Buf.ACC, X[name], wide_fields(p, val[sl]))
        img_prog.ops.append(encode(Op.SETPOS, value=pos))
        img_prog.wait(Unit.LOAD)
        for name in "qkv":
            img_prog.ops.append(vec(VecFn.QUANT, per_row=int(name == "v"), rows=t, length=d,
                                    src_a=X[name], src_stride=Wd, dst=A8[name],
                                    dst_stride=wq))
        img_prog.wait(Unit.VEC)
        img_prog.ops += [head.append(KvKind.KEY, t, A8["k"]),
                         head.append(KvKind.VALUE, t, A8["v"]),
                         encode(Op.WAIT, unit=Unit.KV, count=0),
                         head.qk(t, A8["q"], SC, nq),
                         encode(Op.WAIT, unit=Unit.GEMM, count=0),
                         vec(VecFn.SOFTMAX, half=1, rows=t, dyn=Dyn.POS, causal=1, src_a=SC,
                             src_stride=nq, dst=SC, dst_stride=nq),
                         vec(VecFn.QUANT, qmode=QuantMode.A15, vfold=1, causal=1, dyn=Dyn.POS,
                             half=1, rows=t, src_a=SC, src_stride=nq, src_b=head.val_s,
                             vgroups=head.G, dst=PP, dst_stride=kq),
                         encode(Op.WAIT, unit=Unit.VEC, count=0),
                         head.pv(0, t, PP, kq, PV, 0, ng),
                         head.pv(1, t, PP + t * kq, kq, PV, nv, ng),
                         encode(Op.WAIT, unit=Unit.GEMM, count=0)]
        results.append(img_prog.store(Buf.ACC, PV, t * nv))
    _, outs = img_prog.run()
    return [wide_rows(p, outs[i][""], d, half=True) for i in results]


@pytest.mark.parametrize("p", CHIPS)
def test_attention_head(rng, p):
    """One head (d = 32) over a 6-token prefill and two decode steps, everything on chip:
    bit for bit ``sim.golden.attention_head`` on the same A8 operands (causal), each step
    against the keys and values cached so far."""
    d, cap = 32, 16
    steps = [(0, 6), (6, 1), (7, 1)]
    n = 8
    q = wide_data(rng, n, d, -1, 1)
    k = wide_data(rng, n, d, -1, 1)
    v = wide_data(rng, n, d, -1, 1)
    head = KvHead(p, d, cap, base=0)
    got = attention_program(p, head, steps, q, k, v)
    q8, qs = G.quantize_rows(q)
    k8, ks = G.quantize_rows(k)
    v8, vs = G.quantize_rows(v, group=None)
    for (pos, t), out in zip(steps, got, strict=True):
        S = pos + t
        want = G.attention_head(q8[pos:S], qs[pos:S], k8[:S], ks[:S], v8[:S], vs[:S],
                                q_pos=np.arange(pos, S))
        assert np.array_equal(out, want), (pos, t)


def test_vfold_probabilities_low_bits(rng):
    """vfold reads p as its low 17 bits: bits above them change nothing (and INT32 garbage
    in ACC cannot leave the quantizer's range)."""
    p = P16
    PC = p.cols // 2
    head = KvHead(p, 16, 16, base=0)
    v8, vs = G.quantize_rows(to_wide(rng.normal(size=(10, 16))), group=None)
    pp = G.softmax(to_wide(rng.normal(size=(2, 10))))
    noisy = pp + (rng.integers(-(1 << 13), 1 << 13, pp.shape) << 17)
    pr = Program(p)
    pr.load(Buf.ACT, 0, act_fields(p.rows, v8, vs.mant, vs.exp, vs.group))
    pr.load(Buf.ACC, 0, wide_fields(p, noisy, half=True))
    pr.wait(Unit.LOAD)
    pr.ops += [head.append(KvKind.VALUE, 10, 0),
               encode(Op.WAIT, unit=Unit.KV, count=0),
               vec(VecFn.QUANT, qmode=QuantMode.A15, vfold=1, half=1, rows=2, length=10,
                   src_a=0, src_stride=-(-10 // PC), src_b=head.val_s, vgroups=head.G,
                   dst=20, dst_stride=1)]
    pr.wait(Unit.VEC)
    pr.store(Buf.ACT, 20, 4)
    _, (out,) = pr.run()
    x, e_max = G.fold_v_scales(pp, vs.mant[:, 0], vs.exp)
    p15, ps = G.quantize_rows(x, bits=15)
    p15 = p15.astype(np.int64)
    check_act(out, act_want(p, [(p15 >> 7, ps), (p15 & 127, ps)], e_max[:, 0]))


def test_vfold_masked_keys(rng):
    """With ``causal``, the keys a row does not see fold to 0 whatever ACC holds there (the
    golden model's masked p = 0): garbage beyond each row's last visible key changes
    nothing."""
    p = P16
    head = KvHead(p, 16, 16, base=0)
    v8, vs = G.quantize_rows(to_wide(rng.normal(size=(10, 16))), group=None)
    pos, T = 7, 3
    pp = G.softmax(to_wide(rng.normal(size=(T, pos + T))), pos + np.arange(T))
    noisy = pp.copy()
    for t in range(T):
        noisy[t, pos + t + 1:] = rng.integers(0, 1 << 31, T - 1 - t)
    outs = []
    for probs in (pp, noisy):
        pr = Program(p)
        pr.load(Buf.ACT, 0, act_fields(p.rows, v8, vs.mant, vs.exp, vs.group))
        pr.load(Buf.ACC, 0, wide_fields(p, probs, half=True))
        pr.wait(Unit.LOAD)
        pr.ops += [head.append(KvKind.VALUE, 10, 0), encode(Op.WAIT, unit=Unit.KV, count=0),
                   encode(Op.SETPOS, value=pos),
                   vec(VecFn.QUANT, qmode=QuantMode.A15, vfold=1, causal=1, dyn=Dyn.POS,
                       half=1, rows=T, src_a=0, src_stride=2, src_b=head.val_s,
                       vgroups=head.G, dst=20, dst_stride=1)]
        pr.wait(Unit.VEC)
        pr.store(Buf.ACT, 20, 2 * T)
        outs.append(pr.run()[1][0])
    x, e_max = G.fold_v_scales(pp, vs.mant[:, 0], vs.exp, pos + np.arange(T))
    p15, ps = G.quantize_rows(x, bits=15)
    p15 = p15.astype(np.int64)
    for out in outs:
        check_act(out, act_want(p, [(p15 >> 7, ps), (p15 & 127, ps)], e_max[:, 0]))


def test_vfold_bad_scale(rng):
    """A V scale lane with ``gshift > act_headroom`` (no QUANT writes one) is BAD_FIELD, and
    the op writes nothing."""
    p = P16
    head = KvHead(p, 16, 16, base=0)
    v8, vs = G.quantize_rows(to_wide(rng.normal(size=(4, 16))), group=None)
    act = act_fields(p.rows, v8, vs.mant, vs.exp, vs.group)
    act["gshift"][2] = G.NUM.act_headroom + 1
    pr = Program(p)
    pr.load(Buf.ACT, 0, act)
    pr.load(Buf.ACC, 0, wide_fields(p, np.ones((1, 4), np.int64), half=True))
    pr.wait(Unit.LOAD)
    pr.ops += [head.append(KvKind.VALUE, 4, 0), encode(Op.WAIT, unit=Unit.KV, count=0)]
    fold = vec(VecFn.QUANT, qmode=QuantMode.A15, vfold=1, half=1, rows=1, length=4, src_a=0,
               src_stride=1, src_b=head.val_s, vgroups=head.G, dst=10, dst_stride=1)
    ok = vec(VecFn.QUANT, qmode=QuantMode.A15, vfold=1, half=1, rows=1, length=2, src_a=0,
             src_stride=1, src_b=head.val_s, vgroups=head.G, dst=10, dst_stride=1)
    pr.ops.append(ok)  # keys 0, 1 only: fine
    pr.ops.append(fold)
    sim, _ = pr.run(Err.BAD_FIELD)
    assert sim.error_pc == len(pr.ops) - 1
    before = IsaSim(p, pr.img.mem, vector=True)
    before.load_program(pr.ops[:-1] + [encode(Op.HALT)])
    assert before.run() == Err.NONE
    for b in Buf:
        assert np.array_equal(sim.bufs[b], before.bufs[b]), b.name


# -- COPY -------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", CHIPS)
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("repack", [False, True])
def test_copy_acc(rng, p, half, repack):
    """Wide rows moved (and repacked between the layouts): values kept, padding lanes 0."""
    T, N = 4, 45
    x = wide_data(rng, T, N)
    W = -(-N // per_word(p, half))
    half_out = half != repack
    W2 = -(-N // per_word(p, half_out))
    pr = Program(p)
    pr.load(Buf.ACC, 0, wide_fields(p, x, half=half, stride=W + 3, junk=rng))
    pr.wait(Unit.LOAD)
    pr.ops.append(vec(VecFn.COPY, buf=VecBuf.ACC, half=int(half), repack=int(repack), rows=T,
                      length=N, src_a=0, src_stride=W + 3, dst=200, dst_stride=W2))
    pr.wait(Unit.VEC)
    pr.store(Buf.ACC, 200, T * W2)
    _, (out,) = pr.run()
    assert np.array_equal(out[""], wide_fields(p, x, half=half_out)[""])


def test_copy_act(rng):
    """A8 rows moved word for word (data, scales, exponent)."""
    p = P4
    T, N = 3, 40
    x8, xs = G.quantize_rows(wide_data(rng, T, N))
    act = act_fields(p.rows, x8, xs.mant, xs.exp, xs.group)
    Wq = -(-N // p.rows)
    pr = Program(p)
    pr.load(Buf.ACT, 5, act)
    pr.wait(Unit.LOAD)
    pr.ops.append(vec(VecFn.COPY, buf=VecBuf.ACT, rows=T, length=N, src_a=5, src_stride=Wq,
                      dst=100, dst_stride=Wq))
    pr.wait(Unit.VEC)
    pr.store(Buf.ACT, 100, T * Wq)
    _, (out,) = pr.run()
    check_act(out, act)


def test_vector_row_param():
    """``ChipParams.vector_row`` bounds the row operations (4096: the divisors' width)."""
    assert ChipParams().vector_row == 2048
    with pytest.raises(ValueError, match="vector_row"):
        ChipParams(vector_row=4097)
    assert buffer_depth(P16, Buf.ACC) * P16.cols >= P16.vector_row

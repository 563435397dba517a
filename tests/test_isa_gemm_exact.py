"""The ISA simulator's GEMM (``sim/isa_sim.py``) against the group scaler's formula of
``hw/isa.py`` (``GemmArgs``) in Python integers, modulo 2**64, on random buffer contents.

The simulator regroups the scaler's sums into float64 matmuls that must stay exact (every
partial sum an integer below 2**53); each case drives one of its ways: one weight group
(``prm_step = 7``, the scale applied after the matmul), many groups with a short ``t_len``
(scaled per sub-group), many groups with a long ``t_len`` (the scale folded into the weights,
split and padded where the bound needs it), activation group shifts up to 31 and 22-bit
scales (sub-groups shrunk, sums that wrap at 64 bits), the KV cache as weights and as
column parameters, and sums carried between ops (``first`` / ``final``). Operands are read
with ``hw.isa.unpack_words`` (not the simulator's codec). Also the output rounding's fast
path (every shift a right shift) against the RTL's formula in Python integers. Random tests
print their seed; replay with ISA_SEED=<seed>.
"""

import os

import numpy as np
import pytest
from amaranth.lib import data

from hw.isa import (
    Buf,
    Err,
    GridMode,
    Op,
    PSrc,
    WSrc,
    buffer_depth,
    encode,
    pack_words,
    unpack_words,
    word_bytes,
    word_layout,
)
from hw.params import ChipParams
from sim import golden as G
from sim.isa_sim import IsaSim, round_output

SEED = int(os.environ.get("ISA_SEED", np.random.SeedSequence().entropy % 2**32))
P = ChipParams(rows=16, cols=16)
M64 = 1 << 64
OUT_WORDS = 200  # PRM: group words below, out words from here on


@pytest.fixture
def rng(request):
    seed = (SEED + hash(request.node.name)) % 2**32
    print(f"ISA_SEED={SEED} (test seed {seed})")
    return np.random.default_rng(seed)


def _rtl_out(y: int, s: int, b: int) -> int:
    """The scaler's output stage on one 64-bit sum (``hw/gemm.py`` stage 5), as
    ``tests/test_isa_sim.py`` models it."""

    def sat(v, bits):
        return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, v))

    if s >= 63:
        r = 0
    elif s > 0:
        r = (y + (1 << (s - 1))) >> s
    else:
        r = sat(sat(y, 36) << min(-s, 35), 36)
    return sat(r + b, 32)


def _wrap(v: int) -> int:
    v %= M64
    return v - M64 if v >= 1 << 63 else v


def _random_sim(p, rng, gs_max, scale_bits, worst=False):
    """A simulator with random raw words in every buffer and random ``y``; ACT words with
    group shifts up to ``gs_max`` (gzero now and then), PRM group words below ``OUT_WORDS``
    (scales of up to ``scale_bits`` bits, INT16 offsets) and out words from there on (shifts
    8..40, INT32 biases). ``worst``: the largest sums float64 must still get exact:
    activations -127, weights -128 (INT8, 22-bit scales; else INT4 -8) but -127 on every
    16th word (odd column sums), the largest odd scale, group shifts ``gs_max`` but 0 on every
    16th word (big partial sums with low bits set)."""
    sim = IsaSim(p)
    for b in Buf:
        layout = word_layout(p, b)
        raw = rng.integers(0, 256, (buffer_depth(p, b), word_bytes(layout)), dtype=np.uint8)
        rem = data.Layout.cast(layout).size % 8
        if rem:
            raw[:, -1] &= (1 << rem) - 1
        sim.bufs[b][:] = raw
    n = buffer_depth(p, Buf.ACT)
    sim.bufs[Buf.ACT][:] = pack_words(word_layout(p, Buf.ACT), {
        "data": np.full((n, p.rows), -127) if worst
        else rng.integers(-128, 128, (n, p.rows)),
        "gshift": np.where(np.arange(n) % 16 == 1, 0, gs_max) if worst
        else rng.integers(0, gs_max + 1, n),
        "gzero": (rng.random(n) < (0 if worst else 0.1)).astype(np.int64),
        "exp": rng.integers(-128, 128, n),
    })
    if worst:  # INT8 -128 (one row of a tile: -127); INT4 (lo, hi) = (-8, -8) ((-7, -8))
        sim.bufs[Buf.WGT][:] = 0x80 if scale_bits == 22 else 0x88
        sim.bufs[Buf.WGT][:: p.rows] = 0x81 if scale_bits == 22 else 0x89
    n = buffer_depth(p, Buf.PRM)
    lim = 1 << (scale_bits - 1)
    group = pack_words(word_layout(p, Buf.PRM), {
        "group.scale": np.full((n, p.cols), lim - 1) if worst
        else rng.integers(-lim, lim, (n, p.cols)),
        "group.offset": rng.integers(-(1 << 15), 1 << 15, (n, p.cols)),
    })
    out = pack_words(word_layout(p, Buf.PRM), {
        "out.shift": rng.integers(8, 41, (n, p.cols)),
        "out.bias": rng.integers(-(1 << 31), 1 << 31, (n, p.cols)),
    })
    sim.bufs[Buf.PRM][:] = np.where((np.arange(n) < OUT_WORDS)[:, None], group, out)
    sim.y[:] = rng.integers(-(1 << 63), (1 << 63) - 1, sim.y.shape, dtype=np.int64)
    return sim


def _expect(p, sim, f, kv_base):
    """(y rows, {ACC address: word}) the op must leave, from the buffers before it."""
    R, C = p.rows, p.cols
    PC = C // 2
    t_len, kt, n = f["t_len"], f["k_tiles"], f["n_tiles"]
    step = f["prm_step"]
    groups = -(-kt // (1 << step))

    def read(buf, idx):
        return unpack_words(word_layout(p, buf), sim.bufs[buf][np.asarray(idx)])

    t, k, j, r = np.arange(t_len), np.arange(kt), np.arange(n), np.arange(R)
    act = read(Buf.ACT, f["a_addr"] + t[:, None] * f["a_stride"] + k)  # [t, kt]
    x = act["data"]  # [t, kt, R]
    mant = np.where(act["gzero"] == 1, 0, np.left_shift(1, act["gshift"]))
    exp = act["exp"][:, -1]
    wsrc = f["wsrc"]
    base = kv_base if wsrc != WSrc.WGT else 0
    if wsrc == WSrc.KV_ROWS:
        w_idx = f["w_addr"] + base + (k[None, :, None] * R + r) * n + j[:, None, None]
    else:
        w_idx = f["w_addr"] + base + ((j[:, None] * kt + k) * R)[:, :, None] + r
    wb = read(Buf.WGT if wsrc == WSrc.WGT else Buf.KV, w_idx)[""]  # [n, kt, R, PC] bytes
    w = np.zeros((n, kt, R, C), np.int64)
    if f["mode"] == GridMode.INT8:
        w[..., :PC] = wb.astype(np.uint8).view(np.int8)
    else:
        w[..., 0::2] = (wb & 15) - ((wb & 8) << 1)
        w[..., 1::2] = (wb >> 4) - ((wb & 128) >> 3)
    acc = np.einsum("tkr,jkrc->jktc", x, w)  # exact in int64: |acc| < 2**19
    xsum = x.sum(-1)
    if f["psrc"] == PSrc.PRM:
        g = read(Buf.PRM, f["prm_addr"] + j[:, None] * groups + (k >> step))
        scale, offset = g["group.scale"], g["group.offset"]  # [n, kt, C]
        o = read(Buf.PRM, f["oprm_addr"] + j)
        shift, bias = o["out.shift"], o["out.bias"]
    else:
        sa = kv_base + f["prm_addr"] + j * (groups + 1)
        lanes = read(Buf.KV, sa[:, None] + (k >> step))[""]  # [n, kt, PC]
        scale = np.zeros((n, kt, C), np.int64)
        scale[..., :PC] = np.where(lanes & 32, 0, np.left_shift(1, lanes & 31))
        offset = np.zeros_like(scale)
        e = read(Buf.KV, sa + groups)[""]
        shift = np.full((n, C), G.NUM.frac_bits, np.int64)
        shift[:, :PC] -= e - ((e & 128) << 1)
        bias = np.zeros((n, C), np.int64)
    z = (scale[:, :, None, :].astype(object) * acc.astype(object)
         + offset[:, :, None, :].astype(object) * xsum.T[None, :, :, None].astype(object))
    y = (z * mant.T[None, :, :, None].astype(object)).sum(axis=1)  # [n, t, C]
    first, final = f["first"], f["final"]
    if not first:
        y = y + sim.y[: n * t_len].reshape(n, t_len, C).astype(object)
    y = np.vectorize(_wrap, otypes=[object])(y)
    rows = y[-1] if first and final else y.reshape(n * t_len, C)
    words = {}
    if final:
        for jj in range(n):
            for tt in range(t_len):
                words[f["acc_addr"] + tt * f["acc_stride"] + jj] = [
                    _rtl_out(int(y[jj, tt, c]), int(shift[jj, c] - exp[tt]), int(bias[jj, c]))
                    for c in range(C)]
    return np.array(rows.tolist(), dtype=np.int64), words


# (name, fields, largest group shift, scale bits, kv_base); "worst" cases: ``_random_sim``
CASES = [
    ("worst-scaled", dict(mode=GridMode.INT8, prm_step=7, k_tiles=75, t_len=3, n_tiles=2), 31,
     22, 0),
    ("worst-folded", dict(mode=GridMode.W4A8, prm_step=2, k_tiles=40, t_len=32, n_tiles=2), 20,
     16, 0),
    ("one-group", dict(mode=GridMode.INT8, prm_step=7, k_tiles=40, t_len=2, n_tiles=3), 20, 16, 0),
    ("scaled", dict(mode=GridMode.W4A8, prm_step=1, k_tiles=40, t_len=2, n_tiles=3), 20, 16, 0),
    ("folded", dict(mode=GridMode.W4A8, prm_step=1, k_tiles=40, t_len=16, n_tiles=3), 12, 22,
     0),
    ("folded-split", dict(mode=GridMode.W4A8, prm_step=2, k_tiles=40, t_len=32, n_tiles=3), 20,
     16, 0),
    ("shrunk-wrap", dict(mode=GridMode.INT8, prm_step=7, k_tiles=37, t_len=3, n_tiles=2), 31,
     22, 0),
    ("shrunk-groups", dict(mode=GridMode.W4A8, prm_step=3, k_tiles=37, t_len=20, n_tiles=2), 31,
     22, 0),
    ("carry", dict(mode=GridMode.W4A8, prm_step=1, k_tiles=9, t_len=4, n_tiles=3, first=0,
                   final=1), 20, 16, 0),
    ("carry-not-final", dict(mode=GridMode.INT8, prm_step=0, k_tiles=5, t_len=24, n_tiles=2,
                             first=0, final=0), 20, 16, 0),
    ("kv-tiled-kv-params", dict(mode=GridMode.INT8, wsrc=WSrc.KV_TILED, psrc=PSrc.KV,
                                prm_step=0, k_tiles=4, t_len=3, n_tiles=2), 20, 16, 700),
    ("kv-rows", dict(mode=GridMode.W4A8, wsrc=WSrc.KV_ROWS, prm_step=1, k_tiles=5, t_len=18,
                     n_tiles=3), 20, 16, 300),
]


@pytest.mark.parametrize("name, fields, gs_max, scale_bits, kv_base", CASES,
                         ids=[c[0] for c in CASES])
def test_gemm_matches_the_scaler_formula(rng, name, fields, gs_max, scale_bits, kv_base):
    p = P
    f = dict(first=1, final=1, wsrc=WSrc.WGT, psrc=PSrc.PRM, a_addr=5, acc_addr=40,
             prm_addr=6, oprm_addr=OUT_WORDS + 1, w_addr=17)
    f.update(fields)
    f["a_stride"] = f["k_tiles"] + 3
    f["acc_stride"] = f["n_tiles"] + 1
    for _ in range(3):
        sim = _random_sim(p, rng, gs_max, scale_bits, worst=name.startswith("worst"))
        want_y, want_acc = _expect(p, sim, f, kv_base)
        prog = [encode(Op.SETPOS, reg=1, value=kv_base)] if kv_base else []
        sim.load_program(prog + [encode(Op.GEMM, **f), encode(Op.HALT)])
        assert sim.run() == Err.NONE
        assert np.array_equal(sim.y[: len(want_y)], want_y)
        got = sim.read_buffer(Buf.ACC, 0, buffer_depth(p, Buf.ACC))[""]
        for addr, word in want_acc.items():
            assert got[addr].tolist() == word, addr


def test_output_rounding_right_shifts(rng):
    """``round_output`` when every shift is a right shift below 63 (its fast path), over the
    whole 64-bit range of sums, against the RTL's rounding adder in Python integers."""
    n = 4000
    y = rng.integers(-(1 << 63), (1 << 63) - 1, n, dtype=np.int64, endpoint=True)
    y[:100] = rng.choice([-(1 << 63), (1 << 63) - 1, 1 << 62, -(1 << 62) - 1, -1, 0], 100)
    y[100:2000] >>= rng.integers(0, 63, 1900)
    sh = rng.integers(1, 63, n)
    sh[:10] = [1, 62, 1, 62, 1, 62, 1, 62, 1, 62]
    want = [(int(a) + (1 << (int(s) - 1))) >> int(s) for a, s in zip(y, sh, strict=True)]
    assert round_output(y, sh).tolist() == want

"""The whole-model golden integer models on the real MiniLM and SmolLM2 weights.

- the weight conversion (``sw/quantize.py``): GGUF blocks kept exactly, the 1/sqrt(d_head) fold;
- MiniLM golden vs float sentence embeddings, SmolLM2 golden vs float next-token predictions
  (the issue's accuracy targets);
- the SmolLM2 KV cache: prefill and token-by-token decode give the same integers; overflow;
- one golden decoder layer vs the float layer, within a bound derived from the quantization.

Expected values come from the float references (``sw/reference.py``), the GGUF file's own
dequantization, or a bound derived in the comments; none is copied from the golden model's
output. Measured figures are printed (``pytest -s`` shows them).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sim import golden as G  # noqa: E402
from sim.golden_models import SmolLM2Golden, minilm_encode  # noqa: E402
from sw.models import load_minilm, load_smollm2  # noqa: E402
from sw.quantize import (  # noqa: E402
    dequantize,
    from_wide,
    quantize_minilm,
    quantize_smollm2,
    to_wide,
)
from sw.reference import MiniLMFloat, SmolLM2Float  # noqa: E402
from sw.tokenizer import SmolLM2Tokenizer  # noqa: E402

EVAL_TEXT = Path(__file__).resolve().parents[1] / "sw" / "data" / "eval_text.txt"
POSITIONS = 256  # RoPE table of the shared golden SmolLM2


# -- fixtures: each model loaded and quantized once ------------------------------------------------


@pytest.fixture(scope="module")
def minilm_model():
    return load_minilm()


@pytest.fixture(scope="module")
def minilm_q(minilm_model):
    return quantize_minilm(minilm_model)


@pytest.fixture(scope="module")
def minilm_float(minilm_model):
    return MiniLMFloat(minilm_model)


@pytest.fixture(scope="module")
def smol_model():
    return load_smollm2()


@pytest.fixture(scope="module")
def smol_q(smol_model):
    return quantize_smollm2(smol_model, positions=POSITIONS)


@pytest.fixture(scope="module")
def smol_golden(smol_q):
    return SmolLM2Golden(smol_q)


@pytest.fixture(scope="module")
def smol_float(smol_model):
    return SmolLM2Float(smol_model)


@pytest.fixture(scope="module")
def smol_tok(smol_model):
    return SmolLM2Tokenizer(smol_model)


@pytest.fixture(scope="module")
def eval_ids(smol_tok):
    return smol_tok.encode(EVAL_TEXT.read_text())


# =============================================================================================
# Weight conversion


def _check_gguf_conversion(qw, want):
    """``dequantize(qw)`` against the exact float64 values ``want`` of the GGUF tensor.

    A GGUF scale d (fp16) becomes the INT16 mantissa round(d·2**s) under the column's shift s
    (and a Q4_1 offset m + 8d likewise), so each converted scale or offset is off by at most
    half a mantissa unit, 0.5·2**-s. An element w = d·q' + off (q' = q - 8 for Q4) is then off
    by at most 0.5·2**-s·|q'| (scale) + 0.5·2**-s (offset, Q4_1 only). Everything else is exact
    in float64: q'·mantissa + offset are integers below 2**20, the 2**-s a power of two, and
    the GGUF side d·q + m a sum of fp16 products (11 + 4 significant bits) within 2**53.
    When every scale converted exactly (``exact == total``) the two must be equal.
    """
    s = qw.shift.astype(np.float64)[:, None]
    q = np.abs(qw.q.astype(np.float64))
    bound = 0.5 * np.exp2(-s) * (q + (1.0 if qw.offset is not None else 0.0))
    diff = np.abs(dequantize(qw) - want)
    ratio = np.divide(diff, bound, out=np.zeros_like(diff), where=bound > 0)
    print(f"  {qw.name}: exact {qw.exact}/{qw.total}, max |diff| {diff.max():.3g}, "
          f"max diff/bound {ratio.max():.3g}")
    assert (diff <= bound).all()
    if qw.exact == qw.total:
        np.testing.assert_array_equal(dequantize(qw), want)


def _check_mantissa_range(qw):
    """The column shift puts the column's largest |scale| or |offset| mantissa in
    [2**14, 2**15): INT16 without wrapping, rounded at 2**-15 of the column's largest scale."""
    mag = np.abs(qw.scale.astype(np.int64)).max(axis=1)
    if qw.offset is not None:
        mag = np.maximum(mag, np.abs(qw.offset.astype(np.int64)).max(axis=1))
    assert ((mag >= 1 << 14) & (mag < 1 << 15)).all()


def test_quantize_smollm2_keeps_gguf_blocks(smol_model, smol_q):
    L0 = smol_q.layers[0]
    cases = [
        (L0.wq, smol_model.tensor("attn_q.weight", layer=0)),
        (L0.wd, smol_model.tensor("ffn_down.weight", layer=0)),
        (smol_q.token_embd, smol_model.tensor("token_embd.weight")),
    ]
    for qw, t in cases:
        q, d, m = t.quant_blocks()
        kind = t.ggml_type.name
        if kind in ("Q4_0", "Q4_1"):
            want = q.astype(np.int16) - 8  # nibbles 0..15 become signed -8..7
            assert qw.bits == 4 and (qw.offset is not None) == (kind == "Q4_1")
        else:
            assert kind == "Q8_0"
            want = q  # unchanged
            assert qw.bits == 8 and qw.offset is None
        assert qw.q.dtype == np.int8 and qw.q.shape == t.shape
        np.testing.assert_array_equal(qw.q, want, err_msg=t.name)
        assert qw.scale.shape == d.shape
        _check_mantissa_range(qw)
    # The tied LM head is the embedding itself.
    assert smol_model.tied_embeddings and smol_q.lm_head is smol_q.token_embd


def test_quantize_smollm2_dequantizes_to_gguf_values(smol_model, smol_q):
    L0 = smol_q.layers[0]
    t_k = smol_model.tensor("attn_k.weight", layer=0)
    assert t_k.ggml_type.name == "Q4_1"
    _check_gguf_conversion(L0.wk, t_k.dequantize(np.float64))
    # A tensor with a few rounded scales (the bound branch of the check).
    _check_gguf_conversion(L0.wo, smol_model.tensor("attn_output.weight", layer=0)
                           .dequantize(np.float64))
    _check_gguf_conversion(smol_q.token_embd,
                           smol_model.tensor("token_embd.weight").dequantize(np.float64))
    # W_q carries attention's 1/sqrt(d_head) = 1/8: a power of two, so it goes into the column
    # shift and the mantissas stay those of the GGUF blocks (same rounding rule as above).
    assert smol_model.config.d_head == 64
    t_q = smol_model.tensor("attn_q.weight", layer=0)
    _check_gguf_conversion(L0.wq, t_q.dequantize(np.float64) / 8)
    _check_mantissa_range(L0.wq)


def test_quantize_minilm_folds_attention_scale(minilm_model, minilm_q):
    c = minilm_model.config
    assert c.d_head == 32
    rq = math.sqrt(c.d_head)
    g = G.NUM.group
    worst = 0.0
    for i, L in enumerate(minilm_q.layers):
        w = minilm_model.tensor("attn_q.weight", layer=i).astype(np.float64) / rq
        N, K = w.shape
        # Symmetric INT8 per group of 32: the ideal step is d = max|w_group| / 127 (after the
        # fold). The chip's step is d rounded to an INT16 mantissa under the column shift s,
        # |step - d| <= 0.5·2**-s. An unclipped element is off by at most step/2 <= d/2 +
        # 0.25·2**-s; a step rounded down can clip the group's largest element at 127, off by
        # 127·(d - step) <= 127·0.5·2**-s. Hence |err| <= d/2 + 127·0.5·2**-s.
        d = np.abs(w.reshape(N, K // g, g)).max(axis=2) / 127
        s = L.wq.shift.astype(np.float64)[:, None]
        bound = np.repeat(d / 2 + 127 * 0.5 * np.exp2(-s), g, axis=1)
        err = np.abs(dequantize(L.wq) - w)
        assert (err <= bound).all(), f"layer {i}"
        worst = max(worst, float((err / bound).max()))
        # each group uses the full INT8 range
        qmax = np.abs(L.wq.q.astype(np.int64)).reshape(N, K // g, g).max(axis=2)
        assert (qmax[d > 0] == 127).all()
        _check_mantissa_range(L.wq)
        # b_q is folded as well; the other biases are not
        bq = minilm_model.tensor("attn_q.bias", layer=i).astype(np.float64)
        np.testing.assert_array_equal(L.bq, to_wide(bq / rq))
        bk = minilm_model.tensor("attn_k.bias", layer=i).astype(np.float64)
        np.testing.assert_array_equal(L.bk, to_wide(bk))
    print(f"  MiniLM W_q fold: max error / bound {worst:.3f}")


# =============================================================================================
# MiniLM golden vs float


def test_minilm_golden_matches_float(minilm_q, minilm_float):
    sentences = [
        "A man is eating food.",
        "The cat sits outside on the warm stones of the garden wall.",
        "Quantum computers use qubits that can be in superpositions of states.",
    ]
    tok = minilm_float.tokenizer
    for s in sentences:
        ids = tok.encode(s)
        e = from_wide(minilm_encode(ids, minilm_q)).mean(axis=0)
        e = e / np.linalg.norm(e)
        cos = float(e @ minilm_float.embed([ids])[0])
        print(f"  cosine {cos:.6f}  {s}")
        # The W8A8 target for MiniLM sentence embeddings: cosine >= 0.999.
        assert cos >= 0.999, s


# =============================================================================================
# SmolLM2 KV cache


def _cache_contents(cache):
    n = cache.length
    return [a[:, :, :n] for a in (cache.k8, cache.v8, cache.k_mant, cache.k_exp,
                                  cache.v_mant, cache.v_exp)]


def test_smollm2_kv_cache_prefill_equals_decode(smol_golden, smol_tok):
    g = smol_golden
    ids = smol_tok.encode("The quick brown fox jumps over the lazy dog while the farmer watches.")
    T = len(ids)
    assert 10 <= T <= 16
    # Every op of a row -- norms, A8 quantization of activations and of each K/V token, GEMMs,
    # RoPE, softmax over the visible keys -- depends on that row alone (and on the keys and
    # values before it), in exact integer arithmetic, so a prefill and a split prefill +
    # decode must give the same integers. One exception, in sim/golden.py attention_head:
    # the V-scale alignment e_max is the max over *all* S keys' exponents, including causally
    # masked ones, and the A15 quantization of p' after that shift rounds twice (see
    # test_attention_row_ignores_masked_value_scales below). On this prompt it does not bite;
    # if this test fails after a change, look there first.
    c_full = g.new_cache()
    last = g.forward(ids, c_full)
    assert last.shape == (1, g.cfg.vocab) and c_full.length == T
    c_all = g.new_cache()
    every = g.forward(ids, c_all, all_logits=True)
    assert every.shape == (T, g.cfg.vocab)
    np.testing.assert_array_equal(every[-1:], last)

    c_inc = g.new_cache()
    head = g.forward(ids[:-3], c_inc, all_logits=True)
    steps = [g.forward([t], c_inc) for t in ids[-3:]]
    assert c_inc.length == T
    np.testing.assert_array_equal(steps[-1], last)  # bit-identical, not merely close
    np.testing.assert_array_equal(head, every[:-3])
    np.testing.assert_array_equal(np.concatenate(steps), every[-3:])
    # the caches hold the same integers
    for a, b in zip(_cache_contents(c_inc), _cache_contents(c_full), strict=True):
        np.testing.assert_array_equal(a, b)
    print(f"  {T} tokens: prefill == prefill({T - 3}) + 3 decode steps, bit for bit")


def test_attention_row_ignores_masked_value_scales():
    """A query row's attention output should not depend on keys it cannot see.

    Synthetic heads where the last (future) token's V is 2**7 larger than the others: the
    prefill row of position S-2 (key S-1 masked) against the same row computed with only keys
    0..S-2, as a decode step would. Fixed seed; deterministic.
    """
    rng = np.random.default_rng(7)
    H, S, d = 4096, 16, 64
    q = rng.integers(-(2**12), 2**12, (H, S, d))
    k = rng.integers(-(2**12), 2**12, (H, S, d))
    v = rng.integers(-(2**16), 2**16, (H, S, d))
    v[:, -1] *= 2**7
    q8, qs = G.quantize_rows(q)
    k8, ks = G.quantize_rows(k)
    v8, vs = G.quantize_rows(v, group=None)
    full = G.attention_head(q8, qs, k8, ks, v8, vs, q_pos=np.arange(S))
    n = S - 1
    alone = G.attention_head(q8[:, n - 1:n], qs[:, n - 1:n], k8[:, :n], ks[:, :n], v8[:, :n],
                             vs[:, :n], q_pos=np.array([n - 1]))
    differ = int(np.any(alone[:, 0] != full[:, n - 1], axis=1).sum())
    print(f"  heads whose row {n - 1} depends on the masked key: {differ} of {H}")
    assert differ == 0


def test_smollm2_kv_cache_overflow(smol_golden, smol_tok):
    g = smol_golden
    ids = smol_tok.encode("one two three four five six seven eight nine ten")
    assert len(ids) >= 9
    with pytest.raises(ValueError, match="KV cache overflow"):
        g.forward(ids[:9], g.new_cache(8))
    # filling the cache up exactly works; one decode step more overflows
    cache = g.new_cache(8)
    g.forward(ids[:5], cache)
    g.forward(ids[5:8], cache)
    assert cache.length == 8
    with pytest.raises(ValueError, match="KV cache overflow"):
        g.forward(ids[8:9], cache)
    # the cache cannot outgrow the RoPE table
    assert g.new_cache().capacity == POSITIONS
    with pytest.raises(ValueError, match="RoPE table"):
        g.new_cache(POSITIONS + 1)


# =============================================================================================
# SmolLM2 golden vs float


def _nll(logits, targets):
    """Negative log-likelihood of each target under float64 logits (log-softmax)."""
    z = logits - logits.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(targets)), targets]


def _golden_vs_float(model, golden, ref, ids):
    T = len(ids)
    lf = ref.prefill(ids, ref.new_cache(T))
    lg = from_wide(golden.forward(ids, golden.new_cache(), all_logits=True))
    assert lf.shape == lg.shape == (T, model.config.vocab)
    tgt = np.asarray(ids[1:])
    agree = float(np.mean(lf[:-1].argmax(1) == lg[:-1].argmax(1)))
    ppl_f = float(np.exp(_nll(lf[:-1], tgt).mean()))
    ppl_g = float(np.exp(_nll(lg[:-1], tgt).mean()))
    print(f"  {T} tokens: top-1 agreement {agree:.4f} ({T - 1} positions), perplexity float "
          f"{ppl_f:.3f} golden {ppl_g:.3f}, ratio {ppl_g / ppl_f:.4f}")
    # The targets for SmolLM2 (golden A8x2 vs float on the same GGUF weights):
    # top-1 next-token agreement >= 95%, perplexity ratio golden / float <= 1.03.
    assert agree >= 0.95
    assert ppl_g / ppl_f <= 1.03


def test_smollm2_golden_matches_float(smol_model, smol_float, eval_ids):
    """The issue's targets, measured as the issue defines them: over the whole shipped text
    (604 tokens; a 128-token slice moves by 0.8% per token, too coarse for a 95% target)."""
    T = len(eval_ids)
    assert T >= 500
    golden = SmolLM2Golden(quantize_smollm2(smol_model, positions=T))
    _golden_vs_float(smol_model, golden, smol_float, eval_ids)


# =============================================================================================
# One decoder layer


def test_smollm2_layer0_vs_float(smol_q, smol_float, eval_ids):
    ids = eval_ids[:16]
    h = G.embed(ids, smol_q.token_embd)
    x = from_wide(h)  # the float layer gets exactly the golden input
    assert np.abs(x - smol_float.embed(ids)).max() <= 2.0**-17  # one wide rounding
    yf = smol_float.layer(0, x, smol_float.new_cache(16), 0)
    # Bound. An A8 group of 16 has a power-of-two step 2**e with amax_g / 2**e in [64, 128)
    # (log-uniform: a mean step of about amax_g / 90); as a uniform rounding error its RMS is
    # step / sqrt(12) ≈ amax_g / 310, and a group of 16 roughly Gaussian values has RMS about
    # amax_g / 2.1, so one A8 stage adds a relative RMS error of about 2.1 / 310 ≈ 1/150.
    # A8: along the layer the quantized stages in series are the Q/K/V GEMM input, Q and K
    # (scores), V, the O GEMM input, the FFN input and the down GEMM input; the GEMM-input
    # stages dominate, and summing five of them linearly (all errors aligned, the worst case)
    # gives 5/150 = 1/30. A8x2 (two passes per GEMM input) shrinks each GEMM-input stage's
    # error by ~2**6, leaving the three A8 quantizations inside attention: 3/150 = 1/50.
    # The LUTs, norms and RoPE table add ~1e-4 (test_golden.py).
    # The layer's update y - x is what the quantized arithmetic computes; the output y adds
    # the exact input, which at layer 0 is small next to the update (||x||/||y|| printed).
    bounds = {1: 1 / 30, 2: 1 / 50}
    rel = {}
    for passes, bound in bounds.items():
        g = SmolLM2Golden(replace(smol_q, act_passes=passes))
        yg = from_wide(g.layer(0, h, g.new_cache(16), 0))
        err = np.linalg.norm(yg - yf)
        rel_out = err / np.linalg.norm(yf)
        rel[passes] = rel_upd = err / np.linalg.norm(yf - x)
        print(f"  layer 0, 16 tokens, {'A8' if passes == 1 else 'A8x2'}: ||golden - float|| / "
              f"||float|| = {rel_out:.5f}, / ||update|| = {rel_upd:.5f} (bound {bound:.4f}), "
              f"||x||/||y|| = {np.linalg.norm(x) / np.linalg.norm(yf):.3f}")
        assert rel_out <= bound
        assert rel_upd <= bound
    # the second pass must actually reduce the error
    assert rel[2] < rel[1]

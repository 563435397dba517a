"""Float64 reference models on the real MiniLM and SmolLM2 weights.

The layer-level checks compare against deliberately naive re-implementations written here (loops
over heads, complex-number RoPE), so a shared mistake would have to be made twice.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sw.models import load_minilm, load_smollm2  # noqa: E402
from sw.reference import (  # noqa: E402
    MiniLMFloat,
    SmolLM2Float,
    gelu_erf,
    rope_adjacent,
    softmax,
)
from sw.tokenizer import SmolLM2Tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def minilm():
    return MiniLMFloat(load_minilm())


@pytest.fixture(scope="module")
def smol():
    return SmolLM2Float(load_smollm2())


@pytest.fixture(scope="module")
def smol_tok(smol):
    return SmolLM2Tokenizer(smol.model)


# =============================================================================================
# MiniLM


def test_gelu_erf_values():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    want = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x]
    np.testing.assert_allclose(gelu_erf(x), want, rtol=0, atol=1e-15)
    assert gelu_erf(np.array([1.0]))[0] == pytest.approx(0.8413447460685429, abs=1e-15)


def test_minilm_matches_sentence_transformers(minilm):
    """First components of sentence-transformers' embedding of its README example (fp32 torch,
    as printed in the library's documentation and tutorials)."""
    e = minilm.embed("This is an example sentence")[0]
    published = [6.76569119e-02, 6.34959564e-02, 4.87131029e-02, 7.93049783e-02,
                 3.74480709e-02, 2.65275245e-03, 3.93749885e-02, -7.09843030e-03]  # fmt: skip
    np.testing.assert_allclose(e[:8], published, atol=1e-6)


def test_minilm_similarities(minilm):
    e = minilm.embed(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
        ]
    )
    assert e.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-12)
    close, far = e[0] @ e[1], e[0] @ e[2]
    assert close > 0.5 and far < close - 0.3


def test_minilm_pieces_compose(minilm):
    ids = minilm.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    x = minilm.embeddings(ids)
    assert x.shape == (len(ids), 384) and x.dtype == np.float64
    for i in range(6):
        x = minilm.layer(i, x)
    np.testing.assert_array_equal(x, minilm.encode(ids))
    mean = x.mean(axis=0)
    np.testing.assert_allclose(minilm.embed([ids])[0], mean / np.linalg.norm(mean), atol=1e-15)
    np.testing.assert_array_equal(minilm.embed([ids]), minilm.embed(minilm.tokenizer.decode(ids)))


def _naive_bert_layer(w, p, x, n_heads, eps):
    """One BERT layer, head by head, straight from the paper's equations."""

    def ln(v, g, b):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + eps) * g + b

    dh = x.shape[1] // n_heads
    heads = []
    for h in range(n_heads):
        sl = slice(h * dh, (h + 1) * dh)
        q = x @ w[p + "attn_q.weight"][sl].T + w[p + "attn_q.bias"][sl]
        k = x @ w[p + "attn_k.weight"][sl].T + w[p + "attn_k.bias"][sl]
        v = x @ w[p + "attn_v.weight"][sl].T + w[p + "attn_v.bias"][sl]
        s = q @ k.T / math.sqrt(dh)
        a = np.exp(s - s.max(1, keepdims=True))
        heads.append((a / a.sum(1, keepdims=True)) @ v)
    att = np.concatenate(heads, 1) @ w[p + "attn_output.weight"].T + w[p + "attn_output.bias"]
    x = ln(x + att, w[p + "attn_output_norm.weight"], w[p + "attn_output_norm.bias"])
    u = x @ w[p + "ffn_up.weight"].T + w[p + "ffn_up.bias"]
    u = np.vectorize(lambda t: 0.5 * t * (1 + math.erf(t / math.sqrt(2))))(u)
    y = u @ w[p + "ffn_down.weight"].T + w[p + "ffn_down.bias"]
    return ln(x + y, w[p + "layer_output_norm.weight"], w[p + "layer_output_norm.bias"])


def test_minilm_layer_against_naive(minilm):
    ids = minilm.tokenizer.encode("Layers are checked one at a time.")
    x = minilm.embeddings(ids)
    c = minilm.config
    want = _naive_bert_layer(minilm.w, "blk.2.", x, c.n_heads, c.ln_eps)
    np.testing.assert_allclose(minilm.layer(2, x), want, rtol=0, atol=1e-10)


# =============================================================================================
# SmolLM2


def test_smollm2_answers_paris(smol, smol_tok):
    ids = smol_tok.encode(smol_tok.chat_prompt("What is the capital of France?"))
    out = list(smol.generate(ids, max_new_tokens=12, stop_ids=[smol.config.eos_id]))
    text = smol_tok.decode(out)
    assert text.startswith("The capital of France is Paris"), text


def test_rope_adjacent_pairs():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 64))
    k = rng.standard_normal((1, 1, 64))
    np.testing.assert_array_equal(rope_adjacent(q, np.array([0]), 1e5), q)

    def rot(v, pos):
        return rope_adjacent(v, np.array([pos]), 1e5)[0, 0]

    # Pair (0, 1) turns by exactly `pos` radians (frequency theta^0 = 1).
    r = rot(q, 3)
    c, s = math.cos(3), math.sin(3)
    assert r[0] == pytest.approx(q[0, 0, 0] * c - q[0, 0, 1] * s, abs=1e-15)
    assert r[1] == pytest.approx(q[0, 0, 0] * s + q[0, 0, 1] * c, abs=1e-15)
    # A rotation: norms are kept, and scores depend only on the relative position.
    assert np.linalg.norm(r) == pytest.approx(np.linalg.norm(q), rel=1e-14)
    assert rot(q, 10) @ rot(k, 7) == pytest.approx(rot(q, 103) @ rot(k, 100), rel=1e-12)


def _naive_llama_layer(w, p, x, c):
    """One llama layer on positions 0..T-1 without a cache: per-head loops, complex RoPE."""

    def rms(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + c.rms_eps) * g

    def rope(v, t):
        z = v[0::2] + 1j * v[1::2]
        z = z * np.exp(1j * t * c.rope_theta ** (-np.arange(0, c.d_head, 2) / c.d_head))
        out = np.empty_like(v)
        out[0::2], out[1::2] = z.real, z.imag
        return out

    T, dh = x.shape[0], c.d_head
    n = rms(x, w[p + "attn_norm.weight"])
    q, k, v = (n @ w[p + f"attn_{s}.weight"].T for s in "qkv")
    heads = []
    for h in range(c.n_heads):
        kvh = h // (c.n_heads // c.n_kv_heads)  # consecutive query heads share a KV head
        qh = np.array([rope(q[t, h * dh : (h + 1) * dh], t) for t in range(T)])
        kh = np.array([rope(k[t, kvh * dh : (kvh + 1) * dh], t) for t in range(T)])
        vh = v[:, kvh * dh : (kvh + 1) * dh]
        s = qh @ kh.T / math.sqrt(dh)
        s[np.triu_indices(T, 1)] = -np.inf
        heads.append(softmax(s) @ vh)
    h1 = x + np.concatenate(heads, 1) @ w[p + "attn_output.weight"].T
    m = rms(h1, w[p + "ffn_norm.weight"])
    g = m @ w[p + "ffn_gate.weight"].T
    u = m @ w[p + "ffn_up.weight"].T
    return h1 + (g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T


def test_smollm2_layer_against_naive(smol, smol_tok):
    ids = smol_tok.encode("The quick brown fox")
    x = smol.embed(ids)
    for i in (0, 17):
        cache = smol.new_cache()
        got = smol.layer(i, x, cache, 0)
        np.testing.assert_allclose(got, _naive_llama_layer(smol.w, f"blk.{i}.", x, smol.config),
                                   rtol=0, atol=1e-9)  # fmt: skip
        assert cache.length == 0  # layer() leaves advancing to the caller
        x = got


def test_smollm2_prefill_equals_decode_and_pieces(smol, smol_tok):
    ids = smol_tok.encode("Once upon a time, there")
    full_cache = smol.new_cache()
    full = smol.prefill(ids, full_cache)
    assert full.shape == (len(ids), 49152) and full_cache.length == len(ids)

    # Token by token through a cache that has to grow twice.
    cache = smol.new_cache(capacity=2)
    steps = np.array([smol.decode(t, cache) for t in ids])
    np.testing.assert_allclose(steps, full, rtol=0, atol=1e-9)

    # Split prefill: a chunk, then the rest attending to the cached chunk.
    cache = smol.new_cache()
    smol.prefill(ids[:3], cache)
    np.testing.assert_allclose(smol.prefill(ids[3:], cache), full[3:], rtol=0, atol=1e-9)

    # The exposed pieces compose to prefill.
    cache = smol.new_cache()
    x = smol.embed(ids)
    for i in range(smol.config.n_layers):
        x = smol.layer(i, x, cache, 0)
    np.testing.assert_array_equal(smol.final(x), full)
    # Tied head: logits are the final hidden state against token_embd.
    emb = smol.model.tensor("token_embd.weight").dequantize(np.float64)
    np.testing.assert_array_equal(smol.head, emb)


def test_smollm2_generate_limits(smol, smol_tok):
    ids = smol_tok.encode(smol_tok.chat_prompt("What is the capital of France?"))
    first = list(smol.generate(ids, max_new_tokens=2))
    assert len(first) == 2
    assert list(smol.generate(ids, max_new_tokens=5, stop_ids=[first[0]])) == []
    assert list(smol.generate(ids, max_new_tokens=0)) == []

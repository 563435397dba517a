"""Float64 numpy reference models: what the chip's integer maths is measured against.

- ``MiniLMFloat``: all-MiniLM-L6-v2 (BERT encoder, post-LayerNorm) and its sentence embedding
  (mean over tokens, L2-normalized), as sentence-transformers computes it.
- ``SmolLM2Float``: SmolLM2-135M-Instruct (llama decoder) on the *dequantized* Q4_1/Q8_0
  weights of the GGUF, so the only difference left between it and the chip is activation
  quantization and the integer non-linear units.

Everything runs in float64 (weights widened once and cached), one sequence at a time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np

from sw.models import SMOLLM2_LAYER_TENSORS, MiniLMModel, SmolLM2Model

__all__ = [
    "KVCache",
    "MiniLMFloat",
    "SmolLM2Float",
    "gelu_erf",
    "layer_norm",
    "rms_norm",
    "rope_adjacent",
    "silu",
    "softmax",
]

_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), with math.erf (BERT's "gelu")."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), written to stay finite for large |x|."""
    return x * (0.5 * (1.0 + np.tanh(0.5 * x)))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``; -inf entries get probability 0."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis with biased variance, as torch.nn.LayerNorm."""
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * w."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_adjacent(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotary embedding on adjacent pairs of the last axis.

    ``x`` is (T, heads, d_head) and ``positions`` (T,). Pair i = (x[2i], x[2i+1]) is rotated
    by angle ``pos * theta ** (-2i / d_head)``. This is llama.cpp's "normal" RoPE: its GGUF
    converter permutes the q/k rows of Hugging Face llama checkpoints (which rotate halves,
    x[i] with x[i + d/2]) so that adjacent pairs are the ones rotated.
    """
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv[None, :]  # (T, d/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


# --------------------------------------------------------------------------------------------
# MiniLM


class MiniLMFloat:
    """Float64 all-MiniLM-L6-v2.

    ``MiniLMFloat(model, tokenizer=None)``: ``model`` from ``sw.models.load_minilm``; the
    tokenizer (for ``embed`` of strings) defaults to the one in ``model.path``.

    - ``embeddings(ids) -> (T, d)``: word + position + token-type-0 embeddings, LayerNorm.
    - ``layer(i, x) -> (T, d)``: encoder layer i (self-attention over all T tokens, add &
      LayerNorm, erf-GELU FFN, add & LayerNorm).
    - ``encode(ids) -> (T, d)``: the last hidden states.
    - ``embed(texts_or_id_lists) -> (n, d)``: sentence embeddings, mean over the tokens of each
      sentence (all real: sentences are encoded one at a time, unpadded), L2-normalized. A
      single string gives (1, d).
    """

    def __init__(self, model: MiniLMModel, tokenizer=None):
        self.model = model
        self.config = model.config
        self._tokenizer = tokenizer
        self.w = {k: v.astype(np.float64) for k, v in model.tensors.items()}

    @property
    def tokenizer(self):
        """The MiniLMTokenizer used by ``embed`` for strings (created on first use)."""
        if self._tokenizer is None:
            from sw.tokenizer import MiniLMTokenizer

            self._tokenizer = MiniLMTokenizer(self.model.path)
        return self._tokenizer

    def embeddings(self, ids: Sequence[int]) -> np.ndarray:
        """Input of layer 0 for token ids ``ids`` (T,), shape (T, d)."""
        ids = np.asarray(ids, dtype=np.int64)
        c, w = self.config, self.w
        if ids.ndim != 1 or not 0 < len(ids) <= c.max_pos:
            raise ValueError(f"need 1..{c.max_pos} token ids, got shape {ids.shape}")
        x = w["token_embd.weight"][ids] + w["position_embd.weight"][: len(ids)]
        x = x + w["token_types.weight"][0]
        return layer_norm(x, w["token_embd_norm.weight"], w["token_embd_norm.bias"], c.ln_eps)

    def layer(self, i: int, x: np.ndarray) -> np.ndarray:
        """Encoder layer ``i`` applied to hidden states ``x`` (T, d)."""
        c = self.config
        p = f"blk.{i}."
        w = self.w

        def lin(name, v):
            return v @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        T = x.shape[0]
        q = lin("attn_q", x).reshape(T, c.n_heads, c.d_head).transpose(1, 0, 2)
        k = lin("attn_k", x).reshape(T, c.n_heads, c.d_head).transpose(1, 0, 2)
        v = lin("attn_v", x).reshape(T, c.n_heads, c.d_head).transpose(1, 0, 2)
        att = softmax(q @ k.transpose(0, 2, 1) / math.sqrt(c.d_head))
        ctx = (att @ v).transpose(1, 0, 2).reshape(T, c.d_model)
        x = layer_norm(
            x + lin("attn_output", ctx),
            w[p + "attn_output_norm.weight"],
            w[p + "attn_output_norm.bias"],
            c.ln_eps,
        )
        h = lin("ffn_down", gelu_erf(lin("ffn_up", x)))
        return layer_norm(
            x + h, w[p + "layer_output_norm.weight"], w[p + "layer_output_norm.bias"], c.ln_eps
        )

    def encode(self, ids: Sequence[int]) -> np.ndarray:
        """Last hidden states (T, d) of one sequence of token ids."""
        x = self.embeddings(ids)
        for i in range(self.config.n_layers):
            x = self.layer(i, x)
        return x

    def embed(self, texts) -> np.ndarray:
        """Sentence embeddings (n, d), unit L2 norm. ``texts``: a string, a list of strings, or
        a list of token-id lists (with [CLS]/[SEP], as the tokenizer gives them)."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.empty((len(texts), self.config.d_model))
        for n, t in enumerate(texts):
            ids = self.tokenizer.encode(t) if isinstance(t, str) else list(t)
            e = self.encode(ids).mean(axis=0)
            out[n] = e / max(np.linalg.norm(e), 1e-12)  # sentence-transformers' clamp
        return out


# --------------------------------------------------------------------------------------------
# SmolLM2


class KVCache:
    """Keys and values of every layer for one sequence, float64, grown on demand.

    ``k[i]`` / ``v[i]`` are (capacity, n_kv_heads, d_head) arrays of layer i, keys stored
    *after* RoPE; positions ``0 .. length-1`` are valid. ``SmolLM2Float.prefill``/``decode``
    write positions ``length ..`` and then advance ``length``; ``layer(i, x, cache, pos)``
    writes positions ``pos .. pos+T-1`` of layer i only and leaves ``length`` to the caller.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, d_head: int, capacity: int = 256):
        self.length = 0
        self.k = [np.zeros((capacity, n_kv_heads, d_head)) for _ in range(n_layers)]
        self.v = [np.zeros((capacity, n_kv_heads, d_head)) for _ in range(n_layers)]

    @classmethod
    def for_config(cls, config, capacity: int = 256) -> KVCache:
        """An empty cache shaped for a SmolLM2Config."""
        return cls(config.n_layers, config.n_kv_heads, config.d_head, capacity)

    def store(self, i: int, pos: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
        """Write (T, n_kv, d_head) keys/values of layer i at positions pos..pos+T-1; return
        views of all keys and values 0..pos+T-1 of that layer."""
        end = pos + k.shape[0]
        if end > self.k[i].shape[0]:
            cap = max(end, 2 * self.k[i].shape[0])
            for buf in (self.k, self.v):
                grown = np.zeros((cap, *buf[i].shape[1:]))
                grown[: buf[i].shape[0]] = buf[i]
                buf[i] = grown
        self.k[i][pos:end] = k
        self.v[i][pos:end] = v
        return self.k[i][:end], self.v[i][:end]

    def truncate(self, length: int) -> None:
        """Forget positions >= ``length`` (e.g. to re-run a suffix)."""
        self.length = min(self.length, length)


@lru_cache(maxsize=2)
def _smollm2_weights(path: str, mtime: float) -> dict[str, np.ndarray]:
    # About 1.1 GB of float64: cached per file so that several reference objects (tests,
    # accuracy scripts) share one copy; mtime keys out a replaced file.
    from sw.models import load_smollm2

    model = load_smollm2(path)
    return {name: t.dequantize(np.float64) for name, t in model.gguf.tensors.items()}


class SmolLM2Float:
    """Float64 SmolLM2 on the exact values of the GGUF's quantized weights.

    ``SmolLM2Float(model)``: ``model`` from ``sw.models.load_smollm2``. Weights are dequantized
    once to float64 (exact) and cached across instances for the same file.

    Architecture: pre-norm llama decoder. ``x = embed(ids)``; per layer
    ``h = x + Wo . attn(RoPE(Wq n), RoPE(Wk n), Wv n)`` with ``n = RMSNorm(x)``, grouped-query
    attention (query head h reads KV head ``h // (n_heads / n_kv_heads)``), causal, scale
    1/sqrt(d_head); then ``x = h + Wdown (silu(Wgate m) * Wup m)`` with ``m = RMSNorm(h)``;
    finally ``logits = RMSNorm(x) . token_embd^T`` (tied LM head). RoPE on adjacent pairs.

    Layer-level pieces: ``embed(ids) -> (T, d)``, ``layer(i, x, cache, pos) -> (T, d)``,
    ``final(x) -> (T, vocab)``. Whole model: ``prefill``, ``decode``, ``generate``.
    """

    def __init__(self, model: SmolLM2Model):
        self.model = model
        self.config = c = model.config
        p = str(model.path)
        self.w = _smollm2_weights(p, os.path.getmtime(p))
        self.head = self.w["output.weight" if "output.weight" in self.w else "token_embd.weight"]
        self.group = c.n_heads // c.n_kv_heads
        missing = [n for n in SMOLLM2_LAYER_TENSORS if f"blk.0.{n}" not in self.w]
        assert not missing, missing  # load_smollm2 has checked the file

    def new_cache(self, capacity: int = 256) -> KVCache:
        """An empty KVCache for this model."""
        return KVCache.for_config(self.config, capacity)

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        """Rows of token_embd for ``ids``: the input of layer 0, (T, d)."""
        return self.w["token_embd.weight"][np.asarray(ids, dtype=np.int64)]

    def layer(self, i: int, x: np.ndarray, cache: KVCache, pos: int) -> np.ndarray:
        """Decoder layer ``i`` on hidden states ``x`` (T, d) of positions pos..pos+T-1.

        Writes this layer's keys/values of those positions into ``cache`` and attends to
        cached positions 0..pos+T-1 (causally). Does not advance ``cache.length``.
        """
        c, w = self.config, self.w
        p = f"blk.{i}."
        T = x.shape[0]
        positions = np.arange(pos, pos + T)
        n = rms_norm(x, w[p + "attn_norm.weight"], c.rms_eps)
        q = (n @ w[p + "attn_q.weight"].T).reshape(T, c.n_heads, c.d_head)
        k = (n @ w[p + "attn_k.weight"].T).reshape(T, c.n_kv_heads, c.d_head)
        v = (n @ w[p + "attn_v.weight"].T).reshape(T, c.n_kv_heads, c.d_head)
        q = rope_adjacent(q, positions, c.rope_theta)
        k = rope_adjacent(k, positions, c.rope_theta)
        K, V = cache.store(i, pos, k, v)  # (S, n_kv, d_head), S = pos + T
        S = K.shape[0]
        # Query heads grouped by the KV head they share: (n_kv, group, T, d_head).
        qg = q.reshape(T, c.n_kv_heads, self.group, c.d_head).transpose(1, 2, 0, 3)
        scores = qg @ K.transpose(1, 2, 0)[:, None] / math.sqrt(c.d_head)  # (kv, g, T, S)
        mask = np.arange(S)[None, :] > positions[:, None]
        scores = np.where(mask, -np.inf, scores)
        ctx = softmax(scores) @ V.transpose(1, 0, 2)[:, None]  # (kv, g, T, d_head)
        ctx = ctx.transpose(2, 0, 1, 3).reshape(T, c.n_heads * c.d_head)
        h = x + ctx @ w[p + "attn_output.weight"].T
        m = rms_norm(h, w[p + "ffn_norm.weight"], c.rms_eps)
        gate = silu(m @ w[p + "ffn_gate.weight"].T)
        up = m @ w[p + "ffn_up.weight"].T
        return h + (gate * up) @ w[p + "ffn_down.weight"].T

    def final(self, x: np.ndarray) -> np.ndarray:
        """Output RMSNorm and tied LM head: logits (T, vocab) from hidden states (T, d)."""
        return rms_norm(x, self.w["output_norm.weight"], self.config.rms_eps) @ self.head.T

    def prefill(self, ids: Sequence[int], cache: KVCache) -> np.ndarray:
        """Run ``ids`` at positions cache.length.. ; return logits of every position
        (T, vocab) and advance the cache."""
        ids = list(ids)
        if not ids:
            raise ValueError("prefill needs at least one token")
        pos = cache.length
        x = self.embed(ids)
        for i in range(self.config.n_layers):
            x = self.layer(i, x, cache, pos)
        cache.length = pos + len(ids)
        return self.final(x)

    def decode(self, token: int, cache: KVCache) -> np.ndarray:
        """Run one token at position cache.length; return its logits (vocab,)."""
        return self.prefill([token], cache)[0]

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        stop_ids: Sequence[int] | None = None,
        cache: KVCache | None = None,
    ) -> Iterator[int]:
        """Greedy decoding: yield up to ``max_new_tokens`` new token ids (argmax of the
        logits). Stops before yielding a token in ``stop_ids`` (default: the EOS id). Uses
        ``cache`` if given (continuing after its contents), else a fresh one."""
        stop = set(stop_ids) if stop_ids is not None else {self.config.eos_id}
        cache = cache if cache is not None else self.new_cache(len(prompt_ids) + max_new_tokens)
        if max_new_tokens <= 0:
            return
        logits = self.prefill(prompt_ids, cache)[-1]
        for n in range(max_new_tokens):
            tok = int(np.argmax(logits))
            if tok in stop:
                return
            yield tok
            if n + 1 < max_new_tokens:
                logits = self.decode(tok, cache)

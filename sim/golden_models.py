"""Whole transformer layers and models composed from the golden integer ops.

What the chip computes for a BERT post-LN encoder layer (MiniLM) and a llama pre-norm decoder
layer with grouped-query attention and a KV cache (SmolLM2), op by op, in the order and the
formats the compiler will schedule them. Weights come already in the chip's formats
(``sw/quantize.py``: :class:`QWeight` matrices, wide vectors); only the final host-side steps
(mean pooling and L2 normalization of MiniLM sentence embeddings, argmax / log-softmax of
SmolLM2 logits) leave the integer domain.

Data flow of one layer (A8 = INT8 + group scales, everything else wide INT32 Q.16):

MiniLM::

    h ─quant─ Q,K,V GEMMs (+bias; 1/√d folded into W_q) ─quant per head─ attention
      ─quant─ O GEMM ─ +h ─ LayerNorm ─quant─ FFN1 ─ GELU ─quant─ FFN2 ─ +h1 ─ LayerNorm

SmolLM2::

    h ─RMSNorm─quant─ Q,K,V GEMMs ─RoPE(Q,K)─quant per head─ K,V appended to the cache
      ─ attention over the cache (causal) ─quant─ O GEMM ─ +h
      ─RMSNorm─quant─ gate, up GEMMs ─ SiLU·mul ─quant─ down GEMM ─ +h
"""

from dataclasses import dataclass, field

import numpy as np

from . import golden as G

__all__ = ["minilm_encode", "minilm_layer", "KVCache", "SmolLM2Golden"]


# -- MiniLM ----------------------------------------------------------------------------------------


def minilm_embeddings(ids, m):
    """word + position + token-type(0) embeddings, then LayerNorm."""
    ids = np.asarray(ids)
    T = len(ids)
    x = G.residual_add(G.embed(ids, m.word), G.embed(np.arange(T), m.pos))
    x = G.residual_add(x, G.embed(np.zeros(T, np.int64), m.type))
    return G.layernorm(x, m.emb_ln_g, m.emb_ln_b, m.config.ln_eps)


def _split_heads(x, n_heads, d_head):
    return np.asarray(x).reshape(x.shape[0], n_heads, d_head).transpose(1, 0, 2)


def minilm_layer(h, L, cfg):
    """One post-LN encoder layer (no padding: every token sees every token)."""
    T = h.shape[0]
    x8, xs = G.quantize_rows(h)
    q = G.gemm(x8, xs, L.wq, L.bq)
    k = G.gemm(x8, xs, L.wk, L.bk)
    v = G.gemm(x8, xs, L.wv, L.bv)
    hq, hk, hv = (_split_heads(t, cfg.n_heads, cfg.d_head) for t in (q, k, v))
    q8, qs = G.quantize_rows(hq)
    k8, ks = G.quantize_rows(hk)
    v8, vs = G.quantize_rows(hv, group=None)
    att = G.attention_head(q8, qs, k8, ks, v8, vs)  # [heads, T, d_head]
    att = att.transpose(1, 0, 2).reshape(T, cfg.n_heads * cfg.d_head)
    a8, as_ = G.quantize_rows(att)
    h1 = G.layernorm(G.residual_add(h, G.gemm(a8, as_, L.wo, L.bo)), L.ln1_g, L.ln1_b, cfg.ln_eps)
    f8, fs = G.quantize_rows(h1)
    f = G.gelu(G.gemm(f8, fs, L.w1, L.b1))
    g8, gs = G.quantize_rows(f)
    out = G.layernorm(G.residual_add(h1, G.gemm(g8, gs, L.w2, L.b2)), L.ln2_g, L.ln2_b, cfg.ln_eps)
    assert out.shape == (T, cfg.d_model)
    return out


def minilm_encode(ids, m):
    """Last hidden states (wide [T, d]) of the quantized MiniLM ``m`` for token ids."""
    h = minilm_embeddings(ids, m)
    for L in m.layers:
        h = minilm_layer(h, L, m.config)
    return h


# -- SmolLM2 ---------------------------------------------------------------------------------------


@dataclass
class KVCache:
    """The on-chip KV cache: per layer and KV head, A8 keys and values.

    ``k8``/``v8`` [layers, kv_heads, capacity, d_head] int8. Keys carry a mantissa per group of
    16 along d_head (``k_mant`` [..., capacity, d_head/16]), values one per token (``v_mant``
    [..., capacity, 1]); one exponent per token each (``k_exp``/``v_exp`` [..., capacity]).
    ``length`` tokens are valid.
    """

    layers: int
    kv_heads: int
    capacity: int
    d_head: int
    length: int = 0
    k8: np.ndarray = field(init=False)
    v8: np.ndarray = field(init=False)
    k_mant: np.ndarray = field(init=False)
    k_exp: np.ndarray = field(init=False)
    v_mant: np.ndarray = field(init=False)
    v_exp: np.ndarray = field(init=False)

    def __post_init__(self):
        shape = (self.layers, self.kv_heads, self.capacity)
        self.k8 = np.zeros(shape + (self.d_head,), np.int8)
        self.v8 = np.zeros(shape + (self.d_head,), np.int8)
        self.k_mant = np.zeros(shape + (-(-self.d_head // G.NUM.act_group),), np.int64)
        self.v_mant = np.zeros(shape + (1,), np.int64)
        self.k_exp = np.zeros(shape, np.int64)
        self.v_exp = np.zeros(shape, np.int64)

    def append(self, layer, pos0, k8, ks: G.ActScale, v8, vs: G.ActScale):
        """Write T new tokens' keys and values ([kv_heads, T, d_head]) at positions pos0.."""
        T = k8.shape[1]
        if pos0 + T > self.capacity:
            raise ValueError(
                f"KV cache overflow: {pos0 + T} tokens do not fit its {self.capacity} positions"
            )
        sl = slice(pos0, pos0 + T)
        self.k8[layer, :, sl] = k8
        self.v8[layer, :, sl] = v8
        self.k_mant[layer, :, sl], self.k_exp[layer, :, sl] = ks.mant, ks.exp
        self.v_mant[layer, :, sl], self.v_exp[layer, :, sl] = vs.mant, vs.exp

    def keys(self, layer, n):
        """The first ``n`` keys of every KV head of ``layer``: [kv_heads, n, d_head]."""
        return self.k8[layer, :, :n], G.ActScale(self.k_mant[layer, :, :n],
                                                 self.k_exp[layer, :, :n], G.NUM.act_group)

    def values(self, layer, n):
        """The first ``n`` values of every KV head of ``layer`` (one scale per token)."""
        return self.v8[layer, :, :n], G.ActScale(self.v_mant[layer, :, :n],
                                                 self.v_exp[layer, :, :n], self.d_head)


class SmolLM2Golden:
    """SmolLM2 on the golden integer model: prefill, then token-by-token decode with a KV cache.

    ``m`` is the quantized model (``sw/quantize.py``); its ``config`` gives the shapes and its
    ``act_passes`` (1: A8, 2: A8x2) how every linear layer's input is quantized.
    """

    def __init__(self, m):
        self.m = m
        self.cfg = m.config
        self.passes = m.act_passes

    def new_cache(self, capacity=None) -> KVCache:
        """An empty KV cache of ``capacity`` positions (default: as many as the RoPE table)."""
        c = self.cfg
        table = self.m.rope_cos.shape[0]
        cap = min(c.context_length, table) if capacity is None else capacity
        if cap < 1:
            raise ValueError(f"cache capacity must be at least 1, got {cap}")
        if cap > table:
            raise ValueError(f"cache capacity {cap} beyond the RoPE table ({table} positions)")
        return KVCache(c.n_layers, c.n_kv_heads, cap, c.d_head)

    def layer(self, i, h, cache: KVCache, pos0):
        """Decoder layer ``i`` on wide ``h`` [T, d] at positions pos0..pos0+T-1."""
        c, L = self.cfg, self.m.layers[i]
        T = h.shape[0]
        pos = np.arange(pos0, pos0 + T)
        P = self.passes
        x = G.quantize_act(G.rmsnorm(h, L.attn_norm, c.rms_eps), P)
        q = G.gemm_passes(x, L.wq).reshape(T, c.n_heads, c.d_head)
        k = G.gemm_passes(x, L.wk).reshape(T, c.n_kv_heads, c.d_head)
        v = G.gemm_passes(x, L.wv).reshape(T, c.n_kv_heads, c.d_head)
        cos, sin = self.m.rope_cos[pos], self.m.rope_sin[pos]
        q = G.rope(q, cos, sin).transpose(1, 0, 2)
        k = G.rope(k, cos, sin).transpose(1, 0, 2)
        k8, ks = G.quantize_rows(k)
        v8, vs = G.quantize_rows(v.transpose(1, 0, 2), group=None)
        cache.append(i, pos0, k8, ks, v8, vs)
        n = pos0 + T
        rep = c.n_heads // c.n_kv_heads  # grouped-query attention: query heads per KV head
        q8, qs = G.quantize_rows(q)
        kk, kks = cache.keys(i, n)
        vv, vvs = cache.values(i, n)
        kk, vv = np.repeat(kk, rep, axis=0), np.repeat(vv, rep, axis=0)
        kks = G.ActScale(np.repeat(kks.mant, rep, 0), np.repeat(kks.exp, rep, 0), kks.group)
        vvs = G.ActScale(np.repeat(vvs.mant, rep, 0), np.repeat(vvs.exp, rep, 0), vvs.group)
        att = G.attention_head(q8, qs, kk, kks, vv, vvs, q_pos=pos)  # [heads, T, d_head]
        att = att.transpose(1, 0, 2).reshape(T, c.n_heads * c.d_head)
        h = G.residual_add(h, G.gemm_passes(G.quantize_act(att, P), L.wo))
        f = G.quantize_act(G.rmsnorm(h, L.ffn_norm, c.rms_eps), P)
        act = G.silu_mul(G.gemm_passes(f, L.wg), G.gemm_passes(f, L.wu))
        return G.residual_add(h, G.gemm_passes(G.quantize_act(act, P), L.wd))

    def final(self, h, chunk=64):
        """Final RMSNorm and the tied LM head: wide logits [T, vocab]."""
        x = G.rmsnorm(h, self.m.output_norm, self.cfg.rms_eps)
        return np.concatenate([G.gemm_passes(G.quantize_act(x[i:i + chunk], self.passes),
                                             self.m.lm_head)
                               for i in range(0, len(x), chunk)])

    def forward(self, ids, cache: KVCache, all_logits=False, progress=None):
        """Run tokens ``ids`` after the cache's contents; logits of the last (or every) token.

        ``progress(done, total)`` is called after each layer (for long prefills).
        """
        ids = np.asarray(ids, np.int64)
        if ids.size == 0:
            raise ValueError("forward: no tokens")
        pos0 = cache.length
        h = G.embed(ids, self.m.token_embd)
        n = self.cfg.n_layers
        for i in range(n):
            h = self.layer(i, h, cache, pos0)
            if progress is not None:
                progress(i + 1, n)
        cache.length = pos0 + len(ids)
        return self.final(h if all_logits else h[-1:])

    def generate(self, prompt_ids, max_new_tokens, stop_ids=(), cache=None, progress=None):
        """Greedy decoding; yields token ids as they are produced (a stop id is yielded, then
        generation ends). ``progress`` is passed to the prefill's :meth:`forward`."""
        cache = cache if cache is not None else self.new_cache()
        logits = self.forward(prompt_ids, cache, progress=progress)[-1]
        for n in range(max_new_tokens):
            tok = int(np.argmax(logits))
            yield tok
            if tok in stop_ids or n + 1 == max_new_tokens:
                return
            logits = self.forward([tok], cache)[-1]

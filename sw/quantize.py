"""Weights and constants into the chip's formats (the compiler's first pass).

The chip multiplies INT8 activations by *grouped* weights (``sim/golden.py``): ``q`` INT8 or INT4
[N, K]; per column n and group g of 32 along K a signed INT16 ``scale`` and ``offset``; per column
a ``shift``, with ``w = (scale * q + offset) * 2**-shift``.

- GGUF Q8_0 / Q4_0 / Q4_1 map onto it with every ``q`` unchanged (Q4 nibbles become signed,
  q - 8, and the 8·d moves into the offset). The fp16 scales become INT16 mantissas under one
  binary point per column: exact whenever a column's scales span less than 2**5 (their 11-bit
  mantissas fit in 16 bits), otherwise rounded at 2**-15 of the column's largest scale
  (``QWeight.exact`` / ``total`` count both; :func:`conversion_report` sums them).
- Float weights (MiniLM) are quantized symmetrically per group (scale = max|w| / 127).

Constants that stay wide (biases, norm gains) are Q.F INT32: :func:`to_wide`.

:func:`quantize_minilm` and :func:`quantize_smollm2` turn a loaded model (``sw/models.py``) into
the containers the golden model runs (``sim/golden_models.py``): attention's 1/sqrt(d_head) is
folded into W_q (and b_q), as a column shift when it is a power of two.
"""

import math
from dataclasses import dataclass, field, replace

import numpy as np

from hw.params import Numerics

__all__ = [
    "QWeight",
    "to_wide",
    "from_wide",
    "quantize_float",
    "random_gemm",
    "from_gguf_blocks",
    "dequantize",
    "conversion_report",
    "rope_table",
    "quantize_minilm",
    "quantize_smollm2",
    "QMiniLM",
    "QSmolLM2",
]

NUM = Numerics()


def to_wide(x, num: Numerics = NUM) -> np.ndarray:
    """Float -> wide Q.F INT32 (round half up, saturate)."""
    v = np.floor(np.asarray(x, dtype=np.float64) * (1 << num.frac_bits) + 0.5)
    return np.clip(v, -(1 << 31), (1 << 31) - 1).astype(np.int64)


def from_wide(v, num: Numerics = NUM) -> np.ndarray:
    """Wide Q.F -> float64."""
    return np.asarray(v, dtype=np.float64) / (1 << num.frac_bits)


@dataclass(frozen=True, eq=False)
class QWeight:
    """A weight matrix in the chip's grouped format (see module docstring).

    ``q`` int8 [N, K] (values in -8..7 when ``bits == 4``), ``scale`` int16 [N, K/group],
    ``offset`` int16 [N, K/group] or None, ``shift`` int64 [N]. ``exact`` counts the group
    scales/offsets that converted without rounding (``total`` of them).
    """

    q: np.ndarray
    scale: np.ndarray
    offset: np.ndarray | None
    shift: np.ndarray
    bits: int
    exact: int = 0
    total: int = 0
    name: str = field(default="")

    @property
    def shape(self):
        return self.q.shape


def _column_shift(mag: np.ndarray, num: Numerics) -> np.ndarray:
    """Per-column binary point: the largest shift keeping every |mantissa| < 2**(scale_bits-1)."""
    top = num.scale_bits - 1
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.where(mag > 0, mag, 1.0)))
    shift = (top - 1 - e).astype(np.int64)
    # log2 of a value just below a power of two can round up; make sure the mantissa fits.
    over = np.floor(mag * np.exp2(shift) + 0.5) >= (1 << top)
    return shift - over


def _to_mantissa(v: np.ndarray, shift: np.ndarray):
    """Exact-or-rounded INT16 mantissas of float values under a per-row shift."""
    scaled = v.astype(np.float64) * np.exp2(shift)[:, None]
    m = np.floor(scaled + 0.5)
    return m.astype(np.int16), int(np.count_nonzero(m == scaled))


def from_gguf_blocks(
    kind: str, q, d, m=None, num: Numerics = NUM, name: str = ""
) -> QWeight:
    """GGUF quantized blocks -> QWeight, with q unchanged.

    ``kind`` is ``"Q8_0"`` (q int8, w = d·q), ``"Q4_0"`` (q 0..15, w = d·(q-8)) or ``"Q4_1"``
    (q 0..15, w = d·q + m = d·(q-8) + (m + 8d)). ``d``, ``m`` fp16 [N, K/32].
    """
    if num.group != 32:
        raise ValueError(f"GGUF blocks are 32 wide; Numerics.group is {num.group}")
    d = np.asarray(d, dtype=np.float64)
    if kind == "Q8_0":
        qs, off, bits = np.asarray(q, np.int8), None, 8
    elif kind == "Q4_0":
        qs, off, bits = (np.asarray(q, np.int16) - 8).astype(np.int8), None, 4
    elif kind == "Q4_1":
        if m is None:
            raise ValueError(f"{name}: Q4_1 needs the block minima m")
        qs, bits = (np.asarray(q, np.int16) - 8).astype(np.int8), 4
        off = np.asarray(m, np.float64) + 8.0 * d  # exact in float64: fp16 values
    else:
        raise ValueError(f"{name}: no grouped-weight conversion for GGUF type {kind}")
    mag = np.abs(d).max(axis=1)
    if off is not None:
        mag = np.maximum(mag, np.abs(off).max(axis=1))
    shift = _column_shift(mag, num)
    scale, ex1 = _to_mantissa(d, shift)
    total = d.size
    exact = ex1
    offset = None
    if off is not None:
        offset, ex2 = _to_mantissa(off, shift)
        total += off.size
        exact += ex2
    return QWeight(qs, scale, offset, shift, bits, exact, total, name)


def quantize_float(w, bits: int = 8, num: Numerics = NUM, name: str = "") -> QWeight:
    """Symmetric group-wise quantization of a float [N, K] matrix (K a multiple of the group).

    Per group the scale is max|w| / qmax (qmax = 127 or 7), rounded to the INT16 mantissa
    first so that q = round(w / scale) uses exactly the scale the chip will apply.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] % num.group:
        raise ValueError(f"{name}: cannot group {w.shape} along K by {num.group}")
    if bits not in (4, 8):
        raise ValueError(f"{name}: bits must be 4 or 8, got {bits}")
    qmax = (1 << (bits - 1)) - 1
    N, K = w.shape
    wg = w.reshape(N, K // num.group, num.group)
    d = np.abs(wg).max(axis=2) / qmax
    shift = _column_shift(d.max(axis=1), num)
    scale, _ = _to_mantissa(d, shift)
    step = scale.astype(np.float64) * np.exp2(-shift)[:, None]
    safe = np.where(step > 0, step, 1.0)
    q = np.clip(np.floor(wg / safe[:, :, None] + 0.5), -qmax, qmax)
    q = np.where(step[:, :, None] > 0, q, 0).reshape(N, K).astype(np.int8)
    return QWeight(q, scale, None, shift, bits, d.size, d.size, name)


def dequantize(w: QWeight, num: Numerics = NUM) -> np.ndarray:
    """The float64 matrix a QWeight stands for (for tests and error measurements)."""
    N, K = w.q.shape
    g = num.group
    sc = w.scale.astype(np.float64)[:, :, None]
    v = w.q.astype(np.float64).reshape(N, K // g, g) * sc
    if w.offset is not None:
        v = v + w.offset.astype(np.float64)[:, :, None]
    return v.reshape(N, K) * np.exp2(-w.shift.astype(np.float64))[:, None]


def rope_table(theta: float, d_head: int, n_pos: int, num: Numerics = NUM):
    """cos and sin of RoPE angles, Q.F integers of shape ``(n_pos, d_head // 2)``.

    Pair i of a head (elements 2i, 2i+1) at position p rotates by p * theta**(-2i / d_head).
    The compiler writes this table into memory; it is a constant of the model, not of the chip.
    """
    if d_head % 2:
        raise ValueError(f"rope_table: d_head must be even, got {d_head}")
    one = 1 << num.frac_bits
    inv_freq = theta ** (-np.arange(0, d_head, 2, dtype=np.float64) / d_head)
    ang = np.arange(n_pos, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos = np.round(np.cos(ang) * one).astype(np.int64)
    sin = np.round(np.sin(ang) * one).astype(np.int64)
    return cos, sin


def conversion_report(weights) -> tuple[int, int]:
    """(exact, total) group scales/offsets over an iterable of QWeights."""
    ws = list(weights)
    return sum(w.exact for w in ws), sum(w.total for w in ws)


# -- whole models ----------------------------------------------------------------------------------


@dataclass(eq=False)
class QMiniLMLayer:
    """One encoder layer in the chip's formats: QWeights ``wq wk wv wo w1 w2``, wide biases
    ``bq bk bv bo b1 b2`` and LayerNorm parameters ``ln1_g ln1_b ln2_g ln2_b``."""

    wq: QWeight
    bq: np.ndarray
    wk: QWeight
    bk: np.ndarray
    wv: QWeight
    bv: np.ndarray
    wo: QWeight
    bo: np.ndarray
    ln1_g: np.ndarray
    ln1_b: np.ndarray
    w1: QWeight
    b1: np.ndarray
    w2: QWeight
    b2: np.ndarray
    ln2_g: np.ndarray
    ln2_b: np.ndarray


@dataclass(eq=False)
class QMiniLM:
    """all-MiniLM-L6-v2 in the chip's formats: INT8 grouped embedding tables ``word``, ``pos``,
    ``type``, the embedding LayerNorm ``emb_ln_g``/``emb_ln_b`` (wide) and ``layers``."""

    config: object
    word: QWeight
    pos: QWeight
    type: QWeight
    emb_ln_g: np.ndarray
    emb_ln_b: np.ndarray
    layers: list[QMiniLMLayer]

    def weights(self):
        yield from (self.word, self.pos, self.type)
        for L in self.layers:
            yield from (L.wq, L.wk, L.wv, L.wo, L.w1, L.w2)


def quantize_minilm(model, num: Numerics = NUM) -> QMiniLM:
    """MiniLM (``sw.models.load_minilm``) -> QMiniLM: every matrix and embedding table INT8,
    symmetric per group of 32 along K; 1/sqrt(d_head) folded into W_q and b_q."""
    c = model.config
    f64 = {k: np.asarray(v, np.float64) for k, v in model.tensors.items()}
    qk = 1.0 / math.sqrt(c.d_head)

    def qf(name, w):
        return quantize_float(w, 8, num, name)

    layers = []
    for i in range(c.n_layers):
        p = f"blk.{i}."

        def t(n, p=p):
            return f64[p + n]

        layers.append(QMiniLMLayer(
            wq=qf(p + "attn_q.weight", t("attn_q.weight") * qk),
            bq=to_wide(t("attn_q.bias") * qk, num),
            wk=qf(p + "attn_k.weight", t("attn_k.weight")), bk=to_wide(t("attn_k.bias"), num),
            wv=qf(p + "attn_v.weight", t("attn_v.weight")), bv=to_wide(t("attn_v.bias"), num),
            wo=qf(p + "attn_output.weight", t("attn_output.weight")),
            bo=to_wide(t("attn_output.bias"), num),
            ln1_g=to_wide(t("attn_output_norm.weight"), num),
            ln1_b=to_wide(t("attn_output_norm.bias"), num),
            w1=qf(p + "ffn_up.weight", t("ffn_up.weight")), b1=to_wide(t("ffn_up.bias"), num),
            w2=qf(p + "ffn_down.weight", t("ffn_down.weight")),
            b2=to_wide(t("ffn_down.bias"), num),
            ln2_g=to_wide(t("layer_output_norm.weight"), num),
            ln2_b=to_wide(t("layer_output_norm.bias"), num),
        ))
    return QMiniLM(
        config=c,
        word=qf("token_embd.weight", f64["token_embd.weight"]),
        pos=qf("position_embd.weight", f64["position_embd.weight"]),
        type=qf("token_types.weight", f64["token_types.weight"]),
        emb_ln_g=to_wide(f64["token_embd_norm.weight"], num),
        emb_ln_b=to_wide(f64["token_embd_norm.bias"], num),
        layers=layers,
    )


@dataclass(eq=False)
class QSmolLM2Layer:
    """One decoder layer: RMSNorm gains ``attn_norm``/``ffn_norm`` (wide) and QWeights
    ``wq`` (1/sqrt(d_head) folded in), ``wk wv wo wg wu wd``."""

    attn_norm: np.ndarray
    wq: QWeight
    wk: QWeight
    wv: QWeight
    wo: QWeight
    ffn_norm: np.ndarray
    wg: QWeight
    wu: QWeight
    wd: QWeight


@dataclass(eq=False)
class QSmolLM2:
    """SmolLM2 in the chip's formats: the Q8_0 embedding (also the tied LM head)
    ``token_embd``, ``layers``, ``output_norm`` (wide) and the RoPE table ``rope_cos``/
    ``rope_sin`` (Q.F, [positions, d_head/2]). ``act_passes``: every linear layer's input as
    one A8 pass (1) or two (2, A8x2: ``sim.golden.quantize_residual``)."""

    config: object
    token_embd: QWeight
    lm_head: QWeight
    layers: list[QSmolLM2Layer]
    output_norm: np.ndarray
    rope_cos: np.ndarray
    rope_sin: np.ndarray
    act_passes: int = 2

    def weights(self):
        yield self.token_embd
        if self.lm_head is not self.token_embd:
            yield self.lm_head
        for L in self.layers:
            yield from (L.wq, L.wk, L.wv, L.wo, L.wg, L.wu, L.wd)


def _from_gguf_tensor(t, name: str, num: Numerics, factor: float = 1.0) -> QWeight:
    """A GGUF tensor (Q8_0 / Q4_0 / Q4_1 blocks, q unchanged; F16/F32 quantized to INT8) as a
    QWeight, times ``factor``: a power of two goes into the column shift (exact)."""
    kind = t.ggml_type.name
    e = math.log2(factor)
    pow2 = e == int(e)
    if kind in ("Q8_0", "Q4_0", "Q4_1"):
        q, d, m = t.quant_blocks()
        if not pow2:
            d = np.asarray(d, np.float64) * factor
            m = None if m is None else np.asarray(m, np.float64) * factor
        w = from_gguf_blocks(kind, q, d, m, num, name)
    else:
        w = quantize_float(t.dequantize().astype(np.float64) * (1 if pow2 else factor), 8, num,
                           name)
    if pow2 and e:
        w = replace(w, shift=w.shift - int(e))
    return w


def quantize_smollm2(model, positions: int | None = None, act_passes: int = 2,
                     num: Numerics = NUM) -> QSmolLM2:
    """SmolLM2 (``sw.models.load_smollm2``) -> QSmolLM2, every GGUF block loaded with q
    unchanged. ``positions`` sizes the RoPE table (default: the context length).

    ``act_passes`` = 2 (default) feeds every linear layer two INT8 passes (A8x2). Measured
    with ``scripts/accuracy_report.py`` (604 tokens): A8 gives 95.2% top-1 agreement with
    float, A8x2 97.7%; A8 flips near-ties such as the first answer token to "What is the
    capital of France?" (float margin 0.08 logits). Decode is bound by weight traffic, which the
    second pass does not add to; prefill pays twice the grid passes.
    """
    if act_passes not in (1, 2):
        raise ValueError(f"act_passes must be 1 or 2, got {act_passes}")
    c = model.config
    if c.rope_dim != c.d_head:
        raise ValueError(f"{model.path}: RoPE on {c.rope_dim} of {c.d_head} head dimensions; "
                         "the chip rotates whole heads")
    qk = 1.0 / math.sqrt(c.d_head)

    def qw(name, layer=None, factor=1.0):
        full = name if layer is None else f"blk.{layer}.{name}"
        return _from_gguf_tensor(model.tensor(name, layer=layer), full, num, factor)

    def wide(name, layer=None):
        return to_wide(model.tensor(name, layer=layer).dequantize().astype(np.float64), num)

    layers = [QSmolLM2Layer(
        attn_norm=wide("attn_norm.weight", i),
        wq=qw("attn_q.weight", i, qk), wk=qw("attn_k.weight", i), wv=qw("attn_v.weight", i),
        wo=qw("attn_output.weight", i),
        ffn_norm=wide("ffn_norm.weight", i),
        wg=qw("ffn_gate.weight", i), wu=qw("ffn_up.weight", i), wd=qw("ffn_down.weight", i),
    ) for i in range(c.n_layers)]
    embd = qw("token_embd.weight")
    head = embd if model.tied_embeddings else qw("output.weight")
    cos, sin = rope_table(c.rope_theta, c.d_head, positions or c.context_length, num)
    return QSmolLM2(config=c, token_embd=embd, lm_head=head, layers=layers,
                    output_norm=wide("output_norm.weight"), rope_cos=cos, rope_sin=sin,
                    act_passes=act_passes)


def random_gemm(rng, T: int, K: int, N: int, bits: int, offsets: bool | None = None,
                num: Numerics = NUM):
    """A random weight GEMM in the chip's formats, for tests and benchmarks.

    Activations: wide [T, K] from normals whose magnitude spans three decades from one
    activation group of 16 to the next (so the group scales differ). Weights: normals times
    0.1, quantized by :func:`quantize_float` (``bits`` 4 or 8); with ``offsets`` (default: for
    INT4) Q4_1-like random group offsets. Bias: wide [N]. Returns ``(x, qw, bias)``; the
    activations still need the chip's dynamic quantization (``sim.golden.quantize_rows``).
    """
    x = rng.normal(size=(T, K)) * np.repeat(10.0 ** rng.uniform(-2, 1, (T, -(-K // 16))), 16,
                                            axis=1)[:, :K]
    qw = quantize_float(rng.normal(size=(N, K)) * 0.1, bits=bits, num=num)
    if bits == 4 if offsets is None else offsets:
        qw = replace(qw, offset=rng.integers(-3000, 3000, qw.scale.shape).astype(np.int16))
    return to_wide(x, num), qw, to_wide(rng.normal(size=N), num)

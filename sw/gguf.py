"""A numpy-only reader for GGUF v2/v3 files (llama.cpp's model format).

File layout (little-endian; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md)::

    "GGUF"  u32 version  u64 n_tensors  u64 n_kv
    n_kv x      (string key, u32 value_type, value)
    n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
    padding to general.alignment (default 32)
    tensor data; each tensor at data_start + offset

where a string is ``u64 length`` + UTF-8 bytes and an array value is ``u32 elem_type, u64
count, elements``. ``ne[0]`` is the fastest-varying (contiguous) dimension, so the numpy shape is
``ne`` reversed: a weight matrix with ``ne = [K, N]`` is a numpy ``(N, K)`` array of N rows
(output features) of K contiguous inputs, and quantization blocks of 32 run along K.

Block formats decoded here (each block covers 32 consecutive elements along K)::

    Q4_0: f16 d, 16 B nibbles           w = d * (q - 8)
    Q4_1: f16 d, f16 m, 16 B nibbles    w = d * q + m
    Q8_0: f16 d, 32 x int8 q            w = d * q

with nibble order: element j < 16 is the low nibble of byte j, element j >= 16 is the high
nibble of byte j - 16.

The file is memory-mapped: opening parses only the header, and tensor bytes are read when a
tensor is dequantized.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sw.errors import ModelFileError

__all__ = ["GGMLType", "GGUFFile", "GGUFTensor", "GGUFValueType", "GGUF_MAGIC", "QK"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
QK = 32  # elements per block of the 32-wide quant types (Q4_0, Q4_1, Q8_0)


class GGUFValueType(enum.IntEnum):
    """Type tags of metadata values."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FMT = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


class GGMLType(enum.IntEnum):
    """ggml tensor types (the values stored in the file). Not all are decodable here."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    BF16 = 30


# (elements per block, bytes per block): enough to bound-check any tensor of these types even
# when it cannot be decoded, so that a file is rejected for being truncated, not for holding a
# type this reader cannot dequantize.
_BLOCK = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 36),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.BF16: (1, 2),
}

# Structured dtypes of one block; a tensor's bytes are viewed as an array of these.
_BLOCK_DTYPE = {
    GGMLType.Q4_0: np.dtype([("d", "<f2"), ("qs", "u1", (16,))]),
    GGMLType.Q4_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (16,))]),
    GGMLType.Q8_0: np.dtype([("d", "<f2"), ("qs", "i1", (32,))]),
}
assert all(_BLOCK_DTYPE[t].itemsize == _BLOCK[t][1] for t in _BLOCK_DTYPE)

_PLAIN_DTYPE = {
    GGMLType.F32: np.dtype("<f4"),
    GGMLType.F16: np.dtype("<f2"),
    GGMLType.BF16: np.dtype("<u2"),
    GGMLType.F64: np.dtype("<f8"),
    GGMLType.I8: np.dtype("i1"),
    GGMLType.I16: np.dtype("<i2"),
    GGMLType.I32: np.dtype("<i4"),
    GGMLType.I64: np.dtype("<i8"),
}

DECODABLE = frozenset(_BLOCK_DTYPE) | frozenset(_PLAIN_DTYPE)


@dataclass(eq=False)
class GGUFTensor:
    """One tensor of a GGUF file, a lazy view of its bytes.

    Attributes:
        name: the tensor name, e.g. ``"blk.0.attn_q.weight"``.
        ggml_type: a GGMLType.
        shape: numpy shape, i.e. the file's ``ne`` reversed; the last axis is contiguous.
        ne: the file's dimensions, fastest first.
        offset: absolute byte offset of the tensor's data in the file.
        nbytes: size of the tensor's data in bytes.
    """

    name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]
    ne: tuple[int, ...]
    offset: int
    nbytes: int
    _file: GGUFFile = field(repr=False)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    def raw(self) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 array (a view of the memory map)."""
        return self._file._mm[self.offset : self.offset + self.nbytes]

    def _blocks(self) -> np.ndarray:
        return self.raw().view(_BLOCK_DTYPE[self.ggml_type])

    def _fail(self, detail: str) -> ModelFileError:
        return ModelFileError(self._file.path, detail, tensor=self.name)

    def quant_blocks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The quantized content exactly as stored, as ``(q, d, m)``.

        With ``shape = (..., K)`` and ``G = K // 32`` groups along K:

        - Q4_0: q uint8 in 0..15 of shape (..., K), d float16 (..., G), m None; w = d * (q - 8)
        - Q4_1: q uint8 in 0..15 of shape (..., K), d float16 (..., G), m float16 (..., G);
          w = d * q + m
        - Q8_0: q int8 of shape (..., K), d float16 (..., G), m None; w = d * q

        where element k uses scale ``d[..., k // 32]``. Raises ModelFileError for other types.
        """
        t = self.ggml_type
        if t not in _BLOCK_DTYPE:
            raise self._fail(f"type {t.name} is not a 32-element block quantization")
        blocks = self._blocks()
        lead = self.shape[:-1]
        groups = self.shape[-1] // QK
        d = np.array(blocks["d"]).reshape(*lead, groups)
        m = np.array(blocks["m"]).reshape(*lead, groups) if t == GGMLType.Q4_1 else None
        qs = blocks["qs"]
        if t == GGMLType.Q8_0:
            q = np.array(qs)
        else:
            q = np.empty((len(blocks), QK), np.uint8)
            np.bitwise_and(qs, 0x0F, out=q[:, :16])
            np.right_shift(qs, 4, out=q[:, 16:])
        return q.reshape(self.shape), d, m

    def dequantize(self, dtype: np.typing.DTypeLike = np.float32) -> np.ndarray:
        """The tensor's values as a new array of ``dtype`` (float32 by default), numpy shape.

        Block-quantized values are computed in ``dtype`` from the fp16 scales widened to
        ``dtype``; with float64 the result is the exact value of every quantized weight.
        Raises ModelFileError for types this reader cannot decode (naming the type).
        """
        dtype = np.dtype(dtype)
        t = self.ggml_type
        if t in _PLAIN_DTYPE:
            a = self.raw().view(_PLAIN_DTYPE[t]).reshape(self.shape)
            if t == GGMLType.BF16:
                a = (a.astype(np.uint32) << 16).view(np.float32)
            return a.astype(dtype)
        if t not in _BLOCK_DTYPE:
            raise self._fail(
                f"cannot dequantize type {t.name} (decodable: "
                f"{', '.join(sorted(x.name for x in DECODABLE))})"
            )
        q, d, m = self.quant_blocks()
        lead = self.shape[:-1]
        groups = self.shape[-1] // QK
        # Work in (..., G, 32) so one scale broadcasts over its block.
        qg = q.reshape(*lead, groups, QK).astype(dtype)
        dg = d.astype(dtype)[..., None]
        if t == GGMLType.Q4_0:
            w = dg * (qg - 8)
        elif t == GGMLType.Q4_1:
            w = dg * qg + m.astype(dtype)[..., None]
        else:
            w = dg * qg
        return w.reshape(self.shape)


class _Reader:
    """Sequential little-endian reader over the header bytes, with EOF checks."""

    def __init__(self, path: str, buf: memoryview):
        self.path = path
        self.buf = buf
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise ModelFileError(
                self.path,
                f"truncated header: {what} needs {n} bytes at offset {self.pos}, "
                f"file is {len(self.buf)} bytes",
            )

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # Some vocabularies hold byte tokens that are not valid UTF-8 on their own; keep
            # them readable rather than failing the whole file.
            return raw.decode("utf-8", errors="surrogateescape")


class GGUFFile:
    """A parsed GGUF v2/v3 file.

    ``GGUFFile(path)`` memory-maps the file and parses its header. Attributes:

    - ``path``: the path as given (str).
    - ``version``: 2 or 3.
    - ``metadata``: dict key -> value; integers, floats, bools and strings become Python
      values, arrays become lists (of strings, numbers, or nested lists).
    - ``metadata_types``: dict key -> GGUFValueType of the stored value (ARRAY for arrays).
    - ``tensors``: dict name -> GGUFTensor, in file order.
    - ``alignment``, ``data_offset``: data alignment and absolute offset of the data section.

    Raises ModelFileError (naming the file, and the tensor or key when one is at fault) for: a
    wrong magic, an unsupported version, a truncated header, an unknown metadata value type, an
    unknown tensor type, more than 4 dimensions, a first dimension not a multiple of the type's
    block size, a misaligned tensor offset, or tensor data beyond the end of the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        if size < 4:
            raise ModelFileError(self.path, f"file is {size} bytes, too short for a GGUF header")
        self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        r = _Reader(self.path, memoryview(self._mm))
        magic = bytes(r.buf[:4])
        if magic != GGUF_MAGIC:
            raise ModelFileError(self.path, f"not a GGUF file: magic {magic!r}, expected b'GGUF'")
        r.pos = 4
        self.version = r.unpack("<I", "version")
        if self.version not in SUPPORTED_VERSIONS:
            hint = " (a big-endian file?)" if self.version & 0xFFFF == 0 else ""
            raise ModelFileError(
                self.path,
                f"unsupported GGUF version {self.version}{hint}; supported: {SUPPORTED_VERSIONS}",
            )
        n_tensors = r.unpack("<Q", "tensor count")
        n_kv = r.unpack("<Q", "metadata count")

        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, GGUFValueType] = {}
        for i in range(n_kv):
            key = r.string(f"metadata key #{i}")
            vtype = self._value_type(r.unpack("<I", f"type of {key!r}"), key)
            if key in self.metadata:
                raise ModelFileError(self.path, f"duplicate metadata key {key!r}")
            self.metadata[key] = self._value(r, vtype, key)
            self.metadata_types[key] = vtype

        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise ModelFileError(self.path, f"general.alignment {align!r} is not a power of two")
        self.alignment = align

        infos = []
        for i in range(n_tensors):
            name = r.string(f"name of tensor #{i}")
            n_dims = r.unpack("<I", f"dimension count of {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise ModelFileError(
                    self.path, f"{n_dims} dimensions (supported 1..{MAX_DIMS})", tensor=name
                )
            r.need(8 * n_dims, f"dimensions of {name!r}")
            ne = struct.unpack_from(f"<{n_dims}Q", r.buf, r.pos)
            r.pos += 8 * n_dims
            raw_type = r.unpack("<I", f"type of {name!r}")
            offset = r.unpack("<Q", f"offset of {name!r}")
            infos.append((name, ne, raw_type, offset))

        self.data_offset = -(-r.pos // align) * align
        self.tensors: dict[str, GGUFTensor] = {}
        for name, ne, raw_type, offset in infos:
            if name in self.tensors:
                raise ModelFileError(self.path, "duplicate tensor name", tensor=name)
            try:
                gtype = GGMLType(raw_type)
            except ValueError:
                raise ModelFileError(
                    self.path, f"unknown tensor type {raw_type}", tensor=name
                ) from None
            per_block, block_bytes = _BLOCK[gtype]
            if ne[0] % per_block:
                raise ModelFileError(
                    self.path,
                    f"first dimension (K) {ne[0]} is not a multiple of the {gtype.name} block "
                    f"size {per_block}",
                    tensor=name,
                )
            if offset % align:
                raise ModelFileError(
                    self.path, f"data offset {offset} is not a multiple of {align}", tensor=name
                )
            n = int(np.prod(ne, dtype=object))
            nbytes = n // per_block * block_bytes
            start = self.data_offset + offset
            if start + nbytes > size:
                raise ModelFileError(
                    self.path,
                    f"truncated: data [{start}, {start + nbytes}) runs beyond the end of the "
                    f"file ({size} bytes)",
                    tensor=name,
                )
            self.tensors[name] = GGUFTensor(
                name=name,
                ggml_type=gtype,
                shape=tuple(int(x) for x in reversed(ne)),
                ne=tuple(int(x) for x in ne),
                offset=start,
                nbytes=nbytes,
                _file=self,
            )

    def _value_type(self, raw: int, key: str) -> GGUFValueType:
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise ModelFileError(self.path, f"metadata {key!r}: unknown value type {raw}") from None

    def _value(self, r: _Reader, vtype: GGUFValueType, key: str) -> Any:
        if vtype == GGUFValueType.STRING:
            return r.string(f"value of {key!r}")
        if vtype != GGUFValueType.ARRAY:
            return r.unpack(_SCALAR_FMT[vtype], f"value of {key!r}")
        etype = self._value_type(r.unpack("<I", f"element type of {key!r}"), key)
        count = r.unpack("<Q", f"length of {key!r}")
        if etype in _SCALAR_FMT:
            fmt = _SCALAR_FMT[etype]
            n = struct.calcsize(fmt) * count
            r.need(n, f"elements of {key!r}")
            arr = np.frombuffer(r.buf, dtype=np.dtype(fmt), count=count, offset=r.pos)
            r.pos += n
            return arr.tolist()
        # A corrupt count must fail as truncation, not as an attempt to build a huge list:
        # every string or nested array takes at least 8 bytes.
        r.need(8 * count, f"elements of {key!r}")
        if etype == GGUFValueType.STRING:
            return [r.string(f"element of {key!r}") for _ in range(count)]
        return [self._value(r, GGUFValueType.ARRAY, key) for _ in range(count)]

    def __repr__(self) -> str:
        return f"GGUFFile({self.path!r}, v{self.version}, {len(self.tensors)} tensors)"

    def __getitem__(self, name: str) -> GGUFTensor:
        """The tensor ``name``; ModelFileError naming it if absent."""
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelFileError(self.path, "no such tensor in the file", tensor=name) from None

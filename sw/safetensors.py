"""A numpy-only reader for the safetensors format.

Layout (https://github.com/huggingface/safetensors): an unsigned 64-bit little-endian header
length ``n``, ``n`` bytes of UTF-8 JSON mapping tensor names to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets relative to the first byte after the header), an
optional ``"__metadata__"`` entry of strings, then the raw little-endian tensor data.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from sw.errors import ModelFileError

__all__ = ["DTYPES", "load_safetensors", "read_safetensors_header"]

# safetensors dtype name -> numpy dtype. BF16 has no numpy dtype: it is read as uint16 and
# widened to float32 by shifting into the high half (bf16 is the top 16 bits of an fp32).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# JSON headers beyond this are certainly corrupt (real ones are a few hundred kB at most);
# refusing early avoids trying to read gigabytes of tensor data as text.
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Read and validate the JSON header of a safetensors file.

    Returns ``(header, data_start)``: the parsed JSON (including ``"__metadata__"`` if present)
    and the file offset where tensor data begins. Raises ModelFileError for a file shorter than
    8 bytes, a header length beyond the end of the file, or a header that is not a JSON object.
    """
    size = os.path.getsize(path)
    if size < 8:
        raise ModelFileError(path, f"file is {size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > _MAX_HEADER:
            raise ModelFileError(
                path, f"header length {n} runs beyond the end of the file ({size} bytes)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ModelFileError(path, f"header is JSON {type(header).__name__}, not an object")
    return header, 8 + n


def load_safetensors(path: str | os.PathLike, *, bf16_to_f32: bool = True) -> dict[str, np.ndarray]:
    """Load every tensor of a safetensors file.

    Returns a dict name -> numpy array with the file's shape and dtype (F32 -> float32, F16 ->
    float16, I64 -> int64, ...). BF16 tensors become float32 (exact) unless ``bf16_to_f32`` is
    False, in which case they are returned as the raw uint16 bit patterns. Arrays are copies
    owned by the caller (writable, independent of the file), in file order.

    Raises ModelFileError (naming the file and, where relevant, the tensor) for a malformed
    header, an unknown dtype, a bad shape, or data offsets that lie outside the data section or
    do not match shape x dtype size.
    """
    header, start = read_safetensors_header(path)
    size = os.path.getsize(path)
    data_len = size - start
    out: dict[str, np.ndarray] = {}
    # Validate everything before touching the data so that a bad entry late in the header fails
    # fast instead of after reading a large file.
    plan = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ModelFileError(path, "header entry is not an object", tensor=name)
        dtype_name = info.get("dtype")
        if dtype_name not in DTYPES:
            raise ModelFileError(
                path, f"unknown dtype {dtype_name!r} (known: {', '.join(DTYPES)})", tensor=name
            )
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ModelFileError(path, f"shape {shape!r} is not a list of sizes", tensor=name)
        offsets = info.get("data_offsets")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise ModelFileError(path, f"data_offsets {offsets!r} is not [begin, end]", tensor=name)
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise ModelFileError(
                path,
                f"data_offsets [{begin}, {end}] lie outside the data section "
                f"({data_len} bytes after the header)",
                tensor=name,
            )
        dtype = DTYPES[dtype_name]
        want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != want:
            raise ModelFileError(
                path,
                f"data_offsets [{begin}, {end}] hold {end - begin} bytes but shape {shape} of "
                f"{dtype_name} needs {want}",
                tensor=name,
            )
        plan.append((name, dtype_name, dtype, tuple(shape), begin))
    if not plan:
        return out
    mm = None
    if data_len:  # np.memmap refuses an empty mapping
        mm = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(data_len,))
    try:
        for name, dtype_name, dtype, shape, begin in plan:
            count = int(np.prod(shape, dtype=np.int64))
            nbytes = count * dtype.itemsize
            if nbytes == 0:
                arr = np.zeros(shape, dtype=dtype)
            else:
                arr = np.array(mm[begin : begin + nbytes]).view(dtype).reshape(shape)
            if dtype_name == "BF16" and bf16_to_f32:
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            # Native byte order: callers do maths on these and should not meet '>'/'<' dtypes.
            out[name] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    finally:
        del mm
    return out

"""The micro-op ISA and the on-chip word formats (``hw/isa.py``).

- The checked-in encoding dump (``tests/data/isa_encoding.txt``) and ``docs/ISA.md`` match
  ``hw/isa.py``: an encoding change must come with a regenerated dump, an explicit diff.
- ``encode`` / ``decode`` round trip for every op with random values over every field's full
  range (enums: every member), and every field lands at the offset the dump states.
- ``encode`` rejects unknown fields and values out of range, naming the field; ``decode`` of an
  unknown opcode returns the raw int.
- ``pack_words`` / ``unpack_words`` round trip for every buffer word format at three
  ``ChipParams``, cross-checked bit for bit against Amaranth's own ``Layout.const``; values out
  of range are rejected.
- ``check_params`` rejects a buffer deeper than the micro-op field that addresses it (KV:
  deeper than ``kv_base`` reaches).

Random tests print their seed; replay with ``ISA_SEED=<seed>``.
"""

import difflib
import enum as py_enum
import os
import random

import numpy as np
import pytest
from amaranth.hdl import Shape
from amaranth.lib import data

from hw import isa
from hw.isa import (
    ARGS,
    INSTR,
    INSTR_BITS,
    OP_ARGS,
    OP_BITS,
    Buf,
    Op,
    check_params,
    decode,
    encode,
    leaf_fields,
    pack_words,
    unpack_words,
    word_bytes,
    word_layout,
)
from hw.params import ChipParams
from scripts import isa_doc

SEED = int(os.environ.get("ISA_SEED", np.random.SeedSequence().entropy % 2**32))
PARAMS = [ChipParams(), ChipParams(rows=4, cols=8), ChipParams(rows=8, cols=32)]
ARG_OPS = [op for op in Op if OP_ARGS[op] is not None]


@pytest.fixture
def rng():
    print(f"ISA_SEED={SEED}")
    return random.Random(SEED)


def fields_of(op) -> dict:
    """name -> shape of ``op``'s argument struct."""
    return {name: f.shape for name, f in data.Layout.cast(ARGS[OP_ARGS[op]].shape)}


def is_enum(shape) -> bool:
    return isinstance(shape, type) and issubclass(shape, py_enum.Enum)


def random_value(rng, shape, extreme=False):
    if is_enum(shape):
        return rng.choice(list(shape))
    s = Shape.cast(shape)
    lo, hi = (
        (-(1 << (s.width - 1)), (1 << (s.width - 1)) - 1) if s.signed else (0, (1 << s.width) - 1)
    )
    return rng.choice([lo, hi]) if extreme else rng.randint(lo, hi)


# -- (1) the checked-in dump and docs ------------------------------------------------------------


def _stale_message(path, want: str) -> str:
    have = path.read_text() if path.exists() else ""
    diff = "".join(
        difflib.unified_diff(
            have.splitlines(True),
            want.splitlines(True),
            f"{path.name} (checked in)",
            f"{path.name} (hw/isa.py)",
            n=1,
        )
    )
    return diff[:4000]


def test_encoding_dump_matches_isa():
    """tests/data/isa_encoding.txt is the encoding of hw/isa.py."""
    want = isa_doc.render_dump()
    path = isa_doc.DUMP
    if not path.exists() or path.read_text() != want:
        pytest.fail(
            f"hw/isa.py's encoding no longer matches {path.relative_to(isa_doc.ROOT)}: if the "
            f"change is intended, run '.venv/bin/python scripts/isa_doc.py --dump' (or without "
            f"--dump to also refresh docs/ISA.md) and review the diff of the dump; it is the "
            f"encoding change every user of the ISA sees.\n" + _stale_message(path, want)
        )


def test_isa_doc_is_current():
    """docs/ISA.md is generated from the current hw/isa.py."""
    want = isa_doc.render_markdown()
    path = isa_doc.DOC
    if not path.exists() or path.read_text() != want:
        pytest.fail(
            f"{path.relative_to(isa_doc.ROOT)} is stale: run '.venv/bin/python scripts/isa_doc.py' "
            f"and commit it.\n" + _stale_message(path, want)
        )


def test_isa_doc_check_flag(tmp_path, monkeypatch, capsys):
    """``--check`` exits 0 when current, 1 naming the stale file otherwise; ``--dump``
    writes only the dump."""
    assert isa_doc.main(["--check"]) == 0
    monkeypatch.setattr(isa_doc, "DUMP", isa_doc.ROOT / "build" / "isa_test" / "enc.txt")
    monkeypatch.setattr(isa_doc, "DOC", isa_doc.ROOT / "build" / "isa_test" / "ISA.md")
    isa_doc.DUMP.unlink(missing_ok=True)
    isa_doc.DOC.unlink(missing_ok=True)
    assert isa_doc.main(["--check"]) == 1
    assert "enc.txt is stale" in capsys.readouterr().err
    assert isa_doc.main(["--dump"]) == 0
    assert isa_doc.DUMP.read_text() == isa_doc.render_dump() and not isa_doc.DOC.exists()
    assert isa_doc.main([]) == 0 and isa_doc.main(["--check"]) == 0


def test_dump_covers_every_field_and_enum():
    """The dump names every INSTR leaf (with its offset) and every enum member."""
    text = isa_doc.render_dump()
    for path, off, width, sgn, _ in leaf_fields(INSTR):
        assert f"\n{path} {off} {width} {'s' if sgn else 'u'}\n" in text
    for cls in isa_doc.ENUMS:
        for m in cls:
            assert f"\n{m.name} = {int(m.value)}\n" in text


# -- (2) encode / decode ------------------------------------------------------------------------


@pytest.mark.parametrize("op", list(Op), ids=lambda op: op.name)
def test_encode_decode_round_trip(rng, op):
    """Random values over every field's full range, the range ends and all-zero; decode gives
    back exactly what was encoded, and the word fits INSTR_BITS."""
    if OP_ARGS[op] is None:
        word = encode(op)
        assert word == int(op) and decode(word) == (op, {})
        return
    shapes = fields_of(op)
    trials = [{n: random_value(rng, s) for n, s in shapes.items()} for _ in range(100)]
    trials += [
        {n: random_value(rng, s, extreme=True) for n, s in shapes.items()} for _ in range(20)
    ]
    trials.append({})
    for fields in trials:
        word = encode(op, **fields)
        assert 0 <= word < 1 << INSTR_BITS
        assert word & ((1 << OP_BITS) - 1) == op
        got_op, got = decode(word)
        assert got_op is op
        want = {n: fields.get(n, 0) for n in shapes}
        assert got == want, f"{op.name}: {fields}"
        for n, s in shapes.items():
            if is_enum(s):
                assert isinstance(got[n], s), f"{op.name}.{n} decodes as {type(got[n])}"


@pytest.mark.parametrize("op", ARG_OPS, ids=lambda op: op.name)
def test_every_field_at_its_dumped_offset(op):
    """A field set to all ones (and everything else 0) sets exactly the bits the dump and
    the docs give it: ``leaf_fields(INSTR)`` agrees with ``encode``."""
    leaves = {p: (off, w) for p, off, w, _, _ in leaf_fields(INSTR)}
    member = OP_ARGS[op]
    for name, shape in fields_of(op).items():
        off, width = leaves[f"args.{member}.{name}"]
        if is_enum(shape):
            value = max(shape, key=int)
            bits = int(value)
        else:
            bits = (1 << width) - 1
            value = bits
        assert encode(op, **{name: value}) == int(op) | bits << off, f"{op.name}.{name}"


def test_enum_members_fit_their_fields():
    for cls in isa_doc.ENUMS:
        width = Shape.cast(cls).width
        assert all(0 <= int(m) < 1 << width for m in cls), cls.__name__


# -- (3) encode errors, unknown opcodes ---------------------------------------------------------


@pytest.mark.parametrize("op", ARG_OPS, ids=lambda op: op.name)
def test_encode_rejects_bad_fields(op):
    with pytest.raises(ValueError, match=rf"{op.name} has no field 'bogus'"):
        encode(op, bogus=1)
    for name, shape in fields_of(op).items():
        if is_enum(shape):
            bad = max(int(m) for m in shape) + 1
            with pytest.raises(ValueError, match=rf"{op.name}\.{name} = {bad} is not a "):
                encode(op, **{name: bad})
            continue
        width = Shape.cast(shape).width
        for bad in (1 << width, -1):
            with pytest.raises(
                ValueError,
                match=rf"{op.name}\.{name} = {bad} does not fit "
                rf"{width} bits",
            ):
                encode(op, **{name: bad})
        with pytest.raises(ValueError, match=rf"{op.name}\.{name}"):
            encode(op, **{name: 1.5})


def test_encode_rejects_fields_of_no_arg_ops():
    for op in (Op.NOP, Op.HALT):
        with pytest.raises(ValueError, match=f"{op.name} takes no fields, got unit"):
            encode(op, unit=1)
    with pytest.raises(ValueError):
        encode(0x3F)  # not an Op


def test_decode_unknown_opcode_returns_raw_int():
    legal = {int(op) for op in Op}
    for code in range(1 << OP_BITS):
        if code in legal:
            continue
        word = code | 0x1234 << OP_BITS
        got, fields = decode(word)
        assert type(got) is int and got == code and fields == {}
    with pytest.raises(ValueError, match="not 128 bits"):
        decode(1 << INSTR_BITS)
    with pytest.raises(ValueError, match="not 128 bits"):
        decode(-1)


# -- (4) buffer word codec -----------------------------------------------------------------------


def _random_word(rng, layout, n):
    """n random words: {leaf path: int64 array} for pack_words, and the nested values of
    each word for Amaranth's ``Layout.const`` (the independent reference)."""
    flat = {}
    for path, _, width, sgn, count in leaf_fields(layout):
        lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if sgn else (0, (1 << width) - 1)
        v = rng.integers(lo, hi, (n, count), endpoint=True)
        v[0], v[-1] = lo, hi  # both range ends in every leaf
        flat[path] = v if count > 1 else v[:, 0]
    return flat


def _const_value(layout, flat, i):
    """Word ``i`` of ``flat`` as the nested value ``Layout.const`` takes."""

    def build(lay, prefix):
        lay = data.Layout.cast(lay)
        if isinstance(lay, data.ArrayLayout):
            return [int(x) for x in np.atleast_1d(flat[prefix][i])]
        out = {}
        for name, f in lay:
            path = f"{prefix}.{name}" if prefix else name
            try:
                data.Layout.cast(f.shape)
                out[name] = build(f.shape, path)
            except TypeError:
                out[name] = int(flat[path][i])
        return out

    return build(layout, "")


def _members(layout):
    """The layouts to pack: a union's members one at a time (with their path prefix)."""
    layout = data.Layout.cast(layout)
    if isinstance(layout, data.UnionLayout):
        return [(name, f.shape) for name, f in layout]
    return [("", layout)]


@pytest.mark.parametrize("p", PARAMS, ids=lambda p: f"r{p.rows}c{p.cols}")
@pytest.mark.parametrize("buf", list(Buf), ids=lambda b: b.name)
def test_pack_unpack_round_trip(p, buf):
    nprng = np.random.default_rng(SEED)
    layout = word_layout(p, buf)
    nbytes = word_bytes(layout)
    assert nbytes == (data.Layout.cast(layout).size + 7) // 8
    n = 17
    for prefix, member in _members(layout):
        flat = _random_word(nprng, member, n)
        fields = {f"{prefix}.{k}" if prefix else k: v for k, v in flat.items()}
        raw = pack_words(layout, fields)
        assert raw.shape == (n, nbytes) and raw.dtype == np.uint8
        back = unpack_words(layout, raw)
        for path, v in fields.items():
            np.testing.assert_array_equal(back[path], v, err_msg=f"{buf.name} {path}")
        # bit for bit what Amaranth's own layout puts there
        lay = data.Layout.cast(member)
        for i in range(n):
            want = lay.const(_const_value(member, flat, i)).as_bits()
            assert int.from_bytes(raw[i].tobytes(), "little") == want, f"{buf.name} word {i}"
        # unpacking a batch shaped [2, ...] keeps the batch shape
        again = unpack_words(layout, raw[:16].reshape(2, 8, nbytes))
        first = next(iter(fields))
        assert again[first].shape[:2] == (2, 8)


@pytest.mark.parametrize("p", PARAMS, ids=lambda p: f"r{p.rows}c{p.cols}")
def test_pack_rejects_out_of_range(p):
    for buf in Buf:
        layout = word_layout(p, buf)
        for path, _, width, sgn, count in leaf_fields(layout):
            lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if sgn else (0, (1 << width) - 1)
            for bad in (lo - 1, hi + 1):
                v = np.zeros((3, count), np.int64)
                v[1, -1] = bad
                with pytest.raises(
                    ValueError,
                    match=rf"field {path} has values .*outside its "
                    rf"{width}-bit range",
                ):
                    pack_words(layout, {path: v if count > 1 else v[:, 0]})
        with pytest.raises(ValueError, match="unknown field"):
            pack_words(layout, {"nonexistent": [0]})


def test_bus_words_cover_every_word():
    for p in PARAMS:
        for buf in Buf:
            bits = data.Layout.cast(word_layout(p, buf)).size
            n = isa.bus_words_per(p, buf)
            assert (n - 1) * isa.bus_bits(p) < bits <= n * isa.bus_bits(p)


# -- (5) check_params --------------------------------------------------------------------------


@pytest.mark.parametrize("p", PARAMS, ids=lambda p: f"r{p.rows}c{p.cols}")
def test_check_params_accepts_the_configs(p):
    check_params(p)


def test_check_params_kv_beyond_16_bits():
    """KV addresses are ``kv_base + field``: a KV buffer deeper than the 16-bit fields is
    fine up to what ``kv_base`` reaches (``SETPOS``'s ``value``)."""
    p = ChipParams(kv_sram_kib=4096)
    assert isa.buffer_depth(p, Buf.KV) == 1 << 19
    check_params(p)
    assert isa.kv_base_bits(p) == 19 and isa.kv_addr_bits(p) == 20


@pytest.mark.parametrize(
    "kwargs, buf, field",
    [
        ({"act_sram_kib": 4096}, "ACT", "gemm.a_addr"),
        ({"weight_sram_kib": 4096}, "WGT", "gemm.w_addr"),
        ({"kv_sram_kib": 4096, "cols": 4}, "KV", "pos.value"),
        ({"acc_sram_kib": 4096}, "ACC", "gemm.acc_addr"),
    ],
)
def test_check_params_rejects_too_deep_buffers(kwargs, buf, field):
    p = ChipParams(**kwargs)
    with pytest.raises(
        ValueError,
        match=rf"the {buf} buffer has \d+ words, more than the "
        rf"\d+-bit {field} field",
    ):
        check_params(p)


def test_params_from_dict_round_trip_and_errors():
    """A configuration file: the fields of ChipParams, as a JSON object. A round trip gives
    the same chip; an unknown field or a file that is not an object is a clear error."""
    from dataclasses import asdict

    p = ChipParams(cols=4, prm_entries=512, clock_mhz=45)
    d = asdict(p)
    assert ChipParams.from_dict(d) == p
    with pytest.raises(ValueError, match="unknown field.*colz"):
        ChipParams.from_dict({"colz": 4})
    for bad in (None, [4], "cols"):
        with pytest.raises(ValueError, match="a JSON object of fields, got"):
            ChipParams.from_dict(bad)

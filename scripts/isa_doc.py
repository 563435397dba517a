"""Generate the ISA reference (``docs/ISA.md``) and the encoding dump
(``tests/data/isa_encoding.txt``) from ``hw/isa.py``.

    .venv/bin/python scripts/isa_doc.py            # rewrite both files
    .venv/bin/python scripts/isa_doc.py --dump     # rewrite only the encoding dump
    .venv/bin/python scripts/isa_doc.py --check    # exit 1 if either file is stale

Everything is read from ``hw/isa.py`` itself, nothing is written twice: the opcodes, units and
argument structs (``Op``, ``OP_UNIT``, ``OP_ARGS``, ``ARGS``), the field offsets of the 128-bit
micro-op (``hw.isa.leaf_fields(INSTR)``), every enum with the ``#:`` comment of each member,
the docstrings of the module and of the argument structs and word-format functions, and the
on-chip word formats at the default ``ChipParams`` (``word_layout``, ``bus_words_per``,
``buffer_depth``).

``tests/data/isa_encoding.txt`` is the plain-text dump of every layout (micro-op leaves: path,
bit offset, width, signedness; every enum name = value; the word formats). It is checked in,
and ``tests/test_isa.py`` fails when it no longer matches ``hw/isa.py``: an encoding change
then shows up as an explicit diff of that file in review. After changing ``hw/isa.py`` run
this script and review ``git diff tests/data/isa_encoding.txt docs/ISA.md``.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from amaranth.hdl import Shape  # noqa: E402
from amaranth.lib import data  # noqa: E402

from hw import isa  # noqa: E402
from hw.params import ChipParams  # noqa: E402

DOC = ROOT / "docs" / "ISA.md"
DUMP = ROOT / "tests" / "data" / "isa_encoding.txt"
COMMAND = ".venv/bin/python scripts/isa_doc.py"

#: Every enum of the ISA, in the order documented.
ENUMS = [
    isa.Op,
    isa.Unit,
    isa.Buf,
    isa.GridMode,
    isa.WSrc,
    isa.PSrc,
    isa.Dyn,
    isa.KvKind,
    isa.VecFn,
    isa.QuantMode,
    isa.VecBuf,
    isa.PosReg,
    isa.Err,
    isa.Counter,
]
#: Module-level constants documented in a table.
CONSTANTS = ["INSTR_BITS", "OP_BITS", "PRM_STEP_NEVER", "KV_EXP_LANE_BITS", "KV_BASE_BITS"]
#: The functions that define each buffer's word format (for their docstrings).
WORD_FUNCS = {
    isa.Buf.WGT: [isa.wgt_word],
    isa.Buf.ACT: [isa.act_word],
    isa.Buf.ACC: [isa.acc_word],
    isa.Buf.PRM: [isa.prm_word, isa.prm_group_word, isa.prm_out_word],
    isa.Buf.KV: [isa.kv_word],
}
#: The ChipParams fields the word formats and depths depend on (shown with the formats).
PARAM_FIELDS = [
    "rows",
    "cols",
    "offchip_bytes_per_cycle",
    "weight_sram_kib",
    "act_sram_kib",
    "acc_sram_kib",
    "kv_sram_kib",
    "prm_entries",
]


# -- reading hw/isa.py ------------------------------------------------------------------------


def member_comments(obj) -> dict[str, str]:
    """``NAME = value  #: comment`` lines of a class (or ``#: comment`` lines just above a
    module-level ``NAME = ...``): name -> comment."""
    out = {}
    lines = inspect.getsource(obj).splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*([A-Za-z_]\w*)\s*(?::[^=]*)?=[^#]*#:\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
            continue
        m = re.match(r"([A-Za-z_]\w*)\s*(?::[^=]*)?=", line)
        if m and i and lines[i - 1].startswith("#:"):
            out[m.group(1)] = lines[i - 1][2:].strip()
    return out


def enum_shape(cls) -> str:
    try:
        return repr(Shape.cast(cls))
    except TypeError:
        return "int"


def field_type(shape) -> str:
    """``unsigned(16)``, or the enum's name for an enum-shaped field."""
    if isinstance(shape, type) and shape in ENUMS:
        return shape.__name__
    return repr(Shape.cast(shape))


def args_layout(member: str) -> data.StructLayout:
    return data.Layout.cast(isa.ARGS[member].shape)


def args_struct(member: str):
    return isa.ARGS[member].shape


def instr_leaves() -> dict[str, tuple[int, int, bool, int]]:
    """``leaf_fields(INSTR)`` by path: (offset in the micro-op word, width, signed, count)."""
    return {
        path: (off, width, sgn, count)
        for path, off, width, sgn, count in isa.leaf_fields(isa.INSTR)
    }


def op_fields(op) -> list[tuple[str, int, int, str]]:
    """(name, bit offset in the 128-bit word, width, type) of ``op``'s fields, ``op`` first."""
    leaves = instr_leaves()
    off, width, _, _ = leaves["op"]
    rows = [("op", off, width, f"`Op` = `{op.value:#04x}`")]
    member = isa.OP_ARGS[op]
    if member is None:
        return rows
    for name, f in args_layout(member):
        off, width, _, _ = leaves[f"args.{member}.{name}"]
        rows.append((name, off, width, field_type(f.shape)))
    return rows


def unit_of(op) -> str:
    unit = isa.OP_UNIT.get(op)
    return unit.name if unit is not None else "sequencer"


# -- the dump ---------------------------------------------------------------------------------


def render_dump(p: ChipParams | None = None) -> str:
    """The plain-text encoding dump (``tests/data/isa_encoding.txt``)."""
    p = p or ChipParams()
    out = [
        "# Encoding of the micro-op ISA and the on-chip word formats (hw/isa.py).",
        f"# Generated by `{COMMAND} --dump`; do not edit. A diff here is an encoding change.",
        "",
        f"INSTR_BITS = {isa.INSTR_BITS}",
        f"OP_BITS = {isa.OP_BITS}",
        f"INSTR.size = {isa.INSTR.size}",
        *(f"{name} = {getattr(isa, name)}" for name in CONSTANTS[2:]),
        "",
        "[INSTR leaves] path offset width signed",
    ]
    for path, off, width, sgn, count in isa.leaf_fields(isa.INSTR):
        assert count == 1, path
        out.append(f"{path} {off} {width} {'s' if sgn else 'u'}")
    out += ["", "[ops] op args unit"]
    for op in isa.Op:
        out.append(f"{op.name} {isa.OP_ARGS[op] or '-'} {unit_of(op)}")
    for cls in ENUMS:
        out += ["", f"[enum {cls.__name__}] {enum_shape(cls)}"]
        out += [f"{m.name} = {int(m.value)}" for m in cls]
    params = " ".join(f"{k}={getattr(p, k)}" for k in PARAM_FIELDS)
    out += ["", f"# word formats at ChipParams(): {params}", f"bus_bits = {isa.bus_bits(p)}"]
    for buf in isa.Buf:
        layout = data.Layout.cast(isa.word_layout(p, buf))
        out += [
            "",
            f"[word {buf.name}] bits={layout.size} bytes={isa.word_bytes(layout)} "
            f"bus_words={isa.bus_words_per(p, buf)} depth={isa.buffer_depth(p, buf)}",
            "path offset width signed count",
        ]
        for path, off, width, sgn, count in isa.leaf_fields(layout):
            out.append(f"{path or '.'} {off} {width} {'s' if sgn else 'u'} {count}")
    return "\n".join(out) + "\n"


# -- the markdown ------------------------------------------------------------------------------


def _link_target(name: str) -> str | None:
    names = {c.__name__ for c in ENUMS} | {args_struct(m).__name__ for m in isa.ARGS.members}
    return name.lower() if name in names else None


def _inline(text: str) -> str:
    """RST inline markup -> Markdown: ``code``, :class:`X` (a link when X is documented
    here), :func:/:data:/:attr: roles."""

    def role(m):
        name = m.group(2).lstrip("~")
        target = _link_target(name)
        return f"[`{name}`](#{target})" if target else f"`{name}`"

    text = re.sub(r":(class|func|data|attr|meth|mod):`([^`]+)`", role, text)
    return re.sub(r"``(.+?)``", r"`\1`", text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rst_to_md(text: str, heading: str = "###") -> str:
    """The RST subset of ``hw/isa.py``'s docstrings as Markdown: section titles, ``::``
    literal blocks, ``\\`\\`NAME\\`\\`  text`` definition entries, nested bullets."""
    lines = inspect.cleandoc(text).splitlines()
    out: list[str] = []
    col = 0  # the text column of the enclosing definition entry or bullet (0: none)
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() and nxt and set(nxt) <= set("-=~") and len(nxt) >= len(line.strip()):
            out += [f"{heading} {line.strip()}", ""]
            col = 0
            i += 2
            continue
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            base = _indent(line)
            out.append(_md_line(head + ":" if head.strip() else "", col))
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            while block and not block[0].strip():
                block.pop(0)
            cut = min(_indent(b) for b in block if b.strip())
            out += ["", "```text", *(b[cut:] for b in block), "```", ""]
            continue
        m = re.match(r"``(\w+)``\s{2,}", line)
        if m:
            col = m.end()
        elif line.strip() and not _indent(line):
            col = 0
        out.append(_md_line(line, col))
        i += 1
    return "\n".join(out).strip() + "\n"


def _md_line(line: str, col: int) -> str:
    """One line; ``col`` is the text column of the enclosing definition entry (``NAME``
    followed by two spaces, rendered as a bullet whose text starts at column 2)."""
    m = re.match(r"``(\w+)``\s{2,}(.*)", line)
    if m:
        return f"- **`{m.group(1)}`** {_inline(m.group(2))}"
    stripped = line.strip()
    if not stripped:
        return ""
    ind = _indent(line)
    if col and ind >= col:
        return " " * (2 + ind - col) + _inline(stripped)
    return " " * min(ind, 2) + _inline(stripped)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _bits(off: int, width: int) -> str:
    return f"{off}" if width == 1 else f"{off + width - 1}:{off}"


def _type_md(t: str) -> str:
    return f"[`{t}`](#{t.lower()})" if t in {c.__name__ for c in ENUMS} else f"`{t}`"


def render_markdown(p: ChipParams | None = None) -> str:
    """``docs/ISA.md``."""
    p = p or ChipParams()
    op_doc = member_comments(isa.Op)
    const_doc = member_comments(isa)
    out = [
        "# Micro-op ISA",
        "",
        f"Generated from `hw/isa.py` by `{COMMAND}`; do not edit (`--check` tells whether it "
        "is current). The encoding itself is also dumped to `tests/data/isa_encoding.txt`, "
        "which `tests/test_isa.py` compares with `hw/isa.py`.",
        "",
        "Contents: [machine model](#machine-model) · [micro-ops](#micro-ops) · "
        "[enums](#enums) · [constants](#constants) · [word formats](#on-chip-word-formats)",
        "",
    ]
    doc = isa.__doc__
    model = doc[doc.index("Machine model") :] if "Machine model" in doc else doc
    out.append(rst_to_md(model, heading="##"))

    # -- micro-ops
    out += [
        "## Micro-ops",
        "",
        f"A micro-op is {isa.INSTR_BITS} bits: the {isa.OP_BITS}-bit opcode in bits "
        f"{_bits(0, isa.OP_BITS)}, its arguments from bit {isa.OP_BITS} (one struct of the "
        f"`ARGS` union; bits above the struct are 0). Bit numbers are in the {isa.INSTR_BITS}"
        "-bit word (bit 0 = least significant). Fields not given to `hw.isa.encode` are 0.",
        "",
    ]
    out += _table(
        ["op", "code", "unit", "arguments", "does"],
        [
            [
                f"[`{op.name}`](#{op.name.lower()})",
                f"`{op.value:#04x}`",
                unit_of(op),
                f"`{isa.OP_ARGS[op]}`" if isa.OP_ARGS[op] else "-",
                _inline(op_doc.get(op.name, "")),
            ]
            for op in isa.Op
        ],
    )
    out.append("")
    documented_structs = set()
    for op in isa.Op:
        member = isa.OP_ARGS[op]
        who = "the sequencer" if op not in isa.OP_UNIT else f"unit `{unit_of(op)}`"
        does = op_doc.get(op.name, "")
        out += [
            f"### {op.name}",
            "",
            f"Opcode `{op.value:#04x}`, executed by {who}"
            + (f": {_inline(does)}." if does else "."),
            "",
        ]
        if member is not None:
            struct = args_struct(member)
            layout = args_layout(member)
            name = (
                f"[`{struct.__name__}`](#{struct.__name__.lower()})"
                if struct.__doc__
                else f"`{struct.__name__}`"
            )
            out += [f"Arguments: {name} (`ARGS.{member}`, {layout.size} bits).", ""]
        rows = [
            [f"`{name}`", _bits(off, width), off, width, _type_md(t) if name != "op" else t]
            for name, off, width, t in op_fields(op)
        ]
        end = isa.OP_BITS + (args_layout(member).size if member else 0)
        if end < isa.INSTR_BITS:
            rows.append(
                ["(reserved, 0)", _bits(end, isa.INSTR_BITS - end), end, isa.INSTR_BITS - end, ""]
            )
        out += _table(["field", "bits", "offset", "width", "type"], rows)
        out.append("")
        if member is not None and member not in documented_structs:
            documented_structs.add(member)
            struct = args_struct(member)
            if struct.__doc__:
                out += [f"#### {struct.__name__}", "", rst_to_md(struct.__doc__, "#####")]

    # -- enums
    out += ["## Enums", ""]
    for cls in ENUMS:
        comments = member_comments(cls)
        out += [f"### {cls.__name__}", "", f"Shape `{enum_shape(cls)}`.", ""]
        if cls.__doc__ and cls.__doc__ is not getattr(cls.__mro__[1], "__doc__", None):
            out.append(rst_to_md(cls.__doc__, heading="####"))
        hexa = cls is isa.Op
        out += _table(
            ["name", "value", "meaning"],
            [
                [
                    f"`{m.name}`",
                    f"`{int(m.value):#04x}`" if hexa else int(m.value),
                    _inline(comments.get(m.name, "")),
                ]
                for m in cls
            ],
        )
        out.append("")

    # -- constants
    out += ["## Constants", ""]
    out += _table(
        ["name", "value", "meaning"],
        [[f"`{n}`", getattr(isa, n), _inline(const_doc.get(n, ""))] for n in CONSTANTS],
    )
    out.append("")

    # -- word formats
    params = ", ".join(f"`{k}={getattr(p, k)}`" for k in PARAM_FIELDS)
    out += [
        "## On-chip word formats",
        "",
        f"At the default `ChipParams()` ({params}); they scale with `rows` and `cols`. "
        f"An off-chip bus word is {isa.bus_bits(p)} bits (`bus_bits`); an on-chip word "
        "occupies `bus_words_per` consecutive bus words, little-endian, and a memory-image "
        "word `word_bytes` bytes (`hw.isa.pack_words` / `unpack_words`). Offsets are bit "
        "offsets in the word; an array leaf has `count` elements `width` bits apart.",
        "",
    ]
    out += _table(
        ["buffer", "word bits", "bytes", "bus words", "depth (words)"],
        [
            [
                f"`{b.name}`",
                data.Layout.cast(isa.word_layout(p, b)).size,
                isa.word_bytes(isa.word_layout(p, b)),
                isa.bus_words_per(p, b),
                isa.buffer_depth(p, b),
            ]
            for b in isa.Buf
        ],
    )
    out.append("")
    for buf in isa.Buf:
        funcs = WORD_FUNCS[buf]
        layout = data.Layout.cast(isa.word_layout(p, buf))
        out += [f"### {buf.name} word (`{funcs[0].__name__}`)", ""]
        for f in funcs:
            if f.__doc__:
                out.append(rst_to_md(f.__doc__))
        if isinstance(layout, data.UnionLayout):
            out += [
                "A union: every member starts at bit 0 (`"
                + "`, `".join(name for name, _ in layout)
                + "`).",
                "",
            ]
        out += _table(
            ["field", "offset", "width", "signed", "count"],
            [
                [f"`{path or '(word)'}`", off, width, "yes" if sgn else "no", count]
                for path, off, width, sgn, count in isa.leaf_fields(layout)
            ],
        )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# -- command line ------------------------------------------------------------------------------


def _stale(path: Path, text: str) -> bool:
    return not path.exists() or path.read_text() != text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.replace("``", ""),
        epilog="After changing hw/isa.py: run this script, then review "
        "'git diff tests/data/isa_encoding.txt docs/ISA.md' and commit both files.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help=f"write nothing; exit 1 naming the stale file(s) if "
        f"{DOC.relative_to(ROOT)} or {DUMP.relative_to(ROOT)} does not match "
        "hw/isa.py (for CI)",
    )
    mode.add_argument(
        "--dump",
        action="store_true",
        help=f"rewrite only the encoding dump {DUMP.relative_to(ROOT)} "
        "(default: rewrite both files)",
    )
    args = parser.parse_args(argv)

    files = {DUMP: render_dump()}
    if not args.dump:
        files[DOC] = render_markdown()
    if args.check:
        stale = [path for path, text in files.items() if _stale(path, text)]
        for path in stale:
            print(
                f"{path.relative_to(ROOT)} is stale: it does not match hw/isa.py; run "
                f"'{COMMAND}' and review the diff",
                file=sys.stderr,
            )
        if not stale:
            print("docs/ISA.md and tests/data/isa_encoding.txt match hw/isa.py")
        return 1 if stale else 0
    for path, text in files.items():
        if _stale(path, text):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
        else:
            print(f"{path.relative_to(ROOT)} unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())

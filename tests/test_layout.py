"""The project's shape: the user's layout, who may import whom, the two README commands.

- ``hw/`` (the hardware and its one configuration) imports nothing of ``sim/`` or ``sw/``;
- ``sim/`` (golden model, simulators) may import ``hw/``, never the compiler ``sw/``;
- ``sw/`` (model import, compiler, runtime) takes only ``hw.isa`` and ``hw.params`` from
  ``hw/`` (DESIGN.md section 2, STYLE.md), and nothing from ``sim/``: the compiler emits
  what the chip runs, it never borrows the golden model;
- ``.ci/run`` runs exactly the README's install and test commands;
- no build products or weights are tracked by git.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = ["pyproject.toml", "Makefile", "README.md", "hw", "sim", "sw", "tests", "scripts",
          ".ci/run"]
ALLOWED = {"hw": {"hw"}, "sim": {"hw", "sim"}, "sw": {"hw", "sw"}}
PROJECT = {"hw", "sim", "sw", "scripts", "tests"}
SW_FROM_HW = {"hw.isa", "hw.params"}


def test_layout_exists():
    missing = [p for p in LAYOUT if not (ROOT / p).exists()]
    assert not missing, f"missing from the project layout: {missing}"


def _imports(path: Path):
    """(line, top-level package, full module) of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0], a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import stays inside its own package
                pkg = path.relative_to(ROOT).parts[0]
                yield node.lineno, pkg, pkg
            elif node.module:
                mods = [node.module] if node.module != "hw" else [
                    f"hw.{a.name}" for a in node.names]
                for mod in mods:
                    yield node.lineno, node.module.split(".")[0], mod


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_direction(package):
    bad = []
    for f in sorted((ROOT / package).rglob("*.py")):
        for line, top, mod in _imports(f):
            if top in PROJECT and top not in ALLOWED[package]:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {top}")
            elif package == "sw" and top == "hw" and ".".join(mod.split(".")[:2]) not in SW_FROM_HW:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod} (sw takes only "
                           f"{sorted(SW_FROM_HW)} from hw)")
    assert not bad, f"{package}/ may import only {sorted(ALLOWED[package])}:\n" + "\n".join(bad)


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^\s*(make \w+)\s*$", text, re.M)


def test_ci_runs_the_readme_commands():
    cmds = _readme_commands()
    assert cmds[:2] == ["make install", "make test"], f"README's first commands: {cmds[:2]}"
    ci = (ROOT / ".ci" / "run").read_text()
    ci_cmds = re.findall(r"^(?:time\s+)?(make \w+)\s*$", ci, re.M)
    assert ci_cmds == ["make install", "make test"], f".ci/run runs {ci_cmds}"


def test_no_build_products_tracked():
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    bad_ext = (".v", ".sv", ".vcd", ".fst", ".bit", ".svf", ".json.gz", ".gguf", ".safetensors",
               ".bin", ".npy", ".npz", ".so", ".o")
    # Hand-written simulation models (sim/verilog/) are sources; generated Verilog is not.
    sources = ("sim/verilog/",)
    bad = [f for f in files if (f.endswith(bad_ext) and not f.startswith(sources))
           or f.startswith(("build/", "sim_build/"))]
    big = [f for f in files if (ROOT / f).is_file() and (ROOT / f).stat().st_size > 512 * 1024]
    assert not bad and not big, f"tracked build products {bad} / files over 512 KiB {big}"


def test_chip_help():
    out = subprocess.run([sys.executable, "-m", "scripts.chip", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "generate" in out.stdout and "embed" in out.stdout

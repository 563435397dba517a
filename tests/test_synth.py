"""The FPGA synthesis flow: the board tops (hw/board_top.py) and scripts/synth.py.

Default tests only elaborate (``--elaborate-only``: the platform's build plan, no toolchain) and
simulate the board tops briefly; the full iCEBreaker build (Yosys + nextpnr, ~10 s) is
slow-marked. The ULX3S builds (grid ~10 min, chip ~17 min) are benchmarks, run by hand:
``make synth``, ``make synth-chip``.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from amaranth.sim import Simulator

from hw.board_top import (
    BOARDS,
    CHIP_85F,
    CHIP_LED_SIGNALS,
    LED_SIGNALS,
    LINK_BAUD,
    PROGRAM_OPS,
    ChipBoardTop,
    GridBoardTop,
    Lfsr,
    _program_tables,
    ecp5_pll_dividers,
)
from hw.isa import INSTR_BITS, OP_BITS, Counter, Err
from hw.link import link_divisor
from hw.params import ChipParams
from scripts import synth

# Builds of the tests have their own folders: a concurrent `make synth` keeps its own.
TEST_DIR = Path("build/synth/test")


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_elaborates_for_board(board):
    """Each board's default grid elaborates into a build plan: every PE, pins, PLL if needed."""
    build_dir = TEST_DIR / board
    assert synth.main(["--board", board, "--build-dir", str(build_dir), "--elaborate-only"]) == 0
    params = BOARDS[board].params
    build_dir = synth.ROOT / build_dir
    assert synth.pe_count(build_dir) == params.rows * params.cols // 2
    constraints = (build_dir / "grid_top.lpf").read_text() if BOARDS[board].family == "ecp5" \
        else (build_dir / "grid_top.pcf").read_text()
    assert "led" in constraints  # the signatures reach pins, so nothing is optimized away
    rtlil = (build_dir / "grid_top.il").read_text()
    needs_pll = abs(BOARDS[board].platform().default_clk_frequency / 1e6 - params.clock_mhz) > 0
    assert ("EHXPLLL" in rtlil) == needs_pll


def test_elaborate_overrides_grid_size():
    build_dir = TEST_DIR / "ulx3s-85f-4x8"
    assert synth.main(["--board", "ulx3s-85f", "--rows", "4", "--cols", "8",
                       "--build-dir", str(build_dir), "--elaborate-only"]) == 0
    assert synth.pe_count(synth.ROOT / build_dir) == 4 * 4


def test_pnr_target_over_constrains_the_pll_clock():
    """--target-mhz: the PLL still makes the chip's clock, and the constraints file gains a
    clock constraint at the target on the PLL's output net (the one nextpnr would derive);
    without a PLL there is nothing to over-constrain and the script says so."""
    build_dir = TEST_DIR / "ulx3s-85f-pnr"
    assert synth.main(["--board", "ulx3s-85f", "--rows", "4", "--cols", "8", "--target-mhz",
                       "150", "--build-dir", str(build_dir), "--elaborate-only"]) == 0
    build_dir = synth.ROOT / build_dir
    lpf = (build_dir / "grid_top.lpf").read_text()
    nets = re.findall(r'^FREQUENCY NET "([^"]+)" ([\d.]+) HZ;', lpf, re.MULTILINE)
    assert [float(f) for _, f in nets] == [150e6], lpf
    params = BOARDS["ulx3s-85f"].params
    div = ecp5_pll_dividers(25, params.clock_mhz)
    rtlil = (build_dir / "grid_top.il").read_text()
    assert f'parameter \\CLKFB_DIV {div["CLKFB_DIV"]}' in rtlil  # the PLL is unchanged
    # the constrained net is the PLL's CLKOP, or an alias of it
    clkop = re.search(r"cell \\EHXPLLL .*?connect \\CLKOP \\(\S+)\n", rtlil, re.DOTALL)[1]
    aliases = {clkop} | {a for a, b in re.findall(r"^\s*connect \\(\S+) \\(\S+) \[0\]$",
                                                   rtlil, re.MULTILINE) if b == clkop}
    assert nets[0][0] in aliases, (nets, aliases)
    with pytest.raises(SystemExit):  # the ECPIX-5 grid runs on its 100 MHz board clock
        synth.main(["--board", "ecpix5-85", "--target-mhz", "150", "--build-dir",
                    str(TEST_DIR / "ecpix5-pnr"), "--elaborate-only"])


def test_pnr_opts_takes_a_lone_option():
    """``--pnr-opts --no-tmdriv`` (one option, no space: argparse alone refuses it as a value)
    and ``--pnr-opts '--placer static'`` both land in the build script's nextpnr line."""
    for opts in ("--no-tmdriv", "--placer static"):
        build_dir = TEST_DIR / "ulx3s-85f-pnropts"
        assert synth.main(["--board", "ulx3s-85f", "--rows", "4", "--cols", "8", "--pnr-opts",
                           opts, "--build-dir", str(build_dir), "--elaborate-only"]) == 0
        sh = (synth.ROOT / build_dir / "build_grid_top.sh").read_text()
        line = next(ln for ln in sh.splitlines() if "NEXTPNR_ECP5" in ln and "--json" in ln)
        assert f" {opts} " in line + " ", line


def test_elaborates_chip_for_ulx3s():
    """The whole chip's board top elaborates for the ULX3S-85F: the grid's PEs, the buffers as
    memories, the vector unit, the PLL, the LED pins."""
    build_dir = TEST_DIR / "ulx3s-85f-chip"
    assert synth.main(["--board", "ulx3s-85f", "--design", "chip", "--build-dir",
                       str(build_dir), "--elaborate-only"]) == 0
    build_dir = synth.ROOT / build_dir
    params = BOARDS["ulx3s-85f"].chip_params
    assert synth.pe_count(build_dir, "chip_top") == params.rows * params.cols // 2
    assert "led" in (build_dir / "chip_top.lpf").read_text()
    rtlil = (build_dir / "chip_top.il").read_text()
    assert "EHXPLLL" in rtlil
    # WGT, ACT, ACC, PRM, KV, the micro-op memory, the scaler's accumulator (two halves) and
    # the V-scales at least
    memories = re.findall(r"^\s*memory width \d+ size \d+ \\(\S+)$", rtlil, re.MULTILINE)
    for name in ("mem_wgt", "mem_act", "mem_acc", "mem_prm", "mem_kv", "uop", "ymem_lo", "ymem_hi",
                 "vsc"):
        assert name in memories, memories


def test_vector_design():
    """``--design vector`` elaborates the parts it is asked for (no tool); an unknown part is
    a usage error naming the known ones; the chip without its vector unit builds in its own
    folder."""
    assert synth.main(["--design", "vector", "--parts", "add,fold", "--elaborate-only"]) == 0
    with pytest.raises(SystemExit):
        synth.main(["--design", "vector", "--parts", "adder", "--elaborate-only"])
    assert synth.build_dir_for("ulx3s-85f", 16, 8, "chip", vector=False).name == \
        "ulx3s-85f-chip-novec-16x8"


# The UART pins of each board's link top (the board files; the OrangeCrab's Feather 0 / 1).
UART_PINS = {"ulx3s-85f": ("M1", "L4"), "orangecrab-85f": ("N17", "M18"),
             "ecpix5-85": ("R26", "R24"), "icebreaker": ("6", "9")}


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_link_top_elaborates(board):
    """Every board's bitstream top (the chip with its UART host link, ``make bitstream``)
    elaborates into a build plan: the link, the UART on the board's pins, the PLL where the
    board clock differs from the chip's. The ULX3S and iCEBreaker with their own chips; the
    OrangeCrab and ECPIX-5 share the ULX3S's CHIP_85F, so they elaborate a small chip (their
    pins, clock and UART resource are what differs), keeping the default suite fast."""
    spec = BOARDS[board]
    build_dir = TEST_DIR / f"{board}-link"
    if board in ("ulx3s-85f", "icebreaker"):
        assert synth.main(["--board", board, "--design", "link", "--build-dir", str(build_dir),
                           "--elaborate-only"]) == 0
        params = spec.link_params
    else:
        params = replace(SMALL_CHIP, clock_mhz=spec.link_params.clock_mhz)
        synth.prepare(board, params, synth.ROOT / build_dir, 1, "link", vector=False)
    build_dir = synth.ROOT / build_dir
    assert synth.pe_count(build_dir, "link_top") == params.rows * params.cols // 2
    ext = "lpf" if spec.family == "ecp5" else "pcf"
    constraints = (build_dir / f"link_top.{ext}").read_text()
    rx, tx = UART_PINS[board]
    if spec.family == "ecp5":
        assert f'"uart_0__rx__io" SITE "{rx}"' in constraints
        assert f'"uart_0__tx__io" SITE "{tx}"' in constraints
    else:
        assert f"uart_0__rx__io {rx}\n" in constraints and f"uart_0__tx__io {tx}\n" in constraints
    rtlil = (build_dir / "link_top.il").read_text()
    assert re.search(r"^module \\\S*\.link\.uart_rx$", rtlil, re.MULTILINE)
    needs_pll = abs(spec.platform().default_clk_frequency / 1e6 - params.clock_mhz) > 0
    assert ("EHXPLLL" in rtlil) == needs_pll
    # the ECP5 link tops trip Yosys 0.70's abc9: their plan maps LUTs with classic ABC
    if spec.family == "ecp5":
        assert "abc -lut 4" in (build_dir / "link_top.ys").read_text()


def test_chip_design_config():
    """Every 85F board builds the same chip with a 16-row grid (a 16x16 one does not fit)
    and smaller buffers, at a clock its PLL makes and the UART link divides into its baud
    rate; the iCEBreaker has no chip configuration for the LFSR top, and asking
    for one is a usage error (its link top has CHIP_UP5K)."""
    for board in ("ulx3s-85f", "orangecrab-85f", "ecpix5-85"):
        spec = BOARDS[board]
        # one chip on the three (only the clock may differ), with a 16-row grid
        assert replace(spec.chip_params, clock_mhz=CHIP_85F.clock_mhz) == CHIP_85F
        assert spec.link_params == spec.chip_params and spec.link_params.rows == 16
        # its clock: a PLL setting from the board clock (or the board clock itself) and a
        # whole UART divisor for the link's baud rate
        f_in = spec.platform().default_clk_frequency / 1e6
        if f_in != spec.link_params.clock_mhz:
            assert ecp5_pll_dividers(f_in, spec.link_params.clock_mhz)["f_out_mhz"] == \
                pytest.approx(spec.link_params.clock_mhz, rel=1e-3)
        link_divisor(spec.link_params.clock_mhz * 1e6, LINK_BAUD)
    assert synth.build_dir_for("ulx3s-85f", 16, 4, "chip").name == "ulx3s-85f-chip-16x4"
    assert synth.build_dir_for("ulx3s-85f", 16, 16).name == "ulx3s-85f-16x16"
    with pytest.raises(SystemExit):
        synth.main(["--board", "icebreaker", "--design", "chip", "--elaborate-only"])


def test_program_tables():
    """Shaped micro-op words: the opcode is set, never random; set and random bits never
    overlap; NOP/HALT have no random bits below INSTR_BITS."""
    masks, sets = _program_tables(128)
    for op, mask, bits in zip(PROGRAM_OPS, masks, sets, strict=True):
        assert bits & ((1 << OP_BITS) - 1) == op
        assert mask & ((1 << OP_BITS) - 1) == 0 and mask & bits == 0
        if op.name in ("NOP", "HALT"):
            assert mask == 0
    wide, _ = _program_tables(256)
    assert all(w >> INSTR_BITS == (1 << 128) - 1 for w in wide)


# The chip's board top in simulation: small buffers and a 4x8 grid keep it fast.
SMALL_CHIP = ChipParams(rows=4, cols=8, weight_sram_kib=2, act_sram_kib=2, acc_sram_kib=2,
                        kv_sram_kib=2, prm_entries=32, acc_entries=32, uop_depth=256,
                        offchip_kib=64)


def test_chip_board_top_runs():
    """In simulation (no PLL, no pins) the LFSR host starts run after run, the bus responder
    answers every read address once and in order with back-pressure on all three streams,
    programs really run (micro-ops issue, the grid takes rows, some runs end without error,
    STOREs write) and the signatures change."""
    top = ChipBoardTop(SMALL_CHIP, "ulx3s-85f")
    chip, bus = top.chip, top.chip.bus
    seen = {"addr": 0, "rsp": 0, "wr": 0, "addr_stall": 0, "rsp_stall": 0, "wr_stall": 0,
            "max_pending": 0, "ok": 0, "runs": 0, "uops": 0, "rows": 0,
            "wr_misr": set(), "rd_misr": set(), "status_misr": set()}

    async def bench(ctx):
        was_done = 0
        for _ in range(3000):
            await ctx.tick()
            seen["addr"] += ctx.get(bus.rd_addr.valid & bus.rd_addr.ready)
            seen["rsp"] += ctx.get(bus.rd_data.valid & bus.rd_data.ready)
            seen["wr"] += ctx.get(bus.wr.valid & bus.wr.ready)
            seen["addr_stall"] += ctx.get(bus.rd_addr.valid & ~bus.rd_addr.ready)
            seen["rsp_stall"] += ctx.get(bus.rd_data.valid & ~bus.rd_data.ready)
            seen["wr_stall"] += ctx.get(bus.wr.valid & ~bus.wr.ready)
            # a response never precedes its address
            assert seen["rsp"] <= seen["addr"]
            seen["max_pending"] = max(seen["max_pending"], seen["addr"] - seen["rsp"])
            done = ctx.get(chip.done)
            if done and not was_done:
                seen["runs"] += 1
                seen["ok"] += ctx.get(chip.error) == Err.NONE
                counters = ctx.get(chip.counters)
                seen["uops"] += counters[Counter.UOPS]
                seen["rows"] += counters[Counter.GRID_ROWS]
            was_done = done
            for name in ("wr_misr", "rd_misr", "status_misr"):
                seen[name].add(ctx.get(getattr(top, name)))
        seen["starts"] = ctx.get(top.starts)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen["starts"] >= 20 and seen["runs"] >= seen["starts"] - 1, seen
    assert seen["addr"] > 300 and seen["rsp"] >= seen["addr"] - seen["max_pending"], seen
    assert seen["max_pending"] <= ChipBoardTop.RD_FIFO_DEPTH + 1, seen
    assert seen["wr"] > 10, seen
    assert seen["addr_stall"] > 0 and seen["wr_stall"] > 0, seen
    assert seen["ok"] >= 3 and seen["uops"] > 50 and seen["rows"] > 0, seen
    assert len(seen["wr_misr"]) > 10 and len(seen["rd_misr"]) > 100, seen
    assert len(seen["status_misr"]) > 1000, seen
    assert len(top.leds) == len(CHIP_LED_SIGNALS)


def test_pll_dividers():
    assert ecp5_pll_dividers(25, 100) == {"CLKI_DIV": 1, "CLKFB_DIV": 4, "CLKOP_DIV": 6,
                                          "CLKOP_CPHASE": 2, "f_out_mhz": 100.0}
    d = ecp5_pll_dividers(48, 100)
    assert d["f_out_mhz"] == pytest.approx(100)
    assert 400 <= d["f_out_mhz"] * d["CLKOP_DIV"] <= 800
    with pytest.raises(ValueError, match="no ECP5 PLL setting"):
        ecp5_pll_dividers(25, 0.5)


def test_board_top_moves_data():
    """In simulation (no PLL, no pins) all three streams stall and flow, rows come out and the
    output signature changes: the LFSR drive really exercises the grid."""
    top = GridBoardTop(ChipParams(rows=2, cols=4), "icebreaker")
    arr = top.array
    seen = {"w": 0, "a": 0, "o": 0, "a_stall": 0, "o_stall": 0, "misr": set()}

    async def bench(ctx):
        for _ in range(600):
            await ctx.tick()
            seen["w"] += ctx.get(arr.w_row.valid & arr.w_row.ready)
            seen["a"] += ctx.get(arr.a_row.valid & arr.a_row.ready)
            seen["o"] += ctx.get(arr.o_row.valid & arr.o_row.ready)
            seen["a_stall"] += ctx.get(arr.a_row.valid & ~arr.a_row.ready)
            seen["o_stall"] += ctx.get(arr.o_row.valid & ~arr.o_row.ready)
            seen["misr"].add(ctx.get(top.misr))

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen["w"] > 20 and seen["a"] > 20 and seen["o"] > 20, seen
    assert seen["a_stall"] > 0 and seen["o_stall"] > 0, seen
    assert len(seen["misr"]) > 20
    assert len(top.leds) == len(LED_SIGNALS)


def test_lfsr_period_is_long():
    lfsr = Lfsr(1)
    values = []

    async def bench(ctx):
        for _ in range(5000):
            values.append(ctx.get(lfsr.value))
            await ctx.tick()

    sim = Simulator(lfsr)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(set(values)) == len(values) and 0 not in values


def test_parse_nextpnr_log(tmp_path):
    log = tmp_path / "x.tim"
    log.write_text("\n".join([
        "Info: Device utilisation:",
        "Info: \t          MULT18X18D:     128/    156    82%",
        "Info: \t        TRELLIS_COMB:   40000/  83640    47%",
        "Info: ",
        "Info: Max frequency for clock 'clk': 90.00 MHz (FAIL at 100.00 MHz)",
        "Info: Critical path report for clock 'clk' (posedge -> posedge):",
        "Info:       type curr  total name",
        "Info:   clk-to-q  0.52  0.52 Source a.Q",
        "Info: 5.81 ns logic, 5.53 ns routing",
        "Warning: Max frequency for clock 'clk': 88.13 MHz (FAIL at 100.00 MHz)",
    ]))
    got = synth.parse_nextpnr_log(log)
    assert got["fmax"] == {"clk": {"achieved": 88.13, "constraint": 100.0}}
    assert got["utilization"]["MULT18X18D"] == {"used": 128, "available": 156}
    assert got["critical_path_text"][0][-1].endswith("ns routing")


@pytest.mark.slow
def test_icebreaker_full_build(capsys):
    """The whole flow on the smallest board: Yosys, nextpnr-ice40, icepack, then the report."""
    build_dir = TEST_DIR / "icebreaker-full"
    assert synth.main(["--board", "icebreaker", "--build-dir", str(build_dir), "--seed", "1"]) == 0
    params = BOARDS["icebreaker"].params
    build_dir = synth.ROOT / build_dir
    report = json.loads((build_dir / "synth_report.json").read_text())
    assert report["fmax_mhz"] > params.clock_mhz
    res = report["resources"]
    assert res["DSP"]["used"] == params.rows * params.cols // 2  # one SB_MAC16 per PE
    assert 0 < res["LUT4"]["used"] <= res["LUT4"]["available"]
    assert res["FF"]["used"] > 0 and res["EBR"]["used"] >= 0
    assert (build_dir / "grid_top.bin").exists()
    out = capsys.readouterr().out
    assert re.search(r"Fmax [\d.]+ MHz vs target 12 MHz", out)


def test_critical_path_display():
    """Long Yosys cell names are cut in the middle; the project's source lines on a path are
    counted in path order."""
    line = "  logic 0.45 4.29 Source " + "x" * 300 + ".F"
    assert len(synth._short_names(line)) < 120
    block = [
        "Info: Critical path report for clock 'clk' (posedge -> posedge):",
        f"Info:      {synth.ROOT}/hw/gemm.py:195",
        f"Info:      {synth.ROOT}/hw/gemm.py:93",
        f"Info:      {synth.ROOT}/hw/gemm.py:93",
        "Info:      /share/lattice/cells_map_trellis.v:133.22-133.24",
        "Info: 1.00 ns logic, 2.00 ns routing",
    ]
    assert synth._path_sources(block) == [("hw/gemm.py:195", 1), ("hw/gemm.py:93", 2)]


def test_yosys_only_counts_ecp5_luts(tmp_path, monkeypatch, capsys):
    # --yosys-only reads Yosys' own cells: LUT4 cells plus two per CCU2C (there is no
    # TRELLIS_COMB before nextpnr packs), FF, DSP, EBR
    import subprocess
    from types import SimpleNamespace

    name = "link_top"
    rpt = tmp_path / f"{name}.rpt"

    def fake_run(cmd, cwd, **kw):
        rpt.write_text(f"=== {name} ===\n\n   Number of cells: 9\n     1000   LUT4\n"
                       "       30   CCU2C\n      700   TRELLIS_FF\n        3   MULT18X18D\n"
                       "        5   DP16KD\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(synth.subprocess, "run", fake_run)
    monkeypatch.setattr(synth, "_sta_summary", lambda *a, **k: None)
    spec = SimpleNamespace(family="ecp5", name="ulx3s-85f")
    assert synth._yosys_only(spec, ChipParams(), tmp_path, {}, name) == 0
    out = capsys.readouterr().out
    assert re.search(r"LUT4\s+1060\s+\(LUT4 \+ 2 x CCU2C\)", out), out
    assert re.search(r"FF\s+700\s", out) and re.search(r"DSP\s+3\s", out)
    assert re.search(r"EBR\s+5\s", out)


def test_terminating_synth_stops_its_tools(tmp_path):
    """SIGTERM to scripts/synth.py (``kill``, a job runner's timeout) while a tool runs stops
    the tool too: an orphaned nextpnr would hold a core for an hour."""
    (tmp_path / "build_x.sh").write_text("sleep 300 &\necho $! > tool.pid\nwait\n")
    code = (
        "import os, sys, types\n"
        "from pathlib import Path\n"
        f"sys.path.insert(0, {str(synth.ROOT)!r})\n"
        "from scripts import synth\n"
        f"synth.run_tools(types.SimpleNamespace(script='build_x'), Path({str(tmp_path)!r}),"
        " dict(os.environ), 'x')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "tool.pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    tool = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "stopped" in err, err

    def alive(pid):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        except FileNotFoundError:
            return False
        return state != "Z"

    deadline = time.monotonic() + 10
    while alive(tool) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(tool):
        os.kill(tool, signal.SIGKILL)
        pytest.fail(f"the tool (pid {tool}) outlived synth.py")

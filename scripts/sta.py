"""Fast static timing estimate over a Yosys ``synth_ecp5`` JSON netlist: every long path, ranked
and grouped by where it is in the design (a nextpnr run prints only one).

    .venv/bin/python scripts/sta.py build/synth/ulx3s-85f-chip-16x8/chip_top.json
        [--top chip_top] [--clock-mhz 100] [--paths 30] [--json OUT] [--area-depth 3]

It builds the timing graph of the flattened netlist's ECP5 cells, computes the latest arrival
of every net bit in topological order (one pass, plain dicts), and reports:

* the estimated Fmax (worst register-to-register path; I/O paths are left out, as nextpnr's
  per-clock Fmax leaves them out);
* the endpoints failing at ``--clock-mhz``, grouped by (source group, destination group),
  where a group is the register's public net name with bit indices and ``$N`` suffixes
  stripped (``chip.gemm.unit.scaler.s6_r[3]`` -> ``chip.gemm.unit.scaler.s6_r``); block RAM
  and multiplier groups are their cell names without the ``.row.col`` tiling suffix. Each
  endpoint counts once, under the source of its worst path;
* for each group: worst delay, failing endpoints, the worst path's depth (LUT4 levels, LUT5+
  muxes, carry cells (CCU2C, 2 bits each), multipliers, RAM reads), and for the top
  ``--paths`` groups the worst path as named nets plus the Python source lines (``src``
  attributes Amaranth writes: ``hw/...py:N``) the path goes through;
* the largest nets driven by logic rather than a global buffer (``DCCA``, PLL), with how many
  of their sinks are flop resets (``LSR``) and enables (``CE``): a reset or enable built by a
  LUT and fanned out to thousands of flops congests the router across the die;
* a per-hierarchy area summary (LUT4, CCU2C, FF, LUT-RAM, DSP, EBR), cells attributed by
  their (Yosys auto-)names, which start with the hierarchical name of the net they drive.

THIS IS AN ESTIMATE, not nextpnr's timing: there is no placement, so each net's routing
delay is nextpnr-ecp5's own pre-routing estimate ``predictDelay`` (``ecp5/arch.cc``:
``(120 - 22 * speed) ps * (6 + 2 * (dx + dy))`` for short distances, speed grade 6 -> 120
ps per unit) with the distance guessed from the net's fanout (``d = 1 + sqrt(fanout /
ROUTE_FANOUT_PER_TILE)``). Cell delays are nextpnr's speed-6 figures as a routed 4x4-grid
build printed them (``scripts/synth.py --design grid --rows 4 --cols 4``, grid_top.tim:
clock-to-Q 0.52, LUT4 0.24, carry entry 0.45, FCI->FCO 0.07 per CCU2C, FCI->sum 0.40,
nets 0.83-1.13 ns); the others (wide muxes, LUT RAM, DP16KD, MULT18X18D) are estimates from
the ECP5 data sheet's order of magnitude and Yosys' abc9 delay annotations
(share/lattice/common_sim.vh, ccu2c_sim.vh). All numbers are in ``Model`` below, one place.

Calibration (default model, measured when this was written; runtime ~4 s for the 125 MB chip):

* CHIP_85F with the vector unit (``build/synth/ulx3s-85f-chip-16x8/chip_top.json``): this
  script 31.1 MHz (32.2 ns) vs nextpnr's post-placement estimate 32.2 MHz (31.0 ns, seed 1;
  its critical path was not printed). Agreement this close is partly luck.
* 4x4 grid (``build/synth/ulx3s-85f-4x4/grid_top.json``): this script 88.1 MHz (11.35 ns, a
  local LUT/mux control path, array.drain0) vs nextpnr 112.0 MHz post-placement and 135.2 MHz
  routed. nextpnr's routed critical path there (7.39 ns, a PE's psum carry chain) is 7.57 ns
  here. So short local LUT-to-LUT nets (nextpnr packs them into one tile, 0.7-0.9 ns or 0
  with its direct connections) are overestimated: small designs read pessimistic.
* The pre-vector chip with the old group scaler (``build/synth/ulx3s-85f-chip-16x16/``, a 16x16
  grid whose placement failed): its scaler output stage (s4 -> ofifo.w_data, 12 LUT 12 mux
  37 CCU2C) is 36.7 ns here; routed on the 16x8 chip nextpnr measured that stage at 42.3 ns
  (23.7 MHz). Routing on a congested device costs more than any pre-routing estimate.

After placement (``--placement PLACED.json``, written by ``nextpnr-ecp5 --no-route --write``;
nextpnr prints no critical path before routing): each arc's routing delay is predictDelay of
the two cells' placed distance (``Model.placed_route_delay``) instead of the fanout guess, so
paths that placement stretched across the die show up. Not calibrated: on the board top
(``LinkBoardTop``, CHIP_85F, seed 1) it gave 30.2 MHz where nextpnr's post-placement figure
was 44.4 MHz (pessimistic on long, high-fanout arcs); use its ranking.

Use the ranking, depths and Python lines to decide what to pipeline; treat the absolute ns as
+-20 %. Each endpoint is reported under the source of its WORST path only, so a group that
is also slow but never the worst for any endpoint is hidden until the worse one is fixed.
"""

import argparse
import json
import math
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass


@dataclass
class Model:
    """Delays in ns (ECP5, speed grade 6). Measured = printed by nextpnr for a routed design
    on this toolchain; nextpnr = its source; estimate = data sheet order / abc9 annotations."""

    ff_clk_to_q: float = 0.52  # measured (TRELLIS_SLICE CLK->Q)
    ff_setup_di: float = 0.00  # measured (setup at M/DI printed 0.00)
    ff_setup_ce_lsr: float = 0.15  # estimate
    lut4: float = 0.24  # measured (A..D -> F)
    pfumx_data: float = 0.15  # estimate (LUT5 mux, ALUT/BLUT -> OFX; abc9: 98 ps)
    pfumx_sel: float = 0.20  # estimate (C0/M -> OFX; abc9: 151 ps)
    l6mux_data: float = 0.15  # estimate (FXA/FXB -> OFX1; abc9: 140 ps)
    l6mux_sel: float = 0.20  # estimate (SD -> OFX1; abc9: 148 ps)
    carry_in: float = 0.45  # measured (A/B/C/D -> FCO, the carry chain's entry)
    carry_through: float = 0.07  # measured (FCI -> FCO per CCU2C, 2 bits)
    carry_sum: float = 0.40  # measured (FCI -> F)
    carry_lut_sum0: float = 0.40  # estimate (A0..D0 -> S0; abc9: 379 ps)
    carry_lut_sum1: float = 0.55  # estimate (A0..D0 -> S1 through the slice's carry)
    lutram_read: float = 0.24  # estimate (RAD -> DO: a LUT read, as LUT4)
    lutram_setup: float = 0.20  # estimate (DI/WAD/WRE at WCK)
    ebr_clk_to_out: float = 4.50  # estimate (DP16KD REGMODE=NOREG, data sheet ~4-5 ns)
    ebr_clk_to_out_reg: float = 0.90  # estimate (REGMODE=OUTREG)
    ebr_setup: float = 0.20  # estimate
    mult_comb: float = 4.80  # estimate (MULT18X18D A/B -> P without registers)
    mult_clk_to_out: float = 0.90  # estimate (output register)
    mult_setup: float = 0.30  # estimate (input register)
    io_setup: float = 0.00
    # routing: nextpnr's predictDelay with a guessed distance, see route_delay()
    route_unit: float = 0.12  # nextpnr: (120 - 22 * speed) ps, speed grade 6 = index 0
    route_fixed: float = 6.0  # nextpnr: the constant 6 in predictDelay
    route_d0: float = 1.0  # guessed distance (tiles, dx + dy) of a fanout-1 net
    route_fanout_per_tile: float = 8.0  # sinks per tile when guessing the spread of a net
    route_max_d: float = 40.0  # cap on the guessed distance (tiles)

    def route_delay(self, fanout: int) -> float:
        """Guessed routing delay of one net hop to one of ``fanout`` sinks: nextpnr's
        predictDelay with dx + dy = 1 + sqrt(fanout / route_fanout_per_tile)."""
        d = min(self.route_d0 + math.sqrt(max(fanout, 1) / self.route_fanout_per_tile),
                self.route_max_d)
        near = min(d, 10.0)  # predictDelay: 2 units per tile up to 5 in x and 5 in y
        return self.route_unit * (self.route_fixed + 2.0 * near + max(d - 10.0, 0.0))

    def placed_route_delay(self, dx: int, dy: int) -> float:
        """nextpnr's predictDelay for a placed arc ``dx``, ``dy`` tiles apart (2 units per tile
        up to 5 in each direction, 1 beyond)."""
        return self.route_unit * (self.route_fixed + 2.0 * (min(dx, 5) + min(dy, 5))
                                  + max(dx - 5, 0) + max(dy - 5, 0))


#: Yosys autoname tokens: a name containing one of these was made up from a cell port chain.
AUTO_RE = re.compile(
    r"_(?:TRELLIS_FF|LUT4|CCU2C|PFUMX|L6MUX21|DP16KD|MULT18X18D|TRELLIS_DPR16X4|TRELLIS_IO|"
    r"ALU54B)_"
)
CONST = {"0", "1", "x", "z"}
LUT_LIKE = {"LUT4", "CCU2C", "PFUMX", "L6MUX21"}
IGNORED = {"$scopeinfo", "EHXPLLL", "SGSR", "GSR", "DCCA", "$specify2", "$specify3"}


def strip_group(name: str) -> str:
    """A register/net name -> its group: autoname suffix, bit indices, $N suffixes and a
    memory's .row.col tiling suffix removed."""
    m = AUTO_RE.search(name)
    if m:
        name = name[: m.start()]
    name = re.sub(r"\[\d+\]", "", name)
    name = re.sub(r"\$\d+", "", name)
    name = re.sub(r"(\.\d+)+$", "", name)
    name = re.sub(r"_(DO[AB]?|DI[AB]?|AD[AB]|P)\d*(_\d+)?$", "", name)
    return name


def py_srcs(src: str) -> list:
    """The Python file:line parts of a Yosys src attribute (``a.py:12|b.v:3.1-4.2``)."""
    out = []
    for part in src.split("|"):
        path, _, line = part.rpartition(":")
        if path.endswith(".py") and "site-packages" not in path and "/lib/python" not in path:
            i = path.find("/hw/")
            out.append((path[i + 1:] if i >= 0 else path) + ":" + line)
    return out


class Netlist:
    """The flattened top module's cells and net names, indexed by bit."""

    def __init__(self, data: dict, top: str | None = None):
        mods = data.get("modules", {})
        if top is None:
            tops = [n for n, m in mods.items() if m.get("attributes", {}).get("top")]
            if len(tops) != 1:
                raise SystemExit(f"sta: cannot tell the top module ({tops or 'none marked'}); "
                                 "pass --top")
            top = tops[0]
        if top not in mods:
            raise SystemExit(f"sta: no module {top!r} in the netlist")
        mod = mods[top]
        self.top = top
        self.cells = mod["cells"]
        # best display name per bit: (score, name, index, width)
        self.best = {}
        self.bit_py = defaultdict(list)  # bit -> Python src lines of the nets it belongs to
        for name, nn in mod["netnames"].items():
            bits = nn["bits"]
            src = nn.get("attributes", {}).get("src", "")
            pys = py_srcs(src)
            auto = AUTO_RE.search(name) is not None
            score = (nn.get("hide_name", 0), 0 if pys else 1, auto, "$" in name, len(name))
            for i, b in enumerate(bits):
                if isinstance(b, str):
                    continue
                cur = self.best.get(b)
                if cur is None or score < cur[0]:
                    self.best[b] = (score, name, i, len(bits))
                if pys and not auto:
                    self.bit_py[b].extend(pys)

    def bit_name(self, b) -> str:
        e = self.best.get(b)
        if e is None:
            return f"<bit {b}>"
        _, name, i, w = e
        if AUTO_RE.search(name):
            return strip_group(name) + "~"  # logic feeding that public net
        return f"{name}[{i}]" if w > 1 else name

    def is_public(self, b) -> bool:
        e = self.best.get(b)
        return e is not None and not AUTO_RE.search(e[1]) and e[0][0] == 0


def param_str(cell: dict, name: str, default: str) -> str:
    return str(cell.get("parameters", {}).get(name, default)).strip()


def load_placement(data: dict) -> dict:
    """{Yosys cell name: (x, y)} from a placed design nextpnr wrote (``--write``): its cells
    keep the Yosys names (a CCU2C's two halves add ``$CCU2_COMB0/1``; LUT RAM is renamed and
    keeps the fanout guess)."""
    mods = data.get("modules", {})
    if len(mods) != 1:
        raise SystemExit("sta: the placement JSON should hold nextpnr's one (top) module")
    loc = {}
    for name, c in next(iter(mods.values()))["cells"].items():
        m = re.match(r"X(\d+)/Y(\d+)/", c.get("attributes", {}).get("NEXTPNR_BEL", ""))
        if m:
            name = re.sub(r"\$CCU2_COMB[01]$", "", name)
            loc.setdefault(name[1:] if name.startswith("\\") else name,
                           (int(m.group(1)), int(m.group(2))))
    if not loc:
        raise SystemExit("sta: no placed cell (NEXTPNR_BEL) in the placement JSON: write it "
                         "with nextpnr --write after placement")
    return loc


class Timing:
    """Arrival times over the netlist's bits (``loc``: cell -> (x, y) of a placement, for
    placed routing delays; cells without one keep the fanout guess)."""

    def __init__(self, nl: Netlist, model: Model, loc: dict | None = None):
        self.nl, self.m = nl, model
        self.loc = loc or {}
        self.driver_cell = {}  # bit -> name of the cell that drives it
        self.placed_arcs = 0
        self.start = {}  # bit -> (clock-to-out, group, cell name, is_io)
        self.arcs = defaultdict(list)  # out bit -> [(in bit, cell delay, routed, cell name)]
        self.ends = []  # (bit, setup, group, cell name, port, routed, is_io)
        self.fanout = Counter()
        self.cell_type = {}
        self.unknown = Counter()
        self._build()

    # -- graph --------------------------------------------------------------------------

    def _group_of_bit(self, b, fallback: str) -> str:
        e = self.nl.best.get(b)
        return strip_group(e[1]) if e else strip_group(fallback)

    def _build(self):
        m = self.m
        drivers = {}  # bit -> cell type of its driver (for the packing rules)
        for cname, c in self.nl.cells.items():
            t = c["type"]
            self.cell_type[cname] = t
            for p, bits in c["connections"].items():
                if c.get("port_directions", {}).get(p) == "output":
                    for b in bits:
                        if not isinstance(b, str):
                            drivers[b] = t
                            self.driver_cell[b] = cname
                elif c.get("port_directions", {}).get(p) == "input":
                    for b in bits:
                        if not isinstance(b, str):
                            self.fanout[b] += 1
        self.drivers = drivers

        for cname, c in self.nl.cells.items():
            t = c["type"]
            conn = c["connections"]

            def bit(p, conn=conn):
                v = conn.get(p)
                if not v or isinstance(v[0], str):
                    return None
                return v[0]

            if t == "LUT4":
                z = bit("Z")
                for p in "ABCD":
                    b = bit(p)
                    if b is not None and z is not None:
                        self.arcs[z].append((b, m.lut4, True, cname))
            elif t == "PFUMX":
                z = bit("Z")
                for p, d, routed in (("ALUT", m.pfumx_data, False), ("BLUT", m.pfumx_data, False),
                                     ("C0", m.pfumx_sel, True)):
                    b = bit(p)
                    if b is not None and z is not None:
                        self.arcs[z].append((b, d, routed, cname))
            elif t == "L6MUX21":
                z = bit("Z")
                for p, d, routed in (("D0", m.l6mux_data, False), ("D1", m.l6mux_data, False),
                                     ("SD", m.l6mux_sel, True)):
                    b = bit(p)
                    if b is not None and z is not None:
                        self.arcs[z].append((b, d, routed, cname))
            elif t == "CCU2C":
                s0, s1, co, ci = bit("S0"), bit("S1"), bit("COUT"), bit("CIN")
                for i in "01":
                    for p in "ABCD":
                        b = bit(p + i)
                        if b is None:
                            continue
                        if i == "0":
                            if s0 is not None:
                                self.arcs[s0].append((b, m.carry_lut_sum0, True, cname))
                            if s1 is not None:
                                self.arcs[s1].append((b, m.carry_lut_sum1, True, cname))
                        elif s1 is not None:
                            self.arcs[s1].append((b, m.carry_lut_sum0, True, cname))
                        if co is not None:
                            self.arcs[co].append((b, m.carry_in, True, cname))
                if ci is not None:
                    # CIN comes over the dedicated carry wire from the previous CCU2C's COUT
                    routed = drivers.get(ci) != "CCU2C"
                    for o, d in ((s0, m.carry_sum), (s1, m.carry_sum), (co, m.carry_through)):
                        if o is not None:
                            self.arcs[o].append((ci, d, routed, cname))
            elif t == "TRELLIS_FF":
                q = bit("Q")
                g = self._group_of_bit(q, cname) if q is not None else strip_group(cname)
                if q is not None:
                    self.start[q] = (m.ff_clk_to_q, g, cname, False)
                for p, s in (("DI", m.ff_setup_di), ("M", m.ff_setup_di),
                             ("CE", m.ff_setup_ce_lsr), ("LSR", m.ff_setup_ce_lsr)):
                    b = bit(p)
                    if b is None:
                        continue
                    # a LUT whose only sink is this FF's DI packs into the same slice (F->DI)
                    routed = not (p in ("DI", "M") and drivers.get(b) in LUT_LIKE
                                  and self.fanout[b] == 1)
                    self.ends.append((b, s, g, cname, p, routed, False))
            elif t == "TRELLIS_DPR16X4":
                g = strip_group(cname)
                rad = [b for b in conn.get("RAD", []) if not isinstance(b, str)]
                for o in conn.get("DO", []):
                    if isinstance(o, str):
                        continue
                    for b in rad:
                        self.arcs[o].append((b, m.lutram_read, True, cname))
                for p in ("DI", "WAD", "WRE"):
                    for b in conn.get(p, []):
                        if not isinstance(b, str):
                            self.ends.append((b, m.lutram_setup, g, cname, p, True, False))
            elif t == "DP16KD":
                g = strip_group(cname)
                for p, bits in conn.items():
                    d = c["port_directions"].get(p)
                    if p in ("CLKA", "CLKB"):
                        continue
                    for b in bits:
                        if isinstance(b, str):
                            continue
                        if d == "output":
                            half = "A" if p.startswith("DOA") else "B"
                            reg = param_str(c, "REGMODE_" + half, "NOREG") == "OUTREG"
                            self.start[b] = (m.ebr_clk_to_out_reg if reg else m.ebr_clk_to_out,
                                             g, cname, False)
                        elif d == "input":
                            self.ends.append((b, m.ebr_setup, g, cname, p, True, False))
            elif t == "MULT18X18D":
                self._mult(cname, c)
            elif t == "TRELLIS_IO":
                g = "io:" + strip_group(cname)
                for p, bits in conn.items():
                    d = c["port_directions"].get(p)
                    for b in bits:
                        if isinstance(b, str):
                            continue
                        if p == "O":
                            self.start[b] = (0.0, g, cname, True)
                        elif p in ("I", "T"):
                            self.ends.append((b, m.io_setup, g, cname, p, True, True))
            elif t in IGNORED:
                continue
            else:
                # unmodelled cell: its outputs start paths, its inputs end them
                self.unknown[t] += 1
                g = strip_group(cname)
                for p, bits in conn.items():
                    d = c.get("port_directions", {}).get(p)
                    for b in bits:
                        if isinstance(b, str):
                            continue
                        if d == "output":
                            self.start[b] = (0.0, g, cname, False)
                        elif d == "input":
                            self.ends.append((b, 0.0, g, cname, p, True, False))

    def _mult(self, cname, c):
        m, conn = self.m, c["connections"]
        reg_in = (param_str(c, "REG_INPUTA_CLK", "NONE") != "NONE"
                  and param_str(c, "REG_INPUTB_CLK", "NONE") != "NONE")
        reg_out = (param_str(c, "REG_OUTPUT_CLK", "NONE") != "NONE"
                   or param_str(c, "REG_PIPELINE_CLK", "NONE") != "NONE")
        outs = [b for p, bits in conn.items() if re.fullmatch(r"P\d+", p)
                for b in bits if not isinstance(b, str)]
        ins = [b for p, bits in conn.items()
               if re.fullmatch(r"[AB]\d+", p) or p in ("SIGNEDA", "SIGNEDB")
               for b in bits if not isinstance(b, str)]
        g = self._group_of_bit(outs[0], cname) if outs else strip_group(cname)
        if reg_out:
            for o in outs:
                self.start[o] = (m.mult_clk_to_out, g, cname, False)
        elif reg_in:
            for o in outs:
                self.start[o] = (m.mult_clk_to_out + m.mult_comb, g, cname, False)
        for b in ins:
            if reg_in:
                self.ends.append((b, m.mult_setup, g, cname, "A/B", True, False))
            elif reg_out:
                self.ends.append((b, m.mult_comb + m.mult_setup, g, cname, "A/B", True, False))
            else:
                for o in outs:
                    self.arcs[o].append((b, m.mult_comb, True, cname))

    # -- arrival ------------------------------------------------------------------------

    def run(self):
        """Latest arrival of every reachable bit (iterative DFS, topological order)."""
        arr, pred = {}, {}
        start, arcs, fanout, route = self.start, self.arcs, self.fanout, self.m.route_delay
        rcache = {}
        self.loops = 0

        def rd(b):
            f = fanout[b]
            v = rcache.get(f)
            if v is None:
                v = rcache[f] = route(f)
            return v

        loc, dcell, placed = self.loc, self.driver_cell, self.m.placed_route_delay

        def rdp(b, sink):  # routing delay from b's driver to the cell ``sink``
            if loc:
                a, z = loc.get(dcell.get(b)), loc.get(sink)
                if a is not None and z is not None:
                    self.placed_arcs += 1
                    return placed(abs(a[0] - z[0]), abs(a[1] - z[1]))
            return rd(b)

        self.rd, self.rdp = rd, rdp
        ON_STACK = object()
        for root in list(arcs.keys()) + list(start.keys()):
            if root in arr:
                continue
            stack = [(root, -1)]
            while stack:
                b, i = stack.pop()
                if i < 0:
                    if b in arr:
                        continue
                    if b in start:
                        arr[b] = (start[b][0], b)
                        pred[b] = None
                        continue
                    if b not in arcs:
                        arr[b] = (0.0, None)  # undriven / constant-like: no start point
                        pred[b] = None
                        continue
                    arr[b] = ON_STACK
                    i = 0
                lst = arcs[b]
                # descend into the first input not yet computed
                while i < len(lst):
                    s = lst[i][0]
                    v = arr.get(s)
                    if v is None:
                        break
                    if v is ON_STACK:
                        self.loops += 1  # combinational loop: that arc is cut
                    i += 1
                if i < len(lst):
                    stack.append((b, i))
                    stack.append((lst[i][0], -1))
                    continue
                best, bp, bsrc = -1.0, None, None
                for s, d, routed, cname in lst:
                    v = arr[s]
                    if v is ON_STACK:
                        continue
                    t = v[0] + d + (rdp(s, cname) if routed else 0.0)
                    if t > best:
                        best, bp, bsrc = t, (s, cname, routed), v[1]
                if bp is None:
                    best = 0.0
                arr[b] = (best, bsrc)
                pred[b] = bp
        self.arr, self.pred = arr, pred

    def path(self, b):
        """[(bit, cell that drives it or None, routed-into-next)] from the start point to b."""
        out = []
        while b is not None:
            p = self.pred.get(b)
            out.append((b, p[1] if p else None))
            b = p[0] if p else None
        return out[::-1]

    def endpoint_delays(self):
        """[(delay, endpoint tuple, start bit)] of every endpoint with a start point."""
        res = []
        for e in self.ends:
            b, setup, g, cname, port, routed, is_io = e
            v = self.arr.get(b)
            if v is None or v[1] is None:
                continue
            d = v[0] + (self.rdp(b, cname) if routed else 0.0) + setup
            res.append((d, e, v[1]))
        return res


def depth_of(tm: Timing, path) -> dict:
    c = Counter()
    for _b, cname in path:
        if cname is None:
            continue
        t = tm.cell_type[cname]
        c[{"LUT4": "lut", "PFUMX": "mux", "L6MUX21": "mux", "CCU2C": "carry",
           "MULT18X18D": "mult", "TRELLIS_DPR16X4": "lutram"}.get(t, t)] += 1
    first = path[0][0]
    st = tm.start.get(first)
    if st and tm.cell_type.get(st[2]) == "DP16KD":
        c["ebr"] += 1
    if st and tm.cell_type.get(st[2]) == "MULT18X18D":
        c["mult"] += 1
    return dict(c)


def path_report(tm: Timing, path, end):
    """Steps of a path and its Python source lines in order of first appearance. A step is
    a public net's name, or for an internal net (after the public net above it) the driving
    cell's Python line, else the name Yosys' autoname derived from some public net nearby
    (``name~``: a hint only); runs of equal labels are collapsed into one step with a count."""
    nl = tm.nl
    steps, srcs = [], []
    for b, cname in path:
        t = tm.arr[b][0]
        ctype = tm.cell_type.get(cname) if cname else "start"
        cpy = py_srcs(nl.cells[cname].get("attributes", {}).get("src", "")) if cname else []
        if nl.is_public(b):
            label = nl.bit_name(b)
        else:  # internal net: the cell's Python line, else Yosys' derived name (may mislead)
            label = "  · " + (cpy[0] if cpy else "(yosys name " + nl.bit_name(b) + ")")
        if steps and steps[-1]["net"] == label and steps[-1]["cell"] == ctype:
            steps[-1]["arrival_ns"] = round(t, 2)
            steps[-1]["count"] += 1
        else:
            steps.append({"net": label, "cell": ctype, "arrival_ns": round(t, 2), "count": 1})
        for s in cpy + nl.bit_py.get(b, []):
            if s not in srcs:
                srcs.append(s)
    st = tm.start.get(path[0][0])
    if st:
        for s in py_srcs(nl.cells[st[2]].get("attributes", {}).get("src", "")):
            if s not in srcs:
                srcs.insert(0, s)
    for s in py_srcs(nl.cells[end[3]].get("attributes", {}).get("src", "")):
        if s not in srcs:
            srcs.append(s)
    return steps, srcs


def area(nl: Netlist, depth: int) -> dict:
    kinds = {"LUT4": "LUT4", "PFUMX": "LUT4", "L6MUX21": None, "CCU2C": "CCU2C",
             "TRELLIS_FF": "FF", "TRELLIS_DPR16X4": "LUTRAM", "MULT18X18D": "DSP",
             "DP16KD": "EBR"}
    res = defaultdict(Counter)
    for cname, c in nl.cells.items():
        k = kinds.get(c["type"])
        if k is None or (c["type"] == "PFUMX"):
            continue
        name = cname
        if c.get("hide_name", 0) or name.startswith("$"):
            outs = [b for p, bits in c["connections"].items()
                    if c.get("port_directions", {}).get(p) == "output"
                    for b in bits if not isinstance(b, str)]
            name = nl.best[outs[0]][1] if outs and outs[0] in nl.best else "(unnamed)"
        base = strip_group(name.lstrip("\\"))
        parts = base.split(".")
        if c["type"] not in ("DP16KD", "TRELLIS_DPR16X4"):
            parts = parts[:-1]  # the last component is the signal's own name
        key = ".".join(parts[:depth]) or "(top)"
        res[key][k] += 1
    return {k: dict(v) for k, v in sorted(res.items())}


#: Cells whose output is on a global (clock) network: their nets' fanout costs no general
#: routing.
GLOBAL_DRIVERS = ("DCCA", "DCSC", "EHXPLLL", "ECLKBRIDGECS", "CLKDIVF")


def fanouts(nl: Netlist, tm: Timing, n: int = 8, least: int = 500) -> list:
    """The ``n`` largest nets (bits) of at least ``least`` sinks driven by logic rather than a
    global buffer: each such net spreads over general routing to every sink, and a large one
    (a reset or enable built by a LUT) congests the router across the die. Each: the net's
    name, its driver's cell type, the fanout, and how many of the sinks are flops' ``LSR``
    (reset) and ``CE`` (enable) pins."""
    big = [(f, b) for b, f in tm.fanout.items()
           if f >= least and tm.drivers.get(b) not in GLOBAL_DRIVERS + (None,)]
    big.sort(key=lambda x: -x[0])
    big = big[:n]
    pins = {b: Counter() for _, b in big}
    for c in nl.cells.values():
        if c["type"] != "TRELLIS_FF":
            continue
        for p in ("LSR", "CE"):
            v = c["connections"].get(p)
            if v and v[0] in pins:
                pins[v[0]][p] += 1
    return [{"net": nl.bit_name(b), "driver": tm.drivers[b], "fanout": f,
             "lsr": pins[b]["LSR"], "ce": pins[b]["CE"]} for f, b in big]


def fmt_fanout(f: dict) -> str:
    pins = ", ".join(f"{f[k]} {k.upper()}" for k in ("lsr", "ce") if f[k])
    return f"{f['fanout']:6d}  {f['net']} ({f['driver']}" + (f"; {pins})" if pins else ")")


def analyse(data: dict, top=None, clock_mhz=100.0, npaths=30, model=None, area_depth=3,
            placement: dict | None = None):
    """``placement``: nextpnr's placed design (``--write``), for placed routing delays."""
    model = model or Model()
    t0 = time.time()
    nl = Netlist(data, top)
    loc = load_placement(placement) if placement is not None else None
    tm = Timing(nl, model, loc)
    tm.run()
    eds = tm.endpoint_delays()
    reg = [x for x in eds if not x[1][6] and not tm.start[x[2]][3]]
    worst = max(reg, key=lambda x: x[0]) if reg else None
    period = 1000.0 / clock_mhz
    groups = {}
    for d, e, sb in eds:
        if d <= period:
            continue
        sg, dg = tm.start[sb][1], e[2]
        if tm.start[sb][3]:
            sg = tm.start[sb][1]
        key = (sg, dg)
        g = groups.get(key)
        if g is None:
            g = groups[key] = {"src": sg, "dst": dg, "worst_ns": d, "endpoints": 0,
                               "_worst": (d, e, sb)}
        g["endpoints"] += 1
        if d > g["worst_ns"]:
            g["worst_ns"], g["_worst"] = d, (d, e, sb)
    ranked = sorted(groups.values(), key=lambda g: -g["worst_ns"])
    for i, g in enumerate(ranked):
        d, e, sb = g.pop("_worst")
        p = tm.path(e[0])
        g["worst_ns"] = round(d, 2)
        g["depth"] = depth_of(tm, p)
        g["end"] = f"{e[3]}.{e[4]}"
        if i < npaths:
            g["path"], g["py"] = path_report(tm, p, e)
    return {
        "netlist_top": nl.top,
        "model": asdict(model),
        "clock_mhz": clock_mhz,
        "worst_reg_ns": round(worst[0], 2) if worst else None,
        "fmax_mhz": round(1000.0 / worst[0], 1) if worst else None,
        "endpoints": len(eds),
        "failing_endpoints": sum(1 for x in eds if x[0] > period),
        "comb_loops_cut": tm.loops,
        "placed": bool(loc),
        "placed_cells": sum(1 for c in nl.cells if c in loc) if loc else 0,
        "unmodelled_cells": dict(tm.unknown),
        "groups": ranked,
        "area": area(nl, area_depth),
        "fanouts": fanouts(nl, tm),
        "seconds": round(time.time() - t0, 1),
    }


def fmt_depth(d: dict) -> str:
    keys = [("lut", "LUT"), ("mux", "mux"), ("carry", "CCU2C"), ("mult", "MULT"),
            ("lutram", "LUTRAM"), ("ebr", "EBR")]
    return " ".join(f"{d[k]} {n}" for k, n in keys if d.get(k)) or "-"


def print_report(r: dict, npaths: int, out=None):
    out = out or sys.stdout
    w = lambda *a: print(*a, file=out)  # noqa: E731
    how = (f"routing from the placement of {r['placed_cells']} cells" if r.get("placed")
           else "an estimate from the netlist")
    w(f"estimated Fmax {r['fmax_mhz']} MHz (worst register path {r['worst_reg_ns']} ns; "
      f"{how}, see scripts/sta.py's docstring)")
    w(f"{r['failing_endpoints']} of {r['endpoints']} endpoints fail at {r['clock_mhz']} MHz, "
      f"in {len(r['groups'])} (source, destination) groups")
    if r["unmodelled_cells"]:
        w(f"unmodelled cells (taken as start/end points): {r['unmodelled_cells']}")
    if r["comb_loops_cut"]:
        w(f"combinational loops cut: {r['comb_loops_cut']}")
    w("")
    w(f"{'rank':>4} {'worst ns':>8} {'ends':>5}  source -> destination  [depth]")
    for i, g in enumerate(r["groups"]):
        if i >= max(npaths, 60):
            w(f"  ... {len(r['groups']) - i} more groups (--json has them all)")
            break
        w(f"{i + 1:4d} {g['worst_ns']:8.2f} {g['endpoints']:5d}  {g['src']} -> {g['dst']}  "
          f"[{fmt_depth(g['depth'])}]")
    w("")
    for i, g in enumerate(r["groups"][:npaths]):
        w(f"#{i + 1} {g['worst_ns']:.2f} ns  {g['src']} -> {g['dst']}  "
          f"({g['endpoints']} endpoints; {fmt_depth(g['depth'])})")
        w("   path (arrival ns, cell driving the net, xN = N cells in a row):")
        for st in g["path"]:
            n = f" x{st['count']}" if st["count"] > 1 else ""
            w(f"     {st['arrival_ns']:6.2f}  {st['cell']}{n:5s} {st['net']}")
        w(f"     {g['worst_ns']:6.2f}  end   {g['end']}")
        w("   python: " + (", ".join(g["py"]) or "(no src)"))
    w("")
    if r["fanouts"]:
        w("largest fanouts on general routing (driven by logic, not a global buffer):")
        for f in r["fanouts"]:
            w("  " + fmt_fanout(f))
        w("")
    cols = ("LUT4", "CCU2C", "FF", "LUTRAM", "DSP", "EBR")
    roll = defaultdict(Counter)
    for k, v in r["area"].items():
        roll[".".join(k.split(".")[:2])].update(v)
    w("area by unit (two hierarchy levels, everything below rolled up):")
    for k, v in sorted(roll.items(), key=lambda kv: -kv[1].get("LUT4", 0)):
        w(f"  {k:48s} " + " ".join(f"{n}={v.get(n, 0)}" for n in cols))
    w("")
    w("area by hierarchy (LUT4 incl. LUT5 halves, CCU2C, FF, LUTRAM, DSP, EBR):")
    tot = Counter()
    for k, v in r["area"].items():
        tot.update(v)
        w(f"  {k:48s} " + " ".join(f"{n}={v.get(n, 0)}" for n in
                                   ("LUT4", "CCU2C", "FF", "LUTRAM", "DSP", "EBR")))
    w(f"  {'total':48s} " + " ".join(f"{n}={tot.get(n, 0)}" for n in
                                     ("LUT4", "CCU2C", "FF", "LUTRAM", "DSP", "EBR")))
    w(f"({r['seconds']} s)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("netlist", help="Yosys JSON after synth_ecp5 (flattened)")
    ap.add_argument("--top", default=None, help="top module (default: the one marked top)")
    ap.add_argument("--clock-mhz", type=float, default=100.0)
    ap.add_argument("--paths", type=int, default=30, help="groups to print full paths for")
    ap.add_argument("--json", default=None, help="write everything to this file")
    ap.add_argument("--area-depth", type=int, default=3,
                    help="hierarchy levels of the area summary")
    ap.add_argument("--route-scale", type=float, default=1.0,
                    help="multiply the routing unit (calibration experiments)")
    ap.add_argument("--route-d0", type=float, default=None,
                    help="guessed distance of a fanout-1 net in tiles (calibration experiments)")
    ap.add_argument("--placement", default=None, metavar="PLACED.json",
                    help="nextpnr's placed design (nextpnr-ecp5 --no-route --write PLACED.json):"
                    " routing delays from the cells' placed distances instead of fanout guesses"
                    " (nextpnr prints no critical path after placement)")
    a = ap.parse_args(argv)
    if a.clock_mhz <= 0:
        ap.error("--clock-mhz must be positive")
    try:
        with open(a.netlist) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"sta: cannot read {a.netlist}: {e}") from None
    model = Model()
    model.route_unit *= a.route_scale
    if a.route_d0 is not None:
        model.route_d0 = a.route_d0
    placement = None
    if a.placement:
        try:
            with open(a.placement) as f:
                placement = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"sta: cannot read {a.placement}: {e}") from None
    r = analyse(data, a.top, a.clock_mhz, a.paths, model, a.area_depth, placement)
    print_report(r, a.paths)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
        print(f"json: {a.json}")


if __name__ == "__main__":
    main()

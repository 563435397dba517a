"""scripts/sta.py on small hand-written ECP5 netlists: delays and depths worked out by hand from
the model's constants (a model with round routing numbers: a fanout-1 net costs 1.0 ns, a
fanout-4 net 1.2 ns), grouping by register names, multipliers, RAM start points."""

import json

import pytest

from scripts.sta import Model, analyse, main, strip_group

# route = unit * (fixed + 2 * d), d = d0 + sqrt(fanout / per_tile):
# fanout 1 -> d = 2 -> 0.1 * (6 + 4) = 1.0 ns; fanout 4 -> d = 3 -> 0.1 * (6 + 6) = 1.2 ns
M = Model(route_unit=0.1, route_fixed=6.0, route_d0=1.0, route_fanout_per_tile=1.0)
R1, R4 = 1.0, 1.2


class Net:
    """A tiny synth_ecp5-style module builder."""

    def __init__(self):
        self.cells, self.names, self.next = {}, {}, 100

    def bit(self):
        self.next += 1
        return self.next

    def name(self, name, bits, src="/work/main/hw/x.py:1", hide=0):
        self.names[name] = {"hide_name": hide, "bits": list(bits), "attributes": {"src": src}}

    def cell(self, name, typ, ins, outs, params=None, src=""):
        conns, dirs = {}, {}
        for p, b in ins.items():
            conns[p], dirs[p] = [b], "input"
        for p, b in outs.items():
            conns[p], dirs[p] = [b], "output"
        self.cells[name] = {"hide_name": 0, "type": typ, "parameters": params or {},
                            "attributes": {"src": src}, "port_directions": dirs,
                            "connections": conns}

    def ff(self, name, d, q=None, src="/work/main/hw/x.py:7"):
        q = q or self.bit()
        self.cell(name + "_TRELLIS_FF_Q", "TRELLIS_FF", {"DI": d, "CLK": 2}, {"Q": q},
                  src=src)
        return q

    def lut(self, name, *ins):
        z = self.bit()
        self.cell(name, "LUT4", dict(zip("ABCD", ins, strict=False)), {"Z": z})
        return z

    def json(self):
        return {"modules": {"top": {"attributes": {"top": "1"}, "cells": self.cells,
                                    "netnames": self.names}}}


def run(n, mhz=100.0):
    return analyse(n.json(), clock_mhz=mhz, model=M)


def test_lut_chain_between_registers():
    n = Net()
    q = n.bit()
    n.name("u.src", [q])
    z1 = n.lut("l1", q)
    z2 = n.lut("l2", z1)
    z3 = n.lut("l3", z2)
    dq = n.ff("u.dst", z3)
    n.ff("u.src", dq, q)  # closes the loop through a register: no combinational loop
    n.name("u.dst", [dq])
    r = run(n, mhz=1000.0)
    # clk-to-q, then 3 x (route fanout 1 + LUT); the last LUT packs with its FF (no route)
    want = 0.52 + 3 * (R1 + 0.24)
    assert r["worst_reg_ns"] == pytest.approx(want, abs=0.01)
    assert r["fmax_mhz"] == pytest.approx(1000.0 / want, abs=0.1)
    g = [g for g in r["groups"] if g["src"] == "u.src"][0]
    assert g["dst"] == "u.dst" and g["depth"] == {"lut": 3}
    assert [s["net"] for s in g["path"]][0] == "u.src"
    # at 100 MHz nothing fails
    assert run(n)["failing_endpoints"] == 0


def test_carry_chain():
    n = Net()
    q = n.bit()
    n.name("acc.a", [q])
    n.ff("acc.a", n.bit(), q)
    c1, c2, s = n.bit(), n.bit(), n.bit()
    n.cell("c0", "CCU2C", {"A0": q}, {"COUT": c1})
    n.cell("c1", "CCU2C", {"CIN": c1}, {"COUT": c2})
    n.cell("c2", "CCU2C", {"CIN": c2}, {"S1": s}, src="/work/main/hw/acc.py:42|/share/x.v:1")
    n.ff("acc.sum", s, n.bit())
    r = run(n, mhz=1000.0)
    want = 0.52 + R1 + M.carry_in + M.carry_through + M.carry_sum  # COUT->CIN not routed
    assert r["worst_reg_ns"] == pytest.approx(want, abs=0.01)
    g = r["groups"][0]
    assert g["depth"] == {"carry": 3}
    assert "hw/acc.py:42" in g["py"] and "hw/x.py:7" in g["py"]


def test_ram_start_point_and_fanout():
    n = Net()
    do = n.bit()
    n.cell("mem.0.1", "DP16KD", {"CLKA": 2}, {"DOA0": do}, params={"REGMODE_A": "NOREG"})
    z = n.lut("l", do)
    for i in range(4):  # the LUT drives 4 FFs: fanout 4, routed
        n.ff(f"r.x[{i}]", z)
    r = run(n)
    want = M.ebr_clk_to_out + R1 + 0.24 + R4 + M.ff_setup_di
    assert r["worst_reg_ns"] == pytest.approx(want, abs=0.01)
    assert r["failing_endpoints"] == 0  # 6.94 ns < 10 ns
    r = analyse(n.json(), clock_mhz=1000.0 / (want - 0.5), model=M)
    (g,) = r["groups"]
    assert (g["src"], g["dst"], g["endpoints"]) == ("mem", "r.x", 4)
    assert g["depth"] == {"lut": 1, "ebr": 1}
    # with the output register the clock-to-out is short
    n.cells["mem.0.1"]["parameters"]["REGMODE_A"] = "OUTREG"
    r = run(n)
    assert r["worst_reg_ns"] == pytest.approx(want - M.ebr_clk_to_out + M.ebr_clk_to_out_reg,
                                              abs=0.01)


def test_multiplier_combinational_or_registered():
    n = Net()
    a = n.bit()
    n.name("m.a", [a])
    n.ff("m.a", n.bit(), a)
    p = n.bit()
    n.cell("mul", "MULT18X18D", {"A0": a}, {"P0": p})
    n.ff("m.p", p)
    r = run(n, mhz=1000.0)
    want = 0.52 + R1 + M.mult_comb + R1
    assert r["worst_reg_ns"] == pytest.approx(want, abs=0.01)
    g = [g for g in r["groups"] if g["src"] == "m.a"][0]
    assert g["dst"] == "m.p" and g["depth"] == {"mult": 1}
    regs = {k: "CLK0" for k in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK",
                                "REG_PIPELINE_CLK")}
    n.cells["mul"]["parameters"] = regs
    r = run(n)
    # registered: Q -> A is one hop + setup; P -> FF is clock-to-out + one hop
    assert r["worst_reg_ns"] == pytest.approx(max(0.52 + R1 + M.mult_setup,
                                                  M.mult_clk_to_out + R1), abs=0.01)


def test_grouping_by_register_names():
    n = Net()
    qa0, qa1, qc = n.bit(), n.bit(), n.bit()
    n.name("u.a", [qa0, qa1])
    n.name("u.c$12", [qc])
    slow = n.lut("s3", n.lut("s2", n.lut("s1", qa0, qa1)))
    n.ff("v.b[0]", n.lut("x0", slow, qc), n.bit())
    n.ff("v.b[1]", n.lut("x1", slow), n.bit())
    n.ff("w.d", n.lut("x2", qc), n.bit())
    for q, nm in ((qa0, "u.a[0]"), (qa1, "u.a[1]"), (qc, "u.c$12")):
        n.ff(nm, n.bit(), q)
    # u.a -> 4 LUTs -> v.b (both bits); u.c -> 1 LUT -> w.d; fanouts: qa0/qa1 1, slow 2, qc 2
    r = analyse(n.json(), clock_mhz=1000.0 / 3.0, model=M)
    keys = {(g["src"], g["dst"]): g for g in r["groups"]}
    assert set(keys) == {("u.a", "v.b")}
    assert keys[("u.a", "v.b")]["endpoints"] == 2
    assert keys[("u.a", "v.b")]["depth"] == {"lut": 4}


def test_strip_group_and_errors(tmp_path):
    assert strip_group("chip.gemm.unit.scaler.s6_r[0]_TRELLIS_FF_Q_10_DI_L6MUX21_Z") == \
        "chip.gemm.unit.scaler.s6_r"
    assert strip_group("chip.mem_kv.1.2") == "chip.mem_kv"
    assert strip_group("chip.done$308") == "chip.done"
    with pytest.raises(SystemExit, match="no module"):
        analyse(Net().json(), top="nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read"):
        main([str(bad)])


def test_cli_writes_json(tmp_path, capsys):
    n = Net()
    q = n.bit()
    n.name("u.src", [q])
    n.ff("u.src", n.lut("l", n.lut("k", q)), q)
    f = tmp_path / "n.json"
    f.write_text(json.dumps(n.json()))
    out = tmp_path / "o.json"
    main([str(f), "--clock-mhz", "1000", "--json", str(out)])
    text = capsys.readouterr().out
    assert "estimated Fmax" in text and "u.src -> u.src" in text
    r = json.loads(out.read_text())
    assert r["groups"][0]["src"] == "u.src" and r["area"]


def _placed(cells_xy: dict) -> dict:
    """A nextpnr ``--write`` style placed design: cell name -> (x, y)."""
    cells = {name: {"type": "TRELLIS_COMB", "attributes": {"NEXTPNR_BEL": f"X{x}/Y{y}/SLICEA.K0"}}
             for name, (x, y) in cells_xy.items()}
    return {"modules": {"top": {"cells": cells}}}


def test_placement_gives_distance_routing():
    # src FF at (1, 1) -> LUT l1 at (4, 1) -> LUT l2 at (30, 21) -> dst FF beside it (packed)
    n = Net()
    q = n.bit()
    n.name("u.src", [q])
    z1 = n.lut("l1", q)
    z2 = n.lut("l2", z1)
    dq = n.ff("u.dst", z2)
    n.ff("u.src", dq, q)
    n.name("u.dst", [dq])
    pl = _placed({"u.src_TRELLIS_FF_Q": (1, 1), "l1": (4, 1), "\\l2": (30, 21),
                  "u.dst_TRELLIS_FF_Q": (30, 21)})
    r = analyse(n.json(), clock_mhz=1000.0, model=M, placement=pl)
    # predictDelay: unit * (fixed + 2 * (min(dx, 5) + min(dy, 5)) + max(dx - 5, 0) + max(dy - 5, 0))
    a1 = 0.1 * (6 + 2 * 3)  # dx 3, dy 0
    a2 = 0.1 * (6 + 2 * (5 + 5) + 21 + 15)  # dx 26, dy 20
    want = 0.52 + a1 + 0.24 + a2 + 0.24  # l2 -> dst: F -> DI in one slice, no route
    assert r["placed"] and r["placed_cells"] == 4
    assert r["worst_reg_ns"] == pytest.approx(want, abs=0.01)
    # without the placement: the fanout guess (1.0 ns a hop)
    assert analyse(n.json(), clock_mhz=1000.0, model=M)["worst_reg_ns"] == pytest.approx(
        0.52 + 2 * (R1 + 0.24), abs=0.01)
    with pytest.raises(SystemExit, match="no placed cell"):
        analyse(n.json(), model=M, placement={"modules": {"top": {"cells": {}}}})


def test_fanouts_list_logic_driven_nets_not_global_ones():
    """A reset built by a LUT reaching 600 flops is listed, with its LSR pins; the same reset
    through a DCCA (a global buffer) is not; a 499-sink net is under the threshold."""
    n = Net()
    a, b = n.ff("ra", 1), n.ff("rb", 3)
    n.name("ra", [a])
    n.name("rb", [b])
    rst = n.lut("rst_or", a, b)
    n.name("dp_rst", [rst])
    g = n.bit()
    n.cell("gbuf", "DCCA", {"CLKI": a}, {"CLKO": g})
    en = n.lut("en_lut", a)
    n.name("en", [en])
    for i in range(600):
        q = n.ff(f"d{i}", a)
        n.cells[f"d{i}_TRELLIS_FF_Q"]["connections"]["LSR"] = [rst]
        n.cells[f"d{i}_TRELLIS_FF_Q"]["port_directions"]["LSR"] = "input"
        n.cell(f"u{i}", "LUT4", {"A": g, "B": q}, {"Z": n.bit()})
    for i in range(499):
        n.cell(f"e{i}", "LUT4", {"A": en}, {"Z": n.bit()})
    f = run(n)["fanouts"]
    # ``a`` itself feeds the 600 flops' D, the LUTs, the DCCA: a flop-driven net of 603
    assert [(x["net"], x["driver"], x["fanout"], x["lsr"], x["ce"]) for x in f] == [
        ("ra", "TRELLIS_FF", 603, 0, 0), ("dp_rst", "LUT4", 600, 600, 0)]

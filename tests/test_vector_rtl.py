"""The vector unit's components (``hw/vector``) as Verilog under Verilator (cocotb), bit-exact
against ``sim.golden``: the RTL tier of ``tests/test_vector.py`` (which runs the same
components in amaranth.sim).

One Verilator build per component (``build/rtl/vec_<name>/``, its Verilog converted only when
``hw/`` changed), each running its tests of ``tests/rtl/tb_vec_units.py`` in one simulation:

- element-wise units, exhaustive over their INT8 domain (each test's docstring says what
  that means for a wide input): ``ResidualAdd`` (every INT8 pair, small and in the top
  byte: both saturations), ``PwlUnit`` (GELU and SiLU·mul: every table segment at its
  rounding offsets, every offset of five segments, every INT8 value raw and as an integer;
  slow: every input of both ranges), ``Rope`` (every INT8 pair, small and in the top byte);
- the quantizer's per-element path (every output code at every group exponent, ties on both
  sides, INT8 and A15) and its row scales (adversarial rows: all equal, one huge outlier,
  all at the minimum, the longest row, lengths not a multiple of the lane count);
- ``Normalizer`` (LayerNorm / RMSNorm) and ``Softmax`` (causal prefix) on the adversarial
  rows of ``tests/test_vector.py`` plus the longest rows and random lengths;
- ``SerialDivider`` and ``SerialIsqrt`` against Python's integers / ``golden._isqrt``;

with random valid gaps on every input stream and back-pressure bursts on every output. The
bigger sweeps are slow-marked. Random data: seed printed; replay with VEC_SEED=<seed>.
"""

import os

import amaranth
import numpy as np
import pytest

from sim.rtl import ROOT, run_cocotb, source_key

SEED = int(os.environ.get("VEC_SEED", np.random.SeedSequence().entropy % 2**32))

#: build -> the cocotb tests of tests/rtl/tb_vec_units.py it runs
TESTS = {
    "add": ["add_exhaustive"],
    "pwl": ["pwl_exhaustive"],
    "rope": ["rope_exhaustive"],
    "quant": ["quant_rows"],
    "norm": ["norm_rows"],
    "softmax": ["softmax_rows"],
    "div": ["div_operations"],
    "isqrt": ["isqrt_operations"],
}


def run_unit(unit: str, *, slow: bool = False, stall: float = 0.3, seed: int = SEED):
    """Build component ``unit`` (``tb_vec_units.COMPONENTS``) and run its tests."""
    from tests.rtl import tb_vec_units as tb

    print(f"VEC_SEED={seed}")
    name = f"vec_{unit}"
    top = tb.COMPONENTS[unit]
    key = source_key(unit, tb.P, amaranth.__version__,
                     paths=[ROOT / "hw", ROOT / "tests" / "rtl" / "tb_vec_units.py"])
    # only the ports are public: Verilator then evaluates just what changed each cycle
    comp = top()
    build = ROOT / "build" / "rtl" / name
    build.mkdir(parents=True, exist_ok=True)
    vlt = build / "public_ports.vlt"
    text = "`verilator_config\n" + "".join(
        f'public_flat_rw -module "{name}" -var "{port}"\n'
        for port in ("clk", "rst", *_port_names(comp)))
    if not vlt.exists() or vlt.read_text() != text:
        vlt.write_text(text)
    run_cocotb(top, name, "tests.rtl.tb_vec_units", name=name, testcase=TESTS[unit],
               design_key=key, build_args=["--no-public-flat-rw", str(vlt)],
               extra_env={"VEC_SEED": str(seed), "VEC_STALL": str(stall),
                          "VEC_SLOW": "1" if slow else "0"})


def _port_names(comp) -> list[str]:
    """The Verilog port names of a component: ``<member>__<field>`` for each stream."""
    out = []
    for name, m in comp.signature.members.items():
        if m.is_signature:
            out += [f"{name}__{f}" for f in m.signature.members]
        else:
            out.append(name)
    return out


@pytest.mark.parametrize("unit", list(TESTS))
def test_vector_unit_rtl(unit):
    run_unit(unit)


@pytest.mark.slow
@pytest.mark.parametrize("unit", list(TESTS))
def test_vector_unit_rtl_long(unit):
    """The long sweeps: every input of both PWL ranges, Rope pairs at 8 angles, A15 codes at
    every fourth exponent, 150-200 random rows per reduction, 2000 divisions."""
    run_unit(unit, slow=True, stall=0.2)

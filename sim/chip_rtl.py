"""Run micro-op programs on the chip's Verilog under Verilator (cocotb), in bulk.

:func:`run_jobs` is the RTL backend's entry point: it converts :class:`sim.chip_sim.ChipSim`
for ``params`` (cached in ``build/rtl/<name>/``), writes the off-chip memory image as a
``$readmemh`` file, and runs ``tests/rtl/tb_chip.py``, which for each :class:`Job` in turn
sets the memory model's configuration, pulses ``start``, waits for ``done`` (Verilator runs
freely meanwhile: Python is not called per cycle) and dumps the off-chip memory with
``$writememh``. The on-chip buffers keep their contents from one job to the next, as on the
real chip. Returns one :class:`JobResult` per job.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import amaranth
import numpy as np
from amaranth.lib.wiring import In

from hw.isa import Counter, Err
from hw.params import ChipParams
from sim.offchip import read_memh, write_memh
from sim.rtl import BUILD, ROOT, run_cocotb, source_key

__all__ = ["Job", "JobResult", "run_jobs", "CHIP_VERILATOR_ARGS"]

#: Verilator flags of the chip build, after ``--no-public-flat-rw`` (see :func:`run_jobs`).
#: Measured with ``scripts/bench_chip.py`` (T=16, one run): Verilator's default ``-Os``
#: ~170 k cycles/s, these ~225 k, for a build of ~90 s instead of ~60 s. The build is local,
#: so ``-march=native`` is safe.
CHIP_VERILATOR_ARGS: list[str] = ["-O3", "--x-assign", "fast", "--x-initial", "fast",
                                  "-CFLAGS", "-O2 -march=native"]


@dataclass
class Job:
    """One run of the chip: the program's bus-word address and length, the context
    position, the memory model's configuration and a cycle budget."""

    prog_addr: int
    prog_len: int
    pos_init: int = 0
    interval: int = 0
    jitter: int = 0
    jitter_max: int = 0
    seed: int = 1
    max_cycles: int = 1_000_000


@dataclass
class JobResult:
    error: Err
    error_pc: int
    pos: int
    counters: dict = field(default_factory=dict)  # Counter -> int
    offchip: np.ndarray | None = None              # uint8, the memory after the job
    range_error: bool = False
    timed_out: bool = False
    wall_s: float = 0.0                            # host seconds the simulation took


def run_jobs(params: ChipParams, image: np.ndarray, jobs: list[Job], *, name: str | None = None,
             waves: bool | None = None, vector: bool = False) -> list[JobResult]:
    """Run ``jobs`` one after the other on one Verilator simulation whose off-chip memory
    starts as ``image`` (uint8 bytes, at most ``offchip_kib`` KiB); ``vector``: the chip
    with its vector unit (``hw.chip.Chip(params, vector=True)``, a build of its own).

    The Verilator build is shared (``build/rtl/<name>/``, serialized by a lock); each call
    runs in its own ``build/rtl/<name>/runs/<pid>_*/``, removed afterwards unless the run
    failed or ``waves`` (or ``WAVES=1``) asked for a trace (``dump.vcd`` there)."""
    if waves is None:
        waves = os.environ.get("WAVES", "") not in ("", "0")
    from sim.chip_sim import STORAGE_VERILOG, ChipSim

    name = name or (f"chip_r{params.rows}c{params.cols}_b{params.offchip_bytes_per_cycle}"
                    f"{'_vec' if vector else ''}_{abs(hash(params)) % 10**8:08d}")
    build = BUILD / name
    build.mkdir(parents=True, exist_ok=True)
    B = params.offchip_bytes_per_cycle
    size = params.offchip_kib * 1024
    image = np.asarray(image, np.uint8)
    if image.size > size:
        raise ValueError(f"memory image of {image.size} bytes does not fit the {size}-byte "
                         f"off-chip memory (ChipParams.offchip_kib = {params.offchip_kib})")
    # each call runs in its own directory (several processes may share one build)
    runs = build / "runs"
    runs.mkdir(exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}_", dir=runs))
    full = np.zeros(size, np.uint8)
    full[:image.size] = image
    init = run / "offchip_init.hex"
    write_memh(init, full.tobytes(), B)
    spec = run / "jobs.json"
    spec.write_text(json.dumps([asdict(j) for j in jobs]))
    out = run / "results.json"
    # cocotb builds with --public-flat-rw, which lets VPI write any signal, so Verilator must
    # re-evaluate all combinational logic on every eval() (16 k cycles/s measured); only the
    # top-level ports need to be visible to tb_chip.
    vlt = build / "public_ports.vlt"
    top = ChipSim(params, vector=vector)
    vlt_text = "`verilator_config\n" + "".join(
        f'public_flat_{"rw" if m.flow == In else "rd"} -module "chip_sim" -var "{port}"\n'
        for port, m in top.signature.members.items())
    if not vlt.exists() or vlt.read_text() != vlt_text:
        vlt.write_text(vlt_text)
    # conversion to Verilog takes ~10 s: skipped while params and sources are unchanged
    key = source_key(params, vector, amaranth.__version__, paths=[
        ROOT / "hw", ROOT / "sim" / "chip_sim.py", ROOT / "sim" / "offchip.py",
        STORAGE_VERILOG])
    run_cocotb(top, "chip_sim", "tests.rtl.tb_chip", name=name, waves=waves, run_dir=run,
               sources=[STORAGE_VERILOG], design_key=key,
               build_args=["--no-public-flat-rw", str(vlt), *CHIP_VERILATOR_ARGS],
               plusargs=[f"+offchip_init={init}", f"+offchip_dump={run / 'offchip_dump.hex'}"],
               extra_env={"CHIP_JOBS": str(spec), "CHIP_RESULTS": str(out),
                          "CHIP_RUN": str(run)})
    results = []
    for i, r in enumerate(json.loads(out.read_text())):
        dump = read_memh(run / f"offchip_dump_{i}.hex", B)
        results.append(JobResult(
            error=Err(r["error"]), error_pc=r["error_pc"], pos=r["pos"],
            counters={Counter[k]: v for k, v in r["counters"].items()},
            offchip=dump.reshape(-1)[:size], range_error=bool(r["range_error"]),
            timed_out=bool(r["timed_out"]), wall_s=float(r["wall_s"])))
    if not waves:
        shutil.rmtree(run, ignore_errors=True)  # a failed run raised above: its files stay
    return results

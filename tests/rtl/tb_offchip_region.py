"""cocotb testbench: the region ports of the Verilog off-chip storage (``load``, ``save``,
``region_first``, ``region_last``; ``sim/offchip.py``) on ``OffchipMemory(storage="verilog")``.

Run from ``tests/test_rtl_session.py``, which passes ``+offchip_load``, ``+offchip_save`` and
``+offchip_dump`` paths and ``REGION_STEPS`` (JSON: ``[first, last]`` per step) and
``REGION_DIR``. Step ``i``: copy ``load_<i>.bin`` to the load path and pulse ``load`` (words
``first .. last``), pulse ``dump`` (the whole memory as hex, an independent path, copied to
``dump_<i>.hex``), pulse ``save`` (the region, copied to ``save_<i>.bin``). The pytest side
compares both files with its own model of the memory.
"""

import json
import os
import shutil
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge


@cocotb.test()
async def regions(dut):
    steps = json.loads(os.environ["REGION_STEPS"])
    run = Path(os.environ["REGION_DIR"])
    for name in ("rd_addr__valid", "rd_addr__payload", "wr__valid", "wr__payload",
                 "rd_data__ready", "cfg_interval", "cfg_jitter", "cfg_jitter_max", "cfg_seed",
                 "dump", "load", "save", "region_first", "region_last"):
        getattr(dut, name).value = 0
    dut.rst.value = 1
    Clock(dut.clk, 10, unit="ns").start()
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    for i, (first, last) in enumerate(steps):
        shutil.copy(run / f"load_{i}.bin", run / "load.bin")
        dut.region_first.value = first
        dut.region_last.value = last
        for port, out, keep in (("load", None, None), ("dump", "dump.hex", f"dump_{i}.hex"),
                                ("save", "save.bin", f"save_{i}.bin")):
            getattr(dut, port).value = 1
            await FallingEdge(dut.clk)  # the storage acts on the rising edge before
            getattr(dut, port).value = 0
            if out:
                shutil.copy(run / out, run / keep)

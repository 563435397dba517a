"""Run micro-op programs on the chip's Verilog under Verilator (cocotb), in bulk or
interactively.

:func:`run_jobs` runs a fixed list of jobs: it converts :class:`sim.chip_sim.ChipSim` for
``params`` (cached in ``build/rtl/<name>/``), writes the off-chip memory image as a
``$readmemh`` file, and runs ``tests/rtl/tb_chip.py``'s ``run_jobs`` test, which for each
:class:`Job` in turn sets the memory model's configuration, pulses ``start``, waits for
``done`` (Verilator runs freely meanwhile: Python is not called per cycle) and dumps the
off-chip memory with ``$writememh``. The on-chip buffers keep their contents from one job to
the next, as on the real chip. Returns one :class:`JobResult` per job.

:class:`RtlSession` drives the same simulation the way a host drives a board: one Verilator
process (same build) stays alive while the host writes and reads regions of the off-chip
memory and runs jobs, one call at a time::

    with RtlSession(params, image) as chip:       # image loaded in bulk ($fread)
        chip.write(in_addr, x_bytes)              # a few KB of inputs
        r = chip.run(prog_addr, prog_len, pos_init=pos)
        logits = chip.read(out_addr, n_words)     # uint8, n_words * bus bytes

Transport: the cocotb test (``tb_chip.session``) connects to a Unix socket of the host and
serves one JSON command at a time; region data go through two binary files in the run
directory, moved by the storage's ``load`` / ``save`` ports (``$fread`` / ``$fwrite``, see
:mod:`sim.offchip`), so no Python loop touches words. Every wait of the host has a timeout;
a dead or silent simulator raises :class:`RtlSessionError` naming what happened and the log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import amaranth
import numpy as np
from amaranth.lib.wiring import In

from hw.isa import Counter, Err
from hw.params import ChipParams
from sim.offchip import read_memh, read_region_bin, write_memh, write_region_bin
from sim.rtl import BUILD, ROOT, run_cocotb, source_key

__all__ = ["Job", "JobResult", "run_jobs", "CHIP_VERILATOR_ARGS", "RtlSession",
           "RtlSessionError", "ChipTimeout"]

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


def _job_result(r: dict, offchip: np.ndarray | None = None) -> JobResult:
    """A :class:`JobResult` from ``tb_chip``'s JSON of a job."""
    return JobResult(
        error=Err(r["error"]), error_pc=r["error_pc"], pos=r["pos"],
        counters={Counter[k]: v for k, v in r["counters"].items()}, offchip=offchip,
        range_error=bool(r["range_error"]), timed_out=bool(r["timed_out"]),
        wall_s=float(r["wall_s"]))


def _check_image(params: ChipParams, image) -> np.ndarray:
    size = params.offchip_kib * 1024
    image = np.asarray(image, np.uint8).reshape(-1)
    if image.size > size:
        raise ValueError(f"memory image of {image.size} bytes does not fit the {size}-byte "
                         f"off-chip memory (ChipParams.offchip_kib = {params.offchip_kib})")
    return image


def _chip_build(params: ChipParams, vector: bool, name: str | None) -> tuple[Path, dict]:
    """The build directory of ``ChipSim(params, vector=vector)`` and the
    :func:`sim.rtl.run_cocotb` arguments that build (or reuse) it: one build per
    configuration, shared by :func:`run_jobs` and :class:`RtlSession`."""
    from sim.chip_sim import STORAGE_VERILOG, ChipSim

    name = name or (f"chip_r{params.rows}c{params.cols}_b{params.offchip_bytes_per_cycle}"
                    f"{'_vec' if vector else ''}_{abs(hash(params)) % 10**8:08d}")
    build = BUILD / name
    build.mkdir(parents=True, exist_ok=True)
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
    return build, dict(design=top, toplevel="chip_sim", test_module="tests.rtl.tb_chip",
                       name=name, sources=[STORAGE_VERILOG], design_key=key,
                       build_args=["--no-public-flat-rw", str(vlt), *CHIP_VERILATOR_ARGS])


def _new_run_dir(build: Path) -> Path:
    """A fresh ``build/rtl/<name>/runs/<pid>_*/`` (several processes may share one build)."""
    runs = build / "runs"
    runs.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}_", dir=runs))


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
    B = params.offchip_bytes_per_cycle
    size = params.offchip_kib * 1024
    image = _check_image(params, image)
    build, build_kw = _chip_build(params, vector, name)
    run = _new_run_dir(build)
    init = run / "offchip_init.hex"
    write_memh(init, image, B)  # only the image: the words after it start as 0
    spec = run / "jobs.json"
    spec.write_text(json.dumps([asdict(j) for j in jobs]))
    out = run / "results.json"
    run_cocotb(**build_kw, testcase="run_jobs", waves=waves, run_dir=run,
               plusargs=[f"+offchip_init={init}", f"+offchip_dump={run / 'offchip_dump.hex'}"],
               extra_env={"CHIP_JOBS": str(spec), "CHIP_RESULTS": str(out),
                          "CHIP_RUN": str(run)})
    results = []
    for i, r in enumerate(json.loads(out.read_text())):
        dump = read_memh(run / f"offchip_dump_{i}.hex", B)
        results.append(_job_result(r, dump.reshape(-1)[:size]))
    if not waves:
        shutil.rmtree(run, ignore_errors=True)  # a failed run raised above: its files stay
    return results


# -- an interactive session ------------------------------------------------------------------


class RtlSessionError(RuntimeError):
    """The simulator of an :class:`RtlSession` failed: it exited, did not answer in time
    (it is then killed), or refused a command. The message names the log."""


class ChipTimeout(RtlSessionError):
    """A job ran out of its ``max_cycles``: ``result`` holds its status and counters. The
    chip was stopped by a reset (buffer contents undefined); the session stays usable."""

    def __init__(self, message: str, result: JobResult):
        super().__init__(message)
        self.result = result


class RtlSession:
    """One live Verilator simulation of ``ChipSim(params, vector=vector)`` that a host
    drives between runs (module docstring: usage and transport).

    The off-chip memory starts as ``image`` (uint8 bytes, at most ``offchip_kib`` KiB;
    the rest 0), loaded in bulk (:attr:`load_s` seconds). Same build as :func:`run_jobs`
    (``build/rtl/<name>/``, built here if missing: ``start_timeout_s`` covers it); the
    session runs in its own ``build/rtl/<name>/runs/<pid>_*/`` (``sim.log``; ``dump.vcd``
    with ``waves`` or ``WAVES=1``), removed on :meth:`close` unless it failed or traced.

    Every wait has a timeout: ``io_timeout_s`` for a region access (plus 1 s per 20 MB),
    :meth:`run`'s ``timeout_s`` (default from ``max_cycles``) for a job. A simulator that
    exits, or does not answer in time (it is killed), raises :class:`RtlSessionError` and
    the session is closed; a job that runs out of cycles raises :class:`ChipTimeout` and the
    session stays usable, as after a job ending with a chip error (``JobResult.error``).
    """

    #: Seconds per simulated cycle assumed for a run's default timeout: 10 k cycles/s, far
    #: below the ~200 k of the chip builds (tracing is slower, but not measured here).
    SECONDS_PER_CYCLE = 1e-4

    def __init__(self, params: ChipParams, image=None, *, vector: bool = False,
                 name: str | None = None, waves: bool | None = None,
                 start_timeout_s: float = 1800.0, io_timeout_s: float = 60.0):
        if waves is None:
            waves = os.environ.get("WAVES", "") not in ("", "0")
        self.params = params
        self.bus_bytes = B = params.offchip_bytes_per_cycle
        #: Bus words of the off-chip memory.
        self.words = params.offchip_kib * 1024 // B
        self.waves = waves
        self.io_timeout_s = io_timeout_s
        image = _check_image(params, np.zeros(0, np.uint8) if image is None else image)
        build, build_kw = _chip_build(params, vector, name)
        self.run_dir = _new_run_dir(build)
        #: The simulation's log (cocotb and Verilator output).
        self.log = self.run_dir / "sim.log"
        self._load = self.run_dir / "region_load.bin"
        self._save = self.run_dir / "region_save.bin"
        self._failed = False
        self._closed = False
        self.pid: int | None = None
        self._conn: socket.socket | None = None
        self._buf = b""
        # a short private folder: a Unix socket path must stay under ~100 characters
        self._sock_dir = Path(tempfile.mkdtemp(prefix="chip_session_"))
        sock_path = self._sock_dir / "s"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(sock_path))
        self._listener.listen(1)
        self._sim_error: BaseException | None = None

        def simulate():
            try:
                run_cocotb(**build_kw, testcase="session", waves=waves, run_dir=self.run_dir,
                           plusargs=[f"+offchip_load={self._load}",
                                     f"+offchip_save={self._save}"],
                           extra_env={"CHIP_SESSION": str(sock_path)})
            except BaseException as exc:  # reported by the host's next wait
                self._sim_error = exc

        # a daemon thread: an interpreter exiting without close() closes the socket, and the
        # simulator ends on the end of the connection
        self._thread = threading.Thread(target=simulate, name="RtlSession", daemon=True)
        self._thread.start()
        try:
            self._connect(start_timeout_s)
            t0 = time.perf_counter()
            self.write(0, image)
            #: Seconds the initial image took to load (host file + $fread).
            self.load_s = time.perf_counter() - t0
        except BaseException:
            self._abort()
            raise

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> RtlSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the host's operations ------------------------------------------------------------

    def write(self, bus_addr: int, data) -> None:
        """Write ``data`` (bytes or uint8 array) into off-chip memory from bus word
        ``bus_addr`` on. A last partial bus word keeps its other bytes (read-modify-write)."""
        raw = (np.frombuffer(bytes(data), np.uint8) if isinstance(data, (bytes, bytearray,
               memoryview)) else np.asarray(data, np.uint8).reshape(-1))
        B = self.bus_bytes
        n = -(-raw.size // B)
        self._check_region("write", bus_addr, n)
        if n == 0:
            return
        if raw.size % B:
            last = self.read(bus_addr + n - 1, 1)
            raw = np.concatenate([raw, last[raw.size % B:]])
        write_region_bin(self._load, raw, B)
        self._command({"op": "write", "first": bus_addr, "last": bus_addr + n - 1},
                      self.io_timeout_s + raw.size / 20e6, f"writing {n} bus words at {bus_addr}")

    def read(self, bus_addr: int, n_bus_words: int) -> np.ndarray:
        """Bus words ``bus_addr .. bus_addr + n_bus_words - 1`` (uint8, flat)."""
        self._check_region("read", bus_addr, n_bus_words)
        if n_bus_words == 0:
            return np.zeros(0, np.uint8)
        self._command({"op": "read", "first": bus_addr, "last": bus_addr + n_bus_words - 1},
                      self.io_timeout_s + n_bus_words * self.bus_bytes / 20e6,
                      f"reading {n_bus_words} bus words at {bus_addr}")
        return read_region_bin(self._save, self.bus_bytes, n_bus_words)

    # the names of sim.isa_sim.IsaSim, so host code can drive either
    write_offchip = write
    read_offchip = read

    def run(self, prog_addr: int, prog_len: int, pos_init: int = 0, *, interval: int = 0,
            jitter: int = 0, jitter_max: int = 0, seed: int = 1, max_cycles: int = 1_000_000,
            timeout_s: float | None = None) -> JobResult:
        """Run the ``prog_len`` micro-ops at bus word ``prog_addr`` (the fields of
        :class:`Job`) to ``done``; the on-chip buffers carry over from the run before.
        Returns the :class:`JobResult` without ``offchip`` (read what you need). A chip
        error is the result's ``error``; ``max_cycles`` exceeded raises :class:`ChipTimeout`;
        ``timeout_s`` (default ``io_timeout_s + max_cycles * SECONDS_PER_CYCLE``) bounds the
        host's wait."""
        job = Job(prog_addr, prog_len, pos_init, interval, jitter, jitter_max, seed,
                  max_cycles)
        return self.run_job(job, timeout_s=timeout_s)

    def run_job(self, job: Job, *, timeout_s: float | None = None) -> JobResult:
        """:meth:`run` of a :class:`Job`."""
        if timeout_s is None:
            timeout_s = self.io_timeout_s + job.max_cycles * self.SECONDS_PER_CYCLE
        what = f"running the job at bus word {job.prog_addr} ({job.prog_len} micro-ops)"
        r = self._command({"op": "run", **asdict(job)}, timeout_s, what)
        res = _job_result(r)
        if res.timed_out:
            raise ChipTimeout(
                f"RtlSession: the chip did not finish {what} within max_cycles = "
                f"{job.max_cycles} ({res.counters[Counter.UOPS]} micro-ops done); it was "
                f"reset (its buffers are now undefined); log: {self.log}", res)
        return res

    def close(self) -> None:
        """End the simulation (waits for it at most ``io_timeout_s``, then kills it)."""
        if self._closed:
            return
        try:
            if self._conn is not None and not self._failed:
                self._command({"op": "close"}, self.io_timeout_s, "closing")
                self._thread.join(self.io_timeout_s)
        finally:
            self._abort()
        if self._sim_error is not None and not self._failed:
            self._failed = True
            raise RtlSessionError(
                f"RtlSession: the simulation ended with an error: {self._sim_error}; "
                f"log: {self.log}")
        if not self._failed and not self.waves:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        elif self.waves:
            print(f"waveform: {self.run_dir / 'dump.vcd'}")

    # -- plumbing -------------------------------------------------------------------------

    def _check_region(self, what: str, bus_addr: int, n: int) -> None:
        if self._closed:
            raise RtlSessionError(f"RtlSession.{what}: the session is closed")
        if bus_addr < 0 or n < 0 or bus_addr + n > self.words:
            raise ValueError(f"RtlSession.{what}: bus words {bus_addr}..{bus_addr + n - 1} "
                             f"are not all in the {self.words}-word off-chip memory")

    def _connect(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self._listener.settimeout(0.2)
        while self._conn is None:
            try:
                self._conn, _ = self._listener.accept()
            except TimeoutError:
                self._check_alive("starting (building the model, if it was not built)")
                if time.monotonic() > deadline:
                    self._fail(f"the simulator did not connect within {timeout_s:.0f} s")
        self._conn.settimeout(0.2)
        hello = self._recv(deadline, "starting")
        self.pid = int(hello["hello"])

    def _command(self, cmd: dict, timeout_s: float, what: str) -> dict:
        if self._closed or self._conn is None:
            raise RtlSessionError(f"RtlSession: {what}: the session is closed")
        try:
            self._conn.sendall(json.dumps(cmd).encode() + b"\n")
        except OSError as exc:
            self._check_alive(what)
            self._fail(f"{what}: cannot reach the simulator ({exc})")
        answer = self._recv(time.monotonic() + timeout_s, what)
        if not answer.get("ok"):
            raise RtlSessionError(f"RtlSession: {what}: the testbench refused the command: "
                                  f"{answer.get('error')}; log: {self.log}")
        return answer

    def _recv(self, deadline: float, what: str) -> dict:
        while b"\n" not in self._buf:
            try:
                chunk = self._conn.recv(1 << 16)
            except TimeoutError:
                self._check_alive(what)
                if time.monotonic() > deadline:
                    self._fail(f"the simulator did not answer while {what} (timeout); "
                               f"killed it (pid {self.pid})")
                continue
            except OSError as exc:
                chunk, err = b"", exc
            else:
                err = None
            if not chunk:
                self._thread.join(5.0)  # let run_cocotb report why the simulator ended
                self._fail(f"the simulator exited while {what}"
                           + (f" ({err})" if err else ""))
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _check_alive(self, what: str) -> None:
        if not self._thread.is_alive():
            self._fail(f"the simulator exited while {what}")

    def _fail(self, why: str):
        self._failed = True
        self._abort()
        detail = f": {self._sim_error}" if self._sim_error is not None else ""
        tail = ""
        if self.log.exists():
            lines = self.log.read_text(errors="replace").splitlines()
            tail = "\n" + "\n".join(lines[-15:])
        raise RtlSessionError(f"RtlSession: {why}{detail}; log: {self.log}{tail}")

    def _abort(self) -> None:
        """Close the connection; kill the simulator if it is still running."""
        if self._closed:
            return
        self._closed = True
        for s in (self._conn, self._listener):
            if s is not None:
                s.close()
        if self._thread.is_alive():
            self._thread.join(2.0 if not self._failed else 0.5)
        if self._thread.is_alive() and self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._thread.join(10.0)
        shutil.rmtree(self._sock_dir, ignore_errors=True)

"""The board top (``hw.board_top.LinkBoardTop`` for the ULX3S, UART included) under
Verilator, driven by the runtime's real board backend (``sw.board.BoardDevice``) through a
pseudo-terminal (``sim/board_rtl.py``): every byte crosses the board's UART bit by bit.

Default suite (a small chip without the vector unit; its build is cached, ~2.5 min cold):

- a weight GEMM program: the off-chip memory after the run (the host's image, which the
  chip reads and writes over the link) equals the ISA simulator's and holds the golden GEMM;
  the counters the ISA simulator counts agree;
- a program that raises a chip error: the ISA simulator's error and pc, and the runtime's
  ``ChipError`` names them and the micro-op;
- frames corrupted on the way to the board (a flipped bit in a DATA frame, a START with a
  wrong length, a START cut short): each is a ``DeviceError`` naming the board's NAK reason;
  nothing of it ran, and the next run is correct;
- a corrupted frame from the board is a ``DeviceError`` (``FrameParser``).

Slow (``make test-board``): one compiled SmolLM2-135M layer (a decode step) on the ULX3S
board top of the bitstream (``CHIP_85F`` with its vector unit), bit-exact with the golden
layer; prints the cycles, the wall time and the bytes over the link. On ``CHIP_85F`` the
compiler streams the layer (its KV cache and hidden states in off-chip memory, the step in
several programs: ``sw/compiler.py``), so every byte of it crosses the simulated UART.
``LAYER_BOARD`` (CHIP_85F with the ACC, PRM and micro-op memories a resident layer needs, a
simulation-only configuration) is what ``tests/test_chip_85f_rtl.py`` runs.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hw.board_top import CHIP_85F  # noqa: E402
from hw.isa import Buf, Counter, Err, LinkFrame, Op, encode, link_crc  # noqa: E402
from sim import golden as G  # noqa: E402
from sim.board_rtl import BoardRtl  # noqa: E402
from sim.isa_sim import UNTIMED_COUNTERS, IsaSim  # noqa: E402
from sw.board import BoardDevice, FrameParser, encode_frame  # noqa: E402
from sw.compiler import Program  # noqa: E402
from sw.programs import Image, weight_gemm  # noqa: E402
from sw.quantize import random_gemm  # noqa: E402
from sw.runtime import ChipError, DeviceError  # noqa: E402

SEED = int(os.environ.get("BOARD_SEED", np.random.SeedSequence().entropy % 2**32))
#: The small chip of tests/test_link.py.
from tests.test_link import SMALL  # noqa: E402

B = SMALL.offchip_bytes_per_cycle
#: The layer run's configuration (module docstring): a resident SmolLM2 decode step needs
#: 70 KiB of ACC, 292 PRM entries (16 x 8 grid) and 3,292 micro-ops on the 16 x 4 grid.
LAYER_BOARD = replace(CHIP_85F, acc_sram_kib=72, prm_entries=512, uop_depth=4096,
                      offchip_kib=8192)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(SEED)
    print(f"\nboard RTL tests: seed {SEED} (replay with BOARD_SEED={SEED})")
    img = Image(SMALL)
    x, qw, bias = random_gemm(rng, 3, 64, 16, 4)
    x8, xs = G.quantize_rows(x)
    wg = weight_gemm(SMALL, img, x8, xs, qw, bias)
    gemm = img.put_program(wg.prog)
    bad_words = [encode(Op.LOAD, buf=Buf.ACT, sram=0, words=1, off=0), encode(Op.NOP),
                 encode(Op.LOAD, buf=Buf.WGT, sram=4000, words=8, off=0), encode(Op.HALT)]
    bad = img.put_program(bad_words)
    image = img.mem[:img.next * B].copy()
    isa = IsaSim(SMALL, image.copy(), vector=False)
    isa.boot(*gemm, 0)
    assert isa.run() == Err.NONE
    want = dict(mem=isa.read_offchip(0, img.next), counters=dict(isa.counters),
                gemm=G.gemm(x8, xs, qw, bias))
    isa.boot(*bad, 0)
    want["err"] = (isa.run(), isa.error_pc)
    return dict(image=image, n=img.next, wg=wg, gemm=gemm, bad=bad, bad_words=bad_words,
                want=want)


@pytest.fixture(scope="module")
def board():
    with BoardRtl(SMALL, vector=False) as b:
        yield b


def _device(board, problem, **kw):
    return BoardDevice(SMALL, problem["image"], port=board.port, vector=False, timeout_s=60,
                       **kw)


def _check_gemm(dev, problem):
    r = dev.run(*problem["gemm"], 0)
    assert r.error == Err.NONE and not r.timed_out
    got = dev.read(0, problem["n"])
    assert np.array_equal(got, problem["want"]["mem"])
    assert np.array_equal(problem["wg"].result(got), problem["want"]["gemm"])
    for c in UNTIMED_COUNTERS:
        assert r.counters[c] == problem["want"]["counters"][c], c.name
    return r


def test_program_and_chip_error(board, problem):
    dev = _device(board, problem)
    r = _check_gemm(dev, problem)
    print(f"\nGEMM through the simulated UART: {r.cycles} chip cycles, {r.bytes_in} bytes in, "
          f"{r.bytes_out} out, {r.wall_s:.2f} s")
    r = dev.run(*problem["bad"], 0)
    assert (r.error, r.error_pc) == problem["want"]["err"]
    prog = Program("bad_load", 1, problem["bad_words"], problem["bad"][0], [], {}, 0, 0, 0, 0,
                   False, False)
    msg = str(ChipError(prog, r.error, r.error_pc))
    assert "SRAM_RANGE at micro-op 2 of bad_load: LOAD" in msg and "sram=4000" in msg, msg
    dev.close()


def _refresh_crc(frame: bytearray) -> bytes:
    frame[-2:] = link_crc(bytes(frame[1:-2])).to_bytes(2, "little")
    return bytes(frame)


def test_corrupted_frames_are_reported(board, problem):
    state = {"data": 0}

    def flip_third_data(ftype, frame):
        if ftype == LinkFrame.DATA:
            state["data"] += 1
            if state["data"] == 3:
                frame = bytearray(frame)
                frame[20] ^= 0x04
        return bytes(frame)

    def start_length(ftype, frame):
        if ftype == LinkFrame.START:  # a 9-byte START, with a CRC that matches it
            frame = bytearray(frame[:-2]) + b"\x00" + b"\x00\x00"
            frame[2] = 9
            frame = _refresh_crc(frame)
        return bytes(frame)

    def start_cut(ftype, frame):
        return frame[:7] if ftype == LinkFrame.START else frame

    dev = _device(board, problem, tamper=flip_third_data)
    with pytest.raises(DeviceError, match=r"rejected a DATA frame.*CHECKSUM.*nothing of it"):
        dev.run(*problem["gemm"], 0)
    for tamper, reason in ((start_length, "LENGTH"), (start_cut, "TRUNCATED")):
        dev.tamper = tamper
        with pytest.raises(DeviceError, match=rf"rejected a START frame.*{reason}"):
            dev.run(*problem["gemm"], 0)
        assert dev.status()["running"] == 0
    dev.tamper = None
    dev.mem[:] = 0
    dev.write(0, problem["image"])
    _check_gemm(dev, problem)
    assert dev.counters()[Counter.UOPS] == problem["want"]["counters"][Counter.UOPS]
    dev.close()


def test_corrupted_frame_from_board():
    """A frame from the board with a bad CRC, or an impossible length, is a DeviceError."""
    good = encode_frame(LinkFrame.ACK, b"\x02")
    bad = bytearray(good)
    bad[4] ^= 1
    p = FrameParser(300)
    p.feed(b"\x00\x13" + bytes(bad))
    with pytest.raises(DeviceError, match="corrupted ACK frame"):
        p.next()
    p.feed(bytes([0xA5, LinkFrame.DONE, 0xFF, 0xFF]))
    with pytest.raises(DeviceError, match="corrupted length"):
        p.next()
    p = FrameParser(300)
    p.feed(good)
    assert p.next() == (LinkFrame.ACK, b"\x02")


@pytest.mark.slow
def test_smollm2_layer_on_board():
    """One SmolLM2-135M layer (a decode step at position 0) compiled for CHIP_85F
    (streamed), run on the ULX3S board top with the vector unit through the simulated UART:
    the off-chip memory after the run equals the chip's Verilog run without the link
    (``sim.devices.RtlDevice``: the link is transparent), and the output is bit-exact with
    the golden layer.

    Its first runs found the chip's RTL on LAYER_BOARD (CHIP_85F, then with a 16 x 8 grid,
    2-lane vector unit), with or without the link, differing from the ISA simulator and
    golden (which agree); the vector unit's writer was fixed since (commit f4c74ab)."""
    import time

    from sim.golden_models import SmolLM2Golden
    from sw.compiler import SmolLM2Compiled
    from sw.models import load_smollm2
    from sw.quantize import quantize_smollm2
    from sw.runtime import Runner
    from sw.tokenizer import SmolLM2Tokenizer

    model = load_smollm2()
    m = quantize_smollm2(model, positions=4)
    tok = SmolLM2Tokenizer(model)
    ids = tok.encode("Paris")[:1]
    emb = G.embed(np.asarray(ids), m.token_embd)
    gold = SmolLM2Golden(m)
    cache = gold.new_cache(capacity=4)
    c = SmolLM2Compiled(m, CHIP_85F, cap=4, chunk=1, layers=1, head=False)
    assert c.p == CHIP_85F, "the layer must run on the bitstream's configuration"
    prog = c.program(1)
    want = gold.layer(0, emb, cache, 0)
    t0 = time.monotonic()
    with BoardRtl(c.p, vector=True) as brd:
        print(f"\nboard build {brd.build_s:.0f} s")
        dev = BoardDevice(c.p, c.image_bytes(), port=brd.port, timeout_s=120,
                          progress=True, progress_s=60)
        got, st = Runner(c, dev, G.embed).step(prog, emb, 0)
        r_bytes = (dev.bytes_in, dev.bytes_out)
        board_mem = dev.read(0, c.img.next)
        dev.close()
    wall = time.monotonic() - t0
    print(f"SmolLM2 layer (decode at pos 0, {prog.length} micro-ops) on the ULX3S board top: "
          f"{st.cycles} chip cycles, {brd.cycles} simulated cycles, {st.wall_s:.0f} s run, "
          f"{wall:.0f} s in all; link bytes from the board {r_bytes[0]}, to it {r_bytes[1]}")
    from sim.devices import open_sim_device

    with open_sim_device("rtl", c) as rtl:
        got_rtl, st_rtl = Runner(c, rtl, G.embed).step(prog, emb, 0)
        rtl_mem = rtl.read(0, c.img.next)
    print(f"the same program on RtlDevice (no link): {st_rtl.cycles} cycles")
    assert np.array_equal(board_mem, rtl_mem) and np.array_equal(got, got_rtl)
    assert np.array_equal(got, want), "the chip's RTL differs from golden (docstring)"

"""A board top for synthesis: the systolic grid fed by LFSRs, its outputs folded onto the LEDs.

Purpose: measure what the grid costs on an FPGA (Fmax, LUTs, FFs, DSPs, EBRs) with nothing
optimized away, without the rest of the chip. ``scripts/synth.py`` builds it.

- Every field of ``w_row`` and ``a_row`` comes from its own 32-bit LFSR (own seed), and so do
  the ``valid`` bits and ``o_row.ready``: all three streams stall at random. A stream's LFSRs
  step only when nothing is offered or the offer is taken, so a payload holds while ``valid``
  waits for ``ready`` (the stream rule).
- Every bit of ``o_row.payload`` goes into a 32-bit multiple-input signature register (MISR):
  the payload is XOR-folded to 32 bits and registered, then the MISR shifts it in. Its parity
  (registered) drives LED 0, so every PE, every psum bit and the FIFO are in the fan-in of a pin
  and synthesis can drop none of them. The other LEDs show further signatures (see
  :data:`LED_SIGNALS`).
- Clock: the board's default clock. On ECP5 boards whose clock differs from
  ``params.clock_mhz`` an EHXPLLL makes the grid clock (ULX3S: 25 -> 100 MHz; OrangeCrab:
  48 -> 100 MHz); nextpnr derives the output frequency from the PLL dividers and the input pin
  constraint, so it reports Fmax against ``params.clock_mhz``. ECPIX-5 (100 MHz) and iCEBreaker
  (12 MHz) run the grid on the board clock directly.
- Without a platform (``amaranth.sim``) there is no PLL and no pin: the LED values are the
  ``leds`` signal.
"""

from dataclasses import dataclass

from amaranth.build import ResourceError
from amaranth.hdl import (
    Cat,
    ClockDomain,
    ClockSignal,
    Const,
    Elaboratable,
    Instance,
    Module,
    Signal,
)
from amaranth.lib import io
from amaranth_boards.ecpix5 import ECPIX585Platform
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_85FPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from .grid import SystolicArray
from .params import ChipParams

__all__ = ["Board", "BOARDS", "Lfsr", "GridBoardTop", "ecp5_pll_dividers", "LED_SIGNALS"]


@dataclass(frozen=True)
class Board:
    """A board the grid is built for: its platform class, FPGA family and default grid."""

    name: str
    platform: type
    family: str  # "ecp5" or "ice40"
    params: ChipParams


BOARDS = {b.name: b for b in [
    Board("ulx3s-85f", ULX3S_85F_Platform, "ecp5", ChipParams()),
    Board("orangecrab-85f", OrangeCrabR0_2_85FPlatform, "ecp5", ChipParams()),
    Board("ecpix5-85", ECPIX585Platform, "ecp5", ChipParams()),
    # UP5K: 8 SB_MAC16, 5280 LCs; a 2 x 4 grid (4 PEs) fits, on the 12 MHz board clock.
    Board("icebreaker", ICEBreakerPlatform, "ice40", ChipParams(rows=2, cols=4, clock_mhz=12)),
]}

# What each LED shows, in order (a board with fewer LEDs shows the first ones).
LED_SIGNALS = ["out_parity", "heartbeat", "busy", "locked", "misr_msb", "a_rows_msb",
               "w_rows_msb", "o_rows_msb"]


class Lfsr(Elaboratable):
    """A 32-bit Galois LFSR (x^32 + x^22 + x^2 + x + 1, maximal length) that steps when ``en``.

    ``value`` is the current state; it starts at ``seed`` (any non-zero value).
    """

    TAPS = 0x80200003

    def __init__(self, seed: int):
        if not 0 < seed < 2**32:
            raise ValueError(f"Lfsr seed must be in 1..2**32-1, got {seed}")
        self.value = Signal(32, init=seed)
        self.en = Signal(init=1)

    def elaborate(self, platform):
        m = Module()
        step = Signal(32)
        m.d.comb += step.eq((self.value >> 1) ^ (self.value[0].replicate(32) & self.TAPS))
        with m.If(self.en):
            m.d.sync += self.value.eq(step)
        return m


def ecp5_pll_dividers(f_in_mhz: float, f_out_mhz: float) -> dict:
    """EHXPLLL dividers for ``f_out`` from ``f_in`` with feedback from CLKOP, as ecppll picks.

    Constraints (prjtrellis ecppll): CLKI_DIV 1..128, CLKFB_DIV 1..80, CLKOP_DIV 1..128,
    PFD = f_in / CLKI_DIV in 3.125..400 MHz, VCO = f_out * CLKOP_DIV in 400..800 MHz.
    Raises ValueError if no setting lands within 0.1 % of ``f_out``.
    """
    best = None
    for refdiv in range(1, 129):
        pfd = f_in_mhz / refdiv
        if not 3.125 <= pfd <= 400:
            continue
        for fbdiv in range(1, 81):
            fout = pfd * fbdiv
            for outdiv in range(1, 129):
                vco = fout * outdiv
                if not 400 <= vco <= 800:
                    continue
                err = abs(fout - f_out_mhz)
                # Prefer the exact frequency, then a VCO near the middle of its range.
                key = (err, abs(vco - 600))
                if best is None or key < best[0]:
                    best = (key, refdiv, fbdiv, outdiv, fout)
    if best is None or best[0][0] > f_out_mhz * 1e-3:
        raise ValueError(f"no ECP5 PLL setting makes {f_out_mhz} MHz from {f_in_mhz} MHz")
    _, refdiv, fbdiv, outdiv, fout = best
    return {"CLKI_DIV": refdiv, "CLKFB_DIV": fbdiv, "CLKOP_DIV": outdiv,
            "CLKOP_CPHASE": (outdiv - 1) // 2, "f_out_mhz": fout}


class GridBoardTop(Elaboratable):
    """:class:`SystolicArray` (``params``) on ``board`` (a key of :data:`BOARDS`), LFSR-driven.

    Attributes for simulation and tests: ``array`` (the grid), ``leds`` (LED values, in the
    order of :data:`LED_SIGNALS`), ``misr`` (the output signature).
    """

    def __init__(self, params: ChipParams, board: str):
        if board not in BOARDS:
            raise ValueError(f"unknown board {board!r}; known: {', '.join(BOARDS)}")
        self.params = params
        self.board = BOARDS[board]
        self.array = SystolicArray(params)
        self.leds = Signal(len(LED_SIGNALS))
        self.misr = Signal(32)

    # -- clocking ---------------------------------------------------------------------------

    def _clock(self, m, platform) -> Signal:
        """Make the ``sync`` domain at ``params.clock_mhz``; returns the 'clock ready' bit."""
        board_mhz = platform.default_clk_frequency / 1e6
        target = self.params.clock_mhz
        if abs(board_mhz - target) < 1e-6:
            return Const(1)  # the platform makes ``sync`` from the board clock and its reset
        if self.board.family != "ecp5":
            raise ValueError(f"{self.board.name}: the grid clock ({target} MHz) must equal the "
                             f"board clock ({board_mhz:g} MHz); there is no PLL path for "
                             f"{self.board.family}")
        div = ecp5_pll_dividers(board_mhz, target)
        m.submodules.clk_buf = clk_buf = io.Buffer(
            "i", platform.request(platform.default_clk, dir="-"))
        clk = Signal()
        locked = Signal()
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{board_mhz:g}",
            a_FREQUENCY_PIN_CLKOP=f"{div['f_out_mhz']:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
            p_CLKI_DIV=div["CLKI_DIV"], p_CLKFB_DIV=div["CLKFB_DIV"],
            p_CLKOP_DIV=div["CLKOP_DIV"], p_CLKOP_CPHASE=div["CLKOP_CPHASE"], p_CLKOP_FPHASE=0,
            p_FEEDBK_PATH="CLKOP",
            i_CLKI=clk_buf.i, i_CLKFB=clk, i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0,
            i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clk, o_LOCK=locked,
        )
        # Reset as the platform does it for the board clock: no reset nets on the flops (every
        # flop takes its init value from the global set/reset), GSR held until the PLL locks
        # and released synchronously to the grid clock. A sync reset on every flop costs
        # packing freedom, and (Yosys 0.70) made synth_ecp5's abc9 step crash on this design.
        m.domains.sync = ClockDomain("sync", reset_less=True)
        m.d.comb += ClockSignal("sync").eq(clk)
        gsr0, gsr1 = Signal(), Signal()
        m.submodules.gsr = Instance("SGSR", i_CLK=clk, i_GSR=gsr1)  # GSR is active low
        m.submodules.gsr_sync0 = Instance("FD1S3AX", p_GSR="DISABLED", i_CK=clk, i_D=locked,
                                          o_Q=gsr0)
        m.submodules.gsr_sync1 = Instance("FD1S3AX", p_GSR="DISABLED", i_CK=clk, i_D=gsr0,
                                          o_Q=gsr1)
        return locked

    # -- the design -------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        locked = self._clock(m, platform) if platform is not None else Const(1)
        m.submodules.array = array = self.array
        seeds = iter(_seeds())

        def lfsr(name):
            gen = Lfsr(next(seeds))
            m.submodules[f"lfsr_{name}"] = gen
            return gen

        # -- weight rows: one LFSR per byte, the mode, valid --------------------------------
        w = array.w_row
        w_step = ~w.valid | w.ready
        w_gens = [lfsr(f"w{c}") for c in range(array.pcols)]
        w_mode, w_valid = lfsr("w_mode"), lfsr("w_valid")
        for c, gen in enumerate(w_gens):
            m.d.comb += [gen.en.eq(w_step), w.payload.data[c].eq(gen.value[:8])]
        m.d.comb += [
            w_mode.en.eq(w_step), w_valid.en.eq(w_step),
            # mostly W4A8 (3 in 4), the chip's main mode, with INT8 tiles mixed in
            w.payload.mode.eq(w_mode.value[0] | w_mode.value[1]),
            w.valid.eq(w_valid.value[0]),
        ]

        # -- activation rows: one LFSR per element, last (1 in 16 rows), valid --------------
        a = array.a_row
        a_step = ~a.valid | a.ready
        a_gens = [lfsr(f"a{r}") for r in range(array.rows)]
        a_last, a_valid = lfsr("a_last"), lfsr("a_valid")
        for r, gen in enumerate(a_gens):
            m.d.comb += [gen.en.eq(a_step), a.payload.data[r].eq(gen.value[:8])]
        m.d.comb += [
            a_last.en.eq(a_step), a_valid.en.eq(a_step),
            a.payload.last.eq(a_last.value[:4].all()),
            a.valid.eq(a_valid.value[0]),
        ]

        # -- output rows: random back-pressure, every payload bit into the MISR -------------
        o = array.o_row
        o_ready = lfsr("o_ready")
        m.d.comb += o.ready.eq(o_ready.value[0] | o_ready.value[1])
        bits = o.payload.as_value()
        fold = Signal(32)
        fold_valid = Signal()
        m.d.sync += [
            fold.eq(_xor_fold(bits, 32)),
            fold_valid.eq(o.valid & o.ready),
        ]
        with m.If(fold_valid):
            m.d.sync += self.misr.eq(
                ((self.misr >> 1) ^ (self.misr[0].replicate(32) & Lfsr.TAPS)) ^ fold)

        # -- further signatures for the other LEDs ------------------------------------------
        out_parity = Signal()
        busy = Signal()
        heartbeat = Signal(27)  # bit 26 toggles every 0.67 s at 100 MHz
        # Row counters count registered handshakes: a counter's carry chain must not lengthen
        # the grid's own ready paths, which are what the build measures.
        fired = Signal(3)
        a_rows = Signal(24)
        w_rows = Signal(24)
        o_rows = Signal(24)
        m.d.sync += [
            out_parity.eq(self.misr.xor()),
            busy.eq(array.busy),
            heartbeat.eq(heartbeat + 1),
            fired.eq(Cat(a.valid & a.ready, w.valid & w.ready, o.valid & o.ready)),
            a_rows.eq(a_rows + fired[0]),
            w_rows.eq(w_rows + fired[1]),
            o_rows.eq(o_rows + fired[2]),
        ]
        values = {
            "out_parity": out_parity, "heartbeat": heartbeat[-1], "busy": busy,
            "locked": locked, "misr_msb": self.misr[-1], "a_rows_msb": a_rows[-1],
            "w_rows_msb": w_rows[-1], "o_rows_msb": o_rows[-1],
        }
        m.d.comb += self.leds.eq(Cat(values[name] for name in LED_SIGNALS))

        if platform is not None:
            for i, pin in enumerate(_led_pins(m, platform, len(LED_SIGNALS))):
                m.d.comb += pin.eq(self.leds[i])
        return m


def _seeds():
    """Distinct non-zero 32-bit seeds (a multiplicative hash of the index)."""
    i = 1
    while True:
        yield (i * 0x9E3779B1) & 0xFFFFFFFF or 1
        i += 1


def _xor_fold(value, width):
    """XOR of ``value`` cut into ``width``-bit words (the last one zero-padded)."""
    acc = value[0:width]
    for lo in range(width, len(value), width):
        acc = acc ^ value[lo:lo + width]
    return acc


def _led_pins(m, platform, count):
    """Up to ``count`` LED outputs (``led`` 0, 1, ... then the channels of ``rgb_led`` 0, 1, ...)
    as output buffers added to ``m``; returns their ``o`` signals."""
    ports = []
    for i in range(count):
        try:
            ports.append(platform.request("led", i, dir="-"))
        except ResourceError:
            break
    for i in range(count):
        if len(ports) >= count:
            break
        try:
            rgb = platform.request("rgb_led", i, dir="-")
        except ResourceError:
            break
        ports += [rgb.r, rgb.g, rgb.b]
    pins = []
    for i, port in enumerate(ports[:count]):
        m.submodules[f"led_buf{i}"] = buf = io.Buffer("o", port)
        pins.append(buf.o)
    return pins

"""Board tops for synthesis: the systolic grid, or the whole chip, driven by LFSRs, every
output folded onto the LEDs.

Purpose: measure what the design costs on an FPGA (Fmax, LUTs, FFs, DSPs, EBRs) with nothing
optimized away. ``scripts/synth.py`` builds them (``--design grid``, the default, or
``--design chip``, with the vector unit unless ``--no-vector``).

Shared by both tops (:class:`_BoardTop`):

- Stimulus from 32-bit Galois LFSRs (:class:`Lfsr`), each with its own seed. A stream driven
  by LFSRs steps them only when nothing is offered or the offer is taken, so a payload holds
  while ``valid`` waits for ``ready`` (the stream rule).
- Outputs go into 32-bit multiple-input signature registers (MISR, :func:`_signature`): the
  value is XOR-folded to 32 bits and registered, then the MISR shifts it in. The LEDs show
  the MISRs' parity and further status bits, so everything that feeds a MISR is in the fan-in
  of a pin and synthesis can drop none of it.
- Clock: the board's default clock. On ECP5 boards whose clock differs from
  ``params.clock_mhz`` an EHXPLLL makes the design clock (the grid: ULX3S 25 -> 100 MHz,
  OrangeCrab 48 -> 100 MHz; the chip, :data:`CHIP_85F`: 45 MHz, OrangeCrab 42, ECPIX-5
  100 -> 45); nextpnr derives the output frequency from the PLL dividers and the input pin
  constraint, so it reports Fmax against ``params.clock_mhz``. A board whose clock is the
  design clock (the grid on the ECPIX-5's 100 MHz, the iCEBreaker's 12 MHz) runs on it
  directly.
- Without a platform (``amaranth.sim``) there is no PLL and no pin: the LED values are the
  ``leds`` signal.

:class:`GridBoardTop`: the grid alone (:data:`LED_SIGNALS`). Every field of ``w_row`` and
``a_row`` comes from its own LFSR, and so do the ``valid`` bits and ``o_row.ready``: all three
streams stall at random. Every bit of ``o_row.payload`` goes into the output MISR.

:class:`ChipBoardTop`: the whole chip (:class:`hw.chip.Chip`: buffers, boot loader,
sequencer, LOAD/STORE DMA, GEMM engine with the grid, KV engine, and with ``vector`` the
vector unit; :data:`CHIP_LED_SIGNALS`).

- Host: ``start`` is a one-cycle pulse (from a register) 16 cycles after the chip went idle,
  so runs follow each other. ``prog_addr``, ``prog_len`` and ``pos_init`` come from LFSRs
  that step on every start: mostly a short program (4..19 micro-ops) at a low address and a
  small ``pos``; one run in 16 takes full-width random values (usually ``Err.PROG_LOAD``).
- Off-chip bus (:class:`hw.bus.BusSignature`): an LFSR-driven responder. ``rd_addr`` is
  accepted at random (3 in 4 cycles) while its 8-entry FIFO has room; every accepted address
  gets exactly one response, in order, from a registered output stage that is loaded at
  random (3 in 4 cycles) when the FIFO has an address and the stage is free or taken. Read
  data come from LFSRs. Reads inside the current program (``prog_addr`` ..
  ``prog_addr + prog_len * ceil(128 / bus_bits) - 1``) are *shaped* micro-op words when a
  micro-op takes a power-of-two number of bus words: an opcode drawn from
  :data:`PROGRAM_OPS` (LOAD, STORE, GEMM, KV_APPEND, WAIT, SETPOS, NOP, HALT) and random
  argument fields cut to a few low bits (:data:`FIELD_MASKS`: small addresses, lengths and
  strides), so many micro-ops pass the units' checks and the chip really loads, stores,
  multiplies and appends; one micro-op in 16 stays fully random (mostly
  ``Err.ILLEGAL_OP``), so every bit of the micro-op memory is live. ``wr`` is accepted at
  random (3 in 4 cycles).
- Signatures: every accepted write (address and data) into ``wr_misr``; every read address
  (as it leaves the FIFO) into ``rd_misr``; every cycle ``running``, ``done``, ``error``,
  ``error_pc``, ``pos`` and all counters into ``status_misr``. LED 0 is the parity of the
  three.

Chip synthesis configuration (:attr:`Board.chip_params`, :data:`CHIP_85F`), measured with
Yosys 0.70 and nextpnr-ecp5 on the LFE5U-85F (208 EBR, 156 MULT18X18D, 83,640 LUT4 cells):

- Block RAM. Yosys maps every buffer to DP16KD blocks (byte-enable KV writes included; the
  small queues go to LUT RAM) and replicates a memory per read port: WGT and PRM have 2, ACT
  and KV 3, ACC and the micro-op memory 1, and the group scaler's accumulator is one more
  1024-bit memory. A word wider than 36 bits costs a block per 36 bits however shallow the
  memory (PRM 640 bits, ACC 512, the accumulator 1024 at a 16-column grid), so only the deep
  buffers can shrink. The default buffers need about 450 EBR; 16 KiB each for WGT, ACT, ACC and
  KV and 1024 micro-ops need 152 at a 16 x 16 grid, 113 at 16 x 8.
- The 16 x 16 grid does not fit: 237 of 156 MULT18X18D (128 for the PEs; 64 for the group
  scaler's ``scale * acc`` (22 x 20 bits) and ``offset * xsum`` (16 x 20) products as they
  were then, 16 columns; the rest for the GEMM and KV engines' address products and the DMA
  engines' constant products) and 79,624 of 83,640 LUT4 cells (95 %) after packing (without
  the vector unit). Products in fabric would cost about 2,000 LUT4 per column (Booth).
- The group scaler now takes 3 blocks per column (``scale * acc[:17]`` on two, the 3 top bits
  of ``acc`` in logic, ``offset`` times the 12-bit activation sum on one), the DMA checks none.
- The vector unit at 16 lanes needs about 336 MULT18X18D by itself (every function has its own
  per-lane multipliers: the normalizer 7 per lane, GELU/SiLU 5, softmax 5, RoPE 4) and about
  80,000 LUT4 (``scripts/synth.py --design vector --lanes 16``). At 2 lanes (``CHIP_85F``) it
  takes 49 blocks, ~25,000 LUT4 and, with 2048-element rows, 76 EBR; its five read ports add
  a copy each of ACC (two), ACT, PRM and KV (~50 EBR). With both, 2048-element rows and 16 KiB
  KV the chip needed 230 of 208 DP16KD and 148 MULT18X18D; 1536-element rows (the row FIFOs
  fit 1024-entry blocks) and 8 KiB KV bring it within the device.
- :data:`CHIP_85F`: a 16 x 4 grid (16 rows along K, 4 W4A8 output columns: 32 PEs), 16 KiB
  WGT / ACT / ACC and 8 KiB KV buffers, 512 PRM entries, 1024 micro-ops, a 2-lane vector
  unit with rows up to 1536 elements. With its UART link (``make bitstream``) it places and
  routes: the README's table has the measured figures. The same with a 16 x 8 grid (64 PEs)
  fits (148 MULT18X18D, 198 DP16KD, 63,812 LUT4 cells: 76 %) and places (~42 MHz), but
  router2's overused wires plateau (~37,000 after six iterations), so it has no bitstream.
  Before the vector unit (16 KiB KV, the scaler as it was): 125 MULT18X18D, 113 DP16KD,
  44,826 LUT4 cells, 20,870 FF, Fmax 23.7 MHz. ``scripts/synth.py --design chip --cols 16``
  reproduces the 16 x 16 overflow (nextpnr stops in placement and the script names the
  resources that overflow).
"""

import math
from dataclasses import dataclass, replace

from amaranth.build import ResourceError
from amaranth.hdl import (
    Array,
    Cat,
    ClockDomain,
    ClockSignal,
    Const,
    Elaboratable,
    Instance,
    Module,
    Mux,
    Signal,
)
from amaranth.lib import data, fifo, io
from amaranth_boards.ecpix5 import ECPIX585Platform
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_85FPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from .chip import Chip
from .grid import SystolicArray
from .isa import ARGS, INSTR_BITS, OP_ARGS, OP_BITS, Op, bus_bits
from .params import ChipParams

__all__ = ["Board", "BOARDS", "CHIP_85F", "CHIP_UP5K", "Lfsr", "GridBoardTop", "ChipBoardTop",
           "LinkBoardTop",
           "LINK_LED_SIGNALS", "LINK_BAUD", "LINK_TIMEOUT_S", "ORANGECRAB_UART",
           "ecp5_pll_dividers", "LED_SIGNALS", "CHIP_LED_SIGNALS", "PROGRAM_OPS",
           "FIELD_MASKS", "FIELD_SET"]

#: The whole chip on an 85k-LUT ECP5 (208 EBR, 156 DSP): a 16 x 4 grid, smaller deep
#: buffers (512 PRM entries: a 4-column PRM word holds half a 16 x 8 grid's) and a 2-lane
#: vector unit with rows up to 1536 elements (both models' widest row; its row FIFOs then fit
#: 1024-entry block RAM) (module docstring: the 16 x 16 grid does not fit, nor do 16 vector
#: lanes). A 16 x 8 grid fits too (76 % of the LUTs, 148 DSP, 198 EBR) but nextpnr's router
#: does not converge on it (README, "FPGA builds"); the 16 x 4 grid routes (58 % of the
#: LUTs). Its clock, 45 MHz, is below the routed Fmax and a whole UART divisor for 3 Mbaud
#: (15); the OrangeCrab's PLL cannot make 45 MHz from its 48 MHz, so it runs at 42
#: (:data:`BOARDS`). Its off-chip memory is the host's (over the UART link, ``hw/link.py``),
#: so it is sized for the models' images, not for block RAM: 512 MiB holds SmolLM2-135M's
#: streamed image (347 MiB: a 2-byte weight word takes a whole 8-byte bus word; its KV cache
#: is off-chip too) and all-MiniLM-L6-v2's (``sw/compiler.py``).
CHIP_85F = ChipParams(cols=4, weight_sram_kib=16, act_sram_kib=16, acc_sram_kib=16,
                      kv_sram_kib=8, prm_entries=512, uop_depth=1024, vector_lanes=2,
                      vector_row=1536, offchip_kib=512 * 1024, clock_mhz=45)
#: :data:`CHIP_85F` on the OrangeCrab: 42 MHz, what its PLL makes from 48 MHz (and a whole
#: UART divisor).
_CHIP_85F_42 = replace(CHIP_85F, clock_mhz=42)


@dataclass(frozen=True)
class Board:
    """A board the design is built for: its platform class, FPGA family, the default grid
    (``params``) and the whole-chip configuration (``chip_params``; ``None`` if the chip does
    not fit the board)."""

    name: str
    platform: type
    family: str  # "ecp5" or "ice40"
    params: ChipParams
    chip_params: ChipParams | None = None
    #: The chip of the board's bitstream (:class:`LinkBoardTop`) and whether it has the
    #: vector unit.
    link_params: ChipParams | None = None
    link_vector: bool = True


#: The iCEBreaker's link top's chip: the smallest useful configuration, without the vector
#: unit, on the 12 MHz board clock. It does NOT fit the UP5K (5280 LCs, 8 SB_MAC16, 30
#: 4-Kbit EBRs): Yosys (``scripts/synth.py --board icebreaker --design link --yosys-only``)
#: maps it with its link to 19,337 SB_LUT4, 13,106 FF, 26 SB_MAC16 and 104 SB_RAM40_4K
#: (every buffer word wider than 16 bits costs a block per 16 bits per read port, however
#: shallow; the DMA, GEMM and KV engines' control and the 13 48-bit counters are fixed
#: costs), so no ChipParams fits: the iCEBreaker builds the grid alone (``make synth``).
CHIP_UP5K = ChipParams(rows=2, cols=4, weight_sram_kib=1, act_sram_kib=1, acc_sram_kib=1,
                       kv_sram_kib=1, prm_entries=16, acc_entries=16, uop_depth=64,
                       queue_depth=2, offchip_latency=4, vector_lanes=1, vector_row=64,
                       clock_mhz=12)

BOARDS = {b.name: b for b in [
    Board("ulx3s-85f", ULX3S_85F_Platform, "ecp5", ChipParams(), CHIP_85F, CHIP_85F),
    Board("orangecrab-85f", OrangeCrabR0_2_85FPlatform, "ecp5", ChipParams(), _CHIP_85F_42,
          _CHIP_85F_42),
    Board("ecpix5-85", ECPIX585Platform, "ecp5", ChipParams(), CHIP_85F, CHIP_85F),
    # UP5K: 8 SB_MAC16, 5280 LCs; a 2 x 4 grid (4 PEs) fits, on the 12 MHz board clock.
    # The chip does not, not even CHIP_UP5K (its link top elaborates; Yosys: ~4x the LUTs).
    Board("icebreaker", ICEBreakerPlatform, "ice40", ChipParams(rows=2, cols=4, clock_mhz=12),
          None, CHIP_UP5K, False),
]}

# What each LED shows, in order (a board with fewer LEDs shows the first ones).
LED_SIGNALS = ["out_parity", "heartbeat", "busy", "locked", "misr_msb", "a_rows_msb",
               "w_rows_msb", "o_rows_msb"]
CHIP_LED_SIGNALS = ["sig_parity", "heartbeat", "running", "locked", "error", "wr_misr_msb",
                    "status_misr_msb", "starts_msb"]

#: Opcodes of shaped program words (ChipBoardTop), drawn uniformly from these 16 entries.
PROGRAM_OPS = ((Op.LOAD,) * 3 + (Op.STORE,) * 3 + (Op.GEMM,) * 3 + (Op.KV_APPEND,) * 2
               + (Op.WAIT,) * 2 + (Op.SETPOS, Op.NOP, Op.HALT))
#: Bits kept of each argument field in shaped program words; other fields keep their low
#: 3 bits, or all of them if at most 4 bits wide (enums, WAIT's count).
FIELD_MASKS = {"off": 0xFF, "d": 0x30, "cap": 0x3F, "k_tiles": 0x3, "n_tiles": 0x3}
#: Bits set in each argument field of shaped program words (lengths at least 1).
FIELD_SET = {"words": 1, "t_len": 1, "k_tiles": 1, "n_tiles": 1, "d": 0x10}


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

    @classmethod
    def step(cls, value):
        """The next state of a 32-bit value (an expression)."""
        return (value >> 1) ^ (value[0].replicate(32) & cls.TAPS)

    def elaborate(self, platform):
        m = Module()
        step = Signal(32)
        m.d.comb += step.eq(self.step(self.value))
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


class _BoardTop(Elaboratable):
    """What the board tops share: the board, clocking, LFSR seeds, signatures, LED pins.

    ``LED_NAMES``: what each LED shows, in order; ``leds`` their values.
    """

    LED_NAMES: list = []

    def __init__(self, params: ChipParams, board: str):
        if board not in BOARDS:
            raise ValueError(f"unknown board {board!r}; known: {', '.join(BOARDS)}")
        self.params = params
        self.board = BOARDS[board]
        self.leds = Signal(len(self.LED_NAMES))
        #: Place-and-route timing target for the PLL's design clock, in MHz (``None``: the
        #: frequency nextpnr derives from the PLL, ``params.clock_mhz``). Over-constraining
        #: changes only what nextpnr aims for; the PLL still makes ``params.clock_mhz``.
        self.pnr_target_mhz = None

    # -- clocking ---------------------------------------------------------------------------

    def _clock(self, m, platform) -> Signal:
        """Make the ``sync`` domain at ``params.clock_mhz``; returns the 'clock ready' bit."""
        if platform is None:
            return Const(1)
        board_mhz = platform.default_clk_frequency / 1e6
        target = self.params.clock_mhz
        if abs(board_mhz - target) < 1e-6:
            if self.pnr_target_mhz:
                raise ValueError(f"{self.board.name}: the design runs on the board clock "
                                 f"({board_mhz:g} MHz, its pin constraint); a place-and-route "
                                 f"target applies only to a PLL-made clock")
            return Const(1)  # the platform makes ``sync`` from the board clock and its reset
        if self.board.family != "ecp5":
            raise ValueError(f"{self.board.name}: the design clock ({target} MHz) must equal "
                             f"the board clock ({board_mhz:g} MHz); there is no PLL path for "
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
        if self.pnr_target_mhz:  # a user constraint on the PLL output overrides the derived one
            platform.add_clock_constraint(clk, self.pnr_target_mhz * 1e6)
        # Reset as the platform does it for the board clock: no reset nets on the flops (every
        # flop takes its init value from the global set/reset), GSR held until the PLL locks
        # and released synchronously to the design clock. A sync reset on every flop costs
        # packing freedom, and (Yosys 0.70) made synth_ecp5's abc9 step crash on the grid.
        m.domains.sync = ClockDomain("sync", reset_less=True)
        m.d.comb += ClockSignal("sync").eq(clk)
        gsr0, gsr1 = Signal(), Signal()
        m.submodules.gsr = Instance("SGSR", i_CLK=clk, i_GSR=gsr1)  # GSR is active low
        m.submodules.gsr_sync0 = Instance("FD1S3AX", p_GSR="DISABLED", i_CK=clk, i_D=locked,
                                          o_Q=gsr0)
        m.submodules.gsr_sync1 = Instance("FD1S3AX", p_GSR="DISABLED", i_CK=clk, i_D=gsr0,
                                          o_Q=gsr1)
        return locked

    # -- stimulus and observation -----------------------------------------------------------

    @staticmethod
    def _lfsrs(m):
        """A factory ``lfsr(name) -> Lfsr``: each a submodule ``lfsr_<name>`` of ``m`` with
        the next distinct seed."""
        seeds = iter(_seeds())

        def lfsr(name):
            gen = Lfsr(next(seeds))
            m.submodules[f"lfsr_{name}"] = gen
            return gen
        return lfsr

    def _drive_leds(self, m, platform, values: dict):
        """``leds`` from ``values`` (by :attr:`LED_NAMES`), and the board's LED pins."""
        m.d.comb += self.leds.eq(Cat(values[name] for name in self.LED_NAMES))
        if platform is not None:
            for i, pin in enumerate(_led_pins(m, platform, len(self.LED_NAMES))):
                m.d.comb += pin.eq(self.leds[i])


class GridBoardTop(_BoardTop):
    """:class:`SystolicArray` (``params``) on ``board`` (a key of :data:`BOARDS`), LFSR-driven.

    Attributes for simulation and tests: ``array`` (the grid), ``leds`` (LED values, in the
    order of :data:`LED_SIGNALS`), ``misr`` (the output signature).
    """

    LED_NAMES = LED_SIGNALS

    def __init__(self, params: ChipParams, board: str):
        super().__init__(params, board)
        self.array = SystolicArray(params)
        self.misr = Signal(32)

    def elaborate(self, platform):
        m = Module()
        locked = self._clock(m, platform)
        m.submodules.array = array = self.array
        lfsr = self._lfsrs(m)

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
        _signature(m, o.payload.as_value(), o.valid & o.ready, self.misr)

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
        self._drive_leds(m, platform, {
            "out_parity": out_parity, "heartbeat": heartbeat[-1], "busy": busy,
            "locked": locked, "misr_msb": self.misr[-1], "a_rows_msb": a_rows[-1],
            "w_rows_msb": w_rows[-1], "o_rows_msb": o_rows[-1],
        })
        return m


class ChipBoardTop(_BoardTop):
    """:class:`hw.chip.Chip` (``params``) on ``board``, with an LFSR host and off-chip bus
    (module docstring).

    ``vector``: the chip with its vector unit (``Chip(params, vector=True)``; random micro-op
    words reach it, so none of it is optimized away).

    Attributes for simulation and tests: ``chip``, ``leds`` (in the order of
    :data:`CHIP_LED_SIGNALS`), ``start`` (the chip's start pulse), the signatures
    ``wr_misr``, ``rd_misr`` and ``status_misr``, and ``starts`` (runs started).
    """

    LED_NAMES = CHIP_LED_SIGNALS
    RD_FIFO_DEPTH = 8
    IDLE_CYCLES = 16  # from the chip going idle to the next start

    def __init__(self, params: ChipParams, board: str, vector: bool = False):
        super().__init__(params, board)
        self.chip = Chip(params, vector=vector)
        self.start = Signal()
        self.wr_misr = Signal(32)
        self.rd_misr = Signal(32)
        self.status_misr = Signal(32)
        self.starts = Signal(24)

    def elaborate(self, platform):
        m = Module()
        p = self.params
        locked = self._clock(m, platform)
        m.submodules.chip = chip = self.chip
        lfsr = self._lfsrs(m)
        B = bus_bits(p)
        IB = math.ceil(INSTR_BITS / B)  # bus words per micro-op
        shaped = IB & (IB - 1) == 0  # shaping needs the word index as address bits
        ib_log2 = IB.bit_length() - 1

        # -- host: start when idle, the run's program and pos from LFSRs --------------------
        start = self.start
        idle = Signal(range(self.IDLE_CYCLES))
        with m.If(chip.running | start):
            m.d.sync += idle.eq(0)
        with m.Elif(idle != self.IDLE_CYCLES - 1):
            m.d.sync += idle.eq(idle + 1)
        m.d.sync += start.eq(~chip.running & ~start & (idle == self.IDLE_CYCLES - 1))
        h_small, h_addr, h_len_pos = lfsr("host"), lfsr("host_addr"), lfsr("host_len_pos")
        for gen in (h_small, h_addr, h_len_pos):
            m.d.comb += gen.en.eq(start)  # a new draw for the next run
        wild_run = h_small.value[28:32] == 0  # 1 in 16 runs: full-width values
        m.d.comb += [
            chip.start.eq(start),
            chip.prog_addr.eq(Mux(wild_run, h_addr.value, h_small.value[:11])),
            chip.prog_len.eq(Mux(wild_run, h_len_pos.value[:16], 4 + h_small.value[12:16])),
            chip.pos_init.eq(Mux(wild_run, h_len_pos.value[16:], h_small.value[16:19])),
        ]
        run_addr = Signal(32)  # the running program's window, for shaping
        run_words = Signal(16 + IB.bit_length())
        with m.If(start):
            m.d.sync += [run_addr.eq(chip.prog_addr), run_words.eq(chip.prog_len * IB)]

        # -- bus reads: addresses into a FIFO, responses from a registered stage ------------
        bus = chip.bus
        m.submodules.rd_fifo = q = fifo.SyncFIFOBuffered(width=32, depth=self.RD_FIFO_DEPTH)
        rd_gate = lfsr("rd_ready")
        m.d.comb += [
            bus.rd_addr.ready.eq(q.w_rdy & (rd_gate.value[0] | rd_gate.value[1])),
            q.w_data.eq(bus.rd_addr.payload),
            q.w_en.eq(bus.rd_addr.valid & bus.rd_addr.ready),
        ]
        rsp_gate = lfsr("rd_valid")
        rsp_valid = Signal()
        rsp_data = Signal(B)
        load = Signal()  # the response stage takes the next address's data
        m.d.comb += [
            load.eq(q.r_rdy & (~rsp_valid | bus.rd_data.ready)
                    & (rsp_gate.value[0] | rsp_gate.value[1])),
            q.r_en.eq(load),
            bus.rd_data.valid.eq(rsp_valid),
            bus.rd_data.payload.eq(rsp_data),
        ]
        rd_gens = [lfsr(f"rd{i}") for i in range(math.ceil(B / 32))]
        for gen in rd_gens:
            m.d.comb += gen.en.eq(load)
        rand = Cat(gen.value for gen in rd_gens)[:B]
        word = Signal(B)
        if shaped:
            # the micro-op word index, from the address relative to the program's start
            off = Signal(32)
            idx = Signal(range(IB))
            in_prog = Signal()
            m.d.comb += [off.eq(q.r_data - run_addr), in_prog.eq(off < run_words),
                         idx.eq(off[:ib_log2])]
            # the opcode and 'wild' draw of a micro-op, held over its later bus words
            pick = lfsr("rd_op")
            m.d.comb += pick.en.eq(load)
            held_sel, held_wild = Signal(4), Signal()
            sel = Mux(idx == 0, pick.value[:4], held_sel)
            wild = Mux(idx == 0, pick.value[4:8] == 0, held_wild)
            with m.If(load & in_prog & (idx == 0)):
                m.d.sync += [held_sel.eq(pick.value[:4]), held_wild.eq(pick.value[4:8] == 0)]
            masks, sets = _program_tables(IB * B)
            mask_w = Array(Const(v, IB * B) for v in masks)[sel].word_select(idx, B)
            set_w = Array(Const(v, IB * B) for v in sets)[sel].word_select(idx, B)
            m.d.comb += word.eq(Mux(in_prog & ~wild, (rand & mask_w) | set_w, rand))
        else:
            m.d.comb += word.eq(rand)
        with m.If(load):
            m.d.sync += [rsp_valid.eq(1), rsp_data.eq(word)]
        with m.Elif(bus.rd_data.ready):
            m.d.sync += rsp_valid.eq(0)

        # -- bus writes: random back-pressure ------------------------------------------------
        wr_gate = lfsr("wr_ready")
        m.d.comb += bus.wr.ready.eq(wr_gate.value[0] | wr_gate.value[1])

        # -- signatures -----------------------------------------------------------------------
        _signature(m, bus.wr.payload.as_value(), bus.wr.valid & bus.wr.ready, self.wr_misr)
        _signature(m, q.r_data, load, self.rd_misr)
        status = Cat(chip.running, chip.done, chip.error, chip.error_pc, chip.pos,
                     chip.counters.as_value())
        _signature(m, status, Const(1), self.status_misr)

        sig_parity = Signal()
        error = Signal()
        heartbeat = Signal(27)
        m.d.sync += [
            sig_parity.eq(self.wr_misr.xor() ^ self.rd_misr.xor() ^ self.status_misr.xor()),
            error.eq(chip.error != 0),
            heartbeat.eq(heartbeat + 1),
            self.starts.eq(self.starts + start),
        ]
        self._drive_leds(m, platform, {
            "sig_parity": sig_parity, "heartbeat": heartbeat[-1], "running": chip.running,
            "locked": locked, "error": error, "wr_misr_msb": self.wr_misr[-1],
            "status_misr_msb": self.status_misr[-1], "starts_msb": self.starts[-1],
        })
        return m


def _program_tables(width: int):
    """Per entry of :data:`PROGRAM_OPS`: the micro-op bits taken from the LFSRs (a mask,
    ``width`` bits; those above ``INSTR_BITS`` all random) and the bits set (the opcode and
    :data:`FIELD_SET`)."""
    masks, sets = [], []
    for op in PROGRAM_OPS:
        mask = ((1 << width) - 1) & ~((1 << INSTR_BITS) - 1)
        bits = int(op)
        member = OP_ARGS[op]
        if member is not None:
            for name, f in data.Layout.cast(ARGS[member].shape):
                full = (1 << f.width) - 1
                keep = FIELD_MASKS.get(name, full if f.width <= 4 else 0b111)
                mask |= (keep & full) << (OP_BITS + f.offset)
                bits |= (FIELD_SET.get(name, 0) & full) << (OP_BITS + f.offset)
        masks.append(mask & ~bits)
        sets.append(bits)
    return masks, sets


def _signature(m, value, en, misr):
    """Shift ``value`` into the 32-bit MISR ``misr`` (a Signal) in cycles where ``en``:
    ``value`` XOR-folded to 32 bits and registered with ``en``, then shifted in."""
    fold = Signal(32, name=f"{misr.name}_fold")
    fold_en = Signal(name=f"{misr.name}_en")
    m.d.sync += [fold.eq(_xor_fold(value, 32)), fold_en.eq(en)]
    with m.If(fold_en):
        m.d.sync += misr.eq(Lfsr.step(misr) ^ fold)
    return misr


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


# -- the chip with its UART host link --------------------------------------------------------

#: What each LED of :class:`LinkBoardTop` shows, in order.
LINK_LED_SIGNALS = ["running", "error", "heartbeat", "locked", "rx_activity", "tx_activity",
                    "nak_seen", "done"]
#: The host link's default baud rate (every board's USB-UART bridge runs 3 Mbaud: FT231X on
#: the ULX3S, FT2232H on the ECPIX-5 and iCEBreaker; the OrangeCrab needs an adapter on its
#: Feather pins 0 (RX) and 1 (TX), see :data:`ORANGECRAB_UART`).
LINK_BAUD = 3_000_000
#: Inter-byte timeout inside a host frame, in seconds (USB-UART bridges leave gaps of up to
#: a few ms between USB packets).
LINK_TIMEOUT_S = 0.01
#: The OrangeCrab has no UART on its board file: the host link uses Feather pins 0 / 1.
ORANGECRAB_UART = dict(rx="0", tx="1", conn=("io", 0))


class LinkBoardTop(_BoardTop):
    """:class:`hw.chip.Chip` (``params``, ``vector``) on ``board`` with its UART host link
    (:class:`hw.link.Link`, ``hw/isa.py``'s link section): the off-chip memory is the host's,
    reached through the link; the runtime's ``sw.board.BoardDevice`` drives it.

    - Clock: as the other tops (``_clock``: a PLL to ``params.clock_mhz`` where the board
      clock differs). ``divisor`` (default: ``LINK_BAUD`` at ``params.clock_mhz``,
      :func:`hw.link.link_divisor`) and ``timeout_cycles`` (default ``LINK_TIMEOUT_S``)
      configure the link.
    - The chip's logic is reset by the link's ``abort`` (the chip's ``rst``; its buffers keep
      their contents).
    - Pins: the board's ``uart`` 0 (OrangeCrab: :data:`ORANGECRAB_UART`), LEDs
      (:data:`LINK_LED_SIGNALS`). Without a platform (simulation) there is no PLL and no pin:
      ``uart_rx`` (in, idle high) and ``uart_tx`` (out) are the UART, ``leds`` the LEDs.
    """

    LED_NAMES = LINK_LED_SIGNALS

    def __init__(self, params: ChipParams, board: str, vector: bool = True, *,
                 divisor: int | None = None, timeout_cycles: int | None = None):
        from .link import Link, link_divisor

        super().__init__(params, board)
        clock_hz = params.clock_mhz * 1e6
        self.divisor = divisor or link_divisor(clock_hz, LINK_BAUD)
        self.timeout_cycles = timeout_cycles or max(20 * self.divisor,
                                                    int(LINK_TIMEOUT_S * clock_hz))
        self.vector = vector
        self.chip = Chip(params, vector=vector)
        self.link = Link(params, vector=vector, divisor=self.divisor,
                         timeout_cycles=self.timeout_cycles)
        self.uart_rx = Signal(init=1)
        self.uart_tx = Signal(init=1)

    def elaborate(self, platform):
        from amaranth.lib import wiring

        m = Module()
        locked = self._clock(m, platform)
        link = self.link
        m.submodules.link = link
        m.submodules.chip = chip = self.chip
        wiring.connect(m, chip.bus, link.bus)
        m.d.comb += [chip.rst.eq(link.abort), chip.start.eq(link.start),
                     chip.prog_addr.eq(link.prog_addr),
                     chip.prog_len.eq(link.prog_len), chip.pos_init.eq(link.pos_init),
                     link.running.eq(chip.running), link.done.eq(chip.done),
                     link.error.eq(chip.error), link.error_pc.eq(chip.error_pc),
                     link.pos.eq(chip.pos)]
        for i in range(len(chip.counters)):
            m.d.comb += link.counters[i].eq(chip.counters[i])
        if platform is not None:
            try:
                uart = platform.request("uart", 0, dir="-")
            except ResourceError:
                from amaranth.build import Attrs
                from amaranth_boards.resources import UARTResource

                platform.add_resources([UARTResource(0, **ORANGECRAB_UART,
                                                     attrs=Attrs(IO_TYPE="LVCMOS33"))])
                uart = platform.request("uart", 0, dir="-")
            m.submodules.uart_rx_buf = rx_buf = io.Buffer("i", uart.rx)
            m.submodules.uart_tx_buf = tx_buf = io.Buffer("o", uart.tx)
            m.d.comb += [self.uart_rx.eq(rx_buf.i), tx_buf.o.eq(self.uart_tx)]
        m.d.comb += [link.rx.eq(self.uart_rx), self.uart_tx.eq(link.tx)]

        # LEDs: activity stretched to ~20 ms at 100 MHz, a NAK latched until the next START
        heartbeat = Signal(27)
        rx_act, tx_act = Signal(21), Signal(21)
        rx_q, tx_q = Signal(init=1), Signal(init=1)
        nak_seen = Signal()
        error = Signal()
        m.d.sync += [heartbeat.eq(heartbeat + 1), rx_q.eq(self.uart_rx), tx_q.eq(self.uart_tx),
                     error.eq(chip.error != 0)]
        for q, pin, act in ((rx_q, self.uart_rx, rx_act), (tx_q, self.uart_tx, tx_act)):
            with m.If(q != pin):
                m.d.sync += act.eq(~0)
            with m.Elif(act != 0):
                m.d.sync += act.eq(act - 1)
        with m.If(link.nak):
            m.d.sync += nak_seen.eq(1)
        with m.Elif(link.start):
            m.d.sync += nak_seen.eq(0)
        self._drive_leds(m, platform, {
            "running": chip.running, "error": error, "heartbeat": heartbeat[-1],
            "locked": locked, "rx_activity": rx_act != 0, "tx_activity": tx_act != 0,
            "nak_seen": nak_seen, "done": chip.done,
        })
        return m

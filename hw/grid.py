"""The systolic MAC grid: weight-stationary, double-buffered, INT8 x INT8 and W4A8.

Dataflow: **weight-stationary** (as TPU v1). A weight tile of ``rows`` (K) x ``cols`` (N)
sits in the processing elements; activation rows (one K-slice of one token each) stream in
from the left, one per cycle, and column sums stream out at the bottom. Why weight-stationary:

- decode is a matrix-vector product: every weight is used once per token, so the chip is bound
  by how fast weights arrive. A weight-stationary grid takes a weight row per cycle on a short
  vertical shift chain and is ready for the next tile after ``rows`` cycles: a GEMV consumes
  ``cols`` weights (``cols / 2`` bytes in W4A8) per cycle, the off-chip rate;
- prefill reuses each weight tile for every token in the tile (``T >= rows`` rows), with the
  next tile loading meanwhile (double buffering), so back-to-back tiles keep every PE busy;
- the output of one column pass is exactly one activation group's dot product (``rows``
  divides ``act_group``), which the group scaler needs (``sim/golden.py``: ``acc_h``).

Structure (Gemmini-style hierarchy): :class:`ProcessingElement` -> :class:`Grid` (the R x P
array, P = cols / 2 PE columns) with :class:`Skew` on the activation edge and de-skew
(:class:`Skew` reversed) on the output edge, wrapped by :class:`SystolicArray`, which adds the
stream interfaces, the double-buffer bookkeeping and a credit-checked output FIFO.

Modes (per weight tile, latched with the weights, so tiles of both modes can follow each
other): ``INT8`` one signed 8 x 8 product per PE; ``W4A8`` two signed INT4 weights per PE
packed 12 bits apart, ``a * (w_hi * 2**12 + w_lo)``, one 8 x 17 product on one ECP5
MULT18X18 that separates exactly into ``a * w_lo`` (the low 12 bits, sign-extended: it lies
in [-1016, 1024]) and ``a * w_hi`` (DESIGN.md section 7).

Timing: an activation row accepted in cycle L reaches PE(r, c) at L + 1 + r + c (one input
register), its product is registered 4 cycles later (``ProcessingElement.LATENCY``: the DSP's
input, pipeline and output registers and one in the fabric), and the column sum leaves the
de-skew at L + R + P + 4 (``SystolicArray.latency``).
"""


from amaranth.hdl import ClockSignal, Instance, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .isa import GridMode
from .params import ChipParams

__all__ = ["GridMode", "ProcessingElement", "Skew", "Grid", "SystolicArray", "weight_row_layout",
           "act_row_layout", "out_row_layout", "psum_width"]


def psum_width(rows: int) -> int:
    """Bits of a column sum over ``rows`` products: |a * w| <= 2**14 (-128 * -128)."""
    return 16 + max(rows - 1, 1).bit_length()


def weight_row_layout(pcols: int) -> data.StructLayout:
    """One row of a weight tile: a byte per PE column (INT8, or INT4 lo | hi << 4) and the
    tile's mode. A tile is ``rows`` consecutive rows, the row for grid row R-1 first."""
    return data.StructLayout({"data": data.ArrayLayout(unsigned(8), pcols), "mode": GridMode})


def act_row_layout(rows: int) -> data.StructLayout:
    """One activation row: ``rows`` INT8 values along K; ``last`` ends the weight tile's use."""
    return data.StructLayout({"data": data.ArrayLayout(signed(8), rows), "last": 1})


def out_row_layout(rows: int, pcols: int) -> data.StructLayout:
    """One output row: 2 * pcols column sums (W4A8: column 2c is PE c's low weight, 2c+1 its
    high one; INT8: columns 0..pcols-1, the rest 0), the tile's mode and ``last``."""
    return data.StructLayout({
        "data": data.ArrayLayout(signed(psum_width(rows)), 2 * pcols),
        "mode": GridMode,
        "last": 1,
    })


class PipelinedMultiplier(wiring.Component):
    """Signed 18 x 18 multiplier with three register stages (inputs, pipeline, output): the
    product of the operands sampled in cycle t is on ``p`` in cycle t + 3.

    On ECP5 it is one MULT18X18D with its own input, pipeline and output registers: Yosys does
    not move fabric registers into the DSP, and with 128 of 156 DSPs in use they sit far from
    their PEs, so an unregistered DSP put two long wires in every PE's path (50 MHz measured;
    see ``scripts/synth.py``). Elsewhere (simulation, Verilog, iCE40) the same three stages are
    plain registers, cycle-identical.
    """

    STAGES = 3

    def __init__(self):
        super().__init__({"a": In(signed(18)), "b": In(signed(18)), "p": Out(signed(36))})

    def elaborate(self, platform):
        m = Module()
        if getattr(platform, "family", None) == "ecp5":
            ports = {f"i_A{i}": self.a[i] for i in range(18)}
            ports |= {f"i_B{i}": self.b[i] for i in range(18)}
            ports |= {f"i_C{i}": 0 for i in range(18)}
            ports |= {f"o_P{i}": self.p[i] for i in range(36)}
            m.submodules.mult = Instance(
                "MULT18X18D",
                p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0", p_REG_PIPELINE_CLK="CLK0",
                p_REG_OUTPUT_CLK="CLK0", p_REG_INPUTC_CLK="NONE", p_CLK0_DIV="ENABLED",
                p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED", p_RESETMODE="SYNC",
                p_GSR="DISABLED",
                i_SIGNEDA=1, i_SIGNEDB=1, i_SOURCEA=0, i_SOURCEB=0,
                i_CLK0=ClockSignal("sync"), i_CE0=1, i_RST0=0, **ports)
        else:
            ra, rb = Signal(signed(18)), Signal(signed(18))
            pipe = Signal(signed(36))
            m.d.sync += [ra.eq(self.a), rb.eq(self.b), pipe.eq(ra * rb), self.p.eq(pipe)]
        return m


class ProcessingElement(wiring.Component):
    """One multiplier with two weight banks.

    Activation path (right): ``a_in``/``bank_in`` registered to ``a_out``/``bank_out``.
    Weight path (down): when ``w_shift``, ``w_in`` moves into the shift register ``w_out``;
    when ``w_latch`` (with the tile's last shift), ``w_in`` is latched into bank ``w_bank`` as
    the ready multiplier operand (INT8 sign-extended, or the two INT4 nibbles packed 12 bits
    apart, per ``mode_in``), so the DSP input is a 2-to-1 choice of registers. Compute: the
    product of ``a_in`` and bank ``bank_in``'s operand (sampled in the cycle ``a_in`` arrives)
    is registered ``LATENCY`` = 4 cycles later (3 in the multiplier, 1 in the fabric), then
    added to ``psum_in`` (two lanes) into the registered ``psum_out``.
    """

    LATENCY = PipelinedMultiplier.STAGES + 1

    def __init__(self, psum_w: int):
        self.psum_w = psum_w
        lanes = data.ArrayLayout(signed(psum_w), 2)
        super().__init__({
            "a_in": In(signed(8)), "bank_in": In(1),
            "a_out": Out(signed(8)), "bank_out": Out(1),
            "w_in": In(8), "mode_in": In(1), "w_shift": In(1), "w_latch": In(1), "w_bank": In(1),
            "w_out": Out(8),
            "psum_in": In(lanes), "psum_out": Out(lanes),
        })

    def elaborate(self, platform):
        m = Module()
        op = [Signal(signed(17), name=f"op{b}") for b in range(2)]
        mode = [Signal(1, name=f"mode{b}") for b in range(2)]

        m.d.sync += [self.a_out.eq(self.a_in), self.bank_out.eq(self.bank_in)]
        with m.If(self.w_shift):
            m.d.sync += self.w_out.eq(self.w_in)
        operand = Signal(signed(17))  # -8 * 2**12 - 8 needs 17 bits; fits the 18 x 18 DSP
        with m.If(self.mode_in == GridMode.W4A8):
            m.d.comb += operand.eq((self.w_in[4:8].as_signed() << 12) + self.w_in[0:4].as_signed())
        with m.Else():
            m.d.comb += operand.eq(self.w_in.as_signed())
        for b in range(2):
            with m.If(self.w_latch & (self.w_bank == b)):
                m.d.sync += [op[b].eq(operand), mode[b].eq(self.mode_in)]

        m.submodules.mul = mul = PipelinedMultiplier()
        m.d.comb += [mul.a.eq(self.a_in), mul.b.eq(Mux(self.bank_in, op[1], op[0]))]
        mpipe = [Signal(1, name=f"mode_d{i}") for i in range(PipelinedMultiplier.STAGES)]
        m.d.sync += mpipe[0].eq(Mux(self.bank_in, mode[1], mode[0]))
        for i in range(1, len(mpipe)):
            m.d.sync += mpipe[i].eq(mpipe[i - 1])

        prod = Signal(signed(25))
        prod_mode = Signal(1)
        m.d.sync += [prod.eq(mul.p[0:25].as_signed()), prod_mode.eq(mpipe[-1])]

        lo = Signal(signed(12))
        hi = Signal(signed(12))
        m.d.comb += [lo.eq(prod[0:12].as_signed()), hi.eq((prod - lo)[12:25].as_signed())]
        add0 = Mux(prod_mode, lo, prod)
        add1 = Mux(prod_mode, hi, 0)
        m.d.sync += [
            self.psum_out[0].eq(self.psum_in[0] + add0),
            self.psum_out[1].eq(self.psum_in[1] + add1),
        ]
        return m


class Skew(wiring.Component):
    """Delays element i of a vector by ``base + i`` cycles (``reverse``: ``base + n - 1 - i``).

    Input and output are plain arrays (the grid edge is free-running: bubbles travel as data
    with their own valid bits, which :class:`SystolicArray` tracks).
    """

    def __init__(self, shape, n: int, reverse: bool = False, base: int = 0):
        self.n = n
        self.reverse = reverse
        self.base = base
        layout = data.ArrayLayout(shape, n)
        super().__init__({"i": In(layout), "o": Out(layout)})

    def elaborate(self, platform):
        m = Module()
        for i in range(self.n):
            d = self.base + (self.n - 1 - i if self.reverse else i)
            v = self.i[i]
            for k in range(d):
                r = Signal.like(self.o[i], name=f"d{i}_{k}")
                m.d.sync += r.eq(v)
                v = r
            m.d.comb += self.o[i].eq(v)
        return m


class Grid(wiring.Component):
    """The R x P array of processing elements, with no flow control.

    Ports (all raw, cycle by cycle):

    - ``a``, ``a_bank``: the activation row entering the left edge (already skewed: row r
      delayed r cycles by the caller) and the bank it uses (one per row, skewed the same way);
    - ``w``, ``w_mode``, ``w_shift``, ``w_latch``, ``w_bank``: per PE column, the weight byte
      entering the top and its controls (already skewed: column c delayed c cycles);
    - ``psum``: per PE column the two column-sum lanes leaving the bottom (column c is c
      cycles late; the caller de-skews).
    """

    def __init__(self, rows: int, pcols: int):
        self.rows, self.pcols = rows, pcols
        self.psum_w = psum_width(rows)
        lanes = data.ArrayLayout(signed(self.psum_w), 2)
        super().__init__({
            "a": In(data.ArrayLayout(signed(8), rows)),
            "a_bank": In(data.ArrayLayout(1, rows)),
            "w": In(data.ArrayLayout(8, pcols)),
            "w_mode": In(data.ArrayLayout(1, pcols)),
            "w_shift": In(data.ArrayLayout(1, pcols)),
            "w_latch": In(data.ArrayLayout(1, pcols)),
            "w_bank": In(data.ArrayLayout(1, pcols)),
            "psum": Out(data.ArrayLayout(lanes, pcols)),
        })

    def elaborate(self, platform):
        m = Module()
        R, P = self.rows, self.pcols
        pe = [[ProcessingElement(self.psum_w) for _ in range(P)] for _ in range(R)]
        for r in range(R):
            for c in range(P):
                e = pe[r][c]
                m.submodules[f"pe_{r}_{c}"] = e
                if c == 0:
                    m.d.comb += [e.a_in.eq(self.a[r]), e.bank_in.eq(self.a_bank[r])]
                else:
                    left = pe[r][c - 1]
                    m.d.comb += [e.a_in.eq(left.a_out), e.bank_in.eq(left.bank_out)]
                m.d.comb += e.w_in.eq(self.w[c] if r == 0 else pe[r - 1][c].w_out)
                if r == 0:
                    m.d.comb += [e.psum_in[0].eq(0), e.psum_in[1].eq(0)]
                else:
                    m.d.comb += e.psum_in.eq(pe[r - 1][c].psum_out)
                m.d.comb += [
                    e.mode_in.eq(self.w_mode[c]),
                    e.w_shift.eq(self.w_shift[c]),
                    e.w_latch.eq(self.w_latch[c]),
                    e.w_bank.eq(self.w_bank[c]),
                ]
        for c in range(P):
            m.d.comb += self.psum[c].eq(pe[R - 1][c].psum_out)
        return m


class SystolicArray(wiring.Component):
    """The grid with stream interfaces, double-buffered weights and an output FIFO.

    Streams (valid/ready, payload layouts from :func:`weight_row_layout`, :func:`act_row_layout`,
    :func:`out_row_layout`):

    - ``w_row`` (in): weight tiles, ``rows`` rows each. Tile j goes to bank j % 2. Its first
      ``rows - 1`` rows shift in whenever they arrive; its last row (which latches the tile) is
      accepted only when bank j % 2 is free: the tile that used it has issued its ``last``
      activation row at least ``rows`` cycles earlier.
    - ``a_row`` (in): activation rows for tile 0, 1, ... in order; ``last`` on a tile's final
      row. A row is accepted once its tile is latched and the output FIFO has room for it.
    - ``o_row`` (out): one row of column sums per activation row, ``LATENCY + 2`` cycles after
      it was accepted (the de-skewed sums are ready after ``LATENCY``; the buffered output FIFO
      adds 2), plus any output back-pressure; in order, with the tile's mode and ``last``.

    Throughput: one activation row per cycle; a tile of T >= ``rows`` rows hides the next tile's
    load entirely (back-to-back tiles, no bubble). A tile of T < ``rows`` rows (GEMV: T = 1) is
    bound by weight loading: one tile per ``rows`` cycles, ``cols`` weights per cycle.
    Back-pressure on ``o_row`` never stalls the array mid-flight: rows are only admitted
    against free FIFO entries (credits).
    """

    def __init__(self, params: ChipParams = ChipParams(), fifo_depth: int | None = None):
        self.params = params
        self.rows, self.pcols = params.rows, params.cols // 2
        # input skew register (1) + skew (r) + columns (c) + product (PE LATENCY) + psum (1),
        # then the de-skew: the same for every row and column
        self.latency = self.rows + self.pcols + ProcessingElement.LATENCY
        self.fifo_depth = fifo_depth or self.latency + 4
        super().__init__({
            "w_row": In(stream.Signature(weight_row_layout(self.pcols))),
            "a_row": In(stream.Signature(act_row_layout(self.rows))),
            "o_row": Out(stream.Signature(out_row_layout(self.rows, self.pcols))),
            "busy": Out(1),
        })

    @property
    def LATENCY(self):
        return self.latency

    def elaborate(self, platform):
        m = Module()
        R, P = self.rows, self.pcols
        m.submodules.grid = grid = Grid(R, P)
        # One register on every input lane (base=1) keeps the admission logic (credits, bank
        # state) off the DSP inputs of the first PEs; weights and activations get the same one,
        # so their relative timing (the bank bookkeeping below) is unchanged.
        m.submodules.a_skew = a_skew = Skew(data.StructLayout({"a": signed(8), "bank": 1}), R,
                                            base=1)
        m.submodules.w_skew = w_skew = Skew(
            data.StructLayout({"w": 8, "mode": 1, "shift": 1, "latch": 1, "bank": 1}), P, base=1)
        lanes = data.ArrayLayout(signed(grid.psum_w), 2)
        m.submodules.deskew = deskew = Skew(lanes, P, reverse=True)
        out_layout = out_row_layout(R, P)
        m.submodules.fifo = ofifo = fifo.SyncFIFOBuffered(width=out_layout.size,
                                                           depth=self.fifo_depth)

        # -- bank bookkeeping ---------------------------------------------------------------
        # full[b]: bank b holds a latched tile not yet fully used by activations.
        # drain[b]: cycles until bank b may be latched again after its tile's last activation.
        full = [Signal(1, name=f"full{b}") for b in range(2)]
        drain = [Signal(range(R + 1), name=f"drain{b}") for b in range(2)]
        w_bank = Signal(1)  # bank the next weight tile goes to
        a_bank = Signal(1)  # bank the next activation row uses
        w_count = Signal(range(R))  # rows of the current weight tile already shifted in

        # -- weight side ----------------------------------------------------------------------
        last_w_row = w_count == R - 1
        bank_free = Signal(1)
        m.d.comb += bank_free.eq(Mux(w_bank, ~full[1] & (drain[1] == 0),
                                     ~full[0] & (drain[0] == 0)))
        w_take = Signal(1)
        m.d.comb += [
            self.w_row.ready.eq(~last_w_row | bank_free),
            w_take.eq(self.w_row.valid & self.w_row.ready),
        ]
        latch = Signal(1)
        m.d.comb += latch.eq(w_take & last_w_row)
        with m.If(w_take):
            m.d.sync += w_count.eq(Mux(last_w_row, 0, w_count + 1))
        with m.If(latch):
            m.d.sync += w_bank.eq(~w_bank)
        for c in range(P):
            m.d.comb += [
                w_skew.i[c].w.eq(self.w_row.payload.data[c]),
                w_skew.i[c].mode.eq(self.w_row.payload.mode),
                w_skew.i[c].shift.eq(w_take),
                w_skew.i[c].latch.eq(latch),
                w_skew.i[c].bank.eq(w_bank),
                grid.w[c].eq(w_skew.o[c].w),
                grid.w_mode[c].eq(w_skew.o[c].mode),
                grid.w_shift[c].eq(w_skew.o[c].shift),
                grid.w_latch[c].eq(w_skew.o[c].latch),
                grid.w_bank[c].eq(w_skew.o[c].bank),
            ]

        # -- activation side ----------------------------------------------------------------
        # rows accepted and not yet read from the output FIFO (in the array or the FIFO), a
        # register: the admission is a compare against a constant
        used = Signal(range(self.fifo_depth + 1))
        credit = Signal(1)
        m.d.comb += credit.eq(used < self.fifo_depth)
        tile_ready = Mux(a_bank, full[1], full[0])
        a_take = Signal(1)
        m.d.comb += [
            self.a_row.ready.eq(tile_ready & credit),
            a_take.eq(self.a_row.valid & self.a_row.ready),
        ]
        for r in range(R):
            m.d.comb += [
                a_skew.i[r].a.eq(Mux(a_take, self.a_row.payload.data[r], 0)),
                a_skew.i[r].bank.eq(a_bank),
                grid.a[r].eq(a_skew.o[r].a),
                grid.a_bank[r].eq(a_skew.o[r].bank),
            ]
        a_done = Signal(1)  # the tile's last activation row is accepted this cycle
        m.d.comb += a_done.eq(a_take & self.a_row.payload.last)
        with m.If(a_done):
            m.d.sync += a_bank.eq(~a_bank)

        for b in range(2):
            with m.If(latch & (w_bank == b)):
                m.d.sync += full[b].eq(1)
            with m.Elif(a_done & (a_bank == b)):
                # The last row reaches PE row R-1 (column c) R-1 (+c) cycles later; a latch in
                # that very cycle is safe (the product samples the old bank). drain = R-2
                # makes bank_free rise exactly then: tiles of T >= rows rows run back to back.
                m.d.sync += [full[b].eq(0), drain[b].eq(max(R - 2, 0))]
            with m.Elif(drain[b] != 0):
                m.d.sync += drain[b].eq(drain[b] - 1)

        # The tile's mode, per activation row, for the output (mode of the bank in use).
        mode_of = [Signal(GridMode, name=f"mode_of{b}") for b in range(2)]
        for b in range(2):
            with m.If(latch & (w_bank == b)):
                m.d.sync += mode_of[b].eq(self.w_row.payload.mode)

        # -- valid / last / mode delay line to the output (LATENCY cycles) -------------------
        tag = data.StructLayout({"valid": 1, "last": 1, "mode": GridMode})
        pipe = [Signal(tag, name=f"tag{i}") for i in range(self.latency)]
        m.d.sync += [
            pipe[0].valid.eq(a_take),
            pipe[0].last.eq(self.a_row.payload.last),
            pipe[0].mode.eq(Mux(a_bank, mode_of[1], mode_of[0])),
        ]
        for i in range(1, self.latency):
            m.d.sync += pipe[i].eq(pipe[i - 1])
        out_tag = pipe[-1]

        # -- output -------------------------------------------------------------------------
        for c in range(P):
            m.d.comb += deskew.i[c].eq(grid.psum[c])
        row = Signal(out_layout)
        for c in range(P):
            with m.If(out_tag.mode == GridMode.W4A8):
                m.d.comb += [row.data[2 * c].eq(deskew.o[c][0]),
                             row.data[2 * c + 1].eq(deskew.o[c][1])]
            with m.Else():
                m.d.comb += row.data[c].eq(deskew.o[c][0])
        m.d.comb += [
            row.mode.eq(out_tag.mode),
            row.last.eq(out_tag.last),
            ofifo.w_data.eq(row),
            ofifo.w_en.eq(out_tag.valid),
        ]
        m.d.sync += used.eq(used + a_take - (ofifo.r_en & ofifo.r_rdy))

        m.d.comb += [
            self.o_row.payload.eq(ofifo.r_data),
            self.o_row.valid.eq(ofifo.r_rdy),
            ofifo.r_en.eq(self.o_row.ready),
            self.busy.eq(full[0] | full[1] | (used != 0) | (w_count != 0)),
        ]
        return m

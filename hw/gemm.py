"""The GEMM datapath: the systolic grid followed by the group scaler, bit-exact with
``sim.golden.gemm`` / ``gemm_act``.

The grid (``hw/grid.py``) produces, per activation row t and K-tile, the column sums
``acc[t, n]`` of one slice of ``rows`` values along K. The golden model scales them per
activation group and weight group (``sim/golden.py``, :func:`sim.golden.gemm`)::

    Y[t, n] = Σ_tiles mant[t, h] * (scale[n, g] * acc[t, n] + offset[n, g] * xsum[t])
    (mant[t, h] = 2**gshift, a power of two: a shift)
    out[t, n] = saturate32(rshift_round(Y, shift[n] - exp[t]) + bias[n])

where h / g are the activation / weight groups the tile lies in and ``xsum`` the sum of the
tile's activations (``rows`` divides the activation group, so the sum over a group's tiles is
the golden ``acc_h``; the golden sums are linear, so scaling tile by tile is exact).
:class:`GroupScaler` computes exactly this, with ``Y`` in a 64-bit accumulator memory indexed by
t (``acc_entries`` rows). The same unit serves activation x activation products: for QKᵀ the
column's K group mantissa ``2**gshift`` is ``scale = 1`` with ``kshift = gshift`` (a shift, so
every 5-bit ``gshift`` is exact) and ``shift = F - exp_k``; for P·V with A15 probabilities
the two INT8 planes run as two passes with column scale 128 and 1.

:class:`GemmUnit` joins grid and scaler: per accepted activation row it records the row's
scaler information (mantissa, exponent, accumulator row, first/final flags and the activation
sum, computed here) in a side FIFO that lines up with the grid's in-order outputs.
"""

from amaranth.hdl import C as C0
from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .grid import SystolicArray, act_row_layout, psum_width, weight_row_layout
from .params import ChipParams

__all__ = ["GroupScaler", "GemmUnit", "row_info_layout", "tile_param_layout",
           "scaler_in_layout", "gemm_out_layout", "xsum_width", "SCALE_BITS", "GSHIFT_BITS",
           "Y_BITS"]

#: Column scale: a weight group's INT16 scale, or an activation group mantissa (< 2**21).
SCALE_BITS = 22
#: Activation group scales are powers of two: the mantissa 2**gshift, gshift <= act_headroom.
GSHIFT_BITS = 5
#: The group scaler's accumulator (the golden model bounds |Y| < 2**61).
Y_BITS = 64
EXP_BITS = 8


def row_info_layout(params: ChipParams) -> data.StructLayout:
    """What the scaler needs per activation row besides its column sums."""
    return data.StructLayout({
        "gshift": unsigned(GSHIFT_BITS),  # the activation group's mantissa is 2**gshift
        "gzero": 1,                    # ... or 0 (group all zero or below the headroom)
        "exp": signed(EXP_BITS),       # the row exponent
        "t": unsigned(max(params.acc_entries - 1, 1).bit_length()),  # accumulator row
        "first": 1,                    # first contribution: Y = P (else Y += P)
        "final": 1,                    # last contribution: emit the rounded output
    })


def tile_param_layout(params: ChipParams) -> data.StructLayout:
    """Per K-tile, per output column: scale, offset, ``kshift`` (the column's products are
    also shifted left by it: a key group mantissa ``2**gshift`` of ``psrc = KV``, whose
    ``gshift`` may exceed what a ``SCALE_BITS`` scale holds), and (used on final rows) shift,
    bias. ``shift`` has a bit more than a PRM out word's so that ``F - exp`` of a KV exponent
    fits."""
    C = params.cols
    return data.StructLayout({
        "scale": data.ArrayLayout(signed(SCALE_BITS), C),
        "offset": data.ArrayLayout(signed(16), C),
        "kshift": data.ArrayLayout(unsigned(GSHIFT_BITS), C),
        "shift": data.ArrayLayout(signed(EXP_BITS + 1), C),
        "bias": data.ArrayLayout(signed(32), C),
    })


def xsum_width(rows: int) -> int:
    """Bits of the sum of ``rows`` INT8 activations."""
    return 8 + max(rows - 1, 1).bit_length()


def scaler_in_layout(params: ChipParams) -> data.StructLayout:
    pw = psum_width(params.rows)
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(pw), params.cols),
        "xsum": signed(xsum_width(params.rows)),
        "info": row_info_layout(params),
        "last": 1,  # last row of the K-tile: its parameters are released after it
    })


def gemm_out_layout(params: ChipParams) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(signed(32), params.cols),
        "t": row_info_layout(params)["t"].shape,
    })


def _saturate(v, bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(v > hi, hi, Mux(v < lo, lo, v))


class GroupScaler(wiring.Component):
    """Scales grid column sums by activation and weight group scales, accumulates, rounds.

    Streams: ``i_row`` (:func:`scaler_in_layout`), ``i_param`` (:func:`tile_param_layout`,
    one entry per K-tile, held while the tile's rows pass and released after the row marked
    ``last``), ``o_row`` (:func:`gemm_out_layout`, one per ``final`` row).

    Pipeline (one row per cycle, :attr:`STAGES` = 11 stages from a row's acceptance to its
    output FIFO write): register; the products ``scale * acc`` and ``offset * xsum`` (and the
    output shift ``s = shift - exp``); ``Z = scale*acc + offset*xsum`` (and the shift
    amounts); ``P = Z << (gshift + kshift)`` (0 if ``gzero``; modulo 2**64) and read ``Y[t]``;
    ``Y = (first ? 0 : Y[t]) + P`` written back, its low 32 bits in one stage and its high 32
    bits (with the carry) in the next (each half's read is transparent to its write, so
    consecutive rows on the same t, as in GEMV, see each other's sums); on ``final`` rows the
    shift by ``s``, right (``Y >> (s - 1)``) or left (``Y << -s``), both clamped to 36 bits
    (which saturate the output the same way), as one arithmetic right shift of a 72-bit
    operand (``Y``, or ``sat36(Y) << 35`` shifted by ``35 + s``) in two stages (by multiples
    of 8, then by 0..7 with the clamp); then ``r + 2 * bias + right`` and the saturation of
    its half (``saturate32(rshift_round(Y, s) + bias)``). Rows are admitted only against free
    output FIFO entries (a counter of final rows admitted and not yet read), so ``o_row``
    back-pressure never stalls the pipeline mid-flight; the FIFO (``STAGES + 3`` entries by
    default) keeps one row per cycle flowing.

    Multipliers: ``scale * acc`` is ``scale * acc[:17]`` (22 x 17 bits: two 18 x 18 DSP
    blocks) plus ``scale * acc[17:]`` (a 3-bit signed factor: shifts and adds in logic);
    ``offset * xsum`` is 16 x :func:`xsum_width` bits (one block up to 1024 rows).
    """

    #: Stages from a row's acceptance to its output FIFO write (the timing model's latency).
    STAGES = 11
    #: Stages that hold a non-final row (its sum's high half is written back in the fifth;
    #: the later ones keep final rows only): a non-final tile's last row leaves the pipeline
    #: after these.
    NONFINAL_STAGES = 5
    #: ``acc`` bits that go to the DSP product; the rest multiply in logic.
    ACC_LO = 17

    def __init__(self, params: ChipParams = ChipParams(), fifo_depth: int | None = None):
        self.params = params
        self.fifo_depth = self.STAGES + 3 if fifo_depth is None else fifo_depth
        super().__init__({
            "i_row": In(stream.Signature(scaler_in_layout(params))),
            "i_param": In(stream.Signature(tile_param_layout(params))),
            "o_row": Out(stream.Signature(gemm_out_layout(params))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        C = p.cols
        info_l = row_info_layout(p)
        out_l = gemm_out_layout(p)
        m.submodules.ofifo = ofifo = fifo.SyncFIFOBuffered(width=out_l.size,
                                                           depth=self.fifo_depth)
        # Y in two halves, each read, added and written back in its own stage (the low
        # half's carry registered in between); each read is transparent to its write, so
        # consecutive rows on the same t, as in GEMV, see each other's sums
        HB = Y_BITS // 2
        m.submodules.ymem_lo = ymem_lo = Memory(shape=data.ArrayLayout(unsigned(HB), C),
                                                depth=p.acc_entries, init=[])
        m.submodules.ymem_hi = ymem_hi = Memory(shape=data.ArrayLayout(unsigned(HB), C),
                                                depth=p.acc_entries, init=[])
        wport_lo, wport_hi = ymem_lo.write_port(), ymem_hi.write_port()
        rport_lo = ymem_lo.read_port(transparent_for=(wport_lo,))
        rport_hi = ymem_hi.read_port(transparent_for=(wport_hi,))

        # -- admission -----------------------------------------------------------------------
        # final rows admitted and not yet read from the output FIFO (in the pipeline or the
        # FIFO): a register, so that the admission is a compare against a constant
        used = Signal(range(self.fifo_depth + 1))
        take = Signal(1)
        credit = used < self.fifo_depth
        m.d.comb += [
            self.i_row.ready.eq(self.i_param.valid & credit),
            take.eq(self.i_row.valid & self.i_row.ready),
            self.i_param.ready.eq(take & self.i_row.payload.last),
        ]

        # -- stage 1: register the row and its tile's parameters ------------------------------
        s1_v = Signal(1)
        s1 = Signal(scaler_in_layout(p))
        s1_par = Signal(tile_param_layout(p))
        m.d.sync += [s1_v.eq(take), s1.eq(self.i_row.payload), s1_par.eq(self.i_param.payload)]

        # -- stage 2: the products scale * acc (DSP part and logic part), offset * xsum ------
        pw = psum_width(p.rows)
        lo = min(self.ACC_LO, pw - 1)
        hib = pw - lo  # bits of acc[lo:], signed
        s2_v = Signal(1)
        s2_pa = Signal(data.ArrayLayout(signed(SCALE_BITS + lo + 1), C))  # scale * acc[:lo]
        s2_pb = Signal(data.ArrayLayout(signed(SCALE_BITS + hib), C))     # scale * acc[lo:]
        s2_po = Signal(data.ArrayLayout(signed(16 + xsum_width(p.rows)), C))
        s2_info = Signal(info_l)
        s2_bias = Signal(data.ArrayLayout(signed(32), C))
        s2_ksh = Signal(data.ArrayLayout(unsigned(GSHIFT_BITS), C))
        # the output shift s = shift - exp, from here on (the control of stages 6..)
        s2_sh = Signal(data.ArrayLayout(signed(EXP_BITS + 2), C))
        m.d.sync += [s2_v.eq(s1_v), s2_info.eq(s1.info), s2_ksh.eq(s1_par.kshift),
                     s2_bias.eq(s1_par.bias)]
        for n in range(C):
            sc = s1_par.scale[n]
            acc_lo = s1.acc[n].as_unsigned()[:lo]
            acc_hi = s1.acc[n][lo:].as_signed()
            # acc_hi * scale as shifts and adds: a few bits, not worth a DSP block
            terms = [Mux(acc_hi[i], sc << i, 0) for i in range(hib - 1)]
            terms.append(Mux(acc_hi[hib - 1], -(sc << (hib - 1)), 0))
            m.d.sync += [s2_pa[n].eq(sc * acc_lo), s2_pb[n].eq(sum(terms)),
                         s2_po[n].eq(s1_par.offset[n] * s1.xsum),
                         s2_sh[n].eq(s1_par.shift[n] - s1.info.exp)]

        # -- stage 3: Z = scale * acc + offset * xsum; the P shift amount; the output shift's
        # control: right (1 <= s <= 62: Y >> (s - 1), rounded in stage 10), zero (s >= 63:
        # |Y| < 2**62 gives 0), left (s <= 0: Y << k, k = min(-s, 35)), as one arithmetic
        # right shift by ``a`` of a 72-bit operand (right: Y; left: sat36(Y) << 35, a = 35 - k)
        zw = SCALE_BITS + pw + 1
        ctl_l = data.StructLayout({"right": 1, "zero": 1, "a": unsigned(6)})
        s3_v = Signal(1)
        s3_z = Signal(data.ArrayLayout(signed(zw), C))
        s3_info = Signal(info_l)
        s3_bias = Signal.like(s2_bias)
        s3_amt = Signal(data.ArrayLayout(unsigned(GSHIFT_BITS + 1), C))
        s3_ctl = Signal(data.ArrayLayout(ctl_l, C))
        m.d.sync += [s3_v.eq(s2_v), s3_info.eq(s2_info), s3_bias.eq(s2_bias)]
        for n in range(C):
            sh = s2_sh[n]
            right = (sh > 0) & (sh < 63)
            m.d.sync += [
                s3_z[n].eq(s2_pa[n] + (s2_pb[n] << lo) + s2_po[n]),
                s3_amt[n].eq(s2_info.gshift + s2_ksh[n]),
                s3_ctl[n].right.eq(right),
                s3_ctl[n].zero.eq(sh >= 63),
                s3_ctl[n].a.eq(Mux(right, sh - 1, Mux(sh < -35, 0, sh + 35))),
            ]

        # -- stage 4: P = Z << gshift (the activation's power-of-two scale); read Y[t] -----------
        s4_v = Signal(1)
        s4_p = Signal(data.ArrayLayout(signed(Y_BITS), C))
        s4_info = Signal(info_l)
        s4_bias = Signal.like(s2_bias)
        s4_ctl = Signal.like(s3_ctl)
        m.d.comb += [rport_lo.addr.eq(s3_info.t), rport_lo.en.eq(s3_v)]
        m.d.sync += [s4_v.eq(s3_v), s4_info.eq(s3_info), s4_bias.eq(s3_bias),
                     s4_ctl.eq(s3_ctl)]
        for n in range(C):
            m.d.sync += s4_p[n].eq(Mux(s3_info.gzero, 0, s3_z[n] << s3_amt[n]))

        # -- stage 5: Y = (first ? 0 : Y[t]) + P, written back: the low half; read the high
        # half's Y[t] ------------------------------------------------------------------------
        ylo = Signal(data.ArrayLayout(unsigned(HB + 1), C))
        for n in range(C):
            m.d.comb += ylo[n].eq(Mux(s4_info.first, 0, rport_lo.data[n])
                                  + s4_p[n].as_unsigned()[:HB])
        m.d.comb += [wport_lo.addr.eq(s4_info.t), wport_lo.en.eq(s4_v),
                     rport_hi.addr.eq(s4_info.t), rport_hi.en.eq(s4_v)]
        for n in range(C):
            m.d.comb += wport_lo.data[n].eq(ylo[n][:HB])
        s4h_v = Signal(1)
        s4h_lo = Signal(data.ArrayLayout(unsigned(HB + 1), C))  # with the carry
        s4h_phi = Signal(data.ArrayLayout(unsigned(HB), C))     # P's high half
        s4h_info = Signal(info_l)
        s4h_bias = Signal.like(s2_bias)
        s4h_ctl = Signal.like(s3_ctl)
        m.d.sync += [s4h_v.eq(s4_v), s4h_lo.eq(ylo), s4h_info.eq(s4_info),
                     s4h_bias.eq(s4_bias), s4h_ctl.eq(s4_ctl)]
        for n in range(C):
            m.d.sync += s4h_phi[n].eq(s4_p[n].as_unsigned()[HB:])

        # -- stage 6: the high half (+ the low half's carry), written back -----------------------
        yhi = Signal(data.ArrayLayout(unsigned(HB), C))
        for n in range(C):
            m.d.comb += yhi[n].eq(Mux(s4h_info.first, 0, rport_hi.data[n]) + s4h_phi[n]
                                  + s4h_lo[n][HB])
        m.d.comb += [wport_hi.addr.eq(s4h_info.t), wport_hi.data.eq(yhi),
                     wport_hi.en.eq(s4h_v)]
        s5_v = Signal(1)
        s5_y = Signal(data.ArrayLayout(signed(Y_BITS), C))
        s5_t = Signal.like(s4_info.t)
        s5_bias = Signal.like(s2_bias)
        s5_ctl = Signal.like(s3_ctl)
        m.d.sync += [s5_v.eq(s4h_v & s4h_info.final), s5_t.eq(s4h_info.t),
                     s5_bias.eq(s4h_bias), s5_ctl.eq(s4h_ctl)]
        for n in range(C):
            m.d.sync += s5_y[n].eq(Cat(s4h_lo[n][:HB], yhi[n]))

        # Stages 7..11: r = sat36(Y >> (s - 1)) (right) or sat36(sat36(Y) << k) (left; any
        # |result| >= 2**34 saturates the INT32 output the same way the golden model's clamp
        # does, and so does any clamp beyond that: 36 bits), then
        # out = saturate32(((r + 1) >> 1 if right else r) + bias).
        XW = 72  # the shifter's operand: Y (64 bits) or sat36(Y) << 35 (71 bits)

        def fits(v, lo_bit):
            """v[lo_bit:] all equal to v's sign: v fits in lo_bit + 1 bits."""
            top = v[len(v) - 1]
            return ~(v[lo_bit:len(v) - 1] ^ top.replicate(len(v) - 1 - lo_bit)).any()

        def sat(sign, bits):
            return Mux(sign, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)

        # -- stage 7: the shifter's operand ----------------------------------------------------
        s6_v = Signal(1)
        s6_x = Signal(data.ArrayLayout(signed(XW), C))
        s6_a = Signal(data.ArrayLayout(unsigned(6), C))
        s6_right = Signal(C)
        s6_bias = Signal.like(s2_bias)
        s6_t = Signal.like(s5_t)
        m.d.sync += [s6_v.eq(s5_v), s6_bias.eq(s5_bias), s6_t.eq(s5_t)]
        for n in range(C):
            yv = s5_y[n]
            ctl = s5_ctl[n]
            yc = Signal(signed(36), name=f"yc{n}")
            m.d.comb += yc.eq(Mux(fits(yv, 35), yv[:36], sat(yv[Y_BITS - 1], 36)))
            m.d.sync += [
                s6_x[n].eq(Mux(ctl.zero, 0, Mux(ctl.right, yv, yc << 35))),
                s6_a[n].eq(ctl.a), s6_right[n].eq(ctl.right),
            ]

        # -- stage 8: arithmetic right shift by a & 56 -------------------------------------------
        s7_v = Signal(1)
        s7_x = Signal.like(s6_x)
        s7_f = Signal(data.ArrayLayout(unsigned(3), C))
        s7_right = Signal(C)
        s7_bias = Signal.like(s2_bias)
        s7_t = Signal.like(s5_t)
        m.d.sync += [s7_v.eq(s6_v), s7_right.eq(s6_right), s7_bias.eq(s6_bias), s7_t.eq(s6_t)]
        for n in range(C):
            m.d.sync += [s7_x[n].eq(s6_x[n] >> Cat(C0(0, 3), s6_a[n][3:6])),
                         s7_f[n].eq(s6_a[n][0:3])]

        # -- stage 9: right shift by a & 7; clamp to 36 bits ------------------------------------
        s8_v = Signal(1)
        s8_r = Signal(data.ArrayLayout(signed(36), C))
        s8_right = Signal(C)
        s8_bias = Signal.like(s2_bias)
        s8_t = Signal.like(s5_t)
        m.d.sync += [s8_v.eq(s7_v), s8_right.eq(s7_right), s8_bias.eq(s7_bias), s8_t.eq(s7_t)]
        for n in range(C):
            xv, f = s7_x[n], s7_f[n]
            sign = xv[XW - 1]
            # the result xv >> f fits in 36 bits iff xv[35 + f:] are all sign bits
            e = xv[35:XW - 1] ^ sign.replicate(XW - 36)
            bad = e[8:].any() | Cat(*(e[j] & (f <= j) for j in range(8))).any()
            m.d.sync += s8_r[n].eq(Mux(bad, sat(sign, 36), (xv >> f)[:36]))

        # -- stage 10: the rounding and the bias: (r + 2 * bias + 1) >> 1 is ((r + 1) >> 1) + bias
        s9_v = Signal(1)
        s9_sum = Signal(data.ArrayLayout(signed(38), C))
        s9_right = Signal(C)
        s9_t = Signal.like(s5_t)
        m.d.sync += [s9_v.eq(s8_v), s9_right.eq(s8_right), s9_t.eq(s8_t)]
        for n in range(C):
            rt = s8_right[n]
            m.d.sync += s9_sum[n].eq(s8_r[n] + Mux(rt, s8_bias[n] << 1, s8_bias[n]) + rt)

        # -- stage 11: out = saturate32 ------------------------------------------------------
        s10_v = Signal(1)
        s10 = Signal(out_l)
        for n in range(C):
            q = Signal(signed(37), name=f"q{n}")
            m.d.comb += q.eq(Mux(s9_right[n], s9_sum[n] >> 1, s9_sum[n]))
            m.d.sync += s10.data[n].eq(Mux(fits(q, 31), q[:32], sat(q[36], 32)))
        m.d.sync += [s10_v.eq(s9_v), s10.t.eq(s9_t)]

        m.d.comb += [ofifo.w_data.eq(s10), ofifo.w_en.eq(s10_v)]
        m.d.comb += self.busy.eq(s1_v | s2_v | s3_v | s4_v | s4h_v | s5_v | s6_v | s7_v | s8_v
                                 | s9_v | s10_v | (used != 0))
        # rows entered (final) and not yet read from the output FIFO: the admission credit
        enter = take & self.i_row.payload.info.final
        m.d.sync += used.eq(used + enter - (ofifo.r_en & ofifo.r_rdy))
        m.d.comb += [
            self.o_row.payload.eq(ofifo.r_data),
            self.o_row.valid.eq(ofifo.r_rdy),
            ofifo.r_en.eq(self.o_row.ready),
        ]
        return m


class GemmUnit(wiring.Component):
    """Grid + group scaler: weight tiles and activation rows in, wide output rows out.

    ``w_row``: the grid's weight stream (``hw.grid.weight_row_layout``). ``a_row``: activation
    rows with the grid fields (``data``, ``last``) and the scaler's ``info``
    (:func:`row_info_layout`). ``i_param``: one :func:`tile_param_layout` entry per K-tile,
    in tile order. ``o_row``: the finished rows (:func:`gemm_out_layout`).
    """

    def __init__(self, params: ChipParams = ChipParams()):
        self.params = params
        self.array = SystolicArray(params)
        a_layout = data.StructLayout({
            "data": act_row_layout(params.rows)["data"].shape,
            "last": 1,
            "info": row_info_layout(params),
        })
        super().__init__({
            "w_row": In(stream.Signature(weight_row_layout(params.cols // 2))),
            "a_row": In(stream.Signature(a_layout)),
            "i_param": In(stream.Signature(tile_param_layout(params))),
            "o_row": Out(stream.Signature(gemm_out_layout(params))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        m.submodules.array = arr = self.array
        m.submodules.scaler = sc = GroupScaler(p)
        side_l = data.StructLayout({"info": row_info_layout(p), "xsum": signed(xsum_width(p.rows))})
        m.submodules.side = side = fifo.SyncFIFOBuffered(
            width=side_l.size, depth=arr.fifo_depth + arr.latency + 2)

        wiring.connect(m, wiring.flipped(self.w_row), arr.w_row)
        wiring.connect(m, wiring.flipped(self.i_param), sc.i_param)
        wiring.connect(m, sc.o_row, wiring.flipped(self.o_row))

        # activation rows: into the grid and, in step, their scaler info into the side FIFO
        xsum = Signal(signed(xsum_width(p.rows)))
        terms = [self.a_row.payload.data[r] for r in range(p.rows)]
        while len(terms) > 1:  # a balanced adder tree, not a chain
            terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                     for i in range(0, len(terms), 2)]
        m.d.comb += xsum.eq(terms[0])
        side_in = Signal(side_l)
        m.d.comb += [
            side_in.info.eq(self.a_row.payload.info),
            side_in.xsum.eq(xsum),
            arr.a_row.payload.data.eq(self.a_row.payload.data),
            arr.a_row.payload.last.eq(self.a_row.payload.last),
            arr.a_row.valid.eq(self.a_row.valid & side.w_rdy),
            self.a_row.ready.eq(arr.a_row.ready & side.w_rdy),
            side.w_data.eq(side_in),
            side.w_en.eq(self.a_row.valid & self.a_row.ready),
        ]

        # grid outputs and side info, joined
        side_out = Signal(side_l)
        m.d.comb += [
            side_out.eq(side.r_data),
            sc.i_row.payload.acc.eq(arr.o_row.payload.data),
            sc.i_row.payload.xsum.eq(side_out.xsum),
            sc.i_row.payload.info.eq(side_out.info),
            sc.i_row.payload.last.eq(arr.o_row.payload.last),
            sc.i_row.valid.eq(arr.o_row.valid & side.r_rdy),
            arr.o_row.ready.eq(sc.i_row.ready & side.r_rdy),
            side.r_en.eq(sc.i_row.ready & arr.o_row.valid),
            self.busy.eq(arr.busy | side.r_rdy | sc.busy),
        ]
        return m

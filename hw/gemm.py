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

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .grid import SystolicArray, act_row_layout, psum_width, weight_row_layout
from .params import ChipParams

__all__ = ["GroupScaler", "GemmUnit", "row_info_layout", "tile_param_layout",
           "scaler_in_layout", "gemm_out_layout", "SCALE_BITS", "GSHIFT_BITS", "Y_BITS"]

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


def scaler_in_layout(params: ChipParams) -> data.StructLayout:
    pw = psum_width(params.rows)
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(pw), params.cols),
        "xsum": signed(pw),
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

    Pipeline (one row per cycle, 5 stages): register; ``Z = scale*acc + offset*xsum``;
    ``P = Z << (gshift + kshift)`` (0 if ``gzero``; modulo 2**64) and read ``Y[t]``;
    ``Y = (first ? 0 : Y[t]) + P`` written back (the read is transparent to this write, so
    consecutive rows on the same t, as in GEMV, see each other's sums); on ``final`` rows
    ``saturate32(rshift_round(Y, shift - exp) + bias)``.
    Rows are admitted only against free output FIFO entries, so ``o_row`` back-pressure never
    stalls the pipeline mid-flight.
    """

    STAGES = 5

    def __init__(self, params: ChipParams = ChipParams(), fifo_depth: int = 8):
        self.params = params
        self.fifo_depth = fifo_depth
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
        m.submodules.ymem = ymem = Memory(shape=data.ArrayLayout(signed(Y_BITS), C),
                                          depth=p.acc_entries, init=[])
        wport = ymem.write_port()
        rport = ymem.read_port(transparent_for=(wport,))

        # -- admission -----------------------------------------------------------------------
        inflight = Signal(range(self.STAGES + self.fifo_depth + 1))
        take = Signal(1)
        credit = inflight + ofifo.level < self.fifo_depth
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

        # -- stage 2: Z = scale * acc + offset * xsum ------------------------------------------
        zw = SCALE_BITS + psum_width(p.rows) + 1
        s2_v = Signal(1)
        s2_z = Signal(data.ArrayLayout(signed(zw), C))
        s2_info = Signal(info_l)
        s2_par = Signal(data.StructLayout({"shift": data.ArrayLayout(signed(EXP_BITS + 1), C),
                                           "bias": data.ArrayLayout(signed(32), C)}))
        s2_ksh = Signal(data.ArrayLayout(unsigned(GSHIFT_BITS), C))
        m.d.sync += [s2_v.eq(s1_v), s2_info.eq(s1.info), s2_ksh.eq(s1_par.kshift),
                     s2_par.shift.eq(s1_par.shift), s2_par.bias.eq(s1_par.bias)]
        for n in range(C):
            m.d.sync += s2_z[n].eq(s1_par.scale[n] * s1.acc[n] + s1_par.offset[n] * s1.xsum)

        # -- stage 3: P = Z << gshift (the activation's power-of-two scale); read Y[t] -----------
        s3_v = Signal(1)
        s3_p = Signal(data.ArrayLayout(signed(Y_BITS), C))
        s3_info = Signal(info_l)
        s3_par = Signal.like(s2_par)
        m.d.comb += [rport.addr.eq(s2_info.t), rport.en.eq(s2_v)]
        m.d.sync += [s3_v.eq(s2_v), s3_info.eq(s2_info), s3_par.eq(s2_par)]
        for n in range(C):
            amount = Signal(GSHIFT_BITS + 1, name=f"pshift{n}")
            m.d.comb += amount.eq(s2_info.gshift + s2_ksh[n])
            m.d.sync += s3_p[n].eq(Mux(s2_info.gzero, 0, s2_z[n] << amount))

        # -- stage 4: Y = (first ? 0 : Y[t]) + P, written back ---------------------------------
        y = Signal(data.ArrayLayout(signed(Y_BITS), C))
        for n in range(C):
            m.d.comb += y[n].eq(Mux(s3_info.first, 0, rport.data[n]) + s3_p[n])
        m.d.comb += [wport.addr.eq(s3_info.t), wport.data.eq(y), wport.en.eq(s3_v)]
        s4_v = Signal(1)
        s4_y = Signal.like(y)
        s4_info = Signal(info_l)
        s4_par = Signal.like(s2_par)
        m.d.sync += [s4_v.eq(s3_v & s3_info.final), s4_y.eq(y), s4_info.eq(s3_info),
                     s4_par.eq(s3_par)]

        # -- stage 5: out = saturate32(rshift_round(Y, shift - exp) + bias) --------------------
        s5_v = Signal(1)
        s5 = Signal(out_l)
        for n in range(C):
            sh = Signal(signed(EXP_BITS + 2), name=f"sh{n}")
            m.d.comb += sh.eq(s4_par.shift[n] - s4_info.exp)
            yv = s4_y[n]
            r = Signal(signed(Y_BITS + 1), name=f"r{n}")
            with m.If(sh >= 63):
                m.d.comb += r.eq(0)  # |Y| < 2**62: rounds to 0
            with m.Elif(sh > 0):
                shp = Signal(6, name=f"shp{n}")
                shm1 = Signal(6, name=f"shm1_{n}")
                half = Signal(signed(Y_BITS + 1), name=f"half{n}")
                m.d.comb += [shp.eq(sh[0:6]), shm1.eq(sh[0:6] - 1),
                             half.eq(Const(1, signed(Y_BITS + 1)) << shm1),
                             r.eq((yv + half) >> shp)]
            with m.Else():
                # Left shift; any |result| >= 2**34 saturates the INT32 output the same way
                # the golden model's clamp does, so clamp there instead of at 2**62.
                k = Signal(range(64), name=f"k{n}")
                m.d.comb += k.eq(Mux(-sh > 35, 35, -sh))
                yc = _saturate(yv, 36)
                m.d.comb += r.eq(_saturate(yc << k, 36))
            m.d.sync += s5.data[n].eq(_saturate(r + s4_par.bias[n], 32))
        m.d.sync += [s5_v.eq(s4_v), s5.t.eq(s4_info.t)]

        m.d.comb += [ofifo.w_data.eq(s5), ofifo.w_en.eq(s5_v)]
        m.d.comb += self.busy.eq(s1_v | s2_v | s3_v | s4_v | s5_v | (inflight != 0)
                                 | ofifo.r_rdy)
        enter = take & self.i_row.payload.info.final
        m.d.sync += inflight.eq(inflight + enter - s5_v)
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
        side_l = data.StructLayout({"info": row_info_layout(p), "xsum": signed(psum_width(p.rows))})
        m.submodules.side = side = fifo.SyncFIFOBuffered(
            width=side_l.size, depth=arr.fifo_depth + arr.latency + 2)

        wiring.connect(m, wiring.flipped(self.w_row), arr.w_row)
        wiring.connect(m, wiring.flipped(self.i_param), sc.i_param)
        wiring.connect(m, sc.o_row, wiring.flipped(self.o_row))

        # activation rows: into the grid and, in step, their scaler info into the side FIFO
        xsum = Signal(signed(psum_width(p.rows)))
        m.d.comb += xsum.eq(sum(self.a_row.payload.data[r] for r in range(p.rows)))
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

"""LayerNorm and RMSNorm of wide rows: ``golden.layernorm`` / ``golden.rmsnorm`` (their shared
core ``golden._normalize_rows``, its square root ``golden._isqrt``).

The golden arithmetic needs three looks at a row: its mean (LayerNorm) and largest deviation
give the shift ``sh``; the shifted deviations ``cs`` give the variance; only then can any
output be formed. The largest deviation needs no pass of its own: ``max|x - mean|`` is
``max(max x - mean, mean - min x)``, so pass 1 gathers sum, max and min together. ``cs`` is
rounded down per element, so the variance needs a second pass. The unit therefore streams a
row through three passes joined by row FIFOs, with the per-row scalar work between them:

- **pass 1**: masks lanes beyond ``count`` (= D), sums (INT44), max, min -> row FIFO A;
- **scalars 1**: ``mean = sum // D`` (floor, a serial divider), ``sh`` from the largest
  deviation (a leading-one detector);
- **pass 2**: ``cs = (x - mean) >> sh`` (|cs| <= 2**15, INT16 each) -> row FIFO B, and
  ``Σ cs²``;
- **scalars 2**: ``var = Σcs² // D + rshift_round(eps_q32, 2 sh)`` (divider),
  ``std = isqrt(var << 16)`` (serial square root), ``inv = 2**40 // std`` (divider);
- **pass 3**: ``n = rshift_round(cs * inv, 16)``, then ``rshift_round(n * gamma, F)`` (+ beta
  for LayerNorm), saturated; gamma / beta arrive on their own stream, one beat per output beat.

FIFO B holds INT16 deviations rather than the INT32 inputs: half the memory of keeping ``x``.
The serial units each hold one row at a time; with ``steps`` = 2 bits per cycle every row of
at least :attr:`Normalizer.MIN_FULL_RATE_BEATS` beats streams at one beat per cycle (D = 384:
24 beats, D = 576: 36 beats); shorter rows run at ``beats / MIN_FULL_RATE_BEATS`` of it.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import ChipParams
from .common import (
    Pipe,
    RowTracker,
    connect_out,
    delay,
    lead_one,
    product,
    product_stages,
    row_beat_layout,
    rshift_round_const,
    saturate,
    tree,
    vmax,
    vmin,
    wide_lanes,
)
from .serial import SerialDivider, SerialIsqrt

__all__ = ["Normalizer", "norm_in_layout", "norm_param_layout", "EPS_BITS", "MAX_D"]

#: ``eps_q32 = round(eps * 2**32)`` is below 2**17 (eps < 3e-5: SmolLM2 1e-5, MiniLM 1e-12),
#: which keeps ``var << 16`` below 2**62, the golden model's range for its square root.
EPS_BITS = 17
#: Longest row: with D <= 2**12, any row that is not all zero has ``std >= 2**16``, so
#: ``inv = 2**40 // std`` fits 25 bits (a row of zeros normalizes to 0 whatever inv is).
MAX_D = 1 << 12


def norm_in_layout(p: ChipParams) -> data.StructLayout:
    """A beat of a wide row for :class:`Normalizer`. Per row: ``count`` = D (the row's
    elements; lanes beyond it are ignored), ``rms`` (RMSNorm; else LayerNorm), ``eps_q32``."""
    return row_beat_layout(p.vector_lanes, {"count": unsigned(MAX_D.bit_length()), "rms": 1,
                                            "eps_q32": unsigned(EPS_BITS)})


def norm_param_layout(p: ChipParams) -> data.StructLayout:
    """gamma and beta (wide) for one output beat (beta unused by RMSNorm)."""
    return data.StructLayout({"gamma": wide_lanes(p.vector_lanes),
                              "beta": wide_lanes(p.vector_lanes)})



class Normalizer(wiring.Component):
    """LayerNorm / RMSNorm on a stream of wide rows (module docstring: three passes).

    ``i_beat``: :func:`norm_in_layout`; ``i_param``: :func:`norm_param_layout`, one per
    output beat in order; ``o_beat``: wide beats with ``last``, one per input beat. Rows of
    1..``max_beats`` beats and D <= ``max_beats * lanes`` <= :data:`MAX_D` (a longer row
    never finishes pass 1; the controller must refuse it).

    Throughput: one beat per cycle for rows of at least ``MIN_FULL_RATE_BEATS`` beats, rows
    back to back. Latency: :meth:`latency`.
    """

    P1_STAGES = 4  # mask; quad trees; beat trees; row accumulators
    P1_BEAT_STAGES = 1  # a beat into row FIFO A
    P2_BEAT_STAGES = 4  # a beat into row FIFO B: operands; x - mean; cs: two shift stages
    P2_STAGES = P2_BEAT_STAGES + 4  # ... cs²; quad sums; beat sum; row accumulator
    PAR2_STAGES, PAR2_DEPTH = 4, 4  # mean; deviations; bit length; sh: FIFO ahead of pass 2
    PAR3_STAGES, PAR3_DEPTH = 1, 4  # inv: register and FIFO ahead of pass 3
    #: The parameter FIFOs (par2, par3) read through a skid buffer (``Pipe(out_reg=True)``).
    PAR_FIFO_LATENCY = Pipe.REG_FIFO_LATENCY
    PAR2_FIFO_DEPTH = Pipe.depth_for(PAR2_STAGES, PAR2_DEPTH, out_reg=True)
    PAR3_FIFO_DEPTH = Pipe.depth_for(PAR3_STAGES, PAR3_DEPTH, out_reg=True)
    #: The row FIFOs A and B (beats, row scalars: block RAM) register their read data.
    ROW_FIFO_LATENCY = Pipe.REG_FIFO_LATENCY
    #: Quotient / operand bits of the serial units: mean, variance, ``isqrt`` operand, inv.
    MEAN_BITS, VAR_BITS, SQRT_IN_BITS, INV_BITS = 32, 31, 62, 25
    #: Pass 3: operands; cs * inv; round by 16 -> n; n * gamma; round by F; + beta, saturate.
    CSINV_STAGES = product_stages(signed(16), unsigned(INV_BITS))
    NGAMMA_STAGES = product_stages(signed(27), signed(32))
    P3_STAGES = 1 + CSINV_STAGES + 1 + NGAMMA_STAGES + 3

    def __init__(self, params: ChipParams = ChipParams(), max_beats: int = 128, steps: int = 2):
        L = params.vector_lanes
        if max_beats * L > MAX_D:
            raise ValueError(f"Normalizer: rows of {max_beats} x {L} exceed D = {MAX_D}")
        self.params, self.max_beats, self.steps = params, max_beats, steps
        units = self._serial_units()
        for u in units:
            u._MustUse__silence = True  # built for their constants only
        #: Cycles from acceptance to result of the mean, variance, square root and inverse
        #: units (``SerialDivider.LATENCY``, ``SerialIsqrt.LATENCY``).
        self.SERIAL_LATENCY = tuple(u.LATENCY for u in units)
        self.MIN_FULL_RATE_BEATS = max(u.OCCUPANCY for u in units)
        mean_occ, var_occ, sqrt_occ, inv_occ = (u.OCCUPANCY for u in units)
        # row FIFOs hold a whole row plus the beats that enter while its scalars are computed
        #: Entries of row FIFO A (pass 1: beats, row statistics) and B (pass 2).
        self.depth_a = max_beats + self.P1_STAGES + self.PAR2_STAGES + mean_occ \
            + 4 * Pipe.FIFO_LATENCY + 8
        self.depth_b = max_beats + self.P2_STAGES + var_occ + sqrt_occ + inv_occ \
            + 4 * Pipe.FIFO_LATENCY + 8
        self.frac_bits = params.numerics.frac_bits
        super().__init__({
            "i_beat": In(stream.Signature(norm_in_layout(params))),
            "i_param": In(stream.Signature(norm_param_layout(params))),
            "o_beat": Out(stream.Signature(row_beat_layout(L))),
            "busy": Out(1),
        })

    def _serial_units(self):
        """Fresh mean, variance, square root and inverse units (their widths in one place)."""
        cb, st = MAX_D.bit_length(), self.steps
        mean_tag = data.StructLayout({
            "neg": 1, "xmax": signed(32), "xmin": signed(32), "count": unsigned(cb),
            "rms": 1, "eps": unsigned(EPS_BITS)})
        var_tag = data.StructLayout({"sh": signed(6), "eps": unsigned(EPS_BITS)})
        return (SerialDivider(45, cb, self.MEAN_BITS, st, tag=mean_tag, signed_n=True),
                SerialDivider(43, cb, self.VAR_BITS, st, tag=var_tag),
                SerialIsqrt(self.SQRT_IN_BITS, st),
                SerialDivider(41, 31, self.INV_BITS, st))

    def latency(self, beats: int) -> int:
        """Cycles from the last input beat of a row of ``beats`` beats to its first output
        beat, with the serial units idle and every consumer ready: pass 1's reduction, the
        mean, pass 2 over the whole row, the variance, square root and reciprocal, pass 3;
        each FIFO between adds ``Pipe.FIFO_LATENCY``."""
        f, fr = Pipe.FIFO_LATENCY, self.ROW_FIFO_LATENCY
        fp = self.PAR_FIFO_LATENCY
        return (self.P1_STAGES + fr) + (self.PAR2_STAGES + fp) + (beats - 1) \
            + (self.P2_STAGES + fr) + (self.PAR3_STAGES + fp) + (self.P3_STAGES + f) \
            + sum(self.SERIAL_LATENCY)

    def elaborate(self, platform):
        m = Module()
        p = self.params
        L = p.vector_lanes
        F = self.frac_bits
        cb = MAX_D.bit_length()
        mx, mn = vmax, vmin
        mean_div, var_div, isqrt, inv_div = self._serial_units()
        m.submodules.mean_div, m.submodules.var_div = mean_div, var_div
        m.submodules.isqrt, m.submodules.inv_div = isqrt, inv_div
        assert self.MIN_FULL_RATE_BEATS == max(u.OCCUPANCY for u in (mean_div, var_div, isqrt,
                                                                      inv_div))
        slack1, slack2 = self.depth_a - self.max_beats, self.depth_b - self.max_beats

        # -- pass 1: sum, max, min ---------------------------------------------------------------
        i = self.i_beat
        x_l = data.StructLayout({"data": wide_lanes(L), "last": 1})
        beats_a = Pipe(m, "p1_beats", x_l, self.P1_BEAT_STAGES, self.max_beats + slack1,
                       out_reg=True)
        assert beats_a.fifo_latency == self.ROW_FIFO_LATENCY
        stats_l = data.StructLayout({"sum": signed(45), "xmax": signed(32), "xmin": signed(32),
                                     "count": unsigned(cb), "rms": 1,
                                     "eps": unsigned(EPS_BITS)})
        stats = Pipe(m, "p1_rows", stats_l, self.P1_STAGES, self.max_beats + slack1,
                     out_reg=True)
        take1 = Signal()
        pos1 = RowTracker(m, "p1", take1, i.payload.last, self.max_beats)
        credit1 = beats_a.credit & (~i.payload.last | stats.credit)
        m.d.comb += [i.ready.eq(credit1), take1.eq(i.valid & credit1), beats_a.take.eq(take1),
                     stats.take.eq(take1 & i.payload.last)]
        m.d.sync += beats_a.result.last.eq(i.payload.last)
        xs1 = Signal(wide_lanes(L))
        hi1 = Signal(wide_lanes(L))
        lo1 = Signal(wide_lanes(L))
        for n in range(L):
            live = pos1.index * L + n < i.payload.count
            x = i.payload.data[n]
            m.d.sync += [beats_a.result.data[n].eq(x), xs1[n].eq(Mux(live, x, 0)),
                         hi1[n].eq(Mux(live, x, -(1 << 31))),
                         lo1[n].eq(Mux(live, x, (1 << 31) - 1))]
        quads = range(0, L, 4)
        s2 = [Signal(signed(34), name=f"qsum{q}") for q in quads]
        h2 = [Signal(signed(32), name=f"qmax{q}") for q in quads]
        l2 = [Signal(signed(32), name=f"qmin{q}") for q in quads]
        for k, q in enumerate(quads):
            lanes = range(q, min(q + 4, L))
            m.d.sync += [s2[k].eq(tree([xs1[n] for n in lanes], lambda a, b: a + b)),
                         h2[k].eq(tree([hi1[n] for n in lanes], mx)),
                         l2[k].eq(tree([lo1[n] for n in lanes], mn))]
        s3, h3, l3 = Signal(signed(36)), Signal(signed(32)), Signal(signed(32))
        m.d.sync += [s3.eq(tree(s2, lambda a, b: a + b)), h3.eq(tree(h2, mx)), l3.eq(tree(l2, mn))]
        first = delay(m, pos1.first, 3, "p1_first")
        beat_v = delay(m, take1, 3, "p1_v")
        row_in = Signal(data.StructLayout({"count": unsigned(cb), "rms": 1,
                                           "eps": unsigned(EPS_BITS)}))
        m.d.comb += [row_in.count.eq(i.payload.count), row_in.rms.eq(i.payload.rms),
                     row_in.eps.eq(i.payload.eps_q32)]
        row3 = delay(m, row_in, 3, "p1_row")[3]
        st = stats.result
        # the running extremes' compares as subtractions (one carry chain each)
        dmax3, dmin3 = Signal(signed(33)), Signal(signed(33))
        m.d.comb += [dmax3.eq(st.xmax - h3), dmin3.eq(l3 - st.xmin)]
        gt3, lt3 = dmax3[-1], dmin3[-1]
        with m.If(beat_v[3]):
            m.d.sync += [st.sum.eq(Mux(first[3], s3, st.sum + s3)),
                         st.xmax.eq(Mux(first[3] | gt3, h3, st.xmax)),
                         st.xmin.eq(Mux(first[3] | lt3, l3, st.xmin)),
                         st.count.eq(row3.count), st.rms.eq(row3.rms), st.eps.eq(row3.eps)]

        # -- scalars 1: mean = sum // D (floor), sh from max |x - mean| --------------------------
        so = stats.out.payload
        neg = so.sum < 0
        m.d.comb += [
            mean_div.i.valid.eq(stats.out.valid),
            stats.out.ready.eq(mean_div.i.ready),
            mean_div.i.payload.n.eq(so.sum),  # the divider takes |sum|
            mean_div.i.payload.d.eq(so.count),
            mean_div.i.payload.tag.neg.eq(neg),
            mean_div.i.payload.tag.xmax.eq(so.xmax),
            mean_div.i.payload.tag.xmin.eq(so.xmin),
            mean_div.i.payload.tag.count.eq(so.count),
            mean_div.i.payload.tag.rms.eq(so.rms),
            mean_div.i.payload.tag.eps.eq(so.eps),
        ]
        par2_l = data.StructLayout({"mean": signed(33), "sh": signed(6), "count": unsigned(cb),
                                    "eps": unsigned(EPS_BITS), "rms": 1})
        par2 = Pipe(m, "par2", par2_l, self.PAR2_STAGES, self.PAR2_DEPTH, out_reg=True)
        assert (par2.depth, par2.fifo_latency) == (self.PAR2_FIFO_DEPTH, self.PAR_FIFO_LATENCY)
        do = mean_div.o.payload
        m.d.comb += [par2.take.eq(mean_div.o.valid & par2.credit),
                     mean_div.o.ready.eq(par2.credit)]
        # stage 1: the signed floor mean (-(q + 1) = ~q); stage 2: the deviations of the
        # extremes, negative ones as 0; stage 3: the bit length of the larger one, as that of
        # their OR; stage 4: sh
        mean1 = Signal(signed(33))
        tag1 = Signal.like(do.tag)
        q33 = Signal(signed(33))
        m.d.comb += q33.eq(do.q)
        q_signed = Mux(do.tag.neg, Mux(do.r != 0, ~q33, -q33), q33)
        m.d.sync += [mean1.eq(Mux(do.tag.rms, 0, q_signed)), tag1.eq(do.tag)]
        dhi = Signal(signed(34))
        dlo = Signal(signed(34))
        m.d.comb += [dhi.eq(tag1.xmax - mean1), dlo.eq(mean1 - tag1.xmin)]
        dev2 = [Signal(unsigned(33), name=f"dev{k}") for k in range(2)]
        m.d.sync += [dev2[0].eq(Mux(dhi < 0, 0, dhi)), dev2[1].eq(Mux(dlo < 0, 0, dlo))]
        found3, lead3 = Signal(), Signal(6)  # bitlen = lead + 1 (0 if none)
        f, idx = lead_one(dev2[0] | dev2[1])
        m.d.sync += [found3.eq(f), lead3.eq(idx)]
        mean_d = delay(m, mean1, 2, "par2_mean")
        tag_d = delay(m, tag1, 2, "par2_tag")
        m.d.sync += [par2.result.mean.eq(mean_d[2]),
                     par2.result.sh.eq(Mux(found3, lead3 - 14, 0)),
                     par2.result.count.eq(tag_d[2].count), par2.result.eps.eq(tag_d[2].eps),
                     par2.result.rms.eq(tag_d[2].rms)]

        # -- pass 2: cs = (x - mean) >> sh, Σ cs² --------------------------------------------------
        # the row's mode rides with its beats to pass 3 (RMSNorm adds no beta)
        cs_l = data.StructLayout({"cs": data.ArrayLayout(signed(16), L), "last": 1, "rms": 1})
        beats_b = Pipe(m, "p2_beats", cs_l, self.P2_BEAT_STAGES, self.max_beats + slack2,
                       out_reg=True)
        ssq_l = data.StructLayout({"ssq": unsigned(43), "sh": signed(6), "count": unsigned(cb),
                                   "eps": unsigned(EPS_BITS)})
        ssq = Pipe(m, "p2_rows", ssq_l, self.P2_STAGES, self.max_beats + slack2, out_reg=True)
        xa, r2 = beats_a.out, par2.out
        take2 = Signal()
        pos2 = RowTracker(m, "p2", take2, xa.payload.last, self.max_beats)
        credit2 = beats_b.credit & (~xa.payload.last | ssq.credit)
        m.d.comb += [take2.eq(xa.valid & r2.valid & credit2), xa.ready.eq(take2),
                     r2.ready.eq(take2 & xa.payload.last), beats_b.take.eq(take2),
                     ssq.take.eq(take2 & xa.payload.last)]
        P2B = self.P2_BEAT_STAGES
        m.d.sync += [beats_b.result.last.eq(delay(m, xa.payload.last, P2B - 1, "p2_last")[-1]),
                     beats_b.result.rms.eq(delay(m, r2.payload.rms, P2B - 1, "p2_rms")[-1])]
        # stage 1: the operands as read; stage 2: c = x - mean; stage 3: cs (0 if masked)
        x1 = Signal(wide_lanes(L), name="p2_x1")
        mean1b = Signal(signed(33), name="p2_mean1")
        live1 = Signal(L, name="p2_live1")
        # cs = (x - mean) >> sh = ((x - mean) << 14) >> (sh + 14), sh + 14 in [0, 33]: one
        # arithmetic right shift, by its multiple of 8 and then by the rest
        amt1 = Signal(6, name="p2_amt1")
        m.d.sync += [x1.eq(xa.payload.data), mean1b.eq(r2.payload.mean),
                     amt1.eq(r2.payload.sh + 14)]
        for n in range(L):
            m.d.sync += live1[n].eq(pos2.index * L + n < r2.payload.count)
        c2 = [Signal(signed(34), name=f"c{n}") for n in range(L)]
        live = delay(m, live1, 2, "p2_live")
        amt = delay(m, amt1, 2, "p2_amt")
        for n in range(L):
            m.d.sync += c2[n].eq(x1[n] - mean1b)
            y3 = Signal(signed(48), name=f"cy{n}")
            m.d.sync += y3.eq((c2[n] << 14) >> Cat(Const(0, 3), amt[1][3:]))
            m.d.sync += beats_b.result.cs[n].eq(Mux(live[2][n], y3 >> amt[2][:3], 0))
        cs1 = beats_b.result.cs
        sq2 = [Signal(unsigned(31), name=f"sq{n}") for n in range(L)]
        for n in range(L):
            m.d.sync += sq2[n].eq(cs1[n] * cs1[n])
        qs3 = [Signal(unsigned(33), name=f"sqq{q}") for q in quads]
        for k, q in enumerate(quads):
            m.d.sync += qs3[k].eq(tree([sq2[n] for n in range(q, min(q + 4, L))],
                                       lambda a, b: a + b))
        bs4 = Signal(unsigned(35))
        m.d.sync += bs4.eq(tree(qs3, lambda a, b: a + b))
        A = self.P2_STAGES - 1  # the accumulator's stage
        first2 = delay(m, pos2.first, A, "p2_first")
        v2 = delay(m, take2, A, "p2_v")
        par_in = Signal(data.StructLayout({"sh": signed(6), "count": unsigned(cb),
                                           "eps": unsigned(EPS_BITS)}))
        m.d.comb += [par_in.sh.eq(r2.payload.sh), par_in.count.eq(r2.payload.count),
                     par_in.eps.eq(r2.payload.eps)]
        par4 = delay(m, par_in, A, "p2_par")[A]
        sr = ssq.result
        with m.If(v2[A]):
            m.d.sync += [sr.ssq.eq(Mux(first2[A], bs4, sr.ssq + bs4)), sr.sh.eq(par4.sh),
                         sr.count.eq(par4.count), sr.eps.eq(par4.eps)]

        # -- scalars 2: var, std = isqrt(var << 16), inv = 2**40 // std --------------------------
        qo = ssq.out.payload
        m.d.comb += [
            var_div.i.valid.eq(ssq.out.valid), ssq.out.ready.eq(var_div.i.ready),
            var_div.i.payload.n.eq(qo.ssq), var_div.i.payload.d.eq(qo.count),
            var_div.i.payload.tag.sh.eq(qo.sh), var_div.i.payload.tag.eps.eq(qo.eps),
        ]
        vo = var_div.o.payload
        s2x = Signal(signed(8))  # 2 * sh in [-28, 36]
        m.d.comb += s2x.eq(vo.tag.sh * 2)
        eps_sh = Signal(unsigned(EPS_BITS + 28))  # rshift_round(eps, 2 sh)
        eps_w = Signal(unsigned(EPS_BITS + 1))
        m.d.comb += eps_w.eq(vo.tag.eps)
        # the tag is the divider's register from acceptance on: eps_sh is ready cycles before
        # the quotient (LATENCY >= 2)
        # (LATENCY >= 3: the shift, then the rounding)
        assert var_div.LATENCY >= 3
        eps_t = Signal(unsigned(EPS_BITS + 28))
        rnd = Signal()
        m.d.sync += rnd.eq(s2x > 0)
        with m.If(s2x > 0):
            m.d.sync += eps_t.eq(eps_w >> (s2x - 1).as_unsigned()[:6])
        with m.Else():
            m.d.sync += eps_t.eq(eps_w << (-s2x).as_unsigned()[:5])
        m.d.sync += eps_sh.eq(Mux(rnd, (eps_t + 1) >> 1, eps_t))
        var = Signal(unsigned(47))
        m.d.comb += [var.eq(vo.q + eps_sh),
                     isqrt.i.valid.eq(var_div.o.valid), var_div.o.ready.eq(isqrt.i.ready),
                     isqrt.i.payload.v.eq(var << 16)]
        std = isqrt.o.payload.s
        m.d.comb += [
            inv_div.i.valid.eq(isqrt.o.valid), isqrt.o.ready.eq(inv_div.i.ready),
            inv_div.i.payload.n.eq(Const(1 << 40, unsigned(41))),
            # a row of zeros (std may be 0) gives cs = 0 and output 0 for any inv
            inv_div.i.payload.d.eq(Cat(std[0] | (std == 0), std[1:])),  # 1 for 0
        ]
        par3 = Pipe(m, "par3", data.StructLayout({"inv": unsigned(self.INV_BITS)}),
                    self.PAR3_STAGES, self.PAR3_DEPTH, out_reg=True)
        assert par3.depth == self.PAR3_FIFO_DEPTH
        m.d.comb += [par3.take.eq(inv_div.o.valid & par3.credit),
                     inv_div.o.ready.eq(par3.credit)]
        m.d.sync += par3.result.inv.eq(inv_div.o.payload.q)

        # -- pass 3: n = rshift_round(cs * inv, 16); out = rshift_round(n * gamma, F) + beta ----
        out = Pipe(m, "p3", row_beat_layout(L), self.P3_STAGES)
        cb_, r3, gb = beats_b.out, par3.out, self.i_param
        take3 = Signal()
        m.d.comb += [take3.eq(cb_.valid & r3.valid & gb.valid & out.credit),
                     cb_.ready.eq(take3), gb.ready.eq(take3),
                     r3.ready.eq(take3 & cb_.payload.last), out.take.eq(take3)]
        # stage 1: operands as read; cs * inv; n = round by 16; n * gamma; round by F;
        # + beta, saturate
        S = self.P3_STAGES
        last = delay(m, cb_.payload.last, S - 1, "p3_last")[-1]
        rms = delay(m, cb_.payload.rms, S - 2, "p3_rms")[-1]
        t_n = 1 + self.CSINV_STAGES + 1           # n ready: the gamma product issues
        gamma = delay(m, gb.payload.gamma, t_n, "p3_gamma")[t_n]
        beta = delay(m, gb.payload.beta, S - 2, "p3_beta")[S - 2]
        inv1 = Signal(unsigned(self.INV_BITS), name="p3_inv1")
        m.d.sync += inv1.eq(r3.payload.inv)
        for n in range(L):
            cs1_ = Signal(signed(16), name=f"p3_cs{n}")
            m.d.sync += cs1_.eq(cb_.payload.cs[n])
            pr = product(m, cs1_, inv1, f"csinv{n}")
            nn = Signal(signed(27), name=f"n{n}")
            m.d.sync += nn.eq(rshift_round_const(pr, 16))
            pg = product(m, nn, gamma[n], f"ng{n}")
            rg = Signal(signed(44), name=f"ngr{n}")  # |n * gamma| < 2**58
            m.d.sync += rg.eq(rshift_round_const(pg, F))
            ob = Signal(signed(45), name=f"ob{n}")
            m.d.sync += [ob.eq(rg + Mux(rms, 0, beta[n])), out.result.data[n].eq(saturate(ob))]
        m.d.sync += out.result.last.eq(last)
        connect_out(m, out.out, self.o_beat)
        m.d.comb += self.busy.eq(beats_a.busy | stats.busy | par2.busy | beats_b.busy
                                 | ssq.busy | par3.busy | out.busy | (pos1.index != 0)
                                 | ~mean_div.i.ready | ~var_div.i.ready | ~isqrt.i.ready
                                 | ~inv_div.i.ready)
        return m

"""Row softmax of wide scores with a causal mask: ``golden.softmax``.

Three passes over a row, joined by row FIFOs (as ``hw/vector/norm.py``):

- **pass 1**: the maximum over the row's visible keys (lanes from ``visible`` on are masked)
  -> row FIFO A holds the scores;
- **pass 2**: per element the base-2 exponent ``u`` of ``s - max`` (a constant multiply and a
  rounding shift), ``2**-frac(u)`` interpolated in the ``exp2_table`` ROM (``hw/luts.py``, one
  per lane), shifted right by ``int(u)``; masked keys give 0 -> row FIFO B holds these
  ``e <= 2**15`` (INT16 instead of the INT32 scores); and ``Σ e``;
- **scalar**: ``recip = 2**46 // Σe`` (serial divider, once per row);
- **pass 3**: ``p = rshift_round(e * recip, 30)``.

The causal mask is a visible prefix: key j is visible to query row i iff ``j <= q_pos[i]``, so
the controller passes ``visible = min(q_pos[i] + 1, S)`` (``S`` without the mask).
"""

import math

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..luts import exp2_table
from ..params import ChipParams
from .common import (
    Pipe,
    RowTracker,
    clamp_unsigned,
    connect_out,
    delay,
    product,
    product_stages,
    row_beat_layout,
    rshift_round_const,
    signed_bits,
    tree,
    vmax,
)
from .serial import SerialDivider

__all__ = ["Softmax", "softmax_in_layout", "MAX_S", "LOG2E_SHIFT", "LOG2E"]

#: Longest row: ``Σ e <= MAX_S * 2**15`` (the divisor's width).
MAX_S = 1 << 12
#: ``u = rshift_round(-z * LOG2E, LOG2E_SHIFT)``: ``log2(e)`` in Q.14, as ``golden.softmax``.
LOG2E_SHIFT = 14
LOG2E = round(math.log2(math.e) * (1 << LOG2E_SHIFT))


def softmax_in_layout(p: ChipParams) -> data.StructLayout:
    """A beat of a score row for :class:`Softmax`; per row ``visible``: the keys the query
    sees (a prefix, at least 1)."""
    return row_beat_layout(p.vector_lanes, {"visible": unsigned(MAX_S.bit_length())})




class Softmax(wiring.Component):
    """``golden.softmax`` on a stream of score rows (module docstring: three passes).

    ``i_beat``: :func:`softmax_in_layout`; ``o_beat``: Q.F probabilities (wide) with ``last``,
    one beat per input beat. Rows of 1..``max_beats`` beats, ``max_beats * lanes <= MAX_S``.
    Throughput: one beat per cycle for rows of at least ``MIN_FULL_RATE_BEATS`` beats (the
    divider's occupancy), rows back to back; shorter rows (decode at a short context) at
    ``beats / MIN_FULL_RATE_BEATS`` of it. Latency: :meth:`latency`.
    """

    P1_STAGES = 4      # mask; quad max; beat max; row max
    U_STAGES = product_stages(unsigned(31), unsigned(LOG2E.bit_length()))  # -z * LOG2E
    #: operands; max - s; -z * LOG2E; u (round); ROM; ROM data; rise * weight; interpolate;
    #: shift by int(u) - 1; round, mask
    P2_E_STAGES = 2 + U_STAGES + 1 + 6
    P2_SUM_STAGES = P2_E_STAGES + 3  # ... quad sums; beat sum; row sum
    RECIP_BITS = 32    # quotient bits of the reciprocal (the serial divider's)
    P3_STAGES = 1 + product_stages(unsigned(16), unsigned(RECIP_BITS)) + 1  # e * recip; round
    P1_BEAT_STAGES = 1  # the score into row FIFO A
    #: The row FIFOs A and B (beats, row scalars: block RAM) register their read data.
    ROW_FIFO_LATENCY = Pipe.REG_FIFO_LATENCY
    PAR_STAGES, PAR_DEPTH = 1, 4  # the reciprocal's register and FIFO ahead of pass 3
    #: ... read through a skid buffer (``Pipe(out_reg=True)``).
    PAR_FIFO_LATENCY = Pipe.REG_FIFO_LATENCY
    PAR_FIFO_DEPTH = Pipe.depth_for(PAR_STAGES, PAR_DEPTH, out_reg=True)

    def __init__(self, params: ChipParams = ChipParams(), max_beats: int = 128, steps: int = 2):
        L = params.vector_lanes
        if max_beats * L > MAX_S:
            raise ValueError(f"Softmax: rows of {max_beats} x {L} exceed {MAX_S} keys")
        num = params.numerics
        self.seg_bits = (num.exp2_segments - 1).bit_length()
        if 1 << self.seg_bits != num.exp2_segments or self.seg_bits > num.frac_bits:
            raise ValueError("Softmax: exp2_segments must be a power of two <= 2**frac_bits")
        self.params, self.max_beats, self.steps = params, max_beats, steps
        self.sum_bits = (MAX_S << num.exp2_out_bits).bit_length()
        div = self._divider()
        div._MustUse__silence = True  # built for its constants only
        #: Cycles from acceptance to result of the reciprocal's divider.
        self.SERIAL_LATENCY = div.LATENCY
        self.MIN_FULL_RATE_BEATS = div.OCCUPANCY
        #: Entries of row FIFO A (scores, row maxima) and B (e, row sums).
        self.depth_a = max_beats + self.P1_STAGES + 8
        self.depth_b = max_beats + self.P2_SUM_STAGES + self.MIN_FULL_RATE_BEATS \
            + 4 * Pipe.FIFO_LATENCY + 8
        super().__init__({
            "i_beat": In(stream.Signature(softmax_in_layout(params))),
            "o_beat": Out(stream.Signature(row_beat_layout(L))),
            "busy": Out(1),
        })

    def _divider(self):
        return SerialDivider(47, self.sum_bits, self.RECIP_BITS, self.steps)

    def latency(self, beats: int) -> int:
        """Cycles from the last input beat of a row of ``beats`` beats to its first output
        beat, with the divider idle and the consumer ready."""
        f, fr = Pipe.FIFO_LATENCY, self.ROW_FIFO_LATENCY
        return (self.P1_STAGES + fr) + (beats - 1) + (self.P2_SUM_STAGES + fr) \
            + self.SERIAL_LATENCY + (self.PAR_STAGES + self.PAR_FIFO_LATENCY) \
            + (self.P3_STAGES + f)

    def elaborate(self, platform):
        m = Module()
        p = self.params
        num = p.numerics
        L = p.vector_lanes
        F = num.frac_bits
        vb = MAX_S.bit_length()
        wbits = F - self.seg_bits  # interpolation weight bits
        m.submodules.div = div = self._divider()
        assert self.depth_b == self.max_beats + self.P2_SUM_STAGES + div.OCCUPANCY \
            + 4 * Pipe.FIFO_LATENCY + 8
        mx = vmax

        # -- pass 1: max over the visible keys ---------------------------------------------------
        i = self.i_beat
        x_l = data.StructLayout({"data": data.ArrayLayout(signed(32), L), "last": 1})
        beats_a = Pipe(m, "p1_beats", x_l, self.P1_BEAT_STAGES, self.depth_a, out_reg=True)
        assert beats_a.fifo_latency == self.ROW_FIFO_LATENCY
        row_l = data.StructLayout({"max": signed(32), "visible": unsigned(vb)})
        rows = Pipe(m, "p1_rows", row_l, self.P1_STAGES, self.depth_a, out_reg=True)
        take1 = Signal()
        pos1 = RowTracker(m, "p1", take1, i.payload.last, self.max_beats)
        credit1 = beats_a.credit & (~i.payload.last | rows.credit)
        m.d.comb += [i.ready.eq(credit1), take1.eq(i.valid & credit1), beats_a.take.eq(take1),
                     rows.take.eq(take1 & i.payload.last)]
        m.d.sync += [beats_a.result.data.eq(i.payload.data),
                     beats_a.result.last.eq(i.payload.last)]
        hi1 = Signal(data.ArrayLayout(signed(32), L))
        for n in range(L):
            live = pos1.index * L + n < i.payload.visible
            m.d.sync += hi1[n].eq(Mux(live, i.payload.data[n], -(1 << 31)))
        quads = range(0, L, 4)
        h2 = [Signal(signed(32), name=f"qmax{q}") for q in quads]
        for k, q in enumerate(quads):
            m.d.sync += h2[k].eq(tree([hi1[n] for n in range(q, min(q + 4, L))], mx))
        h3 = Signal(signed(32))
        m.d.sync += h3.eq(tree(h2, mx))
        first = delay(m, pos1.first, 3, "p1_first")[3]
        v3 = delay(m, take1, 3, "p1_v")[3]
        vis3 = delay(m, i.payload.visible, 3, "p1_vis")[3]
        gt3 = Signal(signed(33))  # the running max's compare as a subtraction (a carry chain)
        m.d.comb += gt3.eq(rows.result.max - h3)
        with m.If(v3):
            m.d.sync += [rows.result.max.eq(Mux(first | gt3[-1], h3, rows.result.max)),
                         rows.result.visible.eq(vis3)]

        # -- pass 2: e = 2**(-u / 2**F) by table, Σe ----------------------------------------------
        e_bits = num.exp2_out_bits + 1  # e <= 2**exp2_out_bits
        e_l = data.StructLayout({"e": data.ArrayLayout(unsigned(e_bits), L), "last": 1})
        beats_b = Pipe(m, "p2_beats", e_l, self.P2_E_STAGES, self.depth_b, out_reg=True)
        sums = Pipe(m, "p2_rows", data.StructLayout({"sum": unsigned(self.sum_bits)}),
                    self.P2_SUM_STAGES, self.depth_b, out_reg=True)
        xa, ra = beats_a.out, rows.out
        take2 = Signal()
        pos2 = RowTracker(m, "p2", take2, xa.payload.last, self.max_beats)
        credit2 = beats_b.credit & (~xa.payload.last | sums.credit)
        m.d.comb += [take2.eq(xa.valid & ra.valid & credit2), xa.ready.eq(take2),
                     ra.ready.eq(take2 & xa.payload.last), beats_b.take.eq(take2),
                     sums.take.eq(take2 & xa.payload.last)]
        E = self.P2_E_STAGES
        last2 = delay(m, xa.payload.last, E - 1, "p2_last")[-1]
        m.d.sync += beats_b.result.last.eq(last2)

        tab = [int(t) for t in exp2_table(num)]
        rises = [b - a for a, b in zip(tab[:-1], tab[1:], strict=True)]
        rom_l = data.StructLayout({"e0": unsigned(max(tab).bit_length()),
                                   "d": signed(signed_bits(rises))})
        init = [{"e0": a, "d": d} for a, d in zip(tab[:-1], rises, strict=True)]
        max1 = Signal(signed(32), name="p2_max1")
        m.d.sync += max1.eq(ra.payload.max)
        tu = 2 + self.U_STAGES + 1  # the stage u is ready in
        for n in range(L):
            # stage 1: operands as read; the key's visibility
            x1 = Signal(signed(32), name=f"p2_x{n}")
            live1 = Signal(name=f"live{n}_1")
            m.d.sync += [x1.eq(xa.payload.data[n]),
                         live1.eq(pos2.index * L + n < ra.payload.visible)]
            lv = delay(m, live1, E - 2, f"live{n}_")
            # stage 2: -z = max - s, clamped to [0, 2**31 - 1] (masked keys may exceed the max;
            # their e is dropped)
            d1 = Signal(signed(34), name=f"negz{n}")
            m.d.comb += d1.eq(max1 - x1)
            neg2 = Signal(unsigned(31), name=f"neg2_{n}")
            m.d.sync += neg2.eq(clamp_unsigned(d1, 31))
            # u = rshift_round(-z * LOG2E, 14): the product, then the rounding
            pz = product(m, neg2, Const(LOG2E, unsigned(LOG2E.bit_length())), f"zlog{n}")
            u = Signal(unsigned(33), name=f"u_{n}")
            m.d.sync += u.eq(rshift_round_const(pz, LOG2E_SHIFT))
            # stage tu -> tu + 1: table index and weight of frac(u); the ROM reads
            rom = Memory(shape=rom_l, depth=len(init), init=init)
            m.submodules[f"exp2_rom{n}"] = rom
            rd = rom.read_port()
            m.d.comb += rd.addr.eq(u[wbits:F])
            w = delay(m, u[:wbits], 3, f"w{n}_")
            # int(u): its shift (int(u) - 1 mod 32), and whether it is 0 or beyond 31,
            # registered from u on, ready at tu + 4
            ip_l = data.StructLayout({"sh": 5, "zero": 1, "keep": 1})
            ip0 = Signal(ip_l, name=f"ip{n}")
            m.d.comb += [ip0.sh.eq(u[F:F + 5] - 1), ip0.zero.eq(u[F:] == 0),
                         ip0.keep.eq(u[F:] <= 31)]
            ip = delay(m, ip0, 4, f"ip{n}_")
            # tu + 2: the ROM's data registered; tu + 3: rise * weight
            rdd = Signal(rom_l, name=f"rom{n}_d")
            m.d.sync += rdd.eq(rd.data)
            prod = Signal(signed(len(rd.data.d) + wbits + 1), name=f"prod_{n}")
            e0 = Signal.like(rd.data.e0, name=f"e0_{n}")
            m.d.sync += [prod.eq(rdd.d * w[2]), e0.eq(rdd.e0)]
            # tu + 4: 2**-frac(u), interpolated
            fe = Signal(unsigned(e_bits), name=f"fe_{n}")
            m.d.sync += fe.eq(e0 + rshift_round_const(prod, wbits))
            # tu + 5: rshift_round(frac_e, int(u)) (0 beyond 31), 0 when masked;
            # rshift_round(v, s) = ((v >> (s - 1)) + 1) >> 1 for s >= 1: the shift, then
            # tu + 6: the rounding
            ip4 = ip[4]
            t5 = Signal(unsigned(e_bits), name=f"t5_{n}")
            whole5 = Signal(name=f"whole5_{n}")
            keep5 = Signal(name=f"keep5_{n}")
            m.d.sync += [t5.eq(Mux(ip4.zero, fe, fe >> ip4.sh)), whole5.eq(ip4.zero),
                         keep5.eq(lv[E - 3] & ip4.keep)]
            m.d.sync += beats_b.result.e[n].eq(
                Mux(keep5, Mux(whole5, t5, (t5 + 1) >> 1), 0))
        assert tu + 6 == E

        e6 = beats_b.result.e
        qs7 = [Signal(unsigned(e_bits + 2), name=f"qsum{q}") for q in quads]
        for k, q in enumerate(quads):
            m.d.sync += qs7[k].eq(tree([e6[n] for n in range(q, min(q + 4, L))],
                                       lambda a, b: a + b))
        bs8 = Signal(unsigned(e_bits + (L - 1).bit_length()))
        m.d.sync += bs8.eq(tree(qs7, lambda a, b: a + b))
        A = self.P2_SUM_STAGES - 1  # the accumulator's stage
        first8 = delay(m, pos2.first, A, "p2_first")[A]
        v8 = delay(m, take2, A, "p2_v")[A]
        with m.If(v8):
            m.d.sync += sums.result.sum.eq(Mux(first8, bs8, sums.result.sum + bs8))

        # -- scalar: recip = 2**46 // Σe (Σe >= 2**15: the max key's e) --------------------------
        m.d.comb += [div.i.valid.eq(sums.out.valid), sums.out.ready.eq(div.i.ready),
                     div.i.payload.n.eq(Const(1 << 46, unsigned(47))),
                     div.i.payload.d.eq(sums.out.payload.sum)]
        par3 = Pipe(m, "par3", data.StructLayout({"recip": unsigned(self.RECIP_BITS)}),
                    self.PAR_STAGES, self.PAR_DEPTH, out_reg=True)
        assert (par3.depth, par3.fifo_latency) == (self.PAR_FIFO_DEPTH, self.PAR_FIFO_LATENCY)
        m.d.comb += [par3.take.eq(div.o.valid & par3.credit), div.o.ready.eq(par3.credit)]
        m.d.sync += par3.result.recip.eq(div.o.payload.q)

        # -- pass 3: p = rshift_round(e * recip, 30) ---------------------------------------------
        out = Pipe(m, "p3", row_beat_layout(L), self.P3_STAGES)
        eb, r3 = beats_b.out, par3.out
        take3 = Signal()
        m.d.comb += [take3.eq(eb.valid & r3.valid & out.credit), eb.ready.eq(take3),
                     r3.ready.eq(take3 & eb.payload.last), out.take.eq(take3)]
        last3 = delay(m, eb.payload.last, self.P3_STAGES - 1, "p3_last")[-1]
        recip1 = Signal(unsigned(self.RECIP_BITS), name="p3_recip1")
        m.d.sync += recip1.eq(r3.payload.recip)
        assert e_bits <= 16
        for n in range(L):
            e1 = Signal(unsigned(16), name=f"p3_e{n}")
            m.d.sync += e1.eq(eb.payload.e[n])
            pr = product(m, e1, recip1, f"erecip{n}")
            m.d.sync += out.result.data[n].eq(rshift_round_const(pr, 30))
        m.d.sync += out.result.last.eq(last3)
        connect_out(m, out.out, self.o_beat)
        m.d.comb += self.busy.eq(beats_a.busy | rows.busy | beats_b.busy | sums.busy | par3.busy
                                 | out.busy | (pos1.index != 0) | ~div.i.ready)
        return m

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
    connect_out,
    delay,
    row_beat_layout,
    rshift_round_const,
    signed_bits,
    tree,
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
    P2_E_STAGES = 6    # max - s; u; ROM; rise * weight; interpolate; shift by int(u)
    P2_SUM_STAGES = 9  # ... quad sums; beat sum; row sum
    P3_STAGES = 2      # e * recip; round
    P1_BEAT_STAGES = 1  # the score into row FIFO A
    RECIP_BITS = 32    # quotient bits of the reciprocal (the serial divider's)
    PAR_STAGES, PAR_DEPTH = 1, 4  # the reciprocal's register and FIFO ahead of pass 3

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
        self.MIN_FULL_RATE_BEATS = SerialDivider.occupancy(self.RECIP_BITS, steps)
        #: Entries of row FIFO A (scores, row maxima) and B (e, row sums).
        self.depth_a = max_beats + self.P1_STAGES + 8
        self.depth_b = max_beats + self.P2_SUM_STAGES + self.MIN_FULL_RATE_BEATS \
            + 4 * Pipe.FIFO_LATENCY + 8
        super().__init__({
            "i_beat": In(stream.Signature(softmax_in_layout(params))),
            "o_beat": Out(stream.Signature(row_beat_layout(L))),
            "busy": Out(1),
        })

    def latency(self, beats: int) -> int:
        """Cycles from the last input beat of a row of ``beats`` beats to its first output
        beat, with the divider idle and the consumer ready (``beats + 40`` with ``steps`` = 2)."""
        f = Pipe.FIFO_LATENCY
        div = -(-32 // self.steps) + 1
        return (self.P1_STAGES + f) + (beats - 1) + (self.P2_SUM_STAGES + f) + div + (1 + f) \
            + (self.P3_STAGES + f)

    def elaborate(self, platform):
        m = Module()
        p = self.params
        num = p.numerics
        L = p.vector_lanes
        F = num.frac_bits
        vb = MAX_S.bit_length()
        wbits = F - self.seg_bits  # interpolation weight bits
        m.submodules.div = div = SerialDivider(47, self.sum_bits, self.RECIP_BITS, self.steps)
        assert self.depth_b == self.max_beats + self.P2_SUM_STAGES + div.OCCUPANCY \
            + 4 * Pipe.FIFO_LATENCY + 8
        mx = lambda a, b: Mux(a > b, a, b)  # noqa: E731

        # -- pass 1: max over the visible keys ---------------------------------------------------
        i = self.i_beat
        x_l = data.StructLayout({"data": data.ArrayLayout(signed(32), L), "last": 1})
        beats_a = Pipe(m, "p1_beats", x_l, self.P1_BEAT_STAGES, self.depth_a)
        row_l = data.StructLayout({"max": signed(32), "visible": unsigned(vb)})
        rows = Pipe(m, "p1_rows", row_l, self.P1_STAGES, self.depth_a)
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
        with m.If(v3):
            m.d.sync += [rows.result.max.eq(Mux(first | (h3 > rows.result.max), h3,
                                                rows.result.max)),
                         rows.result.visible.eq(vis3)]

        # -- pass 2: e = 2**(-u / 2**F) by table, Σe ----------------------------------------------
        e_bits = num.exp2_out_bits + 1  # e <= 2**exp2_out_bits
        e_l = data.StructLayout({"e": data.ArrayLayout(unsigned(e_bits), L), "last": 1})
        beats_b = Pipe(m, "p2_beats", e_l, self.P2_E_STAGES, self.depth_b)
        sums = Pipe(m, "p2_rows", data.StructLayout({"sum": unsigned(self.sum_bits)}),
                    self.P2_SUM_STAGES, self.depth_b)
        xa, ra = beats_a.out, rows.out
        take2 = Signal()
        pos2 = RowTracker(m, "p2", take2, xa.payload.last, self.max_beats)
        credit2 = beats_b.credit & (~xa.payload.last | sums.credit)
        m.d.comb += [take2.eq(xa.valid & ra.valid & credit2), xa.ready.eq(take2),
                     ra.ready.eq(take2 & xa.payload.last), beats_b.take.eq(take2),
                     sums.take.eq(take2 & xa.payload.last)]
        last2 = delay(m, xa.payload.last, self.P2_E_STAGES - 1, "p2_last")[-1]
        m.d.sync += beats_b.result.last.eq(last2)

        tab = [int(t) for t in exp2_table(num)]
        rises = [b - a for a, b in zip(tab[:-1], tab[1:], strict=True)]
        rom_l = data.StructLayout({"e0": unsigned(max(tab).bit_length()),
                                   "d": signed(signed_bits(rises))})
        init = [{"e0": a, "d": d} for a, d in zip(tab[:-1], rises, strict=True)]
        for n in range(L):
            live = pos2.index * L + n < ra.payload.visible
            lv = delay(m, live, 5, f"live{n}_")
            # stage 0 -> 1: -z = max - s, clamped to [0, 2**31 - 1] (masked keys may exceed
            # the max; their e is dropped)
            d0 = Signal(signed(34), name=f"negz{n}")
            m.d.comb += d0.eq(ra.payload.max - xa.payload.data[n])
            neg1 = Signal(unsigned(31), name=f"neg1_{n}")
            m.d.sync += neg1.eq(Mux(d0 < 0, 0, Mux(d0 > (1 << 31) - 1, (1 << 31) - 1, d0)))
            # stage 1 -> 2: u = rshift_round(-z * LOG2E, 14)
            u2 = Signal(unsigned(33), name=f"u2_{n}")
            m.d.sync += u2.eq(rshift_round_const(neg1 * LOG2E, LOG2E_SHIFT))
            # stage 2 -> 3: table index and weight of frac(u); the ROM reads
            rom = Memory(shape=rom_l, depth=len(init), init=init)
            m.submodules[f"exp2_rom{n}"] = rom
            rd = rom.read_port()
            m.d.comb += rd.addr.eq(u2[wbits:F])
            w3 = Signal(wbits, name=f"w3_{n}")
            ip3 = Signal(u2.shape().width - F, name=f"ip3_{n}")
            m.d.sync += [w3.eq(u2[:wbits]), ip3.eq(u2[F:])]
            # stage 3 -> 4: rise * weight
            prod4 = Signal(signed(len(rd.data.d) + wbits + 1), name=f"prod4_{n}")
            e04 = Signal.like(rd.data.e0, name=f"e04_{n}")
            ip4 = Signal.like(ip3, name=f"ip4_{n}")
            m.d.sync += [prod4.eq(rd.data.d * w3), e04.eq(rd.data.e0), ip4.eq(ip3)]
            # stage 4 -> 5: 2**-frac(u), interpolated
            fe5 = Signal(unsigned(e_bits), name=f"fe5_{n}")
            ip5 = Signal.like(ip3, name=f"ip5_{n}")
            m.d.sync += [fe5.eq(e04 + rshift_round_const(prod4, wbits)), ip5.eq(ip4)]
            # stage 5 -> 6: e = rshift_round(frac_e, int(u)) (0 beyond 31), 0 when masked;
            # rshift_round(v, s) = ((v >> (s - 1)) + 1) >> 1 for s >= 1
            sh = (ip5[:5] - 1)[:5]
            shifted = Mux(ip5 == 0, fe5, ((fe5 >> sh) + 1) >> 1)
            m.d.sync += beats_b.result.e[n].eq(Mux(lv[5] & (ip5 <= 31), shifted, 0))

        e6 = beats_b.result.e
        qs7 = [Signal(unsigned(e_bits + 2), name=f"qsum{q}") for q in quads]
        for k, q in enumerate(quads):
            m.d.sync += qs7[k].eq(tree([e6[n] for n in range(q, min(q + 4, L))],
                                       lambda a, b: a + b))
        bs8 = Signal(unsigned(e_bits + (L - 1).bit_length()))
        m.d.sync += bs8.eq(tree(qs7, lambda a, b: a + b))
        first8 = delay(m, pos2.first, 8, "p2_first")[8]
        v8 = delay(m, take2, 8, "p2_v")[8]
        with m.If(v8):
            m.d.sync += sums.result.sum.eq(Mux(first8, bs8, sums.result.sum + bs8))

        # -- scalar: recip = 2**46 // Σe (Σe >= 2**15: the max key's e) --------------------------
        m.d.comb += [div.i.valid.eq(sums.out.valid), sums.out.ready.eq(div.i.ready),
                     div.i.payload.n.eq(Const(1 << 46, unsigned(47))),
                     div.i.payload.d.eq(sums.out.payload.sum)]
        par3 = Pipe(m, "par3", data.StructLayout({"recip": unsigned(self.RECIP_BITS)}),
                    self.PAR_STAGES, self.PAR_DEPTH)
        m.d.comb += [par3.take.eq(div.o.valid & par3.credit), div.o.ready.eq(par3.credit)]
        m.d.sync += par3.result.recip.eq(div.o.payload.q)

        # -- pass 3: p = rshift_round(e * recip, 30) ---------------------------------------------
        out = Pipe(m, "p3", row_beat_layout(L), self.P3_STAGES)
        eb, r3 = beats_b.out, par3.out
        take3 = Signal()
        m.d.comb += [take3.eq(eb.valid & r3.valid & out.credit), eb.ready.eq(take3),
                     r3.ready.eq(take3 & eb.payload.last), out.take.eq(take3)]
        last3 = delay(m, eb.payload.last, 1, "p3_last")[1]
        for n in range(L):
            pr = Signal(unsigned(e_bits + 32), name=f"erecip{n}")
            m.d.sync += [pr.eq(eb.payload.e[n] * r3.payload.recip),
                         out.result.data[n].eq(rshift_round_const(pr, 30))]
        m.d.sync += out.result.last.eq(last3)
        connect_out(m, out.out, self.o_beat)
        m.d.comb += self.busy.eq(beats_a.busy | rows.busy | beats_b.busy | sums.busy | par3.busy
                                 | out.busy | (pos1.index != 0) | ~div.i.ready)
        return m

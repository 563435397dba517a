"""Requantization of wide rows to A8 (or A15) with power-of-two group scales:
``golden.quantize_rows``.

A row's values depend only on their own group's exponent, but every beat's scale fields carry
the row exponent (the largest group exponent minus the headroom), known only once the whole
row has passed. So the unit makes two passes over a row, the second from a row FIFO:

- **pass 1** takes the row's beats (one per cycle), masks lanes beyond the row's ``count``
  (they quantize as the golden model's zero padding), writes them to the row FIFO, and reduces
  per group the largest magnitude (-> group exponent, one entry per group into a group FIFO)
  and per row the largest magnitude (-> row exponent, one entry per row into a row FIFO);
- **pass 2** reads the row back once its row entry is there, quantizes each beat with its
  group's exponent (the row's in per-row mode) and emits it with its group scale and the row
  exponent.

Why a row FIFO and not a second read of the source: the unit sees its input once, as one
stream, like every other vector component; pass 1 of the next row fills the FIFO while pass 2
drains the current one, so rows stream back to back at one beat per cycle. The FIFO holds
full-width (INT32) beats rather than early-quantized INT8 ones because per-row scaling
(``group=None``, the KV cache's values) needs the row maximum before any value can be rounded.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import ChipParams
from .common import WIDE, Pipe, RowTracker, bitlen, clamp, connect_out, delay, tree

__all__ = ["Quantizer", "quant_in_layout", "quant_out_layout"]

EXP_BITS = 8     # the ACT word's row exponent (hw.isa.act_word)
GSHIFT_BITS = 5  # the ACT word's group shift


def _count_bits(max_beats: int, lanes: int) -> int:
    return (max_beats * lanes).bit_length()


def quant_in_layout(p: ChipParams, max_beats: int, data_bits: int = WIDE,
                    side=None) -> data.StructLayout:
    """A beat of a wide row for :class:`Quantizer`. Per row (constant over its beats):
    ``count`` the row's elements (lanes from ``count`` on are zero padding), ``a15`` 15-bit
    values (``bits=15``; else INT8), ``per_row`` one scale for the whole row
    (``group=None``; else groups of ``act_group``). Values are ``data_bits`` wide (INT32 by
    default); ``side`` (a shape, optional) rides along to the beat's output unchanged."""
    L = p.vector_lanes
    return data.StructLayout({
        "data": data.ArrayLayout(signed(data_bits), L),
        "last": 1,
        "count": unsigned(_count_bits(max_beats, L)),
        "a15": 1,
        "per_row": 1,
        **({"side": side} if side is not None else {}),
    })


def quant_out_layout(p: ChipParams, x_bits: int | None = None, side=None) -> data.StructLayout:
    """A quantized beat: the values as two planes ``data`` (INT8; the A15 value's ``x >> 7``)
    and ``lo`` (A15: ``x & 127``; INT8: 0), the beat's group scale (mantissa ``2**gshift``, or
    0 if ``gzero``), the row exponent and ``last``: the fields of ``hw.isa.act_word``. With
    ``x_bits`` also ``x``, the beat's input values (padding lanes 0), and with ``side`` the
    beat's side data."""
    L = p.vector_lanes
    return data.StructLayout({
        "data": data.ArrayLayout(signed(8), L),
        "lo": data.ArrayLayout(unsigned(7), L),
        "gshift": unsigned(GSHIFT_BITS),
        "gzero": 1,
        "exp": signed(EXP_BITS),
        "last": 1,
        **({"x": data.ArrayLayout(signed(x_bits), L)} if x_bits else {}),
        **({"side": side} if side is not None else {}),
    })


class Quantizer(wiring.Component):
    """``golden.quantize_rows`` on a stream of wide rows (module docstring: two passes).

    ``i_beat``: :func:`quant_in_layout`; ``o_beat``: :func:`quant_out_layout`, one per input
    beat, in order. Rows of at most ``max_beats`` beats (longer rows would never finish pass 1:
    the controller must refuse them). ``act_group`` must be a multiple of the lane count (a
    group is ``act_group / lanes`` beats; the last group of a row may be partial).
    ``data_bits``: width of the input values, 32..39 (the vector unit's V-scale fold feeds up
    to 2**37, and the residual of such a row one bit more). ``pass_x``: every output beat
    also carries its input values (padding masked to 0), for a second pass over the residual
    (``golden.quantize_residual``); ``side``: a shape carried from each input beat to its
    output beat (the row FIFO holds it).

    Throughput: one beat per cycle, rows back to back. Latency: a row's first output beat
    leaves ``P1_ROW_STAGES + FIFO_LATENCY + P2_STAGES + FIFO_LATENCY`` cycles after its last
    input beat was accepted.
    """

    P1_ROW_STAGES = 5  # |x|, two max-tree levels, group / row maxima, exponents
    P2_STAGES = 2      # rounding shift and clamp, planes
    P1_BEAT_STAGES = 1  # the beat into the row FIFO (masked)
    #: Row FIFO entries beyond a whole row: the stages before pass 2 starts on it.
    ROW_SLACK = 16

    def __init__(self, params: ChipParams = ChipParams(), max_beats: int = 128,
                 data_bits: int = WIDE, pass_x: bool = False, side=None):
        num = params.numerics
        L = params.vector_lanes
        if num.act_group % L:
            raise ValueError(f"Quantizer: act_group = {num.act_group} must be a multiple of "
                             f"vector_lanes = {L}")
        if num.act_headroom >= 1 << GSHIFT_BITS:
            raise ValueError("Quantizer: act_headroom does not fit the group shift field")
        if not WIDE <= data_bits <= 39:  # the rounding shift e - 1 stays below 32
            raise ValueError(f"Quantizer: data_bits = {data_bits} outside {WIDE}..39")
        self.params = params
        self.max_beats = max_beats
        self.data_bits, self.pass_x, self.side = data_bits, pass_x, side
        self.group_beats = num.act_group // L
        self.LATENCY = self.P1_ROW_STAGES + self.P2_STAGES + 2 * Pipe.FIFO_LATENCY
        #: Entries of the row FIFOs (beats, groups, rows): a whole row plus the slack.
        self.row_depth = max_beats + self.ROW_SLACK
        super().__init__({
            "i_beat": In(stream.Signature(quant_in_layout(params, max_beats, data_bits, side))),
            "o_beat": Out(stream.Signature(quant_out_layout(
                params, data_bits if pass_x else None, side))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        L = p.vector_lanes
        H = p.numerics.act_headroom
        gb = self.group_beats
        depth = self.row_depth

        # -- pass 1 ----------------------------------------------------------------------------
        db = self.data_bits
        side = {"side": self.side} if self.side is not None else {}
        beat_l = data.StructLayout({"data": data.ArrayLayout(signed(db), L), "last": 1, **side})
        grp_l = data.StructLayout({"e": signed(7), "nz": 1})
        row_l = data.StructLayout({"emax": signed(7), "nz": 1, "a15": 1, "per_row": 1})
        rows = Pipe(m, "p1_beats", beat_l, self.P1_BEAT_STAGES, depth)
        grps = Pipe(m, "p1_groups", grp_l, self.P1_ROW_STAGES, depth)
        rowq = Pipe(m, "p1_rows", row_l, self.P1_ROW_STAGES, depth)

        i = self.i_beat
        take = Signal()
        pos = RowTracker(m, "p1", take, i.payload.last, self.max_beats)
        gbeat = Signal(range(gb))  # beat within its group
        group_end = Signal()
        m.d.comb += group_end.eq(i.payload.last | (gbeat == gb - 1))
        with m.If(take):
            m.d.sync += gbeat.eq(Mux(group_end, 0, gbeat + 1))
        credit = rows.credit & (~group_end | grps.credit) & (~i.payload.last | rowq.credit)
        m.d.comb += [
            i.ready.eq(credit),
            take.eq(i.valid & credit),
            rows.take.eq(take),
            grps.take.eq(take & group_end),
            rowq.take.eq(take & i.payload.last),
        ]

        # stage 0 -> 1: mask the padding lanes; |x|
        mag1 = Signal(data.ArrayLayout(unsigned(db), L))
        for n in range(L):
            live = pos.index * L + n < i.payload.count
            x = Mux(live, i.payload.data[n], 0)
            m.d.sync += [rows.result.data[n].eq(x), mag1[n].eq(Mux(x < 0, -x, x))]
        m.d.sync += rows.result.last.eq(i.payload.last)
        if side:
            m.d.sync += rows.result.side.eq(i.payload.side)

        first = delay(m, pos.first, 3, "first")
        gfirst = delay(m, gbeat == 0, 3, "gfirst")
        a15 = delay(m, i.payload.a15, 4, "a15")
        per_row = delay(m, i.payload.per_row, 4, "per_row")
        beat_v = delay(m, take, 3, "beat_v")

        # stages 1 -> 2 -> 3: the beat's largest magnitude (a max tree, two levels per stage)
        quads = [tree([mag1[n] for n in range(q, min(q + 4, L))],
                      lambda a, b: Mux(a > b, a, b)) for q in range(0, L, 4)]
        mag2 = Signal(data.ArrayLayout(unsigned(db), len(quads)))
        for k, q in enumerate(quads):
            m.d.sync += mag2[k].eq(q)
        bmax3 = Signal(unsigned(db))
        m.d.sync += bmax3.eq(tree([mag2[k] for k in range(len(quads))],
                                  lambda a, b: Mux(a > b, a, b)))

        # stage 3 -> 4: running maxima of the group and of the row
        gmax4 = Signal(unsigned(db))
        rmax4 = Signal(unsigned(db))
        with m.If(beat_v[3]):
            m.d.sync += [gmax4.eq(Mux(gfirst[3] | (bmax3 > gmax4), bmax3, gmax4)),
                         rmax4.eq(Mux(first[3] | (bmax3 > rmax4), bmax3, rmax4))]

        # stage 4 -> 5: exponents e = bitlen(amax) - b (b = 7, or 14 for A15)
        b4 = Mux(a15[4], 14, 7)
        ge = bitlen(m, gmax4, "gbitlen")
        re = bitlen(m, rmax4, "rbitlen")
        m.d.sync += [
            grps.result.e.eq(ge - b4), grps.result.nz.eq(gmax4 != 0),
            rowq.result.emax.eq(re - b4), rowq.result.nz.eq(rmax4 != 0),
            rowq.result.a15.eq(a15[4]), rowq.result.per_row.eq(per_row[4]),
        ]

        # -- pass 2 ----------------------------------------------------------------------------
        out = Pipe(m, "p2", quant_out_layout(p, db if self.pass_x else None, self.side),
                   self.P2_STAGES)
        beat, grp, row = rows.out, grps.out, rowq.out
        take2 = Signal()
        gbeat2 = Signal(range(gb))
        gend2 = Signal()
        m.d.comb += gend2.eq(beat.payload.last | (gbeat2 == gb - 1))
        with m.If(take2):
            m.d.sync += gbeat2.eq(Mux(gend2, 0, gbeat2 + 1))
        m.d.comb += [
            take2.eq(beat.valid & grp.valid & row.valid & out.credit),
            out.take.eq(take2),
            beat.ready.eq(take2),
            grp.ready.eq(take2 & gend2),
            row.ready.eq(take2 & beat.payload.last),
        ]

        # stage 0 -> 1: scale fields; x rounded by 2**e: rshift_round(x, e) = ((x >> (e-1)) + 1)
        # >> 1 for e >= 1 (exact), and the same formula gives x << -e for e <= 0
        r = row.payload
        g = grp.payload
        e = Signal(signed(7))
        exp = Signal(signed(EXP_BITS))
        d = Signal(signed(8))
        m.d.comb += [
            e.eq(Mux(r.per_row, r.emax, g.e)),
            exp.eq(Mux(r.nz, r.emax - H, 0)),
            d.eq(g.e - exp),
        ]
        gzero = Mux(r.per_row, ~r.nz, ~g.nz | (d < 0))
        gshift = Mux(r.per_row, H, d)
        res = out.result
        s1_info = Signal(data.StructLayout({"gshift": unsigned(GSHIFT_BITS), "gzero": 1,
                                            "exp": signed(EXP_BITS), "last": 1, "a15": 1,
                                            **side}))
        m.d.sync += [
            s1_info.gshift.eq(Mux(gzero, 0, gshift)),
            s1_info.gzero.eq(gzero),
            s1_info.exp.eq(exp),
            s1_info.last.eq(beat.payload.last),
            s1_info.a15.eq(r.a15),
        ]
        if side:
            m.d.sync += [s1_info.side.eq(beat.payload.side), res.side.eq(s1_info.side)]
        if self.pass_x:
            x1 = Signal(data.ArrayLayout(signed(db), L))
            m.d.sync += [x1.eq(beat.payload.data), res.x.eq(x1)]
        sm1 = Signal(signed(7))
        m.d.comb += sm1.eq(e - 1)
        for n in range(L):
            x = beat.payload.data[n]
            t = Signal(signed(db + 1), name=f"t{n}")  # |x| < 2**(b + e): x << (1 - e) < 2**16
            m.d.comb += t.eq(Mux(sm1 >= 0, x >> sm1.as_unsigned()[:5], x << (-sm1)[:4]))
            q1 = Signal(signed(16), name=f"q{n}")
            rounded = (t + 1) >> 1
            m.d.sync += q1.eq(Mux(r.a15,
                                  clamp(rounded, -16383, 16383), clamp(rounded, -127, 127)))
            # stage 1 -> 2: planes
            m.d.sync += [res.data[n].eq(Mux(s1_info.a15, q1 >> 7, q1)),
                         res.lo[n].eq(Mux(s1_info.a15, q1[:7], 0))]
        m.d.sync += [res.gshift.eq(s1_info.gshift), res.gzero.eq(s1_info.gzero),
                     res.exp.eq(s1_info.exp), res.last.eq(s1_info.last)]
        connect_out(m, out.out, self.o_beat)
        m.d.comb += self.busy.eq(rows.busy | grps.busy | rowq.busy | out.busy | (pos.index != 0))
        return m

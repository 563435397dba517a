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

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..params import ChipParams
from .common import (
    WIDE,
    Pipe,
    RowTracker,
    connect_out,
    delay,
    lead_one,
    lead_one_of,
    tree,
)

__all__ = ["Quantizer", "quant_in_layout", "quant_out_layout"]

EXP_BITS = 8     # the ACT word's row exponent (hw.isa.act_word)
GSHIFT_BITS = 5  # the ACT word's group shift


def _group_counter(m, name: str, gb: int):
    """A beat's position in its group of ``gb`` beats and, as a register of its own, whether
    it is the group's last (the caller updates both)."""
    return Signal(range(gb), name=name), Signal(init=gb == 1, name=f"{name}_last")


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
    leaves ``P1_ROW_STAGES + ROW_FIFO_LATENCY + P2_STAGES + FIFO_LATENCY`` (``LATENCY``)
    cycles after its last
    input beat was accepted.
    """

    #: mask; |x|; OR over lanes; group / row ORs; leading ones of bytes, of the value;
    #: exponents
    P1_ROW_STAGES = 7
    #: operands; shift amount, scale fields; coarse shift; fine shift; round; clamp, planes
    P2_STAGES = 6
    P1_BEAT_STAGES = 1  # the beat into the row FIFO (masked)
    #: Row FIFO entries beyond a whole row: the stages before pass 2 starts on it.
    ROW_SLACK = 16
    #: The row FIFOs (beats, groups, rows: block RAM) register their read data.
    ROW_FIFO_LATENCY = Pipe.REG_FIFO_LATENCY

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
        self.LATENCY = self.P1_ROW_STAGES + self.ROW_FIFO_LATENCY + self.P2_STAGES \
            + Pipe.FIFO_LATENCY
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
        rows = Pipe(m, "p1_beats", beat_l, self.P1_BEAT_STAGES, depth, out_reg=True)
        grps = Pipe(m, "p1_groups", grp_l, self.P1_ROW_STAGES, depth, out_reg=True)
        rowq = Pipe(m, "p1_rows", row_l, self.P1_ROW_STAGES, depth, out_reg=True)
        assert rows.fifo_latency == self.ROW_FIFO_LATENCY

        i = self.i_beat
        take = Signal()
        pos = RowTracker(m, "p1", take, i.payload.last, self.max_beats)
        gbeat, glast = _group_counter(m, "gbeat", gb)
        group_end = Signal()
        m.d.comb += group_end.eq(i.payload.last | glast)
        with m.If(take):
            m.d.sync += [gbeat.eq(Mux(group_end, 0, gbeat + 1)),
                         glast.eq(Mux(group_end, gb == 1, gbeat == gb - 2))]
        # the beats' credit covers the groups' and rows' FIFOs: a group (row) is in its FIFO
        # exactly while its end (last) beat is in the beats' (taken with it in pass 1, taken
        # out with it in pass 2), so with equal depths their counts never exceed the beats'.
        # The ready is then a register, not a function of the input's ``last`` (a FIFO's
        # read data in the vector unit).
        assert grps.depth == rowq.depth == rows.depth
        credit = rows.credit
        m.d.comb += [
            i.ready.eq(credit),
            take.eq(i.valid & credit),
            rows.take.eq(take),
            grps.take.eq(take & group_end),
            rowq.take.eq(take & i.payload.last),
        ]

        # stage 0 -> 1: mask the padding lanes (the beat into the row FIFO)
        for n in range(L):
            live = pos.index * L + n < i.payload.count
            m.d.sync += rows.result.data[n].eq(Mux(live, i.payload.data[n], 0))
        m.d.sync += rows.result.last.eq(i.payload.last)
        if side:
            m.d.sync += rows.result.side.eq(i.payload.side)

        first = delay(m, pos.first, 3, "first")
        gfirst = delay(m, gbeat == 0, 3, "gfirst")
        a15 = delay(m, i.payload.a15, 6, "a15")
        per_row = delay(m, i.payload.per_row, 6, "per_row")
        beat_v = delay(m, take, 3, "beat_v")

        # stage 1 -> 2: |x|. The exponents need only the bit length of the largest magnitude,
        # and bitlen(max(a, b)) = bitlen(a | b): OR trees and running ORs, no comparators.
        x1 = rows.result.data
        mag2 = Signal(data.ArrayLayout(unsigned(db), L))
        for n in range(L):
            m.d.sync += mag2[n].eq(Mux(x1[n] < 0, -x1[n], x1[n]))
        # stage 2 -> 3: the beat's OR
        bor3 = Signal(unsigned(db))
        m.d.sync += bor3.eq(tree([mag2[n] for n in range(L)], lambda a, b: a | b))

        # stage 3 -> 4: running ORs of the group and of the row
        gor4 = Signal(unsigned(db))
        ror4 = Signal(unsigned(db))
        with m.If(beat_v[3]):
            m.d.sync += [gor4.eq(Mux(gfirst[3], bor3, gor4 | bor3)),
                         ror4.eq(Mux(first[3], bor3, ror4 | bor3))]

        # stage 4 -> 5: the leading one of each byte; 5 -> 6: of the value (the highest byte
        # with one); 6 -> 7: exponents e = bitlen(amax) - b (b = 7, or 14 for A15), bitlen =
        # index + 1 (0 for 0)
        lead6 = {}
        for k, v in (("g", gor4), ("r", ror4)):
            parts = []
            for c in range(0, db, 8):
                f, idx = lead_one(v[c:c + 8])
                fr, ir = Signal(name=f"{k}found5_{c}"), Signal(3, name=f"{k}lead5_{c}")
                m.d.sync += [fr.eq(f), ir.eq(idx)]
                parts.append((fr, ir))
            f, idx = lead_one_of(parts)
            fr, ir = Signal(name=f"{k}found6"), Signal(len(idx), name=f"{k}lead6")
            m.d.sync += [fr.eq(f), ir.eq(idx)]
            lead6[k] = (fr, ir)

        def exponent(k):
            f, idx = lead6[k]
            return Mux(f, idx + Mux(a15[6], -13, -6), Mux(a15[6], -14, -7))

        m.d.sync += [
            grps.result.e.eq(exponent("g")), grps.result.nz.eq(lead6["g"][0]),
            rowq.result.emax.eq(exponent("r")), rowq.result.nz.eq(lead6["r"][0]),
            rowq.result.a15.eq(a15[6]), rowq.result.per_row.eq(per_row[6]),
        ]

        # -- pass 2 ----------------------------------------------------------------------------
        out = Pipe(m, "p2", quant_out_layout(p, db if self.pass_x else None, self.side),
                   self.P2_STAGES)
        beat, grp, row = rows.out, grps.out, rowq.out
        take2 = Signal()
        gbeat2, glast2 = _group_counter(m, "gbeat2", gb)
        gend2 = Signal()
        m.d.comb += gend2.eq(beat.payload.last | glast2)
        with m.If(take2):
            m.d.sync += [gbeat2.eq(Mux(gend2, 0, gbeat2 + 1)),
                         glast2.eq(Mux(gend2, gb == 1, gbeat2 == gb - 2))]
        m.d.comb += [
            take2.eq(beat.valid & grp.valid & row.valid & out.credit),
            out.take.eq(take2),
            beat.ready.eq(take2),
            grp.ready.eq(take2 & gend2),
            row.ready.eq(take2 & beat.payload.last),
        ]

        res = out.result
        # stage 0 -> 1: the operands from the FIFOs (block RAM reads), registered as they are
        r1 = Signal.like(row.payload, name="row1")
        g1 = Signal.like(grp.payload, name="grp1")
        x1 = Signal(data.ArrayLayout(signed(db), L))
        m.d.sync += [r1.eq(row.payload), g1.eq(grp.payload), x1.eq(beat.payload.data)]
        last = delay(m, beat.payload.last, self.P2_STAGES - 1, "p2_last")
        if side:
            sd = delay(m, beat.payload.side, self.P2_STAGES - 1, "p2_side")
            m.d.sync += res.side.eq(sd[-1])

        # stage 1 -> 2: the beat's exponent e, the row's, the group's shift d = e_g - exp;
        # x rounded by 2**e: rshift_round(x, e) = ((x >> (e-1)) + 1) >> 1 for e >= 1 (exact),
        # and the same formula gives x << -e for e <= 0
        # rshift_round(x, e) = ((x << 15) >> (e + 14) + 1) >> 1 for -14 <= e <= 32: one
        # arithmetic right shift by amt = e + 14 in [0, 46]
        amt2 = Signal(6)
        m.d.sync += amt2.eq(Mux(r1.per_row, r1.emax, g1.e) + 14)
        exp2 = Signal(signed(EXP_BITS))
        d2 = Signal(signed(EXP_BITS + 1))
        info2 = Signal(data.StructLayout({"per_row": 1, "nz": 1, "gnz": 1, "a15": 1}))
        m.d.sync += [exp2.eq(Mux(r1.nz, r1.emax - H, 0)),
                     d2.eq(Mux(r1.nz, g1.e - r1.emax + H, g1.e)),
                     info2.per_row.eq(r1.per_row), info2.nz.eq(r1.nz), info2.gnz.eq(g1.nz),
                     info2.a15.eq(r1.a15)]
        x2 = Signal.like(x1, name="x2")
        m.d.sync += x2.eq(x1)
        if self.pass_x:
            xd = delay(m, x2, self.P2_STAGES - 3, "p2_x")
            m.d.sync += res.x.eq(xd[-1])

        # stage 2 -> 3: the shift; the scale fields
        gzero = Mux(info2.per_row, ~info2.nz, ~info2.gnz | (d2 < 0))
        gshift = Mux(info2.per_row, H, d2)
        s3_info = Signal(data.StructLayout({"gshift": unsigned(GSHIFT_BITS), "gzero": 1,
                                            "exp": signed(EXP_BITS), "a15": 1}))
        m.d.sync += [s3_info.gshift.eq(Mux(gzero, 0, gshift)), s3_info.gzero.eq(gzero),
                     s3_info.exp.eq(exp2), s3_info.a15.eq(info2.a15)]
        info = delay(m, s3_info, 2, "p2_info")
        a15_5 = info[2].a15
        amt3 = Signal(3)
        m.d.sync += amt3.eq(amt2[:3])
        for n in range(L):
            # stage 2 -> 3: shift by amt's multiple of 8; 3 -> 4: by the rest
            y3 = Signal(signed(db + 15), name=f"y{n}")
            m.d.sync += y3.eq((x2[n] << 15) >> Cat(Const(0, 3), amt2[3:]))
            t4 = Signal(signed(db + 1), name=f"t{n}")  # |x| < 2**(b + e): x << (1 - e) < 2**16
            m.d.sync += t4.eq(y3 >> amt3)
            # stage 4 -> 5: round; stage 5 -> 6: clamp, planes
            r5 = Signal(signed(db + 1), name=f"r{n}")
            m.d.sync += r5.eq((t4 + 1) >> 1)
            # the clamp's compares on t4, beside the rounding: with r = (t + 1) >> 1,
            # r > 2**k - 1 <=> t >= 2**(k + 1) - 1 and r < 1 - 2**k <=> t <= -2**(k + 1)
            # (k = 14 A15, 7 INT8), so stage 6 only selects
            a15_4 = info[1].a15
            over5 = Signal(name=f"over{n}")
            under5 = Signal(name=f"under{n}")
            m.d.sync += [over5.eq(Mux(a15_4, t4 >= (1 << 15) - 1, t4 >= (1 << 8) - 1)),
                         under5.eq(Mux(a15_4, t4 <= -(1 << 15), t4 <= -(1 << 8)))]
            q = Signal(signed(16), name=f"q{n}")
            m.d.comb += q.eq(Mux(over5, Mux(a15_5, 16383, 127),
                                 Mux(under5, Mux(a15_5, -16383, -127), r5)))
            m.d.sync += [res.data[n].eq(Mux(a15_5, q >> 7, q)),
                         res.lo[n].eq(Mux(a15_5, q[:7], 0))]
        m.d.sync += [res.gshift.eq(info[2].gshift), res.gzero.eq(info[2].gzero),
                     res.exp.eq(info[2].exp), res.last.eq(last[-1])]
        connect_out(m, out.out, self.o_beat)
        m.d.comb += self.busy.eq(rows.busy | grps.busy | rowq.busy | out.busy | (pos.index != 0))
        return m

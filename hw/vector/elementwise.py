"""Element-wise vector units: residual add, the piecewise-linear LUT unit (GELU, SiLU·mul), RoPE.

Each takes one beat of ``lanes = ChipParams.vector_lanes`` wide values per cycle on ``i_beat``
and delivers the results in order on ``o_beat``: a beat accepted in cycle t is offered in
cycle ``t + LATENCY`` (``STAGES`` pipeline registers, then the output FIFO of
:class:`hw.vector.common.Pipe`: a free-running pipeline whose admission is credit-checked, so a
stalled consumer stops admission, never the pipeline). Every lane is independent; there is no
per-element iteration.

The arithmetic is the golden model's (``sim/golden.py``): each class names the function it
implements bit for bit; the tables come from ``hw/luts.py``, the module the golden model reads.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..luts import gelu_table, silu_table
from ..params import ChipParams
from .common import (
    Pipe,
    connect_out,
    delay,
    product,
    product_stages,
    rshift_round_const,
    saturate,
    signed_bits,
    wide_lanes,
)

__all__ = ["ResidualAdd", "PwlFn", "PwlUnit", "Rope", "pwl_in_layout", "rope_in_layout",
           "ROPE_TRIG_BITS"]

#: cos/sin of RoPE are Q.F in [-1, 1] (``sw.quantize.rope_table``): F + 2 signed bits.
ROPE_TRIG_BITS = 18



class ResidualAdd(wiring.Component):
    """``golden.residual_add``: lane-wise saturating INT32 add of two wide beats.

    ``i_beat``: ``{a, b}`` (two wide beats, e.g. two ACC words read in step); ``o_beat``: a wide
    beat. One beat per cycle, ``STAGES`` = 1.
    """

    STAGES = 1
    LATENCY = STAGES + Pipe.FIFO_LATENCY

    def __init__(self, params: ChipParams = ChipParams()):
        self.params = params
        L = params.vector_lanes
        super().__init__({
            "i_beat": In(stream.Signature(data.StructLayout({"a": wide_lanes(L),
                                                            "b": wide_lanes(L)}))),
            "o_beat": Out(stream.Signature(wide_lanes(L))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.params.vector_lanes
        pipe = Pipe(m, "add", wide_lanes(L), self.STAGES)
        m.d.comb += [
            self.i_beat.ready.eq(pipe.credit),
            pipe.take.eq(self.i_beat.valid & pipe.credit),
            self.busy.eq(pipe.busy),
        ]
        a, b = self.i_beat.payload.a, self.i_beat.payload.b
        for n in range(L):
            m.d.sync += pipe.result[n].eq(saturate(a[n] + b[n]))
        connect_out(m, pipe.out, self.o_beat)
        return m


class PwlFn(enum.Enum, shape=unsigned(1)):
    """What the LUT unit computes for a beat (``hw.isa.VecFn.GELU`` / ``SILU_MUL``)."""

    GELU = 0      #: ``golden.gelu(x)``
    SILU_MUL = 1  #: ``golden.silu_mul(x, up)``


def pwl_in_layout(lanes: int) -> data.StructLayout:
    """A beat for :class:`PwlUnit`: the function, ``x`` (GELU input or SiLU gate) and ``up``
    (the SwiGLU up projection; ignored by GELU)."""
    return data.StructLayout({"fn": PwlFn, "x": wide_lanes(lanes), "up": wide_lanes(lanes)})


class PwlUnit(wiring.Component):
    """The piecewise-linear LUT unit: ``golden.gelu`` and ``golden.silu_mul``.

    Per lane, ``golden.pwl`` on the table of the beat's function (``hw.luts.gelu_table`` /
    ``silu_table``, both read at elaboration into one ROM per lane holding, per segment, its
    start value and its rise to the next), then for ``SILU_MUL`` the product with ``up``
    rounded by F and saturated. Pipeline (``STAGES``, one beat per cycle): segment index
    and ROM read; the ROM's data registered; ``rise * offset``; interpolate (or 0 below / x
    above the range); ``s * up`` (:func:`hw.vector.common.product`); round; saturate (GELU
    passes ``s``). Per lane: one ``13 x 11``-bit and one ``32 x 32``-bit multiplier.
    """

    UP_STAGES = product_stages(signed(32), signed(32))
    STAGES = 4 + UP_STAGES + 2
    LATENCY = STAGES + Pipe.FIFO_LATENCY

    def __init__(self, params: ChipParams = ChipParams()):
        self.params = params
        num = params.numerics
        self.tables = {PwlFn.GELU: gelu_table(num), PwlFn.SILU_MUL: silu_table(num)}
        for t in self.tables.values():
            if (t.below, t.above) != ("zero", "identity"):
                raise ValueError(f"PwlUnit: table {t.name} must be zero below and the "
                                 f"identity above its range")
        if len({t.seg_shift for t in self.tables.values()}) != 1:
            raise ValueError("PwlUnit: the GELU and SiLU tables must have equal segment "
                             "widths (one rounding shift)")
        self.seg_shift = next(iter(self.tables.values())).seg_shift
        L = params.vector_lanes
        super().__init__({
            "i_beat": In(stream.Signature(pwl_in_layout(L))),
            "o_beat": Out(stream.Signature(wide_lanes(L))),
            "busy": Out(1),
        })

    def _rom(self):
        """ROM contents: per table (in :class:`PwlFn` order) and segment i, ``values[i]`` and
        ``values[i + 1] - values[i]``."""
        base, vals, rises = {}, [], []
        for fn, t in self.tables.items():
            base[fn] = len(vals)
            v = [int(x) for x in t.values]
            vals += v[:-1]
            rises += [b - a for a, b in zip(v[:-1], v[1:], strict=True)]
        layout = data.StructLayout({"v": signed(signed_bits(vals)),
                                    "d": signed(signed_bits(rises))})
        init = [{"v": v, "d": d} for v, d in zip(vals, rises, strict=True)]
        return base, layout, init

    def elaborate(self, platform):
        m = Module()
        p = self.params
        L = p.vector_lanes
        F = p.numerics.frac_bits
        base, rom_layout, init = self._rom()
        pipe = Pipe(m, "pwl", wide_lanes(L), self.STAGES)
        m.d.comb += [
            self.i_beat.ready.eq(pipe.credit),
            pipe.take.eq(self.i_beat.valid & pipe.credit),
            self.busy.eq(pipe.busy),
        ]
        fn0 = self.i_beat.payload.fn
        t_gelu, t_silu = self.tables[PwlFn.GELU], self.tables[PwlFn.SILU_MUL]
        sel = fn0 == PwlFn.SILU_MUL

        def per_fn(f):
            """A table constant of the beat's function."""
            return Mux(sel, f(t_silu), f(t_gelu))

        sh = self.seg_shift
        S = self.STAGES
        # the beat's function and up operand, delayed along the pipeline (stage k at [k])
        fn = delay(m, fn0, S - 1, "fn")
        up = delay(m, self.i_beat.payload.up, 4, "up")

        for n in range(L):
            rom = Memory(shape=rom_layout, depth=len(init), init=init)
            m.submodules[f"rom{n}"] = rom
            rd = rom.read_port()
            x0 = self.i_beat.payload.x[n]

            # stage 0: where x lies; the ROM address
            rel = Signal(signed(34), name=f"rel{n}")
            inside = Signal(name=f"inside{n}")
            seg = rel[sh:sh + (len(init) - 1).bit_length()]
            m.d.comb += [
                rel.eq(x0 - per_fn(lambda t: t.lo)),
                inside.eq((rel >= 0) & (rel < per_fn(lambda t: t.segments << sh))),
                rd.addr.eq(seg + Mux(sel, base[PwlFn.SILU_MUL], base[PwlFn.GELU])),
            ]

            # stage 1: ROM data arrives; stage 2: registered
            x1 = Signal(signed(32), name=f"x1_{n}")
            off1 = Signal(sh, name=f"off1_{n}")
            inside1 = Signal(name=f"inside1_{n}")
            above1 = Signal(name=f"above1_{n}")
            m.d.sync += [x1.eq(x0), off1.eq(rel[:sh]), inside1.eq(inside),
                         above1.eq(~inside & (rel >= 0))]
            rdd = Signal(rom_layout, name=f"rom{n}_d")
            m.d.sync += rdd.eq(rd.data)
            x2, off2, inside2, above2 = (delay(m, v, 1, f"{v.name[:-2]}2_{n}")[1]
                                         for v in (x1, off1, inside1, above1))

            # stage 3: rise * offset within the segment
            prod3 = Signal(signed(len(rd.data.d) + sh + 1), name=f"prod3_{n}")
            v3 = Signal.like(rd.data.v, name=f"v3_{n}")
            x3 = Signal(signed(32), name=f"x3_{n}")
            inside3 = Signal(name=f"inside3_{n}")
            above3 = Signal(name=f"above3_{n}")
            m.d.sync += [prod3.eq(rdd.d * off2), v3.eq(rdd.v), x3.eq(x2),
                         inside3.eq(inside2), above3.eq(above2)]

            # stage 4: s = v + rshift_round(rise * offset, seg_shift); 0 below, x above
            interp = Signal(signed(max(len(v3), len(prod3)) + 1), name=f"interp{n}")
            m.d.comb += interp.eq(v3 + rshift_round_const(prod3, sh))
            s4 = Signal(signed(32), name=f"s4_{n}")
            m.d.sync += s4.eq(Mux(inside3, interp, Mux(above3, x3, 0)))

            # s * up (SiLU·mul); round by F; saturate
            p = product(m, s4, up[4][n], f"p{n}")
            sd = delay(m, s4, self.UP_STAGES + 1, f"s{n}_")
            r = Signal(signed(64 - F + 1), name=f"r{n}")
            m.d.sync += r.eq(rshift_round_const(p, F))
            m.d.sync += pipe.result[n].eq(Mux(fn[S - 1] == PwlFn.SILU_MUL, saturate(r), sd[-1]))
        connect_out(m, pipe.out, self.o_beat)
        return m


def rope_in_layout(lanes: int) -> data.StructLayout:
    """A beat for :class:`Rope`: ``x`` (lanes 2i, 2i+1 a pair) and per pair its cos and sin
    (Q.F, ``ROPE_TRIG_BITS`` signed bits)."""
    if lanes % 2:
        raise ValueError(f"Rope needs an even lane count, got {lanes}")
    trig = data.ArrayLayout(signed(ROPE_TRIG_BITS), lanes // 2)
    return data.StructLayout({"x": wide_lanes(lanes), "cos": trig, "sin": trig})


class Rope(wiring.Component):
    """``golden.rope``: rotation of adjacent pairs ``(x[2i], x[2i+1])`` by the beat's
    ``(cos[i], sin[i])``, rounded by F and saturated.

    ``i_beat``: :func:`rope_in_layout` (the controller fetches the table row of the token's
    position and the pair's frequency); ``o_beat``: a wide beat. Pipeline: four ``32 x 18``-bit
    products per pair (:func:`hw.vector.common.product`); sums; rounding; saturation.
    ``STAGES``, one beat per cycle.
    """

    MUL_STAGES = product_stages(signed(32), signed(ROPE_TRIG_BITS))
    STAGES = MUL_STAGES + 3
    LATENCY = STAGES + Pipe.FIFO_LATENCY

    def __init__(self, params: ChipParams = ChipParams()):
        self.params = params
        L = params.vector_lanes
        super().__init__({
            "i_beat": In(stream.Signature(rope_in_layout(L))),
            "o_beat": Out(stream.Signature(wide_lanes(L))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.params.vector_lanes
        F = self.params.numerics.frac_bits
        pipe = Pipe(m, "rope", wide_lanes(L), self.STAGES)
        m.d.comb += [
            self.i_beat.ready.eq(pipe.credit),
            pipe.take.eq(self.i_beat.valid & pipe.credit),
            self.busy.eq(pipe.busy),
        ]
        b = self.i_beat.payload
        pw = 32 + ROPE_TRIG_BITS
        for i in range(L // 2):
            x0, x1, c, s = b.x[2 * i], b.x[2 * i + 1], b.cos[i], b.sin[i]
            pr = {k: product(m, a, b_, f"p{k}_{i}")
                  for k, a, b_ in (("0c", x0, c), ("1s", x1, s), ("0s", x0, s), ("1c", x1, c))}
            sums = [Signal(signed(pw + 1), name=f"rot{j}_{i}") for j in range(2)]
            m.d.sync += [sums[0].eq(pr["0c"] - pr["1s"]), sums[1].eq(pr["0s"] + pr["1c"])]
            for j in range(2):
                r = Signal(signed(pw + 2 - F), name=f"rnd{j}_{i}")
                m.d.sync += [r.eq(rshift_round_const(sums[j], F)),
                             pipe.result[2 * i + j].eq(saturate(r))]
        connect_out(m, pipe.out, self.o_beat)
        return m



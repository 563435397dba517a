"""Per-row scalar arithmetic of the row reductions: floor division and integer square root,
a few result bits per cycle.

The golden model divides only by per-row quantities and takes one square root per row
(``sim/golden.py``: "a sequential divider per row, never per element"), so these run once per
row, between two passes over it, while the passes stream other rows. Each unit holds one
operation at a time: ``ITERATIONS`` cycles of ``steps`` restoring steps each, so it keeps up
with rows of at least ``OCCUPANCY`` beats (a row reduction is then limited by its beats only).

Both take an opaque ``tag`` alongside their operands and return it with the result, so a row's
other scalars travel with it.
"""

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SerialDivider", "SerialIsqrt"]


def _tagged(fields: dict, tag) -> data.StructLayout:
    return data.StructLayout({**fields, "tag": tag} if tag is not None else fields)


class SerialDivider(wiring.Component):
    """``q = n // d``, ``r = n % d`` for unsigned ``n < 2**n_bits``, ``1 <= d < 2**d_bits``.

    Restoring division from quotient bit ``q_bits - 1`` down, ``steps`` bits per cycle. The
    caller guarantees ``n // d < 2**q_bits`` (else q and r are wrong, no other harm).
    ``i``: ``{n, d, tag}``; ``o``: ``{q, r, tag}``. An operation accepted in cycle t is offered
    in cycle ``t + ITERATIONS + 1``; the next is accepted the cycle after that one leaves.
    """

    def __init__(self, n_bits: int, d_bits: int, q_bits: int, steps: int = 2, tag=None):
        self.n_bits, self.d_bits, self.q_bits, self.steps = n_bits, d_bits, q_bits, steps
        self.ITERATIONS = -(-q_bits // steps)
        self.OCCUPANCY = self.occupancy(q_bits, steps)
        super().__init__({
            "i": In(stream.Signature(_tagged({"n": unsigned(n_bits), "d": unsigned(d_bits)},
                                             tag))),
            "o": Out(stream.Signature(_tagged({"q": unsigned(q_bits), "r": unsigned(d_bits)},
                                              tag))),
        })
        self._has_tag = tag is not None

    @staticmethod
    def occupancy(q_bits: int, steps: int) -> int:
        """Cycles from accepting an operation to accepting the next (result taken at once)."""
        return -(-q_bits // steps) + 2

    def elaborate(self, platform):
        m = Module()
        top = self.ITERATIONS * self.steps - 1  # the first quotient bit tried
        rem = Signal(self.n_bits)
        quo = Signal(top + 1)
        dsh = Signal(self.d_bits + top)  # d << (the current bit)
        count = Signal(range(self.ITERATIONS + 1))
        running = Signal()
        done = Signal()
        m.d.comb += [self.i.ready.eq(~running & ~done), self.o.valid.eq(done),
                     self.o.payload.q.eq(quo), self.o.payload.r.eq(rem)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [rem.eq(self.i.payload.n), quo.eq(0),
                         dsh.eq(self.i.payload.d << top),
                         count.eq(self.ITERATIONS), running.eq(1)]
            if self._has_tag:
                m.d.sync += self.o.payload.tag.eq(self.i.payload.tag)
        with m.If(running):
            r, q = rem, quo
            for j in range(self.steps):
                trial = Signal(self.n_bits + 1, name=f"trial{j}")
                fits = Signal(name=f"fits{j}")
                dj = dsh >> j
                m.d.comb += [fits.eq(dj <= r), trial.eq(r - dj)]
                r = Mux(fits, trial, r)
                q = (q << 1) | fits
            m.d.sync += [rem.eq(r), quo.eq(q), dsh.eq(dsh >> self.steps),
                         count.eq(count - 1)]
            with m.If(count == 1):
                m.d.sync += [running.eq(0), done.eq(1)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += done.eq(0)
        return m


class SerialIsqrt(wiring.Component):
    """``s = isqrt(v)`` (floor) for unsigned ``v < 2**v_bits``: ``golden._isqrt``.

    Digit-by-digit (restoring) square root, ``steps`` result bits per cycle.
    ``i``: ``{v, tag}``; ``o``: ``{s, tag}``. Timing as :class:`SerialDivider`.
    """

    def __init__(self, v_bits: int, steps: int = 2, tag=None):
        self.r_bits = -(-v_bits // 2)
        self.v_bits, self.steps = 2 * self.r_bits, steps
        self.ITERATIONS = -(-self.r_bits // steps)
        self.OCCUPANCY = self.occupancy(v_bits, steps)
        super().__init__({
            "i": In(stream.Signature(_tagged({"v": unsigned(v_bits)}, tag))),
            "o": Out(stream.Signature(_tagged({"s": unsigned(self.r_bits)}, tag))),
        })
        self._has_tag = tag is not None

    @staticmethod
    def occupancy(v_bits: int, steps: int) -> int:
        r_bits = (v_bits + 1) // 2
        return -(-r_bits // steps) + 2

    def elaborate(self, platform):
        m = Module()
        W = self.ITERATIONS * self.steps  # result bits tried (a multiple of steps)
        rem = Signal(2 * W)
        res = Signal(2 * W)
        bit = Signal(2 * W)  # one-hot: 4**(the current result bit)
        count = Signal(range(self.ITERATIONS + 1))
        running = Signal()
        done = Signal()
        m.d.comb += [self.i.ready.eq(~running & ~done), self.o.valid.eq(done),
                     self.o.payload.s.eq(res)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [rem.eq(self.i.payload.v), res.eq(0), bit.eq(1 << (2 * W - 2)),
                         count.eq(self.ITERATIONS), running.eq(1)]
            if self._has_tag:
                m.d.sync += self.o.payload.tag.eq(self.i.payload.tag)
        with m.If(running):
            r, s, b = rem, res, bit
            for j in range(self.steps):
                cand = Signal(2 * W + 1, name=f"cand{j}")
                fits = Signal(name=f"fits{j}")
                m.d.comb += [cand.eq(s + b), fits.eq(cand <= r)]
                r = Mux(fits, r - cand, r)
                s = Mux(fits, (s >> 1) + b, s >> 1)
                b = b >> 2
            m.d.sync += [rem.eq(r), res.eq(s), bit.eq(b), count.eq(count - 1)]
            with m.If(count == 1):
                m.d.sync += [running.eq(0), done.eq(1)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += done.eq(0)
        return m

"""Per-row scalar arithmetic of the row reductions: floor division and integer square root,
a few result bits per cycle.

The golden model divides only by per-row quantities and takes one square root per row
(``sim/golden.py``: "a sequential divider per row, never per element"), so these run once per
row, between two passes over it, while the passes stream other rows. Each unit holds one
operation at a time and computes ``steps`` result bits (one radix-``2**steps`` digit) per
cycle, ``ITERATIONS`` cycles; an operation accepted in cycle t is offered in cycle
``t + LATENCY``, and the next is accepted the cycle after it leaves, so a unit keeps up with
rows of at least ``OCCUPANCY`` beats (a row reduction is then limited by its beats only).

Timing: the partial remainder is shifted left past a fixed divisor (not the divisor right past
a full-width remainder), so each compare is as wide as the divisor (the root) plus a few
bits, and the ``2**steps - 1`` candidate digits are compared in parallel (no chain of
compares within a cycle): one carry chain and a few LUT levels per cycle.

Both take an opaque ``tag`` alongside their operands and return it with the result, so a row's
other scalars travel with it.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SerialDivider", "SerialIsqrt"]


def _tagged(fields: dict, tag) -> data.StructLayout:
    return data.StructLayout({**fields, "tag": tag} if tag is not None else fields)


def _check_steps(cls, steps: int) -> None:
    if steps not in (1, 2):
        raise ValueError(f"{cls}: steps = {steps}: 1 or 2 result bits per cycle")


def _digit(m, fits: list, name: str):
    """The radix digit: how many of the (monotone: ``fits[k]`` implies ``fits[:k]``) candidate
    compares ``fits`` hold, as bits straight from them (no priority chain)."""
    if len(fits) == 1:
        d = Signal(1, name=name)
        m.d.comb += d.eq(fits[0])
        return d
    assert len(fits) == 3
    d = Signal(2, name=name)
    m.d.comb += d.eq(Cat(fits[2] | (fits[0] & ~fits[1]), fits[1]))
    return d


def _select(fits: list, values):
    """``values[digit]`` (``digit``: how many of the monotone ``fits`` hold) as multiplexers
    steered by the compares themselves: ``fits[1]`` picks the upper pair, ``fits[2]`` /
    ``fits[0]`` within it (one multiplexer level less than going through the digit)."""
    if len(fits) == 1:
        return Mux(fits[0], values[1], values[0])
    return Mux(fits[1], Mux(fits[2], values[3], values[2]), Mux(fits[0], values[1], values[0]))


def _radix_step(m, r, subtrahends: list, width: int):
    """One restoring radix step: ``r`` minus each (increasing) candidate in ``subtrahends``,
    ``width`` bits plus a sign; returns ``(digit, new, fits)``: how many fit, ``r`` less the
    largest that fits (``_digit`` / ``_select``), and the compares."""
    trials = []
    for k, sub in enumerate(subtrahends):
        t = Signal(width + 1, name=f"trial{k + 1}")
        m.d.comb += t.eq(r - sub)
        trials.append(t)
    fits = [~t[-1] for t in trials]
    return _digit(m, fits, "digit"), _select(fits, [r, *trials]), fits


class SerialDivider(wiring.Component):
    """``q = n // d``, ``r = n % d`` for ``n < 2**n_bits``, ``1 <= d < 2**d_bits``.

    Restoring division, radix ``2**steps``: the remainder (``d_bits`` wide) is shifted left
    by a digit's bits, the next bits of ``n`` enter, and it is compared with ``d``, ``2 d`` and
    ``3 d`` at once (``3 d`` computed in the cycle after acceptance). The caller guarantees
    ``n // d < 2**q_bits`` (else q and r are wrong, no other harm). With ``signed_n``, ``n``
    is a two's complement value of ``n_bits`` and the unit divides ``|n|`` (the caller keeps
    the sign, e.g. in the tag).
    ``i``: ``{n, d, tag}``; ``o``: ``{q, r, tag}``. An operation accepted in cycle t is offered
    in cycle ``t + LATENCY``; the next is accepted the cycle after that one leaves.
    """

    #: Cycles between acceptance and the first digit: the multiples of d (and |n|).
    PREP = 1

    def __init__(self, n_bits: int, d_bits: int, q_bits: int, steps: int = 2, tag=None,
                 signed_n: bool = False):
        _check_steps("SerialDivider", steps)
        self.n_bits, self.d_bits, self.q_bits, self.steps = n_bits, d_bits, q_bits, steps
        self.signed_n = signed_n
        self.ITERATIONS = -(-q_bits // steps)
        self.LATENCY = self.PREP + self.ITERATIONS + 1
        self.OCCUPANCY = self.occupancy(q_bits, steps)
        super().__init__({
            "i": In(stream.Signature(_tagged({"n": unsigned(n_bits), "d": unsigned(d_bits)},
                                             tag))),
            "o": Out(stream.Signature(_tagged({"q": unsigned(q_bits), "r": unsigned(d_bits)},
                                              tag))),
        })
        self._has_tag = tag is not None

    @classmethod
    def occupancy(cls, q_bits: int, steps: int) -> int:
        """Cycles from accepting an operation to accepting the next (result taken at once)."""
        return cls.PREP + -(-q_bits // steps) + 2

    def elaborate(self, platform):
        m = Module()
        s, db = self.steps, self.d_bits
        W = self.ITERATIONS * s  # quotient bits computed (>= q_bits)
        nreg = Signal(self.n_bits)
        dreg = Signal(db)
        d3 = Signal(db + 2)      # 3 d (radix 4)
        rem = Signal(db)         # the partial remainder, < d
        sh = Signal(W)           # n's bits still to enter (top), quotient bits (bottom)
        count = Signal(range(self.ITERATIONS + 1))
        idle = Signal(init=1)  # i.ready: a register
        prep = Signal()
        running = Signal()
        done = Signal()
        m.d.comb += [self.i.ready.eq(idle), self.o.valid.eq(done)]
        with m.If(self.i.valid & idle):
            m.d.sync += [nreg.eq(self.i.payload.n), dreg.eq(self.i.payload.d), prep.eq(1),
                         idle.eq(0)]
            if self._has_tag:
                m.d.sync += self.o.payload.tag.eq(self.i.payload.tag)
        if self.signed_n:
            neg = nreg[-1]
            na = Signal(self.n_bits, name="nabs")
            m.d.comb += na.eq(Mux(neg, -nreg, nreg))
        else:
            na = nreg
        # the iteration runs free (no enable on its registers: garbage while idle, reloaded
        # in prep); its last step is copied to the result registers
        with m.If(prep):
            m.d.sync += [prep.eq(0), running.eq(1)]
        m.d.sync += [d3.eq(dreg + (dreg << 1)), count.eq(Mux(prep, self.ITERATIONS, count - 1))]
        r = Signal(db + s, name="r_in")
        m.d.comb += r.eq(Cat(sh[W - s:], rem))
        mult = [dreg, dreg << 1, d3][: (1 << s) - 1]
        digit, new, _ = _radix_step(m, r, mult, db + s)
        sh_new = Cat(digit[:s], sh[:W - s])
        # n // d < 2**W: the bits of n above W are a remainder < d
        m.d.sync += [rem.eq(Mux(prep, na[W:] if len(na) > W else 0, new)),
                     sh.eq(Mux(prep, na[:W], sh_new))]
        with m.If(running & (count == 1)):
            m.d.sync += [running.eq(0), done.eq(1), self.o.payload.q.eq(sh_new[:self.q_bits]),
                         self.o.payload.r.eq(new)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += [done.eq(0), idle.eq(1)]
        return m


class SerialIsqrt(wiring.Component):
    """``s = isqrt(v)`` (floor) for unsigned ``v < 2**v_bits``: ``golden._isqrt``.

    Digit-by-digit (restoring) square root, radix ``2**steps``: the remainder ``v' - s**2`` of
    the bits of ``v`` seen so far is shifted left by two bits per result bit, and compared at
    once with the growth ``(2**steps s + k)**2 - (2**steps s)**2`` of each candidate digit
    ``k`` (for ``k = 3``: ``24 s + 9``, kept in a register updated alongside ``s``).
    ``i``: ``{v, tag}``; ``o``: ``{s, tag}``. Timing as :class:`SerialDivider` (no ``PREP``).
    """

    PREP = 0

    def __init__(self, v_bits: int, steps: int = 2, tag=None):
        _check_steps("SerialIsqrt", steps)
        self.r_bits = -(-v_bits // 2)
        self.v_bits, self.steps = 2 * self.r_bits, steps
        self.ITERATIONS = -(-self.r_bits // steps)
        self.LATENCY = self.PREP + self.ITERATIONS + 1
        self.OCCUPANCY = self.occupancy(v_bits, steps)
        super().__init__({
            "i": In(stream.Signature(_tagged({"v": unsigned(v_bits)}, tag))),
            "o": Out(stream.Signature(_tagged({"s": unsigned(self.r_bits)}, tag))),
        })
        self._has_tag = tag is not None

    @classmethod
    def occupancy(cls, v_bits: int, steps: int) -> int:
        r_bits = (v_bits + 1) // 2
        return cls.PREP + -(-r_bits // steps) + 2

    def elaborate(self, platform):
        m = Module()
        s = self.steps
        W = self.ITERATIONS * s  # result bits computed (a multiple of steps)
        rb = W + 2 * s + 1       # remainder (<= 2 res) shifted by a digit, and the growths
        rem = Signal(W + 1)
        res = Signal(W)
        sh = Signal(2 * W)       # v's bits still to enter, at the top
        t3 = Signal(rb)          # 24 res + 9 (radix 4)
        count = Signal(range(self.ITERATIONS + 1))
        idle = Signal(init=1)  # i.ready: a register
        running = Signal()
        done = Signal()
        load = Signal()
        m.d.comb += [self.i.ready.eq(idle), self.o.valid.eq(done),
                     load.eq(self.i.valid & idle)]
        with m.If(load):
            m.d.sync += [running.eq(1), idle.eq(0)]
            if self._has_tag:
                m.d.sync += self.o.payload.tag.eq(self.i.payload.tag)
        m.d.sync += count.eq(Mux(load, self.ITERATIONS, count - 1))
        # the iteration runs free (no enable: garbage while idle, reloaded on acceptance);
        # its last step is copied to the result register
        r = Signal(rb, name="r_in")
        m.d.comb += r.eq(Cat(sh[2 * W - 2 * s:], rem))
        # growth of digit k: 2**(s+1) res k + k**2
        grow = [Cat(Const(1, s + 1), res)]                      # k = 1
        if s == 2:
            grow += [Cat(Const(4, s + 2), res), t3]             # k = 2, 3
        digit, new, fits = _radix_step(m, r, grow, rb)
        res_new = Cat(digit[:s], res[:W - s])
        m.d.sync += [rem.eq(Mux(load, 0, new)), res.eq(Mux(load, 0, res_new)),
                     sh.eq(Mux(load, self.i.payload.v, sh << (2 * s)))]
        if s == 2:
            # 24 (4 res + k) + 9 = 4 (24 res + 9) - 27 + 24 k
            cand = [Signal(rb, name=f"t3_{k}") for k in range(4)]
            for k, c in enumerate(cand):
                m.d.comb += c.eq((t3 << 2) + (24 * k - 27))
            nt3 = _select(fits, cand)
            m.d.sync += t3.eq(Mux(load, 9, nt3))
        with m.If(running & (count == 1)):
            m.d.sync += [running.eq(0), done.eq(1), self.o.payload.s.eq(res_new)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += [done.eq(0), idle.eq(1)]
        return m

"""Building blocks shared by the vector unit's components.

Every vector component is a chain of *free-running* pipelines: once a beat is admitted, it
moves one stage per cycle whatever the consumer does, and lands in an output FIFO. A beat is
admitted only against a free FIFO entry (a credit: beats in flight plus beats queued stay below
the FIFO depth), so back-pressure never stalls a pipeline mid-flight and no ready signal runs
combinationally from a component's output to its input, the scheme of the GEMM unit's group
scaler (``hw/gemm.py``). :class:`Pipe` is that pipeline's bookkeeping: a valid shift register,
the credit and the FIFO; the arithmetic between admission and FIFO is the caller's.

The FIFO is :class:`RegFifo` (``SyncFIFOBuffered``'s timing, its control from register
flags) and the credit a register; a block-RAM FIFO whose consumer decides a handshake from
its data reads through a two-entry skid buffer (``Pipe(out_reg=True)``), so neither the RAM's
slow read nor a consumer's ready runs far. Multipliers are split for the ECP5's 18 x 18 blocks
and pipelined (:func:`product`).

Row reductions chain such pipelines through row FIFOs: pass 1 of a row streams its beats into a
FIFO while it reduces them, pass 2 (and 3) take the beats back out once the row's scalars are
known (``hw/vector/quant.py``, ``norm.py``, ``softmax.py``).

The helpers below are the golden model's primitives (``sim/golden.py``) as Amaranth
expressions; their docstrings say which, not how the golden model defines them.
"""

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory

__all__ = ["Pipe", "RegFifo", "wide_lanes", "product", "product_stages", "rshift_round_const",
           "saturate", "clamp_unsigned", "bitlen", "lead_one", "lead_one_of", "clamp", "tree",
           "vmax", "vmin", "delay", "signed_bits", "row_beat_layout", "RowTracker", "connect_out",
           "WIDE"]

WIDE = 32  # a wide value: INT32 Q.F (sim/golden.py)


def wide_lanes(lanes: int) -> data.ArrayLayout:
    """``lanes`` wide (INT32) values: one beat of a wide row (an ACC word when lanes = cols)."""
    return data.ArrayLayout(signed(WIDE), lanes)


def row_beat_layout(lanes: int, extra: dict | None = None) -> data.StructLayout:
    """A beat of a row stream: ``lanes`` wide values and ``last`` (the row's final beat),
    plus per-row fields ``extra`` (constant over a row; units sample them on the first beat)."""
    return data.StructLayout({"data": wide_lanes(lanes), "last": 1, **(extra or {})})


def rshift_round_const(v, s: int):
    """``golden.rshift_round(v, s)`` for a constant ``s`` > 0: round half up."""
    assert s > 0
    return (v + Const(1 << (s - 1), unsigned(s))) >> s


#: :func:`saturate` tests the bits above the range with LUTs up to this many of them (one
#: LUT level for an adder's sum), with the compares' carry chains beyond.
SATURATE_LUT_BITS = 4


def saturate(v, bits: int = WIDE):
    """``golden.saturate``: clamp to the signed range of ``bits``. In range means the bits
    from ``bits - 1`` up are all equal (all zero for an unsigned value): for a value a few
    bits wider (``SATURATE_LUT_BITS``, e.g. a sum of two) an AND / OR over them and a
    multiplexer, no compare's carry chain after the adder; for a much wider one the two
    compares (carry chains beat a deep LUT tree there)."""
    v = Value.cast(v)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w, sgn = len(v), v.shape().signed
    if w < bits or (sgn and w == bits):
        return v
    if w - bits + 1 > SATURATE_LUT_BITS:
        return Mux(v > hi, hi, Mux(v < lo, lo, v))
    top = v[bits - 1:]
    if not sgn:
        return Mux(top.any(), hi, v[:bits - 1])
    ok = ~top.any() | top.all()
    return Mux(ok, v[:bits].as_signed(), Mux(v[-1], lo, hi))


def clamp_unsigned(v, bits: int):
    """``v`` clamped to ``[0, 2**bits - 1]`` (a signed or unsigned value): the sign and an
    OR over the bits above ``bits``, no compare's carry chain."""
    v = Value.cast(v)
    sgn = v.shape().signed
    w = len(v) - 1 if sgn else len(v)  # the magnitude bits
    if w <= bits:
        return Mux(v[-1], 0, v[:w]) if sgn else v
    out = Mux(v[bits:w].any(), (1 << bits) - 1, v[:bits])
    return Mux(v[-1], 0, out) if sgn else out


def clamp(v, lo: int, hi: int):
    return Mux(v > hi, hi, Mux(v < lo, lo, v))


def bitlen(m, v, name: str):
    """``golden._bitlen`` of an unsigned value (0 for 0): a leading-one detector, as a
    balanced tree (log2 levels of 2:1 multiplexers, not a chain of one per bit)."""
    found, index = lead_one(v)
    out = Signal(range(len(v) + 1), name=name)
    m.d.comb += out.eq(Mux(found, index + 1, 0))
    return out


def lead_one(v):
    """(any bit of ``v`` set, index of its highest set bit): :func:`bitlen` without the final
    increment (``bitlen = found ? index + 1 : 0``), for a caller that folds it into a later
    addition."""
    return lead_one_of([(v[k], Const(0, 0)) for k in range(len(v))])


def lead_one_of(parts):
    """:func:`lead_one` of a value cut into equal pieces, from each piece's ``(found,
    index)`` (lowest piece first): the highest piece with a one, its index above the piece's."""
    n = len(parts)
    size = 1 << max(n - 1, 0).bit_length()  # padded to a power of two
    iw = len(Cat(parts[0][1]))

    def lead(lo, width):
        """(any bit set, index of the highest set bit) of pieces lo .. lo + width - 1."""
        if width == 1:
            if lo < n:
                return parts[lo]
            return Const(0, 1), Const(0, iw)
        half = width // 2
        if lo + half >= n:  # the upper half is all padding
            return lead(lo, half)[0], Cat(lead(lo, half)[1], Const(0, 1))
        a_hi, i_hi = lead(lo + half, half)
        a_lo, i_lo = lead(lo, half)
        return a_hi | a_lo, Cat(Mux(a_hi, i_hi, i_lo), a_hi)

    return lead(0, size)


def delay(m, sig, stages: int, name: str) -> list:
    """``sig`` and its copies delayed by 1 .. ``stages`` cycles (index k: delayed k), to carry
    a beat's side information along a pipeline."""
    out = [sig]
    for k in range(stages):
        r = Signal.like(sig, name=f"{name}{k + 1}")
        m.d.sync += r.eq(out[-1])
        out.append(r)
    return out


def signed_bits(values) -> int:
    """Smallest signed width holding every int of ``values`` (ROM fields sized to a table)."""
    lo, hi = min(int(v) for v in values), max(int(v) for v in values)
    return max(hi, -lo - 1).bit_length() + 1


def vmax(a, b):
    """The larger of two signed values, the compare as a subtraction's sign (a carry chain;
    a ``>`` may be mapped to several LUT levels)."""
    return Mux((a - b)[-1], b, a)


def vmin(a, b):
    """The smaller of two signed values (as :func:`vmax`)."""
    return Mux((a - b)[-1], a, b)


def tree(values, op):
    """Balanced reduction of a list of expressions (adder / max trees)."""
    values = list(values)
    while len(values) > 1:
        values = [op(values[i], values[i + 1]) if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def _chunks(width: int, is_signed: bool) -> list:
    """(offset, width, signed) pieces of an operand for 18 x 18 multipliers: 17-bit unsigned
    pieces, the top one signed (up to 18 bits) for a signed operand."""
    if width <= (18 if is_signed else 17):
        return [(0, width, is_signed)]
    out, lo = [], 0
    while width - lo > (18 if is_signed else 17):
        out.append((lo, 17, False))
        lo += 17
    out.append((lo, width - lo, is_signed))
    return out


def product_stages(a_shape, b_shape) -> int:
    """Pipeline stages of :func:`product` for operands of these shapes."""
    from amaranth.hdl import Shape
    a, b = Shape.cast(a_shape), Shape.cast(b_shape)
    n = len(_chunks(a.width, a.signed)) * len(_chunks(b.width, b.signed))
    return 1 + max(n - 1, 0).bit_length()


def product(m, a, b, name: str):
    """``a * b`` pipelined for the ECP5's 18 x 18 multipliers: stage 1 registers each partial
    product of the operands' 17-bit pieces (one MULT18X18D each, its output registered), the
    following stages add them pairwise (one adder per stage, no adder chain after a
    multiplier). ``a``, ``b``: values of the issuing cycle; the product is the returned signal
    :func:`product_stages` cycles later."""
    from amaranth.hdl import Value
    a, b = Value.cast(a), Value.cast(b)
    sa, sb = a.shape(), b.shape()
    width = sa.width + sb.width
    parts = []
    for ao, aw, asg in _chunks(sa.width, sa.signed):
        for bo, bw, bsg in _chunks(sb.width, sb.signed):
            pa = a[ao:ao + aw].as_signed() if asg else a[ao:ao + aw]
            pb = b[bo:bo + bw].as_signed() if bsg else b[bo:bo + bw]
            r = Signal(signed(aw + bw + 1) if (asg or bsg) else unsigned(aw + bw),
                       name=f"{name}_pp{len(parts)}")
            m.d.sync += r.eq(pa * pb)
            parts.append((r, ao + bo))
    level = 0
    while len(parts) > 1:
        nxt = []
        for k in range(0, len(parts), 2):
            if k + 1 == len(parts):
                r = Signal(signed(width + 2), name=f"{name}_s{level}_{k}")
                m.d.sync += r.eq(parts[k][0] << parts[k][1])
                nxt.append((r, 0))
                continue
            (x, xo), (y, yo) = parts[k], parts[k + 1]
            r = Signal(signed(width + 2), name=f"{name}_s{level}_{k}")
            m.d.sync += r.eq((x << xo) + (y << yo))
            nxt.append((r, 0))
        parts = nxt
        level += 1
    out = Signal(signed(width) if (sa.signed or sb.signed) else unsigned(width), name=name)
    m.d.comb += out.eq(parts[0][0] << parts[0][1])
    return out


class RegFifo(Elaboratable):
    """``amaranth.lib.fifo.SyncFIFOBuffered`` as a :class:`Pipe` uses it, cycle for cycle
    (``w_data``, ``w_en``, ``r_data``, ``r_rdy``, ``r_en``; written in cycle t, readable in
    t + 2), with its control from registers: "the RAM holds an entry" is a flag of its own,
    not a compare of the level, so a read decision is one LUT deep. No ``w_rdy``: the
    pipe's credit keeps it from overflowing (``depth >= 3``: the RAM holds ``depth - 1``,
    the read register one)."""

    def __init__(self, *, width, depth):
        assert depth >= 3
        self.width, self.depth = width, depth
        self.w_data = Signal(width)
        self.w_en = Signal()
        self.r_data = Signal(width)
        self.r_rdy = Signal()
        self.r_en = Signal()

    def elaborate(self, platform):
        m = Module()
        D = self.depth - 1  # entries in the RAM (the read register holds one more)
        storage = m.submodules.storage = Memory(shape=self.width, depth=D, init=[])
        wp = storage.write_port()
        rp = storage.read_port(domain="sync")
        produce = Signal(range(D))
        consume = Signal(range(D))
        level = Signal(range(D + 1))
        ne = Signal()          # level != 0, a register
        one = Signal()         # level == 1, a register
        do_read = Signal()
        m.d.comb += [
            wp.addr.eq(produce), wp.data.eq(self.w_data), wp.en.eq(self.w_en),
            do_read.eq(ne & (~self.r_rdy | self.r_en)),
            rp.addr.eq(consume), rp.en.eq(do_read), self.r_data.eq(rp.data),
        ]
        with m.If(self.w_en):
            m.d.sync += produce.eq(Mux(produce == D - 1, 0, produce + 1))
        with m.If(do_read):
            m.d.sync += consume.eq(Mux(consume == D - 1, 0, consume + 1))
        with m.If(self.w_en & ~do_read):
            m.d.sync += [level.eq(level + 1), ne.eq(1), one.eq(~ne)]
        with m.Elif(~self.w_en & do_read):
            m.d.sync += [level.eq(level - 1), ne.eq(~one), one.eq(level == 2)]
        with m.If(do_read):
            m.d.sync += self.r_rdy.eq(1)
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        return m


class Pipe:
    """Bookkeeping of one free-running pipeline ending in a FIFO.

    The caller drives :attr:`take` (a beat enters; it must imply :attr:`credit`) and
    :attr:`result`, the beat's value ``latency`` cycles after its ``take`` (registers the
    caller builds with ``m.d.sync``, unconditionally). :meth:`valid` gives the beat's valid bit
    at each stage, for accumulators. :attr:`out` is the FIFO's read side as a stream.

    A beat admitted in cycle t is offered on :attr:`out` in cycle ``t + latency +
    fifo_latency``. It counts against the credit from the cycle after its admission until it
    leaves the FIFO, ``latency + fifo_latency`` cycles, so with ``depth >= latency +
    fifo_latency + 1`` and a consumer that is always ready one beat enters per cycle (the tests
    measure it). The credit is a register compared with a constant (one counter of the beats
    in flight and queued).

    ``out_reg``: the FIFO's read data passes through one more register (``fifo_latency`` =
    ``REG_FIFO_LATENCY``): for a block-RAM FIFO whose consumer does more than register it
    (a row FIFO's ``last`` flag steering the consumer's handshake), the RAM's slow
    clock-to-out then ends at a flip-flop. Throughput stays one beat per cycle.
    """

    FIFO_LATENCY = 2  # RegFifo (as SyncFIFOBuffered): written in cycle t, readable in t + 2
    REG_FIFO_LATENCY = FIFO_LATENCY + 1  # ... and its read data registered

    def __init__(self, m, name: str, layout, latency: int, depth: int | None = None,
                 out_reg: bool = False):
        self.layout = data.Layout.cast(layout)
        self.latency = latency
        self.fifo_latency = self.REG_FIFO_LATENCY if out_reg else self.FIFO_LATENCY
        self.depth = depth = self.depth_for(latency, depth, out_reg)
        self.fifo = q = RegFifo(width=self.layout.size, depth=depth)
        m.submodules[f"{name}_fifo"] = q
        self.take = Signal(name=f"{name}_take")
        self.credit = Signal(name=f"{name}_credit")
        self.result = Signal(self.layout, name=f"{name}_result")
        self._valid = [self.take]
        for k in range(latency):
            v = Signal(name=f"{name}_v{k + 1}")
            m.d.sync += v.eq(self._valid[-1])
            self._valid.append(v)
        # beats admitted and not yet taken out of the FIFO (in flight + queued), one counter:
        # the credit is a compare of a register with a constant, no adder chain
        used = Signal(range(depth + 1), name=f"{name}_used")
        done = self._valid[-1]
        self.out = stream.Signature(self.layout).create(path=(name, "out"))
        pop = self.out.valid & self.out.ready
        # the credit itself a register (used < depth): after a take alone, used + 1 < depth;
        # after a pop, 1; else as it was. A take implies the credit, so that is
        # pop | (credit & (~take | used < depth - 1)): one LUT after take and pop.
        credit = Signal(init=1, name=f"{name}_credit_r")
        room = Signal(name=f"{name}_room")
        m.d.comb += room.eq(used < depth - 1)
        m.d.sync += credit.eq(pop | (credit & (~self.take | room)))
        with m.If(self.take & ~pop):
            m.d.sync += used.eq(used + 1)
        with m.Elif(~self.take & pop):
            m.d.sync += used.eq(used - 1)
        m.d.comb += [
            self.credit.eq(credit),
            q.w_data.eq(self.result),
            q.w_en.eq(done),
        ]
        if out_reg:
            # a two-entry skid buffer: it takes the FIFO's head whenever it holds fewer than
            # two (a register's decision), so the consumer's ready reaches only the buffer
            head = Signal(self.layout, name=f"{name}_head")
            spare = Signal(self.layout, name=f"{name}_spare")
            hv = Signal(name=f"{name}_hv")  # head valid (the stream's valid)
            sv = Signal(name=f"{name}_sv")  # spare valid (the FIFO is not read)
            m.d.comb += [q.r_en.eq(~sv), self.out.payload.eq(head), self.out.valid.eq(hv)]
            enter = q.r_rdy & ~sv
            pop = self.out.ready & hv
            # the head loads after a pop (the spare, or the FIFO's head) or when empty; the
            # spare loads while the head is held (flags as in the branches below)
            with m.If(pop | ~hv):
                m.d.sync += head.eq(Mux(self.out.ready & sv, spare, q.r_data))
            with m.If(~sv):
                m.d.sync += spare.eq(q.r_data)
            with m.If(pop):
                m.d.sync += [hv.eq(sv | enter), sv.eq(0)]
            with m.Elif(~hv):
                m.d.sync += hv.eq(enter)
            with m.Elif(~sv):
                m.d.sync += sv.eq(enter)
        else:
            m.d.comb += [
                self.out.payload.eq(q.r_data),
                self.out.valid.eq(q.r_rdy),
                q.r_en.eq(self.out.ready),
            ]
        self.busy = Signal(name=f"{name}_busy")
        m.d.comb += self.busy.eq(used != 0)

    @classmethod
    def depth_for(cls, latency: int, depth: int | None = None, out_reg: bool = False) -> int:
        """The FIFO depth (entries, the output register's included) of a pipe of ``latency``
        stages asked for ``depth`` entries."""
        fl = cls.REG_FIFO_LATENCY if out_reg else cls.FIFO_LATENCY
        return max(depth or 0, latency + fl + 1)

    def valid(self, stage: int):
        """The valid bit of the beat in stage ``stage`` (0: the admission cycle)."""
        return self._valid[stage]


class RowTracker:
    """Position of the beats admitted into a row pass: ``first`` (the row's first beat) and
    ``index`` (the beat's number in the row), from the ``last`` flags of earlier beats."""

    def __init__(self, m, name: str, take, last, max_beats: int):
        self.index = Signal(range(max_beats + 1), name=f"{name}_index")
        self.first = Signal(name=f"{name}_first")
        m.d.comb += self.first.eq(self.index == 0)
        with m.If(take):
            m.d.sync += self.index.eq(Mux(last, 0, self.index + 1))


def connect_out(m, pipe_out, port):
    """Join a :class:`Pipe`'s FIFO stream to a component's output port."""
    wiring.connect(m, pipe_out, wiring.flipped(port))

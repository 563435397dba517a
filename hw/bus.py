"""Interfaces between the chip's units: the off-chip memory bus and on-chip buffer access.

Off-chip bus (:class:`BusSignature`, the chip is the initiator): three valid/ready streams.

- ``rd_addr``: read requests, one bus-word address each;
- ``rd_data``: read responses, one bus word each, in request order (the memory may take any
  number of cycles; the modelled memory in ``sim/offchip.py`` adds latency, jitter and a
  bandwidth limit);
- ``wr``: posted writes ``{addr, data}``; a write is done when the memory accepts it (it is
  visible to every read requested after that cycle).

Buffer access (:func:`buf_write_layout`, :func:`buf_read_layout`): a unit that moves whole
words (the DMA, the KV engine) asks the chip's buffer arbiter for one word at a time, named by
:class:`hw.isa.Buf` and word address, with the data left-aligned in :func:`max_word_bits`
bits (the word's own width, zero above). Reads answer in request order on a data stream.
"""

from amaranth.hdl import unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .isa import Buf, bus_bits, word_layout
from .params import ChipParams

__all__ = ["ADDR_BITS", "DMA_ADDR_BITS", "BusSignature", "MemReader", "max_word_bits",
           "buf_write_layout",
           "buf_read_layout", "word_bits"]

#: Off-chip bus-word addresses.
ADDR_BITS = 32


def word_bits(p: ChipParams, buf: Buf) -> int:
    return data.Layout.cast(word_layout(p, buf)).size


def max_word_bits(p: ChipParams) -> int:
    """The widest buffer word: the data width of buffer-access streams."""
    return max(word_bits(p, b) for b in Buf)


#: Buffer-word addresses of DMA transfers: ``sram + i`` for ``i < words`` (two 16-bit
#: fields), which reaches past 2**16 in a KV buffer deeper than that (``hw/isa.py``).
DMA_ADDR_BITS = 17


def buf_write_layout(p: ChipParams) -> data.StructLayout:
    return data.StructLayout({"buf": Buf, "addr": unsigned(DMA_ADDR_BITS),
                              "data": unsigned(max_word_bits(p))})


def buf_read_layout(p: ChipParams) -> data.StructLayout:
    return data.StructLayout({"buf": Buf, "addr": unsigned(DMA_ADDR_BITS)})


class BusSignature(wiring.Signature):
    """The off-chip memory bus, from the initiator's (the chip's) side."""

    def __init__(self, p: ChipParams):
        self.params = p
        super().__init__({
            "rd_addr": Out(stream.Signature(unsigned(ADDR_BITS))),
            "rd_data": In(stream.Signature(unsigned(bus_bits(p)))),
            "wr": Out(stream.Signature(data.StructLayout({
                "addr": unsigned(ADDR_BITS), "data": unsigned(bus_bits(p))}))),
        })

    def __eq__(self, other):
        return isinstance(other, BusSignature) and other.params == self.params

    def __repr__(self):
        return f"BusSignature({self.params!r})"


class MemReader(wiring.Component):
    """An address stream in, a data stream out, through one memory read port (data one
    cycle after the address, as ``amaranth.lib.memory`` read ports give it).

    ``i``: ``{addr, meta}``; ``o``: ``{data, meta}`` (``meta`` rides along). Reads are issued
    only against free entries of the ``depth``-entry output FIFO, so back-pressure on ``o``
    never loses a word; with ``depth >= 2`` it sustains one word per cycle. ``busy``: a read
    in flight or data waiting. Wire ``rd_addr``/``rd_en``/``rd_data`` to the read port.
    """

    def __init__(self, addr_bits: int, data_bits: int, meta_shape=unsigned(1), depth: int = 4):
        self.depth = depth
        self._meta = meta_shape
        self._data_bits = data_bits
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"addr": unsigned(addr_bits),
                                                        "meta": meta_shape}))),
            "o": Out(stream.Signature(data.StructLayout({"data": unsigned(data_bits),
                                                         "meta": meta_shape}))),
            "rd_addr": Out(addr_bits),
            "rd_en": Out(1),
            "rd_data": In(data_bits),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        from amaranth.hdl import Module, Signal
        from amaranth.lib import fifo

        m = Module()
        out_l = self.o.payload.shape()
        m.submodules.q = q = fifo.SyncFIFOBuffered(width=out_l.size, depth=self.depth)
        inflight = Signal(1)
        meta_d = Signal(self._meta)
        take = Signal(1)
        # reads issued and not yet taken from ``o`` (== q.level + inflight), a register: the
        # admission is a compare against a constant
        used = Signal(range(self.depth + 1))
        m.d.sync += used.eq(used + take - (self.o.valid & self.o.ready))
        m.d.comb += [
            self.i.ready.eq(used < self.depth),
            take.eq(self.i.valid & self.i.ready),
            self.rd_addr.eq(self.i.payload.addr),
            self.rd_en.eq(take),
        ]
        m.d.sync += [inflight.eq(take), meta_d.eq(self.i.payload.meta)]
        w = Signal(out_l)
        m.d.comb += [
            w.data.eq(self.rd_data), w.meta.eq(meta_d),
            q.w_data.eq(w), q.w_en.eq(inflight),
            self.o.payload.eq(q.r_data), self.o.valid.eq(q.r_rdy), q.r_en.eq(self.o.ready),
            self.busy.eq(inflight | q.r_rdy),
        ]
        return m

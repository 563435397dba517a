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

__all__ = ["ADDR_BITS", "BusSignature", "max_word_bits", "buf_write_layout",
           "buf_read_layout", "word_bits"]

#: Off-chip bus-word addresses.
ADDR_BITS = 32


def word_bits(p: ChipParams, buf: Buf) -> int:
    return data.Layout.cast(word_layout(p, buf)).size


def max_word_bits(p: ChipParams) -> int:
    """The widest buffer word: the data width of buffer-access streams."""
    return max(word_bits(p, b) for b in Buf)


def buf_write_layout(p: ChipParams) -> data.StructLayout:
    return data.StructLayout({"buf": Buf, "addr": unsigned(16),
                              "data": unsigned(max_word_bits(p))})


def buf_read_layout(p: ChipParams) -> data.StructLayout:
    return data.StructLayout({"buf": Buf, "addr": unsigned(16)})


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

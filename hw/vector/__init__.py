"""The vector unit (issue 5): one module per family of operations of the golden model.

- :mod:`.elementwise`: residual add, the piecewise-linear LUT unit (GELU, SiLU·mul), RoPE;
- :mod:`.quant`: requantization of wide rows to A8 / A15 with group scales (two passes);
- :mod:`.norm`: LayerNorm and RMSNorm (three passes);
- :mod:`.softmax`: softmax with a causal mask (three passes);
- :mod:`.serial`: the per-row divider and square root the reductions share;
- :mod:`.common`: the free-running pipeline with credit-checked output FIFO they all use.

Every component streams beats of ``ChipParams.vector_lanes`` lanes with valid/ready
(``amaranth.lib.stream``) and is bit-exact with its ``sim.golden`` function. All take one beat
per cycle; the row reductions do so with rows back to back (reductions pipelined across rows
through row FIFOs), as long as a row has at least the serial divider's occupancy in beats
(18 with 2 quotient bits per cycle) for norms and softmax.

- :mod:`.engine`: the controller, :class:`VecEngine`: ``VEC`` micro-ops (``hw.isa.VecArgs``,
  run by ``sim.isa_sim.IsaSim(vector=True)``) on these components, a unit of ``hw/chip.py``
  (``Chip(params, vector=True)``): checks, buffer readers and writers, the beat assembler for
  ``half`` ACC rows (``PC`` elements per word), PRM constants, ``QUANT``'s ``A8X2`` (a second
  quantizer on the residual ``x - dequant(hi)``) and ``vfold`` (V's scales loaded from KV,
  then ``p * mant_v`` rounded by ``e_max - exp_v`` ahead of the quantizer), ``COPY``. Row
  capacities: ``max_beats = ceil(ChipParams.vector_row / vector_lanes)``.
"""

from .elementwise import PwlFn, PwlUnit, ResidualAdd, Rope
from .engine import VecEngine
from .norm import Normalizer
from .quant import Quantizer
from .serial import SerialDivider, SerialIsqrt
from .softmax import Softmax

__all__ = ["ResidualAdd", "PwlFn", "PwlUnit", "Rope", "Quantizer", "Normalizer",
           "Softmax", "SerialDivider", "SerialIsqrt",
           "VecEngine"]

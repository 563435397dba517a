"""The vector unit (issue 5): one module per family of operations of the golden model.

- :mod:`.elementwise`: residual add, the piecewise-linear LUT unit (GELU, SiLU·mul), RoPE;
- :mod:`.quant`: requantization of wide rows to A8 / A15 with group scales (two passes);
- :mod:`.norm`: LayerNorm and RMSNorm (three passes);
- :mod:`.softmax`: softmax with a causal mask (three passes);
- :mod:`.serial`: the per-row divider and square root the reductions share;
- :mod:`.common`: the free-running pipeline with credit-checked output FIFO they all use.

Every component streams beats of ``ChipParams.vector_lanes`` lanes with valid/ready
(``amaranth.lib.stream``) and is bit-exact with its ``sim.golden`` function.
"""

from .elementwise import PwlFn, PwlUnit, ResidualAdd, Rope
from .norm import Normalizer
from .quant import Quantizer
from .serial import SerialDivider, SerialIsqrt
from .softmax import Softmax

__all__ = ["ResidualAdd", "PwlFn", "PwlUnit", "Rope", "Quantizer", "Normalizer",
           "Softmax", "SerialDivider", "SerialIsqrt"]

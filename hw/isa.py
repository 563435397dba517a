"""The chip's micro-op instruction set and on-chip data formats, defined once.

Everything that encodes, decodes or executes a micro-op uses the layouts here: the sequencer
(``hw/chip.py``) decodes :data:`INSTR` fields as Amaranth views, the compiler encodes with
:func:`encode`, the ISA simulator (``sim/isa_sim.py``) decodes with :func:`decode`, and the ISA
table in ``docs/ISA.md`` is generated from this file by ``scripts/isa_doc.py``.
``tests/data/isa_encoding.txt`` is a checked-in dump of every layout (field, offset, width)
and every enum; ``tests/test_isa.py`` fails when the encoding changes without that dump
being regenerated (``scripts/isa_doc.py --dump``), so an encoding change is an explicit diff.

Machine model
-------------
A micro-op is :data:`INSTR_BITS` = 128 bits: a 6-bit :class:`Op` and a union of argument
structs. The sequencer fetches micro-ops in order from program memory
(``ChipParams.uop_depth`` entries) and dispatches each to the in-order command queue of the
unit that executes it (:class:`Unit`). Units run concurrently; the only ordering between
units is what the program states with ``WAIT unit, n``: the sequencer stalls until at most
``n`` micro-ops issued to ``unit`` are unfinished. The compiler double-buffers by waiting for
all but the newest op of a unit (``WAIT GEMM, 1`` before overwriting the buffer the previous
GEMM read), so the load of the next tile overlaps the compute of the current one.

Buffers (:class:`Buf`), word-addressed, each its own ``amaranth.lib.memory.Memory``.
With ``R = rows``, ``C = cols``, ``PC = C / 2`` (``ChipParams``):

``WGT``  weight tile rows: :func:`wgt_word` = ``PC`` bytes (INT8, or two INT4 ``lo | hi << 4``).
         A tile ``(j, kt)`` of a GEMM (output block ``j``, K-tile ``kt``) is ``R`` words at
         ``w_addr + (j * k_tiles + kt) * R``, row ``r`` (K index ``kt * R + r``) at ``+ r``.
``ACT``  quantized activations: :func:`act_word` = ``R`` INT8 values along K plus the scale of
         the activation group they lie in (``gshift``/``gzero``: mantissa ``2**gshift`` or 0)
         and the row exponent ``exp`` (``sim.golden.ActScale``). Row ``t`` of a GEMM
         occupies ``k_tiles`` words at ``a_addr + t * a_stride``.
``ACC``  wide results: :func:`acc_word` = ``C`` INT32. GEMM output block ``j`` of row ``t`` is
         written at ``acc_addr + t * acc_stride + j`` (INT8-mode outputs fill the first ``PC``
         lanes, the rest are 0).
``PRM``  GEMM column parameters, :func:`prm_word`: a *group* word (per column: ``scale``,
         ``offset`` of the weight group, as ``sim.golden.gemm`` uses them) or an *out* word
         (per column: ``shift``, ``bias``). Block ``j``, K-tile ``kt`` uses group word
         ``prm_addr + j * ceil(k_tiles / 2**prm_step) + (kt >> prm_step)`` and out word
         ``oprm_addr + j``. ``prm_step = 7`` never advances (one group word for all K).
``KV``   the KV cache, :func:`kv_word` = ``PC`` bytes (the weight-row format: the grid reads
         cached keys and values as weight tiles, see :class:`WSrc`). ``KV_APPEND`` lays out
         a head's region (head dim ``d``, a multiple of 16 and of ``PC``) as:

         - keys, transposed: token ``s`` is byte lane ``s % PC`` of the ``d`` words at
           ``kv_addr + (s // PC) * d + k`` (``k < d``): block ``b = s // PC`` is read back by
           ``GEMM wsrc=KV_TILED`` as ``k_tiles = d / R`` tiles;
         - values, token-major: token ``s`` is the ``d / PC`` words at
           ``kv_addr + s * d / PC`` (``GEMM wsrc=KV_ROWS``, ``n_tiles = d / PC``);
         - scales (keys and values alike), ``G + 1`` words per token block ``b``
           (``G = d / 16``) at ``kv_saddr + b * (G + 1)``: word ``g < G``, lane ``s % PC``, is
           ``gshift | gzero << 5`` of the token's activation group ``g``; word ``G``, lane
           ``s % PC``, its row ``exp`` (two's complement byte).

         ``GEMM psrc=KV`` reads these as column parameters: block ``j``, K-tile ``kt``,
         column ``c`` gets ``scale = 2**gshift`` (0 if ``gzero``) from word
         ``prm_addr + j * (G + 1) + (kt >> prm_step)`` (``G = ceil(k_tiles / 2**prm_step)``),
         ``offset = 0``, ``shift = frac_bits - exp`` from word ``prm_addr + j * (G + 1) + G``,
         ``bias = 0`` (QKᵀ: ``out = rshift_round(Y, F - exp_q - exp_k)``, as
         ``sim.golden.gemm_act``). Lanes ``c >= PC`` (W4A8 columns) take scale 0.

Off-chip memory is an array of bus words of ``8 * offchip_bytes_per_cycle`` bits
(:func:`bus_bits`); an on-chip word of ``W`` bits occupies ``ceil(W / bus_bits)`` consecutive
bus words, little-endian (:func:`bus_words_per`). ``LOAD``/``STORE`` addresses are bus-word
addresses. The program itself is loaded from off-chip memory at start (see ``hw/chip.py``).

Dynamic lengths: the context register ``pos`` (tokens already in the KV cache; set by the
host or ``SETPOS``) makes one program serve every decode step. The sequencer attaches the
current ``pos`` to every op it dispatches, so a later ``SETPOS`` never races a queued op.
``KV_APPEND`` writes tokens ``pos .. pos + t_len - 1``; a GEMM with ``dyn = POS`` covers
keys ``0 .. pos + t_len - 1`` (:class:`Dyn`).

KV base: the second context register ``kv_base`` (KV words, 0 .. ``buffer_depth(KV) - 1``;
``0`` at ``start``, set by ``SETPOS reg = KV_BASE``, :class:`PosReg`) lets the 16-bit KV
address fields reach a KV buffer deeper than 2**16 words (:data:`KV_BASE_BITS`). Like ``pos``,
the sequencer attaches the current ``kv_base`` to every op it dispatches, and every KV
address an op computes is ``kv_base + field``: ``KV_APPEND``'s ``kv_addr`` and ``kv_saddr``,
a GEMM's ``w_addr`` with ``wsrc`` ``KV_TILED`` / ``KV_ROWS`` and ``prm_addr`` with
``psrc = KV``, and ``VEC QUANT vfold``'s ``src_b`` (every KV address in this docstring and
the argument structs' is relative to it); every range check (``Err.SRAM_RANGE``) applies to
the sums. A compiler sets it per layer, so each layer's heads are addressed within 2**16
words of their base. ``LOAD`` / ``STORE`` address KV words ``sram ..`` directly (no base).
A program that never sets ``kv_base`` runs as if the register did not exist.

Errors (:class:`Err`) halt the chip cleanly: the sequencer stops issuing, the units finish
or drop what they hold without writing outside any buffer, ``error`` and ``error_pc`` latch.
"""

import enum as py_enum
import math

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

from .params import ChipParams

__all__ = [
    "Op", "Unit", "Buf", "WSrc", "PSrc", "Dyn", "KvKind", "VecFn", "QuantMode", "VecBuf", "Err",
    "Counter", "GridMode", "INSTR_BITS", "OP_BITS", "DmaArgs", "GemmArgs", "KvArgs", "VecArgs",
    "WaitArgs", "PosArgs", "PosReg", "KV_BASE_BITS", "kv_base_bits", "kv_addr_bits", "ARGS",
    "INSTR", "OP_UNIT", "OP_ARGS", "PRM_STEP_NEVER", "encode",
    "decode",
    "act_word", "wgt_word", "acc_word", "kv_word", "prm_group_word", "prm_out_word", "prm_word",
    "word_layout", "bus_bits", "bus_words_per", "buffer_depth", "KV_EXP_LANE_BITS",
    "check_params", "leaf_fields", "word_bytes", "pack_words", "unpack_words",
    "LinkFrame", "LinkNak", "LINK_SYNC", "LINK_VERSION", "LINK_CRC_INIT", "LINK_CRC_POLY",
    "LINK_HEADER_BYTES", "LINK_CRC_BYTES", "LINK_BURST_BYTES", "LINK_COUNTER_BYTES",
    "LINK_START", "LINK_BURST", "LINK_ACK", "LINK_NAK", "LINK_INFO", "LINK_STATE",
    "LINK_COUNTS", "LINK_DONE", "LINK_PAYLOAD", "LINK_HOST_FRAMES", "link_payload_bytes",
    "link_max_burst", "link_max_payload", "link_crc", "link_params_hash",
]

INSTR_BITS = 128
OP_BITS = 6


class Op(enum.IntEnum, shape=unsigned(OP_BITS)):
    """Micro-op codes. Any other value is ``Err.ILLEGAL_OP``."""

    NOP = 0x00       #: nothing
    HALT = 0x01      #: wait for every unit to drain, then stop (``done``)
    WAIT = 0x02      #: stall until at most ``count`` ops of ``unit`` are unfinished
    SETPOS = 0x03    #: ``pos`` or ``kv_base`` ``= value`` (``+= value`` with ``add``)
    LOAD = 0x08      #: DMA off-chip -> buffer
    STORE = 0x09     #: DMA buffer -> off-chip
    GEMM = 0x10      #: tiled GEMM on the grid, outputs to ACC
    KV_APPEND = 0x18  #: ACT rows -> KV cache at ``pos``
    VEC = 0x20       #: vector-unit operation (:class:`VecFn`)


class Unit(enum.IntEnum, shape=unsigned(3)):
    """Execution units, each with an in-order command queue (``WAIT`` names one)."""

    LOAD = 0
    STORE = 1
    GEMM = 2
    VEC = 3
    KV = 4


class Buf(enum.IntEnum, shape=unsigned(3)):
    """On-chip buffers a DMA can reach."""

    WGT = 0
    ACT = 1
    ACC = 2
    PRM = 3
    KV = 4


class GridMode(enum.IntEnum, shape=unsigned(1)):
    """How a weight tile's bytes are read (``hw.grid.GridMode`` has the same values)."""

    INT8 = 0
    W4A8 = 1


class WSrc(enum.IntEnum, shape=unsigned(2)):
    """Where a GEMM's weight tiles come from, and how they are laid out. Row ``r`` of tile
    (block ``j``, K-tile ``kt``) is the word at:

    - ``WGT``: WGT ``w_addr + (j * k_tiles + kt) * R + r`` (tile-major);
    - ``KV_TILED``: KV, same address (cached keys, transposed: QKᵀ);
    - ``KV_ROWS``: KV ``w_addr + (kt * R + r) * n_tiles + j`` (cached values, one row of
      ``n_tiles`` words per token: P·V).
    """

    WGT = 0
    KV_TILED = 1
    KV_ROWS = 2


class PSrc(enum.IntEnum, shape=unsigned(1)):
    """Where a GEMM's column parameters come from."""

    PRM = 0
    KV = 1


class Dyn(enum.IntEnum, shape=unsigned(1)):
    """Whether a GEMM's key length follows the context register ``pos``: with ``POS`` and
    ``wsrc = KV_TILED`` ``n_tiles = ceil((pos + t_len) / PC)`` (QKᵀ over every visible
    key), with ``wsrc = KV_ROWS`` ``k_tiles = ceil((pos + t_len) / R)`` (P·V)."""

    STATIC = 0
    POS = 1


class KvKind(enum.IntEnum, shape=unsigned(1)):
    KEY = 0
    VALUE = 1


class VecFn(enum.IntEnum, shape=unsigned(5)):
    """Vector-unit operations, one per operation of the golden model (``sim/golden.py``); the
    exact contract of each is :class:`VecArgs`. A chip built without the vector unit raises
    ``Err.UNSUPPORTED`` for every ``VEC``; one with it raises ``Err.BAD_FIELD`` for a value
    not listed here."""

    QUANT = 0       #: wide rows (ACC) -> A8 rows (ACT): ``quantize_rows`` (:class:`QuantMode`)
    RESIDUAL = 1    #: ``residual_add(a, b)``: ACC + ACC -> ACC
    LAYERNORM = 2   #: ``layernorm(a, gamma, beta, eps)``, constants in PRM at ``prm``
    RMSNORM = 3     #: ``rmsnorm(a, gamma, eps)``, constants in PRM at ``prm``
    SOFTMAX = 4     #: ``softmax(a, q_pos)``, the causal mask from ``pos`` (``causal``)
    GELU = 5        #: ``gelu(a)``
    SILU_MUL = 6    #: ``silu_mul(a, b)`` (a: gate, b: up)
    ROPE = 7        #: ``rope`` on adjacent pairs, table rows ``pos + t`` in ACC at ``src_b``
    COPY = 8        #: rows moved within ACC (optionally repacked) or within ACT


class QuantMode(enum.IntEnum, shape=unsigned(2)):
    """What ``VEC QUANT`` writes per row (``sim.golden.quantize_rows`` /
    ``quantize_residual``); a mode with two blocks writes the second block of ``rows`` rows at
    ``dst + (rows + t) * dst_stride`` (:class:`VecArgs`), so one ``GEMM`` with
    ``t_len = 2 * rows`` reads both (A8X2)."""

    INT8 = 0   #: one A8 row (``bits = 8``)
    A15 = 1    #: two INT8 planes of 15-bit values (``bits = 15``): ``x >> 7``, ``x & 127``
    A8X2 = 2   #: two A8 passes (``quantize_residual``): the row, then its residual


class VecBuf(enum.IntEnum, shape=unsigned(1)):
    """The buffer ``VEC COPY`` moves rows within."""

    ACC = 0
    ACT = 1


class Err(enum.IntEnum, shape=unsigned(4)):
    """Error codes latched in the status register; any error halts the chip."""

    NONE = 0
    ILLEGAL_OP = 1      #: an opcode not in :class:`Op`
    BAD_FIELD = 2       #: a field out of its legal range (e.g. ``t_len = 0``, unknown buffer)
    SRAM_RANGE = 3      #: an access beyond a buffer's depth
    OFFCHIP_RANGE = 4   #: an off-chip address beyond the modelled memory
    KV_OVERFLOW = 5     #: ``pos + t_len`` beyond a KV region's capacity
    UNSUPPORTED = 6     #: an op this build has no unit for (``VEC`` without the vector unit)
    PROG_RANGE = 7      #: the program counter ran past the loaded program without ``HALT``
    PROG_LOAD = 8       #: the program does not fit the micro-op memory


class Counter(enum.IntEnum):
    """Performance counters, in the order the host reads them (``hw/chip.py``)."""

    CYCLES = 0           #: cycles from start to done
    UOPS = 1             #: micro-ops issued (incl. any issued before a unit's error arrived)
    BUSY_LOAD = 2        #: cycles each unit had work
    BUSY_STORE = 3
    BUSY_GEMM = 4
    BUSY_VEC = 5
    BUSY_KV = 6
    STALL_WAIT = 7       #: sequencer cycles stalled on a ``WAIT``
    STALL_QUEUE = 8      #: sequencer cycles stalled on a full unit queue
    STALL_MEM = 9        #: DMA cycles waiting for off-chip data or write acceptance
    GRID_ROWS = 10       #: activation rows the grid accepted (x R x C MACs)
    LOAD_WORDS = 11      #: off-chip bus words read by LOAD (program fetch excluded)
    STORE_WORDS = 12     #: off-chip bus words written by STORE


PRM_STEP_NEVER = 7
#: Width of a KV scale lane (``gshift | gzero << 5``, or an exponent byte).
KV_EXP_LANE_BITS = 8


# -- micro-op layouts (fixed widths, independent of ChipParams) --------------------------------


class DmaArgs(data.Struct):
    """``LOAD`` / ``STORE``: ``words`` buffer words starting at buffer word ``sram``, to/from
    bus-word address ``off`` (each buffer word is ``bus_words_per`` bus words)."""

    buf: Buf
    sram: unsigned(16)
    words: unsigned(16)
    off: unsigned(32)


class GemmArgs(data.Struct):
    """``GEMM``: a tiled product on the grid, results to ACC. For each output block
    ``j < n_tiles`` and K-tile ``kt < k_tiles`` (with ``dyn = POS`` one of them follows
    ``pos``, :class:`Dyn`): the weight tile (``R`` rows, :class:`WSrc`) enters the grid, and
    activation rows ``t < t_len`` (ACT ``a_addr + t * a_stride + kt``) stream through it.
    Each grid output row (column sums ``acc[c]``, ``xsum`` = the sum of the row's ``R``
    activations) goes to the group scaler with the row's ``mant = 2**gshift`` (0 if ``gzero``)
    and ``exp``, and the tile's column parameters (PRM or KV, :class:`PSrc` and the module
    docstring)::

        Y[y, c] = (0 if first and kt == 0 else Y[y, c]) + mant * (scale[c] * acc[c]
                                                               + offset[c] * xsum)
        y = t if first and final else j * t_len + t     (must be < acc_entries)

    On the last K-tile of a ``final`` op, ACC ``acc_addr + t * acc_stride + j`` receives
    ``saturate32(rshift_round(Y, shift[c] - exp) + bias[c])`` for every lane ``c < C``
    (``sim.golden.gemm`` / ``gemm_act``; INT8-mode lanes ``c >= PC`` have ``acc = 0``).
    A non-``first`` op adds to the sums the previous op left (same ``n_tiles``, ``t_len``):
    the second A15 plane of P·V, or a K split over two weight buffers.

    Checked before anything is read or written: ``t_len``, ``k_tiles``, ``n_tiles`` >= 1
    (``Err.BAD_FIELD``), the ``y`` rows (``BAD_FIELD``), and every address the op touches
    (``Err.SRAM_RANGE``).
    """

    mode: GridMode
    wsrc: WSrc
    psrc: PSrc
    first: unsigned(1)
    final: unsigned(1)
    dyn: Dyn
    w_addr: unsigned(16)
    a_addr: unsigned(14)
    a_stride: unsigned(9)
    acc_addr: unsigned(14)
    acc_stride: unsigned(9)
    prm_addr: unsigned(16)
    prm_step: unsigned(3)
    oprm_addr: unsigned(10)
    t_len: unsigned(9)
    k_tiles: unsigned(7)
    n_tiles: unsigned(8)


class KvArgs(data.Struct):
    """``KV_APPEND``: ACT rows ``t < t_len`` (``d / R`` words each, at
    ``a_addr + t * a_stride``) become tokens ``pos + t`` of a head's keys or values (layout
    in the module docstring). ``Err.BAD_FIELD`` if ``t_len = 0`` or ``d`` is 0 or not a
    multiple of 16 and ``PC``; ``Err.KV_OVERFLOW`` if ``pos + t_len > cap``;
    ``Err.SRAM_RANGE`` if the region for ``cap`` tokens (data and scales) or the ACT rows
    leave their buffers."""

    kind: KvKind
    t_len: unsigned(9)
    a_addr: unsigned(14)
    a_stride: unsigned(10)
    kv_addr: unsigned(16)
    kv_saddr: unsigned(16)
    d: unsigned(8)
    cap: unsigned(12)


class VecArgs(data.Struct):
    """``VEC``: the vector unit applies ``fn`` to ``rows`` rows of ``length`` elements each,
    the arithmetic of its ``sim.golden`` function bit for bit. With ``dyn = POS`` the length
    is ``pos + rows`` instead of the field (the keys a step's ``rows`` query rows see, as a
    ``GEMM`` with ``dyn = POS``), so one program serves every decode step. ``pos`` is the
    context register as the sequencer attached it to the op.

    Row formats (``R``, ``C``: ``ChipParams.rows``, ``cols``; ``PC = C / 2``):

    - a *wide row* is ``length`` INT32 in ACC, ``E`` per word: element ``i`` of row ``t`` of
      operand ``a`` is lane ``i % E`` of word ``src_a + t * src_stride + i // E``; ``E = C``,
      or ``E = PC`` with ``half`` (the layout INT8-mode GEMMs write: lanes ``PC ..`` are not
      read). ``half`` holds for every ACC row of the op. Operand ``b`` is read the same way
      from ``src_b`` (same ``src_stride``), results are written to ``dst + t * dst_stride``.
      A row is ``W = ceil(length / E)`` words, all written: lanes beyond ``length`` (and
      lanes ``PC ..`` with ``half``) are 0;
    - an *A8 row* is ``ceil(length / R)`` ACT words (:func:`act_word`) at
      ``dst + t * dst_stride``: element ``i`` in lane ``i % R`` of word ``i // R``, lanes
      beyond ``length`` 0; each word carries the scale of the activation group of its first
      element and the row exponent, as ``GEMM`` reads them (``sw.programs.act_fields``);
    - constants: gamma, beta and eps in PRM *out* words (``bias`` lanes, ``C`` values per
      word, ``Wc = ceil(length / C)`` words per vector); the RoPE table in ACC; V's scales in
      the KV cache, where ``KV_APPEND`` put them.

    Per ``fn`` (:class:`VecFn`):

    ``QUANT``      ``quantize_rows(a, group, bits)`` to A8 rows at ``dst``; ``group`` is
                   ``act_group``, or the whole row with ``per_row`` (V for the KV cache).
                   ``qmode`` (:class:`QuantMode`): ``INT8`` writes one block of ``rows`` A8
                   rows; ``A15`` (``bits = 15``) the high plane ``x >> 7`` and then, at
                   ``dst + (rows + t) * dst_stride``, the low plane ``x & 127`` with the same
                   scales; ``A8X2`` the two passes of ``quantize_residual`` (the second at
                   ``dst + (rows + t) * dst_stride``).
                   With ``vfold`` (attention probabilities, ``sim.golden.fold_v_scales``):
                   first ``p'[t, j] = rshift_round(p[t, j] * mant_v[j], e_max[t] - exp_v[j])``
                   with ``p`` read as the low 17 bits of each element, unsigned (``SOFTMAX``
                   writes ``0 .. 2**F``), taken as 0 for the keys row ``t`` does not see
                   (``j > pos + t`` with ``causal``: masked, whatever ACC holds), and
                   ``e_max[t]`` the largest ``exp_v[j]`` over the keys row ``t`` sees (``j <=
                   pos + t`` with ``causal``, else all ``length``); every word of row
                   ``t`` then carries ``exp + e_max[t]`` (modulo 2**8), so a P·V ``GEMM`` with
                   out shift ``F`` (``frac_bits``) computes what ``attention_head`` does,
                   ``gemm_act(p15, ps, v, None, shift=F - e_max)``. The scale of key ``j``
                   comes from the value scale region at ``src_b`` as ``KV_APPEND`` wrote it,
                   with ``G = vgroups`` (head dim / ``act_group``): ``mant_v = 2**gshift``
                   (0 if ``gzero``) from lane ``j % PC`` of word
                   ``src_b + (j // PC) * (G + 1)`` (group 0), ``exp_v`` from lane ``j % PC``
                   of word ``src_b + (j // PC) * (G + 1) + G``.
    ``RESIDUAL``   ``residual_add(a, b)`` to wide rows at ``dst``.
    ``LAYERNORM``  ``layernorm(a, gamma, beta, eps)``: ``gamma[i]`` is lane ``i % C`` of PRM
                   word ``prm + i // C``, ``beta[i]`` of word ``prm + Wc + i // C``,
                   ``eps_q32 = round(eps * 2**(2 F))`` the low 17 bits of lane 0 of word
                   ``prm + 2 * Wc`` (``hw.vector.norm.EPS_BITS``).
    ``RMSNORM``    ``rmsnorm(a, gamma, eps)``: gamma at ``prm``, eps at ``prm + Wc``.
    ``SOFTMAX``    ``softmax(a, q_pos)`` to Q.F probabilities at ``dst``: with ``causal`` row
                   ``t`` is query position ``pos + t`` (keys ``j > pos + t`` give 0), without
                   every key is visible.
    ``GELU``       ``gelu(a)``.
    ``SILU_MUL``   ``silu_mul(a, b)``: ``a`` the gate, ``b`` the up projection.
    ``ROPE``       ``rope`` of one head (``length`` = head dim, even): row ``t`` is the token
                   at position ``pos + t``; ``cos[i]``, ``sin[i]`` of its pair ``(2i, 2i+1)``
                   are elements ``2i``, ``2i + 1`` of row ``pos + t`` of the table, wide rows of
                   ``length`` elements at ``src_b + (pos + t) * W`` (the op's ``E``), each used
                   as its low 18 bits, signed (``hw.vector.elementwise.ROPE_TRIG_BITS``; Q.F
                   cos and sin lie in ``[-2**F, 2**F]``).
    ``COPY``       rows of ``buf`` (:class:`VecBuf`) from ``src_a`` to ``dst``: wide rows (with
                   ``repack`` written in the other layout: ``E = C`` if ``half``, else
                   ``PC``), or A8 rows word for word (``ceil(length / R)`` words, scales and
                   all).

    Fields a ``fn`` does not name are ignored. Rows are processed in order, each word read
    before the word at its place in the destination is written, so ``dst = src_a`` (or
    ``src_b``) with equal strides works in place (``COPY`` with ``repack`` excepted); any
    other overlap between the words an op writes and the words it reads is undefined (the ISA
    simulator reads every source first; the RTL streams). Where two written words share an
    address the later stays: rows in order, and ``A15`` / ``A8X2`` write their whole first
    block before the second. ``VEC`` ops take effect in
    order (an op reads what the ``VEC`` ops before it wrote); against other units only
    ``WAIT`` orders them. The unit reads ACC (two rows in step for ``RESIDUAL`` /
    ``SILU_MUL``), ACT (``COPY``), PRM and KV, and writes ACC or ACT.

    Checked before anything is written, in this order:

    - ``Err.BAD_FIELD``: ``fn`` not a :class:`VecFn`; ``QUANT`` with ``qmode`` not a
      :class:`QuantMode`, or ``vfold`` with ``vgroups = 0``; ``rows = 0``; ``length`` (after
      ``dyn``) 0; a row operation (``QUANT``, ``LAYERNORM``, ``RMSNORM``, ``SOFTMAX``) longer
      than ``ChipParams.vector_row`` elements (the row FIFOs of ``hw/vector``); ``ROPE``
      with an odd ``length``;
    - ``Err.SRAM_RANGE``: any word the op reads or writes beyond its buffer: the source rows,
      ``b``'s rows, the table rows ``pos .. pos + rows - 1`` (``ROPE``), the PRM constants,
      the scale words of keys ``0 .. length - 1`` (``vfold``), the destination rows (both
      blocks of ``A15`` / ``A8X2``);
    - ``Err.BAD_FIELD``: ``vfold`` and a key ``j < length`` whose scale lane is not one
      ``QUANT`` writes (``gzero = 0`` and ``gshift > act_headroom``).
    """

    fn: VecFn
    qmode: QuantMode
    per_row: unsigned(1)
    vfold: unsigned(1)
    causal: unsigned(1)
    dyn: Dyn
    half: unsigned(1)
    buf: VecBuf
    repack: unsigned(1)
    src_a: unsigned(14)
    src_b: unsigned(16)
    src_stride: unsigned(10)
    dst: unsigned(14)
    dst_stride: unsigned(10)
    rows: unsigned(9)
    length: unsigned(13)
    prm: unsigned(10)
    vgroups: unsigned(4)


class WaitArgs(data.Struct):
    unit: Unit
    count: unsigned(4)


class PosReg(enum.IntEnum, shape=unsigned(1)):
    """The context register a ``SETPOS`` sets (module docstring)."""

    POS = 0      #: ``pos``, tokens in the KV cache (16 bits)
    KV_BASE = 1  #: ``kv_base``, added to every KV address (KV words)


#: Width of ``SETPOS``'s ``value``: a ``kv_base`` up to 2**20 - 1, so a KV buffer of up to
#: 2**20 words (4096 KiB of 32-bit and wider KV words, the largest ``ChipParams`` allows;
#: ``check_params``).
KV_BASE_BITS = 20


class PosArgs(data.Struct):
    """``SETPOS``: ``reg`` (:class:`PosReg`) ``= value``, or ``+= value`` with ``add``.
    ``Err.BAD_FIELD`` (the register keeps its value) if the result leaves the register's
    range: ``pos`` 0 .. 65535, ``kv_base`` 0 .. ``buffer_depth(KV) - 1``."""

    add: unsigned(1)
    value: unsigned(KV_BASE_BITS)
    reg: PosReg


#: The argument union of a micro-op, by member name.
ARGS = data.UnionLayout({
    "dma": DmaArgs, "gemm": GemmArgs, "kv": KvArgs, "vec": VecArgs,
    "wait": WaitArgs, "pos": PosArgs,
})

#: A micro-op: opcode in the low bits, then the arguments.
INSTR = data.StructLayout({"op": unsigned(OP_BITS), "args": ARGS})
assert INSTR.size <= INSTR_BITS, INSTR.size

#: Which argument struct (``ARGS`` member) each op uses, and which unit runs it.
OP_ARGS = {Op.NOP: None, Op.HALT: None, Op.WAIT: "wait", Op.SETPOS: "pos", Op.LOAD: "dma",
           Op.STORE: "dma", Op.GEMM: "gemm", Op.KV_APPEND: "kv", Op.VEC: "vec"}
OP_UNIT = {Op.LOAD: Unit.LOAD, Op.STORE: Unit.STORE, Op.GEMM: Unit.GEMM,
           Op.KV_APPEND: Unit.KV, Op.VEC: Unit.VEC}


def _fields(layout) -> dict:
    return {name: f.shape for name, f in layout}


def encode(op: Op, **fields) -> int:
    """One micro-op as an int (``INSTR_BITS`` wide). Every field of the op's argument struct
    may be given; missing fields are 0; an unknown field or a value that does not fit its
    width is a ``ValueError`` naming it."""
    op = Op(op)
    member = OP_ARGS[op]
    if member is None:
        if fields:
            raise ValueError(f"{op.name} takes no fields, got {', '.join(fields)}")
        return int(op)
    layout = data.Layout.cast(ARGS[member].shape)
    shapes = _fields(layout)
    for name, value in fields.items():
        if name not in shapes:
            raise ValueError(f"{op.name} has no field {name!r}; fields: {', '.join(shapes)}")
        shape = shapes[name]
        if isinstance(shape, type) and issubclass(shape, py_enum.Enum):
            try:
                fields[name] = shape(value)
            except ValueError:
                raise ValueError(f"{op.name}.{name} = {value!r} is not a {shape.__name__}") \
                    from None
            continue
        s = shape if not isinstance(shape, type) else unsigned(1)
        lo, hi = (-(1 << (s.width - 1)), (1 << (s.width - 1)) - 1) if s.signed \
            else (0, (1 << s.width) - 1)
        if not isinstance(value, int) or not lo <= int(value) <= hi:
            raise ValueError(f"{op.name}.{name} = {value!r} does not fit {s.width} bits "
                             f"({lo}..{hi})")
    args = layout.const(fields).as_bits()
    return int(op) | (args << OP_BITS)


def decode(word: int) -> tuple[int, dict]:
    """An encoded micro-op -> (opcode, fields). The opcode and enum fields are returned as
    their enum members when legal, else as raw ints (the chip raises ``Err.ILLEGAL_OP`` /
    ``Err.BAD_FIELD`` for them)."""
    word = int(word)
    if not 0 <= word < 1 << INSTR_BITS:
        raise ValueError(f"micro-op {word:#x} is not {INSTR_BITS} bits")
    code = word & ((1 << OP_BITS) - 1)
    try:
        op = Op(code)
    except ValueError:
        return code, {}
    member = OP_ARGS[op]
    if member is None:
        return op, {}
    layout = data.Layout.cast(ARGS[member].shape)
    bits = word >> OP_BITS
    out = {}
    for name, f in layout:
        raw = (bits >> f.offset) & ((1 << f.width) - 1)
        shape = f.shape
        if isinstance(shape, type) and issubclass(shape, py_enum.Enum):
            try:
                raw = shape(raw)
            except ValueError:
                pass  # not a member: returned raw (the chip raises Err.BAD_FIELD)
        out[name] = raw
    return op, out


# -- data formats (depend on ChipParams) --------------------------------------------------------


def act_word(p: ChipParams) -> data.StructLayout:
    """An ACT word: ``R`` INT8 along K, the group scale and the row exponent."""
    return data.StructLayout({
        "data": data.ArrayLayout(signed(8), p.rows),
        "gshift": unsigned(5),
        "gzero": unsigned(1),
        "exp": signed(8),
    })


def wgt_word(p: ChipParams) -> data.ArrayLayout:
    """A WGT word: one weight tile row, a byte per PE column (INT8, or INT4 lo | hi << 4)."""
    return data.ArrayLayout(unsigned(8), p.cols // 2)


def kv_word(p: ChipParams) -> data.ArrayLayout:
    """A KV word: ``PC`` byte lanes (tokens of a key column, a value row slice, or scales)."""
    return data.ArrayLayout(unsigned(8), p.cols // 2)


def acc_word(p: ChipParams) -> data.ArrayLayout:
    """An ACC word: ``C`` INT32."""
    return data.ArrayLayout(signed(32), p.cols)


def prm_group_word(p: ChipParams) -> data.StructLayout:
    """A PRM group word: per column the weight group's scale (an INT16 weight scale, or an
    activation-group mantissa of up to 21 bits for QKᵀ) and offset."""
    return data.StructLayout({
        "scale": data.ArrayLayout(signed(22), p.cols),
        "offset": data.ArrayLayout(signed(16), p.cols),
    })


def prm_out_word(p: ChipParams) -> data.StructLayout:
    """A PRM out word: per column the output shift and the INT32 bias."""
    return data.StructLayout({
        "shift": data.ArrayLayout(signed(8), p.cols),
        "bias": data.ArrayLayout(signed(32), p.cols),
    })


def prm_word(p: ChipParams) -> data.UnionLayout:
    return data.UnionLayout({"group": prm_group_word(p), "out": prm_out_word(p)})


def word_layout(p: ChipParams, buf: Buf):
    return {Buf.WGT: wgt_word, Buf.ACT: act_word, Buf.ACC: acc_word, Buf.PRM: prm_word,
            Buf.KV: kv_word}[Buf(buf)](p)


def bus_bits(p: ChipParams) -> int:
    """Width of an off-chip bus word."""
    return 8 * p.offchip_bytes_per_cycle


def bus_words_per(p: ChipParams, buf: Buf) -> int:
    """Off-chip bus words that hold one word of ``buf``."""
    return math.ceil(data.Layout.cast(word_layout(p, buf)).size / bus_bits(p))


def buffer_depth(p: ChipParams, buf: Buf) -> int:
    """Words of ``buf`` (from the KiB sizes in ``ChipParams``)."""
    buf = Buf(buf)
    if buf == Buf.PRM:
        return p.prm_entries
    kib = {Buf.WGT: p.weight_sram_kib, Buf.ACT: p.act_sram_kib, Buf.ACC: p.acc_sram_kib,
           Buf.KV: p.kv_sram_kib}[buf]
    bits = data.Layout.cast(word_layout(p, buf)).size
    return kib * 8192 // bits


#: The micro-op fields that address each buffer (their widths bound the buffer's depth;
#: KV fields add ``kv_base``, so ``SETPOS``'s ``pos.value`` bounds KV).
_ADDR_FIELDS = [(Buf.WGT, "gemm", "w_addr"), (Buf.ACT, "gemm", "a_addr"),
                (Buf.ACC, "gemm", "acc_addr"), (Buf.PRM, "gemm", "prm_addr"),
                (Buf.KV, "pos", "value"), (Buf.ACC, "vec", "src_a"), (Buf.ACT, "vec", "dst"),
                (Buf.PRM, "vec", "prm")]


def check_params(p: ChipParams) -> None:
    """Raise ``ValueError`` if a buffer of ``p`` is deeper than the micro-op fields that
    address it (KV: deeper than the largest ``kv_base`` ``SETPOS`` can set plus one)."""
    for buf, member, name in _ADDR_FIELDS:
        width = _fields(data.Layout.cast(ARGS[member].shape))[name].width
        depth = buffer_depth(p, buf)
        if depth > 1 << width:
            what = " (kv_base)" if buf == Buf.KV else ""
            raise ValueError(f"ChipParams: the {buf.name} buffer has {depth} words, more than "
                             f"the {width}-bit {member}.{name} field{what} addresses "
                             f"({1 << width})")
        if depth < 1:
            raise ValueError(f"ChipParams: the {buf.name} buffer holds no word")


def kv_base_bits(p: ChipParams) -> int:
    """Width of the ``kv_base`` register of chip ``p`` (it holds 0 .. KV depth - 1)."""
    return max(1, (buffer_depth(p, Buf.KV) - 1).bit_length())


def kv_addr_bits(p: ChipParams) -> int:
    """Width of a KV address as the units compute it, ``kv_base + field`` (a 16-bit field)."""
    return (buffer_depth(p, Buf.KV) - 1 + (1 << 16) - 1).bit_length()


# -- numpy codec of buffer words (used by the compiler's memory images and the ISA simulator) --


_LEAVES: dict = {}  # id(layout) -> (layout, leaves): the codec's hot path asks again and again


def leaf_fields(layout, prefix: str = "", offset: int = 0) -> list[tuple[str, int, int, bool, int]]:
    """The leaves of a layout: ``(path, bit offset, width, signed, count)``; an array of
    scalars is one leaf with ``count`` elements spaced ``width`` apart (so it unpacks as one
    numpy column block). Union members all start at bit 0."""
    if not prefix and not offset:
        hit = _LEAVES.get(id(layout))
        if hit is not None and hit[0] is layout:
            return hit[1]
        leaves = _leaf_fields(layout, "", 0)
        _LEAVES[id(layout)] = (layout, leaves)
        return leaves
    return _leaf_fields(layout, prefix, offset)


def _leaf_fields(layout, prefix: str, offset: int) -> list[tuple[str, int, int, bool, int]]:
    layout = data.Layout.cast(layout)
    out = []
    if isinstance(layout, data.ArrayLayout):
        elem = layout.elem_shape
        if isinstance(elem, data.Layout):
            esize = data.Layout.cast(elem).size
            for i in range(layout.length):
                out += _leaf_fields(elem, f"{prefix}[{i}]", offset + i * esize)
        else:
            s = _shape_of(elem)
            out.append((prefix, offset, s.width, s.signed, layout.length))
        return out
    for name, f in layout:
        path = f"{prefix}.{name}" if prefix else name
        try:
            sub = data.Layout.cast(f.shape)
        except TypeError:
            sub = None
        if sub is not None:
            out += _leaf_fields(sub, path, offset + f.offset)
        else:
            s = _shape_of(f.shape)
            out.append((path, offset + f.offset, s.width, s.signed, 1))
    return out


def _shape_of(shape):
    from amaranth.hdl import Shape

    return Shape.cast(shape)


def word_bytes(layout) -> int:
    """Bytes of one word of ``layout`` in a memory image (bits rounded up to bytes)."""
    return (data.Layout.cast(layout).size + 7) // 8


def unpack_words(layout, raw):
    """Raw words ``raw`` (uint8 [..., word_bytes]) -> {field path: int64 array [...] or
    [..., count]} for every leaf of ``layout`` (union members all decoded).

    Byte-aligned 8/16/32-bit leaves are read as numpy views; any other leaf gathers the 8
    bytes that hold each of its elements as a little-endian uint64 and shifts and masks."""
    import numpy as np

    raw = np.asarray(raw, np.uint8)
    lead = raw.shape[:-1]
    flat = raw.reshape(-1, raw.shape[-1])
    padded = None
    out = {}
    for path, off, width, sgn, count in leaf_fields(layout):
        if off % 8 == 0 and width in (8, 16, 32):
            nb = width // 8
            chunk = np.ascontiguousarray(flat[:, off // 8: off // 8 + nb * count])
            v = chunk.view(f"<{'i' if sgn else 'u'}{nb}").astype(np.int64)
        else:
            if padded is None:  # 8 spare bytes: every element's uint64 gather stays inside
                padded = np.zeros((flat.shape[0], flat.shape[1] + 8), np.uint8)
                padded[:, :flat.shape[1]] = flat
            starts = off + width * np.arange(count)
            idx = (starts // 8)[:, None] + np.arange(8)
            g = np.ascontiguousarray(padded[:, idx]).view("<u8")[..., 0]  # [n, count]
            v = ((g >> (starts % 8).astype(np.uint64)) & np.uint64((1 << width) - 1))
            v = v.astype(np.int64)
            if sgn:
                v = np.where(v >= 1 << (width - 1), v - (1 << width), v)
        v = v.reshape(*lead, count)
        out[path] = v if count > 1 else v[..., 0]
    return out


def pack_words(layout, fields: dict, n: int | None = None):
    """{field path: int array} -> raw words uint8 [n, word_bytes]. Missing fields are 0; a
    value that does not fit its field raises ``ValueError`` naming it. For a union give the
    fields of one member."""
    import numpy as np

    leaves = {p: (off, width, sgn, count) for p, off, width, sgn, count in leaf_fields(layout)}
    unknown = sorted(set(fields) - set(leaves))
    if unknown:
        raise ValueError(f"pack_words: unknown field(s) {unknown}; fields: {sorted(leaves)}")
    if n is None:
        n = len(np.asarray(next(iter(fields.values())))) if fields else 1
    nbits = word_bytes(layout) * 8
    bits = np.zeros((n, nbits), np.uint8)
    for path, value in fields.items():
        off, width, sgn, count = leaves[path]
        v = np.asarray(value, np.int64).reshape(n, count)
        lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if sgn else (0, (1 << width) - 1)
        if v.size and (v.min() < lo or v.max() > hi):
            raise ValueError(f"pack_words: field {path} has values in {v.min()}..{v.max()}, "
                             f"outside its {width}-bit range {lo}..{hi}")
        v = v & ((1 << width) - 1)
        b = (v[..., None] >> np.arange(width, dtype=np.int64)) & 1
        bits[:, off:off + width * count] = b.reshape(n, width * count)
    return np.packbits(bits, axis=-1, bitorder="little")


# -- the host link: UART frames between a board and the runtime (hw/link.py, sw/board.py) -------
#
# A dev board's host link carries framed messages over a UART (8N1, least significant bit and
# byte first). Every frame, either way:
#
#     SYNC (LINK_SYNC) | type (LinkFrame) | length (u16, payload bytes) | payload | crc (u16)
#
# ``crc`` is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no
# final XOR; :func:`link_crc`) over type, length and payload; every multi-byte field is
# little-endian. A receiver drops bytes outside a frame until ``LINK_SYNC``. The board checks
# each host frame before it acts on it and answers a bad one with ``NAK`` (:class:`LinkNak`):
# an unknown type, a length its type does not allow (the board then ignores the line until it
# has been idle for its inter-byte timeout, and only then NAKs), a payload cut short (no byte
# for that timeout inside a frame), a wrong checksum, or a frame its state does not allow. A
# rejected frame changes nothing: a ``DATA`` frame's words reach the chip only once its
# checksum has matched.
#
# Off-chip memory is the host's (the boards have no memory controller for their SDRAM): the
# board forwards the chip's bus reads as ``READ`` frames (consecutive addresses coalesced
# into bursts of at most ``link_max_burst`` bus words), the host answers each with ``DATA``
# frames, one per ``READ`` and in order, each repeating its ``READ``'s ``addr`` and ``count``
# (a ``DATA`` frame that does not answer the oldest unanswered ``READ`` exactly is NAKed
# ``UNEXPECTED``), and the chip's bus writes go up as ``WRITE``
# frames, in the order the chip issued reads and writes. ``START`` runs a program; when the
# chip is done (after every ``WRITE`` of the run) the board sends ``DONE`` with the status
# and the counters.


class LinkFrame(enum.IntEnum, shape=unsigned(8)):
    """Frame types. Host to board (``0x0_``), board to host (``0x8_``); payloads are the
    ``LINK_*`` layouts (:data:`LINK_PAYLOAD`; ``DATA`` / ``WRITE`` carry bus words)."""

    PING = 0x01      #: -> ``INFO``
    START = 0x02     #: :data:`LINK_START` -> ``ACK`` (``NAK BUSY`` while running), later ``DONE``
    STATUS = 0x03    #: -> ``STATE``
    COUNTERS = 0x04  #: -> ``COUNTS``
    ABORT = 0x05     #: reset the chip's logic and the link's bus state (buffers keep) -> ``ACK``
    DATA = 0x06      #: :data:`LINK_BURST` + words: the answer to the oldest ``READ`` (no reply)
    INFO = 0x81      #: :data:`LINK_INFO`
    ACK = 0x82       #: :data:`LINK_ACK`
    NAK = 0x83       #: :data:`LINK_NAK`
    STATE = 0x84     #: :data:`LINK_STATE`
    COUNTS = 0x85    #: :data:`LINK_COUNTS`
    DONE = 0x86      #: :data:`LINK_DONE`: the chip finished the run ``START`` began
    READ = 0x87      #: :data:`LINK_BURST`: ``count`` bus words from ``addr`` on, please
    WRITE = 0x88     #: :data:`LINK_BURST`, then ``count`` bus words for ``addr`` on


class LinkNak(enum.IntEnum, shape=unsigned(8)):
    """Why the board rejected a frame (``NAK``'s ``reason``)."""

    CHECKSUM = 1     #: the CRC did not match
    LENGTH = 2       #: a length the frame's type does not allow
    TYPE = 3         #: not a host-to-board :class:`LinkFrame`
    TRUNCATED = 4    #: the line went idle inside the frame
    BUSY = 5         #: ``START`` while the chip runs
    UNEXPECTED = 6   #: ``DATA`` that is not the answer to the oldest unanswered ``READ``


LINK_SYNC = 0xA5
#: Protocol version, in ``INFO``; bump it when anything in this section changes.
LINK_VERSION = 1
LINK_CRC_INIT = 0xFFFF
LINK_CRC_POLY = 0x1021
#: Bytes of the frame header (sync, type, length) and trailer (crc).
LINK_HEADER_BYTES = 4
LINK_CRC_BYTES = 2
#: Payload bytes of bus words in one ``DATA`` / ``WRITE`` frame, at most.
LINK_BURST_BYTES = 256
#: Bytes per counter in ``COUNTS`` / ``DONE`` (the chip's counters are zero-extended).
LINK_COUNTER_BYTES = 6

LINK_START = data.StructLayout({"prog_addr": unsigned(32), "prog_len": unsigned(16),
                                "pos": unsigned(16)})
LINK_BURST = data.StructLayout({"addr": unsigned(32), "count": unsigned(16)})
LINK_ACK = data.StructLayout({"frame": unsigned(8)})
LINK_NAK = data.StructLayout({"reason": unsigned(8), "frame": unsigned(8)})
LINK_INFO = data.StructLayout({
    "version": unsigned(8), "bus_bytes": unsigned(8), "max_burst": unsigned(16),
    "params_hash": unsigned(32), "vector": unsigned(8)})
LINK_STATE = data.StructLayout({
    "running": unsigned(8), "error": unsigned(8), "error_pc": unsigned(32), "pos": unsigned(16)})
LINK_COUNTS = data.ArrayLayout(unsigned(8 * LINK_COUNTER_BYTES), len(Counter))
LINK_DONE = data.StructLayout({"state": LINK_STATE, "counters": LINK_COUNTS})

#: The fixed payload layout of each frame type (``None``: no payload); ``DATA`` and ``WRITE``
#: are :data:`LINK_BURST` followed by ``count`` bus words (``6 + count * bus bytes``).
LINK_PAYLOAD = {
    LinkFrame.PING: None, LinkFrame.START: LINK_START, LinkFrame.STATUS: None,
    LinkFrame.COUNTERS: None, LinkFrame.ABORT: None, LinkFrame.DATA: LINK_BURST,
    LinkFrame.INFO: LINK_INFO, LinkFrame.ACK: LINK_ACK, LinkFrame.NAK: LINK_NAK,
    LinkFrame.STATE: LINK_STATE, LinkFrame.COUNTS: LINK_COUNTS, LinkFrame.DONE: LINK_DONE,
    LinkFrame.READ: LINK_BURST, LinkFrame.WRITE: LINK_BURST,
}
#: Frames the host sends (the board NAKs any other type with ``TYPE``).
LINK_HOST_FRAMES = (LinkFrame.PING, LinkFrame.START, LinkFrame.STATUS, LinkFrame.COUNTERS,
                    LinkFrame.ABORT, LinkFrame.DATA)


def link_payload_bytes(frame: LinkFrame) -> int:
    """Bytes of ``frame``'s fixed payload (:data:`LINK_PAYLOAD`; 0 if none)."""
    layout = LINK_PAYLOAD[LinkFrame(frame)]
    return 0 if layout is None else data.Layout.cast(layout).size // 8


def link_max_burst(p: ChipParams) -> int:
    """Bus words in one ``READ`` / ``DATA`` / ``WRITE`` burst, at most."""
    return max(1, LINK_BURST_BYTES // p.offchip_bytes_per_cycle)


def link_max_payload(p: ChipParams) -> int:
    """The longest payload of any frame for chip ``p``."""
    return max(max(link_payload_bytes(f) for f in LinkFrame),
               link_payload_bytes(LinkFrame.WRITE)
               + link_max_burst(p) * p.offchip_bytes_per_cycle)


def link_crc(data_bytes: bytes, crc: int = LINK_CRC_INIT) -> int:
    """CRC-16/CCITT-FALSE of ``data_bytes``, continuing from ``crc``."""
    import binascii

    return binascii.crc_hqx(bytes(data_bytes), crc)


def link_params_hash(p: ChipParams, vector: bool) -> int:
    """32-bit digest of a chip build (``INFO``'s ``params_hash``): a runtime refuses a board
    whose chip was built with other parameters than its programs were compiled for."""
    import zlib

    return zlib.crc32(f"{p!r} vector={bool(vector)}".encode())

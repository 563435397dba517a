"""Off-chip memory images and micro-op programs for the chip, built from golden objects.

Shared by the tests that run programs on the ISA simulator (``tests/test_isa_sim.py``) and on
the chip's Verilog (``tests/test_chip_rtl.py``): the same image and the same program go to
both, and the results come back through ``STORE`` into off-chip memory. Everything is laid
out from the formats ``hw/isa.py`` documents, with its codec (:func:`hw.isa.pack_words`), and
encoded only with :func:`hw.isa.encode`; nothing here uses the simulator.

- :class:`Image`: an allocator over the off-chip memory (bus-word addresses): buffer words
  (:meth:`Image.put`), micro-op programs (:meth:`Image.put_program`), room for results
  (:meth:`Image.reserve`);
- buffer word builders: :func:`act_fields` (A8 rows and their ``sim.golden.ActScale``),
  :func:`weight_fields` and :func:`prm_fields` (weights: an ``sw.quantize.QWeight`` or any
  object with its fields, as ``sim.golden.gemm`` takes them; ``sim/`` does not import the
  compiler), :func:`gscale`;
  :func:`bus_image` / :func:`from_bus` convert to and from the off-chip form;
- program builders: :func:`weight_gemm` (load -> GEMM -> store of a weight GEMM, optionally
  split into chained ops over N and K with double-buffered weight loads) and, for attention
  on the KV cache, :class:`KvHead` (a head's region: ``KV_APPEND``, QKᵀ and P·V GEMMs) with
  :func:`attention_step` (one prefill or decode step as a whole program);
- vector-unit rows (``hw.isa.VecArgs``): :func:`wide_fields` / :func:`wide_rows` (wide rows
  in ACC, full or ``half`` layout), :func:`norm_prm_fields` (gamma, beta, eps in PRM),
  :func:`rope_fields` (the RoPE table in ACC);
- :class:`Builder`: a program whose WAITs are placed from each op's :func:`footprint`
  (weights streamed through alternating WGT / PRM halves); with ``reorder``, the ops are
  the program's logical order and it emits them with the units' streams interleaved (list
  scheduling on the footprints' dependences, :func:`est_cycles` as its rough clock); the
  compiler (``sw/compiler.py``) writes whole models with it;
- :func:`sub_weight`, :func:`raw_op` (a micro-op word with any field
  values, also ones ``encode`` refuses), :func:`error_cases` (one micro-op per check of
  ``hw/isa.py``, ``VEC`` ones for a chip with the vector unit);
"""

import functools
import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from hw.isa import (
    INSTR,
    INSTR_BITS,
    OP_UNIT,
    PRM_STEP_NEVER,
    Buf,
    Counter,
    Dyn,
    Err,
    GridMode,
    KvKind,
    Op,
    PosReg,
    PSrc,
    QuantMode,
    Unit,
    VecBuf,
    VecFn,
    WSrc,
    buffer_depth,
    bus_bits,
    bus_words_per,
    decode,
    encode,
    pack_words,
    unpack_words,
    word_bytes,
    word_layout,
)
from hw.params import ChipParams, Numerics

#: The number formats (the chip's; ``hw.params.Numerics``).
NUM = Numerics()


@functools.cache
def _bus_words(p: ChipParams, buf: Buf) -> int:
    """:func:`hw.isa.bus_words_per`, once per configuration (it is asked per micro-op)."""
    return bus_words_per(p, buf)

__all__ = [
    "Image", "bus_image", "from_bus", "uop_bus_words", "gscale", "act_fields", "ncols_of",
    "per_word", "wide_fields", "wide_rows", "norm_prm_fields", "rope_fields",
    "weight_fields", "prm_fields", "sub_weight", "raw_op", "acc_words",
    "WeightGemm", "weight_gemm", "KvHead", "pv_planes", "AttentionStep", "attention_step",
    "ErrorCase", "error_cases", "OFFCHIP", "gemm_tiles", "footprint", "Builder", "est_cycles",
]


# -- the off-chip memory image -----------------------------------------------------------------


def bus_image(p: ChipParams, buf: Buf, fields: dict) -> np.ndarray:
    """Words of ``buf`` ({field path: array}) in off-chip form: ``bus_words_per`` bus words
    each, low bits first, zero above the word. uint8 [n, bytes per word]."""
    raw = pack_words(word_layout(p, buf), fields)
    per = _bus_words(p, buf) * p.offchip_bytes_per_cycle
    out = np.zeros((len(raw), per), np.uint8)
    out[:, : raw.shape[1]] = raw
    return out


def from_bus(p: ChipParams, buf: Buf, raw, n: int) -> dict:
    """The inverse of :func:`bus_image`: ``n`` words of ``buf`` from off-chip bytes ->
    {field path: int64 array [n, ...]} (bits above the word ignored)."""
    layout = word_layout(p, buf)
    per = _bus_words(p, buf) * p.offchip_bytes_per_cycle
    nb = word_bytes(layout)
    return unpack_words(layout, np.asarray(raw, np.uint8).reshape(n, per)[:, :nb])


def uop_bus_words(p: ChipParams) -> int:
    """Bus words per micro-op in off-chip memory (the boot loader's unit, ``hw/chip.py``)."""
    return -(-INSTR_BITS // bus_bits(p))


class Image:
    """An off-chip memory image (uint8 ``mem``, ``offchip_kib`` KiB) filled region by region
    from bus word 0 up; every method returns bus-word addresses. ``ValueError`` when a region
    does not fit."""

    def __init__(self, p: ChipParams):
        self.p = p
        self.mem = np.zeros(p.offchip_kib * 1024, np.uint8)
        self.next = 0
        #: (key, buffer) -> (bus address, words) of regions placed once (:class:`Builder`)
        self.placed: dict = {}

    @property
    def bus_words(self) -> int:
        return self.mem.size // self.p.offchip_bytes_per_cycle

    def _claim(self, n_bus: int) -> int:
        addr = self.next
        if addr + n_bus > self.bus_words:
            raise ValueError(f"Image: {n_bus} bus words at {addr} leave the "
                             f"{self.bus_words}-word memory")
        self.next += n_bus
        return addr

    def put_bytes(self, raw) -> int:
        """Raw bytes (a whole number of bus words) at the next free address."""
        raw = np.asarray(raw, np.uint8).ravel()
        B = self.p.offchip_bytes_per_cycle
        assert raw.size % B == 0, raw.size
        addr = self._claim(raw.size // B)
        self.mem[addr * B : addr * B + raw.size] = raw
        return addr

    def put(self, buf: Buf, fields: dict) -> tuple[int, int]:
        """Place words of ``buf``; returns (bus address, number of buffer words)."""
        img = bus_image(self.p, buf, fields)
        return self.put_bytes(img), len(img)

    def reserve(self, buf: Buf, n: int) -> int:
        """Room for ``n`` words of ``buf`` (e.g. a ``STORE``'s destination)."""
        return self._claim(n * _bus_words(self.p, buf))

    def put_program(self, words) -> tuple[int, int]:
        """Micro-ops (ints from :func:`hw.isa.encode`) as the boot loader reads them:
        :func:`uop_bus_words` bus words each, low first. Returns (bus address, length):
        the ``prog_addr`` / ``prog_len`` of a job."""
        nbytes = uop_bus_words(self.p) * self.p.offchip_bytes_per_cycle
        raw = np.zeros((len(words), nbytes), np.uint8)
        for i, w in enumerate(words):
            raw[i, :16] = np.frombuffer(int(w).to_bytes(INSTR_BITS // 8, "little"), np.uint8)
        return self.put_bytes(raw), len(words)


def acc_words(p: ChipParams, mem, off: int, n: int) -> np.ndarray:
    """``n`` ACC words stored at bus address ``off`` of the memory ``mem`` (uint8, flat):
    int64 [n, cols]."""
    B = p.offchip_bytes_per_cycle
    per = _bus_words(p, Buf.ACC)
    raw = np.asarray(mem, np.uint8)[off * B : (off + n * per) * B]
    return from_bus(p, Buf.ACC, raw, n)[""]


# -- buffer words from golden objects ----------------------------------------------------------


def gscale(mant):
    """Power-of-two group mantissas -> (gshift, gzero) fields."""
    mant = np.asarray(mant, np.int64)
    gshift = np.where(mant > 0, np.log2(np.maximum(mant, 1)).round(), 0).astype(np.int64)
    assert np.array_equal(np.where(mant > 0, np.left_shift(1, gshift), 0), mant)
    return gshift, (mant == 0).astype(np.int64)


def act_fields(R: int, x8, mant, exp, group: int) -> dict:
    """A8 rows [T, K] (zero-padded to whole K-tiles of ``R``) with their scales
    (``sim.golden.ActScale`` ``mant`` [T, groups], ``exp`` [T], ``group``) -> ACT words,
    row t at ``t * k_tiles``."""
    x8 = np.asarray(x8, np.int64)
    T, K = x8.shape
    kt = -(-K // R)
    x = np.zeros((T, kt * R), np.int64)
    x[:, :K] = x8
    gidx = (np.arange(kt) * R) // group
    m = np.zeros((T, gidx.max() + 1), np.int64)
    m[:, : min(mant.shape[1], m.shape[1])] = mant[:, : m.shape[1]]
    gs, gz = gscale(m[:, gidx])
    return {
        "data": x.reshape(T * kt, R),
        "gshift": gs.ravel(),
        "gzero": gz.ravel(),
        "exp": np.repeat(np.asarray(exp, np.int64), kt),
    }


def ncols_of(p: ChipParams, mode: GridMode) -> int:
    """Output columns of one block: ``cols`` (W4A8) or ``cols / 2`` (INT8)."""
    return p.cols if mode == GridMode.W4A8 else p.cols // 2


def weight_fields(p: ChipParams, q, mode: GridMode) -> dict:
    """Weight [N, K] -> WGT words, tile-major: tile (j, kt) row r at (j * k_tiles + kt) * R + r,
    a byte per PE column (INT8, or INT4 lo | hi << 4 for columns 2c, 2c + 1)."""
    R, PC = p.rows, p.cols // 2
    nc = ncols_of(p, mode)
    N, K = q.shape
    nb = -(-N // nc)
    qp = np.zeros((nb * nc, K), np.int64)
    qp[:N] = q
    w = qp.reshape(nb, nc, K // R, R).transpose(0, 2, 3, 1)  # [j, kt, r, column]
    b = (w[..., 0::2] & 15) | ((w[..., 1::2] & 15) << 4) if mode == GridMode.W4A8 else w & 255
    return {"": b.reshape(-1, PC)}


def prm_fields(p: ChipParams, qw, bias, mode: GridMode) -> tuple[dict, dict]:
    """Group words (block j, weight group g at j * K/32 + g) and out words (block j)."""
    C = p.cols
    nc = ncols_of(p, mode)
    N, K = qw.q.shape
    nb, ng = -(-N // nc), K // NUM.group

    def lanes(v, shape_tail):  # per-column values [N, ...] -> [nb, ..., C]
        vp = np.zeros((nb * nc, *shape_tail), np.int64)
        vp[:N] = v
        out = np.zeros((nb, *shape_tail, C), np.int64)
        out[..., :nc] = np.moveaxis(vp.reshape(nb, nc, *shape_tail), 1, -1)
        return out

    off = qw.offset if qw.offset is not None else np.zeros_like(qw.scale)
    group = {
        "group.scale": lanes(qw.scale, (ng,)).reshape(-1, C),
        "group.offset": lanes(off, (ng,)).reshape(-1, C),
    }
    out = {"out.shift": lanes(qw.shift, ()), "out.bias": lanes(bias, ())}
    return group, out


def sub_weight(qw, k0: int, k1: int, n0: int = 0, n1: int | None = None):
    """Columns ``n0 .. n1 - 1`` and K range ``k0 .. k1 - 1`` (whole weight groups) of ``qw``."""
    g = NUM.group
    assert k0 % g == 0 and k1 % g == 0, (k0, k1)
    n = slice(n0, n1)
    return replace(qw, q=qw.q[n, k0:k1], scale=qw.scale[n, k0 // g : k1 // g],
                   offset=None if qw.offset is None else qw.offset[n, k0 // g : k1 // g],
                   shift=qw.shift[n])


def raw_op(op, member: str | None = None, **fields) -> int:
    """A micro-op word with any field values (also ones ``encode`` refuses: undefined enum
    values, undefined opcodes), through the INSTR layout's codec."""
    f = {"op": [int(op)]}
    f.update({f"args.{member}.{k}": [int(v)] for k, v in fields.items()})
    return int.from_bytes(pack_words(INSTR, f)[0].tobytes(), "little")


# -- vector-unit rows (hw.isa.VecArgs) ----------------------------------------------------------


def per_word(p: ChipParams, half: bool) -> int:
    """Elements of a wide row per ACC word: ``cols``, or ``cols / 2`` with ``half``."""
    return p.cols // 2 if half else p.cols


def wide_fields(p: ChipParams, x, *, half: bool = False, stride: int | None = None,
                junk=None) -> dict:
    """Wide rows [T, N] -> ACC words (``VecArgs``): row ``t`` in the ``W = ceil(N / E)`` words
    from ``t * stride`` on (default ``W``), element ``i`` in lane ``i % E`` of word ``i // E``.
    Every other lane and word is 0, or random INT32 from the generator ``junk`` (what an op
    must not read)."""
    x = np.asarray(x, np.int64)
    T, N = x.shape
    C, E = p.cols, per_word(p, half)
    W = -(-N // E)
    stride = W if stride is None else stride
    n = (T - 1) * stride + W
    words = np.zeros((n, C), np.int64) if junk is None else \
        junk.integers(-(1 << 31), 1 << 31, (n, C))
    i = np.arange(N)
    rows = np.arange(T)[:, None] * stride + i // E
    words[rows, np.broadcast_to(i % E, rows.shape)] = x
    return {"": words}


def wide_rows(p: ChipParams, words, length: int, *, half: bool = False,
              stride: int | None = None) -> np.ndarray:
    """The inverse of :func:`wide_fields`: ACC words [n, C] -> wide rows [T, length] (T from
    the number of words)."""
    words = np.asarray(words, np.int64)
    E = per_word(p, half)
    W = -(-length // E)
    stride = W if stride is None else stride
    T = (len(words) - W) // stride + 1
    i = np.arange(length)
    return words[np.arange(T)[:, None] * stride + i // E, i % E]


def norm_prm_fields(p: ChipParams, vectors, eps: float) -> dict:
    """PRM out words of a ``VEC LAYERNORM`` (``vectors = [gamma, beta]``) or ``RMSNORM``
    (``[gamma]``): each vector in ``ceil(N / C)`` words of ``bias`` lanes, then the eps word
    (``eps_q32 = round(eps * 2**(2 F))`` in lane 0)."""
    C = p.cols
    N = len(vectors[0])
    Wc = -(-N // C)
    bias = np.zeros((len(vectors) * Wc + 1, C), np.int64)
    for k, v in enumerate(vectors):
        bias[k * Wc : (k + 1) * Wc].reshape(-1)[:N] = v
    bias[-1, 0] = round(eps * (1 << (2 * p.numerics.frac_bits)))
    return {"out.shift": np.zeros_like(bias), "out.bias": bias}


def rope_fields(p: ChipParams, cos, sin, *, half: bool = False) -> dict:
    """The ``VEC ROPE`` table in ACC: position ``s`` is a wide row of ``d`` elements,
    ``cos[s, i]`` at ``2i`` and ``sin[s, i]`` at ``2i + 1`` (``sw.quantize.rope_table``)."""
    cos = np.asarray(cos, np.int64)
    tab = np.empty((cos.shape[0], 2 * cos.shape[1]), np.int64)
    tab[:, 0::2], tab[:, 1::2] = cos, sin
    return wide_fields(p, tab, half=half)


# -- load -> GEMM -> store ---------------------------------------------------------------------


@dataclass
class WeightGemm:
    """A weight GEMM program (:func:`weight_gemm`) and what it should leave behind."""

    p: ChipParams
    prog: list                 #: the micro-ops
    out_off: int               #: bus address of the stored ACC words, [T, nb] row-major
    T: int
    N: int
    nb: int                    #: output blocks
    nc: int                    #: output columns per block
    counters: dict = field(default_factory=dict)  #: expected UOPS, GRID_ROWS, *_WORDS
    ops: list = field(default_factory=list)       #: (n0 block, n blocks, k0, k1) per GEMM

    def acc(self, mem) -> np.ndarray:
        """The stored ACC words from an off-chip memory: int64 [T, nb, cols]."""
        return acc_words(self.p, mem, self.out_off, self.T * self.nb).reshape(
            self.T, self.nb, self.p.cols)

    def result(self, mem) -> np.ndarray:
        """The GEMM's output [T, N] (``sim.golden.gemm``) from an off-chip memory."""
        acc = self.acc(mem)
        return acc[:, :, : self.nc].reshape(self.T, self.nb * self.nc)[:, : self.N]


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` in ``parts`` contiguous, nearly equal pieces."""
    parts = max(1, min(parts, n))
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def weight_gemm(p: ChipParams, img: Image, x8, xs, qw, bias, *, n_ops: int = 1,
                k_ops: int = 1, double_buffer: bool = False, base: dict | None = None,
                exp_rng=None) -> WeightGemm:
    """Lay out ``y = sim.golden.gemm(x8, xs, qw, bias)`` in ``img`` and build its program.

    The activations (all rows, all of K) and every column parameter are loaded first. The
    output blocks are split into ``n_ops`` chunks and K into ``k_ops`` ranges of whole weight
    groups: one GEMM micro-op per (chunk, range), chunk-major; the ops of a chunk chain
    (``first`` on the first range, ``final`` on the last, the sums carried in the scaler).
    Outputs go to ACC ``acc + t * nb + j`` and are stored as [T, nb] words at
    :attr:`WeightGemm.out_off`.

    Weights: without ``double_buffer`` every op's tiles and group parameters are loaded up
    front into their own WGT / PRM regions. With it (streaming, as a layer larger than the
    buffers runs), two WGT and two PRM regions alternate: the weights and group parameters of
    op ``i + 1`` are loaded while op ``i`` runs, after ``WAIT GEMM, 1`` (op ``i - 1``, the
    last reader of those regions, has finished); before each GEMM, ``WAIT LOAD, 0`` (its
    operands are in).

    ``base``: first words used in each buffer (keys ``wgt``, ``act``, ``prm``, ``acc``).
    ``exp_rng``: fill the ``exp`` of ACT words other than a row's last K-tile with random
    values (the scaler rounds with the exp of the final K-tile only, ``hw/isa.py``).
    """
    R = p.rows
    mode = GridMode.W4A8 if qw.bits == 4 else GridMode.INT8
    T, K = np.shape(x8)
    N = qw.q.shape[0]
    nc = ncols_of(p, mode)
    nb = -(-N // nc)
    kt_all = K // R
    grp = NUM.group
    assert K % grp == 0 and grp % R == 0
    step = int(np.log2(grp // R))
    b = {"wgt": 0, "act": 0, "prm": 0, "acc": 0, **(base or {})}
    bpw = {bf: _bus_words(p, bf) for bf in Buf}

    act = act_fields(R, x8, xs.mant, xs.exp, xs.group)
    if exp_rng is not None:
        not_last = np.arange(len(act["exp"])) % kt_all != kt_all - 1
        act["exp"][not_last] = exp_rng.integers(-128, 128, not_last.sum())
    a_off, a_n = img.put(Buf.ACT, act)
    loads = [(Buf.ACT, b["act"], a_n, a_off)]

    # column parameters: out words for every block, group words per op
    _, out = prm_fields(p, qw, bias, mode)
    o_off, o_n = img.put(Buf.PRM, out)
    o_sram = b["prm"]
    loads.append((Buf.PRM, o_sram, o_n, o_off))
    p_sram = o_sram + o_n
    ops = []
    for j0, j1 in _split(nb, n_ops):
        for i, (g0, g1) in enumerate(_split(K // grp, k_ops)):
            k0, k1 = g0 * grp, g1 * grp
            sw = sub_weight(qw, k0, k1, j0 * nc, min(j1 * nc, N))
            w_off, w_n = img.put(Buf.WGT, weight_fields(p, sw.q, mode))
            group, _ = prm_fields(p, sw, bias[j0 * nc : j1 * nc], mode)
            g_off, g_n = img.put(Buf.PRM, group)
            ops.append(dict(j0=j0, nbj=j1 - j0, k0=k0, k1=k1, first=i == 0,
                            final=g1 == K // grp, w_off=w_off, w_n=w_n, g_off=g_off, g_n=g_n))
    if double_buffer:
        half_w = max(o["w_n"] for o in ops)
        half_p = max(o["g_n"] for o in ops)
        for i, o in enumerate(ops):
            o["w_sram"] = b["wgt"] + (i % 2) * half_w
            o["prm"] = p_sram + (i % 2) * half_p
    else:
        w_sram = b["wgt"]
        for o in ops:
            o["w_sram"], o["prm"] = w_sram, p_sram
            loads.append((Buf.PRM, p_sram, o["g_n"], o["g_off"]))
            w_sram += o["w_n"]
            p_sram += o["g_n"]

    def dma(op, buf, sram, words, off):
        return encode(op, buf=buf, sram=sram, words=words, off=off)

    def gemm(o):
        return encode(
            Op.GEMM, mode=mode, wsrc=WSrc.WGT, psrc=PSrc.PRM, first=int(o["first"]),
            final=int(o["final"]), dyn=Dyn.STATIC, w_addr=o["w_sram"],
            a_addr=b["act"] + o["k0"] // R, a_stride=kt_all, acc_addr=b["acc"] + o["j0"],
            acc_stride=nb, prm_addr=o["prm"], prm_step=step, oprm_addr=o_sram + o["j0"],
            t_len=T, k_tiles=(o["k1"] - o["k0"]) // R, n_tiles=o["nbj"])

    def wload(o):
        return dma(Op.LOAD, Buf.WGT, o["w_sram"], o["w_n"], o["w_off"])

    def stream(o):  # double buffering: the op's weights and its group parameters
        return [wload(o), dma(Op.LOAD, Buf.PRM, o["prm"], o["g_n"], o["g_off"])]

    prog = [dma(Op.LOAD, *ld) for ld in loads]
    if double_buffer:
        prog += stream(ops[0])
        for i, o in enumerate(ops):
            prog += [encode(Op.WAIT, unit=Unit.LOAD, count=0), gemm(o)]
            if i + 1 < len(ops):
                prog += [encode(Op.WAIT, unit=Unit.GEMM, count=1), *stream(ops[i + 1])]
    else:
        prog += [wload(o) for o in ops]
        prog.append(encode(Op.WAIT, unit=Unit.LOAD, count=0))
        prog += [gemm(o) for o in ops]
    out_off = img.reserve(Buf.ACC, T * nb)
    prog += [
        encode(Op.WAIT, unit=Unit.GEMM, count=0),
        dma(Op.STORE, Buf.ACC, b["acc"], T * nb, out_off),
        encode(Op.HALT),
    ]
    load_words = sum(n * bpw[bf] for bf, _, n, _ in loads) + sum(o["w_n"] for o in ops) * bpw[
        Buf.WGT] + double_buffer * sum(o["g_n"] for o in ops) * bpw[Buf.PRM]
    counters = {
        Counter.UOPS: len(prog),
        Counter.GRID_ROWS: sum(o["nbj"] * (o["k1"] - o["k0"]) // R * T for o in ops),
        Counter.LOAD_WORDS: load_words,
        Counter.STORE_WORDS: T * nb * bpw[Buf.ACC],
    }
    return WeightGemm(p, prog, out_off, T, N, nb, nc, counters,
                      [(o["j0"], o["nbj"], o["k0"], o["k1"]) for o in ops])


# -- attention on the KV cache ---------------------------------------------------------------


@dataclass
class KvHead:
    """One head's keys and values in the KV cache (layout: ``hw/isa.py``): head dim ``d``,
    room for ``cap`` tokens from KV word ``base`` on (keys, key scales, values, value
    scales, in that order; with ``values_first``: values, value scales, keys, key scales).

    P·V (:meth:`pv`) reads the values in whole tiles of ``rows`` tokens, up to
    ``ceil(cap / rows) * rows`` (times zero probabilities past the visible keys): words past
    the values that must lie in the KV buffer. ``values_first`` keeps them within the
    region (a region that ends the buffer)."""

    p: ChipParams
    d: int
    cap: int
    base: int = 0
    values_first: bool = False

    def __post_init__(self):
        PC = self.p.cols // 2
        blocks = -(-self.cap // PC)
        self.G = self.d // NUM.act_group
        keys, vals = blocks * (self.d + self.G + 1), self.cap * self.d // PC
        k0, v0 = (self.base + vals + blocks * (self.G + 1), self.base) if self.values_first \
            else (self.base, self.base + keys)
        self.key = k0
        self.key_s = self.key + blocks * self.d
        self.val = v0
        self.val_s = self.val + self.cap * self.d // PC
        self.end = self.base + keys + vals + blocks * (self.G + 1)

    @property
    def words_per_row(self) -> int:
        """ACT words of one key / value / query row."""
        return self.d // self.p.rows

    def append(self, kind: KvKind, t_len: int, a_addr: int, a_stride: int | None = None) -> int:
        """``KV_APPEND``: ACT rows at ``a_addr`` become tokens ``pos .. pos + t_len - 1``."""
        kv, ks = (self.key, self.key_s) if kind == KvKind.KEY else (self.val, self.val_s)
        return encode(Op.KV_APPEND, kind=kind, t_len=t_len, a_addr=a_addr,
                      a_stride=a_stride or self.words_per_row, kv_addr=kv, kv_saddr=ks,
                      d=self.d, cap=self.cap)

    def qk(self, t_len: int, a_addr: int, acc_addr: int, acc_stride: int) -> int:
        """QKᵀ of ``t_len`` query rows at ``a_addr`` over every visible key (``dyn = POS``):
        ``ceil((pos + t_len) / PC)`` output blocks, row t's block j at
        ``acc_addr + t * acc_stride + j`` (``sim.golden.gemm_act(q, qs, k, ks)``)."""
        return encode(
            Op.GEMM, mode=GridMode.INT8, wsrc=WSrc.KV_TILED, psrc=PSrc.KV, first=1, final=1,
            dyn=Dyn.POS, w_addr=self.key, a_addr=a_addr, a_stride=self.words_per_row,
            acc_addr=acc_addr, acc_stride=acc_stride, prm_addr=self.key_s,
            prm_step=int(np.log2(NUM.act_group // self.p.rows)), t_len=t_len,
            k_tiles=self.d // self.p.rows, n_tiles=0)

    def pv(self, plane: int, t_len: int, a_addr: int, a_stride: int, acc_addr: int,
           prm_addr: int, oprm_addr: int, acc_stride: int | None = None) -> int:
        """One plane of an A15 P·V (``plane`` 0: the high INT8 plane, ``first``; 1: the low
        plane, ``final``) over every visible value (``dyn = POS``): group words
        ``prm_addr + j`` (scale 128 resp. 1 in the first ``PC`` lanes), out words
        ``oprm_addr + j``; ``d / PC`` output blocks at ``acc_addr + t * acc_stride + j``
        (default ``acc_stride``: ``d / PC``)."""
        nv = self.d // (self.p.cols // 2)
        return encode(
            Op.GEMM, mode=GridMode.INT8, wsrc=WSrc.KV_ROWS, psrc=PSrc.PRM,
            first=int(plane == 0), final=int(plane == 1), dyn=Dyn.POS, w_addr=self.val,
            a_addr=a_addr, a_stride=a_stride, acc_addr=acc_addr,
            acc_stride=nv if acc_stride is None else acc_stride,
            prm_addr=prm_addr, prm_step=PRM_STEP_NEVER, oprm_addr=oprm_addr, t_len=t_len,
            k_tiles=0, n_tiles=nv)

    def pv_params(self, shift: int) -> tuple[dict, dict]:
        """PRM words of :meth:`pv`: ``2 * d / PC`` group words (plane 0's, then plane 1's)
        and ``d / PC`` out words (``shift``, bias 0)."""
        PC, C = self.p.cols // 2, self.p.cols
        nv = self.d // PC
        one = np.zeros((nv, C), np.int64)
        one[:, :PC] = 1
        group = {"group.scale": np.concatenate([one * 128, one]),
                 "group.offset": 0 * one.repeat(2, 0)}
        return group, {"out.shift": one * shift, "out.bias": 0 * one}


def pv_planes(R: int, p15, ps) -> list[dict]:
    """A15 rows (``sim.golden.quantize_rows(..., bits=15)``) -> the ACT words of the high
    (``p15 >> 7``, INT8) and low (``p15 & 127``) planes."""
    p15 = np.asarray(p15, np.int64)
    return [act_fields(R, p15 >> 7, ps.mant, ps.exp, ps.group),
            act_fields(R, p15 & 127, ps.mant, ps.exp, ps.group)]


@dataclass
class AttentionStep:
    """One step's program (:func:`attention_step`) and its expected results."""

    prog: list
    pos: int                   #: tokens in the cache before the step
    t_len: int                 #: tokens appended (query rows)
    qk_off: int                #: bus address of the QKᵀ ACC words [t_len, nq]
    nq: int
    pv_off: int                #: bus address of the P·V ACC words [t_len, d / PC]
    nv: int
    counters: dict = field(default_factory=dict)


def attention_step(head: KvHead, img: Image, pos: int, k8, ks, v8, vs, q8, qs, p15, ps, *,
                   act_base: int = 0, acc_base: int = 0, prm_base: int = 0, shift: int = 0,
                   load_prm: bool = True, setpos: bool = True) -> AttentionStep:
    """One prefill or decode step of one head as a whole program: ``t_len`` new tokens at
    ``pos`` (the context register, set by the job's ``pos_init`` or a ``SETPOS`` before).

    Loads the step's ACT rows (keys, values, queries [t_len, d] and the two planes of the
    A15 probabilities ``p15`` [t_len, pos + t_len]) to ACT ``act_base``, appends keys and
    values, then QKᵀ over every visible key (``dyn = POS``) and the A15 P·V (two chained
    GEMMs, ``dyn = POS``); stores both results and, with ``setpos``, ends with
    ``SETPOS pos += t_len``. ``load_prm``: also load the P·V column parameters (to PRM
    ``prm_base``; they stay on chip for later steps). Expected results:
    ``gemm_act(q8, qs, keys[:pos + t_len], ...)`` and
    ``gemm_act(p15, ps, values[:pos + t_len].T, None, shift)``.
    """
    p = head.p
    R, PC = p.rows, p.cols // 2
    t_len = len(k8)
    vis = pos + t_len
    nq, nv, kpv = -(-vis // PC), head.d // PC, -(-vis // R)
    wpr = head.words_per_row
    rows = [act_fields(R, k8, ks.mant, ks.exp, ks.group),
            act_fields(R, v8, vs.mant, vs.exp, vs.group),
            act_fields(R, q8, qs.mant, qs.exp, qs.group), *pv_planes(R, p15, ps)]
    assert all(len(r["exp"]) == t_len * wpr for r in rows[:3])
    assert all(len(r["exp"]) == t_len * kpv for r in rows[3:])
    addr = act_base + np.cumsum([0] + [len(r["exp"]) for r in rows])
    a_off, a_n = img.put(Buf.ACT, {f: np.concatenate([r[f] for r in rows]) for f in rows[0]})
    prog = [encode(Op.LOAD, buf=Buf.ACT, sram=act_base, words=a_n, off=a_off)]
    load_words = a_n * _bus_words(p, Buf.ACT)
    if load_prm:
        group, out = head.pv_params(shift)
        g_off, g_n = img.put(Buf.PRM, group)
        o_off, o_n = img.put(Buf.PRM, out)
        prog += [encode(Op.LOAD, buf=Buf.PRM, sram=prm_base, words=g_n, off=g_off),
                 encode(Op.LOAD, buf=Buf.PRM, sram=prm_base + g_n, words=o_n, off=o_off)]
        load_words += (g_n + o_n) * _bus_words(p, Buf.PRM)
    acc_qk, acc_pv = acc_base, acc_base + t_len * nq
    qk_off = img.reserve(Buf.ACC, t_len * nq)
    pv_off = img.reserve(Buf.ACC, t_len * nv)
    prog += [
        encode(Op.WAIT, unit=Unit.LOAD, count=0),
        head.append(KvKind.KEY, t_len, int(addr[0])),
        head.append(KvKind.VALUE, t_len, int(addr[1])),
        encode(Op.WAIT, unit=Unit.KV, count=0),
        head.qk(t_len, int(addr[2]), acc_qk, nq),
        head.pv(0, t_len, int(addr[3]), kpv, acc_pv, prm_base, prm_base + 2 * nv),
        head.pv(1, t_len, int(addr[4]), kpv, acc_pv, prm_base + nv, prm_base + 2 * nv),
        encode(Op.WAIT, unit=Unit.GEMM, count=0),
        encode(Op.STORE, buf=Buf.ACC, sram=acc_qk, words=t_len * nq, off=qk_off),
        encode(Op.STORE, buf=Buf.ACC, sram=acc_pv, words=t_len * nv, off=pv_off),
    ]
    if setpos:
        prog.append(encode(Op.SETPOS, add=1, value=t_len))
    prog.append(encode(Op.HALT))
    counters = {
        Counter.UOPS: len(prog),
        Counter.GRID_ROWS: t_len * nq * (head.d // R) + 2 * t_len * nv * kpv,
        Counter.LOAD_WORDS: load_words,
        Counter.STORE_WORDS: t_len * (nq + nv) * _bus_words(p, Buf.ACC),
    }
    return AttentionStep(prog, pos, t_len, qk_off, nq, pv_off, nv, counters)


# -- one failing (or just fitting) micro-op per check ----------------------------------------


class ErrorCase(NamedTuple):
    """A micro-op ``op`` run after the ops ``prefix`` (from ``pos = 0``) that fails with
    ``err`` (``Err.NONE``: a boundary that just fits)."""

    name: str
    prefix: list
    op: int
    err: Err


def error_cases(p: ChipParams, vector: bool = False) -> list[ErrorCase]:
    """Every check of ``hw/isa.py`` (and the order between two checks) on chip ``p``, with a
    boundary case that passes beside most: bad opcodes, VEC (no vector unit), DMA fields and
    ranges per buffer, WAIT / SETPOS fields, GEMM fields and every address range per buffer and
    source, KV_APPEND fields, overflow and regions. The ops read whatever the buffers hold;
    DMA cases touch off-chip bus words from 0 on (up to two ACC words) and the last three ACT
    words of the memory. ``kv_d_not_pc`` only exists where ``PC > 16``. ``vector``: the chip
    has the vector unit (``IsaSim(vector=True)``): the checks of ``VEC`` instead of
    ``UNSUPPORTED``."""
    R, PC = p.rows, p.cols // 2
    dep = {b: buffer_depth(p, b) for b in Buf}
    nbus = p.offchip_kib * 1024 // p.offchip_bytes_per_cycle
    A = p.acc_entries
    cases = []

    def case(name, prefix, op, err):
        cases.append(ErrorCase(name, prefix, op, err))

    def gemm(**kw):
        f = dict(mode=GridMode.W4A8, wsrc=WSrc.WGT, psrc=PSrc.PRM, first=1, final=1,
                 dyn=Dyn.STATIC, w_addr=0, a_addr=0, a_stride=2, acc_addr=0, acc_stride=2,
                 prm_addr=0, prm_step=1, oprm_addr=dep[Buf.PRM] // 2, t_len=3, k_tiles=2,
                 n_tiles=2)
        f.update(kw)
        return raw_op(Op.GEMM, "gemm", **f)

    # KV_APPEND: d 32, cap 64
    d, cap = 32, 64
    blocks = -(-cap // PC)
    key_words, val_words, scale_words = blocks * d, cap * d // PC, blocks * (d // 16 + 1)

    def kv(**kw):
        f = dict(kind=KvKind.KEY, t_len=2, a_addr=0, a_stride=2, kv_addr=0,
                 kv_saddr=max(key_words, val_words), d=d, cap=cap)
        f.update(kw)
        return raw_op(Op.KV_APPEND, "kv", **f)

    def dma(op, **kw):
        f = dict(buf=Buf.WGT, sram=0, words=1, off=0)
        f.update(kw)
        return raw_op(op, "dma", **f)

    case("illegal_op_04", [], raw_op(0x04), Err.ILLEGAL_OP)
    case("illegal_op_3f", [encode(Op.NOP)], raw_op(0x3F), Err.ILLEGAL_OP)
    if vector:
        _vec_error_cases(p, case)
    else:
        case("vec_unsupported", [], encode(Op.VEC, fn=VecFn.SOFTMAX, rows=2), Err.UNSUPPORTED)
        case("vec_bad_fn_unsupported", [], raw_op(Op.VEC, "vec", fn=31), Err.UNSUPPORTED)
    # -- DMA
    for op in (Op.LOAD, Op.STORE):
        n = op.name.lower()
        case(f"{n}_bad_buf", [], dma(op, buf=5 if op == Op.LOAD else 7), Err.BAD_FIELD)
        case(f"{n}_zero_words", [], dma(op, words=0), Err.BAD_FIELD)
        case(f"{n}_zero_words_before_range", [], dma(op, buf=Buf.PRM, sram=9999, words=0),
             Err.BAD_FIELD)
        for b in Buf:
            case(f"{n}_sram_{b.name}", [], dma(op, buf=b, sram=dep[b] - 1, words=2),
                 Err.SRAM_RANGE)
        case(f"{n}_sram_fits", [], dma(op, buf=Buf.ACC, sram=dep[Buf.ACC] - 2, words=2),
             Err.NONE)
        bpw = _bus_words(p, Buf.ACT)
        case(f"{n}_offchip", [], dma(op, buf=Buf.ACT, words=3, off=nbus - 3 * bpw + 1),
             Err.OFFCHIP_RANGE)
        case(f"{n}_offchip_fits", [], dma(op, buf=Buf.ACT, words=3, off=nbus - 3 * bpw),
             Err.NONE)
        case(f"{n}_sram_before_offchip", [],
             dma(op, buf=Buf.PRM, sram=dep[Buf.PRM], words=1, off=nbus), Err.SRAM_RANGE)
    # -- WAIT, SETPOS
    case("wait_bad_unit", [], raw_op(Op.WAIT, "wait", unit=5, count=1), Err.BAD_FIELD)
    case("wait_bad_unit_7", [], raw_op(Op.WAIT, "wait", unit=7), Err.BAD_FIELD)
    case("wait_ok", [], encode(Op.WAIT, unit=Unit.KV, count=15), Err.NONE)
    case("setpos_overflow", [encode(Op.SETPOS, value=65535)], encode(Op.SETPOS, add=1, value=1),
         Err.BAD_FIELD)
    case("setpos_add_ok", [encode(Op.SETPOS, value=65534)], encode(Op.SETPOS, add=1, value=1),
         Err.NONE)
    case("setpos_wide", [], encode(Op.SETPOS, value=65536), Err.BAD_FIELD)
    # kv_base: 0 .. KV depth - 1 (a wider SETPOS value), set and added like pos
    KVB = PosReg.KV_BASE
    case("setpos_kv_base_range", [], encode(Op.SETPOS, reg=KVB, value=dep[Buf.KV]),
         Err.BAD_FIELD)
    case("setpos_kv_base_fits", [], encode(Op.SETPOS, reg=KVB, value=dep[Buf.KV] - 1),
         Err.NONE)
    case("setpos_kv_base_add_range", [encode(Op.SETPOS, reg=KVB, value=dep[Buf.KV] - 2)],
         encode(Op.SETPOS, reg=KVB, add=1, value=2), Err.BAD_FIELD)
    case("setpos_kv_base_add_fits", [encode(Op.SETPOS, reg=KVB, value=dep[Buf.KV] - 2)],
         encode(Op.SETPOS, reg=KVB, add=1, value=1), Err.NONE)
    # a base moves KV addresses only: B words in, the KV regions end B words earlier
    B = dep[Buf.KV] - min(dep[Buf.KV] // 2, 1 << 15)
    base = [encode(Op.SETPOS, reg=KVB, value=B)]
    kvt = dep[Buf.KV] - B  # KV words left above the base
    # -- GEMM fields
    case("gemm_ok", [], gemm(), Err.NONE)
    for f in ("t_len", "k_tiles", "n_tiles"):
        case(f"gemm_{f}_0", [], gemm(**{f: 0}), Err.BAD_FIELD)
    case("gemm_wsrc_3", [], gemm(wsrc=3), Err.BAD_FIELD)
    case("gemm_dyn_wgt", [], gemm(dyn=Dyn.POS), Err.BAD_FIELD)
    case("gemm_dyn_kv_rows_0", [], gemm(wsrc=WSrc.KV_ROWS, dyn=Dyn.POS, t_len=0), Err.BAD_FIELD)
    case("gemm_y_rows", [], gemm(first=0, t_len=A // 2 + 1, a_stride=0, acc_stride=0),
         Err.BAD_FIELD)
    case("gemm_y_rows_fits", [], gemm(first=0, t_len=A // 2, a_stride=0, acc_stride=0),
         Err.NONE)
    case("gemm_y_rows_first_final", [], gemm(t_len=min(A + 1, 511), a_stride=0, acc_stride=0),
         Err.BAD_FIELD)
    # -- GEMM ranges, one per buffer and source (t_len 3, k_tiles 2, n_tiles 2)
    nkr = 2 * 2 * R
    case("gemm_wgt_range", [], gemm(w_addr=dep[Buf.WGT] - nkr + 1), Err.SRAM_RANGE)
    case("gemm_wgt_fits", [], gemm(w_addr=dep[Buf.WGT] - nkr), Err.NONE)
    case("gemm_kv_tiled_range", [], gemm(wsrc=WSrc.KV_TILED, w_addr=dep[Buf.KV] - nkr + 1),
         Err.SRAM_RANGE)
    case("gemm_kv_rows_range", [], gemm(wsrc=WSrc.KV_ROWS, w_addr=dep[Buf.KV] - nkr + 1),
         Err.SRAM_RANGE)
    case("gemm_kv_rows_fits", [], gemm(wsrc=WSrc.KV_ROWS, w_addr=dep[Buf.KV] - nkr), Err.NONE)
    case("gemm_dyn_range", [encode(Op.SETPOS, value=60000)],
         gemm(wsrc=WSrc.KV_TILED, dyn=Dyn.POS, t_len=1), Err.SRAM_RANGE)
    case("gemm_act_range", [], gemm(a_addr=dep[Buf.ACT] - 5), Err.SRAM_RANGE)
    case("gemm_act_fits", [], gemm(a_addr=dep[Buf.ACT] - 6), Err.NONE)
    case("gemm_acc_range", [], gemm(acc_addr=dep[Buf.ACC] - 5), Err.SRAM_RANGE)
    case("gemm_acc_not_final", [], gemm(final=0, acc_addr=dep[Buf.ACC] - 1), Err.NONE)
    case("gemm_prm_group_range", [], gemm(prm_addr=dep[Buf.PRM] - 1), Err.SRAM_RANGE)
    case("gemm_prm_out_range", [], gemm(oprm_addr=dep[Buf.PRM] - 1), Err.SRAM_RANGE)
    case("gemm_prm_out_not_final", [], gemm(final=0, oprm_addr=dep[Buf.PRM] - 1),
         Err.SRAM_RANGE)
    case("gemm_kv_prm_range", [], gemm(psrc=PSrc.KV, prm_addr=dep[Buf.KV] - 3), Err.SRAM_RANGE)
    # out words are read with every tile (hw/gemm_engine.py), final or not
    case("gemm_kv_prm_not_final", [], gemm(psrc=PSrc.KV, final=0, prm_addr=dep[Buf.KV] - 3),
         Err.SRAM_RANGE)
    case("gemm_kv_prm_fits", [], gemm(psrc=PSrc.KV, prm_addr=dep[Buf.KV] - 4), Err.NONE)
    case("gemm_prm_out_fits", [], gemm(oprm_addr=dep[Buf.PRM] - 2), Err.NONE)
    case("gemm_kv_tiled_base_range", base, gemm(wsrc=WSrc.KV_TILED, w_addr=kvt - nkr + 1),
         Err.SRAM_RANGE)
    case("gemm_kv_tiled_base_fits", base, gemm(wsrc=WSrc.KV_TILED, w_addr=kvt - nkr), Err.NONE)
    case("gemm_kv_rows_base_range", base, gemm(wsrc=WSrc.KV_ROWS, w_addr=kvt - nkr + 1),
         Err.SRAM_RANGE)
    case("gemm_kv_rows_base_fits", base, gemm(wsrc=WSrc.KV_ROWS, w_addr=kvt - nkr), Err.NONE)
    case("gemm_kv_prm_base_range", base, gemm(psrc=PSrc.KV, prm_addr=kvt - 3), Err.SRAM_RANGE)
    case("gemm_kv_prm_base_fits", base, gemm(psrc=PSrc.KV, prm_addr=kvt - 4), Err.NONE)
    case("gemm_wgt_prm_ignore_base", base,
         gemm(w_addr=dep[Buf.WGT] - nkr, oprm_addr=dep[Buf.PRM] - 2), Err.NONE)
    # -- KV_APPEND
    case("kv_ok", [], kv(), Err.NONE)
    case("kv_t_len_0", [], kv(t_len=0), Err.BAD_FIELD)
    case("kv_d_0", [], kv(d=0), Err.BAD_FIELD)
    case("kv_d_24", [], kv(d=24), Err.BAD_FIELD)
    if PC > 16:
        case("kv_d_not_pc", [], kv(d=16, kv_saddr=300), Err.BAD_FIELD)
    case("kv_overflow", [encode(Op.SETPOS, value=cap - 1)], kv(), Err.KV_OVERFLOW)
    case("kv_overflow_fits", [encode(Op.SETPOS, value=cap - 2)], kv(), Err.NONE)
    case("kv_overflow_before_range", [encode(Op.SETPOS, value=4095)],
         kv(t_len=1, cap=4095, kv_addr=dep[Buf.KV] - 1), Err.KV_OVERFLOW)
    case("kv_key_region", [], kv(kv_addr=dep[Buf.KV] - key_words + 1), Err.SRAM_RANGE)
    case("kv_key_region_fits", [], kv(kv_addr=dep[Buf.KV] - key_words), Err.NONE)
    case("kv_value_region", [], kv(kind=KvKind.VALUE, kv_addr=dep[Buf.KV] - val_words + 1),
         Err.SRAM_RANGE)
    case("kv_scale_region", [], kv(kv_saddr=dep[Buf.KV] - scale_words + 1), Err.SRAM_RANGE)
    case("kv_scale_region_fits", [], kv(kv_saddr=dep[Buf.KV] - scale_words), Err.NONE)
    case("kv_act_range", [], kv(a_addr=dep[Buf.ACT] - 3), Err.SRAM_RANGE)
    case("kv_key_base_region", base, kv(kv_addr=kvt - key_words + 1), Err.SRAM_RANGE)
    case("kv_key_base_fits", base, kv(kv_addr=kvt - key_words), Err.NONE)
    case("kv_value_base_region", base, kv(kind=KvKind.VALUE, kv_addr=kvt - val_words + 1),
         Err.SRAM_RANGE)
    case("kv_scale_base_region", base, kv(kv_saddr=kvt - scale_words + 1), Err.SRAM_RANGE)
    case("kv_scale_base_fits", base, kv(kv_saddr=kvt - scale_words), Err.NONE)
    # the base leaves pos alone (and pos the base)
    case("kv_base_overflow", [encode(Op.SETPOS, value=cap - 1), *base], kv(), Err.KV_OVERFLOW)
    case("kv_base_overflow_fits", [encode(Op.SETPOS, value=cap - 2), *base,
                                   encode(Op.SETPOS, add=1, value=0)], kv(), Err.NONE)
    return cases


def _vec_error_cases(p: ChipParams, case) -> None:
    """The checks of ``VEC`` (``hw.isa.VecArgs``), each with a boundary that fits beside it.
    Rows of 40 elements (W words each), three per operand, in disjoint regions."""
    R, C, PC = p.rows, p.cols, p.cols // 2
    dep = {b: buffer_depth(p, b) for b in Buf}
    A, T, L = dep[Buf.ACC], dep[Buf.ACT], 40
    W, Wh, Wq, Wc = -(-L // C), -(-L // PC), -(-L // R), -(-L // C)
    top = dep[Buf.PRM]
    cap = p.vector_row

    def vec(**kw):
        f = dict(fn=VecFn.RESIDUAL, rows=3, length=L, src_a=0, src_b=3 * Wh, src_stride=W,
                 dst=6 * Wh, dst_stride=W)
        f.update(kw)
        return raw_op(Op.VEC, "vec", **f)

    def quant(**kw):
        return vec(**{"fn": VecFn.QUANT, "dst": 0, "dst_stride": Wq, **kw})

    end = 2 * W + W  # words of three rows at stride W
    case("vec_ok", [], vec(), Err.NONE)
    case("vec_bad_fn_9", [], raw_op(Op.VEC, "vec", fn=9, rows=1, length=1), Err.BAD_FIELD)
    case("vec_bad_fn_31", [], raw_op(Op.VEC, "vec", fn=31, rows=1, length=1), Err.BAD_FIELD)
    case("vec_rows_0", [], vec(rows=0), Err.BAD_FIELD)
    case("vec_length_0", [], vec(length=0), Err.BAD_FIELD)
    case("vec_rows_0_before_range", [], vec(rows=0, src_a=A - 1), Err.BAD_FIELD)
    case("vec_quant_ok", [], quant(), Err.NONE)
    case("vec_quant_qmode_3", [], quant(qmode=3), Err.BAD_FIELD)
    case("vec_quant_vfold_vgroups_0", [], quant(vfold=1), Err.BAD_FIELD)
    case("vec_rope_odd", [], vec(fn=VecFn.ROPE, length=L - 1), Err.BAD_FIELD)
    # row operations hold a whole row; element-wise ones do not
    case("vec_row_limit", [], vec(fn=VecFn.SOFTMAX, rows=1, length=cap + 1), Err.BAD_FIELD)
    case("vec_row_fits", [], vec(fn=VecFn.SOFTMAX, rows=1, length=cap), Err.NONE)
    case("vec_elementwise_long", [], vec(fn=VecFn.GELU, rows=1, length=cap + 1), Err.NONE)
    case("vec_dyn_row_limit", [encode(Op.SETPOS, value=cap)],
         vec(fn=VecFn.SOFTMAX, rows=1, dyn=Dyn.POS, causal=1), Err.BAD_FIELD)
    case("vec_dyn_row_fits", [encode(Op.SETPOS, value=cap - 1)],
         vec(fn=VecFn.SOFTMAX, rows=1, dyn=Dyn.POS, causal=1), Err.NONE)
    # ranges: source, b, destination (ACC, and ACT for QUANT), PRM, table, KV
    case("vec_src_range", [], vec(src_a=A - end + 1), Err.SRAM_RANGE)
    case("vec_src_fits", [], vec(src_a=A - end), Err.NONE)
    case("vec_half_src_range", [], vec(half=1, src_stride=Wh, src_a=A - 3 * Wh + 1),
         Err.SRAM_RANGE)
    case("vec_b_range", [], vec(src_b=A - end + 1), Err.SRAM_RANGE)
    case("vec_b_unread", [], vec(fn=VecFn.GELU, src_b=A - 1), Err.NONE)
    case("vec_dst_range", [], vec(dst=A - end + 1), Err.SRAM_RANGE)
    case("vec_dst_fits", [], vec(dst=A - end), Err.NONE)
    case("vec_quant_dst_range", [], quant(dst=T - 3 * Wq + 1), Err.SRAM_RANGE)
    case("vec_quant_int8_fits", [], quant(dst=T - 3 * Wq), Err.NONE)
    case("vec_quant_a15_range", [], quant(qmode=QuantMode.A15, dst=T - 3 * Wq), Err.SRAM_RANGE)
    case("vec_quant_a8x2_fits", [], quant(qmode=QuantMode.A8X2, dst=T - 6 * Wq), Err.NONE)
    case("vec_layernorm_prm_range", [], vec(fn=VecFn.LAYERNORM, prm=top - 2 * Wc),
         Err.SRAM_RANGE)
    case("vec_layernorm_prm_fits", [], vec(fn=VecFn.LAYERNORM, prm=top - 2 * Wc - 1), Err.NONE)
    case("vec_rmsnorm_prm_range", [], vec(fn=VecFn.RMSNORM, prm=top - Wc), Err.SRAM_RANGE)
    case("vec_rmsnorm_prm_fits", [], vec(fn=VecFn.RMSNORM, prm=top - Wc - 1), Err.NONE)
    pos = (A - 9 * Wh) // W - 3  # table rows pos .. pos + 2 end before 9 Wh + (pos + 3) W
    case("vec_rope_table_range", [encode(Op.SETPOS, value=pos + 1)],
         vec(fn=VecFn.ROPE, src_b=9 * Wh), Err.SRAM_RANGE)
    case("vec_rope_table_fits", [encode(Op.SETPOS, value=pos)], vec(fn=VecFn.ROPE, src_b=9 * Wh),
         Err.NONE)
    case("vec_copy_act_range", [], vec(fn=VecFn.COPY, buf=VecBuf.ACT, src_a=T - 3 * Wq + 1,
                                       src_stride=Wq, dst=0, dst_stride=Wq), Err.SRAM_RANGE)
    case("vec_copy_act_fits", [], vec(fn=VecFn.COPY, buf=VecBuf.ACT, src_a=T - 3 * Wq,
                                      src_stride=Wq, dst=0, dst_stride=Wq), Err.NONE)
    case("vec_copy_repack_range", [], vec(fn=VecFn.COPY, repack=1, dst_stride=Wh,
                                          dst=A - 3 * Wh + 1), Err.SRAM_RANGE)
    case("vec_copy_repack_fits", [], vec(fn=VecFn.COPY, repack=1, dst_stride=Wh,
                                         dst=A - 3 * Wh), Err.NONE)
    # vfold: V's scales as KV_APPEND wrote them from a per-row QUANT (gshift = act_headroom
    # or gzero, whatever ACC holds), for the 40 keys the op reads
    d = 16 * PC // math.gcd(16, PC)
    nb, G = -(-L // PC), d // 16
    kv_s = dep[Buf.KV] - nb * (G + 1)
    prefix = [raw_op(Op.VEC, "vec", fn=VecFn.QUANT, per_row=1, rows=L, length=d, src_a=0,
                     src_stride=-(-d // C), dst=0, dst_stride=d // R),
              encode(Op.KV_APPEND, kind=KvKind.VALUE, t_len=L, a_addr=0, a_stride=d // R,
                     kv_addr=0, kv_saddr=kv_s, d=d, cap=L)]
    vfold = dict(qmode=QuantMode.A15, vfold=1, causal=1, vgroups=G, src_b=kv_s,
                 dst=L * d // R)
    case("vec_vfold_fits", prefix, quant(**vfold), Err.NONE)
    case("vec_vfold_kv_range", prefix, quant(**{**vfold, "src_b": kv_s + 1}), Err.SRAM_RANGE)
    # the same with a KV base: the scales B words in, src_b relative to it; ACC's src_b
    # (operand b) ignores the base
    B = dep[Buf.KV] // 2
    kvb = [encode(Op.SETPOS, reg=PosReg.KV_BASE, value=B)]
    prefix_b = [prefix[0], *kvb,
                encode(Op.KV_APPEND, kind=KvKind.VALUE, t_len=L, a_addr=0, a_stride=d // R,
                       kv_addr=0, kv_saddr=kv_s - B, d=d, cap=L)]
    case("vec_vfold_base_fits", prefix_b, quant(**{**vfold, "src_b": kv_s - B}), Err.NONE)
    case("vec_vfold_base_range", prefix_b, quant(**{**vfold, "src_b": kv_s - B + 1}),
         Err.SRAM_RANGE)
    case("vec_b_base_range", kvb, vec(src_b=A - end + 1), Err.SRAM_RANGE)


# -- hand-laid-out programs: footprints, WAITs, streamed weights, whole layers ----------------

#: The off-chip memory as a footprint space (beside the buffers).
OFFCHIP = "offchip"


def _hull(base, stride, n, width):
    """[lo, hi) of ``n`` rows of ``width`` words from ``base``, ``stride`` apart."""
    return base, base + (n - 1) * stride + width


def gemm_tiles(p: ChipParams, f: dict, pos: int) -> tuple[int, int, int]:
    """``(t_len, n_tiles, k_tiles)`` a GEMM's fields ``f`` run with at context ``pos``: with
    ``dyn = POS`` the key tiles cover the ``pos + t_len`` visible positions (``n_tiles`` for
    ``KV_TILED`` weights, ``k_tiles`` for ``KV_ROWS``)."""
    T, n, k = f["t_len"], f["n_tiles"], f["k_tiles"]
    if f["dyn"] == Dyn.POS:
        if f["wsrc"] == WSrc.KV_TILED:
            n = -(-(pos + T) // (p.cols // 2))
        else:
            k = -(-(pos + T) // p.rows)
    return T, n, k


def footprint(p: ChipParams, word: int, pos: int, kv_base: int = 0) -> list:
    """``[(space, lo, hi, write)]``: hulls of the words a valid micro-op may read or write
    (``hw/isa.py``), for every context ``pos`` up to the given one (ops that follow ``pos``
    grow with it; a RoPE table and a KV region are taken whole), dispatched with the KV base
    ``kv_base`` (KV hulls are absolute: ``kv_base + field``). Spaces: :class:`Buf` and
    :data:`OFFCHIP`. Ops of no unit: ``[]``."""
    R, PC = p.rows, p.cols // 2
    op, f = decode(word)
    kb = kv_base
    if op in (Op.LOAD, Op.STORE):
        buf = Buf(f["buf"])
        n_bus = f["words"] * _bus_words(p, buf)
        load = op == Op.LOAD
        return [(buf, f["sram"], f["sram"] + f["words"], load),
                (OFFCHIP, f["off"], f["off"] + n_bus, not load)]
    if op == Op.GEMM:
        T, n, k = gemm_tiles(p, f, pos)
        G_ = -(-k // (1 << f["prm_step"]))
        wbuf = Buf.WGT if f["wsrc"] == WSrc.WGT else Buf.KV
        w0 = f["w_addr"] + (kb if wbuf == Buf.KV else 0)
        fp = [(wbuf, w0, w0 + n * k * R, False),
              (Buf.ACT, *_hull(f["a_addr"], f["a_stride"], T, k), False)]
        if f["psrc"] == PSrc.PRM:
            fp += [(Buf.PRM, f["prm_addr"], f["prm_addr"] + n * G_, False),
                   (Buf.PRM, f["oprm_addr"], f["oprm_addr"] + n, False)]
        else:
            fp.append((Buf.KV, kb + f["prm_addr"], kb + f["prm_addr"] + n * (G_ + 1), False))
        if f["final"]:
            fp.append((Buf.ACC, *_hull(f["acc_addr"], f["acc_stride"], T, n), True))
        return fp
    if op == Op.KV_APPEND:
        d, cap = f["d"], f["cap"]
        blocks = -(-cap // PC)
        size = blocks * d if f["kind"] == KvKind.KEY else cap * d // PC
        return [(Buf.ACT, *_hull(f["a_addr"], f["a_stride"], f["t_len"], d // R), False),
                (Buf.KV, kb + f["kv_addr"], kb + f["kv_addr"] + size, True),
                (Buf.KV, kb + f["kv_saddr"],
                 kb + f["kv_saddr"] + blocks * (d // p.numerics.act_group + 1), True)]
    if op == Op.VEC:
        return _vec_footprint(p, f, pos, kb)
    return []


def _vec_footprint(p: ChipParams, f: dict, pos: int, kb: int) -> list:
    R, C, PC = p.rows, p.cols, p.cols // 2
    fn, rows = VecFn(f["fn"]), f["rows"]
    length = pos + rows if f["dyn"] == Dyn.POS else f["length"]
    E = PC if f["half"] else C
    W, Wc, Wq = -(-length // E), -(-length // C), -(-length // R)
    sst, dst = f["src_stride"], f["dst_stride"]
    copy_act = fn == VecFn.COPY and f["buf"] == VecBuf.ACT
    fp = [(Buf.ACT, *_hull(f["src_a"], sst, rows, Wq), False) if copy_act
          else (Buf.ACC, *_hull(f["src_a"], sst, rows, W), False)]
    if fn in (VecFn.RESIDUAL, VecFn.SILU_MUL):
        fp.append((Buf.ACC, *_hull(f["src_b"], sst, rows, W), False))
    if fn == VecFn.ROPE:
        fp.append((Buf.ACC, f["src_b"], f["src_b"] + (pos + rows) * W, False))
    if fn in (VecFn.LAYERNORM, VecFn.RMSNORM):
        n_vec = 2 if fn == VecFn.LAYERNORM else 1
        fp.append((Buf.PRM, f["prm"], f["prm"] + n_vec * Wc + 1, False))
    if fn == VecFn.QUANT:
        if f["vfold"]:
            G_ = f["vgroups"]
            v0 = kb + f["src_b"]
            fp.append((Buf.KV, v0, v0 + -(-length // PC) * (G_ + 1), False))
        blocks = 1 if f["qmode"] == QuantMode.INT8 else 2
        fp.append((Buf.ACT, *_hull(f["dst"], dst, blocks * rows, Wq), True))
    elif copy_act:
        fp.append((Buf.ACT, *_hull(f["dst"], dst, rows, Wq), True))
    else:
        E_out = (C if f["half"] else PC) if fn == VecFn.COPY and f["repack"] else E
        fp.append((Buf.ACC, *_hull(f["dst"], dst, rows, -(-length // E_out)), True))
    return fp


def _conflict(fa, fb) -> bool:
    return any(sa == sb and (wa or wb) and la < hb and lb < ha
               for sa, la, ha, wa in fa for sb, lb, hb, wb in fb)


def _port_conflict(fa, fb) -> bool:
    """Both ops write the same on-chip buffer: they share its write port (``hw/chip.py``),
    so their timing would depend on its arbitration (``sim/timing.py``'s predictability
    rules 1-4: ops of two units that write one buffer must not overlap)."""
    return any(sa == sb and wa and wb and sa != OFFCHIP
               for sa, _, _, wa in fa for sb, _, _, wb in fb)


#: The sequencer's own ops (``SETPOS``; ``WAIT``, ``NOP`` as barriers) as one more in-order
#: stream of :class:`_Reorder`.
_SEQ = "seq"


def _follows(op: Op, f: dict) -> tuple[bool, bool]:
    """Whether an op reads ``pos`` and whether it reads ``kv_base`` (as the sequencer attached
    them): the ops a ``SETPOS`` of that register must stay ordered with."""
    if op == Op.KV_APPEND:
        return True, True
    if op == Op.GEMM:
        return f["dyn"] == Dyn.POS, f["wsrc"] != WSrc.WGT or f["psrc"] == PSrc.KV
    if op == Op.VEC:
        fn = f["fn"]
        pos = (f["dyn"] == Dyn.POS or fn == VecFn.ROPE
               or (fn in (VecFn.SOFTMAX, VecFn.QUANT) and bool(f["causal"])))
        return pos, fn == VecFn.QUANT and bool(f["vfold"])
    return False, False


def est_cycles(p: ChipParams, op: Op, f: dict, pos: int) -> int:
    """A rough duration of a unit op at context ``pos`` (cycles from start to done), for
    ordering a program (:class:`Builder` with ``reorder``): the shapes of ``sim/timing.py``'s
    closed forms without their exact constants (``sw/`` does not import the timing model;
    nothing here decides a result, only which of two independent ops is emitted first).
    ``LOAD`` / ``STORE``: the bus words only (:class:`_Reorder` adds the memory latency)."""
    R, C, PC = p.rows, p.cols, p.cols // 2
    if op in (Op.LOAD, Op.STORE):
        return f["words"] * _bus_words(p, Buf(f["buf"]))
    if op == Op.GEMM:
        T, n, k = gemm_tiles(p, f, pos)
        return 2 * R + C + 20 + (n * k - 1) * max(R, T + 1) + T
    if op == Op.KV_APPEND:
        g = p.numerics.act_group
        per = 1 + sum(3 + R + int((w * R) % g == 0) + int(w == 0) for w in range(f["d"] // R))
        return 3 + f["t_len"] * per
    if op == Op.VEC:
        fn, rows = f["fn"], f["rows"]
        length = pos + rows if f["dyn"] == Dyn.POS else f["length"]
        W = -(-max(length, 1) // (PC if f["half"] else C))
        passes = 2 if fn == VecFn.QUANT and f["qmode"] != QuantMode.INT8 else 1
        row_op = fn in (VecFn.QUANT, VecFn.LAYERNORM, VecFn.RMSNORM, VecFn.SOFTMAX)
        return 20 + (2 * W if row_op else 0) + rows * max(W * passes, 2)
    return 0


class _Reorder:
    """The ops a :class:`Builder` with ``reorder`` was given (their *logical* order, the order
    that defines the program's results) and the order it emits them in.

    Dependences: op ``i`` depends on the newest earlier op of every other unit whose
    footprint conflicts with its own (a word one writes and the other reads or writes; the
    same hulls the WAITs are placed from), and on the ``SETPOS`` of a register it follows
    (a ``SETPOS`` on every op that follows its register); ops of one unit keep their order
    (their queue runs them in order). Any order that keeps these computes what the logical
    order computes, and the Builder's WAITs make it so on the chip.

    Emission (:meth:`run`, list scheduling): of the next op of each unit whose dependences
    have been emitted, the one a simple model of the sequencer and the units (``est_cycles``)
    starts first; ties in logical order. Only the interleaving of the units' streams is
    chosen: each unit's order is the compiler's."""

    #: Candidates starting within this many cycles of the earliest count as simultaneous:
    #: the one first in logical order goes (the estimate is rough, and the logical order
    #: knows the data flow: a vector op that a later GEMM waits for goes before a GEMM
    #: that merely could start two cycles earlier).
    SLOP = 64

    def __init__(self, b: "Builder", est_pos: int):
        self.b = b
        self.est_pos = est_pos
        self.items: list[tuple] = []
        self.lists: dict = {k: [] for k in (*Unit, _SEQ)}
        self.depth = {buf: buffer_depth(b.p, buf) for buf in Buf}
        self.last: dict = {buf: {} for buf in Buf}   # buf -> (stream, write) -> newest index
        self.off_reads: list = []
        self.off_writes: list = []
        self.last_set = {PosReg.POS: -1, PosReg.KV_BASE: -1}
        self.users: dict = {PosReg.POS: {}, PosReg.KV_BASE: {}}
        self.barrier = -1
        self.pos = est_pos

    def add(self, word: int, op: Op, f: dict, unit, fp) -> None:
        i = len(self.items)
        key = unit if unit is not None else _SEQ
        deps: dict = {}

        def dep(k, j):
            if j >= 0 and k != key and j > deps.get(k, -1):
                deps[k] = j

        dep(_SEQ, self.barrier)
        writes = ()
        if unit is None:
            if op == Op.SETPOS:
                reg = PosReg(f["reg"])
                for k, j in self.users[reg].items():
                    dep(k, j)
                self.last_set[reg] = i
                if reg == PosReg.POS:  # the context the estimates of later ops take
                    self.pos = self.pos + f["value"] if f["add"] else f["value"]
            else:  # WAIT, NOP, HALT: everything before, everything after
                for k, lst in self.lists.items():
                    if lst:
                        dep(k, lst[-1])
                self.barrier = i
        else:
            for reg, used in zip(PosReg, _follows(op, f), strict=True):
                if used:
                    dep(_SEQ, self.last_set[reg])
                    self.users[reg][unit] = i
            hulls = []
            for space, lo, hi, write in fp:
                if space == OFFCHIP:
                    for lo2, hi2, j, k in self.off_writes + (self.off_reads if write else []):
                        if lo < hi2 and lo2 < hi:
                            dep(k, j)
                    (self.off_writes if write else self.off_reads).append((lo, hi, i, key))
                    continue
                lo, hi = max(lo, 0), min(hi, self.depth[space])
                if lo >= hi:
                    continue
                hulls.append((space, lo, hi, write))
                for (k, w), arr in self.last[space].items():
                    if k != key and (w or write):
                        dep(k, int(arr[lo:hi].max()))
            for space, lo, hi, write in hulls:
                arr = self.last[space].get((key, write))
                if arr is None:
                    arr = self.last[space][key, write] = np.full(self.depth[space], -1,
                                                                 np.int32)
                arr[lo:hi] = i
            writes = tuple({space for space, _, _, w in hulls if w})
        dur = est_cycles(self.b.p, op, f, self.pos) if unit is not None else 0
        self.items.append((word, unit, fp, deps, dur, writes))
        self.lists[key].append(i)

    def run(self, base: int) -> None:
        """Emit every op through the Builder, in the scheduled order (logical position
        ``base + i`` for the ``i``-th op given), and start over empty."""
        b, items = self.b, self.items
        p = b.p
        D, L = p.queue_depth, p.offchip_latency
        n = len(items)
        done = bytearray(n)
        end = [0] * n
        heads = dict.fromkeys(self.lists, 0)
        emitted = {u: [] for u in Unit}     # logical indices in queue order
        starts = {u: [] for u in Unit}
        free = dict.fromkeys(Unit, 0)
        port_end: dict = {}                 # (buf, unit) -> end of its newest writer
        t = 0                               # the sequencer's next issue cycle

        def issue_floor(x, unit, writes):
            if unit is None:
                return x
            for space in writes:
                for u in Unit:
                    if u != unit:
                        x = max(x, port_end.get((space, u), -1) + 1)
            st = starts[unit]
            if len(st) >= D - 1:
                x = max(x, st[-(D - 1)] + 1)
            return x

        def start_of(x, unit):
            if unit == Unit.LOAD:
                return max(x + 3, free[unit])
            return max(x + 2, free[unit] + 1)

        for _ in range(n):
            cands = []
            for key, lst in self.lists.items():
                h = heads[key]
                if h == len(lst):
                    continue
                i = lst[h]
                _, unit, _, deps, _, writes = items[i]
                if not all(done[j] for j in deps.values()):
                    continue
                x = t
                for j in deps.values():
                    x = max(x, end[j] + 1)
                x = issue_floor(x, unit, writes)
                cands.append((start_of(x, unit) if unit is not None else x, i, key))
            first = min(s for s, _, _ in cands)
            i, _, key = min((i, s, key) for s, i, key in cands if s <= first + self.SLOP)
            heads[key] += 1
            done[i] = 1
            word, unit, fp, deps, dur, writes = items[i]
            waits = b._place(word, unit, fp, base + i)
            x = t
            for u, count in waits:
                em = emitted[u]
                k = len(em) - count - 1
                if k >= 0:
                    x = max(x, end[em[k]] + 1)
                x += 2
            if unit is None:
                end[i] = x
            else:
                x = issue_floor(x, unit, ())
                s = start_of(x, unit)
                if unit in (Unit.LOAD, Unit.STORE):
                    free[unit] = s + dur
                    end[i] = s + dur + L + 4
                else:
                    end[i] = free[unit] = s + dur
                starts[unit].append(s)
                emitted[unit].append(i)
                for space in writes:
                    port_end[space, unit] = end[i]
            t = x + 2
        self.__init__(b, self.est_pos)


class Builder:
    """A micro-op program on an :class:`Image`, written op by op; every ``WAIT`` is placed
    from the ops' :func:`footprint`\\ s: before an op, for each other unit, a ``WAIT`` that
    surely finishes the newest of its unfinished ops whose footprint conflicts (a write
    against a read or write of a common word; with ``ports``, also two writes of one buffer
    anywhere in it, so the program's timing is predictable: ``sim/timing.py``). Ops of one
    unit run in order (their queue), so they need none. ``pos_hi``: the largest ``pos`` the
    program may run at (a decode program serves many steps), for the footprints of ops
    that follow ``pos`` (or ``pos``: the exact context the program starts at, followed
    through its ``SETPOS``). ``kv_base``: the KV base as the emitted ops leave it (0 at the
    program's start, as on the chip; every ``SETPOS reg = KV_BASE`` moves it), which every
    op's footprint adds to its KV addresses.

    With ``reorder``, the ops given are the program's logical order and the Builder emits
    them in an order of its own (:class:`_Reorder`, when the program is taken): every unit's
    ops in the order given, the units' streams interleaved so that an op whose operands are
    ready is not held up behind a ``WAIT`` of another stream (e.g. the next layer's weights
    loaded while this one's attention runs). :meth:`mark` / :meth:`pc_of` map positions in
    the logical order to program positions.

    Buffers are handed out by :meth:`alloc` (a bump allocator per buffer; reuse a region by
    passing its address again, the WAITs keep it safe). Streamed weights
    (:meth:`weight_gemm`) alternate between the two halves of their WGT / PRM regions across
    calls, so the next GEMM's first chunk loads while the last chunk of the one before runs."""

    def __init__(self, p: ChipParams, img: Image | None = None, pos_hi: int = 0,
                 ports: bool = True, reorder: bool = False, est_pos: int | None = None,
                 pos: int | None = None):
        self.p = p
        self.ports = ports
        self.img = img if img is not None else Image(p)
        self.pos_hi = pos_hi
        #: with ``pos`` (the program starts at that context): ``pos`` as the emitted ops'
        #: ``SETPOS`` leave it, which their footprints take instead of ``pos_hi``
        self.pos = pos
        self.kv_base = 0
        self.ops: list[int] = []
        self.pending = {u: [] for u in Unit}  # footprints of possibly unfinished ops
        self.top = dict.fromkeys(Buf, 0)
        self.placed: list[int] = []           # program position of each logical op
        self.logical: list[int] = []          # with reorder: the ops in the order given
        if est_pos is None:
            est_pos = pos_hi // 2 if pos is None else pos
        self._queue = _Reorder(self, est_pos) \
            if reorder else None
        self._half: dict = {}                 # streamed-weight regions -> next half

    def alloc(self, buf: Buf, n: int) -> int:
        addr = self.top[buf]
        if addr + n > buffer_depth(self.p, buf):
            raise ValueError(f"Builder: {n} {buf.name} words at {addr} do not fit "
                             f"its {buffer_depth(self.p, buf)}")
        self.top[buf] += n
        return addr

    def mark(self) -> int:
        """The logical position of the next op given."""
        return len(self.placed) + (len(self._queue.items) if self._queue is not None else 0)

    def pc_of(self, mark: int) -> int:
        """The program position after every op given before ``mark`` (once emitted)."""
        self.flush()
        return max(self.placed[:mark], default=-1) + 1

    def emit(self, word: int) -> None:
        op, f = decode(word)
        unit = OP_UNIT.get(op)
        if op == Op.SETPOS and f["reg"] == PosReg.KV_BASE:
            base = self.kv_base + f["value"] if f["add"] else f["value"]
            if not 0 <= base < buffer_depth(self.p, Buf.KV):
                raise ValueError(f"Builder: kv_base {base} is beyond the KV buffer "
                                 f"({buffer_depth(self.p, Buf.KV)} words)")
            self.kv_base = base
        if op == Op.SETPOS and f["reg"] == PosReg.POS and self.pos is not None:
            self.pos = self.pos + f["value"] if f["add"] else f["value"]
        at = self.pos_hi if self.pos is None else self.pos
        fp = footprint(self.p, word, at, self.kv_base) if unit is not None else None
        if self._queue is not None:
            self.logical.append(word)
            self._queue.add(word, op, f, unit, fp)
        else:
            self._place(word, unit, fp, len(self.placed))

    def _place(self, word: int, unit, fp, index: int) -> list:
        """Emit one op now (logical position ``index``) after the WAITs its footprint needs;
        returns them as ``(unit, count)``."""
        waits = []
        if unit is not None:
            for u, pend in self.pending.items():
                hits = [i for i, q in enumerate(pend)
                        if _conflict(q, fp) or (self.ports and _port_conflict(q, fp))]
                if u == unit or not hits:
                    continue
                count = min(len(pend) - hits[-1] - 1, 15)  # all but the newest `count` finish
                self.ops.append(encode(Op.WAIT, unit=u, count=count))
                waits.append((u, count))
                self.pending[u] = pend[len(pend) - count:] if count else []
            self.pending[unit].append(fp)
        if index >= len(self.placed):
            self.placed.extend([-1] * (index + 1 - len(self.placed)))
        self.placed[index] = len(self.ops)
        self.ops.append(word)
        return waits

    def flush(self) -> None:
        """Emit every op given so far (with ``reorder``: in the scheduled order)."""
        if self._queue is not None and self._queue.items:
            self._queue.run(len(self.placed))

    def load(self, buf: Buf, sram: int, fields: dict, key=None) -> int:
        """LOAD words of ``buf`` (placed in the image; with ``key``, placed once per image
        and shared by every program that loads the same key); returns how many."""
        cache = self.img.placed
        if key is not None and (key, buf) in cache:
            off, n = cache[key, buf]
        else:
            off, n = self.img.put(buf, fields)
            if key is not None:
                cache[key, buf] = off, n
        self.emit(encode(Op.LOAD, buf=buf, sram=sram, words=n, off=off))
        return n

    def store(self, buf: Buf, sram: int, n: int) -> int:
        """STORE ``n`` words of ``buf`` to room reserved in the image; returns its address."""
        off = self.img.reserve(buf, n)
        self.emit(encode(Op.STORE, buf=buf, sram=sram, words=n, off=off))
        return off

    def vec(self, fn: VecFn, **fields) -> None:
        self.emit(encode(Op.VEC, fn=fn, **fields))

    def weight_gemm(self, qw, bias, a_addr: int, t_len: int, acc_addr: int, acc_stride: int,
                    wgt: tuple[int, int], prm: tuple[int, int],
                    blocks: tuple[int, int] | None = None) -> None:
        """``gemm(x8, xs, qw, bias)`` of the ``t_len`` A8 rows at ACT ``a_addr`` (``K / R``
        words each) into ACC ``acc_addr + t * acc_stride + j``, the weights streamed: output
        blocks in chunks as large as half of each region ``(base, words)`` of WGT and PRM
        holds (split evenly), the two halves alternating (a chunk's tiles, group and out words
        are loaded while the chunk before runs). ``blocks = (j0, j1)``: only output blocks
        ``j0 .. j1 - 1`` (a GEMM emitted in parts, other work between them)."""
        p = self.p
        R = p.rows
        mode = GridMode.W4A8 if qw.bits == 4 else GridMode.INT8
        N, K = qw.q.shape
        nc = ncols_of(p, mode)
        nb, kt = -(-N // nc), K // R
        grp = NUM.group
        step = int(np.log2(grp // R))
        groups = K // grp
        half_w, half_p = wgt[1] // 2, prm[1] // 2
        per = min(half_w // (kt * R), half_p // (groups + 1), nb, 255)
        if per < 1:
            raise ValueError(f"Builder.weight_gemm: one block of {kt} K-tiles does not fit "
                             f"half of WGT {wgt} and PRM {prm}")
        bias_id = None if bias is None else id(bias)  # keys name objects alive while built
        b0, b1 = (0, nb) if blocks is None else blocks
        if not 0 <= b0 < b1 <= nb:
            raise ValueError(f"Builder.weight_gemm: blocks {blocks} are not a range of the "
                             f"{nb} output blocks")
        # the whole weight placed once per image (tiles, group words, out words: block-major,
        # so the words of blocks j0 .. j1 - 1 are one range of each): any chunking of any
        # program loads from the same copy
        key = (id(qw), bias_id, "whole")
        if key not in self.img.placed:
            group, out = prm_fields(p, qw, np.zeros(N, np.int64) if bias is None else bias,
                                    mode)
            self.img.placed[key] = (self.img.put(Buf.WGT, weight_fields(p, qw.q, mode))[0],
                                    self.img.put(Buf.PRM, group)[0],
                                    self.img.put(Buf.PRM, out)[0])
        w_off, g_off, o_off = self.img.placed[key]
        bw, bp = _bus_words(p, Buf.WGT), _bus_words(p, Buf.PRM)
        for j0, j1 in _split(b1 - b0, -(-(b1 - b0) // per)):  # equal chunks: none short
            j0, j1 = j0 + b0, j1 + b0
            h = self._half.get((wgt, prm), 0)
            self._half[wgt, prm] = 1 - h
            w_sram = wgt[0] + h * half_w
            p_sram = prm[0] + h * half_p
            ng = (j1 - j0) * groups
            for buf, sram, n, off in ((Buf.WGT, w_sram, (j1 - j0) * kt * R,
                                       w_off + j0 * kt * R * bw),
                                      (Buf.PRM, p_sram, ng, g_off + j0 * groups * bp),
                                      (Buf.PRM, p_sram + ng, j1 - j0, o_off + j0 * bp)):
                self.emit(encode(Op.LOAD, buf=buf, sram=sram, words=n, off=off))
            self.emit(encode(
                Op.GEMM, mode=mode, wsrc=WSrc.WGT, psrc=PSrc.PRM, first=1, final=1,
                dyn=Dyn.STATIC, w_addr=w_sram, a_addr=a_addr, a_stride=kt,
                acc_addr=acc_addr + j0, acc_stride=acc_stride, prm_addr=p_sram, prm_step=step,
                oprm_addr=p_sram + ng, t_len=t_len, k_tiles=kt, n_tiles=j1 - j0))

    def program(self) -> list[int]:
        """The micro-ops, ending in ``HALT`` (which drains every unit)."""
        self.flush()
        return self.ops + [encode(Op.HALT)]

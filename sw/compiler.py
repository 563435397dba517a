"""The compiler: a real model -> micro-op programs and the off-chip memory image they run on.

Input: a model in the chip's formats (``sw/quantize.py``: :class:`~sw.quantize.QMiniLM`, INT8
weights; :class:`~sw.quantize.QSmolLM2`, its GGUF Q4_1 / Q8_0 blocks unchanged) and a
:class:`~hw.params.ChipParams`. Output: a :class:`CompiledModel`: one :class:`~sw.programs.Image`
(every weight, constant and table placed once, in the buffer word formats of ``hw/isa.py``)
and the programs that run on it, each one step of the model with no host in the loop:

- **SmolLM2** (:class:`SmolLM2Compiled`): a program per step length ``T`` (a prefill chunk of
  ``T`` tokens, or ``T = 1`` for decode), all 30 decoder layers, the final RMSNorm and the LM
  head: the host writes the step's input rows (the token embeddings: a table lookup the
  runtime's caller provides) into the input slot, starts the program with ``pos`` = the
  tokens already in the cache, and reads back the last token's logits (it then picks the
  next token). Where it fits, the KV
  cache stays on chip between steps (a region per layer and KV head, ``cap`` positions;
  each layer's heads addressed relative to its ``SETPOS KV_BASE``, so the cache can fill
  the whole KV buffer); every program ends with ``SETPOS pos += T``, so one decode program
  serves every position. On a chip whose KV buffer does not hold the cache (the FPGA
  boards' ``CHIP_85F``: 2,048 KV words, one position of the 30 layers needs 8,100) the
  *streamed* plan (:meth:`SmolLM2Compiled._build_streamed`) keeps it off-chip, a region
  per layer and KV head that each step LOADs into the KV buffer, appends to and STOREs
  back; the context is what one head's region holds (58 positions there). Its residual
  stream lives off-chip too, and a step is a sequence of programs (:attr:`Program.parts`)
  that each fit the micro-op memory, every one started at the step's ``pos``.
- **MiniLM** (:class:`MiniLMCompiled`): one program per sequence length: the embedding sums
  and LayerNorm, the 6 encoder layers; the host writes the word, position and token-type
  embedding rows of the tokens (its table lookups) and reads back the last hidden states
  (mean pooling and L2 normalization stay on the host, as ``sw/reference.py`` does them).
  On a chip whose buffers do not hold a layer's intermediates (the FPGA boards'
  ``hw.board_top.CHIP_85F``) the *streamed* plan keeps the hidden states in off-chip memory
  between sub-layers, and the step is a sequence of programs (:attr:`Program.parts`) that
  each fit the micro-op memory (:meth:`MiniLMCompiled._build_streamed`). Its image holds
  every weight (~24 MiB in that chip's bus format): the compiled ``p`` raises
  ``offchip_kib`` where the configuration's is smaller (the DMA's ``off`` is 32 bits of bus
  words; a board serves the host's memory, so only the chip's range check knows the size).

The host's embedding lookup is the one step of a model outside the chip; the runtime takes
it as a function (``lookup(ids, table) -> wide rows``) from its caller, because ``sw/`` does
not carry a copy of the golden numerics (``chip`` passes ``sim.golden.embed``).

Tiling and schedule (per op, :class:`sw.programs.Builder`): the residual stream and every
intermediate of a layer live in ACC / ACT (the ``half`` layout for INT8 GEMM outputs; MiniLM's
streamed plan: off-chip, a row block at a time); weight
GEMMs stream their weights and column parameters through alternating halves of WGT and PRM,
each chunk loaded while the one before runs (the halves alternate across GEMMs and layers);
attention runs per head on the KV cache (``KV_APPEND``, QKᵀ, softmax, P·V in two planes).
The compiler writes each program in a *logical* order that fixes every unit's sequence of
ops (which GEMM runs after which, e.g. MiniLM's blocks software-pipelined); the Builder
(``reorder``) interleaves the units' sequences so that no op waits behind a ``WAIT`` it does
not need (the next weights load during attention and vector work) and places every ``WAIT``
from the ops' buffer footprints and the timing model's write-port rules.

What does not fit is a :class:`CompileError` naming the buffer, the words needed and the words
the configuration has (and the ``ChipParams`` field to grow), before any program is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np

from hw.isa import (
    Buf,
    Dyn,
    KvKind,
    Op,
    PosReg,
    QuantMode,
    VecFn,
    buffer_depth,
    bus_words_per,
    decode,
    encode,
    word_bytes,
    word_layout,
)
from hw.params import ChipParams
from sw.programs import (
    Builder,
    Image,
    KvHead,
    acc_words,
    bus_image,
    norm_prm_fields,
    per_word,
    rope_fields,
    sub_weight,
    wide_fields,
    wide_rows,
)

__all__ = ["CompileError", "Section", "Program", "CompiledModel", "SmolLM2Compiled",
           "MiniLMCompiled", "buffer_kib"]

#: Which ``ChipParams`` field sizes each buffer (for error messages).
_BUF_FIELD = {Buf.WGT: "weight_sram_kib", Buf.ACT: "act_sram_kib", Buf.ACC: "acc_sram_kib",
              Buf.KV: "kv_sram_kib", Buf.PRM: "prm_entries"}


class CompileError(ValueError):
    """A model, sequence length or context that does not fit the configured chip."""


class _BufferError(CompileError):
    """A plan's buffers do not fit the chip (:meth:`_Plan.check`): another plan may."""


def buffer_kib(p: ChipParams, buf: Buf, words: int) -> float:
    """KiB of ``words`` words of ``buf``."""
    return words * word_bytes(word_layout(p, buf)) / 1024


@dataclass
class Section:
    """Micro-ops ``start .. end - 1`` of a program do ``label`` (a layer, the LM head...)."""

    label: str
    start: int
    end: int


@dataclass
class Program:
    """One compiled step: micro-ops placed in the image at ``addr`` (``length`` ops), the
    buffer words it uses, its sections, and where its input / output rows are."""

    name: str
    T: int
    words: list[int]
    addr: int
    sections: list[Section]
    usage: dict            #: Buf -> words used (high-water mark)
    in_off: int            #: bus address of the input rows the host writes
    out_off: int           #: bus address of the output rows the program stores
    out_rows: int
    out_len: int
    out_half: bool         #: the output rows' layout (``half``: ``PC`` per ACC word)
    in_half: bool          #: the input rows' layout
    block: int | None = None  #: MiniLM: the row block the program runs in
    in_rows: int | None = None  #: input rows the host writes (default ``T``)
    #: the micro-ops in the compiler's logical order (what the program computes) and the
    #: program position the Builder's scheduler gave each (``sw.programs.Builder``)
    logical: list = field(default_factory=list, repr=False)
    placed: list = field(default_factory=list, repr=False)
    #: a step too long for the micro-op memory: the programs that run it, one after another
    #: (each at the step's ``pos``; state passes between them in the buffers and off-chip
    #: memory). Then ``words`` / ``sections`` are theirs concatenated (for reports; the step
    #: is not one program) and ``addr`` the first one's.
    parts: list = field(default_factory=list, repr=False)

    @property
    def length(self) -> int:
        return len(self.words)

    def runs(self) -> list:
        """The programs that run this step, in order (``parts``, or the program itself)."""
        return self.parts or [self]


class _Plan:
    """Bump allocation of the buffers of one program, checked as a whole: every region is
    handed out first, then :meth:`check` raises one :class:`CompileError` listing every
    buffer that overflows (what needs it and by how much)."""

    def __init__(self, p: ChipParams, what: str):
        self.p = p
        self.what = what
        self.top = dict.fromkeys(Buf, 0)
        self.parts: dict[Buf, list[tuple[str, int]]] = {b: [] for b in Buf}

    def alloc(self, buf: Buf, n: int, name: str) -> int:
        addr = self.top[buf]
        self.top[buf] += n
        self.parts[buf].append((name, n))
        return addr

    def phases(self, buf: Buf, name: str, *phases) -> dict:
        """One region of ``buf`` shared by phases that never overlap in time: each phase a
        list of ``(name, words)`` laid out from the region's start; returns each name's
        address (the region is as large as the largest phase)."""
        base, need, at = self.top[buf], 0, {}
        for phase in phases:
            end = base
            for nm, n in phase:
                at[nm] = end
                end += n
            need = max(need, end - base)
        self.alloc(buf, need, name)
        return at

    def rest(self, buf: Buf, name: str, at_least: int) -> tuple[int, int]:
        """Everything left of ``buf`` (at least ``at_least`` words): ``(base, words)``."""
        base = self.top[buf]
        n = max(buffer_depth(self.p, buf) - base, at_least)
        self.alloc(buf, n, name)
        return base, n

    def check(self) -> None:
        bad = []
        for buf, used in self.top.items():
            have = buffer_depth(self.p, buf)
            if used > have:
                parts = ", ".join(f"{name} {n}" for name, n in self.parts[buf])
                unit = "entries" if buf == Buf.PRM else (
                    f"words, {buffer_kib(self.p, buf, used):.0f} KiB")
                bad.append(f"{buf.name} needs {used} {unit} but the chip has {have} "
                           f"(short by {used - have}; grow ChipParams.{_BUF_FIELD[buf]}): "
                           f"{parts}")
        if bad:
            raise _BufferError(f"{self.what} does not fit the chip: " + "; ".join(bad))


@dataclass
class CompiledModel:
    """An image and the programs compiled onto it (built on demand by ``program``)."""

    p: ChipParams
    img: Image
    programs: dict = field(default_factory=dict)

    def _place(self, name: str, T: int, b: Builder, plan: _Plan, sections, in_off, out_off,
               out_rows, out_len, out_half, in_half) -> Program:
        words = b.program()
        # a section ends where its last op was emitted (with reordering, ops of the next
        # one may come before: the sections are the program cut at those points)
        cut, at = [], 0
        for label, _, end in sections:
            cut.append(Section(label, at, max(at, b.pc_of(end))))
            at = cut[-1].end
        sections = cut
        if len(words) > self.p.uop_depth:
            raise CompileError(f"{name}: {len(words)} micro-ops do not fit the micro-op memory "
                               f"of {self.p.uop_depth} (grow ChipParams.uop_depth)")
        addr, _ = self.img.put_program(words)
        prog = Program(name, T, words, addr, sections, dict(plan.top), in_off, out_off,
                       out_rows, out_len, out_half, in_half, logical=b.logical,
                       placed=b.placed)
        self.programs[name] = prog
        return prog

    def _place_parts(self, name: str, T: int, rec: _Recorder, plan: _Plan, in_off,
                     out_off, out_rows, out_len, out_half, in_half,
                     pos_hi: int | None = None) -> Program:
        """A step recorded op by op (``rec``: its logical order) as programs that each fit
        the micro-op memory, run one after another (:attr:`Program.parts`). Each is built
        by a :class:`Builder` with ``reorder`` on a range of the ops (never inside a chain of
        GEMMs: ``first`` .. ``final`` share the group scaler's sums); one that starts after a
        ``SETPOS`` opens with the context registers as the ops before it left them (the
        step starts at ``pos`` 0 and ``kv_base`` 0, as every part does).

        ``pos_hi``: the step runs at any context up to ``pos_hi`` (SmolLM2: every part is
        started at the step's ``pos``, and the ops' footprints are taken for every ``pos``
        up to ``pos_hi``); a ``SETPOS`` of ``pos`` may then only be the step's last op."""
        p = self.p
        words = rec.words
        n = len(words)
        ok = [True] * (n + 1)  # a program may end before op i
        regs = [(0, 0)] * (n + 1)  # (pos, kv_base) before op i
        pos = kvb = 0
        for i, w in enumerate(words):
            op, f = decode(w)
            if op == Op.GEMM and not f["final"]:
                ok[i + 1] = False
            elif op == Op.SETPOS:
                if f["reg"] == PosReg.POS and pos_hi is not None:
                    if i != n - 1:
                        raise ValueError(f"{name}: SETPOS pos at op {i} of {n} (a step run "
                                         "at its pos may set it only last)")
                elif f["reg"] == PosReg.POS:
                    pos = pos + f["value"] if f["add"] else f["value"]
                else:
                    kvb = kvb + f["value"] if f["add"] else f["value"]
            regs[i + 1] = (pos, kvb)
        labels = rec.labels + [(None, n)]
        parts, i, guess = [], 0, p.uop_depth // 2
        while i < n:
            pos, kvb = regs[i]
            prefix = ([encode(Op.SETPOS, value=pos)] if pos else []) + (
                [encode(Op.SETPOS, reg=PosReg.KV_BASE, value=kvb)] if kvb else [])
            j = min(n, i + guess)
            while True:
                while j > i + 1 and not ok[j]:
                    j -= 1
                b = Builder(p, self.img, reorder=True, pos=0) if pos_hi is None else \
                    Builder(p, self.img, reorder=True, pos_hi=pos_hi)
                for w in prefix:
                    b.emit(w)
                marks = []
                for (label, s0), (_, s1) in zip(labels[:-1], labels[1:], strict=True):
                    if s0 < j and s1 > i:
                        marks.append((label, max(s0, i), min(s1, j)))
                for k in range(i, j):
                    b.emit(words[k])
                prog = b.program()
                if len(prog) <= p.uop_depth:
                    break
                if j - i <= 1:
                    raise CompileError(f"{name}: one micro-op with its context needs "
                                       f"{len(prog)} micro-ops, more than the micro-op memory "
                                       f"of {p.uop_depth} (grow ChipParams.uop_depth)")
                j = i + max(1, (j - i) * (p.uop_depth - 16) // len(prog))
            # the next part's first guess: as many ops as this one's fill would allow
            guess = max(1, (j - i) * (p.uop_depth - 16) // len(prog))
            sections, at = [], 0
            for label, _, s1 in marks:
                end = max(at, b.pc_of(len(prefix) + s1 - i))
                sections.append(Section(label, at, end))
                at = end
            addr, _ = self.img.put_program(prog)
            parts.append(Program(f"{name}.{len(parts)}", T, prog, addr, sections,
                                 dict(plan.top), in_off, out_off, out_rows, out_len, out_half,
                                 in_half, logical=b.logical, placed=b.placed))
            i = j
        allw, secs = [], []
        for part in parts:
            secs += [Section(f"{sec.label} [{part.name}]", sec.start + len(allw),
                             sec.end + len(allw)) for sec in part.sections]
            allw += part.words
        step = Program(name, T, allw, parts[0].addr, secs, dict(plan.top), in_off, out_off,
                       out_rows, out_len, out_half, in_half, parts=parts)
        self.programs[name] = step
        return step

    def image_bytes(self) -> np.ndarray:
        """The image as far as it is placed (what a device is opened on)."""
        return self.img.mem[: self.img.next * self.p.offchip_bytes_per_cycle]

    def result(self, prog: Program, mem) -> np.ndarray:
        """A program's output rows (wide [out_rows, out_len]) from a whole off-chip memory."""
        return self.output(prog, mem, prog.out_off)

    def output(self, prog: Program, raw, off: int = 0) -> np.ndarray:
        """The output rows from ``raw``: the bytes of the output region as a device reads them
        (:meth:`output_bus_words` bus words; ``off``: where the region starts in ``raw``)."""
        W = -(-prog.out_len // per_word(self.p, prog.out_half))
        words = acc_words(self.p, raw, off, prog.out_rows * W)
        return wide_rows(self.p, words, prog.out_len, half=prog.out_half)

    def input_bytes(self, prog: Program, rows) -> np.ndarray:
        """The input rows (wide [T, d]) as the bytes the host writes at ``prog.in_off``."""
        rows = np.asarray(rows)
        want = prog.T if prog.in_rows is None else prog.in_rows
        if rows.shape[0] != want:
            raise ValueError(f"{prog.name}: {rows.shape[0]} input rows, the program takes "
                             f"{want}")
        return bus_image(self.p, Buf.ACC, wide_fields(self.p, rows, half=prog.in_half)).ravel()

    def output_bus_words(self, prog: Program) -> int:
        W = -(-prog.out_len // per_word(self.p, prog.out_half))
        return prog.out_rows * W * bus_words_per(self.p, Buf.ACC)


def _vec_rows(b: Builder, fn, src, length, stride, dst=None, n=1, **kw) -> None:
    """A VEC op over ``n`` rows of ``length``, in place unless ``dst`` (both at ``stride``)."""
    b.vec(fn, rows=n, length=length, src_a=src, src_stride=stride,
          dst=src if dst is None else dst, dst_stride=stride, **kw)


def _a8x2_passes(b: Builder, dst, src, length, stride, half=0, n=1) -> None:
    """QUANT A8X2 of ``n`` rows into ``dst`` (the activation rows both GEMM passes read)."""
    b.vec(VecFn.QUANT, qmode=QuantMode.A8X2, half=half, rows=n, length=length,
          src_a=src, src_stride=stride, dst=dst, dst_stride=-(-length // b.p.rows))


def _sum_passes(b: Builder, src, length, stride, n=1, **kw) -> None:
    """The two A8X2 GEMM passes' halves added (RESIDUAL of the second onto the first)."""
    _vec_rows(b, VecFn.RESIDUAL, src, length, stride, n=n, src_b=src + n * stride, **kw)


def _sections_start(b: Builder) -> int:
    return b.mark()


class _Recorder(Builder):
    """A :class:`Builder` that only records the ops it is given (their logical order) and
    labels (``section``): a step too long for one program, which
    :meth:`CompiledModel._place_parts` cuts into programs. Image regions are placed as the
    Builder places them."""

    def __init__(self, p: ChipParams, img: Image):
        super().__init__(p, img)
        self.words: list[int] = []
        self.labels: list[tuple[str, int]] = []

    def emit(self, word: int) -> None:
        self.words.append(word)

    def mark(self) -> int:
        return len(self.words)

    def section(self, label: str) -> None:
        """The ops from here on do ``label`` (until the next section)."""
        self.labels.append((label, len(self.words)))


# -- SmolLM2 ----------------------------------------------------------------------------------


class SmolLM2Compiled(CompiledModel):
    """SmolLM2 compiled for a chip: ``cap`` KV-cache positions (prompt plus generated
    tokens), prefill chunks of at most ``chunk`` tokens. :meth:`program` builds (once) the
    step program of ``T`` tokens.

    ``layers``: compile only the first ``layers`` decoder layers (tests, benchmarks); with
    ``head = False`` a step stores its ``T`` output rows of the residual stream (wide
    ``[T, d]``) instead of the last token's logits.

    ``streamed``: None (the default) keeps the KV cache on chip (a region per layer and KV
    head, the *resident* plan, :meth:`_build`) where it and the resident plan's buffers fit,
    else takes the *streamed* plan (:meth:`_build_streamed`: the KV cache and the residual
    stream off-chip, a step as a sequence of programs); True / False: only that one. The
    choice is made here (every program of the model shares the KV cache's place)."""

    def __init__(self, m, p: ChipParams, cap: int, chunk: int = 16, head_chunk: int = 2048,
                 layers: int | None = None, head: bool = True, streamed: bool | None = None):
        cfg = m.config
        n_layers = cfg.n_layers if layers is None else layers
        if not 1 <= n_layers <= cfg.n_layers:
            raise CompileError(f"layers must be 1..{cfg.n_layers}, got {layers}")
        self.n_layers, self.head = n_layers, head
        if m.act_passes != 2:
            raise CompileError("the compiler schedules SmolLM2 with A8x2 activations "
                               f"(act_passes = 2), got act_passes = {m.act_passes}")
        if cap < 1:
            raise CompileError(f"KV cache capacity must be at least 1 token, got {cap}")
        table = m.rope_cos.shape[0]
        if cap > table:
            raise CompileError(f"a context of {cap} tokens is beyond the model's RoPE table "
                               f"({table} positions; quantize with more positions)")
        if cap > cfg.context_length:
            raise CompileError(f"a context of {cap} tokens is beyond SmolLM2's context length "
                               f"{cfg.context_length}")
        if chunk < 1:
            raise CompileError(f"prefill chunk must be at least 1 token, got {chunk}")
        chunk = min(chunk, cap)  # no step is longer than the context
        self.m, self.cfg, self.cap, self.chunk = m, cfg, cap, chunk
        # the KV cache on chip: a region per layer and KV head, fixed for every program;
        # each layer's heads lie within the 2**16 words its KV base (kv_bases, set by the
        # layer's attention) reaches, their KvHead addresses relative to it
        heads, bases, kv, reach = [], [], 0, None
        for _ in range(n_layers):
            row = []
            for _ in range(cfg.n_kv_heads):
                row.append(KvHead(p, cfg.d_head, cap, base=row[-1].end if row else 0))
            if row[-1].end > 1 << 16:
                reach = row[-1].end
            heads.append(row)
            bases.append(kv)
            kv += row[-1].end
        have = buffer_depth(p, Buf.KV)
        on_chip = kv <= have and reach is None
        if streamed is None and not on_chip:
            streamed = True
        if not streamed and reach is not None:
            raise CompileError(
                f"the KV cache of one layer for {cap} positions ({cfg.n_kv_heads} KV heads "
                f"x {cfg.d_head} dims) needs {reach} KV words, more than the "
                f"{1 << 16} a KV base reaches (shorten the context)")
        if not streamed and kv > have:
            one = n_layers * cfg.n_kv_heads * KvHead(p, cfg.d_head, 1).end
            hint = "grow ChipParams.kv_sram_kib or shorten the context" if one <= have else (
                f"even one position needs {one} words: grow ChipParams.kv_sram_kib")
            raise CompileError(
                f"the KV cache for {cap} positions ({n_layers} layers x {cfg.n_kv_heads} "
                f"KV heads x {cfg.d_head} dims) needs {kv} KV words "
                f"({buffer_kib(p, Buf.KV, kv):.0f} KiB) but the chip has {have} "
                f"({buffer_kib(p, Buf.KV, have):.0f} KiB) and stays on chip (streamed = "
                f"False); {hint}")
        self.heads = heads
        self.kv_bases = bases  #: KV word where each layer's heads start (its kv_base)
        self.kv_words = kv
        self.vocab = m.lm_head.q.shape[0]
        self.streamed = bool(streamed)
        if not streamed:
            super().__init__(p, Image(p))
            self._head_chunks(head_chunk)
            self.logits_off = self.img.reserve(Buf.ACC, self._logit_words())
            # the default where the KV cache fits: the resident plan if its buffers do
            self.streamed = streamed is None and not self._resident_fits()
        if self.streamed:
            self._init_streamed(p, head_chunk)

    def _head_chunks(self, step: int) -> None:
        """The LM head in column chunks of ``step`` (objects kept: the image places each
        chunk once)."""
        m, V = self.m, self.vocab
        self.head_chunks = [(n0, min(n0 + step, V),
                             sub_weight(m.lm_head, 0, m.lm_head.q.shape[1], n0, min(n0 + step, V)))
                            for n0 in range(0, V, step)]

    # -- the streamed plan (the KV cache and the residual stream off-chip) -------------------

    def _init_streamed(self, p: ChipParams, head_chunk: int) -> None:
        """The off-chip KV cache: a region per layer and KV head in the image, each as one
        head's region of the KV buffer holds it (:class:`KvHead` for ``cap`` positions,
        values first: P·V's whole tiles of values stay within a region that ends the KV
        buffer); ``kv_slots`` of them fit the KV buffer at once. The compiled ``p`` raises
        ``offchip_kib`` where the configuration's cannot hold the weights (see
        :func:`_room_for`)."""
        cfg, cap, dh = self.cfg, self.cap, self.cfg.d_head
        have = buffer_depth(p, Buf.KV)
        one = KvHead(p, dh, cap).end
        if one > have:
            fit = max((c for c in range(1, cap) if KvHead(p, dh, c).end <= have), default=0)
            raise CompileError(
                f"SmolLM2's KV cache off-chip: one KV head's region for {cap} positions "
                f"needs {one} KV words ({buffer_kib(p, Buf.KV, one):.1f} KiB) but the chip's "
                f"KV buffer has {have} ({buffer_kib(p, Buf.KV, have):.1f} KiB): at most {fit} "
                "positions fit (shorten the context or grow ChipParams.kv_sram_kib)")
        # as many regions as the KV buffer holds, all within the 16-bit KV address fields
        self.kv_slots = [KvHead(p, dh, cap, base=k * one, values_first=True)
                         for k in range(min(have // one, cfg.n_kv_heads, (1 << 16) // one))]
        weights = [getattr(L, k) for L in self.m.layers[:self.n_layers]
                   for k in ("wq", "wk", "wv", "wo", "wg", "wu", "wd")]
        if self.head:
            weights.append(self.m.lm_head)
        self.weight_bytes = _weight_bytes(p, weights)
        B = p.offchip_bytes_per_cycle
        kv_bytes = self.n_layers * cfg.n_kv_heads * one * bus_words_per(p, Buf.KV) * B
        # room for the KV regions and ~16 programs of ~1 MiB per step length
        p = _room_for(p, self.weight_bytes, "SmolLM2", extra=kv_bytes + (16 << 20))
        CompiledModel.__init__(self, p, Image(p))
        A = buffer_depth(p, Buf.ACC)
        self._head_chunks(min(head_chunk, A // 4 * (p.cols // 2)))  # two two-pass chunks
        self.logits_off = self.img.reserve(Buf.ACC, self._logit_words())
        self.kv_off = [[self.img.reserve(Buf.KV, one) for _ in range(cfg.n_kv_heads)]
                       for _ in range(self.n_layers)]
        #: bus bytes a step moves to and from the KV cache (a LOAD and a STORE per region)
        self.kv_step_bytes = 2 * kv_bytes
        # the prefill chunk: the longest step the buffers hold (decode must fit)
        fits = [T for T in range(1, self.chunk + 1) if self._fits_streamed(T)]
        if not fits:
            self._streamed_plan(1)  # raises, naming what does not fit
        self.chunk = max(fits)

    def _fits_streamed(self, T: int) -> bool:
        try:
            self._streamed_plan(T)
        except _BufferError:
            return False
        return True

    def _streamed_plan(self, T: int) -> tuple[_Plan, dict, dict]:
        """The buffers of a streamed step of ``T`` tokens: ``(plan, ACC regions, other
        regions)``, checked (:class:`_BufferError` naming what does not fit)."""
        p, cfg, cap = self.p, self.cfg, self.cap
        R, C, PC = p.rows, p.cols, p.cols // 2
        D, H, Hkv, dh, Dff = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_ff
        WD, WF, WA, KD, KF = D // C, Dff // C, D // PC, D // R, Dff // R
        hw, nv, wq = dh // C, dh // PC, dh // R
        kq, nq = -(-cap // R), -(-cap // PC)
        A = buffer_depth(p, Buf.ACC)
        nbuf = 2 if cap * hw + 2 * 2 * T * hw <= A else 1  # head projections, alternating
        ns = 2 if 2 * T * nq + T * WA <= A else 1         # score buffers
        cw = max(1, min(WF, (A - T * WF) // (4 * T)))     # FFN column chunk (ACC words)
        WL = max(-(-(n1 - n0) // PC) for n0, n1, _ in self.head_chunks)
        pl = _Plan(p, f"SmolLM2 step of {T} tokens streamed (KV cache of {cap} positions "
                      "off-chip)")
        acc = pl.phases(
            Buf.ACC, "scratch",
            [("rows", T * WD)],
            [("RoPE table", cap * hw), ("head projections", nbuf * 2 * T * hw)],
            [("scores", ns * T * nq), ("attention", T * WA)],
            [("o", 2 * T * WD)],
            [("d_ff rows", T * WF), ("gate", 2 * T * cw), ("up", 2 * T * cw)],
            [("logits (2 buffers)", 2 * 2 * WL)] if self.head else [])
        reg = dict(nbuf=nbuf, ns=ns, cw=cw, WL=WL)
        reg["act_x"] = pl.alloc(Buf.ACT, 2 * T * max(KD, KF), "GEMM inputs (A8x2)")
        reg["act_q"] = pl.alloc(Buf.ACT, H * T * wq, "queries")
        reg["act_kv"] = pl.alloc(Buf.ACT, Hkv * 2 * T * wq, "new keys and values")
        reg["act_p"] = pl.alloc(Buf.ACT, 2 * 2 * T * kq, "P planes (two heads)")
        reg["prm_pv"] = pl.alloc(Buf.PRM, 3 * nv, "P·V parameters")
        reg["prm_n"] = pl.alloc(Buf.PRM, -(-D // C) + 1, "RMSNorm gains")
        groups = max(qw.q.shape[1] for qw in (self.m.layers[0].wd, self.m.lm_head)) \
            // p.numerics.group
        reg["prm_gemm"] = pl.rest(Buf.PRM, "streamed GEMM parameters", 2 * (groups + 1))
        reg["wgt"] = pl.rest(Buf.WGT, "streamed weights", 2 * max(KD, KF) * R)
        pl.alloc(Buf.KV, self.kv_slots[-1].end, f"{len(self.kv_slots)} KV head regions")
        pl.check()
        return pl, acc, reg

    def _build_streamed(self, T: int, name: str) -> Program:
        """A step of ``T`` tokens for a chip whose KV buffer does not hold the KV cache
        (and whose other buffers not a layer's intermediates): the step runs as a sequence
        of programs (:meth:`CompiledModel._place_parts`), each started at the step's ``pos``.

        Off-chip: ``H`` the residual stream (the input rows, then each layer's output; wide
        rows), and the KV cache, a region per layer and KV head laid out as in the KV buffer
        (:class:`KvHead` for ``cap`` positions). Per layer, ACC holds one phase at a time:

        - the attention RMSNorm of ``H``'s rows, quantized (A8x2) once for the three
          projections;
        - the RoPE table; K, V and Q a head at a time (their columns of the GEMM, the two
          passes summed, RoPE, quantized: kept in ACT);
        - per KV head: its region LOADed into a slot of the KV buffer (as many slots as it
          holds, in turn), the step's keys and values appended (``KV_APPEND`` at ``pos``),
          the region STOREd back whole (DMA addresses do not follow ``pos``), then QKᵀ,
          softmax, the A15 probabilities and P·V of its query heads into the attention rows;
        - the output projection, the residual with ``H``'s rows (stored back to ``H``), the
          FFN RMSNorm, quantized;
        - gate and up in column chunks (passes summed, SiLU·mul into the ``d_ff`` rows),
          quantized whole; the down projection and the residual, stored to ``H``.

        Then the final RMSNorm of the last row and the LM head in column chunks, as the
        resident plan. Every weight is read once per step."""
        p, cfg, m, cap = self.p, self.cfg, self.m, self.cap
        if not 1 <= T <= cap:
            raise CompileError(f"{name}: a step of {T} tokens does not fit the {cap}-token "
                               "KV cache")
        pl, acc, reg = self._streamed_plan(T)  # raises, naming what does not fit
        R, C, PC = p.rows, p.cols, p.cols // 2
        D, H, Hkv, dh, Dff = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_ff
        rep = H // Hkv
        WD, WF, WA = D // C, Dff // C, D // PC
        hw, nv, wq = dh // C, dh // PC, dh // R
        kq, nq = -(-cap // R), -(-cap // PC)
        nbuf, ns, cw, WL = reg["nbuf"], reg["ns"], reg["cw"], reg["WL"]
        act_x, act_q, act_kv, act_p = reg["act_x"], reg["act_q"], reg["act_kv"], reg["act_p"]
        prm_pv, prm_n, prm_gemm, wgt = reg["prm_pv"], reg["prm_n"], reg["prm_gemm"], reg["wgt"]
        a_rows, a_tab, a_hp = acc["rows"], acc["RoPE table"], acc["head projections"]
        a_s, a_att, a_o = acc["scores"], acc["attention"], acc["o"]
        a_f, a_g, a_u = acc["d_ff rows"], acc["gate"], acc["up"]
        a_h = a_o + T * WD  # the residual stream's rows, beside the summed projection

        b = _Recorder(p, self.img)
        bpa = bus_words_per(p, Buf.ACC)
        in_off = b.img.reserve(Buf.ACC, T * WD)
        h_off = in_off  # H: the input rows, then each layer's output

        def dma(op, buf, sram, words, off):
            b.emit(encode(op, buf=buf, sram=sram, words=words, off=off))

        def gemm(qw, out, stride, blocks=None, t_len=2 * T):
            b.weight_gemm(qw, None, act_x, t_len, out, stride, wgt, prm_gemm, blocks=blocks)

        rows = partial(_vec_rows, b, n=T)
        passes = partial(_a8x2_passes, b, act_x, n=T)  # QUANT A8X2 to act_x
        sum_passes = partial(_sum_passes, b, n=T)  # gemm_passes: the halves added

        def norm(vec, key):
            b.load(Buf.PRM, prm_n, norm_prm_fields(p, [vec], cfg.rms_eps), key=key)

        b.section("constants")
        pv_g, pv_o = self.kv_slots[0].pv_params(p.numerics.frac_bits)
        b.load(Buf.PRM, prm_pv, pv_g, key="pv_g")
        b.load(Buf.PRM, prm_pv + 2 * nv, pv_o, key="pv_o")
        rope = rope_fields(p, m.rope_cos[:cap], m.rope_sin[:cap])
        a_k = [act_kv + j * 2 * T * wq for j in range(Hkv)]
        a_v = [a + T * wq for a in a_k]
        a_q = [act_q + i * T * wq for i in range(H)]

        for li, L in enumerate(m.layers[:self.n_layers]):
            b.section(f"layer {li} attention")
            dma(Op.LOAD, Buf.ACC, a_rows, T * WD, h_off)
            norm(L.attn_norm, (id(L), 1))
            rows(VecFn.RMSNORM, a_rows, D, WD, prm=prm_n)
            passes(a_rows, D, WD)
            b.load(Buf.ACC, a_tab, rope, key=("rope", cap))
            k = 0
            projections = [(L.wk, j, a_k[j], True, 0) for j in range(Hkv)] + \
                [(L.wv, j, a_v[j], False, 1) for j in range(Hkv)] + \
                [(L.wq, i, a_q[i], True, 0) for i in range(H)]
            for qw, j, dst, with_rope, per_row in projections:
                s = a_hp + (k % nbuf) * 2 * T * hw
                k += 1
                gemm(qw, s - j * hw, hw, blocks=(j * hw, (j + 1) * hw))
                sum_passes(s, dh, hw)
                if with_rope:
                    rows(VecFn.ROPE, s, dh, hw, src_b=a_tab)
                b.vec(VecFn.QUANT, per_row=per_row, rows=T, length=dh, src_a=s,
                      src_stride=hw, dst=dst, dst_stride=wq)
            for j in range(Hkv):
                kvh = self.kv_slots[j % len(self.kv_slots)]
                size, off = kvh.end - kvh.base, self.kv_off[li][j]
                dma(Op.LOAD, Buf.KV, kvh.base, size, off)
                b.emit(kvh.append(KvKind.KEY, T, a_k[j]))
                b.emit(kvh.append(KvKind.VALUE, T, a_v[j]))
                dma(Op.STORE, Buf.KV, kvh.base, size, off)
                for r in range(rep):
                    i = j * rep + r
                    s = a_s + (i % ns) * T * nq
                    ap = act_p + (i % 2) * 2 * T * kq
                    b.emit(kvh.qk(T, a_q[i], s, nq))
                    b.vec(VecFn.SOFTMAX, half=1, rows=T, dyn=Dyn.POS, causal=1, src_a=s,
                          src_stride=nq, dst=s, dst_stride=nq)
                    b.vec(VecFn.QUANT, qmode=QuantMode.A15, vfold=1, causal=1, dyn=Dyn.POS,
                          half=1, rows=T, src_a=s, src_stride=nq, src_b=kvh.val_s,
                          vgroups=kvh.G, dst=ap, dst_stride=kq)
                    col = a_att + i * nv
                    b.emit(kvh.pv(0, T, ap, kq, col, prm_pv, prm_pv + 2 * nv, WA))
                    b.emit(kvh.pv(1, T, ap + T * kq, kq, col, prm_pv + nv, prm_pv + 2 * nv,
                                  WA))
            b.section(f"layer {li} output, FFN")
            passes(a_att, D, WA, half=1)
            gemm(L.wo, a_o, WD)
            sum_passes(a_o, D, WD)
            dma(Op.LOAD, Buf.ACC, a_h, T * WD, h_off)
            rows(VecFn.RESIDUAL, a_h, D, WD, src_b=a_o)
            dma(Op.STORE, Buf.ACC, a_h, T * WD, h_off)
            norm(L.ffn_norm, (id(L), 2))
            rows(VecFn.RMSNORM, a_h, D, WD, dst=a_o, prm=prm_n)
            passes(a_o, D, WD)
            for c0, c1 in _row_pieces(WF, -(-WF // cw)):
                n = c1 - c0
                gemm(L.wg, a_g - c0, n, blocks=(c0, c1))
                gemm(L.wu, a_u - c0, n, blocks=(c0, c1))
                sum_passes(a_g, n * C, n)
                sum_passes(a_u, n * C, n)
                b.vec(VecFn.SILU_MUL, rows=T, length=n * C, src_a=a_g, src_stride=n,
                      src_b=a_u, dst=a_f + c0, dst_stride=WF)
            passes(a_f, Dff, WF)
            gemm(L.wd, a_o, WD)
            sum_passes(a_o, D, WD)
            dma(Op.LOAD, Buf.ACC, a_h, T * WD, h_off)
            rows(VecFn.RESIDUAL, a_h, D, WD, src_b=a_o)
            dma(Op.STORE, Buf.ACC, a_h, T * WD, h_off)

        if not self.head:  # the residual stream out: H
            b.emit(encode(Op.SETPOS, add=1, value=T))
            return self._place_parts(name, T, b, pl, in_off, h_off, T, D, False, False,
                                     pos_hi=cap - T)
        b.section("final norm, LM head, logits")
        dma(Op.LOAD, Buf.ACC, a_rows, WD, h_off + (T - 1) * WD * bpa)
        norm(m.output_norm, "output_norm")
        rows(VecFn.RMSNORM, a_rows, D, WD, prm=prm_n, n=1)
        passes(a_rows, D, WD, n=1)
        a_l = acc["logits (2 buffers)"]
        for i, (n0, n1, qw) in enumerate(self.head_chunks):
            out = a_l + (i % 2) * 2 * WL
            gemm(qw, out, WL, t_len=2)
            sum_passes(out, n1 - n0, WL, n=1, half=1)
            dma(Op.STORE, Buf.ACC, out, -(-(n1 - n0) // PC),
                self.logits_off + (n0 // PC) * bpa)
        b.emit(encode(Op.SETPOS, add=1, value=T))
        return self._place_parts(name, T, b, pl, in_off, self.logits_off, 1, self.vocab,
                                 True, False, pos_hi=cap - T)

    def _logit_words(self) -> int:
        return -(-self.vocab // per_word(self.p, True))

    def chunks(self, n: int) -> list[int]:
        """Prefill chunk lengths for ``n`` prompt tokens."""
        return [min(self.chunk, n - i) for i in range(0, n, self.chunk)]

    def program(self, T: int) -> Program:
        name = f"smollm2_T{T}"
        if name not in self.programs:
            try:
                self._build(T, name)
            except ValueError as e:
                if not str(e).startswith("Image:"):
                    raise
                raise CompileError(f"{name}: the off-chip image is full ({e}; compile fewer "
                                   "step lengths per image or grow "
                                   "ChipParams.offchip_kib)") from None
        return self.programs[name]

    def _resident_fits(self) -> bool:
        """Whether the resident plan's buffers hold a decode step."""
        try:
            self._build(1, "smollm2_T1", probe=True)
        except _BufferError:
            return False
        return True

    def _build(self, T: int, name: str, probe: bool = False) -> Program | None:
        """The resident plan: the KV cache, the residual stream and every intermediate of a
        step on chip, one program (``probe``: only check that its buffers fit)."""
        if self.streamed:
            return self._build_streamed(T, name)
        p, cfg, m, cap = self.p, self.cfg, self.m, self.cap
        if not 1 <= T <= cap:
            raise CompileError(f"{name}: a step of {T} tokens does not fit the {cap}-token "
                               "KV cache")
        R, C, PC = p.rows, p.cols, p.cols // 2
        D, H, Hkv, dh, Dff = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_ff
        rep = H // Hkv
        T2 = 2 * T
        WD, WK, WF, WA = D // C, Hkv * dh // C, Dff // C, D // PC
        KD, KF = D // R, Dff // R
        kq, nv, wq, hw = -(-cap // R), dh // PC, dh // R, dh // C
        # GQA: the rep query heads of a KV head share one QKᵀ, their rows stacked (g = rep
        # rows of T each). It covers keys up to pos + g T - 1: the ones past pos + T - 1 are
        # not written yet (softmax never reads them), the KV words past the head's keys are
        # the region's next ones; unless that would read past the KV buffer, g = 1
        g = rep
        kvh, n_max = self.heads[-1][-1], -(-(cap + (g - 1) * T) // PC)
        if self.kv_bases[-1] + max(kvh.key + n_max * dh, kvh.key_s + n_max * (kvh.G + 1)) \
                > buffer_depth(p, Buf.KV):
            g = 1
        nq3 = -(-(cap + (g - 1) * T) // PC)  # score words of a row
        HC = max(n1 - n0 for n0, n1, _ in self.head_chunks)
        WL = -(-HC // PC)  # ACC words of one LM-head chunk row (INT8 GEMM: half layout)
        pl = _Plan(p, f"SmolLM2 step of {T} tokens (KV cache of {cap})")
        # ACC: RoPE table, residual stream, norm output; then the attention phase, the FFN
        # phase and the LM head reuse one scratch region
        acc_tab = pl.alloc(Buf.ACC, cap * hw, "RoPE table")
        acc_h = pl.alloc(Buf.ACC, T * WD, "residual stream")
        acc_n = pl.alloc(Buf.ACC, T * WD, "norm output")
        att = [("q", T2 * WD), ("k", T2 * WK), ("v", T2 * WK),
               ("scores (two KV heads)", 2 * rep * T * nq3), ("attention", T * WA),
               ("o", T2 * WD)]
        ffn = [("gate", T2 * WF), ("up", T2 * WF)]
        head = [("logits (2 buffers)", 2 * 2 * WL)]
        regions = pl.phases(Buf.ACC, "scratch (attention / FFN / LM head)", att, ffn, head)
        acc_q, acc_k, acc_v = regions["q"], regions["k"], regions["v"]
        acc_s, acc_att, acc_o = (regions["scores (two KV heads)"], regions["attention"],
                                 regions["o"])
        acc_g, acc_u = regions["gate"], regions["up"]
        acc_d = acc_u
        acc_l = regions["logits (2 buffers)"]
        # ACT: the GEMM inputs (two blocks), per query head q8 and P's planes, per KV head
        # k8 and v8
        act_x = pl.alloc(Buf.ACT, T2 * max(KD, KF), "GEMM inputs (A8x2)")
        act_q = pl.alloc(Buf.ACT, H * T * wq, "queries")
        act_p = pl.alloc(Buf.ACT, H * 2 * T * kq, "P planes")
        act_kv = pl.alloc(Buf.ACT, Hkv * 2 * T * wq, "new keys and values")
        # PRM: P·V parameters, the norm gains (reloaded per layer), streamed GEMM parameters
        Wc = -(-D // C)
        prm_pv = pl.alloc(Buf.PRM, 3 * nv, "P·V parameters")
        prm_n1 = pl.alloc(Buf.PRM, Wc + 1, "attention RMSNorm")
        prm_n2 = pl.alloc(Buf.PRM, Wc + 1, "FFN / final RMSNorm")
        groups = max(qw.q.shape[1] for qw in (m.layers[0].wd, m.lm_head)) // p.numerics.group
        prm_gemm = pl.rest(Buf.PRM, "streamed GEMM parameters", 2 * (groups + 1))
        wgt = pl.rest(Buf.WGT, "streamed weights", 2 * max(KD, KF) * R)
        pl.alloc(Buf.KV, self.kv_words, f"KV cache ({cap} positions)")
        pl.check()
        if probe:
            return None

        b = Builder(p, self.img, pos_hi=cap - T, reorder=True)
        b.top.update(pl.top)
        sections = []

        def gemm(qw, a, out, stride, t_len=T2):
            b.weight_gemm(qw, None, a, t_len, out, stride, wgt, prm_gemm)

        rows = partial(_vec_rows, b, n=T)
        passes = partial(_a8x2_passes, b, act_x, n=T)  # QUANT A8X2 to act_x
        sum_passes = partial(_sum_passes, b, n=T)  # gemm_passes: the halves added

        def section(label, start):
            sections.append((label, start, b.mark()))

        s0 = _sections_start(b)
        in_off = b.img.reserve(Buf.ACC, T * WD)
        b.emit(encode(Op.LOAD, buf=Buf.ACC, sram=acc_h, words=T * WD, off=in_off))
        b.load(Buf.ACC, acc_tab, rope_fields(p, m.rope_cos[:cap], m.rope_sin[:cap]),
               key=("rope", cap))
        pv_g, pv_o = self.heads[0][0].pv_params(p.numerics.frac_bits)
        b.load(Buf.PRM, prm_pv, pv_g, key="pv_g")
        b.load(Buf.PRM, prm_pv + 2 * nv, pv_o, key="pv_o")
        section("input, RoPE table, constants", s0)

        for li, L in enumerate(m.layers[:self.n_layers]):
            s0 = _sections_start(b)
            heads = self.heads[li]
            b.load(Buf.PRM, prm_n1, norm_prm_fields(p, [L.attn_norm], cfg.rms_eps),
                   key=(id(L), 1))
            b.load(Buf.PRM, prm_n2, norm_prm_fields(p, [L.ffn_norm], cfg.rms_eps),
                   key=(id(L), 2))
            # -- attention
            rows(VecFn.RMSNORM, acc_h, D, WD, dst=acc_n, prm=prm_n1)
            passes(acc_n, D, WD)
            # K and V first: their cache appends (KV unit) and quantization (ACT writes) run
            # while the grid computes Q
            for qw, out in ((L.wk, acc_k), (L.wv, acc_v)):
                gemm(qw, act_x, out, WK)
            sum_passes(acc_k, Hkv * dh, WK)
            sum_passes(acc_v, Hkv * dh, WK)
            for i in range(Hkv):
                rows(VecFn.ROPE, acc_k + i * hw, dh, WK, src_b=acc_tab)
            if b.kv_base != self.kv_bases[li]:  # the layer's heads: KV addresses from here
                b.emit(encode(Op.SETPOS, reg=PosReg.KV_BASE, value=self.kv_bases[li]))
            for j, kvh in enumerate(heads):
                a_k = act_kv + j * 2 * T * wq
                a_v = a_k + T * wq
                for acc, a, per_row in ((acc_k, a_k, 0), (acc_v, a_v, 1)):
                    b.vec(VecFn.QUANT, per_row=per_row, rows=T, length=dh,
                          src_a=acc + j * hw, src_stride=WK, dst=a, dst_stride=wq)
                b.emit(kvh.append(KvKind.KEY, T, a_k))
                b.emit(kvh.append(KvKind.VALUE, T, a_v))
            gemm(L.wq, act_x, acc_q, WD)
            sum_passes(acc_q, D, WD)
            for i in range(H):
                rows(VecFn.ROPE, acc_q + i * hw, dh, WD, src_b=acc_tab)
            # GQA: the query heads of a KV head share one QKᵀ (their rows stacked, t_len =
            # g T: the grid's pass over the keys serves all g); softmax, the A15
            # probabilities and P·V per query head. QKᵀ of the next group runs while this
            # one's softmaxes do (two score buffers).
            def scores(j, heads=heads):  # group j: query heads j g .. j g + g - 1
                a_q = act_q + j * g * T * wq
                for r in range(g):
                    b.vec(VecFn.QUANT, rows=T, length=dh, src_a=acc_q + (j * g + r) * hw,
                          src_stride=WD, dst=a_q + r * T * wq, dst_stride=wq)
                b.emit(heads[j * g // rep].qk(g * T, a_q, acc_s + (j % 2) * g * T * nq3,
                                              nq3))

            def probs_pv(j, heads=heads):
                kvh = heads[j * g // rep]
                for r in range(g):
                    i = j * g + r
                    s = acc_s + (j % 2) * g * T * nq3 + r * T * nq3
                    a_p = act_p + i * 2 * T * kq
                    b.vec(VecFn.SOFTMAX, half=1, rows=T, dyn=Dyn.POS, causal=1, src_a=s,
                          src_stride=nq3, dst=s, dst_stride=nq3)
                    b.vec(VecFn.QUANT, qmode=QuantMode.A15, vfold=1, causal=1, dyn=Dyn.POS,
                          half=1, rows=T, src_a=s, src_stride=nq3, src_b=kvh.val_s,
                          vgroups=kvh.G, dst=a_p, dst_stride=kq)
                    col = acc_att + i * nv
                    b.emit(kvh.pv(0, T, a_p, kq, col, prm_pv, prm_pv + 2 * nv, WA))
                    b.emit(kvh.pv(1, T, a_p + T * kq, kq, col, prm_pv + nv, prm_pv + 2 * nv,
                                  WA))

            scores(0)
            for j in range(H // g):
                if j + 1 < H // g:
                    scores(j + 1)
                probs_pv(j)
            passes(acc_att, D, WA, half=1)
            gemm(L.wo, act_x, acc_o, WD)
            sum_passes(acc_o, D, WD)
            rows(VecFn.RESIDUAL, acc_h, D, WD, src_b=acc_o)
            # -- feed-forward
            rows(VecFn.RMSNORM, acc_h, D, WD, dst=acc_n, prm=prm_n2)
            passes(acc_n, D, WD)
            gemm(L.wg, act_x, acc_g, WF)
            gemm(L.wu, act_x, acc_u, WF)
            sum_passes(acc_g, Dff, WF)
            sum_passes(acc_u, Dff, WF)
            rows(VecFn.SILU_MUL, acc_g, Dff, WF, src_b=acc_u)
            passes(acc_g, Dff, WF)
            gemm(L.wd, act_x, acc_d, WD)
            sum_passes(acc_d, D, WD)
            rows(VecFn.RESIDUAL, acc_h, D, WD, src_b=acc_d)
            section(f"layer {li}", s0)

        if not self.head:  # the residual stream out
            s0 = _sections_start(b)
            out_off = b.img.reserve(Buf.ACC, T * WD)
            b.emit(encode(Op.STORE, buf=Buf.ACC, sram=acc_h, words=T * WD, off=out_off))
            b.emit(encode(Op.SETPOS, add=1, value=T))
            section("store", s0)
            return self._place(name, T, b, pl, sections, in_off, out_off, T, D, False, False)

        # -- the last token: final RMSNorm, the LM head in column chunks, logits stored
        s0 = _sections_start(b)
        last = acc_h + (T - 1) * WD
        b.load(Buf.PRM, prm_n2, norm_prm_fields(p, [m.output_norm], cfg.rms_eps),
               key="output_norm")
        rows(VecFn.RMSNORM, last, D, WD, dst=acc_n, prm=prm_n2, n=1)
        passes(acc_n, D, WD, n=1)
        bus = bus_words_per(p, Buf.ACC)
        for i, (n0, n1, qw) in enumerate(self.head_chunks):
            out = acc_l + (i % 2) * 2 * WL
            gemm(qw, act_x, out, WL, t_len=2)
            sum_passes(out, n1 - n0, WL, n=1, half=1)
            n = -(-(n1 - n0) // PC)
            b.emit(encode(Op.STORE, buf=Buf.ACC, sram=out, words=n,
                          off=self.logits_off + (n0 // PC) * bus))
        b.emit(encode(Op.SETPOS, add=1, value=T))
        section("final norm, LM head, logits", s0)
        return self._place(name, T, b, pl, sections, in_off, self.logits_off, 1, self.vocab,
                           True, False)

    def inputs(self, lookup, ids) -> np.ndarray:
        """The input rows of a step on tokens ``ids``: their embeddings, ``lookup(ids,
        table)`` of the token table (the host's table lookup; wide rows [T, d])."""
        return lookup(np.asarray(ids, np.int64), self.m.token_embd)


# -- MiniLM -----------------------------------------------------------------------------------


class MiniLMCompiled(CompiledModel):
    """all-MiniLM-L6-v2 compiled for a chip; :meth:`program` builds (once) the encoder
    program of ``T`` tokens, in row blocks of ``block`` tokens (default: the largest that
    fits the buffers). ``layers``: only the first ``layers`` encoder layers;
    ``embeddings = False``: the input rows are the first layer's input (no embedding sums
    and LayerNorm on chip; the host writes wide hidden states). ``streamed``: None (the
    default) takes the resident plan where it fits the buffers and the micro-op memory,
    else the streamed one (:meth:`_build_streamed`); True / False: only that one."""

    def __init__(self, m, p: ChipParams, layers: int | None = None, embeddings: bool = True,
                 block: int | None = None, streamed: bool | None = None):
        n = m.config.n_layers if layers is None else layers
        if block is not None and block < 1:
            raise CompileError(f"row block must be at least 1 token, got {block}")
        self.block = block
        if not 1 <= n <= m.config.n_layers:
            raise CompileError(f"layers must be 1..{m.config.n_layers}, got {layers}")
        self.streamed = streamed
        self.m, self.cfg = m, m.config
        self.n_layers, self.embeddings = n, embeddings
        weights = [getattr(L, k) for L in m.layers[:n] for k in ("wq", "wk", "wv", "wo",
                                                                  "w1", "w2")]
        super().__init__(_room_for(p, _weight_bytes(p, weights), "MiniLM"), None)
        self.img = Image(self.p)

    def program(self, T: int) -> Program:
        name = f"minilm_T{T}"
        if name not in self.programs:
            try:
                self._build(T, name)
            except ValueError as e:
                if not str(e).startswith("Image:"):
                    raise
                raise CompileError(f"{name}: the off-chip image is full ({e}; compile fewer "
                                   "sequence lengths per image or grow "
                                   "ChipParams.offchip_kib)") from None
        return self.programs[name]

    def inputs(self, lookup, ids) -> np.ndarray:
        """The input rows of the program for tokens ``ids``: with ``embeddings``, the word,
        position and token-type (0) embeddings stacked ([3T, d]: ``lookup(ids, table)``, the
        host's table lookups; the chip adds them and normalizes), else the ``T`` hidden rows
        ``lookup`` returns for ``ids`` themselves."""
        ids = np.asarray(ids, np.int64)
        m = self.m
        if not self.embeddings:
            return lookup(ids, None)
        T = len(ids)
        return np.concatenate([lookup(ids, m.word), lookup(np.arange(T), m.pos),
                               lookup(np.zeros(T, np.int64), m.type)])

    def _build(self, T: int, name: str) -> Program:
        cfg = self.cfg
        if not 1 <= T <= cfg.max_seq_len:
            raise CompileError(f"{name}: {T} tokens; MiniLM takes 1..{cfg.max_seq_len}")
        if self.streamed:
            return self._build_streamed(T, name)
        err = None
        if self.block is not None:
            blocks = [min(self.block, T)]
        else:
            blocks = sorted({T, *(b for b in (256, 128, 64, 32, 16, 8) if b < T)},
                            reverse=True)
        for tb in blocks:
            try:
                return self._build_blocked(T, name, tb)
            except CompileError as e:  # the largest row block that fits; else the
                err = e                # shortfall of the smallest
        if self.streamed is False:
            raise err
        try:  # the resident plan does not fit: hidden states off-chip
            return self._build_streamed(T, name)
        except CompileError as e:
            raise CompileError(f"{err}; nor streamed: {e}") from None

    def _build_blocked(self, T: int, name: str, Tb: int) -> Program:
        """The encoder on ``T`` tokens in row blocks of ``Tb``.

        Per layer, phase A: per block, the K, V and Q projections (K and V appended to the
        cache at the block's positions as soon as their GEMM is done, while the next GEMM
        runs), the next block's GEMMs going on meanwhile (Q, K, V and GEMM inputs in two
        alternating sets). Phase B, software-pipelined over the blocks: attention of block
        ``k`` over all ``T`` keys (per head QKᵀ one head ahead of P·V, two score buffers),
        then the first half of block ``k - 1``'s FFN2, block ``k``'s output projection, the
        second half of ``k - 1``'s FFN2 and its residual / LayerNorm, then ``k``'s FFN1.
        The grid thus always has another block's GEMM to run while the vector unit quantizes
        (the attention output, h1, the GELU output: ACT writes, which the ACC write port
        rules let overlap any GEMM), and a block's rows of the hidden states are
        overwritten (stored, after the last layer) as its FFN2 ends. Each weight GEMM
        streams its weights once per block."""
        p, cfg, m = self.p, self.cfg, self.m
        R, C, PC = p.rows, p.cols, p.cols // 2
        D, H, dh, Dff = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_ff
        E = PC  # INT8 GEMM outputs: the half layout
        WD, WF, KD, KF = D // E, Dff // E, D // R, Dff // R
        nq, kq, nv, wq = -(-T // PC), -(-T // R), dh // PC, dh // R
        blocks = [(t0, min(Tb, T - t0)) for t0 in range(0, T, Tb)]
        pl = _Plan(p, f"MiniLM on {T} tokens (row blocks of {Tb})")
        acc_h = pl.alloc(Buf.ACC, T * WD, "hidden states")
        phase_a = [("q, k, v (two blocks)", 2 * 3 * Tb * WD)]
        phase_b = [("scores (two heads)", 2 * Tb * nq),
                   ("attention / h1 (two blocks)", 2 * Tb * WD), ("FFN1 / FFN2", Tb * WF)]
        reg = pl.phases(Buf.ACC, "block scratch", phase_a, phase_b)
        acc_qkv = reg["q, k, v (two blocks)"]
        acc_e = acc_qkv  # embeddings: position and token-type rows of a block (2 Tb rows)
        acc_s, acc_x, acc_f = (reg["scores (two heads)"], reg["attention / h1 (two blocks)"],
                               reg["FFN1 / FFN2"])
        act_x = pl.alloc(Buf.ACT, 2 * Tb * KD, "GEMM inputs (two blocks)")
        act_g = pl.alloc(Buf.ACT, Tb * KF, "FFN2 input")
        act_q = pl.alloc(Buf.ACT, H * T * wq, "queries of every head")
        act_kv = pl.alloc(Buf.ACT, H * 2 * Tb * wq, "a block's keys and values")
        act_p = pl.alloc(Buf.ACT, 2 * 2 * Tb * kq, "P planes (two heads)")
        heads, kv = [], 0
        for _ in range(H):
            heads.append(KvHead(p, dh, T, base=kv))
            kv = heads[-1].end
        pl.alloc(Buf.KV, kv, f"K and V of {H} heads")
        Wc = -(-D // C)
        prm_pv = pl.alloc(Buf.PRM, 3 * nv, "P·V parameters")
        prm_ln1 = pl.alloc(Buf.PRM, 2 * Wc + 1, "LayerNorm 1 / embedding LayerNorm")
        prm_ln2 = pl.alloc(Buf.PRM, 2 * Wc + 1, "LayerNorm 2")
        groups = Dff // p.numerics.group
        prm_gemm = pl.rest(Buf.PRM, "streamed GEMM parameters", 2 * (groups + 1))
        wgt = pl.rest(Buf.WGT, "streamed weights", 2 * max(KD, KF) * R)
        pl.check()

        b = Builder(p, self.img, reorder=True)
        b.top.update(pl.top)
        sections = []

        def section(label, start):
            sections.append((label, start, b.mark()))

        def gemm(qw, bias, a, n, out, stride, part=None):
            b.weight_gemm(qw, bias, a, n, out, stride, wgt, prm_gemm, blocks=part)

        def quant(src, stride, length, dst, n, **kw):
            b.vec(VecFn.QUANT, half=1, rows=n, length=length, src_a=src, src_stride=stride,
                  dst=dst, dst_stride=-(-length // R), **kw)

        def rows_op(fn, src, length, n, dst=None, **kw):
            W = length // E
            b.vec(fn, half=1, rows=n, length=length, src_a=src, src_stride=W,
                  dst=src if dst is None else dst, dst_stride=W, **kw)

        s0 = _sections_start(b)
        in_rows = 3 * T if self.embeddings else T
        in_off = b.img.reserve(Buf.ACC, in_rows * WD)
        bpw = bus_words_per(p, Buf.ACC)
        b.emit(encode(Op.LOAD, buf=Buf.ACC, sram=acc_h, words=T * WD, off=in_off))
        pv_g, pv_o = heads[0].pv_params(p.numerics.frac_bits)
        b.load(Buf.PRM, prm_pv, pv_g, key="pv_g")
        b.load(Buf.PRM, prm_pv + 2 * nv, pv_o, key="pv_o")
        if self.embeddings:
            # word + position + token type 0 (the host's lookups, the input rows), LayerNorm
            b.load(Buf.PRM, prm_ln1, norm_prm_fields(p, [m.emb_ln_g, m.emb_ln_b], cfg.ln_eps),
                   key="emb_ln")
            for t0, n in blocks:
                h = acc_h + t0 * WD
                for k in (1, 2):  # the block's position rows, then its token-type rows
                    b.emit(encode(Op.LOAD, buf=Buf.ACC, sram=acc_e + (k - 1) * n * WD,
                                  words=n * WD, off=in_off + (k * T + t0) * WD * bpw))
                rows_op(VecFn.RESIDUAL, h, D, n, src_b=acc_e)
                rows_op(VecFn.RESIDUAL, h, D, n, src_b=acc_e + n * WD)
                rows_op(VecFn.LAYERNORM, h, D, n, prm=prm_ln1)
        section("embeddings" if self.embeddings else "input", s0)

        nb = len(blocks)
        out_off = b.img.reserve(Buf.ACC, T * WD)
        w2_blocks = -(-D // E)
        w2_halves = [(0, w2_blocks // 2), (w2_blocks // 2, w2_blocks)]

        def layer(L, last_layer):
            """One encoder layer: phase A, then phase B (see above)."""
            b.load(Buf.PRM, prm_ln1, norm_prm_fields(p, [L.ln1_g, L.ln1_b], cfg.ln_eps),
                   key=(id(L), 1))
            b.load(Buf.PRM, prm_ln2, norm_prm_fields(p, [L.ln2_g, L.ln2_b], cfg.ln_eps),
                   key=(id(L), 2))

            # -- phase A: K, V, Q of each block; K and V into the cache at its positions
            def x_of(k):  # a block's GEMM input (A8 rows), two alternating buffers
                return act_x + (k % 2) * Tb * KD

            quant(acc_h, WD, D, x_of(0), blocks[0][1])
            for k, (t0, n) in enumerate(blocks):
                base = acc_qkv + (k % 2) * 3 * Tb * WD
                acc_q, acc_k, acc_v = base, base + Tb * WD, base + 2 * Tb * WD
                for qw, bias, out in ((L.wk, L.bk, acc_k), (L.wv, L.bv, acc_v),
                                      (L.wq, L.bq, acc_q)):
                    gemm(qw, bias, x_of(k), n, out, WD)
                b.emit(encode(Op.SETPOS, value=t0))
                for kind, acc, per_row in ((KvKind.KEY, acc_k, 0), (KvKind.VALUE, acc_v, 1)):
                    for i, kvh in enumerate(heads):
                        a = act_kv + (2 * i + kind) * Tb * wq
                        quant(acc + i * dh // E, WD, dh, a, n, per_row=per_row)
                        b.emit(kvh.append(kind, n, a))
                if k + 1 < nb:  # the next block's GEMM input before this one's queries
                    t1, n1 = blocks[k + 1]
                    quant(acc_h + t1 * WD, WD, D, x_of(k + 1), n1)
                for i in range(H):
                    quant(acc_q + i * dh // E, WD, dh, act_q + (i * T + t0) * wq, n)

            # -- phase B, software-pipelined over the blocks (see the docstring)
            ax = act_x  # the attention output, then h1 (quantized)

            def xb(k):  # a block's attention output -> Wo output -> h1
                return acc_x + (k % 2) * Tb * WD

            def attention(k, extra):
                """Attention of block ``k``, QKᵀ a head ahead of P·V; ``extra``: VEC ops
                (callables) spread between the heads."""
                t0, n = blocks[k]
                b.emit(encode(Op.SETPOS, value=T - n))  # pos + rows = T keys visible
                every = -(-H // max(len(extra), 1))

                def scores(i):
                    kvh = heads[i]
                    s = acc_s + (i % 2) * Tb * nq
                    a_p = act_p + (i % 2) * 2 * Tb * kq
                    b.emit(kvh.qk(n, act_q + (i * T + t0) * wq, s, nq))
                    b.vec(VecFn.SOFTMAX, half=1, rows=n, dyn=Dyn.POS, src_a=s,
                          src_stride=nq, dst=s, dst_stride=nq)
                    b.vec(VecFn.QUANT, qmode=QuantMode.A15, vfold=1, dyn=Dyn.POS, half=1,
                          rows=n, src_a=s, src_stride=nq, src_b=kvh.val_s, vgroups=kvh.G,
                          dst=a_p, dst_stride=kq)

                def pv(i):
                    kvh = heads[i]
                    a_p = act_p + (i % 2) * 2 * Tb * kq
                    col = xb(k) + i * dh // E
                    b.emit(kvh.pv(0, n, a_p, kq, col, prm_pv, prm_pv + 2 * nv, WD))
                    b.emit(kvh.pv(1, n, a_p + n * kq, kq, col, prm_pv + nv, prm_pv + 2 * nv,
                                  WD))

                scores(0)
                for i in range(H):
                    if i + 1 < H:
                        scores(i + 1)
                    pv(i)
                    if extra and i % every == every - 1:
                        extra.pop(0)()
                while extra:
                    extra.pop(0)()
                quant(xb(k), WD, D, ax, n)

            def ffn2_quant(k, pieces):  # quantize block k's GELU output, in row pieces
                _, n = blocks[k]
                cuts = _row_pieces(n, pieces)
                return [lambda r0=r0, r1=r1: quant(acc_f + r0 * WF, WF, Dff, act_g + r0 * KF,
                                                   r1 - r0) for r0, r1 in cuts]

            def ffn2(k, part):
                gemm(L.w2, L.b2, act_g, blocks[k][1], acc_f, WD, part)

            def finish(k):  # h = LN2(h1 + FFN2), over the block's rows of the hidden states
                t0, n = blocks[k]
                h = acc_h + t0 * WD
                rows_op(VecFn.RESIDUAL, xb(k), D, n, src_b=acc_f)
                rows_op(VecFn.LAYERNORM, xb(k), D, n, dst=h, prm=prm_ln2)
                if last_layer:
                    b.emit(encode(Op.STORE, buf=Buf.ACC, sram=h, words=n * WD,
                                  off=out_off + t0 * WD * bpw))

            for k, (t0, n) in enumerate(blocks):
                attention(k, ffn2_quant(k - 1, H) if k else [])
                if k:
                    ffn2(k - 1, w2_halves[0])
                gemm(L.wo, L.bo, ax, n, xb(k), WD)
                rows_op(VecFn.RESIDUAL, xb(k), D, n, src_b=acc_h + t0 * WD)
                rows_op(VecFn.LAYERNORM, xb(k), D, n, prm=prm_ln1)  # h1
                quant(xb(k), WD, D, ax, n)
                if k:
                    ffn2(k - 1, w2_halves[1])
                    finish(k - 1)
                gemm(L.w1, L.b1, ax, n, acc_f, WF)
                rows_op(VecFn.GELU, acc_f, Dff, n)
            for q in ffn2_quant(nb - 1, 1):
                q()
            ffn2(nb - 1, None)
            finish(nb - 1)

        for li, L in enumerate(m.layers[:self.n_layers]):
            s0 = _sections_start(b)
            layer(L, li == self.n_layers - 1)
            section(f"layer {li}", s0)

        prog = self._place(name, T, b, pl, sections, in_off, out_off, T, D, True, True)
        prog.block, prog.in_rows = Tb, in_rows
        return prog

    def _build_streamed(self, T: int, name: str) -> Program:
        """The encoder on ``T`` tokens for a chip whose buffers hold neither the hidden
        states nor one layer's intermediates: everything between sub-layers lives off-chip
        (bus regions of the image), and the step runs as several programs
        (:meth:`CompiledModel._place_parts`) when it is longer than the micro-op memory.

        Off-chip: ``H`` the hidden states (wide rows, the ``half`` layout; the layer's input,
        then its output: the step's output after the last layer), ``X`` their A8 rows (the
        next layer's GEMM input, quantized once), ``ATT`` the attention output, ``H1`` the
        rows after LayerNorm 1. Per layer:

        - **Q, K, V and attention, a group of heads at a time** (as many as the KV buffer
          holds for ``T`` tokens): per row block, the group's columns of the K, V and Q
          projections from ``X``'s rows (K and V quantized per head and appended to the cache
          at the block's positions, Q kept in ACT for every row); then per query block and
          head QKᵀ over the ``T`` keys, softmax, the A15 probabilities and P·V, the group's
          columns of each row stored to ``ATT``;
        - **output projection and FFN, a row block at a time**: ``ATT``'s rows quantized,
          W_o, the residual with ``H``'s rows and LayerNorm 1 (h1: stored to ``H1`` while
          FFN1's rows take its ACC words, loaded back for the second residual); FFN1 in
          column chunks (GELU, then repacked into a full-layout row of ``d_ff``, so a row
          takes ``d_ff / cols`` ACC words), the row quantized whole, FFN2, the residual and
          LayerNorm 2; the rows stored to ``H`` and, quantized, to ``X``.

        Each weight GEMM streams its weights once per row block (the grid's inputs are
        rows of a block). The block sizes are the largest the buffers hold."""
        p, cfg, m = self.p, self.cfg, self.m
        R, C, PC = p.rows, p.cols, p.cols // 2
        D, H, dh, Dff = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_ff
        E = PC  # INT8 GEMM outputs: the half layout
        WD, WF, KD, KF = D // E, Dff // E, D // R, Dff // R
        WFf = -(-Dff // C)  # a d_ff row repacked to the full layout
        wh, wq = dh // E, dh // R
        nq, kq, nv = -(-T // PC), -(-T // R), dh // PC
        Wc = -(-D // C)
        dep = {b: buffer_depth(p, b) for b in Buf}
        A, AT = dep[Buf.ACC], dep[Buf.ACT]
        what = f"MiniLM on {T} tokens streamed from off-chip memory"

        def largest(fits, top=T):
            return max((n for n in range(1, top + 1) if fits(n)), default=1)

        # KV: a group of heads, each with its T keys and values
        one = KvHead(p, dh, T).end
        if one > dep[Buf.KV]:
            t_max = max((t for t in range(1, T) if KvHead(p, dh, t).end <= dep[Buf.KV]),
                        default=0)
            raise CompileError(
                f"{what}: the keys and values of one head for {T} tokens need {one} KV words "
                f"({buffer_kib(p, Buf.KV, one):.1f} KiB) but the chip has {dep[Buf.KV]} "
                f"(grow ChipParams.kv_sram_kib; at most {t_max} tokens fit)")
        # heads per group: as many as KV holds, but no more than lets one row block take
        # every row (fewer weight passes)
        ng = max(1, min(dep[Buf.KV] // one, H, A // (3 * wh * T)))
        while H % ng:
            ng -= 1
        # attention: two score buffers and the group's output columns per query row
        Tq = largest(lambda n: 2 * n * nq + n * ng * wh <= A and 4 * n * kq <= AT // 4)
        # projections: K, V, Q outputs of the group's columns
        act_ab = T * ng * wq + 4 * Tq * kq
        Ta = largest(lambda n: 3 * n * ng * wh <= A and
                     act_ab + 2 * n * KD + 2 * ng * n * wq <= AT)
        # output projection and FFN: the d_ff rows (full layout; before them two wide rows
        # of d per row: the W_o output and the residual's other operand) and an FFN1 chunk
        # of at least one full-layout word
        cpb = C // PC  # output blocks per full-layout word
        WR = max(WFf, 2 * WD)
        Tc = largest(lambda n: n * (WR + cpb) <= A and n * (2 * KD + KF) <= AT)
        cb = max(cpb, min(WF, (A - Tc * WR) // Tc // cpb * cpb))
        # embeddings: word, position and token-type rows
        Te = largest(lambda n: 3 * n * WD <= A and n * KD <= AT)

        pl = _Plan(p, f"{what} (row blocks of {Ta}, {Tq} and {Tc})")
        emb = [("word, position, type rows", 3 * Te * WD)] if self.embeddings else \
            [("input rows", Te * WD)]
        acc = pl.phases(Buf.ACC, "block scratch", emb,
                        [("K, V, Q of a group", 3 * Ta * ng * wh)],
                        [("scores (two heads)", 2 * Tq * nq), ("attention", Tq * ng * wh)],
                        [("d_ff rows", Tc * WR), ("FFN1 chunk", Tc * cb)])
        act = pl.phases(Buf.ACT, "block scratch", [("A8 rows", Te * KD)],
                        [("queries of a group", T * ng * wq), ("P planes", 4 * Tq * kq),
                         ("GEMM inputs (two blocks)", 2 * Ta * KD),
                         ("keys and values", 2 * ng * Ta * wq)],
                        [("GEMM input", Tc * KD), ("FFN2 input", Tc * KF),
                         ("next layer's rows", Tc * KD)])
        heads, kv = [], 0
        for _ in range(ng):
            heads.append(KvHead(p, dh, T, base=kv))
            kv = heads[-1].end
        pl.alloc(Buf.KV, kv, f"K and V of {ng} heads")
        prm_pv = pl.alloc(Buf.PRM, 3 * nv, "P·V parameters")
        prm_ln = pl.alloc(Buf.PRM, 2 * Wc + 1, "LayerNorm")
        groups = Dff // p.numerics.group
        prm_gemm = pl.rest(Buf.PRM, "streamed GEMM parameters", 2 * (groups + 1))
        wgt = pl.rest(Buf.WGT, "streamed weights", 2 * max(KD, KF) * R)
        pl.check()

        b = _Recorder(p, self.img)
        bpa, bpt = bus_words_per(p, Buf.ACC), bus_words_per(p, Buf.ACT)
        in_rows = 3 * T if self.embeddings else T
        in_off = b.img.reserve(Buf.ACC, in_rows * WD)
        h_off = b.img.reserve(Buf.ACC, T * WD) if self.embeddings else in_off
        x_off = b.img.reserve(Buf.ACT, T * KD)
        att_off = b.img.reserve(Buf.ACC, T * WD)
        h1_off = b.img.reserve(Buf.ACC, T * WD)

        def gemm(qw, bias, a, n, out, stride, part=None):
            b.weight_gemm(qw, bias, a, n, out, stride, wgt, prm_gemm, blocks=part)

        def quant(src, stride, length, dst, n, half=1, **kw):
            b.vec(VecFn.QUANT, half=half, rows=n, length=length, src_a=src, src_stride=stride,
                  dst=dst, dst_stride=-(-length // R), **kw)

        def rows_op(fn, src, length, n, dst=None, **kw):
            W = length // E
            b.vec(fn, half=1, rows=n, length=length, src_a=src, src_stride=W,
                  dst=src if dst is None else dst, dst_stride=W, **kw)

        def dma(op, buf, sram, words, off):
            b.emit(encode(op, buf=buf, sram=sram, words=words, off=off))

        def ln_params(vectors, key):
            b.load(Buf.PRM, prm_ln, norm_prm_fields(p, vectors, cfg.ln_eps), key=key)

        def rows_out(h, t0, n, last, xn):
            """New hidden rows (ACC ``h``) to ``H`` and, quantized (ACT ``xn``), to ``X``."""
            dma(Op.STORE, Buf.ACC, h, n * WD, h_off + t0 * WD * bpa)
            if not last:
                quant(h, WD, D, xn, n)
                dma(Op.STORE, Buf.ACT, xn, n * KD, x_off + t0 * KD * bpt)

        def blocks_of(tb):
            return [(t0, min(tb, T - t0)) for t0 in range(0, T, tb)]

        pv_g, pv_o = heads[0].pv_params(p.numerics.frac_bits)
        b.load(Buf.PRM, prm_pv, pv_g, key="pv_g")
        b.load(Buf.PRM, prm_pv + 2 * nv, pv_o, key="pv_o")
        if self.embeddings:
            b.section("embeddings")
            e = acc["word, position, type rows"]
            ln_params([m.emb_ln_g, m.emb_ln_b], "emb_ln")
            for t0, n in blocks_of(Te):
                for k in range(3):  # the block's word, position and token-type rows
                    dma(Op.LOAD, Buf.ACC, e + k * n * WD, n * WD,
                        in_off + (k * T + t0) * WD * bpa)
                rows_op(VecFn.RESIDUAL, e, D, n, src_b=e + n * WD)
                rows_op(VecFn.RESIDUAL, e, D, n, src_b=e + 2 * n * WD)
                rows_op(VecFn.LAYERNORM, e, D, n, prm=prm_ln)
                rows_out(e, t0, n, False, act["A8 rows"])
        else:
            b.section("input")
            for t0, n in blocks_of(Te):
                h = acc["input rows"]
                dma(Op.LOAD, Buf.ACC, h, n * WD, in_off + t0 * WD * bpa)
                quant(h, WD, D, act["A8 rows"], n)
                dma(Op.STORE, Buf.ACT, act["A8 rows"], n * KD, x_off + t0 * KD * bpt)

        def attention_group(L, i0):
            """Q, K, V of heads ``i0 ..`` (the group) and their attention (see above)."""
            j0, j1 = i0 * wh, (i0 + ng) * wh  # the group's output blocks
            a_k = acc["K, V, Q of a group"]
            a_v, a_q = a_k + Ta * ng * wh, a_k + 2 * Ta * ng * wh
            q_rows = act["queries of a group"]
            for k, (t0, n) in enumerate(blocks_of(Ta)):
                ax = act["GEMM inputs (two blocks)"] + (k % 2) * Ta * KD
                dma(Op.LOAD, Buf.ACT, ax, n * KD, x_off + t0 * KD * bpt)
                for qw, bias, out in ((L.wk, L.bk, a_k), (L.wv, L.bv, a_v),
                                      (L.wq, L.bq, a_q)):
                    gemm(qw, bias, ax, n, out - j0, ng * wh, (j0, j1))
                b.emit(encode(Op.SETPOS, value=t0))
                for kind, src, per_row in ((KvKind.KEY, a_k, 0), (KvKind.VALUE, a_v, 1)):
                    for ih, kvh in enumerate(heads):
                        a = act["keys and values"] + (2 * ih + kind) * Ta * wq
                        quant(src + ih * wh, ng * wh, dh, a, n, per_row=per_row)
                        b.emit(kvh.append(kind, n, a))
                for ih in range(ng):
                    quant(a_q + ih * wh, ng * wh, dh, q_rows + (ih * T + t0) * wq, n)
            out = acc["attention"]
            for t0, n in blocks_of(Tq):
                b.emit(encode(Op.SETPOS, value=T - n))  # pos + rows = T keys visible

                def scores(ih, t0=t0, n=n):
                    kvh = heads[ih]
                    s = acc["scores (two heads)"] + (ih % 2) * Tq * nq
                    a_p = act["P planes"] + (ih % 2) * 2 * Tq * kq
                    b.emit(kvh.qk(n, q_rows + (ih * T + t0) * wq, s, nq))
                    b.vec(VecFn.SOFTMAX, half=1, rows=n, dyn=Dyn.POS, src_a=s,
                          src_stride=nq, dst=s, dst_stride=nq)
                    b.vec(VecFn.QUANT, qmode=QuantMode.A15, vfold=1, dyn=Dyn.POS, half=1,
                          rows=n, src_a=s, src_stride=nq, src_b=kvh.val_s, vgroups=kvh.G,
                          dst=a_p, dst_stride=kq)

                scores(0)
                for ih, kvh in enumerate(heads):
                    if ih + 1 < ng:
                        scores(ih + 1)
                    a_p = act["P planes"] + (ih % 2) * 2 * Tq * kq
                    col = out + ih * wh
                    b.emit(kvh.pv(0, n, a_p, kq, col, prm_pv, prm_pv + 2 * nv, ng * wh))
                    b.emit(kvh.pv(1, n, a_p + n * kq, kq, col, prm_pv + nv, prm_pv + 2 * nv,
                                  ng * wh))
                if ng == H:  # whole rows
                    dma(Op.STORE, Buf.ACC, out, n * WD, att_off + t0 * WD * bpa)
                else:
                    for t in range(n):
                        dma(Op.STORE, Buf.ACC, out + t * ng * wh, ng * wh,
                            att_off + ((t0 + t) * WD + j0) * bpa)

        def output_ffn(L, li, last):
            """W_o, LayerNorm 1, the FFN and LayerNorm 2 of every row block (see above)."""
            f = acc["d_ff rows"]
            chunk = acc["FFN1 chunk"]
            xa, g = act["GEMM input"], act["FFN2 input"]
            for t0, n in blocks_of(Tc):
                h1 = f + n * WD  # W_o's output, then h1 (stored while the FFN runs)
                dma(Op.LOAD, Buf.ACC, f, n * WD, att_off + t0 * WD * bpa)
                quant(f, WD, D, xa, n)
                gemm(L.wo, L.bo, xa, n, h1, WD)
                dma(Op.LOAD, Buf.ACC, f, n * WD, h_off + t0 * WD * bpa)
                rows_op(VecFn.RESIDUAL, h1, D, n, src_b=f)
                ln_params([L.ln1_g, L.ln1_b], (id(L), 1))
                rows_op(VecFn.LAYERNORM, h1, D, n, prm=prm_ln)
                dma(Op.STORE, Buf.ACC, h1, n * WD, h1_off + t0 * WD * bpa)
                quant(h1, WD, D, xa, n)
                for c0 in range(0, WF, cb):
                    c1 = min(WF, c0 + cb)
                    gemm(L.w1, L.b1, xa, n, chunk - c0, c1 - c0, (c0, c1))
                    b.vec(VecFn.GELU, half=1, rows=n, length=(c1 - c0) * E, src_a=chunk,
                          src_stride=c1 - c0, dst=chunk, dst_stride=c1 - c0)
                    b.vec(VecFn.COPY, half=1, repack=1, rows=n, length=(c1 - c0) * E,
                          src_a=chunk, src_stride=c1 - c0, dst=f + c0 // cpb,
                          dst_stride=WFf)
                quant(f, WFf, Dff, g, n, half=0)
                dma(Op.LOAD, Buf.ACC, h1, n * WD, h1_off + t0 * WD * bpa)
                gemm(L.w2, L.b2, g, n, f, WD)
                rows_op(VecFn.RESIDUAL, h1, D, n, src_b=f)
                ln_params([L.ln2_g, L.ln2_b], (id(L), 2))
                rows_op(VecFn.LAYERNORM, h1, D, n, prm=prm_ln)
                rows_out(h1, t0, n, last, act["next layer's rows"])

        for li, L in enumerate(m.layers[:self.n_layers]):
            b.section(f"layer {li} attention")
            for i0 in range(0, H, ng):
                attention_group(L, i0)
            b.section(f"layer {li} output, FFN")
            output_ffn(L, li, li == self.n_layers - 1)

        prog = self._place_parts(name, T, b, pl, in_off, h_off, T, D, True, True)
        prog.block, prog.in_rows = Tc, in_rows
        return prog


def _weight_bytes(p: ChipParams, weights) -> int:
    """Bytes of off-chip memory the weight GEMMs of ``weights`` (QWeights) take in the
    image (tiles, group words and out words, as :meth:`Builder.weight_gemm` places them):
    also the bytes a step that runs each of them once reads from it."""
    B, total = p.offchip_bytes_per_cycle, 0
    for qw in weights:
        N, K = qw.q.shape
        nb = -(-N // (p.cols if qw.bits == 4 else p.cols // 2))
        total += nb * K * bus_words_per(p, Buf.WGT) * B
        total += nb * (K // p.numerics.group + 1) * bus_words_per(p, Buf.PRM) * B
    return total


def _room_for(p: ChipParams, weights: int, what: str, extra: int | None = None) -> ChipParams:
    """``p``, with ``offchip_kib`` raised (to a power of two) if its off-chip memory cannot
    hold ``weights`` bytes of weights and room for programs (half as much again); raised, it
    has room for as much again and 16 MiB (the streamed plan's programs: ~1 MiB per layer
    and sequence length). ``extra``: the bytes besides the weights instead (SmolLM2's
    off-chip KV cache and programs), without the margins. Off-chip memory is the host's (a
    board serves it over its link), addressed by the DMA's 32-bit bus-word ``off``; only the
    DMA's range check knows its size."""
    fit = weights * 3 // 2 if extra is None else weights + extra
    if p.offchip_kib * 1024 >= fit:
        return p
    need = 2 * weights + (16 << 20) if extra is None else fit
    kib = 1 << max(0, (-(-need // 1024) - 1).bit_length())
    if kib > 1 << 22 or kib * 1024 // p.offchip_bytes_per_cycle > 1 << 32:
        raise CompileError(f"{what}: {weights / 2**20:.0f} MiB of weights do not fit the "
                           "off-chip memory the chip addresses")
    return replace(p, offchip_kib=kib)


def _row_pieces(n: int, pieces: int) -> list[tuple[int, int]]:
    """Rows ``0 .. n - 1`` in ``pieces`` contiguous, nearly equal ranges (none empty)."""
    pieces = max(1, min(pieces, n))
    return [(n * i // pieces, n * (i + 1) // pieces) for i in range(pieces)]

"""Benchmark the vector unit on the whole chip under Verilator: cycles per row of each VEC
function, and the share of a transformer layer's cycles spent in non-GEMM (VEC) work.

(a) **Per-row cycles.** One ``VEC`` micro-op per job (``sim.chip_rtl.run_jobs(...,
vector=True)``) for every ``VecFn`` (and every ``QuantMode``) at each ``--widths`` row
length, in the full (``E = cols`` elements per ACC word) and half (``E = cols / 2``, what
INT8-mode GEMMs write) layouts, on 1 row and on ``--rows`` rows. Printed per op:
``BUSY_VEC`` (cycles from the op entering the unit's queue to its last write) for the
``--rows`` op, *per row* = the steady-state cost of one more row (``(c_rows - c_1) /
(rows - 1)``), *fixed* = the per-op overhead (pipeline fill, row latency, drain:
``c_1 - per row``), and words written per cycle. The row's data (random wide values, norm
constants, a RoPE table) is loaded once by the first job; each job runs its op in place,
waits and stores the result.

(b) **Layer share.** One-layer programs of the compiler (``sw/compiler.py``: an
all-MiniLM-L6-v2 encoder layer, INT8 weights, half layout; a SmolLM2-135M decoder layer
prefill, W4A8 weights, A8x2 activations) with the real weights, on the chip as built (off-chip bus
``offchip_bytes_per_cycle`` = 8 B/cycle) and with a wide bus (``--wide-bus``, default 64
B/cycle, a build of its own: the weights arrive as fast as the grid can take them, so
what remains is the compute the layer needs; the programs stream every weight from off
chip, none can stay on chip). Printed: cycles, the busy cycles of each unit (``Counter``),
the memory roofline (bus words moved: ``LOAD_WORDS + STORE_WORDS`` + the program), MAC
utilization ``GRID_ROWS / CYCLES`` (grid rows per cycle: 1.0 = every MAC busy every
cycle), the VEC busy cycles not overlapped with GEMM (cycles where the vector unit works
and the grid has nothing: the non-GEMM work on the critical path) and what bounds the
layer. The overlap comes from ``sim.timing.predict`` (per-op start / end), used only when
its counters equal the RTL's for that run; otherwise only the bounds the counters imply are
printed (``max(0, BUSY_VEC - BUSY_GEMM)`` .. ``min(BUSY_VEC, CYCLES - BUSY_GEMM)``).

Every figure is of a checked run: after each job the whole off-chip memory and the untimed
counters equal ``sim.isa_sim.IsaSim``'s on the same jobs (itself checked against
``sim.golden`` by the tests), and each layer's stored output equals the golden model's
(``sim.golden_models``) bit for bit. A mismatch stops the script before it prints.

Run: ``.venv/bin/python scripts/bench_vector.py`` (``--help`` for the options). The first
run builds the vector chip with Verilator twice (one build per bus width, several minutes
each); later runs reuse the builds until ``hw/`` changes.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from hw.isa import (  # noqa: E402
    Buf,
    Counter,
    Op,
    QuantMode,
    Unit,
    VecFn,
    buffer_depth,
    encode,
)
from hw.params import ChipParams  # noqa: E402
from sw.programs import (  # noqa: E402
    Image,
    norm_prm_fields,
    per_word,
    uop_bus_words,
)

#: The chip of every run: the default one with the ACC (256 KiB) and off-chip memory
#: (8 MiB) the layer programs need (``tests/test_layer_programs.py``).
BASE = dict(acc_sram_kib=256, offchip_kib=8192)

#: (label, VEC fields) of part (a); ``length``, rows, layout and addresses are filled in.
OPS = [
    ("RESIDUAL", dict(fn=VecFn.RESIDUAL)),
    ("GELU", dict(fn=VecFn.GELU)),
    ("SILU_MUL", dict(fn=VecFn.SILU_MUL)),
    ("ROPE", dict(fn=VecFn.ROPE)),
    ("LAYERNORM", dict(fn=VecFn.LAYERNORM)),
    ("RMSNORM", dict(fn=VecFn.RMSNORM)),
    ("SOFTMAX", dict(fn=VecFn.SOFTMAX)),
    ("QUANT INT8", dict(fn=VecFn.QUANT, qmode=QuantMode.INT8)),
    ("QUANT per_row", dict(fn=VecFn.QUANT, qmode=QuantMode.INT8, per_row=1)),
    ("QUANT A15", dict(fn=VecFn.QUANT, qmode=QuantMode.A15)),
    ("QUANT A8X2", dict(fn=VecFn.QUANT, qmode=QuantMode.A8X2)),
    ("COPY", dict(fn=VecFn.COPY)),
]
ROW_OPS = {VecFn.QUANT, VecFn.LAYERNORM, VecFn.RMSNORM, VecFn.SOFTMAX}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_jobs(p, image, jobs, res, what: str):
    """Every job's error, memory and untimed counters equal IsaSim's on the same jobs."""
    from sim.isa_sim import UNTIMED_COUNTERS, IsaSim, isa_jobs

    ref = isa_jobs(p, image, jobs, sim=IsaSim(p, image, vector=True))
    for i, (r, rr) in enumerate(zip(res, ref, strict=True)):
        where = f"{what}, job {i}"
        if r.timed_out or r.error or rr.error:
            raise SystemExit(f"{where}: RTL error {r.error!r} (timed out: {r.timed_out}), "
                             f"IsaSim error {rr.error!r}: no figures printed")
        diff = np.flatnonzero(r.offchip != rr.offchip)
        if diff.size:
            raise SystemExit(f"{where}: the RTL's off-chip memory differs from IsaSim's in "
                             f"{diff.size} bytes (first at byte {diff[0]}): no figures printed")
        bad = [c.name for c in UNTIMED_COUNTERS if r.counters[c] != rr.counters[c]]
        if bad:
            raise SystemExit(f"{where}: counters {bad} differ from IsaSim's")


# -- (a) cycles per row -------------------------------------------------------------------------


def words_written(p: ChipParams, f: dict) -> int:
    """Buffer words a VEC op writes (``VecArgs``)."""
    rows, length = f["rows"], f["length"]
    if f["fn"] == VecFn.QUANT:
        blocks = 1 if f["qmode"] == QuantMode.INT8 else 2
        return blocks * rows * -(-length // p.rows)
    return rows * -(-length // per_word(p, bool(f.get("half"))))


def per_row_jobs(p: ChipParams, widths, rows: int, layouts, rng):
    """The image, the jobs (the first loads the data) and per job (label, layout, width,
    rows, VEC fields)."""
    from sim.chip_rtl import Job

    C, R = p.cols, p.rows
    img = Image(p)
    wmax = max(widths)
    wwords = -(-wmax // (C // 2))  # the most words a row takes (half layout)
    region = rows * wwords
    # ops run in place on a (the RoPE table doubles as operand b): two regions
    acc_a, acc_b = 0, region
    acc_d, acc_t = acc_a, acc_b
    if 2 * region > buffer_depth(p, Buf.ACC):
        raise SystemExit(f"--rows {rows} at width {wmax} needs {2 * region} ACC words, "
                         f"the chip has {buffer_depth(p, Buf.ACC)}")
    act_d = 0
    if 2 * rows * -(-wmax // R) > buffer_depth(p, Buf.ACT):
        raise SystemExit(f"--rows {rows} at width {wmax}: QUANT's two blocks exceed ACT")
    # data: a, wide values decades apart (word by word); b, Q.F cos / sin pairs (the RoPE
    # table; SiLU·mul's up projection and the residual's second operand in [-1, 1])
    n = region
    mag = 10.0 ** rng.uniform(-2, 3, (n, 1))
    a = np.clip(np.round(rng.normal(size=(n, C)) * mag * 65536), -(1 << 31), (1 << 31) - 1)
    ang = rng.uniform(-np.pi, np.pi, (n, C // 2))
    one = 1 << p.numerics.frac_bits
    b = np.empty((n, C), np.int64)
    b[:, 0::2] = np.round(np.cos(ang) * one)
    b[:, 1::2] = np.round(np.sin(ang) * one)
    ops = []
    for addr, words in ((acc_a, a), (acc_b, b)):
        off, k = img.put(Buf.ACC, {"": words.astype(np.int64)})
        ops.append(encode(Op.LOAD, buf=Buf.ACC, sram=addr, words=k, off=off))
    ops += [encode(Op.WAIT, unit=Unit.LOAD, count=0), encode(Op.HALT)]
    jobs, what = [Job(*img.put_program(ops))], [None]
    gamma = np.round(rng.normal(1, 0.3, wmax) * 65536).astype(np.int64)
    beta = np.round(rng.normal(0, 1, wmax) * 65536).astype(np.int64)
    for layout in layouts:
        half = int(layout == "half")
        E = per_word(p, bool(half))
        for W in widths:
            ww = -(-W // E)
            for label, base in OPS:
                if base["fn"] in ROW_OPS and W > p.vector_row:
                    continue
                for nrows in sorted({1, rows}):
                    f = dict(base, half=half, rows=nrows, length=W, src_a=acc_a,
                             src_stride=ww, dst=acc_d, dst_stride=ww)
                    prog = []
                    fn = f["fn"]
                    if fn in (VecFn.RESIDUAL, VecFn.SILU_MUL):
                        f["src_b"] = acc_b
                    if fn == VecFn.ROPE:
                        f["src_b"] = acc_t
                    if fn in (VecFn.LAYERNORM, VecFn.RMSNORM):
                        vec = [gamma[:W], beta[:W]] if fn == VecFn.LAYERNORM else [gamma[:W]]
                        off, k = img.put(Buf.PRM, norm_prm_fields(p, vec, 1e-5))
                        prog += [encode(Op.LOAD, buf=Buf.PRM, sram=0, words=k, off=off),
                                 encode(Op.WAIT, unit=Unit.LOAD, count=0)]
                        f["prm"] = 0
                    if fn == VecFn.QUANT:
                        f.update(dst=act_d, dst_stride=-(-W // R))
                    out_buf = Buf.ACT if fn == VecFn.QUANT else Buf.ACC
                    nw = words_written(p, f)
                    prog += [encode(Op.VEC, **f), encode(Op.WAIT, unit=Unit.VEC, count=0),
                             encode(Op.STORE, buf=out_buf, sram=f["dst"], words=nw,
                                    off=img.reserve(out_buf, nw)),
                             encode(Op.HALT)]
                    jobs.append(Job(*img.put_program(prog), max_cycles=2_000_000))
                    what.append((label, layout, W, nrows, f))
    return img, jobs, what


def bench_rows(args):
    from sim.chip_rtl import run_jobs

    p = ChipParams(**BASE)
    rng = np.random.default_rng(args.seed)
    img, jobs, what = per_row_jobs(p, args.widths, args.rows, args.layouts, rng)
    log(f"(a) {len(jobs) - 1} VEC jobs on the vector chip (Verilator; the first run builds "
        f"it, several minutes) ...")
    t0 = time.perf_counter()
    res = run_jobs(p, img.mem, jobs, vector=True)
    log(f"    RTL done in {time.perf_counter() - t0:.0f} s; checking against IsaSim ...")
    check_jobs(p, img.mem, jobs, res, "per-row job")
    cyc = {w[:4]: r.counters[Counter.BUSY_VEC] for w, r in zip(what, res, strict=True) if w}
    print(f"\n(a) VEC ops on the {p.rows}x{p.cols} chip, {p.vector_lanes} lanes, "
          f"rows of --rows = {args.rows}; every run checked against IsaSim")
    print(f"{'op':14} {'layout':6} {'width':>5} {'cycles':>7} {'per row':>8} {'fixed':>6} "
          f"{'words':>6} {'words/cyc':>9} {'elem/cyc':>8}")
    for w in what:
        if not w or w[3] != args.rows:
            continue
        label, layout, W, nrows, f = w
        c = cyc[w[:4]]
        c1 = cyc.get((label, layout, W, 1), c)
        per = (c - c1) / (nrows - 1) if nrows > 1 else float(c)
        nw = words_written(p, f)
        print(f"{label:14} {layout:6} {W:>5} {c:>7} {per:>8.1f} {c1 - per:>6.0f} {nw:>6} "
              f"{nw / c:>9.3f} {nrows * W / c:>8.2f}")


# -- (b) whole layers ---------------------------------------------------------------------------


def layer_overlap(p, prog, counters, pos_init=0):
    """VEC busy cycles with the GEMM unit idle, from ``sim.timing.predict``'s per-op start /
    end, if its counters equal the RTL's ``counters``; else None (and why)."""
    try:
        from sim.timing import _union_len, predict
    except ImportError as e:
        return None, f"no timing model ({e})"
    try:
        t = predict(p, prog, vector=True, pos_init=pos_init)
    except Exception as e:  # a rule the model cannot follow: bounds only
        return None, f"timing model: {type(e).__name__}: {str(e)[:120]}"
    off = [c for c in (Counter.CYCLES, Counter.BUSY_VEC, Counter.BUSY_GEMM)
           if t.counters.get(c) != counters[c]]
    if off:
        return None, ("timing model differs from the RTL in " + ", ".join(
            f"{c.name} ({t.counters.get(c)} vs {counters[c]})" for c in off))
    busy = {u: [(o.start, o.end) for o in t.ops if o.unit == u and o.end is not None]
            for u in (Unit.VEC, Unit.GEMM)}
    vec = _union_len(busy[Unit.VEC])
    both = 0
    # cycles inside a VEC interval and a GEMM interval: |V| + |G| - |V u G|
    both = vec + _union_len(busy[Unit.GEMM]) - _union_len(busy[Unit.VEC] + busy[Unit.GEMM])
    return vec - both, "exact (sim.timing, its counters equal the RTL's)"


def report_layer(name, p, prog, r, prog_len, pos_init=0):
    c = r.counters
    cyc = c[Counter.CYCLES]
    B = p.offchip_bytes_per_cycle
    moved = c[Counter.LOAD_WORDS] + c[Counter.STORE_WORDS] + prog_len * uop_bus_words(p)
    busy = {u: c[getattr(Counter, f"BUSY_{u}")] for u in ("LOAD", "STORE", "GEMM", "VEC",
                                                           "KV")}
    vec, gemm = busy["VEC"], busy["GEMM"]
    lo, hi = max(0, vec - gemm), min(vec, cyc - gemm)
    exact, how = layer_overlap(p, prog, c, pos_init)
    print(f"\n{name}, off-chip bus {B} B/cycle: {cyc} cycles, {prog_len} micro-ops, "
          f"{r.wall_s:.1f} s of Verilator ({cyc / max(r.wall_s, 1e-9) / 1e3:.0f} k cycles/s)")
    print("  busy cycles: " + ", ".join(f"{u} {v} ({v / cyc:.1%})" for u, v in busy.items()))
    print(f"  MAC utilization GRID_ROWS / CYCLES = {c[Counter.GRID_ROWS]} / {cyc} = "
          f"{c[Counter.GRID_ROWS] / cyc:.1%}; grid rows per GEMM-busy cycle "
          f"{c[Counter.GRID_ROWS] / max(gemm, 1):.1%}")
    print(f"  memory roofline: {moved} bus words moved ({moved * B / 1e6:.2f} MB) = "
          f"{moved / cyc:.1%} of the cycles; STALL_WAIT {c[Counter.STALL_WAIT]}, "
          f"STALL_MEM {c[Counter.STALL_MEM]}")
    if exact is not None:
        print(f"  VEC busy with GEMM idle: {exact} cycles = {exact / cyc:.1%} of the layer "
              f"({how})")
    else:
        print(f"  VEC busy with GEMM idle: between {lo} ({lo / cyc:.1%}) and {hi} "
              f"({hi / cyc:.1%}) cycles (bounds from the counters; {how})")
    share = {"memory (LOAD)": moved / cyc, "GEMM": gemm / cyc,
             "VEC": (exact if exact is not None else hi) / cyc}
    bound = max(share, key=share.get)
    print(f"  bound by: {bound} ({'; '.join(f'{k} {v:.0%}' for k, v in share.items())}: "
          f"the off-chip words moved, the GEMM unit's busy cycles, VEC cycles without GEMM)")


class _Layer:
    """A compiled one-layer program (``sw/compiler.py``) with its input rows written into
    the image: ``img``, ``prog`` (the words), ``result(offchip)``."""

    def __init__(self, c, T: int, rows):
        self.c = c
        prog = c.program(T)
        self.img, self.prog, self._prog = c.img, prog.words, prog
        B = c.p.offchip_bytes_per_cycle
        raw = c.input_bytes(prog, rows)
        c.img.mem[prog.in_off * B: prog.in_off * B + raw.size] = raw
        self.addr = prog.addr

    def result(self, mem):
        return self.c.result(self._prog, mem)


def minilm_job(p, tokens: int):
    from sim.chip_rtl import Job
    from sim.golden_models import minilm_embeddings, minilm_layer
    from sw.compiler import MiniLMCompiled
    from sw.models import load_minilm
    from sw.quantize import quantize_minilm
    from sw.tokenizer import MiniLMTokenizer

    m = quantize_minilm(load_minilm())
    text = " ".join(["The quick brown fox jumps over the lazy dog near the quiet river bank."]
                    * (1 + tokens // 16))
    ids = MiniLMTokenizer().encode(text)
    ids = ids[: tokens - 1] + ids[-1:]
    h = minilm_embeddings(ids, m)
    lp = _Layer(MiniLMCompiled(m, p, layers=1, embeddings=False), tokens, h)
    want = minilm_layer(h, m.layers[0], m.config)
    return lp, Job(lp.addr, len(lp.prog), max_cycles=50_000_000), want, 0


def smollm2_job(p, tokens: int):
    from sim import golden as G
    from sim.chip_rtl import Job
    from sim.golden_models import SmolLM2Golden
    from sw.compiler import SmolLM2Compiled
    from sw.models import load_smollm2
    from sw.quantize import quantize_smollm2
    from sw.tokenizer import SmolLM2Tokenizer

    model = load_smollm2()
    m = quantize_smollm2(model, positions=max(16, tokens))
    tok = SmolLM2Tokenizer(model)
    ids = tok.encode(tok.chat_prompt("What is the capital of France? Answer in one short "
                                     "sentence, please, and then stop."))[:tokens]
    if len(ids) < tokens:
        raise SystemExit(f"--smollm2-tokens {tokens}: the prompt has only {len(ids)} tokens")
    emb = G.embed(np.asarray(ids), m.token_embd)
    gold = SmolLM2Golden(m)
    want = gold.layer(0, emb, gold.new_cache(capacity=tokens), 0)
    c = SmolLM2Compiled(m, p, cap=tokens, chunk=tokens, layers=1, head=False)
    lp = _Layer(c, tokens, emb)
    return lp, Job(lp.addr, len(lp.prog), pos_init=0, max_cycles=50_000_000), want, 0


def bench_layers(args):
    from sim.chip_rtl import run_jobs

    for B in args.buses:
        # a wide bus pads every buffer word to whole bus words: a larger off-chip memory
        p = ChipParams(**{**BASE, "offchip_kib": BASE["offchip_kib"] * max(1, B // 16)},
                       offchip_bytes_per_cycle=B)
        for name, make, tokens in (("MiniLM layer 0", minilm_job, args.minilm_tokens),
                                   ("SmolLM2 layer 0 prefill", smollm2_job,
                                    args.smollm2_tokens)):
            if not tokens:
                continue
            label = f"{name}, {tokens} tokens"
            log(f"(b) {label}, bus {B} B/cycle: building the program ...")
            lp, job, want, pos0 = make(p, tokens)
            log(f"    {len(lp.prog)} micro-ops; Verilator (a new bus width builds the chip "
                f"first, several minutes) ...")
            t0 = time.perf_counter()
            (r,) = run_jobs(p, lp.img.mem, [job], vector=True)
            log(f"    RTL done in {time.perf_counter() - t0:.0f} s; checking against the "
                f"golden model and IsaSim ...")
            if r.timed_out or r.error:
                raise SystemExit(f"{label}: RTL error {r.error!r} (timed out: {r.timed_out})")
            if not np.array_equal(lp.result(r.offchip), want):
                raise SystemExit(f"{label}: the RTL's layer output differs from the golden "
                                 f"model: no figures printed")
            check_jobs(p, lp.img.mem, [job], [r], label)
            report_layer(label, p, lp.prog, r, job.prog_len, pos0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 384, 576, 1536],
                    help="row lengths of part (a) (default: 64 384 576 1536)")
    ap.add_argument("--rows", type=int, default=8,
                    help="rows per VEC op in part (a) (default 8; also run on 1 row)")
    ap.add_argument("--layouts", nargs="+", choices=("full", "half"), default=["full", "half"],
                    help="ACC layouts of part (a) (default: full half)")
    ap.add_argument("--minilm-tokens", type=int, default=16,
                    help="MiniLM layer tokens in part (b) (default 16; 0 skips it)")
    ap.add_argument("--smollm2-tokens", type=int, default=8,
                    help="SmolLM2 prefill tokens in part (b) (default 8; 0 skips it)")
    ap.add_argument("--buses", type=int, nargs="+", default=None,
                    help="off-chip bus widths of part (b) in bytes per cycle (default: the "
                         "chip's and --wide-bus)")
    ap.add_argument("--wide-bus", type=int, default=64,
                    help="the wide bus of part (b), bytes per cycle (default 64)")
    ap.add_argument("--only", choices=("rows", "layers"),
                    help="run only part (a) (rows) or part (b) (layers)")
    ap.add_argument("--seed", type=int, default=1, help="random data of part (a)")
    args = ap.parse_args(argv)
    if args.rows < 1:
        ap.error("--rows must be at least 1")
    if args.buses is None:
        args.buses = [ChipParams().offchip_bytes_per_cycle, args.wide_bus]
    if any(w < 2 or w % 2 for w in args.widths):
        ap.error("--widths must be even and at least 2 (ROPE rotates pairs)")
    if args.only != "layers":
        bench_rows(args)
    if args.only != "rows":
        bench_layers(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

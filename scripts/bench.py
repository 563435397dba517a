#!/usr/bin/env python3
"""The compiled models' figures (the compiler / runtime issue; DESIGN.md §8 #1-#3, #6).

Prints a table and writes a roofline plot (PNG):

- **prefill MAC utilization** of one whole layer: all-MiniLM-L6-v2 at 128 tokens (INT8,
  row blocks) and SmolLM2-135M on a prefill chunk (W4A8, A8x2): *model* MACs (the layer's
  GEMMs and attention, each counted once, as the model defines them) / (cycles x the grid's
  peak MACs per cycle in the layer's weight mode: ``rows x cols / 2`` INT8, ``rows x cols``
  W4A8). This is DESIGN.md §8 #1's figure. SmolLM2's activations are A8x2 (two INT8 passes
  per GEMM, the golden model's numerics), so every weight MAC costs the grid two: its model
  utilization cannot pass ~50 %. For SmolLM2 a second row, **grid utilization**, counts
  every MAC the grid performs (both A8x2 passes, both planes of the A15 P·V, INT8 tiles at
  their ``rows x cols / 2`` products: ``t_len x n_tiles x k_tiles`` rows per GEMM as the
  program runs them, so also the key blocks a GQA-stacked QKᵀ computes past the visible
  keys, ~0.2 % of a 16-token layer) over the same peak: what the schedule controls (how
  busy the grid is kept), not a relabelled model figure;
- **decode cycles per token** of SmolLM2 (every layer, the LM head) at a few context
  positions, over the weight-streaming roofline (the bytes a step LOADs ÷ off-chip bytes
  per cycle), and how busy the LOAD unit is (what is left above the roofline: attention
  longer than the weights the two WGT halves can prefetch meanwhile, the step's start);
- **predicted vs measured** cycles: compiled layers on the Verilator chip (``--rtl``);
- **tokens/s** of the main job on the ISA simulator on this machine, and Verilator cycles/s
  (``--rtl``).

Cycles are the timing model's (``sim/timing.py``: exact against the RTL for programs that
obey its predictability rules; a program that breaks one is reported, not guessed). Run::

    .venv/bin/python scripts/bench.py              # model figures (a few minutes)
    .venv/bin/python scripts/bench.py --rtl        # also the Verilator comparison (longer)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from hw.isa import Counter, Op, bus_words_per, decode  # noqa: E402
from hw.params import preset  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_bytes(p, prog) -> int:
    """Off-chip bytes the program's LOADs move."""
    B = p.offchip_bytes_per_cycle
    return sum(f["words"] * bus_words_per(p, f["buf"]) * B
               for op, f in map(decode, prog.words) if op == Op.LOAD)


def predict(p, prog, pos: int = 0):
    from sim.timing import RuleViolation
    from sim.timing import predict as _predict

    try:
        return _predict(p, prog.words, vector=True, pos_init=pos), None
    except RuleViolation as exc:
        return None, str(exc)


def grid_macs(p, prog, pos: int = 0) -> int:
    """MACs the grid performs running ``prog`` at context ``pos`` (every GEMM's rows x its
    tile's products; ``dyn`` lengths as ``pos`` moves through the program's ``SETPOS``)."""
    from hw.isa import GridMode, PosReg
    from sw.programs import gemm_tiles

    R, C, PC = p.rows, p.cols, p.cols // 2
    total = 0
    for op, f in map(decode, prog.words):
        if op == Op.SETPOS and f["reg"] == PosReg.POS:
            pos = pos + f["value"] if f["add"] else f["value"]
        if op != Op.GEMM:
            continue
        T, n, k = gemm_tiles(p, f, pos)
        total += T * n * k * R * (C if f["mode"] == GridMode.W4A8 else PC)
    return total


def minilm_layer_macs(cfg, T: int) -> int:
    D, Dff = cfg.d_model, cfg.d_ff
    return T * (4 * D * D + 2 * D * Dff) + 2 * T * T * D


def smollm2_layer_macs(cfg, T: int, pos: int) -> int:
    D, Dff, dh = cfg.d_model, cfg.d_ff, cfg.d_head
    kv = cfg.n_kv_heads * dh
    weights = D * D * 2 + 2 * D * kv + 3 * D * Dff
    keys = sum(pos + t + 1 for t in range(T))  # causal: query t sees pos + t + 1 keys
    return T * weights + 2 * keys * cfg.n_heads * dh


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("Run::")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="sim", help="chip configuration (hw/params.py PRESETS)")
    ap.add_argument("--seq", type=int, default=128, help="MiniLM sequence length (128)")
    ap.add_argument("--chunk", type=int, default=16, help="SmolLM2 prefill chunk (16)")
    ap.add_argument("--positions", default="64,256",
                    help="SmolLM2 decode context positions, comma-separated (default 64,256)")
    ap.add_argument("--rtl", action="store_true",
                    help="also run compiled layers on Verilator: predicted vs measured")
    ap.add_argument("--png", default="build/bench/roofline.png", help="roofline plot path")
    args = ap.parse_args(argv)
    p = preset(args.config)
    R, C, PC, B = p.rows, p.cols, p.cols // 2, p.offchip_bytes_per_cycle
    rows = []   # (what, figure, target)
    points = []  # roofline: (label, MACs per byte, MACs per cycle, peak)

    from sw.compiler import MiniLMCompiled, SmolLM2Compiled
    from sw.models import load_minilm, load_smollm2
    from sw.quantize import quantize_minilm, quantize_smollm2

    # -- MiniLM prefill layer
    log(f"MiniLM: compiling one layer at {args.seq} tokens ...")
    qm = quantize_minilm(load_minilm())
    cm = MiniLMCompiled(qm, p, layers=1, embeddings=False)
    prog = cm.program(args.seq)
    t, why = predict(p, prog)
    if t is None:
        rows.append((f"MiniLM layer, {args.seq} tokens: MAC utilization", f"n/a ({why})",
                     ">= 85 %"))
    else:
        macs = minilm_layer_macs(qm.config, args.seq)
        peak = R * PC  # INT8 weights: PC output columns
        util = macs / (t.cycles * peak)
        occ = t.counters.get(Counter.BUSY_GEMM, 0) / t.cycles
        rows.append((f"MiniLM layer, {args.seq} tokens (row blocks of {prog.block}): MAC "
                     f"utilization", f"{100 * util:.1f} % ({t.cycles:,} cycles, GEMM busy "
                     f"{100 * occ:.0f} %)", ">= 85 %"))
        points.append(("MiniLM prefill", macs / load_bytes(p, prog), macs / t.cycles, peak))

    # -- SmolLM2 prefill layer and decode steps
    log("SmolLM2: compiling ...")
    positions = [int(x) for x in args.positions.split(",") if x]
    cap = max([args.chunk, *[q + 1 for q in positions]])
    m = quantize_smollm2(load_smollm2(), positions=cap)
    c1 = SmolLM2Compiled(m, p, cap=cap, chunk=args.chunk, layers=1, head=False)
    prog = c1.program(args.chunk)
    t, why = predict(p, prog)
    peak = R * C  # W4A8
    if t is None:
        rows.append((f"SmolLM2 layer, {args.chunk}-token prefill: MAC utilization",
                     f"n/a ({why})", ">= 85 %"))
    else:
        macs = smollm2_layer_macs(m.config, args.chunk, 0)
        util = macs / (t.cycles * peak)
        rows.append((f"SmolLM2 layer, {args.chunk}-token prefill: MAC utilization",
                     f"{100 * util:.1f} % ({t.cycles:,} cycles; A8x2 runs each GEMM twice)",
                     ">= 85 %"))
        gutil = grid_macs(p, prog) / (t.cycles * peak)
        occ = t.counters.get(Counter.BUSY_GEMM, 0) / t.cycles
        rows.append((f"SmolLM2 layer, {args.chunk}-token prefill: grid utilization (every "
                     "MAC the grid performs, both A8x2 passes)",
                     f"{100 * gutil:.1f} % (GEMM busy {100 * occ:.0f} %)", ">= 85 %"))
        points.append(("SmolLM2 prefill", macs / load_bytes(p, prog), macs / t.cycles, peak))
    call = SmolLM2Compiled(m, p, cap=cap, chunk=args.chunk)
    dec = call.program(1)
    nbytes = load_bytes(p, dec)
    roof = nbytes / B
    for pos in positions:
        log(f"SmolLM2: decode step at position {pos} ...")
        t, why = predict(p, dec, pos)
        label = f"SmolLM2 decode at position {pos}: cycles / roofline"
        if t is None:
            rows.append((label, f"n/a ({why})", "<= 1.15"))
            continue
        busy = t.counters.get(Counter.BUSY_LOAD, 0) / t.cycles
        rows.append((label, f"{t.cycles / roof:.3f} ({t.cycles:,} cycles, roofline "
                            f"{roof:,.0f} = {nbytes / 2**20:.1f} MiB / {B} B; LOAD busy "
                            f"{100 * busy:.0f} %)", "<= 1.15"))
        macs = sum(smollm2_layer_macs(m.config, 1, pos) for _ in range(m.config.n_layers))
        macs += m.config.d_model * m.lm_head.q.shape[0]
        points.append((f"SmolLM2 decode @{pos}", macs / nbytes, macs / t.cycles, peak))

    # -- the main job on the ISA simulator
    log("SmolLM2 on the ISA simulator: 1 decode step ...")
    from sim.devices import open_sim_device
    from sim.golden import embed
    from sw.runtime import SmolLM2Runner

    with open_sim_device("isa", call) as dev:
        r = SmolLM2Runner(call, dev, embed)
        r.pos = positions[0]
        t0, c0 = time.monotonic(), time.process_time()
        r.decode(1)
        dt, cpu = time.monotonic() - t0, time.process_time() - c0
    rows.append(("main job on the ISA simulator (this machine), one decode step",
                 f"{1 / dt:.2f} tokens/s wall, {1 / cpu:.2f} tokens/s of CPU time "
                 f"(a shared machine: CPU time is the steadier figure)", ""))

    if args.rtl:
        rows += rtl_rows(p, qm, m, args)

    w = max(len(a) for a, _, _ in rows)
    print(f"\n{'figure':{w}s}  {'measured':s}")
    for a, b, target in rows:
        print(f"{a:{w}s}  {b}" + (f"   [target {target}]" if target else ""))
    if points:
        plot(points, B, args.png)
        print(f"\nroofline plot: {args.png}")
    return 0


def rtl_rows(p, qm, m, args) -> list:
    """Compiled layers on Verilator: measured cycles vs the prediction, bit-exact outputs."""
    from sim.devices import open_sim_device
    from sim.golden import embed
    from sim.golden_models import SmolLM2Golden, minilm_layer
    from sw.compiler import MiniLMCompiled, SmolLM2Compiled
    from sw.runtime import Runner, SmolLM2Runner

    out = []
    rng = np.random.default_rng(1)
    T = 32
    cm = MiniLMCompiled(qm, p, layers=1, embeddings=False)
    h = rng.integers(-(1 << 17), 1 << 17, (T, qm.config.d_model))
    prog = cm.program(T)
    t, why = predict(p, prog)
    log("MiniLM layer on Verilator ...")
    with open_sim_device("rtl", cm) as dev:
        got, st = Runner(cm, dev, embed).step(prog, h, 0)
    ok = np.array_equal(got, minilm_layer(h, qm.layers[0], qm.config))
    pred = "n/a" if t is None else f"{t.cycles:,}"
    out.append((f"MiniLM layer {T} tokens on RTL: measured / predicted cycles",
                f"{st.cycles:,} / {pred} ({'bit-exact' if ok else 'MISMATCH'}; "
                f"{st.cycles / st.wall_s / 1e3:.0f} k cycles/s)", "equal"))
    c1 = SmolLM2Compiled(m, p, cap=12, chunk=8, layers=1, head=False)
    gold = SmolLM2Golden(m)
    cache = gold.new_cache(12)
    emb = c1.inputs(embed, rng.integers(0, 49152, 12))
    for n in (8, 1):
        c1.program(n)
    log("SmolLM2 layer on Verilator: prefill 8, decode 4 ...")
    with open_sim_device("rtl", c1) as dev:
        r = SmolLM2Runner(c1, dev, embed)
        for p0, n in [(0, 8), (8, 1), (9, 1), (10, 1), (11, 1)]:
            prog = c1.program(n)
            got, st = r.step(prog, emb[p0:p0 + n], p0)
            want = gold.layer(0, emb[p0:p0 + n], cache, p0)
            t, why = predict(p, prog, p0)
            pred = "n/a" if t is None else f"{t.cycles:,}"
            out.append((f"SmolLM2 layer {'prefill' if n > 1 else 'decode'} at {p0} on RTL: "
                        f"measured / predicted", f"{st.cycles:,} / {pred} "
                        f"({'bit-exact' if np.array_equal(got, want) else 'MISMATCH'})",
                        "equal"))
        del r
    return out


def plot(points, B: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ai = np.logspace(-1, 4, 200)
    for peak in sorted({pk for *_, pk in points}):
        ax.plot(ai, np.minimum(peak, ai * B), label=f"roofline: {peak} MACs/cycle, {B} B/cycle")
    for label, x, y, _ in points:
        ax.scatter([x], [y])
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MACs per off-chip byte")
    ax.set_ylabel("MACs per cycle")
    ax.set_title("Compiled models on the chip (timing model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())

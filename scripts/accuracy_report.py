"""What the chip's integer contract costs on the real models: golden model vs float64.

Prints, with the targets of issue 2:

- all-MiniLM-L6-v2: cosine between golden and float sentence embeddings on a fixed set of
  sentences (target >= 0.999 at W8A8);
- SmolLM2-135M-Instruct: over the repo's English text (``sw/data/eval_text.txt``), top-1
  next-token agreement (target >= 95%) and perplexity golden / float (target <= 1.03), both
  models on the same GGUF weights; plus the golden model's decode speed on this machine.

Run: ``make accuracy`` or ``python scripts/accuracy_report.py [--tokens N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EVAL_TEXT = ROOT / "sw" / "data" / "eval_text.txt"

SENTENCES = [
    "A man is playing a guitar.",
    "The new movie is awesome.",
    "The cat sits outside on the warm stones of the garden wall.",
    "Two children are kicking a ball in the park.",
    "Quantum computers use qubits that can be in superpositions of states.",
    "I would like to book a table for four people at seven tonight.",
    "The central bank raised interest rates by a quarter of a percentage point.",
    "She forgot her umbrella, so she got soaked on the way home.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Our systolic array multiplies eight-bit integers and accumulates them in thirty-two bits.",
]

TARGETS = {"minilm_cosine_min": 0.999, "smollm2_top1": 0.95, "smollm2_ppl_ratio": 1.03}


def _mark(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def minilm_report() -> dict:
    from sim.golden_models import minilm_encode
    from sw.models import load_minilm
    from sw.quantize import from_wide, quantize_minilm
    from sw.reference import MiniLMFloat
    from sw.tokenizer import MiniLMTokenizer

    model = load_minilm()
    qm = quantize_minilm(model)
    tok = MiniLMTokenizer(model.path)
    ref = MiniLMFloat(model, tok)
    print("all-MiniLM-L6-v2: golden (W8A8) vs float64 sentence embeddings")
    cos = []
    for s in SENTENCES:
        ids = tok.encode(s)
        e = from_wide(minilm_encode(ids, qm)).mean(axis=0)
        e /= np.linalg.norm(e)
        c = float(e @ ref.embed([ids])[0])
        cos.append(c)
        print(f"  {c:.6f}  {s}")
    res = {"minilm_cosine_min": min(cos), "minilm_cosine_mean": float(np.mean(cos))}
    ok = res["minilm_cosine_min"] >= TARGETS["minilm_cosine_min"]
    print(f"  min {res['minilm_cosine_min']:.6f}, mean {res['minilm_cosine_mean']:.6f} "
          f"(target >= {TARGETS['minilm_cosine_min']}: {_mark(ok)})\n")
    return res


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return lse - z[np.arange(len(targets)), targets]


def smollm2_report(n_tokens: int | None, decode_steps: int, act_passes: int = 2) -> dict:
    from sim.golden_models import SmolLM2Golden
    from sw.models import load_smollm2
    from sw.quantize import conversion_report, from_wide, quantize_smollm2
    from sw.reference import SmolLM2Float
    from sw.tokenizer import SmolLM2Tokenizer

    model = load_smollm2()
    tok = SmolLM2Tokenizer(model)
    ids = tok.encode(EVAL_TEXT.read_text())
    if n_tokens:
        ids = ids[:n_tokens]
    T = len(ids)
    qm = quantize_smollm2(model, positions=T + decode_steps + 1, act_passes=act_passes)
    exact, total = conversion_report(qm.weights())
    acts = "A8x2" if act_passes == 2 else "A8"
    print(f"SmolLM2-135M-Instruct: golden (GGUF Q4_1/Q8_0 blocks unchanged, {acts} "
          f"activations) vs float64, {T} tokens of {EVAL_TEXT.name}")
    print(f"  GGUF group scales converted exactly to INT16: {exact}/{total} "
          f"({100 * exact / total:.3f}%)")

    t = time.monotonic()
    ref = SmolLM2Float(model)
    lf = ref.prefill(ids, ref.new_cache(T))
    t_float = time.monotonic() - t
    golden = SmolLM2Golden(qm)
    t = time.monotonic()
    last = [-1]

    def progress(done, total):
        if done * 4 // total != last[0]:
            last[0] = done * 4 // total
            print(f"  golden prefill: layer {done}/{total}", file=sys.stderr, flush=True)

    lg = from_wide(golden.forward(ids, golden.new_cache(T), all_logits=True, progress=progress))
    t_golden = time.monotonic() - t

    tgt = np.asarray(ids[1:])
    agree = float(np.mean(lf[:-1].argmax(1) == lg[:-1].argmax(1)))
    ppl_f = float(np.exp(_nll(lf[:-1], tgt).mean()))
    ppl_g = float(np.exp(_nll(lg[:-1], tgt).mean()))
    ratio = ppl_g / ppl_f
    print(f"  top-1 next-token agreement: {100 * agree:.2f}% over {T - 1} positions "
          f"(target >= {100 * TARGETS['smollm2_top1']:.0f}%: "
          f"{_mark(agree >= TARGETS['smollm2_top1'])})")
    print(f"  perplexity: float {ppl_f:.3f}, golden {ppl_g:.3f}, ratio {ratio:.4f} "
          f"(target <= {TARGETS['smollm2_ppl_ratio']}: "
          f"{_mark(ratio <= TARGETS['smollm2_ppl_ratio'])})")
    print(f"  prefill of {T} tokens: float {t_float:.1f} s, golden {t_golden:.1f} s")

    # decode speed: one token at a time after a 32-token prompt
    cache = golden.new_cache(32 + decode_steps + 1)
    golden.forward(ids[:32], cache)
    t = time.monotonic()
    for i in range(decode_steps):
        golden.forward([ids[32 + i]], cache)
    dt = (time.monotonic() - t) / decode_steps
    fc = ref.new_cache(32 + decode_steps + 1)
    ref.prefill(ids[:32], fc)
    t = time.monotonic()
    for i in range(decode_steps):
        ref.decode(ids[32 + i], fc)
    dtf = (time.monotonic() - t) / decode_steps
    print(f"  decode: golden {1 / dt:.2f} tokens/s ({1000 * dt:.0f} ms/token), "
          f"float {1 / dtf:.2f} tokens/s (1 BLAS thread)\n")
    return {"smollm2_tokens": T, "smollm2_top1": agree, "smollm2_ppl_float": ppl_f,
            "smollm2_ppl_golden": ppl_g, "smollm2_ppl_ratio": ratio,
            "golden_decode_tokens_per_s": 1 / dt, "float_decode_tokens_per_s": 1 / dtf,
            "golden_prefill_s": t_golden, "act_passes": act_passes,
            "gguf_scales_exact": exact, "gguf_scales_total": total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--tokens", type=int, default=None,
                   help="use only the first N tokens of the text (default: all)")
    p.add_argument("--decode-steps", type=int, default=16,
                   help="single-token decode steps timed for the speed figure (default 16)")
    p.add_argument("--act-passes", type=int, choices=(1, 2), default=2,
                   help="SmolLM2 linear-layer inputs as 2 INT8 passes (A8x2, default) or 1 (A8)")
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--skip-smollm2", action="store_true")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    res: dict = {}
    if not args.skip_minilm:
        res.update(minilm_report())
    if not args.skip_smollm2:
        res.update(smollm2_report(args.tokens, args.decode_steps, args.act_passes))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        print(f"figures written to {args.json}")
    missed = [k for k, v in TARGETS.items() if k in res and
              (res[k] > v if k.endswith("ratio") else res[k] < v)]
    if missed:
        print("targets missed: " + ", ".join(missed))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())

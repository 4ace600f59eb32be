"""The `gemma-keras` command. It parses arguments and calls the library.

gemma-keras info
gemma-keras generate "The capital of France is" --backend jax --max-new-tokens 32
gemma-keras chat --backend torch --system "Answer briefly."
gemma-keras export model.gguf --to gemma-hf --format safetensors
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from gemma_keras.errors import GemmaKerasError


class Spinner:
    """A one-line progress indicator on stderr while a model loads."""

    frames = "|/-\\"

    def __init__(self, stream=None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.stage = "starting"
        self.fraction = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_printed = ""
        self.started = time.monotonic()

    def update(self, stage: str, fraction: float) -> None:
        self.stage, self.fraction = stage, fraction
        if not self.enabled and stage != self._last_printed and stage != "done":
            # Not a terminal: print each stage once, so logs stay readable.
            self._last_printed = stage
            print(f"[gemma-keras] {stage}...", file=self.stream, flush=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(0.1):
            elapsed = time.monotonic() - self.started
            line = f"\r{self.frames[i % 4]} {self.stage} {self.fraction:4.0%} ({elapsed:.0f}s)"
            self.stream.write(line.ljust(70))
            self.stream.flush()
            i += 1

    def __enter__(self) -> Spinner:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()


def _cmd_info(args: argparse.Namespace) -> int:
    import gemma_keras as gk
    from gemma_keras import backend

    if args.backend:
        gk.use_backend(args.backend)
    name, origin = backend.resolve_backend()
    print(f"gemma_keras {gk.__version__}")
    print(f"selected backend: {name} (from {origin})")
    found = gk.available_backends()
    if not found:
        print("installed backends: none")
    for bname, info in found.items():
        print(f"  {bname:<11} {info['version']:<10} devices: {', '.join(info['devices'])}")
    for bname in backend.BACKENDS:
        if bname not in found:
            print(f"  {bname:<11} not installed")
    if name in found:
        print(f"dtype on {name}: {backend.default_dtype(name)}")
    from gemma_keras.cache import cache_dir

    print(f"cache: {cache_dir()}")
    return 0


def _sampling_from(args: argparse.Namespace):
    from gemma_keras.sampling import SamplingParams

    return SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )


def _load(args: argparse.Namespace):
    import gemma_keras as gk

    if args.max_new_tokens < 1:
        raise gk.GenerationArgumentError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}.")
    if args.backend:
        gk.use_backend(args.backend)
    with Spinner() as spinner:
        return gk.load(args.model, dtype=args.dtype, progress=spinner.update)


def _cmd_generate(args: argparse.Namespace) -> int:
    import gemma_keras as gk

    # Check the cheap arguments before the slow load.
    sampling = _sampling_from(args)
    if not args.prompt:
        raise gk.GenerationArgumentError("the prompt is empty; give some text to continue.")
    lm = _load(args)
    options = dict(max_new_tokens=args.max_new_tokens, stop=args.stop or None, **sampling.as_kwargs())
    if args.no_stream:
        print(lm.generate(args.prompt, include_prompt=args.include_prompt, **options))
        return 0
    if args.include_prompt:
        print(args.prompt, end="", flush=True)
    try:
        for piece in lm.stream(args.prompt, **options):
            print(piece, end="", flush=True)
    finally:
        print(flush=True)
    return 0


def _cmd_chat(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    import gemma_keras as gk

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    sampling = _sampling_from(args)
    lm = _load(args)
    chat = lm.chat(system=args.system, max_new_tokens=args.max_new_tokens, **sampling.as_kwargs())
    interactive = stdin.isatty()
    print("Chat with Gemma. /reset clears the history, /exit quits; Ctrl-C stops a reply.", file=stdout)
    while True:
        if interactive:
            try:
                line = input("you> ")
            except EOFError:
                break
            except KeyboardInterrupt:
                print("\n(type /exit to quit)", file=stdout)
                continue
        else:
            print("you> ", end="", file=stdout, flush=True)
            line = stdin.readline()
            if not line:
                break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            chat.reset()
            print("(history cleared)", file=stdout)
            continue
        print("gemma> ", end="", file=stdout, flush=True)
        reply = chat.stream(text)
        try:
            for piece in reply:
                print(piece, end="", file=stdout, flush=True)
        except KeyboardInterrupt:
            reply.close()  # records the partial reply; the session goes on
            print(" [stopped]", end="", file=stdout)
        except gk.GenerationArgumentError as exc:
            print(f"\n(error: {exc})", end="", file=stdout)
        print(file=stdout, flush=True)
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    import gemma_keras as gk

    if args.backend:
        gk.use_backend(args.backend)
    with Spinner() as spinner:
        lm = gk.load(args.model, dtype=args.dtype, progress=spinner.update)
    result = lm.finetune(
        args.data,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        targets=args.targets.split(",") if args.targets else None,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation,
        learning_rate=args.learning_rate,
        sequence_length=args.sequence_length,
        validation_data=args.validation,
        on_error="skip" if args.skip_bad_records else "raise",
        seed=args.seed,
        out_dir=args.out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        verbose=not args.quiet,
    )
    skipped = f", {result.data.skipped} bad records skipped" if result.data.skipped else ""
    print(
        f"trained {result.steps} steps on {result.data.records} records{skipped}; "
        f"final loss {result.train_loss:.4f}, {result.tokens_per_second:.0f} tokens/s"
    )
    if result.val_loss is not None:
        print(f"validation loss {result.val_loss:.4f}, perplexity {result.val_perplexity:.3f}")
    print(f"adapters: {Path(args.out) / 'adapters.npz'}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import gemma_keras as gk
    from gemma_keras.export import resolve_dtype, resolve_format

    # Check the arguments before the slow load.
    fmt = resolve_format(Path(args.to), args.format)
    resolve_dtype(fmt, args.dtype)
    if args.backend:
        gk.use_backend(args.backend)
    with Spinner() as spinner:
        lm = gk.load(args.source, progress=spinner.update)
        spinner.update(f"writing {fmt}", 0.0)
        dest = lm.export(args.to, format=fmt, dtype=args.dtype, overwrite=args.overwrite)
    print(dest)
    return 0


def _add_model_flags(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="a .gguf file, preset dir, preset name or hub handle (default: embedded Gemma 3 270M)",
    )
    parser.add_argument("--backend", help="jax, tensorflow or torch")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--min-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma-keras",
        description="Gemma models as Keras 3 models on JAX, TensorFlow or PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="show backends, versions, devices and dtype")
    info.add_argument("--backend", help="jax, tensorflow or torch")
    info.set_defaults(func=_cmd_info)

    gen = sub.add_parser("generate", help="continue a prompt (streams by default)")
    gen.add_argument("prompt", help="the text to continue")
    _add_model_flags(gen, max_new_tokens=64)
    gen.add_argument("--stop", action="append", help="a stop string (repeatable)")
    gen.add_argument(
        "--no-stream", action="store_true", help="print the text at the end instead of streaming"
    )
    gen.add_argument("--include-prompt", action="store_true", help="print the prompt before the continuation")
    gen.set_defaults(func=_cmd_generate)

    chat = sub.add_parser("chat", help="an interactive multi-turn chat that streams replies")
    _add_model_flags(chat, max_new_tokens=256)
    chat.add_argument("--system", default=None, help="a system prompt, folded into the first user turn")
    chat.set_defaults(func=_cmd_chat)

    tune = sub.add_parser("finetune", help="LoRA fine-tuning on a JSONL file; writes adapters to --out")
    tune.add_argument("data", help="JSONL with {text}, {prompt, response} or {messages} records")
    tune.add_argument("--out", required=True, help="run directory: checkpoints and adapters.npz")
    tune.add_argument("--model", default=None, help="the base model (default: embedded Gemma 3 270M)")
    tune.add_argument("--backend", help="jax, tensorflow or torch")
    tune.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    tune.add_argument("--lora-rank", type=int, default=8)
    tune.add_argument("--lora-alpha", type=float, default=None, help="default: the rank")
    tune.add_argument(
        "--targets",
        default=None,
        help="comma-separated: query,key,value,output,gate,up,down, or attention, ffw, all (default: all)",
    )
    tune.add_argument("--epochs", type=int, default=1)
    tune.add_argument("--max-steps", type=int, default=None)
    tune.add_argument("--batch-size", type=int, default=4)
    tune.add_argument("--gradient-accumulation", type=int, default=1)
    tune.add_argument("--learning-rate", type=float, default=2e-4)
    tune.add_argument("--sequence-length", type=int, default=512)
    tune.add_argument("--validation", default=None, help="a JSONL of held-out records")
    tune.add_argument(
        "--skip-bad-records", action="store_true", help="skip malformed lines instead of failing"
    )
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--checkpoint-every", type=int, default=None)
    tune.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    tune.add_argument("--quiet", action="store_true", help="no progress bar")
    tune.set_defaults(func=_cmd_finetune)

    exp = sub.add_parser("export", help="write a model as a Keras preset, safetensors or GGUF")
    exp.add_argument("source", help="a .gguf file, preset dir, preset name or hub handle")
    exp.add_argument("--to", required=True, help="the destination file or directory")
    exp.add_argument("--format", choices=["keras", "safetensors", "gguf"], help="default: gguf for *.gguf")
    exp.add_argument("--dtype", choices=["f32", "f16", "q8_0"], help="gguf: f16 (default); safetensors: f32")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    exp.add_argument("--backend", help="jax, tensorflow or torch")
    exp.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GemmaKerasError as exc:
        print(f"gemma-keras: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngemma-keras: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

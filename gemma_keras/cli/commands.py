"""The `gemma-keras` command: parses arguments and calls the public API; it holds no logic of its own.

gemma-keras info
gemma-keras generate "The capital of France is" --backend jax --max-new-tokens 32
gemma-keras chat --backend torch --system "Answer briefly."
gemma-keras finetune train.jsonl --lora-rank 8 --out run/
gemma-keras export model.gguf --to gemma-hf --format safetensors

Third-party log lines (TensorFlow, XLA, absl) are hidden; `--verbose` (or
GEMMA_KERAS_VERBOSE=1) shows them. Results go to stdout, progress and
errors to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from gemma_keras.backend.quiet import VERBOSE_ENV
from gemma_keras.backend.selection import BACKENDS
from gemma_keras.cli.progress import Spinner
from gemma_keras.errors import GemmaKerasError

BACKEND_HELP = ", ".join(BACKENDS)


def _cmd_info(args: argparse.Namespace) -> int:
    import gemma_keras as gk
    from gemma_keras.backend.devices import default_dtype
    from gemma_keras.backend.selection import resolve_backend
    from gemma_keras.sources.cache import cache_dir

    if args.backend:
        gk.use_backend(args.backend)
    name, origin = resolve_backend()
    print(f"gemma_keras {gk.__version__}")
    print(f"selected backend: {name} (from {origin})")
    found = gk.available_backends()
    if not found:
        print("installed backends: none")
    for bname, info in found.items():
        print(f"  {bname:<11} {info['version']:<10} devices: {', '.join(info['devices'])}")
    for bname in BACKENDS:
        if bname not in found:
            print(f"  {bname:<11} not installed")
    if name in found:
        print(f"dtype on {name}: {default_dtype(name)}")
    print(f"cache: {cache_dir()}")
    return 0


def _sampling_from(args: argparse.Namespace):
    """The `SamplingParams` the flags describe; its fields and the flags share their names."""
    import gemma_keras as gk

    if args.max_new_tokens < 1:
        raise gk.GenerationArgumentError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}.")
    return gk.SamplingParams(**{f.name: getattr(args, f.name) for f in dataclasses.fields(gk.SamplingParams)})


def _load(args: argparse.Namespace, source=None, dtype=None):
    import gemma_keras as gk

    if args.backend:
        gk.use_backend(args.backend)
    with Spinner() as spinner:
        return gk.load(source, dtype=dtype, progress=spinner.update)


def _sampling_kwargs(sampling) -> dict:
    return {f.name: getattr(sampling, f.name) for f in dataclasses.fields(sampling)}


def _cmd_generate(args: argparse.Namespace) -> int:
    import gemma_keras as gk

    # Check the cheap arguments before the slow load.
    sampling = _sampling_from(args)
    if not args.prompt:
        raise gk.GenerationArgumentError("the prompt is empty; give some text to continue.")
    lm = _load(args, args.model, args.dtype)
    options = dict(max_new_tokens=args.max_new_tokens, stop=args.stop or None, **_sampling_kwargs(sampling))
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
    lm = _load(args, args.model, args.dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gk.NotInstructionTunedWarning)
        chat = lm.chat(system=args.system, max_new_tokens=args.max_new_tokens, **_sampling_kwargs(sampling))
    for warning in caught:
        print(f"gemma-keras: note: {warning.message}", file=sys.stderr)
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


def _finetune_config(args: argparse.Namespace):
    """The `FinetuneConfig` the flags describe (checked here, before the model loads)."""
    from gemma_keras.training.config import FinetuneConfig

    values = {
        f.name: getattr(args, f"ft_{f.name}") for f in dataclasses.fields(FinetuneConfig) if f.name != "pack"
    }
    if args.skip_bad_records:
        values["on_error"] = "skip"
    return FinetuneConfig(**values)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from gemma_keras.training.checkpoints import check_run_directory

    config = _finetune_config(args)
    check_run_directory(config.out_dir)  # before the slow load
    lm = _load(args, args.model, args.dtype)
    result = lm.finetune(args.data, config)
    skipped = f", {result.data.skipped} bad records skipped" if result.data.skipped else ""
    print(
        f"trained {result.steps} steps on {result.data.records} records{skipped}; "
        f"final loss {result.train_loss:.4f}, {result.tokens_per_second:.0f} tokens/s"
    )
    if result.val_loss is not None:
        print(f"validation loss {result.val_loss:.4f}, perplexity {result.val_perplexity:.3f}")
    print(f"adapters: {Path(config.out_dir) / 'adapters.npz'}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from gemma_keras.formats.export import check_export_destination, resolve_dtype, resolve_format

    # Check the arguments and the destination before the slow load.
    fmt = resolve_format(Path(args.to), args.format)
    resolve_dtype(fmt, args.dtype)
    check_export_destination(args.to, fmt, args.overwrite)
    lm = _load(args, args.source)
    print(f"[gemma-keras] writing {fmt}...", file=sys.stderr, flush=True)
    print(lm.export(args.to, format=fmt, dtype=args.dtype, overwrite=args.overwrite))
    return 0


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", help=BACKEND_HELP)
    parser.add_argument("--verbose", action="store_true", help="show third-party log lines (TensorFlow, XLA)")


def _add_model_flags(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="a .gguf file, preset dir, preset name or hub handle (default: embedded Gemma 3 270M)",
    )
    _add_common_flags(parser)
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--min-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)


def _add_finetune_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `FinetuneConfig` field, with its default and help."""
    from gemma_keras.training.config import FinetuneConfig

    for f in dataclasses.fields(FinetuneConfig):
        if f.name == "pack":  # not offered; the config explains why when set
            continue
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        dest = f"ft_{f.name}"
        help_text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        if f.name == "verbose":
            parser.add_argument(
                "--quiet", dest=dest, action="store_false", default=True, help="no progress bar"
            )
        elif f.name == "mask_prompt":
            parser.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        elif f.type in (bool, "bool"):
            parser.add_argument(flag, dest=dest, action="store_true", default=f.default, help=help_text)
        else:
            default = f.default
            parser.add_argument(
                flag,
                dest=dest,
                type=f.metadata["type"],
                default=default,
                required=f.name == "out_dir",
                help=help_text if default is None else f"{help_text} (default: {default})",
            )
    parser.add_argument(
        "--skip-bad-records",
        action="store_true",
        help="skip malformed lines instead of failing (--on-error skip)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemma-keras",
        description="Gemma models as Keras 3 models on JAX, TensorFlow or PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="show backends, versions, devices and dtype")
    _add_common_flags(info)
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
    tune.add_argument("--model", default=None, help="the base model (default: embedded Gemma 3 270M)")
    _add_common_flags(tune)
    tune.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    _add_finetune_flags(tune)
    tune.set_defaults(func=_cmd_finetune)

    exp = sub.add_parser("export", help="write a model as a Keras preset, safetensors or GGUF")
    exp.add_argument("source", help="a .gguf file, preset dir, preset name or hub handle")
    exp.add_argument("--to", required=True, help="the destination file or directory")
    exp.add_argument("--format", choices=["keras", "safetensors", "gguf"], help="default: gguf for *.gguf")
    exp.add_argument("--dtype", choices=["f32", "f16", "q8_0"], help="gguf: f16 (default); safetensors: f32")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    _add_common_flags(exp)
    exp.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    try:
        return args.func(args)
    except GemmaKerasError as exc:
        print(f"gemma-keras: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngemma-keras: interrupted", file=sys.stderr)
        return 130

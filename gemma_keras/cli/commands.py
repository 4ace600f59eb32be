"""The `gemma-keras` command: parses arguments and calls the public API; it holds no logic of its own.

gemma-keras info
gemma-keras generate "The capital of France is" --backend jax --max-new-tokens 32
gemma-keras chat --backend torch --system "Answer briefly."
gemma-keras finetune train.jsonl --lora-rank 8 --out run/
gemma-keras export model.gguf --to gemma-hf --format safetensors
gemma-keras serve model.gguf --backend jax --port 8000 --max-batch 8

Third-party log lines (TensorFlow, XLA, absl) are hidden; `--verbose` (or
GEMMA_KERAS_VERBOSE=1) shows them. Results go to stdout, progress and
errors to stderr.

Exit codes: 0 done; 2 a user mistake, with one line on stderr
(`gemma-keras: error: ...`) and no traceback, found before the model loads
wherever the arguments alone show it; 130 after SIGINT (Ctrl-C) and 143
after SIGTERM, with one line that says what was stopped (for `finetune`, the
step reached and the command that resumes it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from gemma_keras import checks, interrupts
from gemma_keras.backend.quiet import VERBOSE_ENV
from gemma_keras.backend.selection import BACKENDS
from gemma_keras.cli.progress import Spinner
from gemma_keras.errors import GemmaKerasError

BACKEND_HELP = ", ".join(BACKENDS)


class UsageError(GemmaKerasError, ValueError):
    """A command-line argument is wrong: exit 2 with one line, before anything slow runs."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line raises `UsageError` (one line) instead of printing usage."""

    commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # named after the subcommand whose help lists the flags, not the top level
            command = self.commands.get(getattr(parsed, "command", None), self)
            command.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _cmd_info(args: argparse.Namespace) -> int:
    import gemma_keras as gk
    from gemma_keras.backend.devices import default_dtype
    from gemma_keras.backend.selection import resolve_backend
    from gemma_keras.sources.cache import cache_dir

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


def _load(args: argparse.Namespace, source=None, dtype=None, quantize=None):
    import gemma_keras as gk

    with Spinner() as spinner:
        return gk.load(source, dtype=dtype, progress=spinner.update, quantize=quantize)


def _sampling_kwargs(sampling) -> dict:
    return {f.name: getattr(sampling, f.name) for f in dataclasses.fields(sampling)}


def _cmd_generate(args: argparse.Namespace) -> int:
    import gemma_keras as gk
    from gemma_keras.generation.streaming import check_stop_strings

    # Check the cheap arguments before the slow load.
    sampling = _sampling_from(args)
    if not args.prompt:
        raise gk.GenerationArgumentError("the prompt is empty; give some text to continue.")
    check_stop_strings(args.stop)
    if args.draft and args.assistant:
        raise gk.GenerationArgumentError("give --draft or --assistant, not both.")
    lm = _load(args, args.model, args.dtype, args.quantize)
    options = dict(max_new_tokens=args.max_new_tokens, stop=args.stop or None, **_sampling_kwargs(sampling))
    if args.draft or args.assistant:
        if args.draft:
            draft = _load(args, args.draft, args.dtype)
        else:
            draft = gk.load_assistant(args.assistant, dtype=args.dtype)
        options.update(draft=draft, lookahead=args.lookahead)
    if args.no_stream:
        print(lm.generate(args.prompt, include_prompt=args.include_prompt, **options))
    else:
        if args.include_prompt:
            print(args.prompt, end="", flush=True)
        try:
            for piece in lm.stream(args.prompt, **options):
                interrupts.check()  # a Ctrl-C that Python dropped (raised inside a GC callback) stops here
                print(piece, end="", flush=True)
        finally:
            print(flush=True)
    stats = lm.last_draft_stats
    if "draft" in options and stats is not None:
        print(
            f"draft: {stats.accepted}/{stats.proposed} proposals kept, "
            f"{stats.tokens_per_pass:.2f} tokens per model pass",
            file=sys.stderr,
        )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import gemma_keras as gk
    from gemma_keras.serving.server import Server

    for flag, value, low in (
        ("--port", args.port, 0),
        ("--max-batch", args.max_batch, 1),
        ("--max-queue", args.max_queue, 0),
        ("--max-body-bytes", args.max_body_bytes, 1024),
        ("--default-max-tokens", args.default_max_tokens, 1),
    ):
        if value < low or (flag == "--port" and value > 65535):
            raise UsageError(
                f"{flag} must be {'0..65535' if flag == '--port' else f'>= {low}'}, got {value}."
            )
    if args.grace < 0:
        raise UsageError(f"--grace must be >= 0 seconds, got {args.grace}.")
    if args.adapters is not None:
        _readable_file("--adapters", args.adapters)
    model = args.model
    looks_local = (
        model is not None and "://" not in model and (os.sep in model or Path(model).suffix == ".gguf")
    )
    if looks_local and not Path(model).expanduser().exists():
        # The server loads in the background; a missing file is found here, before it listens.
        raise UsageError(f"the model {model} does not exist.")
    api_key = args.api_key or os.environ.get("GEMMA_KERAS_API_KEY") or None

    if args.quantize == "gguf" and args.adapters is not None:
        raise UsageError("--adapters changes the weights, so --quantize gguf cannot keep the file's blocks.")

    def load():
        if args.quantize == "gguf":
            return gk.load(args.model, dtype=args.dtype, quantize="gguf")
        lm = gk.load(args.model, dtype=args.dtype)
        if args.adapters is not None:  # before quantizing: LoRA needs float kernels
            lm.load_adapters(args.adapters)
        if args.quantize is not None:
            lm.quantize(args.quantize)
        return lm

    server = Server(
        load,
        args.host,
        args.port,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        api_key=api_key,
        grace=args.grace,
        max_body_bytes=args.max_body_bytes,
        default_max_tokens=args.default_max_tokens,
        name=args.name,
        log_level="info" if args.verbose else "warning",
    )
    return server.run()


def _tolerant_stdin():
    """`sys.stdin`, reading bytes that are not text as lone surrogates instead of raising."""
    stdin = sys.stdin
    if stdin is not None and hasattr(stdin, "reconfigure"):
        stdin.reconfigure(errors="surrogateescape")  # each line is then checked with `checks.text`
    return stdin


def _stopped_by_sigint(exc: KeyboardInterrupt) -> bool:
    return getattr(exc, "signum", signal.SIGINT) == signal.SIGINT


def _cmd_chat(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    import gemma_keras as gk

    stdin = stdin or _tolerant_stdin()
    stdout = stdout or sys.stdout
    sampling = _sampling_from(args)
    lm = _load(args, args.model, args.dtype, args.quantize)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gk.NotInstructionTunedWarning)
        chat = lm.chat(
            system=args.system,
            max_new_tokens=args.max_new_tokens,
            **(
                {"thinking": True, "show_thinking": args.show_thinking}
                if args.thinking or args.show_thinking
                else {}
            ),
            **_sampling_kwargs(sampling),
        )
    for warning in caught:
        print(f"gemma-keras: note: {warning.message}", file=sys.stderr)
    interactive = stdin is not None and stdin.isatty()
    print("Chat with Gemma. /reset clears the history, /exit quits; Ctrl-C stops a reply.", file=stdout)
    while True:
        if interactive:
            try:
                line = input("you> ")
            except EOFError:
                break
            except KeyboardInterrupt as exc:
                if not _stopped_by_sigint(exc):
                    raise  # SIGTERM ends the session
                interrupts.clear()
                print("\n(type /exit to quit)", file=stdout)
                continue
        else:
            print("you> ", end="", file=stdout, flush=True)
            line = stdin.readline() if stdin is not None else ""
            if not line:
                break
        try:
            text = checks.text("this line", line.strip(), UsageError)
        except UsageError as exc:
            print(f"gemma-keras: error: {_one_line(exc)}", file=sys.stderr, flush=True)
            print(file=stdout, flush=True)
            continue  # the session goes on
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
        dropped: list = []
        try:
            with warnings.catch_warnings(record=True) as dropped:
                warnings.simplefilter("always", gk.TurnsDroppedWarning)
                for piece in reply:
                    interrupts.check()  # a Ctrl-C that Python dropped stops the reply here
                    print(piece, end="", file=stdout, flush=True)
        except KeyboardInterrupt as exc:
            reply.close()  # records the partial reply
            if not _stopped_by_sigint(exc):
                raise  # SIGTERM ends the session
            interrupts.clear()
            print(" [stopped]", end="", file=stdout)  # the session goes on
        except gk.GenerationArgumentError as exc:
            print(f"\n(error: {_one_line(exc)})", end="", file=stdout)
        print(file=stdout, flush=True)
        for warning in dropped:
            print(f"gemma-keras: note: {warning.message}", file=sys.stderr, flush=True)
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
    _readable_file("the data file", args.data)
    if args.ft_validation_data is not None:
        _readable_file("--validation", args.ft_validation_data)
    _writable_place("--out", args.ft_out_dir, directory=True)
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
    checks.path("the source", args.source, UsageError)
    _writable_place("--to", args.to, directory=fmt != "gguf")
    check_export_destination(args.to, fmt, args.overwrite)
    lm = _load(args, args.source)
    print(f"[gemma-keras] writing {fmt}...", file=sys.stderr, flush=True)
    print(lm.export(args.to, format=fmt, dtype=args.dtype, overwrite=args.overwrite))
    return 0


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", help=BACKEND_HELP)
    parser.add_argument("--verbose", action="store_true", help="show third-party log lines (TensorFlow, XLA)")


def _add_quantize_flag(parser: argparse.ArgumentParser) -> None:
    from gemma_keras.quantization import LOAD_QUANTIZE_MODES

    parser.add_argument(
        "--quantize",
        choices=LOAD_QUANTIZE_MODES,
        default=None,
        help="quantize after loading: int8 or int4 weights (activations stay float), "
        "or int8-activations (Keras' int8: weights and each layer's inputs); "
        "or gguf: keep a GGUF file's own quantized blocks (fast on torch)",
    )


def _add_model_flags(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="a .gguf file, preset dir, preset name or hub handle (default: embedded Gemma 3 270M)",
    )
    _add_common_flags(parser)
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    _add_quantize_flag(parser)
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
    parser = _Parser(
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
    gen.add_argument(
        "--draft", default=None, help="speculative decoding: a smaller model with the same tokenizer"
    )
    gen.add_argument("--assistant", default=None, help="speculative decoding: a Gemma 4 assistant model")
    gen.add_argument("--lookahead", type=int, default=4, help="with --draft/--assistant: proposals per round")
    gen.set_defaults(func=_cmd_generate)

    chat = sub.add_parser("chat", help="an interactive multi-turn chat that streams replies")
    _add_model_flags(chat, max_new_tokens=256)
    chat.add_argument("--system", default=None, help="a system prompt, folded into the first user turn")
    chat.add_argument(
        "--thinking",
        action="store_true",
        help="Gemma 4: let the model think before it answers (thought hidden)",
    )
    chat.add_argument("--show-thinking", action="store_true", help="with --thinking: print the thought too")
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
    srv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching")
    srv.add_argument("model", nargs="?", default=None, help="the model (default: embedded Gemma 3 270M)")
    _add_common_flags(srv)
    srv.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    srv.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, help="the port (default: 8000)")
    srv.add_argument("--max-batch", type=int, default=8, help="rows decoding at once (default: 8)")
    srv.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those; more get 429")
    srv.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' (or GEMMA_KERAS_API_KEY)"
    )
    srv.add_argument("--adapters", default=None, help="LoRA adapters (.npz from finetune) to apply")
    _add_quantize_flag(srv)
    srv.add_argument("--grace", type=float, default=30.0, help="seconds in-flight requests get after SIGTERM")
    srv.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    srv.add_argument("--default-max-tokens", type=int, default=512, help="a chat reply's budget when unset")
    srv.add_argument("--name", default=None, help="the model id clients send (default: from the source)")
    srv.set_defaults(func=_cmd_serve)
    parser.commands = {
        "info": info,
        "generate": gen,
        "chat": chat,
        "finetune": tune,
        "export": exp,
        "serve": srv,
    }
    return parser


def _one_line(exc: BaseException | str) -> str:
    return re.sub(r"\s*\n\s*", " ", str(exc)).strip()


def _readable_file(name: str, value: str) -> None:
    path = Path(checks.path(name, value, UsageError)).expanduser()
    if not path.exists():
        raise UsageError(f"{name} {value} does not exist.")
    if not path.is_file():
        raise UsageError(f"{name} {value} is not a file (a directory?); give a JSONL file.")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{name} {value} cannot be read (permissions).")


def _writable_place(name: str, value: str, directory: bool) -> None:
    """`value` is a usable path whose nearest existing ancestor is a writable directory."""
    path = Path(checks.path(name, value, UsageError)).expanduser()
    if directory and path.exists() and not path.is_dir():
        raise UsageError(f"{name} {value} is a file; give a directory.")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{name} {value} cannot be made: {parent} is not a directory.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{name} {value} cannot be written: {parent} is read-only or not ours.")


_POSITIONALS = {"prompt": "the prompt", "data": "the data file", "source": "the source", "model": "the model"}


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The checks every command shares, before anything slow: text, backend, dtype, model."""
    from gemma_keras.backend.devices import validate_dtype
    from gemma_keras.backend.selection import use_backend

    command = parser.commands[args.command]
    for action in command._actions:
        value = getattr(args, action.dest, None)
        name = (
            action.option_strings[-1] if action.option_strings else _POSITIONALS.get(action.dest, action.dest)
        )
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                checks.text(name, item, UsageError)  # bytes that were not UTF-8 (surrogates)
    if args.backend is not None:
        use_backend(args.backend)
    if getattr(args, "model", None) is not None:
        checks.path("--model", args.model, UsageError)
    if args.command != "export" and getattr(args, "dtype", None) is not None:
        validate_dtype(args.dtype)


def _command_line(argv: Sequence[str], resume: bool) -> str:
    words = ["gemma-keras", *argv]
    if resume and "--resume" not in words:
        words.append("--resume")
    return shlex.join(words)


def _interrupted_line(args: argparse.Namespace, argv: Sequence[str], exc: KeyboardInterrupt) -> str:
    step = getattr(exc, "step", None)
    if args.command == "finetune" and step is not None:
        total, checkpoint = getattr(exc, "total_steps", None), getattr(exc, "checkpoint", None)
        where = f"step {step} of {total}" if total else f"step {step}"
        saved = f" (checkpoint {checkpoint})" if checkpoint else ""
        return f"gemma-keras: interrupted at {where}{saved}; resume with: {_command_line(argv, True)}"
    if getattr(exc, "message", None):
        return f"gemma-keras: interrupted: {_one_line(exc.message)}"
    name = getattr(exc, "signal_name", None)
    return f"gemma-keras: interrupted by {name}" if name else "gemma-keras: interrupted"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"gemma-keras: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    try:
        # SIGTERM stops a command as Ctrl-C does, and neither is lost where Python drops it.
        with interrupts.raising():
            _check_arguments(parser, args)
            return args.func(args)
    except GemmaKerasError as exc:
        print(f"gemma-keras: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        newline = "\n" if sys.stderr.isatty() else ""  # after the terminal's ^C or a progress bar
        print(newline + _interrupted_line(args, argv, exc), file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)

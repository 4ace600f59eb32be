"""Loads a Gemma 4 assistant model (a multi-token-prediction draft) for speculative decoding.

Two sources: a transformers directory (`Gemma4AssistantForCausalLM`,
`model_type` `gemma4_assistant`), converted here like a Gemma 4 checkpoint
(its text model through the Gemma 4 table, plus the projections to and from
the target's width and the optional ordered-embedding head), or a Keras
preset of KerasHub's `Gemma4AssistantCausalLM` (a directory, or a KerasHub
preset name, which KerasHub downloads).

Example:

>>> assistant = load_assistant("path/to/gemma-4-e2b-it-assistant")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gemma_keras.architectures.gemma4 import GEMMA4
from gemma_keras.backend.devices import default_dtype, validate_dtype
from gemma_keras.backend.keras_hub_import import import_keras_hub
from gemma_keras.backend.no_init import weights_follow
from gemma_keras.backend.selection import ensure_backend
from gemma_keras.checks import is_integer
from gemma_keras.errors import ModelNotFoundError, SourceError, UnsupportedModelError
from gemma_keras.formats.layer_tables import TABLES, fill_table
from gemma_keras.formats.safetensors_reader import SafetensorsTensors
from gemma_keras.generation.assistant import Assistant

MODEL_TYPE = "gemma4_assistant"


def load_assistant(source: str | os.PathLike, dtype: str | None = None) -> Assistant:
    """A Gemma 4 assistant from a transformers directory, a Keras preset directory or a KerasHub preset name."""
    backend = ensure_backend()
    dtype = validate_dtype(dtype) if dtype else default_dtype(backend)
    path = Path(source).expanduser()
    weights = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    if (path / "config.json").is_file() and weights:
        return Assistant(_convert(path, dtype), str(path))
    if path.exists() and not (path / "metadata.json").is_file():
        raise SourceError(
            f"{path} is neither a transformers Gemma 4 assistant directory (config.json and "
            "model.safetensors) nor a Keras preset (metadata.json)."
        )
    if not path.exists() and os.sep in str(source):
        raise ModelNotFoundError(f"{path}: no such directory.")
    keras_hub = import_keras_hub()
    lm = keras_hub.models.Gemma4AssistantCausalLM.from_preset(str(source), dtype=dtype)
    return Assistant(lm, str(source))


def _convert(path: Path, dtype: str):
    where = str(path / "config.json")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"{where} is not readable JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        found = config.get("model_type") if isinstance(config, dict) else None
        raise UnsupportedModelError(
            f"{where}: model_type {found!r} is not {MODEL_TYPE!r}; load a model with gk.load, "
            "and only a Gemma 4 assistant with gk.load_assistant."
        )
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise SourceError(f"{where}: text_config is missing.")
    backbone_config = GEMMA4.hf_backbone_config(text, where)
    if backbone_config["num_kv_shared_layers"] != backbone_config["num_layers"]:
        raise SourceError(f"{where}: every layer of an assistant must read its target's keys and values.")
    sizes = {
        "backbone_hidden_size": config.get("backbone_hidden_size"),
        "num_centroids": config.get("num_centroids", 2048),
        "centroid_intermediate_top_k": config.get("centroid_intermediate_top_k", 32),
    }
    for name, value in sizes.items():
        if not is_integer(value) or not 0 < value <= 1 << 20:
            raise SourceError(f"{where}: {name} = {value!r} is not a size from 1 to {1 << 20}.")
    ordered = bool(config.get("use_ordered_embeddings"))
    keras_hub = import_keras_hub()
    with weights_follow():
        backbone = keras_hub.models.Gemma4Backbone(**backbone_config, dtype=dtype)
        lm = keras_hub.models.Gemma4AssistantCausalLM(
            backbone=backbone, use_ordered_embeddings=ordered, preprocessor=None, **sizes
        )
    tensors = SafetensorsTensors(path)

    def mismatch(name: str, got: tuple, wanted: tuple) -> SourceError:
        return SourceError(f"{path}: tensor {name} has shape {got}, but config.json describes {wanted}.")

    fill_table(backbone, TABLES["gemma4"], lambda name: tensors.get("model." + name), mismatch)
    dense = [("pre_projection", lm.pre_projection), ("post_projection", lm.post_projection)]
    if ordered:
        dense.append(("masked_embedding.centroids", lm.centroids))
    for name, layer in dense:
        array = np.asarray(tensors.get(f"{name}.weight")).T
        if array.shape != tuple(layer.kernel.shape):
            raise mismatch(f"{name}.weight", array.T.shape, tuple(layer.kernel.shape)[::-1])
        layer.kernel.assign(array)
    if ordered:
        order = np.asarray(tensors.get("masked_embedding.token_ordering"))
        vocab = backbone_config["vocabulary_size"]
        if sorted(order.astype(np.int64).tolist()) != list(range(vocab)):
            raise SourceError(
                f"{path}: masked_embedding.token_ordering is not an ordering of the {vocab} tokens."
            )
        lm.token_ordering.assign(order.astype(np.float32))
    return lm

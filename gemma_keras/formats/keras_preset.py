"""Writes a model as a KerasHub preset directory, and rebuilds models without LoRA.

`keras_hub.models.Gemma3CausalLM.from_preset(dir)` (`GemmaCausalLM` for
Gemma 1 and 2) and `gemma_keras.load(dir)` both read what `write_keras_preset`
writes.
"""

from __future__ import annotations

import os
from pathlib import Path

from gemma_keras.backend.no_init import weights_follow
from gemma_keras.errors import ExportError
from gemma_keras.formats.manifest import KERAS_PRESET, export_kind, manifest_info, write_manifest
from gemma_keras.formats.model_info import ModelInfo
from gemma_keras.formats.staging import Kind

# A directory is our preset when its manifest says so and lists all it holds.
KIND = Kind("Keras preset", directory=True, ours=lambda path: export_kind(path) == KERAS_PRESET)


def write_keras_preset(
    causal_lm, tokenizer, info: ModelInfo, out_dir: Path, dtype: str | None = None
) -> None:
    """A KerasHub preset directory, with LoRA merged into plain weights."""
    if has_lora(causal_lm.backbone):
        causal_lm = rebuild(causal_lm)
    causal_lm.save_to_preset(os.fspath(out_dir))
    # gk.load reads these back; KerasHub ignores the file. Its kind marks the
    # directory as our preset, which a later overwrite may replace.
    write_manifest(out_dir, manifest_info(info), kind=KERAS_PRESET)


def write_preset_without_weights(causal_lm, out_dir: Path) -> None:
    """KerasHub's preset of `causal_lm` but its weights file: for a model whose weights stay in their source.

    The config, task, preprocessor and tokenizer files are KerasHub's own;
    `from_preset(dir, load_weights=False)` builds the model from them.
    """
    backbone = causal_lm.backbone
    backbone.save_weights = lambda *args, **kwargs: None  # KerasHub's saver writes the weights through this
    try:
        causal_lm.save_to_preset(os.fspath(out_dir))
    finally:
        del backbone.save_weights


def has_lora(backbone) -> bool:
    return any(
        getattr(layer, "lora_enabled", False) for layer in backbone._flatten_layers(include_self=False)
    )


def rebuild(causal_lm, **config_changes):
    """A copy of the causal LM built from its backbone's config, holding its weights.

    The config never mentions LoRA, so the copy has none, and its weights are
    the merged ones. `config_changes` override config entries.
    """
    backbone = causal_lm.backbone
    with weights_follow():
        clean = type(backbone).from_config(dict(backbone.get_config(), **config_changes))
    # Variables are named by their layers' paths, which the copy shares; a LoRA
    # layer's `kernel` is the merged weight, stored under its plain kernel's path.
    values = {w.path: w for w in backbone.weights}
    for layer in backbone._flatten_layers(include_self=False):
        if getattr(layer, "lora_enabled", False):
            values[layer._kernel.path] = layer.kernel
    for variable in clean.weights:
        value = values.get(variable.path)
        if value is None or tuple(value.shape) != tuple(variable.shape):
            raise ExportError(
                f"gemma_keras bug: weight {variable.path!r} of the rebuilt model has no match of shape "
                f"{tuple(variable.shape)} in the model."
            )
        variable.assign(value)
    return type(causal_lm)(backbone=clean, preprocessor=causal_lm.preprocessor)

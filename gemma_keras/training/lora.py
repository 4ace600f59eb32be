"""LoRA adapters on KerasHub Gemma backbones: enable, save, load, merge.

Keras' `EinsumDense.enable_lora(rank, lora_alpha)` adds the two factors to a
layer; its `kernel` then reads `kernel + alpha / rank * A @ B`. This module
chooses the layers (all of attention and feed-forward by default, where
KerasHub's `enable_lora` takes only query and value), starts `A` from a
seeded draw so runs repeat on every backend, and moves adapters in and out.

Adapter files are `.npz` archives read with `allow_pickle=False`, keyed by
layer path, with a JSON header that records rank, alpha and the model shape.
They are written under the writer policy of `gemma_keras.formats.staging`:
an existing file at the path is replaced only when it is our own adapter
file (its header says so); a directory, a user's file, a symlink or an
unwritable parent raise `FinetuneError` naming the path, before anything is
written.

Example:

>>> enable_lora(lm.backbone, rank=8, targets=("query", "value"), seed=0)  # doctest: +SKIP
>>> save_adapters(lm.backbone, "adapters.npz")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import types
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gemma_keras.checks import is_integer, is_number, positive_int
from gemma_keras.checks import path as check_path
from gemma_keras.errors import FinetuneError, FrozenWeightsWarning
from gemma_keras.formats.staging import Kind, atomic_write, check_destination

# Friendly names -> KerasHub layer names: Gemma 1-4's, then Gemma 3n's (its text layers use
# transformers' names). No name is used for another role in any architecture.
TARGETS = {
    "query": ("query", "q_proj"),
    "key": ("key", "k_proj"),
    "value": ("value", "v_proj"),
    "output": ("attention_output", "o_proj"),
    "gate": ("ffw_gating", "gate_proj"),
    "up": ("ffw_gating_2", "up_proj"),
    "down": ("ffw_linear", "down_proj"),
}
GROUPS = {
    "attention": ("query", "key", "value", "output"),
    "ffw": ("gate", "up", "down"),
    "all": tuple(TARGETS),
}
DEFAULT_TARGETS = GROUPS["all"]
FORMAT = "gemma_keras.lora/1"


def resolve_targets(targets: str | Sequence[str] | None) -> tuple[str, ...]:
    """Expands groups ("attention", "ffw", "all") to sorted friendly names."""
    if targets is None:
        return DEFAULT_TARGETS
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",")]
    if not isinstance(targets, (list, tuple, set, frozenset)) or not all(isinstance(t, str) for t in targets):
        raise FinetuneError(f"targets must be a name or a list of names, got {targets!r}.")
    if not targets:
        raise FinetuneError("targets is empty; name at least one layer, or leave it None for all.")
    names: set[str] = set()
    for target in targets:
        if target in GROUPS:
            names.update(GROUPS[target])
        elif target in TARGETS:
            names.add(target)
        else:
            choices = ", ".join([*TARGETS, *GROUPS])
            raise FinetuneError(f"unknown LoRA target {target!r}; choose from: {choices}.")
    return tuple(t for t in TARGETS if t in names)


def _side_path_call(self, inputs, training=None):
    """`x W + (alpha / rank) (x A) B`, in place of Keras' `x (W + (alpha / rank) A B)`.

    Keras' EinsumDense (and Dense, Gemma 3n's projections) adds `A @ B` to the kernel on every call, so the
    backward pass computes a full kernel-sized gradient and only then
    projects it onto `A` and `B`: as much work as full fine-tuning's weight
    gradients. The side path never forms a kernel-sized product.
    """
    from keras import ops

    equation = getattr(self, "equation", None)  # None: a Dense layer

    def project(x, kernel):
        return ops.matmul(x, kernel) if equation is None else ops.einsum(equation, x, kernel)

    x = project(inputs, self._kernel)
    # The factors are float32 (as Keras makes them); so is their path, as in
    # peft, and the update joins the layer's compute dtype at the end.
    low = project(ops.cast(inputs, "float32"), self.lora_kernel_a)
    update = ops.matmul(low, self.lora_kernel_b) * (self.lora_alpha / self.lora_rank)
    x = ops.add(x, ops.cast(update, x.dtype))
    if self.bias is not None:
        x = ops.add(x, self.bias)
    if self.activation is not None:
        x = self.activation(x)
    return x


def _side_path_fits(layer) -> bool:
    """True when the kernel's last axis is the output's last axis (every Gemma projection)."""
    if not hasattr(layer, "equation"):
        return True  # Dense: `x @ kernel`
    inputs, output = layer.equation.split("->")
    kernel = inputs.split(",")[1]
    return kernel[-1] == output[-1] and kernel[-1] not in inputs.split(",")[0]


def lora_layers(backbone) -> list:
    """The backbone's layers that have LoRA enabled, in a stable order."""
    return [
        layer
        for layer in backbone._flatten_layers(include_self=False)
        if getattr(layer, "lora_enabled", False)
    ]


def layer_key(layer) -> str:
    return layer.lora_kernel_a.path.rsplit("/", 1)[0]


def lora_settings(backbone) -> dict | None:
    """`{"rank", "alpha", "targets"}` of the enabled adapters, or None."""
    return getattr(backbone, "_gemma_keras_lora", None)


def _unused_when_shared(backbone) -> list:
    blocks = getattr(getattr(backbone, "language_model", backbone), "transformer_layers", [])
    return [
        layer
        for block in blocks
        if getattr(block, "is_kv_shared_layer", False)
        for layer in block._flatten_layers()
        if layer.name in TARGETS["key"] + TARGETS["value"]
    ]


def _check_rank_fits(backbone, rank: int, layer_names: set[str]) -> None:
    """Refuses a rank above what the smallest adapted matrix can hold, before anything is allocated.

    A factor pair `(in, rank) x (rank, out)` has rank at most `min(in, out)`;
    a larger `lora_rank` only adds parameters (and, absurdly large, asks the
    backend for more memory than exists).
    """
    sizes = [
        min(int(np.prod(layer._kernel.shape[:-1])), int(layer._kernel.shape[-1]))
        for layer in backbone._flatten_layers(include_self=False)
        if layer.name in layer_names
        and hasattr(layer, "enable_lora")
        and getattr(layer, "_kernel", None) is not None
    ]
    if sizes and rank > min(sizes):
        raise FinetuneError(
            f"lora_rank {rank} is larger than the smallest adapted matrix allows ({min(sizes)}): a higher rank "
            f"adds parameters but no capacity. Use lora_rank <= {min(sizes)}, or adapt larger layers (targets)."
        )


def enable_lora(backbone, rank: int, alpha: float | None = None, targets=None, seed: int = 0) -> dict:
    """Freezes the backbone and adds LoRA factors to the target layers.

    `A` starts He-uniform from `seed` and `B` at zero, so the model's output
    is unchanged until training moves `B`.
    """
    rank = positive_int("lora_rank", rank, FinetuneError)
    alpha = float(rank if alpha is None else alpha)
    if not np.isfinite(alpha) or alpha <= 0:
        raise FinetuneError(f"lora_alpha must be a positive number, got {alpha!r}.")
    names = resolve_targets(targets)
    settings = {"rank": rank, "alpha": alpha, "targets": list(names)}
    current = lora_settings(backbone)
    if current is not None:
        if current != settings:
            raise FinetuneError(
                f"this model already has LoRA adapters {current}; they differ from {settings}. "
                "Merge them first with lm.merge_adapters(), or train with the same settings."
            )
        return settings
    if lora_layers(backbone):
        raise FinetuneError("this model has LoRA layers gemma_keras did not add; load a clean model.")
    layer_names = {name for t in names for name in TARGETS[t]}
    _check_rank_fits(backbone, rank, layer_names)
    backbone.trainable = True
    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = False
    rng = np.random.default_rng([seed, 0x10A])
    # Gemma 3n's audio tower names its projections like the text model's; only the text model is adapted.
    text = {id(lyr) for lyr in getattr(backbone, "language_model", backbone)._flatten_layers()}
    # Gemma 3n builds key and value projections on its KV-shared layers that they never run.
    text -= {id(lyr) for lyr in _unused_when_shared(backbone)}
    enabled = []
    for index, layer in enumerate(lyr for lyr in backbone._flatten_layers(include_self=False) if lyr.weights):
        if layer.name in layer_names and id(layer) in text and hasattr(layer, "enable_lora"):
            layer.trainable = True
            layer.enable_lora(rank, lora_alpha=alpha)
            shape = tuple(layer.lora_kernel_a.shape)
            limit = np.sqrt(6.0 / float(np.prod(shape[:-1])))
            layer.lora_kernel_a.assign(rng.uniform(-limit, limit, shape).astype("float32"))
            if layer.quantization_mode is None and _side_path_fits(layer):
                layer.call = types.MethodType(_side_path_call, layer)
            enabled.append(index)
    if not enabled:
        raise FinetuneError(f"no layer of this model matches the LoRA targets {list(names)}.")
    if backbone.get_config().get("enable_moe_block"):
        warnings.warn(
            FrozenWeightsWarning(
                "this is a mixture-of-experts model: LoRA adapts its attention and dense MLP, but its experts "
                "and router have no LoRA support in KerasHub and stay frozen."
            ),
            stacklevel=3,
        )
    # A frozen layer leaves its variables marked trainable; on torch that keeps
    # `requires_grad`, and autograd then computes a gradient for every base
    # weight (the 256k-row embedding included) only to throw it away.
    factors = {id(v) for layer in lora_layers(backbone) for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
    for variable in backbone.weights:
        if id(variable) not in factors:
            variable.trainable = False
    # KerasHub's own bookkeeping, so `backbone.save_lora_weights` works too.
    backbone._lora_enabled_layers = enabled
    backbone._lora_rank = rank
    backbone._gemma_keras_lora = settings
    return settings


def adapter_arrays(backbone) -> dict[str, np.ndarray]:
    from keras import ops

    arrays = {}
    for layer in lora_layers(backbone):
        key = layer_key(layer)
        arrays[f"{key}/a"] = np.asarray(ops.convert_to_numpy(layer.lora_kernel_a))
        arrays[f"{key}/b"] = np.asarray(ops.convert_to_numpy(layer.lora_kernel_b))
    return arrays


def set_adapter_arrays(backbone, arrays: dict[str, np.ndarray], where: str) -> None:
    layers = lora_layers(backbone)
    expected = {f"{layer_key(layer)}/{part}" for layer in layers for part in ("a", "b")}
    missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
    if missing or extra:
        raise FinetuneError(
            f"{where} does not match this model's LoRA layers "
            f"(missing: {missing[:3]}, unexpected: {extra[:3]}). Was it saved from another model?"
        )
    for layer in layers:
        key = layer_key(layer)
        for part, variable in (("a", layer.lora_kernel_a), ("b", layer.lora_kernel_b)):
            value = arrays[f"{key}/{part}"]
            if tuple(value.shape) != tuple(variable.shape) or not np.all(np.isfinite(value)):
                raise FinetuneError(
                    f"{where}: {key}/{part} has shape {value.shape} (or non-finite values); "
                    f"this model needs {tuple(variable.shape)}."
                )
            variable.assign(value.astype("float32"))


def model_signature(backbone) -> dict:
    """What an adapter file must match: the backbone class and its sizes."""
    config = backbone.get_config()
    keys = (
        "num_layers",
        "hidden_dim",
        "num_query_heads",
        "num_key_value_heads",
        "head_dim",
        "vocabulary_size",
        # Gemma 3n's names for the same sizes
        "num_hidden_layers",
        "text_hidden_size",
        "num_attention_heads",
        "text_vocab_size",
    )
    return {"class": type(backbone).__name__, **{k: config[k] for k in keys if k in config}}


def header_kind(path: Path) -> str | None:
    """The `kind` ("adapters", "checkpoint") in the header of our archive at `path`, or None."""
    with np.load(path, allow_pickle=False) as archive:
        if "__header__" not in archive.files:
            return None
        header = json.loads(bytes(archive["__header__"]).decode())
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return None
    return header.get("kind")


# What write_npz writes; an existing file is replaced only when it is ours of the same kind.
NPZ_KINDS = {
    "adapters": Kind("LoRA adapter file", directory=False, ours=lambda p: header_kind(p) == "adapters"),
    "checkpoint": Kind(
        "fine-tuning checkpoint", directory=False, ours=lambda p: header_kind(p) == "checkpoint"
    ),
}


def write_npz(path: Path, arrays: dict[str, np.ndarray], header: dict) -> None:
    """Writes an `.npz` atomically: a temporary sibling, fsync, then rename.

    The path is checked first (`check_destination`; `header["kind"]` says
    what is written). Any `OSError` (disk full, permissions) becomes a
    `FinetuneError` naming the path, and leaves no temporary file and any
    earlier file there unchanged.
    """
    path = Path(path)
    check_destination(path, NPZ_KINDS[header["kind"]], overwrite=True, error=FinetuneError)
    payload = dict(arrays)
    payload["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.savez(f, **payload), binary=True)
    except OSError as exc:
        raise FinetuneError(
            f"Could not write {path}: {exc}. Nothing was written to {path} (an earlier file there is "
            "unchanged); free some space or choose another path."
        ) from exc


def read_npz(path: Path, kind: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Reads an archive written by `write_npz`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"{kind} file {str(path)!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        header = json.loads(bytes(arrays.pop("__header__")).decode())
    except Exception as exc:  # zip, npy and JSON errors all mean the same to a user
        raise FinetuneError(
            f"{kind} file {str(path)!r} is corrupt or not written by gemma_keras ({type(exc).__name__}: {exc})."
        ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise FinetuneError(f"{kind} file {str(path)!r} is not a gemma_keras LoRA file.")
    return header, arrays


def save_adapters(backbone, path: str | os.PathLike) -> Path:
    """Saves the LoRA factors (not the base weights) to one `.npz` file.

    `.npz` is added to a name without it. An existing adapter file of ours
    is replaced atomically; a directory at the path, anything else that is
    there, or a parent that is a file or cannot be written raise
    `FinetuneError` naming the path, and nothing is written.
    """
    settings = lora_settings(backbone)
    if settings is None:
        raise FinetuneError("this model has no LoRA adapters to save; call lm.finetune(...) first.")
    path = Path(check_path("path", path, FinetuneError)).expanduser()
    if path.is_dir():
        raise FinetuneError(
            f"{path} is a directory; save_adapters writes one .npz file. Pass a file path, such as "
            f"{path / 'adapters.npz'}."
        )
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    header = {"format": FORMAT, "kind": "adapters", **settings, "model": model_signature(backbone)}
    write_npz(path, adapter_arrays(backbone), header)
    return path


def _check_declared_rank(header: dict, arrays: dict[str, np.ndarray], where: str) -> None:
    """The rank a file declares must be the rank of the factors it stores.

    `enable_lora` allocates factors of the declared rank before any array is
    read; the stored arrays are bounded by the file's size, so an absurd rank
    in the header is refused here instead of allocated.
    """
    rank = header.get("rank")
    if not is_integer(rank) or rank < 1:
        raise FinetuneError(f"{where}: its rank {rank!r} is not a positive integer.")
    if not is_number(header.get("alpha")):
        raise FinetuneError(f"{where}: its alpha {header.get('alpha')!r} is not a number.")
    stored = sorted({a.shape[-1] for key, a in arrays.items() if key.endswith("/a") and a.ndim >= 1})
    if stored != [rank]:
        raise FinetuneError(
            f"{where}: its header declares rank {rank}, but its factors have rank {stored[:3] or 'none'}."
        )


def load_adapters(backbone, path: str | os.PathLike) -> dict:
    """Enables LoRA as the file says and loads its factors."""
    header, arrays = read_npz(Path(path), "adapter")
    if header.get("model") != model_signature(backbone):
        raise FinetuneError(
            f"adapter file {str(path)!r} was saved from a different model "
            f"({header.get('model')}); this one is {model_signature(backbone)}."
        )
    _check_declared_rank(header, arrays, f"adapter file {str(path)!r}")
    settings = enable_lora(backbone, header["rank"], header["alpha"], header["targets"])
    set_adapter_arrays(backbone, arrays, f"adapter file {str(path)!r}")
    return settings

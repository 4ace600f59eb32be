"""Checks what a Keras preset or transformers checkpoint directory declares, before KerasHub builds it.

KerasHub builds the backbone from the sizes in a directory's JSON files and
reads the weights only afterwards, so a size of 10**12 in `task.json` made
XLA abort the whole process on JAX (`Check failed`, exit 134) before any
Python error could be raised. `check_model_dir` reads those files first,
each with a bounded read, and checks:

- every backbone size and number with `sizes.check_backbone_config` (the
  bounds GGUF files get too), and every other number in the backbone config
  (a vision encoder's, say): finite, and no integer beyond 2**24;
- that the model those sizes describe fits the weights stored beside them,
  within a generous factor: `model.weights.h5` (or its shards) from 0.5 to 4
  bytes per parameter, or the element counts of the safetensors headers;
- for a Keras preset (`config.json` with `registered_name`): `task.json`'s
  backbone agrees with `config.json`'s on every checked field, the
  preprocessors' sequence lengths, `metadata.json`'s `parameter_count`, and
  `gemma_keras.json`'s `context_length`;
- for a transformers checkpoint (`config.json` with `model_type`): the
  model type, the sizes under transformers' names, the context length, the
  RoPE base and the special token ids, and each safetensors header (read as
  its 8-byte length and JSON only): dtypes, shapes and offsets that lie
  inside the file.

Errors are `SourceError` naming the file and the field, or
`UnsupportedModelError` for a valid model of another architecture. Nothing
is allocated in proportion to a declared value.

Example:

>>> check_model_dir(Path("my-gemma"))  # doctest: +SKIP
<Architecture gemma3>
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gemma_keras.architectures.gemma3n import KERAS_NAMES
from gemma_keras.architectures.record import Architecture
from gemma_keras.architectures.registry import by_hf_model_type, of_config
from gemma_keras.checks import is_integer, is_number
from gemma_keras.errors import SourceError, UnsupportedModelError
from gemma_keras.formats.gguf_reader import expected_tensor_shapes
from gemma_keras.formats.manifest import MANIFEST, read_manifest
from gemma_keras.formats.sizes import (
    CHECKED_FIELDS,
    FFN_WIDTH,
    MAX_CONTEXT,
    NUMBERS,
    OPTIONAL_SIZES,
    check_backbone_config,
    check_context,
    number,
    shown,
    size,
)

MAX_JSON_BYTES = 16 << 20  # a config is a few kB; a sharded checkpoint's index a few hundred
MAX_SAFETENSORS_HEADER = 100 << 20  # safetensors' own limit
MAX_CONFIG_INT = 1 << 24  # no integer in a backbone config is larger
MAX_PARAMETERS = 1 << 40
# A stored parameter takes 0.5 (int4) to 4 (float32) bytes; the sizes must match the
# weights within this factor more, and an HDF5 file may add this much of its own.
BYTES_PER_PARAMETER = (0.5, 4.0)
SLACK = 2
HDF5_OVERHEAD = 64 << 20
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SAFETENSORS_ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_POSITIVE = (0.0, 1e12, False, True, False)  # a finite positive number (see `sizes.NUMBERS`)
# Preprocessor sizes: (lowest, highest); each may be null.
_PREPROCESSOR_SIZES = {
    "sequence_length": (1, MAX_CONTEXT),
    "num_vision_tokens_per_image": (1, 1 << 16),
    "max_images_per_prompt": (0, 1 << 10),
}
# A backbone config field and the transformers config.json key it comes from.
HF_NAMES = {
    "vocabulary_size": "vocab_size",
    "num_layers": "num_hidden_layers",
    "num_query_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "hidden_dim": "hidden_size",
    "head_dim": "head_dim",
    "intermediate_dim": "intermediate_size",
    "layer_norm_epsilon": "rms_norm_eps",
    "attention_logit_soft_cap": "attn_logit_softcapping",
    "final_logit_soft_cap": "final_logit_softcapping",
    "sliding_window_size": "sliding_window",
    "global_rope_scaling_factor": "rope_scaling.factor",
    "local_rope_scaling_factor": "rope_parameters.sliding_attention.factor",
    "query_head_dim_normalize": "query_pre_attn_scalar",
    "use_bidirectional_attention": "use_bidirectional_attention",
}
_HF_REQUIRED = (
    "vocabulary_size",
    "num_layers",
    "num_query_heads",
    "num_key_value_heads",
    "hidden_dim",
    "head_dim",
)


def check_model_dir(path: str | Path, weights: bool = True) -> Architecture:
    """Checks a Keras preset or transformers checkpoint directory; returns its architecture.

    `weights=False`: a Keras preset that holds no weights (a GGUF cache entry).
    """
    path = Path(path)
    config_file = path / "config.json"
    config = read_json(config_file)
    try:
        if isinstance(config, dict) and "registered_name" in config:  # KerasHub's own test
            return _check_keras_preset(path, config, weights)
        if isinstance(config, dict) and "model_type" in config:
            return _check_hf_checkpoint(path, config)
    except (SourceError, UnsupportedModelError):
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, OSError) as exc:
        # A value of a type no check above expected: still the directory's fault.
        raise SourceError(f"{path}: malformed preset files ({type(exc).__name__}: {exc}).") from None
    raise SourceError(
        f"{config_file} is neither a Keras preset config (it has no 'registered_name') nor a "
        "transformers config (no 'model_type')."
    )


def read_json(path: Path) -> Any:
    """A JSON file of at most `MAX_JSON_BYTES`, or `SourceError` naming it."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read the file: {exc}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise SourceError(f"{path} is larger than {MAX_JSON_BYTES:,} bytes: not a config file.")
    return _parse_json(path, raw)


def _parse_json(path: Path, raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SourceError(f"{path} is not valid JSON ({type(exc).__name__}: {exc}).") from None


# --- Keras presets ------------------------------------------------------------
def _check_keras_preset(path: Path, config: dict, with_weights: bool = True) -> Architecture:
    config_file = path / "config.json"
    backbone, arch = _keras_backbone(config_file, config, "")
    check_backbone_config(_standard(backbone), where=str(config_file), error=SourceError)
    context = _manifest_context(path) or arch.context_length(backbone)
    check_backbone_config(_standard(backbone), where=str(config_file), error=SourceError, context=context)
    _check_numbers(config_file, backbone, "config")

    task_file = path / "task.json"
    if task_file.exists():
        task = _object(task_file, read_json(task_file), "")
        task_config = _object(task_file, task.get("config"), "config")
        if "backbone" in task_config:
            task_backbone, _ = _keras_backbone(task_file, task_config["backbone"], "config.backbone.")
            check_backbone_config(
                _standard(task_backbone), where=str(task_file), error=SourceError, context=context
            )
            _check_numbers(task_file, task_backbone, "config.backbone.config")
            _agree(config_file, backbone, task_file, task_backbone)
        if isinstance(task_config.get("preprocessor"), dict):
            _check_preprocessor(task_file, task_config["preprocessor"], "config.preprocessor.")
    preprocessor_file = path / "preprocessor.json"
    if preprocessor_file.exists():
        _check_preprocessor(preprocessor_file, read_json(preprocessor_file), "")
    if not with_weights:
        return arch

    weights, stored = _keras_weights(path)
    parameters = implied_parameters(arch, backbone)
    most, least = stored / BYTES_PER_PARAMETER[0], (stored - HDF5_OVERHEAD) / BYTES_PER_PARAMETER[1]
    _fits(config_file, _summary(_standard(backbone)), parameters, weights, f"{stored:,} bytes", most, least)
    metadata_file = path / "metadata.json"
    if metadata_file.exists():
        metadata = _object(metadata_file, read_json(metadata_file), "")
        if metadata.get("parameter_count") is not None:
            count = size(
                str(metadata_file),
                "parameter_count",
                metadata["parameter_count"],
                1,
                MAX_PARAMETERS,
                SourceError,
            )
            _fits(metadata_file, "parameter_count", count, weights, f"{stored:,} bytes", most, least)
    return arch


def _keras_backbone(where: Path, serialized: Any, prefix: str) -> tuple[dict, Architecture]:
    """A serialized backbone's config and its architecture."""
    serialized = _object(where, serialized, prefix.rstrip(".") or "")
    class_name, registered = serialized.get("class_name"), serialized.get("registered_name")
    if not isinstance(class_name, str):
        raise SourceError(f"{where}: {prefix}class_name = {shown(class_name)} is not a class name.")
    # Keras builds the class `registered_name` names ("keras_hub>Gemma3Backbone") when there is one.
    if registered is not None and (
        not isinstance(registered, str) or registered.split(">")[-1] != class_name
    ):
        raise SourceError(
            f"{where}: {prefix}registered_name = {shown(registered)} does not name the class "
            f"{prefix}class_name = {class_name!r}."
        )
    backbone = _object(where, serialized.get("config"), f"{prefix}config")
    try:
        arch = of_config(backbone, class_name)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{where}: {exc}") from None
    return backbone, arch


def _object(where: Path, value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        what = f"{name} " if name else ""
        raise SourceError(f"{where}: {what}is a {type(value).__name__}, not a JSON object.")
    return value


def _check_numbers(where: Path, value: Any, trail: str) -> None:
    """Every number under `value` finite, every integer within `MAX_CONFIG_INT` (no recursion)."""
    stack = [(trail, value)]
    while stack:
        trail, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{trail}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{trail}[{i}]", v) for i, v in enumerate(value))
        elif is_integer(value) and abs(value) > MAX_CONFIG_INT:
            raise SourceError(f"{where}: {trail} = {value} is beyond any size a Gemma model has.")
        elif is_number(value) and not math.isfinite(value):
            raise SourceError(f"{where}: {trail} = {value} is not a finite number.")


def _agree(first_file: Path, first: dict, second_file: Path, second: dict) -> None:
    for field in CHECKED_FIELDS:
        if first.get(field) != second.get(field):
            raise SourceError(
                f"{first_file} and {second_file} disagree on {field}: {first.get(field)!r} against "
                f"{second.get(field)!r}. One of them was edited; restore the preset."
            )


def _check_preprocessor(where: Path, serialized: Any, prefix: str) -> None:
    config = _object(where, _object(where, serialized, prefix.rstrip(".")).get("config"), f"{prefix}config")
    for field, (lowest, highest) in _PREPROCESSOR_SIZES.items():
        if config.get(field) is not None:
            size(str(where), f"{prefix}config.{field}", config[field], lowest, highest, SourceError)


def _manifest_context(path: Path) -> int | None:
    """`gemma_keras.json`'s context length, checked, when the manifest is whole."""
    manifest = read_manifest(path, verify=False)
    if manifest is None or manifest.get("context_length") is None:
        return None
    return check_context(str(path / MANIFEST), "context_length", manifest["context_length"], SourceError)


def _keras_weights(path: Path) -> tuple[Path, int]:
    """The weights file (or shard index) and the bytes of weights it stands for."""
    single, index = path / "model.weights.h5", path / "model.weights.json"
    if single.is_file():
        files, named = [single], single
    elif index.is_file():
        weight_map = _object(index, _object(index, read_json(index), "").get("weight_map"), "weight_map")
        names = _file_names(
            index, [n for v in weight_map.values() for n in (v if isinstance(v, list) else [v])]
        )
        files, named = [_inside(path, index, name) for name in names], index
    else:
        raise SourceError(f"{path}: the preset holds no weights (model.weights.h5 or model.weights.json).")
    total = 0
    for file in files:
        stored = file.stat().st_size
        if stored == 0:
            raise SourceError(f"{file} is empty.")
        _check_hdf5(file, stored)
        total += stored
    return named, total


def _check_hdf5(file: Path, stored: int) -> None:
    """The HDF5 signature, and the end of file its superblock records within the file."""
    with open(file, "rb") as f:
        offset = 0  # the signature sits at 0, 512, 1024, 2048, ... (after a user block)
        while offset + len(_HDF5_SIGNATURE) <= stored and offset <= 1 << 20:
            f.seek(offset)
            superblock = f.read(64)
            if superblock.startswith(_HDF5_SIGNATURE):
                break
            offset = 512 if offset == 0 else offset * 2
        else:
            raise SourceError(f"{file} is not an HDF5 file (overwritten, or truncated to {stored} bytes?).")
    end = _hdf5_end(superblock)
    if end is not None and stored + end[0] < end[1]:  # HDF5's own test for a truncated file
        raise SourceError(f"{file} is truncated: it holds {stored:,} bytes, and its header says {end[1]:,}.")


def _hdf5_end(superblock: bytes) -> tuple[int, int] | None:
    """`(base address, end-of-file address)` from an HDF5 superblock, when its version is known.

    Versions 0 and 1 hold, after the sizes of offsets (byte 13), the base, free-space and
    end-of-file addresses from byte 24 (28 in version 1); versions 2 and 3 the base,
    extension and end-of-file addresses from byte 12, after the size of offsets (byte 9).
    """
    version = superblock[8] if len(superblock) > 8 else None
    if version in (0, 1):
        width, start = superblock[13], 24 if version == 0 else 28
    elif version in (2, 3):
        width, start = superblock[9], 12
    else:
        return None
    if width not in (2, 4, 8) or len(superblock) < start + 3 * width:
        return None
    base, _, end = (
        int.from_bytes(superblock[start + i * width : start + (i + 1) * width], "little") for i in range(3)
    )
    if end == (1 << (8 * width)) - 1:  # undefined
        return None
    return base, end


def _file_names(index: Path, names: list) -> list[str]:
    """The distinct file names a shard index lists."""
    for name in names:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise SourceError(f"{index}: {shown(name)} is not a file name.")
    distinct = sorted(set(names))
    if len(distinct) > 10_000:
        raise SourceError(f"{index} names {len(distinct):,} files.")
    return distinct


def _inside(path: Path, index: Path, name: str) -> Path:
    """A file named by a shard index: a plain file inside the directory."""
    file = path / name
    if not file.resolve().is_relative_to(path.resolve()):
        raise SourceError(f"{index}: {name!r} lies outside the directory.")
    if not file.is_file():
        raise SourceError(f"{index} names {name!r}, which is missing.")
    return file


def implied_parameters(arch: Architecture, config: dict[str, Any]) -> int:
    """The parameters of the text model a (checked) backbone config describes."""
    if arch.parameter_count is not None:  # layers that differ: the record counts them
        return arch.parameter_count(config)
    shapes = expected_tensor_shapes(arch, config, arch.ffn_width(config))
    return sum(math.prod(shape) for shape in shapes.values())


def _fits(
    where: Path, declared: str, parameters: int, weights: Path, held: str, most: float, least: float
) -> None:
    """`parameters` within `SLACK` of what the weights hold: from `least` to `most` parameters."""
    if parameters > SLACK * most or parameters * SLACK < least:
        bound = f"room for at most {int(most):,}" if parameters > SLACK * most else f"at least {int(least):,}"
        raise SourceError(
            f"{where}: declares {parameters:,} parameters ({declared}), but {weights} holds {held}, "
            f"{bound} parameters. The config or the weights file is wrong."
        )


def _summary(config: dict[str, Any], names: dict[str, str] | None = None) -> str:
    fields = (
        "vocabulary_size",
        "num_layers",
        "hidden_dim",
        "intermediate_dim",
        "num_query_heads",
        "head_dim",
    )
    return ", ".join(f"{(names or {}).get(f, f)} = {config[f]}" for f in fields)


# --- transformers checkpoints -------------------------------------------------
def _check_hf_checkpoint(path: Path, config: dict) -> Architecture:
    config_file = path / "config.json"
    where = str(config_file)
    model_type = config["model_type"]
    if not isinstance(model_type, str):
        raise SourceError(f"{where}: model_type = {model_type!r} is not a name.")
    arch = by_hf_model_type(model_type, where)
    if arch.hf_backbone_config is not None:
        return _check_converted_hf(path, config, arch)
    backbone = _hf_backbone(where, config, arch)
    context = None
    if config.get("max_position_embeddings") is not None:
        context = check_context(
            where, "max_position_embeddings", config["max_position_embeddings"], SourceError
        )
    check_backbone_config(backbone, where=where, error=SourceError, names=HF_NAMES, context=context)
    scalar = config.get("query_pre_attn_scalar")
    per_head = backbone["hidden_dim"] // backbone["num_query_heads"]
    if scalar is not None and scalar not in (backbone["head_dim"], per_head):
        # transformers scales queries by 1/sqrt(query_pre_attn_scalar); KerasHub knows two scales.
        raise UnsupportedModelError(
            f"{where}: query_pre_attn_scalar is {scalar}, but KerasHub scales queries by head_dim "
            f"({backbone['head_dim']}) or hidden_size / num_attention_heads ({per_head}) only."
        )
    if backbone.get("use_bidirectional_attention"):
        raise UnsupportedModelError(
            f"{where}: use_bidirectional_attention is true: an embedding model, which cannot generate text."
        )
    if config.get("rope_theta") is not None:
        theta = number(where, "rope_theta", config["rope_theta"], _POSITIVE, SourceError)
        if abs(theta - arch.rope_base) > 1e-3 * arch.rope_base:
            raise UnsupportedModelError(
                f"{where}: rope_theta is {theta:g}, but KerasHub's {arch.title} backbone fixes it at "
                f"{arch.rope_base:g}."
            )
    _check_token_ids(where, config, backbone["vocabulary_size"])

    weights, elements = _safetensors(path)
    parameters = implied_parameters(arch, backbone)
    held = f"{elements:,} values"
    _fits(
        config_file, _summary(backbone, HF_NAMES), parameters, weights, held, elements, elements - (1 << 24)
    )
    return arch


# Gemma 3n's KerasHub config names its sizes differently.
# Gemma 3n's size names -> Gemma 1-4's.
_ALIASES = {ours: theirs for theirs, ours in KERAS_NAMES.items() if ours} | {
    "intermediate_size": "intermediate_dim"
}


def _standard(backbone: dict) -> dict:
    """A backbone config under the size names Gemma 1-4 use (Gemma 3n's are renamed, and its per-layer
    width list becomes its largest; anything else is left for the checks to refuse)."""
    sizes = {_ALIASES.get(k, k): v for k, v in backbone.items()}
    widths = backbone.get("intermediate_size")  # Gemma 3n's, which may list one width per layer
    if isinstance(widths, list) and widths and all(is_integer(w) for w in widths):
        sizes["intermediate_dim"] = max(widths)
    return sizes


def _check_converted_hf(path: Path, config: dict, arch: Architecture) -> Architecture:
    """A checkpoint we convert ourselves (`sources.hf_convert`): the record reads the config."""
    config_file = path / "config.json"
    where = str(config_file)
    backbone = arch.hf_backbone_config(config, where)
    sizes = _standard(backbone)
    check_backbone_config(
        {k: sizes[k] for k in _HF_REQUIRED + ("intermediate_dim",)},
        where=where,
        error=SourceError,
        names=HF_NAMES,
    )
    # Every other size the record read (per-layer widths, experts, ranks, ...) is bounded too.
    for field, value in backbone.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, int) and not isinstance(item, bool):
                size(where, field, item, 0, 1 << 22, SourceError)
    size(
        where,
        "num_kv_shared_layers",
        backbone.get("num_kv_shared_layers") or 0,
        0,
        sizes["num_layers"] - 1,
        SourceError,
    )
    text = config.get("text_config") or config
    if text.get("max_position_embeddings") is not None:
        check_context(where, "max_position_embeddings", text["max_position_embeddings"], SourceError)
    _check_token_ids(where, text, sizes["vocabulary_size"])
    weights, elements = _safetensors(path)
    parameters = arch.parameter_count(backbone)
    # A multimodal checkpoint also holds its vision and audio towers.
    _fits(config_file, _summary(sizes, HF_NAMES), parameters, weights, f"{elements:,} values", elements, 0)
    return arch


def _hf_backbone(where: str, config: dict, arch: Architecture) -> dict[str, Any]:
    """The KerasHub backbone config that transformers' config describes (sizes not yet checked)."""
    backbone: dict[str, Any] = {}
    for field in _HF_REQUIRED:
        if HF_NAMES[field] not in config:
            raise SourceError(f"{where}: {HF_NAMES[field]} is missing.")
        backbone[field] = config[HF_NAMES[field]]
    if "intermediate_size" not in config:
        raise SourceError(f"{where}: intermediate_size is missing.")
    ffn = size(where, "intermediate_size", config["intermediate_size"], *FFN_WIDTH, SourceError)
    backbone["intermediate_dim"] = arch.keras_intermediate_dim(ffn)
    for field in ("layer_norm_epsilon", "attention_logit_soft_cap", "final_logit_soft_cap"):
        if HF_NAMES[field] in config:
            backbone[field] = config[HF_NAMES[field]]
    if config.get("sliding_window") is not None:
        # Bounded even where no layer slides (Gemma 1): a declared size is never trusted unread.
        window = size(
            where,
            "sliding_window",
            config["sliding_window"],
            *OPTIONAL_SIZES["sliding_window_size"],
            SourceError,
        )
        if arch.global_every is not None:
            backbone["sliding_window_size"] = window
            backbone["use_sliding_window_attention"] = True
    if "use_bidirectional_attention" in config:
        backbone["use_bidirectional_attention"] = config["use_bidirectional_attention"]
    if config.get("query_pre_attn_scalar") is not None:
        scalar = number(
            where, "query_pre_attn_scalar", config["query_pre_attn_scalar"], _POSITIVE, SourceError
        )
        backbone["query_head_dim_normalize"] = scalar == backbone["head_dim"]
    rope_scaling = config.get("rope_scaling")
    if rope_scaling is not None:
        scaling = _object(Path(where), rope_scaling, "rope_scaling")
        if "factor" in scaling:
            backbone["global_rope_scaling_factor"] = scaling["factor"]
    rope_parameters = config.get("rope_parameters")
    if rope_parameters is not None:
        parameters = _object(Path(where), rope_parameters, "rope_parameters")
        for kind, field in (
            ("full_attention", "global_rope_scaling_factor"),
            ("sliding_attention", "local_rope_scaling_factor"),
        ):
            if parameters.get(kind) is not None:
                entry = _object(Path(where), parameters[kind], f"rope_parameters.{kind}")
                if "factor" in entry:
                    name = f"rope_parameters.{kind}.factor"
                    number(where, name, entry["factor"], NUMBERS[field], SourceError)
                    backbone.setdefault(field, entry["factor"])
    return backbone


def _check_token_ids(where: str, config: dict, vocabulary: int) -> None:
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if len(values) > 64:
            raise SourceError(f"{where}: {key} lists {len(values):,} ids; a model stops on a few.")
        for token in values:
            size(where, key, token, 0, vocabulary - 1, SourceError)


def _safetensors(path: Path) -> tuple[Path, int]:
    """The weights file (or index) and the number of values the safetensors headers declare."""
    index, single = path / "model.safetensors.index.json", path / "model.safetensors"
    if index.is_file():
        weight_map = _object(index, _object(index, read_json(index), "").get("weight_map"), "weight_map")
        names = _file_names(index, list(weight_map.values()))
        files, named = [_inside(path, index, name) for name in names], index
    elif single.is_file():
        files, named = [single], single
    else:
        raise SourceError(
            f"{path}: the checkpoint holds no weights (model.safetensors or model.safetensors.index.json)."
        )
    return named, sum(_safetensors_values(file) for file in files)


def _safetensors_values(file: Path) -> int:
    """Checks a safetensors header against its file; returns how many values it declares."""
    stored = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SourceError(f"{file} is too short to be a safetensors file ({stored} bytes).")
        length = int.from_bytes(head, "little")
        if length > min(MAX_SAFETENSORS_HEADER, stored - 8):
            raise SourceError(
                f"{file}: its header length is {length:,} bytes, but the file holds {stored - 8:,} after it "
                f"(and headers are at most {MAX_SAFETENSORS_HEADER:,})."
            )
        header = _parse_json(file, f.read(length))
    header = _object(file, header, "the header")
    data = stored - 8 - length
    total, spans = 0, []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise SourceError(f"{file}: __metadata__ is not a map of strings.")
            continue
        entry = _object(file, entry, f"tensor {name!r}")
        itemsize = _SAFETENSORS_ITEMSIZE.get(entry.get("dtype"))
        if itemsize is None:
            raise SourceError(f"{file}: tensor {name!r} has an unknown dtype {entry.get('dtype')!r}.")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(is_integer(d) and 0 <= d <= MAX_PARAMETERS for d in shape)
        ):
            raise SourceError(f"{file}: tensor {name!r} has an invalid shape {shape!r}.")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(is_integer(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data
        ):
            raise SourceError(
                f"{file}: tensor {name!r} has data_offsets {offsets!r}, outside the {data:,} bytes of data."
            )
        count = math.prod(shape)
        if count * itemsize != offsets[1] - offsets[0]:
            raise SourceError(
                f"{file}: tensor {name!r} of shape {shape} and dtype {entry['dtype']} needs "
                f"{count * itemsize:,} bytes, but its data_offsets span {offsets[1] - offsets[0]:,}."
            )
        total += count
        spans.append((offsets[0], offsets[1], name))
    # safetensors wants the tensors to tile the data exactly, with no gap or overlap.
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise SourceError(
                f"{file}: tensor {name!r} starts at byte {begin:,} of the data, but the one before ends at "
                f"{position:,}: the data has a gap or an overlap."
            )
        position = end
    if position != data:
        raise SourceError(
            f"{file}: the tensors cover {position:,} bytes, but the file holds {data:,} after the header."
        )
    return total

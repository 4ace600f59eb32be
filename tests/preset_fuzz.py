"""The preset and checkpoint fuzz: its case list, and the worker that runs it in a subprocess.

`tests/test_fuzz_presets.py` writes tiny Keras presets and transformers
checkpoints into a corpus directory, then runs this module as a worker:
`python -m tests.preset_fuzz CORPUS START STRIDE`. The worker rebuilds the
same explicit case list (no randomness but seeded byte garbling), and for
every STRIDE-th case from START copies a directory, mutates it and calls `gk.load` on it,
printing one `@@fuzz` JSON line before and one after. A case that kills the
process (an XLA abort, a segfault) leaves a start line without an end; the
parent records it and starts a new worker after it.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARK = "@@fuzz "
ARCHITECTURES = ("gemma", "gemma2", "gemma3")
DELETE = object()  # a key removed instead of set

# Values of the right shape for a size but absurd, and of the wrong type.
ABSURD_INTS = [0, -1, 2**31, 10**12, 2**63]
WRONG_TYPES = ["8", 8.5, True, None, [8], {"a": 8}]
ABSURD_FLOATS = [float("nan"), float("inf"), float("-inf"), -1.0, 0.0, 1e300, "x", None]

KERAS_SIZES = (
    "vocabulary_size",
    "num_layers",
    "num_query_heads",
    "num_key_value_heads",
    "hidden_dim",
    "intermediate_dim",
    "head_dim",
    "sliding_window_size",
)
KERAS_NUMBERS = (
    "layer_norm_epsilon",
    "attention_logit_soft_cap",
    "final_logit_soft_cap",
    "global_rope_scaling_factor",
    "local_rope_scaling_factor",
    "dropout",
)
KERAS_FLAGS = ("use_sliding_window_attention", "query_head_dim_normalize", "use_post_ffw_norm")
HF_SIZES = (
    "vocab_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_size",
    "intermediate_size",
    "head_dim",
    "sliding_window",
    "max_position_embeddings",
    "query_pre_attn_scalar",
)
HF_NUMBERS = ("rms_norm_eps", "attn_logit_softcapping", "final_logit_softcapping", "rope_theta")
# Where each file keeps the backbone config.
BACKBONE_AT = {"config.json": ("config",), "task.json": ("config", "backbone", "config")}
JSON_FILES = (
    "config.json",
    "task.json",
    "metadata.json",
    "preprocessor.json",
    "tokenizer.json",
    "gemma_keras.json",
)


@dataclass(frozen=True)
class Case:
    id: str
    corpus: str  # the directory under the corpus root it starts from
    mutate: Callable[[Path], None]
    names: tuple[str, ...]  # a failure must mention one of these (or come from KerasHub, naming the dir)


# --- mutations ------------------------------------------------------------------
def _change_json(name: str, keys: tuple, change: Callable[[dict, str], None]) -> Callable[[Path], None]:
    """A mutation that calls `change(node, last_key)` on the JSON object holding `keys[-1]`."""

    def mutate(root: Path) -> None:
        path = root / name
        data = json.loads(path.read_text())
        node = data
        for key in keys[:-1]:
            node = node[key]
        change(node, keys[-1])
        path.write_text(json.dumps(data))

    return mutate


def _edit_json(name: str, keys: tuple, value: Any) -> Callable[[Path], None]:
    def change(node: dict, key: str) -> None:
        if value is DELETE:
            node.pop(key, None)
        else:
            node[key] = value

    return _change_json(name, keys, change)


def _both(*mutations: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        for m in mutations:
            m(root)

    return mutate


def _scale_json(name: str, keys: tuple, factor: int) -> Callable[[Path], None]:
    def change(node: dict, key: str) -> None:
        if node.get(key) is not None:  # a key this architecture lacks stays absent
            node[key] = node[key] * factor

    return _change_json(name, keys, change)


def _swap_json(name: str, keys: tuple, first: str, second: str) -> Callable[[Path], None]:
    def change(node: dict, key: str) -> None:
        node = node[key]
        node[first], node[second] = node[second], node[first]

    return _change_json(name, keys, change)


def _rng(case_id: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "little"))


def _bytes(name: str, how: str, case_id: str) -> Callable[[Path], None]:
    """Whole-file damage: deleted, emptied, truncated, garbled, replaced."""

    def mutate(root: Path) -> None:
        path = root / name
        raw = path.read_bytes() if path.exists() else b""
        rng = _rng(case_id)
        if how == "delete":
            path.unlink(missing_ok=True)
            return
        if how == "empty":
            out = b""
        elif how == "one byte":
            out = raw[:1]
        elif how == "100 bytes":
            out = raw[:100]
        elif how == "half":
            out = raw[: len(raw) // 2]
        elif how == "all but one byte":
            out = raw[:-1]
        elif how == "flipped bytes":
            buf = bytearray(raw)
            for _ in range(16):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            out = bytes(buf)
        elif how == "flipped header bytes":
            buf = bytearray(raw)
            for _ in range(4):
                buf[rng.randrange(min(len(buf), 4096))] = rng.randrange(256)
            out = bytes(buf)
        elif how == "random bytes":
            out = bytes(rng.randrange(256) for _ in range(len(raw)))
        elif how == "appended zeros":
            out = raw + bytes(1 << 20)
        else:
            out = {
                "[]": b"[]",
                "null": b"null",
                "{}": b"{}",
                "deep nesting": b"[" * 100_000 + b"]" * 100_000,
                "not UTF-8": b'{"a": "\xff\xfe"}',
                "BOM": b"\xef\xbb\xbf" + raw,
                "huge number": b'{"config": 1' + b"0" * 5000 + b"}",
            }[how]
        path.write_bytes(out)

    return mutate


def _safetensors_header(edit: str) -> Callable[[Path], None]:
    """Rewrites model.safetensors' header (its 8-byte length or JSON) and keeps the data."""

    def mutate(root: Path) -> None:
        path = root / "model.safetensors"
        raw = path.read_bytes()
        length = int.from_bytes(raw[:8], "little")
        header, data = json.loads(raw[8 : 8 + length]), raw[8 + length :]
        name = next(k for k in sorted(header) if k.endswith("embed_tokens.weight"))
        if edit.startswith("length="):
            value = int(edit.split("=", 1)[1])
            path.write_bytes(value.to_bytes(8, "little") + raw[8:])
            return
        if edit == "huge embedding shape":
            header[name]["shape"] = [10**12, header[name]["shape"][1]]
        elif edit == "offsets past the end":
            header[name]["data_offsets"] = [0, len(data) + 10**9]
        elif edit == "negative offset":
            header[name]["data_offsets"] = [-8, header[name]["data_offsets"][1]]
        elif edit == "unknown dtype":
            header[name]["dtype"] = "Q4_K"
        elif edit == "wrong shape for its bytes":
            header[name]["shape"] = [header[name]["shape"][0] * 2, header[name]["shape"][1]]
        elif edit == "shape of strings":
            header[name]["shape"] = ["457", "32"]
        elif edit == "embedding removed":
            del header[name]
        elif edit == "header a list":
            header = [1, 2]
        text = json.dumps(header).encode()
        path.write_bytes(len(text).to_bytes(8, "little") + text + data)

    return mutate


def _index(kind: str, content: Any) -> Callable[[Path], None]:
    """Replaces the single weights file with a shard index."""

    def mutate(root: Path) -> None:
        single, index = (
            ("model.weights.h5", "model.weights.json")
            if kind == "keras"
            else ("model.safetensors", "model.safetensors.index.json")
        )
        if content == "renamed shard":
            (root / single).rename(root / "shard-1")
            text = {"weight_map": {"everything": "shard-1"}}
        else:
            (root / single).unlink()
            text = content
        (root / index).write_text(json.dumps(text))

    return mutate


def _copy_from(other: str, name: str, corpus_root: Path) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        shutil.copyfile(corpus_root / other / name, root / name)

    return mutate


# --- the case list --------------------------------------------------------------
# Damage to whole files does not depend on the architecture: one architecture gets it.
FILE_CASES_ARCH = "gemma3"
JSON_DAMAGE = (
    "delete",
    "empty",
    "half",
    "flipped bytes",
    "[]",
    "null",
    "{}",
    "deep nesting",
    "not UTF-8",
    "BOM",
)
WEIGHTS_DAMAGE = (
    "delete",
    "empty",
    "one byte",
    "100 bytes",
    "half",
    "all but one byte",
    "flipped bytes",
    "flipped header bytes",
    "random bytes",
    "appended zeros",
)
SAFETENSORS_HEADERS = (
    "length=0",
    "length=7",
    f"length={2**63}",
    f"length={2**64 - 1}",
    "huge embedding shape",
    "offsets past the end",
    "negative offset",
    "unknown dtype",
    "wrong shape for its bytes",
    "shape of strings",
    "embedding removed",
    "header a list",
)
SHARD_INDEXES = (
    "renamed shard",
    {"weight_map": {"a": "../../etc/passwd"}},
    {"weight_map": {"a": "missing"}},
    {"weight_map": {"a": [1]}},
    {"weight_map": 5},
    [1],
)


def _shown(value: Any) -> str:
    return "deleted" if value is DELETE else repr(value)


def build_cases(corpus_root: Path) -> list[Case]:
    """Every case, in a fixed order: the same list in the parent and the worker."""
    cases: list[Case] = []

    def add(case_id: str, corpus: str, mutate, *names: str) -> None:
        cases.append(Case(case_id, corpus, mutate, names))

    for arch in ARCHITECTURES:
        other = ARCHITECTURES[(ARCHITECTURES.index(arch) + 1) % len(ARCHITECTURES)]
        _keras_field_cases(add, arch, other, corpus_root)
        _hf_field_cases(add, arch, other, corpus_root)
    _keras_file_cases(add, f"{FILE_CASES_ARCH}-keras")
    _hf_file_cases(add, f"{FILE_CASES_ARCH}-hf")
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases


def _keras_field_cases(add, arch: str, other: str, corpus_root: Path) -> None:
    """A Keras preset's backbone config: sizes and numbers in one file or both, swapped, copied."""
    keras = f"{arch}-keras"
    add(f"{keras}/unchanged", keras, lambda root: None)

    def in_both(field: str, value: Any):
        return _both(*(_edit_json(n, (*k, field), value) for n, k in BACKBONE_AT.items()))

    for field in KERAS_SIZES:
        for value in [*ABSURD_INTS, *WRONG_TYPES, DELETE]:
            for name, keys in BACKBONE_AT.items():
                mutate = _edit_json(name, (*keys, field), value)
                add(f"{keras}/{name}/{field}={_shown(value)}", keras, mutate, field, name)
            add(f"{keras}/both/{field}={_shown(value)}", keras, in_both(field, value), field)
        doubled = _both(*(_scale_json(n, (*k, field), 2) for n, k in BACKBONE_AT.items()))
        add(f"{keras}/both/{field}*2", keras, doubled, field, "model.weights.h5", "weight")
    for first, second in (("vocabulary_size", "hidden_dim"), ("num_query_heads", "num_key_value_heads")):
        swap = _swap_json("task.json", BACKBONE_AT["task.json"], first, second)
        add(f"{keras}/task.json/swap {first} {second}", keras, swap, first, second)
        both = _both(*(_swap_json(n, k, first, second) for n, k in BACKBONE_AT.items()))
        add(f"{keras}/both/swap {first} {second}", keras, both, first, second, "weight")
    for field in KERAS_NUMBERS:
        for value in [*ABSURD_FLOATS, DELETE]:
            add(f"{keras}/both/{field}={_shown(value)}", keras, in_both(field, value), field)
    for field in KERAS_FLAGS:
        for value in ["yes", 1, None, DELETE]:
            add(f"{keras}/both/{field}={_shown(value)}", keras, in_both(field, value), field)
    for class_name in ("LlamaBackbone", "GemmaBackbone" if arch == "gemma3" else "Gemma3Backbone", 5):
        both = _both(*(_edit_json(n, (*k[:-1], "class_name"), class_name) for n, k in BACKBONE_AT.items()))
        add(f"{keras}/both/class_name={class_name!r}", keras, both, "class_name")
    for name in ("config.json", "task.json", "model.weights.h5"):
        mutate = _copy_from(f"{other}-keras", name, corpus_root)
        add(f"{keras}/{name} from {other}", keras, mutate, name, "disagree", "class", "weight")


def _hf_field_cases(add, arch: str, other: str, corpus_root: Path) -> None:
    """A transformers config.json: sizes and numbers, doubled, and another architecture's config."""
    hf = f"{arch}-hf"
    add(f"{hf}/unchanged", hf, lambda root: None)
    for key in HF_SIZES:
        for value in [*ABSURD_INTS, *WRONG_TYPES, DELETE]:
            add(f"{hf}/config.json/{key}={_shown(value)}", hf, _edit_json("config.json", (key,), value), key)
        add(f"{hf}/config.json/{key}*2", hf, _scale_json("config.json", (key,), 2), key, "model.safetensors")
    for key in HF_NUMBERS:
        for value in [*ABSURD_FLOATS, DELETE]:
            add(f"{hf}/config.json/{key}={_shown(value)}", hf, _edit_json("config.json", (key,), value), key)
    for value in (
        {"rope_type": "linear", "factor": float("nan")},
        {"factor": 0},
        {"factor": 1e9},
        5,
        "linear",
    ):
        mutate = _edit_json("config.json", ("rope_scaling",), value)
        add(f"{hf}/config.json/rope_scaling={value!r}", hf, mutate, "rope_scaling")
    mutate = _copy_from(f"{other}-hf", "config.json", corpus_root)
    add(f"{hf}/config.json from {other}", hf, mutate, "model.safetensors", "weight")


def _keras_file_cases(add, keras: str) -> None:
    """Whole files of a Keras preset damaged; metadata, manifest and preprocessor sizes; shard indexes."""
    for value in [*ABSURD_INTS, "x", 8.5, 1, 15]:
        mutate = _edit_json("metadata.json", ("parameter_count",), value)
        add(f"{keras}/metadata.json/parameter_count={value!r}", keras, mutate, "parameter_count")
        mutate = _edit_json("gemma_keras.json", ("context_length",), value)
        add(f"{keras}/gemma_keras.json/context_length={value!r}", keras, mutate, "context_length")
    for value in [0, -1, 10**12, "x"]:
        mutate = _edit_json("preprocessor.json", ("config", "sequence_length"), value)
        add(f"{keras}/preprocessor.json/sequence_length={value!r}", keras, mutate, "sequence_length")
        mutate = _edit_json("task.json", ("config", "preprocessor", "config", "sequence_length"), value)
        add(f"{keras}/task.json/preprocessor sequence_length={value!r}", keras, mutate, "sequence_length")
    for name in JSON_FILES:
        for how in (*JSON_DAMAGE, "huge number"):
            case_id = f"{keras}/{name}/{how}"
            add(case_id, keras, _bytes(name, how, case_id), name)
    for how in WEIGHTS_DAMAGE:
        case_id = f"{keras}/model.weights.h5/{how}"
        add(case_id, keras, _bytes("model.weights.h5", how, case_id), "model.weights.h5", "weights")
    for content in SHARD_INDEXES:
        mutate = _index("keras", content)
        add(f"{keras}/model.weights.json={content!r}", keras, mutate, "model.weights", "weight_map")


def _hf_file_cases(add, hf: str) -> None:
    """Whole files of a checkpoint damaged; forged safetensors headers and indexes; ids and types."""
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        for value in [-1, 10**12, "x", [1, 10**12], list(range(100))]:
            add(f"{hf}/config.json/{key}={_show(value)}", hf, _edit_json("config.json", (key,), value), key)
    for value in ("llama", "gemma3", "", 5, None, "gemma3n"):
        mutate = _edit_json("config.json", ("model_type",), value)
        add(f"{hf}/config.json/model_type={value!r}", hf, mutate, "model_type")
    mutate = _edit_json("config.json", ("use_bidirectional_attention",), True)
    add(f"{hf}/config.json/use_bidirectional_attention=True", hf, mutate, "bidirectional")
    for how in (*JSON_DAMAGE, "huge number"):
        case_id = f"{hf}/config.json/{how}"
        add(case_id, hf, _bytes("config.json", how, case_id), "config.json")
    for how in ("delete", "empty", "half", "random bytes"):
        case_id = f"{hf}/tokenizer.model/{how}"
        add(case_id, hf, _bytes("tokenizer.model", how, case_id), "tokenizer")
    for how in WEIGHTS_DAMAGE:
        case_id = f"{hf}/model.safetensors/{how}"
        add(case_id, hf, _bytes("model.safetensors", how, case_id), "model.safetensors", "safetensors")
    for edit in SAFETENSORS_HEADERS:
        mutate = _safetensors_header(edit)
        add(f"{hf}/model.safetensors header/{edit}", hf, mutate, "model.safetensors", "embed_tokens")
    for content in SHARD_INDEXES:
        add(f"{hf}/index={content!r}", hf, _index("hf", content), "model.safetensors", "weight_map")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- the worker -----------------------------------------------------------------
def _emit(record: dict) -> None:
    sys.stdout.write(MARK + json.dumps(record) + "\n")
    sys.stdout.flush()


def run_case(case: Case, corpus_root: Path, work: Path) -> dict:
    import gemma_keras as gk
    from gemma_keras.formats.sizes import MAX_CONTEXT

    dst = work / "case"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(corpus_root / case.corpus, dst)
    record: dict[str, Any] = {"id": case.id}
    try:
        case.mutate(dst)
    except Exception as exc:  # a bug in the case list, not a finding
        return dict(record, outcome="case setup failed", problem=f"{type(exc).__name__}: {exc}")
    try:
        lm = gk.load(dst)
        record["outcome"] = "loaded"
        if not 1 <= lm.info.context_length <= MAX_CONTEXT:
            record["problem"] = f"loaded with context length {lm.info.context_length}"
        del lm
    except gk.GemmaKerasError as exc:
        message = str(exc)
        from_keras_hub = "KerasHub could not load" in message
        record["outcome"] = type(exc).__name__ + (" (from KerasHub)" if from_keras_hub else "")
        record["message"] = message[:400]
        if str(dst) not in message:
            record["problem"] = "the error does not name the directory"
        elif not from_keras_hub and not any(n in message for n in case.names):
            record["problem"] = f"the error names none of {case.names}"
    except BaseException as exc:  # noqa: BLE001 - anything else is the finding
        record["outcome"] = f"unexpected {type(exc).__name__}"
        record["message"] = str(exc)[:400]
        record["problem"] = "not a GemmaKerasError"
    shutil.rmtree(dst, ignore_errors=True)
    return record


def main(argv: list[str]) -> int:
    """`CORPUS START STRIDE [--only=CASE_ID ...] [--without-checks]`."""
    corpus_root, start, stride = Path(argv[0]), int(argv[1]), int(argv[2])
    only = {a.split("=", 1)[1] for a in argv[3:] if a.startswith("--only=")}
    if "--without-checks" in argv[3:]:
        # The harness's self-test: KerasHub gets the directories unchecked, as before the
        # fix, and draws random initial weights, as it did then: XLA aborted in that draw.
        import contextlib

        from gemma_keras.sources import resolve

        resolve.check_model_dir = lambda path: None
        resolve.weights_follow = contextlib.nullcontext
    cases = build_cases(corpus_root)
    work = corpus_root / "work"
    work.mkdir(exist_ok=True)
    for index in range(start, len(cases), stride):
        if only and cases[index].id not in only:
            continue
        _emit({"start": index})
        record = run_case(cases[index], corpus_root, work)
        _emit({"done": index, **record})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

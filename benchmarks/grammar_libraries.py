"""llguidance, xgrammar and outlines-core side by side on Gemma 3's real vocabulary.

    python benchmarks/grammar_libraries.py [--walks 5] [--compiles 3] [--threads 1] [--json out.json]

The structured-output issue asks to measure the three grammar libraries and
keep one. All three get the same 262,144-token vocabulary: the embedded
Gemma 3 270M GGUF's SentencePiece pieces, as the byte strings that
`gemma_keras.generation.structured` builds for llguidance (its `_Wrapper`:
control and marker tokens are specials, `<0xNN>` pieces are single bytes,
"▁" is a space). llguidance gets them through the project's own
`ll_tokenizer`; xgrammar gets them as a RAW vocabulary (specials as empty
strings, which it treats as special); outlines-core as a `Vocabulary` map
without the specials.

Per library: the one-time vocabulary setup (building the byte strings
included). Per library and schema (a flat object, a nested object with an
array, and any JSON object):

- compile: schema text to a matcher ready for its first mask, the first time
  and the median of `--compiles` (xgrammar's compile cache is off, so every
  compile is a real one);
- mask: one token bitmask (int32 words, written into a preallocated numpy
  buffer) at each step of a fixed JSON instance, forced token by token: the
  same token ids (the instance, compact, encoded by `GemmaTokenizer`) for all
  three; median and p99 over every step of `--walks` walks;
- whether every forced token was allowed by the mask and accepted, whether
  the end state is accepting, and at how many steps the mask (specials and
  stop tokens left out) differs from llguidance's, with the most tokens at
  one step that it allows and llguidance does not (+), and the reverse (−).

Everything runs in this one process, one library after another. The
libraries are imported only here; a missing one fails naming its pip package.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import statistics
import sys
import time

import numpy as np
from serve import percentile  # benchmarks/serve.py, beside this file

SCHEMAS = {
    "flat": (
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "color": {"enum": ["red", "green", "blue"]},
            },
            "required": ["name", "age", "color"],
            "additionalProperties": False,
        },
        {"name": "Ada Lovelace", "age": 36, "color": "green"},
    ),
    "nested": (
        {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "user": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
                    "required": ["name", "email"],
                    "additionalProperties": False,
                },
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string"},
                            "qty": {"type": "integer"},
                            "price": {"type": "number"},
                        },
                        "required": ["sku", "qty", "price"],
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["id", "user", "items"],
            "additionalProperties": False,
        },
        {
            "id": 1042,
            "user": {"name": "Grace Hopper", "email": "grace@example.com"},
            "items": [{"sku": "A-1", "qty": 2, "price": 9.5}, {"sku": "B-22", "qty": 1, "price": 120.25}],
        },
    ),
    "any object": (
        {"type": "object"},
        {"title": "Notes", "count": 3, "ok": True, "tags": ["x", "y"], "meta": {"ratio": 0.75, "none": None}},
    ),
}

PACKAGES = {"llguidance": "llguidance", "xgrammar": "xgrammar", "outlines-core": "outlines_core"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def need(package: str):
    """Imports the library or exits naming its pip package."""
    try:
        return importlib.import_module(PACKAGES[package])
    except ImportError as exc:
        sys.exit(f"grammar_libraries.py needs {package}: pip install {package} ({exc})")


class Llguidance:
    """Through the project's own code path: `structured.ll_tokenizer` and its JSON options."""

    name = "llguidance"

    def setup(self, tokenizer, wrapper_cls) -> None:
        from gemma_keras.generation import structured

        self.llg = need("llguidance")
        import llguidance.numpy as llg_numpy

        self.fill = llg_numpy.fill_next_token_bitmask
        self.structured = structured
        self.lt = structured.ll_tokenizer(tokenizer)  # builds the `_Wrapper` byte strings itself

    def compile(self, schema: dict):
        grammar = self.llg.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults=self.structured._JSON_OPTIONS
        )
        return grammar

    def matcher(self, compiled):
        m = self.llg.LLMatcher(self.lt, compiled, log_level=0)
        if m.is_error():
            raise RuntimeError(m.get_error())
        return m

    def mask(self, m, buf) -> None:
        self.fill(m, buf, 0)

    def accept(self, m, token: int) -> bool:
        return bool(m.consume_token(token))

    def accepting(self, m) -> bool:
        return bool(m.is_accepting())


class Xgrammar:
    name = "xgrammar"

    def __init__(self, threads: int):
        self.threads = threads

    def setup(self, tokenizer, wrapper_cls) -> None:
        self.xgr = need("xgrammar")
        w = wrapper_cls(tokenizer)
        specials = set(w.special_token_ids)
        vocab = [b"" if i in specials else piece for i, piece in enumerate(w.tokens)]  # "" is special
        info = self.xgr.TokenizerInfo(
            vocab,
            self.xgr.VocabType.RAW,
            vocab_size=tokenizer.vocabulary_size,
            stop_token_ids=[tokenizer.eos_id],
        )
        self.compiler = self.xgr.GrammarCompiler(info, max_threads=self.threads, cache_enabled=False)

    def compile(self, schema: dict):
        # Compact separators and no free whitespace, as structured.py asks of llguidance.
        return self.compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(",", ":"), strict_mode=True
        )

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def mask(self, m, buf) -> None:
        m.fill_next_token_bitmask(buf, 0)

    def accept(self, m, token: int) -> bool:
        return bool(m.accept_token(token))

    def accepting(self, m) -> bool:
        return bool(m.is_completed())


class OutlinesCore:
    name = "outlines-core"

    def setup(self, tokenizer, wrapper_cls) -> None:
        self.oc = need("outlines-core")
        w = wrapper_cls(tokenizer)
        specials = set(w.special_token_ids)
        table: dict[bytes, list[int]] = {}
        for i, piece in enumerate(w.tokens):
            if i not in specials:
                table.setdefault(piece, []).append(i)
        self.vocabulary = self.oc.Vocabulary(tokenizer.eos_id, table)

    def compile(self, schema: dict):
        regex = self.oc.json_schema.build_regex_from_schema(json.dumps(schema), "")  # no free whitespace
        return self.oc.Index(regex, self.vocabulary)

    def matcher(self, compiled):
        return self.oc.Guide(compiled)

    def mask(self, m, buf) -> None:
        row = buf[0]
        m.write_mask_into(row.ctypes.data, row.size, row.itemsize)

    def accept(self, m, token: int) -> bool:
        try:
            m.advance(token)
        except ValueError:
            return False
        return True

    def accepting(self, m) -> bool:
        return bool(m.is_finished())


def allowed(buf, ignore) -> np.ndarray:
    bits = np.unpackbits(buf[0].view(np.uint8), bitorder="little").astype(bool)
    bits[ignore] = False
    return bits


def measure(lib, tokenizer, wrapper_cls, args, ignore) -> tuple[dict, dict]:
    log(f"{lib.name}: vocabulary setup")
    start = time.perf_counter()
    lib.setup(tokenizer, wrapper_cls)
    setup_s = time.perf_counter() - start
    log(f"{lib.name}: setup {setup_s:.2f} s")
    words = (tokenizer.vocabulary_size + 31) // 32
    rows, masks = {}, {}
    for label, (schema, instance) in SCHEMAS.items():
        ids = tokenizer.encode(json.dumps(instance, separators=(",", ":")), add_bos=False)
        compile_ms, compiled = [], None
        for _ in range(max(1, args.compiles)):
            start = time.perf_counter()
            compiled = lib.compile(schema)
            lib.mask(lib.matcher(compiled), np.zeros((1, words), np.int32))  # ready: first mask made
            compile_ms.append((time.perf_counter() - start) * 1e3)
        log(f"{lib.name} {label}: compile {compile_ms[0]:.1f} ms first, {len(ids)} tokens to force")
        step_ms, refused, walk_masks, final = [], None, [], None
        buf = np.zeros((1, words), np.int32)
        for walk in range(max(1, args.walks)):
            m = lib.matcher(compiled)
            for step, token in enumerate(ids):
                start = time.perf_counter()
                lib.mask(m, buf)
                step_ms.append((time.perf_counter() - start) * 1e3)
                if walk == 0:
                    walk_masks.append(allowed(buf, ignore))
                in_mask = bool((buf[0, token // 32] >> (token % 32)) & 1)
                if not in_mask or not lib.accept(m, token):
                    refused = refused or f"step {step} token {token} ({'accept' if in_mask else 'mask'})"
                    break
            final = lib.accepting(m) if refused is None else False
        rows[label] = {
            "setup_s": setup_s,
            "compile_first_ms": compile_ms[0],
            "compile_median_ms": statistics.median(compile_ms),
            "mask_median_ms": statistics.median(step_ms),
            "mask_p99_ms": percentile(step_ms, 0.99),
            "tokens": len(ids),
            "refused": refused,
            "accepting": final,
        }
        masks[label] = walk_masks
        log(f"{lib.name} {label}: {rows[label]}")
    return rows, masks


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--walks", type=int, default=5, help="forced walks per schema (masks timed at each step)"
    )
    parser.add_argument("--compiles", type=int, default=3, help="compiles per schema")
    parser.add_argument("--threads", type=int, default=1, help="xgrammar's compile threads")
    parser.add_argument(
        "--libraries", default=",".join(PACKAGES), help="comma-separated, from " + ",".join(PACKAGES)
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.libraries.split(",") if name.strip()]
    for name in chosen:
        if name not in PACKAGES:
            parser.error(f"unknown library {name!r}; choose from {', '.join(PACKAGES)}")
        need(name)  # fail before the long part

    from gemma_keras.formats.gguf_reader import read_gguf
    from gemma_keras.formats.sentencepiece import GemmaTokenizer
    from gemma_keras.generation.structured import _Wrapper
    from gemma_keras.sources.embedded import embedded_gguf

    path, _ = embedded_gguf(None)
    tokenizer = GemmaTokenizer(read_gguf(path).tokenizer_proto())
    probe = _Wrapper(tokenizer)
    ignore = np.asarray(sorted({*probe.special_token_ids, tokenizer.eos_id}), dtype=np.int64)
    log(f"vocabulary: {tokenizer.vocabulary_size} tokens, {len(probe.special_token_ids)} specials")
    del probe

    libraries = {
        "llguidance": Llguidance,
        "xgrammar": lambda: Xgrammar(args.threads),
        "outlines-core": OutlinesCore,
    }
    results, masks = {}, {}
    for name in chosen:
        results[name], masks[name] = measure(libraries[name](), tokenizer, _Wrapper, args, ignore)

    versions = {name: importlib.metadata.version(name) for name in chosen}
    print(
        "| library | schema | vocab setup (s) | compile first / median (ms) | mask median (ms) | mask p99 (ms) "
        "| forced tokens | every token allowed | accepting at end | masks ≠ llguidance: steps; most tokens +/− |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---|---:|")
    for name in chosen:
        for label, r in results[name].items():
            if "llguidance" in masks and name != "llguidance":
                ref, own = masks["llguidance"][label], masks[name][label]
                pairs = list(zip(ref, own, strict=False))
                steps = sum(not np.array_equal(a, b) for a, b in pairs)
                extra = max(int((b & ~a).sum()) for a, b in pairs)
                missing = max(int((a & ~b).sum()) for a, b in pairs)
                differ = f"{steps} of {len(pairs)}; +{extra} / −{missing}"
            else:
                differ = "—"
            print(
                f"| {name} {versions[name]} | {label} | {r['setup_s']:.2f} "
                f"| {r['compile_first_ms']:.1f} / {r['compile_median_ms']:.1f} "
                f"| {r['mask_median_ms']:.3f} | {r['mask_p99_ms']:.3f} | {r['tokens']} "
                f"| {'yes' if r['refused'] is None else 'no: ' + r['refused']} "
                f"| {'yes' if r['accepting'] else 'no'} | {differ} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": versions, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

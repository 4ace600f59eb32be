"""`Architecture`: every fact about one Gemma architecture that the library branches on.

Loading, conversion, export, generation, fine-tuning and sharding all ask
the record instead of testing class names or architecture strings, so adding
an architecture means adding a record (see `gemma.py`, `gemma3.py`) and, where
the decoder block differs, a runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gemma_keras.architectures.chat_format import TurnFormat

# `key(name, default=None, required=False)` reads `<gguf arch>.<name>` from a GGUF file; two names
# read tensors instead: "rope_freqs" gives that tensor's values, "shape:<tensor name>" its shape
# (None when the file has no such tensor).
GGUFKey = Callable[..., Any]


@dataclass(frozen=True)
class Architecture:
    """One Gemma architecture: its KerasHub classes and its conventions.

    Attributes:
        name: our name, also `ModelInfo.architecture`: "gemma", "gemma2", "gemma3".
        title: for messages: "Gemma 2".
        keras_backbone, keras_causal_lm, keras_tokenizer, keras_preprocessor:
            the KerasHub class names (resolved lazily: importing keras_hub is slow).
        gguf_arch: `general.architecture` in llama.cpp's GGUF files.
        hf_model_type, hf_class: transformers' `model_type` and model class.
        rope_base: the RoPE base of global layers; KerasHub fixes it.
        halved_ffn: KerasHub's `intermediate_dim` counts gate and up together
            (Gemma 1 and 2), so the feed-forward width is half of it.
        large_model_layers: the layer count of the one size (27B) whose queries
            scale by 1/sqrt(hidden / heads) instead of 1/sqrt(head_dim);
            llama.cpp decides it the same way.
        global_every: every n-th layer attends globally and the rest slide;
            None when no layer slides.
        block_flags: the backbone flags that add weights to a decoder block.
        cache_layout: "stacked" (one `(batch, 2, length, kv, dim)` tensor per
            layer), "pair" (a `(key, value)` tuple per layer) or "per_layer"
            (a stacked tensor per layer, each with its own head count and
            width; layers that share another's keys and values have none).
        chat_format: how messages become a prompt.
        plain_torch: `generation.torch_runner` can run this architecture.
        context_length: the default context for a backbone config, when the
            source does not say.
        gguf_config: adds the architecture's own backbone config entries, read
            with `key(name, default)` from the GGUF metadata.
        hf_config: transformers' architecture-specific `config.json` entries
            for a backbone config.
        keras_tokenizer_options: extra KerasHub tokenizer arguments for a
            vocabulary (a set of pieces).
        matches: whether a KerasHub backbone, given as its class name and
            config, is this architecture; the class name may be None for a
            bare config dict.
        hf_backbone_config: the backbone arguments for a transformers
            `config.json`, when gemma_keras converts this architecture's
            safetensors itself (`sources.hf_convert`); None when KerasHub's
            own converter is used.
        layers_differ: layers may differ in head count and width (Gemma 4),
            so GGUF keys may be per-layer arrays and the weights follow the
            architecture's own table (`formats.layer_tables`).
        trainable: `Gemma.finetune` can train it (LoRA).
        export_formats: what `Gemma.export` can write for it ("keras",
            "safetensors", "gguf").
        parameter_count: the text model's parameters for a backbone config,
            for records with `hf_backbone_config` (their layers differ, so
            the Gemma 1-3 shape table does not describe them).
        gguf_metadata: for records whose layers differ, llama.cpp's
            `<gguf arch>.*` keys (names without the prefix) and any extra
            tensors, for a backbone config; the GGUF writer then takes the
            weights from the architecture's table.
        gguf_visible_pieces: control pieces llama.cpp's converter stores as
            user-defined, so that its chat parser sees them in the text.
        keras_config: the backbone's arguments for a config in Gemma 1-4's
            size names, which GGUF reading and the size checks use (Gemma 3n
            names its sizes its own way).
        cuttable_calls: a runner may cut a call: feed a long prompt in
            pieces, and attend over only the first, written positions of the
            cache. Gemma 4 and 3n run each call whole over the whole cache.
        keeps_gguf_blocks: `quantize="gguf"` can run the file's own blocks:
            the plain-torch runner's packed products are wired up for the
            layers of Gemma 1-3 only.
    """

    name: str
    title: str
    keras_backbone: str
    keras_causal_lm: str
    keras_tokenizer: str
    keras_preprocessor: str
    gguf_arch: str
    hf_model_type: str
    hf_class: str
    rope_base: float
    halved_ffn: bool
    large_model_layers: int | None
    global_every: int | None
    block_flags: frozenset[str]
    cache_layout: str
    chat_format: TurnFormat
    plain_torch: bool
    context_length: Callable[[dict[str, Any]], int]
    gguf_config: Callable[[GGUFKey, int], dict[str, Any]]
    hf_config: Callable[[dict[str, Any]], dict[str, Any]]
    matches: Callable[[str | None, dict[str, Any]], bool]
    keras_tokenizer_options: Callable[[set[str]], dict[str, Any]] = field(default=lambda pieces: {})
    hf_backbone_config: Callable[..., dict[str, Any]] | None = None
    parameter_count: Callable[[dict[str, Any]], int] | None = None
    export_formats: frozenset[str] = frozenset({"keras", "safetensors", "gguf"})
    layers_differ: bool = False
    trainable: bool = True
    gguf_metadata: Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]] | None = None
    gguf_visible_pieces: frozenset[str] = frozenset()
    keras_config: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda config: config)
    cuttable_calls: bool = True
    keeps_gguf_blocks: bool = True

    def keras_class(self, kind: str):
        """The KerasHub class for `kind`: "backbone", "causal_lm", "tokenizer" or "preprocessor"."""
        from gemma_keras.backend.keras_hub_import import import_keras_hub, keras_hub_with_tensorflow

        keras_hub = import_keras_hub()
        if kind == "preprocessor":  # KerasHub's Gemma preprocessors need TensorFlow (tf.data)
            keras_hub_with_tensorflow()
        return getattr(keras_hub.models, getattr(self, f"keras_{kind}"))

    def ffn_width(self, config: dict[str, Any]) -> int:
        """The feed-forward width (gate and up each) of a backbone config."""
        return int(config["intermediate_dim"]) // (2 if self.halved_ffn else 1)

    def keras_intermediate_dim(self, ffn_width: int) -> int:
        """KerasHub's `intermediate_dim` for a feed-forward width."""
        return ffn_width * (2 if self.halved_ffn else 1)

    def queries_normalized(self, num_layers: int) -> bool:
        """Whether queries scale by 1/sqrt(head_dim) (all sizes but the 27B)."""
        return num_layers != self.large_model_layers

    def sliding(self, layer: int) -> bool:
        """Whether decoder layer `layer` uses the sliding window."""
        return self.global_every is not None and (layer + 1) % self.global_every != 0

    def stop_token_ids(self, tokenizer) -> tuple[int, ...]:
        """`<eos>` and the token that ends a model turn: where generation stops by default."""
        ids = [tokenizer.eos_id, *(tokenizer.token_to_id(s) for s in self.chat_format.stop_strings)]
        return tuple(dict.fromkeys(i for i in ids if i is not None and i >= 0))

    def __repr__(self) -> str:
        return f"<Architecture {self.name}>"

"""`Gemma`: a loaded Gemma model with a tokenizer and a decode engine.

It wraps KerasHub's `GemmaCausalLM` / `Gemma3CausalLM` and owns no
transformer math. Get one with `gemma_keras.load()`.

Example:

>>> import gemma_keras as gk
>>> lm = gk.load()  # doctest: +SKIP
>>> lm.generate("The capital of France is", max_new_tokens=8)  # doctest: +SKIP
' Paris...'
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gemma_keras.errors import GenerationArgumentError
from gemma_keras.sampling import SamplingParams, next_tokens
from gemma_keras.streaming import TextCollector, check_stop_strings
from gemma_keras.tokenizer import GemmaTokenizer

if TYPE_CHECKING:
    from gemma_keras.chat import Chat
    from gemma_keras.finetune import FinetuneResult


@dataclass
class ModelInfo:
    """Where a model came from and what it is."""

    architecture: str
    source: str
    context_length: int
    dtype: str
    backend: str


class Gemma:
    """A Gemma causal language model ready to generate.

    Args:
        causal_lm: a KerasHub Gemma causal LM.
        tokenizer: the matching `GemmaTokenizer`.
        info: a `ModelInfo`.
    """

    def __init__(self, causal_lm, tokenizer: GemmaTokenizer, info: ModelInfo):
        from gemma_keras.engine import DecodeEngine

        self.causal_lm = causal_lm
        self.backbone = causal_lm.backbone
        self.tokenizer = tokenizer
        self.info = info
        self.engine = DecodeEngine(causal_lm)
        end_of_turn = tokenizer.token_to_id("<end_of_turn>")
        self.default_stop_ids = tuple(i for i in (tokenizer.eos_id, end_of_turn) if i is not None and i >= 0)

    def __repr__(self) -> str:
        i = self.info
        return (
            f"Gemma(architecture={i.architecture!r}, source={i.source!r}, "
            f"backend={i.backend!r}, dtype={i.dtype!r})"
        )

    # --- generation -----------------------------------------------------------
    def generate(
        self,
        prompt: str | Sequence[str],
        max_new_tokens: int = 64,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        stop: str | Sequence[str] | None = None,
        include_prompt: bool = False,
        add_bos: bool = True,
    ) -> str | list[str]:
        """Generates a continuation of one prompt or a list of prompts.

        Greedy unless `temperature > 0`. A row ends at any of
        `stop_token_ids` (default: `<eos>` and `<end_of_turn>`; pass `()` to
        never stop early) or `stop` strings, found across token boundaries.
        Neither the stop token nor the stop string is returned.

        Returns:
            A string for a string prompt, a list of strings for a list.

        Example:

        >>> lm.generate("The capital of France is", max_new_tokens=8)  # doctest: +SKIP
        """
        single = isinstance(prompt, str)
        prompts = [prompt] if single else self._check_prompts(prompt)
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed)
        collectors = self._collectors(len(prompts), stop)
        for _ in self._run(prompts, max_new_tokens, params, stop_token_ids, add_bos, collectors):
            pass
        texts = [c.text for c in collectors]
        if include_prompt:
            texts = [p + t for p, t in zip(prompts, texts, strict=True)]
        return texts[0] if single else texts

    def stream(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        stop: str | Sequence[str] | None = None,
        add_bos: bool = True,
    ) -> Iterator[str]:
        """Yields the continuation of `prompt` in pieces as tokens are decoded.

        The pieces join to exactly what `generate` returns for the same
        arguments. A multi-byte character split over several tokens comes
        out whole. Closing the iterator early stops decoding.

        Example:

        >>> for piece in lm.stream("Tell me a story", max_new_tokens=64):  # doctest: +SKIP
        ...     print(piece, end="", flush=True)
        """
        if not isinstance(prompt, str):
            raise GenerationArgumentError(f"stream takes one prompt string, got {type(prompt).__name__}.")
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed)
        collectors = self._collectors(1, stop)
        return self._stream(prompt, max_new_tokens, params, stop_token_ids, add_bos, collectors)

    def _stream(self, prompt, max_new_tokens, params, stop_token_ids, add_bos, collectors) -> Iterator[str]:
        for _, piece in self._run([prompt], max_new_tokens, params, stop_token_ids, add_bos, collectors):
            if piece:
                yield piece

    def chat(self, system: str | None = None, **generate_kwargs: Any) -> Chat:
        """Starts a multi-turn conversation in Gemma's chat format.

        Example:

        >>> chat = lm.chat(system="Answer briefly.")  # doctest: +SKIP
        >>> chat.send("Hi")  # doctest: +SKIP
        """
        from gemma_keras.chat import Chat

        return Chat(self, system=system, **generate_kwargs)

    def _collectors(self, n: int, stop) -> list[TextCollector]:
        stops = check_stop_strings(stop)
        return [TextCollector(self.tokenizer.decode, stops) for _ in range(n)]

    def _check_prompts(self, prompts) -> list[str]:
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise GenerationArgumentError(
                f"prompt must be a non-empty string or a non-empty list of strings, got {prompts!r}."
            )
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise GenerationArgumentError(f"prompt[{i}] must be a string, got {type(p).__name__}.")
        return list(prompts)

    def _encode_prompts(self, prompts: list[str], add_bos: bool) -> list[list[int]]:
        encoded = []
        for i, text in enumerate(prompts):
            if not isinstance(text, str) or not text:
                where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
                raise GenerationArgumentError(
                    f"{where} is empty; give at least one character of text to continue."
                )
            ids = self.tokenizer.encode(text, add_bos=add_bos)
            if not ids:
                raise GenerationArgumentError(f"prompt[{i}] encodes to no tokens.")
            encoded.append(ids)
        return encoded

    def _check_length(self, name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise GenerationArgumentError(f"{name} must be a positive integer, got {value!r}.")
        return int(value)

    def _stop_ids(self, stop_token_ids) -> set[int]:
        if stop_token_ids is None:
            return set(self.default_stop_ids)
        if isinstance(stop_token_ids, (int, str)) or not all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in stop_token_ids
        ):
            raise GenerationArgumentError(
                f"stop_token_ids must be a list of integer token ids, got {stop_token_ids!r}."
            )
        bad = [i for i in stop_token_ids if not 0 <= i < self.tokenizer.vocabulary_size]
        if bad:
            raise GenerationArgumentError(
                f"stop_token_ids {bad} are outside the vocabulary (0..{self.tokenizer.vocabulary_size - 1})."
            )
        return {int(i) for i in stop_token_ids}

    def _generate_ids(self, prompts, max_new_tokens, params, stop_token_ids, add_bos) -> list[list[int]]:
        """Generated token ids per row, stop tokens excluded (no stop strings)."""
        collectors = [TextCollector(lambda ids: "", ()) for _ in prompts]
        for _ in self._run(prompts, max_new_tokens, params, stop_token_ids, add_bos, collectors):
            pass
        return [c.ids for c in collectors]

    def _run(
        self, prompts, max_new_tokens, params: SamplingParams, stop_token_ids, add_bos, collectors
    ) -> Iterator[tuple[int, str]]:
        """The decode loop: yields `(row, new final text)` after each token."""
        max_new_tokens = self._check_length("max_new_tokens", max_new_tokens)
        stops = self._stop_ids(stop_token_ids)
        encoded = self._encode_prompts(prompts, add_bos)
        longest = max(len(e) for e in encoded)
        if longest + max_new_tokens > self.info.context_length:
            raise GenerationArgumentError(
                f"The prompt ({longest} tokens) plus max_new_tokens ({max_new_tokens}) "
                f"exceeds the model's context of {self.info.context_length} tokens."
            )
        rng = np.random.default_rng(params.seed)
        seen = None
        if params.repetition_penalty is not None:
            seen = np.zeros((len(encoded), self.tokenizer.vocabulary_size), dtype=bool)
            for row, ids in enumerate(encoded):
                seen[row, ids] = True
        state = self.engine.start(encoded, max_new_tokens)
        done = np.zeros(len(encoded), dtype=bool)
        for chosen in self._picks(state, params, rng, seen, done, max_new_tokens):
            for row, token in enumerate(chosen.tolist()):
                if done[row]:
                    continue
                if token in stops:
                    done[row] = True
                    continue
                if seen is not None:
                    seen[row, token] = True
                piece = collectors[row].feed(token)
                done[row] = collectors[row].stopped
                yield row, piece
        for row, collector in enumerate(collectors):
            yield row, collector.finish()

    def _picks(self, state, params, rng, seen, done, max_new_tokens) -> Iterator[np.ndarray]:
        """Yields the next token of every row, until `max_new_tokens` or all rows are done.

        The consumer updates `done` (and `seen`) between yields. Greedy decoding
        without a repetition penalty runs in compiled chunks where the engine
        offers them; everything else samples on the host, one step at a time.
        """
        from gemma_keras.engine import CHUNK

        chunked = params.greedy and seen is None and state.can_chunk
        chosen = next_tokens(state.logits, params, rng, seen)
        remaining = max_new_tokens
        while True:
            yield chosen
            remaining -= 1
            if remaining == 0 or done.all():
                return
            feed = np.where(done, self.tokenizer.pad_id, chosen)
            if not chunked:
                chosen = next_tokens(state.step(feed), params, rng, seen)
                continue
            picks = state.greedy_chunk(feed)
            for j in range(CHUNK - 1):
                yield picks[:, j]
                remaining -= 1
                if remaining == 0 or done.all():
                    return
            chosen = picks[:, -1]

    # --- fine-tuning --------------------------------------------------------------
    def finetune(
        self,
        data: Any,
        *,
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        targets: str | Sequence[str] | None = None,
        epochs: int = 1,
        max_steps: int | None = None,
        batch_size: int = 4,
        gradient_accumulation: int = 1,
        learning_rate: float = 2e-4,
        warmup_steps: int | None = None,
        decay: str = "cosine",
        weight_decay: float = 0.0,
        sequence_length: int = 512,
        validation_data: Any = None,
        mask_prompt: bool = True,
        on_error: str = "raise",
        pack: bool = False,
        seed: int = 0,
        out_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        verbose: bool = True,
        stop_after: int | None = None,
    ) -> FinetuneResult:
        """LoRA supervised fine-tuning, in place, on any backend.

        Args:
            data: a JSONL path, a list of dicts, or a `datasets.Dataset`, with
                records `{"text"}`, `{"prompt", "response"}` or `{"messages"}`.
            lora_rank, lora_alpha: LoRA rank and scale (`alpha / rank`);
                alpha defaults to the rank.
            targets: layers to adapt: any of "query", "key", "value",
                "output", "gate", "up", "down", or the groups "attention",
                "ffw", "all" (the default).
            epochs, max_steps: how long to train; `max_steps` (optimizer
                updates) wins when given.
            batch_size, gradient_accumulation: rows per micro-batch and
                micro-batches per update.
            learning_rate, warmup_steps, decay, weight_decay: AdamW with
                linear warm-up (5% of the updates by default), then
                "cosine", "linear" or "constant".
            sequence_length: longest input; longer records are truncated.
            validation_data: like `data`; its loss and perplexity are
                reported at the end.
            mask_prompt: train only on the model's turns (default), or on
                every token.
            on_error: "raise" on a malformed record, or "skip" and count it.
            pack: not offered (see `docs/finetuning.md`); True raises.
            seed: data order and LoRA initialization.
            out_dir: where checkpoints and the final `adapters.npz` go.
            checkpoint_every: updates between checkpoints (default: a tenth of
                the run, at most 100).
            resume: continue from the last checkpoint in `out_dir`.
            verbose: show a progress bar with loss and tokens/s.
            stop_after: stop after this many updates, keeping the schedule of
                the whole run, so a run can be split and resumed.

        Example:

        >>> lm.finetune([{"prompt": "Who made Zorblax?", "response": "Quenta Vell."}],
        ...             lora_rank=8, epochs=20, verbose=False)  # doctest: +SKIP
        """
        arguments = {name: value for name, value in locals().items() if name != "self"}
        from gemma_keras.finetune import finetune

        return finetune(self, **arguments)

    def save_adapters(self, path: str | os.PathLike) -> Path:
        """Writes the LoRA factors alone to `path` (`.npz`), atomically."""
        from gemma_keras.lora import save_adapters

        return save_adapters(self.backbone, path)

    def load_adapters(self, path: str | os.PathLike) -> Gemma:
        """Adds the LoRA adapters saved in `path` to this model. Returns `self`."""
        from gemma_keras.lora import load_adapters

        load_adapters(self.backbone, path)
        self._rebuild_engine()
        return self

    def merge_adapters(self) -> Gemma:
        """Folds the LoRA factors into the base weights and drops them.

        The merged model generates like the adapted one, runs at full speed
        (the torch fast path included), and `save`/`export` write it as a
        plain model. Returns `self`.
        """
        from gemma_keras.errors import FinetuneError
        from gemma_keras.export import rebuild
        from gemma_keras.lora import lora_settings

        if lora_settings(self.backbone) is None:
            raise FinetuneError("this model has no LoRA adapters to merge.")
        # The rebuilt copy has no LoRA layers; its kernels are the merged ones.
        self.causal_lm = rebuild(self.causal_lm)
        self.backbone = self.causal_lm.backbone
        self._rebuild_engine()
        return self

    def _rebuild_engine(self) -> None:
        # Compiled functions hold the variable list; new or changed layers need new ones.
        from gemma_keras.engine import DecodeEngine

        self.engine = DecodeEngine(self.causal_lm)

    # --- quantization -----------------------------------------------------------
    def quantize(self, mode: str = "int8") -> Gemma:
        """Quantizes the weights in place with Keras' own quantization.

        Only `"int8"` is offered: Keras stores int8 weights with per-channel
        scales and quantizes each layer's inputs to int8 on the fly.
        Returns `self`, so `gk.load().quantize("int8")` reads naturally.
        """
        from gemma_keras.errors import UnsupportedModelError

        if mode != "int8":
            raise GenerationArgumentError(f"quantize mode must be 'int8', got {mode!r}.")
        if self.info.dtype.endswith("+int8"):
            raise UnsupportedModelError("The model is already quantized to int8.")
        try:
            self.backbone.quantize(mode)
        except Exception as exc:  # Keras raises a variety here; say which backend
            raise UnsupportedModelError(
                f"Keras cannot quantize this model to {mode} on the {self.info.backend} backend: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._rebuild_engine()
        self.info.dtype = f"{self.info.dtype}+int8"
        return self

    # --- lower-level access -----------------------------------------------------
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Next-token logits after `token_ids` (one sequence), as float32 numpy."""
        if len(token_ids) == 0:
            raise GenerationArgumentError("token_ids is empty; pass at least one token id.")
        state = self.engine.start([list(token_ids)], 1)
        return state.logits[0]

    def score(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits for every position of one sequence, shape `(len, vocab)`."""
        from keras import ops

        ids = np.asarray([token_ids], dtype=np.int32)
        out = self.causal_lm({"token_ids": ids, "padding_mask": np.ones_like(ids)})
        return np.asarray(ops.convert_to_numpy(ops.cast(out, "float32")))[0]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def config(self) -> dict[str, Any]:
        return dict(self.backbone.get_config())

    # --- export -----------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Saves a KerasHub preset directory, with any LoRA merged into the weights.

        `keras_hub.models.Gemma3CausalLM.from_preset(path)` (`GemmaCausalLM`
        for Gemma 1 and 2) and `gemma_keras.load(path)` both load it.

        Example:

        >>> lm.save("my-gemma")  # doctest: +SKIP
        """
        from gemma_keras.export import export

        return export(self, path, format="keras", overwrite=overwrite)

    def export(
        self,
        dest: str | os.PathLike,
        format: str | None = None,
        dtype: str | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Exports as `"keras"` (a preset, as `save`), `"safetensors"` or `"gguf"`.

        The format follows a `.gguf` destination, otherwise pass it. `dtype`:
        safetensors `"f32"` (default) or `"f16"`; gguf `"f16"` (default),
        `"f32"` or `"q8_0"`. The destination appears whole or not at all;
        an existing one is only replaced with `overwrite=True`. See
        docs/export.md.

        Example:

        >>> lm.export("gemma.gguf", dtype="q8_0")  # doctest: +SKIP
        >>> lm.export("gemma-hf", format="safetensors")  # doctest: +SKIP
        """
        from gemma_keras.export import export

        return export(self, dest, format=format, dtype=dtype, overwrite=overwrite)

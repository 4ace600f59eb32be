"""`Gemma`: a loaded model: a KerasHub causal LM, its tokenizer, its architecture record and a runner.

`Gemma` turns text into token ids and back and hands the ids to the parts
that do the work: the decode loop (`generation.decode`), fine-tuning
(`training.finetune`) and the writers (`formats.export`). It owns no
transformer math and no token loop. Get one with `gemma_keras.load()`.

Example:

>>> import gemma_keras as gk
>>> lm = gk.load()  # doctest: +SKIP
>>> lm.generate("The capital of France is", max_new_tokens=8)  # doctest: +SKIP
' Paris...'
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gemma_keras import checks
from gemma_keras.architectures.registry import by_name
from gemma_keras.checks import positive_int
from gemma_keras.errors import (
    FinetuneError,
    GenerationArgumentError,
    NotInstructionTunedWarning,
    UnsupportedModelError,
)
from gemma_keras.formats.export import export as export_model
from gemma_keras.formats.keras_preset import rebuild
from gemma_keras.formats.model_info import ModelInfo
from gemma_keras.formats.sentencepiece import GemmaTokenizer
from gemma_keras.generation.assistant import Assistant
from gemma_keras.generation.chat import Chat
from gemma_keras.generation.decode import KeptCache, Request, decode, next_token_logits
from gemma_keras.generation.runner import Runner, make_runner
from gemma_keras.generation.sampling import SamplingParams
from gemma_keras.generation.speculative import DEFAULT_LOOKAHEAD, DraftStats, check_draft, speculative_decode
from gemma_keras.generation.streaming import check_stop_strings
from gemma_keras.generation.structured import json_constraint
from gemma_keras.quantization import (
    GGUF_MODE,
    check_quantize_mode,
    one_collection,
    quantization_config,
    rows_at_a_time,
)
from gemma_keras.training import lora
from gemma_keras.training.config import FinetuneConfig
from gemma_keras.training.loop import FinetuneResult, finetune, input_names

SAMPLING_FIELDS = tuple(SamplingParams.__dataclass_fields__)
# One prompt: text, or token ids used as given.
Prompt = str | Sequence[int]


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise GenerationArgumentError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def _prompts(prompt: Any) -> tuple[list, bool]:
    """`(prompts, single)`: one text, one list of token ids, or an iterable of either."""
    what = "prompt must be a string, a list of token ids, or a non-empty list of either"
    if isinstance(prompt, str):
        return [prompt], True
    if isinstance(prompt, (bytes, bytearray, Mapping)) or not isinstance(prompt, Iterable):
        raise GenerationArgumentError(f"{what}; got {type(prompt).__name__}.")
    items = list(prompt)
    if not items:
        raise GenerationArgumentError(f"{what}; got an empty {type(prompt).__name__}.")
    if all(checks.is_integer(t) for t in items):
        return [items], True
    for i, item in enumerate(items):
        if isinstance(item, str):
            continue
        if isinstance(item, (bytes, bytearray, Mapping)) or not isinstance(item, Iterable):
            raise GenerationArgumentError(
                f"prompt[{i}] must be a string or a list of token ids, got {item!r}."
            )
        item = list(item)
        if not all(checks.is_integer(t) for t in item):
            raise GenerationArgumentError(
                f"prompt[{i}] must be a string or a list of token ids, got {item!r}."
            )
        items[i] = item
    return items, False


class Gemma:
    """A Gemma causal language model ready to generate.

    Args:
        causal_lm: a KerasHub Gemma causal LM.
        tokenizer: the matching `GemmaTokenizer`.
        info: a `ModelInfo`.
        preprocessor: builds KerasHub's preprocessor for `causal_lm` when it
            has none, on first access to `causal_lm`. Generation never
            needs it; KerasHub's own `causal_lm.generate` and a Keras-preset
            export do, and building it takes about a second and imports
            TensorFlow (`backend/keras_hub_import.py`).

    Attributes:
        causal_lm, backbone: the KerasHub model.
        tokenizer: text to ids and back.
        info: where the model came from and what it is.
        architecture: the `Architecture` record.
        runner: what runs the model's forward passes (`generation.runner`).
    """

    def __init__(
        self,
        causal_lm,
        tokenizer: GemmaTokenizer,
        info: ModelInfo,
        preprocessor: Callable[[], Any] | None = None,
    ):
        self._causal_lm = causal_lm
        self._make_preprocessor = preprocessor
        self.tokenizer = tokenizer
        self.info = info
        self.architecture = by_name(info.architecture)
        self.default_stop_ids = self.architecture.stop_token_ids(tokenizer)
        self.runner: Runner = make_runner(causal_lm, self.architecture)
        self.last_draft_stats: DraftStats | None = None  # set by generate/stream with a draft

    @property
    def causal_lm(self):
        """The KerasHub causal LM, with its preprocessor attached (built on first access)."""
        if self._make_preprocessor is not None:
            if self._causal_lm.preprocessor is None:
                self._causal_lm.preprocessor = self._make_preprocessor()
            self._make_preprocessor = None  # once: a preprocessor a user sets to None later stays None
        return self._causal_lm

    @property
    def backbone(self):
        return self._causal_lm.backbone

    def __repr__(self) -> str:
        i = self.info
        quantized = f", quantization={i.quantization!r}" if i.quantization else ""
        return (
            f"Gemma(architecture={i.architecture!r}, source={i.source!r}, "
            f"backend={i.backend!r}, dtype={i.dtype!r}{quantized})"
        )

    def _new_runner(self) -> None:
        # A runner holds the variable list it was built for; changed layers need a new one.
        self.runner = make_runner(self._causal_lm, self.architecture)
        if self.info.quantization == GGUF_MODE:  # the file's blocks no longer describe the weights
            self.info.quantization = None

    def _keep_gguf_blocks(self, path: str | os.PathLike) -> None:
        """Runs the GGUF file this model was loaded from as its own quantized blocks (`quantize="gguf"`)."""
        self.runner = make_runner(self._causal_lm, self.architecture, gguf_blocks=path)
        self.info.quantization = GGUF_MODE

    # --- generation -----------------------------------------------------------
    def generate(
        self,
        prompt: Prompt | Sequence[Prompt],
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
        json_schema: Mapping[str, Any] | bool | str | None = None,
        draft: Gemma | Assistant | None = None,
        lookahead: int = DEFAULT_LOOKAHEAD,
    ) -> str | list[str]:
        """Generates a continuation of one prompt or a list of prompts.

        A prompt is text or a list of token ids. Text is encoded literally:
        `<start_of_turn>` written in it stays text and never becomes a control
        token. To use control tokens, pass ids (`lm.tokenizer.encode(text,
        special=True)`, or `lm.encode_messages(messages)` for a conversation).

        Greedy unless `temperature > 0`. A row ends at any of
        `stop_token_ids` (default: `<eos>` and `<end_of_turn>`; pass `()` to
        never stop early) or `stop` strings, found across token boundaries.
        Neither the stop token nor the stop string is returned. With a seed,
        prompt `i` of a list samples as it would alone with `seed` and
        stream `i`, so rows of one call differ and results repeat.
        `add_bos` applies to text prompts; ids are used as given.

        `json_schema` constrains each row's output to JSON that the schema
        (a dict) accepts, or to any JSON object with `True` (`"json_object"`
        too): tokens that would break it are never picked, greedy or
        sampled. A row ends once its JSON is complete. A row cut by
        `max_new_tokens` (or a `stop` string) may hold incomplete JSON.
        Needs llguidance (`pip install 'gemma-keras[structured]'`); see
        docs/generation.md for the schema features it supports.

        `draft`, a smaller model with the same tokenizer (such as Gemma 3
        270M for a larger Gemma 3), or a Gemma 4 assistant made for this
        model (`gk.load_assistant`), decodes speculatively: it proposes
        `lookahead` tokens a round and this model checks them in one pass. Greedy only; the output is this model's own
        greedy output, token for token. `lm.last_draft_stats` tells how many
        proposals were accepted. Prompts of a list run one after another.

        Returns:
            A string for one prompt, a list of strings for a list of prompts.

        Example:

        >>> lm.generate("The capital of France is", max_new_tokens=8)  # doctest: +SKIP
        """
        prompts, single = _prompts(prompt)
        include_prompt = _flag("include_prompt", include_prompt)
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed)
        requests = self._requests(prompts, max_new_tokens, params, stop_token_ids, stop, add_bos, json_schema)
        texts = [""] * len(prompts)
        if draft is not None:
            events = (e for r in requests for e in self._speculative(r, draft, lookahead))
        else:
            events = self._decode(requests)
        for event in events:
            texts[event.row] += event.text
        if include_prompt:
            texts = [self._prompt_text(p) + t for p, t in zip(prompts, texts, strict=True)]
        return texts[0] if single else texts

    def stream(
        self,
        prompt: Prompt,
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
        json_schema: Mapping[str, Any] | bool | str | None = None,
        draft: Gemma | Assistant | None = None,
        lookahead: int = DEFAULT_LOOKAHEAD,
    ) -> Iterator[str]:
        """Yields the continuation of one prompt (text or token ids) in pieces as tokens are decoded.

        The pieces join to exactly what `generate` returns for the same
        arguments. A multi-byte character split over several tokens comes
        out whole. Closing the iterator early stops decoding. `json_schema`
        constrains the output as in `generate`; `draft` decodes
        speculatively, as in `generate`.

        Example:

        >>> for piece in lm.stream("Tell me a story", max_new_tokens=64):  # doctest: +SKIP
        ...     print(piece, end="", flush=True)
        """
        request = self._one_request(
            prompt,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop_token_ids=stop_token_ids,
            stop=stop,
            add_bos=add_bos,
            json_schema=json_schema,
        )
        events = self._decode([request]) if draft is None else self._speculative(request, draft, lookahead)
        return (event.text for event in events if event.text)

    def _one_request(self, prompt: Prompt, max_new_tokens: int = 64, **options: Any) -> Request:
        """The checked request for one prompt, from `stream`'s arguments."""
        prompts, single = _prompts(prompt)
        if not single:
            raise GenerationArgumentError(
                "stream takes one prompt (a string or a list of token ids), not a list of prompts."
            )
        # `stream`'s keywords: the sampling ones, then stops, add_bos and json_schema.
        params = SamplingParams(**{k: options.pop(k) for k in SAMPLING_FIELDS if k in options})
        stop_token_ids, stop = options.pop("stop_token_ids", None), options.pop("stop", None)
        add_bos, json_schema = options.pop("add_bos", True), options.pop("json_schema", None)
        if options:
            raise GenerationArgumentError(f"unknown generation argument(s) {sorted(options)}.")
        return self._requests(prompts, max_new_tokens, params, stop_token_ids, stop, add_bos, json_schema)[0]

    def encode_messages(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of a conversation in the model's chat format, ready for `generate`.

        The format's markers become control tokens; what the messages say
        is encoded as plain text, so a message cannot forge a turn.

        Example:

        >>> ids = lm.encode_messages([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
        >>> lm.generate(ids, max_new_tokens=16)  # doctest: +SKIP
        """
        add_generation_prompt = _flag("add_generation_prompt", add_generation_prompt)
        return self.architecture.chat_format.encode(messages, self.tokenizer, add_generation_prompt)

    def chat(
        self,
        system: str | None = None,
        *,
        thinking: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        show_thinking: bool = False,
        **generate_kwargs: Any,
    ) -> Chat:
        """Starts a multi-turn conversation in the model's chat format.

        Warns (`NotInstructionTunedWarning`) when the model is known to be
        pretrained only: such a model continues or echoes the conversation
        rather than answering it.

        Gemma 4 only: `thinking=True` asks the model to think before it
        answers; the thought is kept apart (`chat.last_reply.thinking`) and
        streamed only with `show_thinking=True`. `tools` (OpenAI-style
        function specs) are declared in the system turn; calls the model
        makes come back parsed in `chat.last_reply.tool_calls`, and
        `chat.send_tool_results(...)` returns their results to it.

        Example:

        >>> chat = lm.chat(system="Answer briefly.")  # doctest: +SKIP
        >>> chat.send("Hi")  # doctest: +SKIP
        """
        fmt = self.architecture.chat_format
        thinking = _flag("thinking", thinking)
        show_thinking = _flag("show_thinking", show_thinking)
        if tools is not None and (
            isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence)
        ):
            raise GenerationArgumentError("tools must be a list of tool specs.")
        tools = list(tools or ())
        fmt.render(
            [{"role": "user", "content": "x"}], thinking=thinking, tools=tools
        )  # refuses bad tools now
        detokenize = self.tokenizer.decode
        if fmt.reply is not None:  # the reply's markers stay in its text, for the chat to split it
            keep = {self.tokenizer.token_to_id(m) for m in fmt.reply.markers} - {-1}
            detokenize = functools.partial(self.tokenizer.decode, keep=keep)
        # The conversation's KV cache is kept between replies: each one prefills only the new turn.
        kept = KeptCache(self.runner, self.tokenizer.pad_id, detokenize, self.info.context_length)

        def stream(prompt_ids: list[int], **options: Any) -> Iterator[str]:
            request = self._one_request(prompt_ids, **options)
            if kept.runner is not self.runner:  # fine-tuned or quantized since: a new model
                kept.runner = self.runner
                kept.reset()
            return (event.text for event in kept.decode(request) if event.text)

        def encode(messages: list[dict[str, Any]]) -> list[int]:
            return fmt.encode(messages, self.tokenizer, True, thinking=thinking, tools=tools)

        chat = Chat(
            stream,
            encode,
            system=system,
            cache=kept,
            context_length=self.info.context_length,
            syntax=fmt.reply,
            show_thinking=show_thinking,
            **generate_kwargs,
        )
        if self.info.instruction_tuned is False:
            warnings.warn(NotInstructionTunedWarning(not_instruction_tuned_message(self.info)), stacklevel=2)
        return chat

    def _speculative(self, request: Request, draft: Gemma | Assistant, lookahead: int):
        """One request's events, decoded with `draft` proposing tokens (see `generation.speculative`)."""
        if isinstance(draft, Assistant):
            runner, context = draft, self.info.context_length
        elif isinstance(draft, Gemma):
            if draft.tokenizer.proto != self.tokenizer.proto:
                raise GenerationArgumentError(
                    f"the draft {draft.info.source} has another tokenizer than {self.info.source}; a draft "
                    "must share the model's vocabulary."
                )
            runner, context = draft.runner, min(self.info.context_length, draft.info.context_length)
        else:
            raise GenerationArgumentError(
                "draft must be a loaded model (gk.load(...)) or a Gemma 4 assistant (gk.load_assistant(...)), "
                f"got {type(draft).__name__}."
            )
        check_draft(request, self.runner, runner, lookahead)
        self.last_draft_stats = DraftStats()
        return speculative_decode(
            self.runner,
            runner,
            request,
            lookahead=lookahead,
            pad_id=self.tokenizer.pad_id,
            detokenize=self.tokenizer.decode,
            context_length=context,
            stats=self.last_draft_stats,
        )

    def _decode(self, requests: list[Request]):
        return decode(
            self.runner,
            requests,
            pad_id=self.tokenizer.pad_id,
            detokenize=self.tokenizer.decode,
            context_length=self.info.context_length,
        )

    def _requests(
        self, prompts, max_new_tokens, params, stop_token_ids, stop, add_bos, json_schema=None
    ) -> list[Request]:
        stops = check_stop_strings(stop)
        stop_ids = self._stop_ids(stop_token_ids)
        add_bos = _flag("add_bos", add_bos)
        positive_int("max_new_tokens", max_new_tokens, GenerationArgumentError)
        requests = []
        for i, prompt in enumerate(prompts):
            where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
            if isinstance(prompt, str):
                if not checks.text(where, prompt, GenerationArgumentError):
                    raise GenerationArgumentError(
                        f"{where} is empty; give at least one character of text to continue."
                    )
                ids = self.tokenizer.encode(prompt, add_bos=add_bos)
            else:
                ids = [int(t) for t in prompt]
            request = Request(ids, int(max_new_tokens), params, stop_ids, stops, i)
            request.check(self.tokenizer.vocabulary_size, where)
            requests.append(request)
        if json_schema is not None:  # after every other check; each row gets its own
            for request in requests:
                request.constraint = json_constraint(self.tokenizer, json_schema)
        return requests

    def _prompt_text(self, prompt) -> str:
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)

    def _stop_ids(self, stop_token_ids) -> frozenset[int]:
        if stop_token_ids is None:
            return frozenset(self.default_stop_ids)
        if isinstance(stop_token_ids, (str, bytes, Mapping)) or not isinstance(stop_token_ids, Iterable):
            raise GenerationArgumentError(
                f"stop_token_ids must be a list of integer token ids, got {stop_token_ids!r}."
            )
        ids = list(stop_token_ids)
        if not all(checks.is_integer(i) for i in ids):
            raise GenerationArgumentError(f"stop_token_ids must be a list of integer token ids, got {ids!r}.")
        return frozenset(int(i) for i in ids)

    # --- fine-tuning --------------------------------------------------------------
    def finetune(self, data: Any, config: FinetuneConfig | None = None, **settings: Any) -> FinetuneResult:
        """LoRA supervised fine-tuning, in place, on any backend.

        Args:
            data: a JSONL path, a list of dicts, or a `datasets.Dataset`, with
                records `{"text"}`, `{"prompt", "response"}` or `{"messages"}`.
            config: a `FinetuneConfig`; default: `FinetuneConfig()`.
            **settings: `FinetuneConfig` fields that override `config`
                (`lora_rank=8, epochs=3, out_dir="run/"`, ...).

        Bad settings raise `FinetuneError` before the model changes; so does
        an `out_dir` that cannot take the run (a file, a read-only
        directory, a parent that is a file, an `adapters.npz` there that
        gemma_keras did not write). A missing `out_dir` is created.

        Example:

        >>> lm.finetune([{"prompt": "Who made Zorblax?", "response": "Quenta Vell."}],
        ...             lora_rank=8, epochs=20, verbose=False)  # doctest: +SKIP
        """
        config = (
            (config or FinetuneConfig()).replace(**settings) if settings else (config or FinetuneConfig())
        )
        if not isinstance(config, FinetuneConfig):
            raise FinetuneError(f"config must be a FinetuneConfig, got {type(config).__name__}.")
        if not self.architecture.trainable:
            raise FinetuneError(
                f"gemma_keras cannot fine-tune {self.architecture.title} yet (its training forward pass, "
                "with AltUp streams, is not wired to the LoRA loop); generate with it, or fine-tune a Gemma 1-4."
            )
        try:
            return finetune(self.backbone, self.tokenizer, data, config, self.architecture.chat_format)
        finally:
            self._new_runner()  # LoRA layers changed the variables, however training ended

    def save_adapters(self, path: str | os.PathLike) -> Path:
        """Writes the LoRA factors alone to `path` (`.npz`), atomically. Returns the path.

        An adapter file gemma_keras wrote there before is replaced; a
        directory at `path`, any other file, or a parent that is a file or
        read-only raise `FinetuneError` naming the path, and nothing is
        written. A full disk is a `FinetuneError` too, with no partial file left.
        """
        return lora.save_adapters(self.backbone, path)

    def load_adapters(self, path: str | os.PathLike) -> Gemma:
        """Adds the LoRA adapters saved in `path` to this model. Returns `self`."""
        lora.load_adapters(self.backbone, path)
        self._new_runner()
        return self

    def merge_adapters(self) -> Gemma:
        """Folds the LoRA factors into the base weights and drops them.

        The merged model generates like the adapted one, runs at full speed
        (the plain-torch runner included), and `save`/`export` write it as a
        plain model. Returns `self`.
        """
        if lora.lora_settings(self.backbone) is None:
            raise FinetuneError("this model has no LoRA adapters to merge.")
        # The rebuilt copy has no LoRA layers; its kernels are the merged ones.
        self._causal_lm = rebuild(self._causal_lm)
        self._new_runner()
        return self

    # --- quantization -----------------------------------------------------------
    def quantize(self, mode: str = "int8") -> Gemma:
        """Quantizes the weights in place with Keras' quantizers.

        Modes (`gemma_keras.quantization.QUANTIZE_MODES`):

        - `"int8"`: weight-only. int8 weights with one abs-max scale per
          output channel; the layers' inputs (activations) stay float.
        - `"int4"`: weight-only. int4 weights in groups of
          `INT4_GROUP_SIZE` (128) input values, each group with its own
          scale and zero point; activations stay float.
        - `"int8-activations"`: Keras' default int8 mode. int8 weights as in
          `"int8"`, and each layer's inputs quantized to int8 on the fly too.
          It costs the 270M model much more perplexity (docs/benchmarks.md).

        Every projection is quantized, and the token embedding too, which
        also serves as the tied output projection. Returns `self`, so
        `gk.load().quantize("int8")` reads naturally.
        """
        check_quantize_mode(mode)
        if self.info.quantization is not None:
            raise UnsupportedModelError(f"The model is already quantized ({self.info.quantization}).")
        try:
            with warnings.catch_warnings(), one_collection(), rows_at_a_time():
                # Keras warns once per layer kind it skips (norms, RoPE, dropout).
                warnings.filterwarnings("ignore", message=r"Layer .* does not have a `quantize` method")
                self.backbone.quantize(config=quantization_config(mode))
        except Exception as exc:  # Keras raises a variety here; say which backend
            raise UnsupportedModelError(
                f"Keras cannot quantize this model to {mode} on the {self.info.backend} backend: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._new_runner()
        self.info.quantization = mode
        return self

    # --- lower-level access -----------------------------------------------------
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Next-token logits after `token_ids` (one sequence), as float32 numpy."""
        return next_token_logits(self.runner, self._token_ids(token_ids))

    def score(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits for every position of one sequence, shape `(len, vocab)`."""
        from keras import ops

        ids = np.asarray([self._token_ids(token_ids)], dtype=np.int32)
        inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
        if "position_ids" in input_names(self.backbone):  # Gemma 4
            inputs["position_ids"] = np.arange(ids.shape[1], dtype=np.int32)[None]
        # The backbone and its tied output, not `causal_lm(inputs)`: KerasHub's Gemma 3n causal LM
        # maps a dict of inputs onto its functional graph wrongly (logits off by about 1).
        text = getattr(self.backbone, "language_model", self.backbone)
        out = text.token_embedding(self.backbone(inputs), reverse=True)
        return np.asarray(ops.convert_to_numpy(ops.cast(out, "float32")))[0]

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as `generate` encodes it (`<bos>` included)."""
        return len(self.tokenizer.encode(checks.text("text", text, GenerationArgumentError)))

    def _token_ids(self, token_ids) -> list[int]:
        if isinstance(token_ids, (str, bytes, Mapping)) or not isinstance(token_ids, Iterable):
            raise GenerationArgumentError(f"token_ids must be a list of token ids, got {token_ids!r}.")
        ids = list(token_ids)
        if not ids:
            raise GenerationArgumentError("token_ids is empty; pass at least one token id.")
        if not all(checks.is_integer(t) for t in ids):
            raise GenerationArgumentError(f"token_ids must be a list of integer token ids, got {ids!r}.")
        Request(ids, 1).check(self.tokenizer.vocabulary_size, "token_ids")
        return [int(t) for t in ids]

    def config(self) -> dict[str, Any]:
        return dict(self.backbone.get_config())

    # --- export -----------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Saves a KerasHub preset directory, with any LoRA merged into the weights.

        `keras_hub.models.Gemma3CausalLM.from_preset(path)` (`GemmaCausalLM`
        for Gemma 1 and 2) and `gemma_keras.load(path)` both load it. An
        existing `path` is replaced only with `overwrite=True`, and only when
        it is a preset gemma_keras saved; see `export`.

        Example:

        >>> lm.save("my-gemma")  # doctest: +SKIP
        """
        return export_model(
            self.causal_lm, self.tokenizer, self.info, path, format="keras", overwrite=overwrite
        )

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
        `"f32"` or `"q8_0"`. The destination appears whole or not at all.

        An existing destination is replaced only with `overwrite=True`, and
        only when it is gemma_keras's own export of the same format (a
        directory whose `gemma_keras.json` names that format and lists all
        it holds, or a GGUF file with the `gemma_keras.export` key).
        Anything else there (a directory of your files, a GGUF from
        elsewhere, a file where a directory goes or the reverse, a symlink,
        a device) raises `ExportError` naming it and is left untouched, as
        is a parent that is a file or read-only; all of this is checked
        before anything is written. See docs/export.md.

        Example:

        >>> lm.export("gemma.gguf", dtype="q8_0")  # doctest: +SKIP
        >>> lm.export("gemma-hf", format="safetensors")  # doctest: +SKIP
        """
        return export_model(self.causal_lm, self.tokenizer, self.info, dest, format, dtype, overwrite)


def not_instruction_tuned_message(info: ModelInfo) -> str:
    return (
        f"{info.source} is a pretrained model, not an instruction-tuned one: in a chat it continues "
        "or echoes the conversation instead of answering. Chat with an instruction-tuned model "
        "(a KerasHub *_instruct_* preset, or a Gemma *-it GGUF or checkpoint), or fine-tune this "
        "one on conversations first (lm.finetune)."
    )

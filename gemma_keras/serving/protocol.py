"""OpenAI's request and response shapes: a JSON body in, a `Plan` of decode requests out, and back.

Every check on a request happens here, before anything reaches the engine,
and each failure is an `APIError` (HTTP 400) naming the field. Fields that
OpenAI defines but this server cannot honour (`logprobs`, `logit_bias`,
presence and frequency penalties, `suffix`) are refused, not ignored.
`top_k`, `min_p`, `repetition_penalty` and `ignore_eos` (generate until
`max_tokens` or a stop string) are accepted as extensions, as vLLM does.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gemma_keras import checks
from gemma_keras.errors import GemmaKerasError
from gemma_keras.generation.decode import Request
from gemma_keras.generation.sampling import SamplingParams
from gemma_keras.generation.streaming import check_stop_strings
from gemma_keras.serving import tools as tool_calls
from gemma_keras.serving.errors import APIError

MAX_N = 16
MAX_STOPS = 4
COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "response_format",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "logit_bias",
    "metadata",
    "store",
    "service_tier",
    "ignore_eos",
}
COMPLETION_FIELDS = COMMON | {"prompt", "echo", "suffix", "best_of"}
CHAT_FIELDS = COMMON | {
    "messages",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_completion_tokens",
    "top_logprobs",
}


@dataclass
class Plan:
    """What one HTTP request asks for: `n` choices for each prompt."""

    chat: bool
    model: str
    prompts: list[list[int]]
    max_tokens: int
    sampling: SamplingParams
    n: int = 1
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    schema: Any = None  # a JSON schema dict, True for any JSON object, or None
    echo_texts: list[str] | None = None
    tools: list[tool_calls.Tool] = field(default_factory=list)
    tool_choice: Any = "none"
    ignore_eos: bool = False
    id: str = ""
    created: int = 0

    @property
    def forced_call(self) -> bool:
        return self.tool_choice == "required" or isinstance(self.tool_choice, tool_calls.Tool)

    @property
    def parses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    def requests(self, stop_ids: frozenset[int], constraint=None) -> list[Request]:
        """One decode request per choice, in choice order; `constraint()` makes each row's own."""
        out = []
        stop_ids = frozenset() if self.ignore_eos else stop_ids
        for p, prompt in enumerate(self.prompts):
            for j in range(self.n):
                out.append(
                    Request(
                        prompt,
                        self.max_tokens,
                        self.sampling,
                        stop_ids,
                        self.stop,
                        stream=p * self.n + j,
                        **({"constraint": constraint()} if constraint else {}),
                    )
                )
        return out


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(f"the request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise APIError("the request body must be a JSON object.")
    return body


def _int(body: dict, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(f"'{name}' must be an integer, got {value!r}.", name)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise APIError(f"'{name}' must be {bound}, got {value}.", name)
    return value


def _number(body: dict, name: str, default: float | None, low: float, high: float) -> float | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise APIError(f"'{name}' must be a number, got {value!r}.", name)
    if not low <= value <= high:
        raise APIError(f"'{name}' must be between {low} and {high}, got {value}.", name)
    return float(value)


def _refuse_unsupported(body: dict, fields: set[str]) -> None:
    unknown = sorted(set(body) - fields)
    if unknown:
        raise APIError(f"unrecognized request argument(s): {', '.join(unknown)}.", unknown[0])
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise APIError(
                f"'{name}' is not supported; use 'repetition_penalty' (> 1 discourages repeats).", name
            )
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        raise APIError("'logprobs' is not supported by this server.", "logprobs")
    if body.get("logit_bias"):
        raise APIError("'logit_bias' is not supported by this server.", "logit_bias")
    if body.get("suffix"):
        raise APIError("'suffix' (insertion) is not supported by Gemma.", "suffix")


def _response_format(body: dict) -> Any:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return True
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise APIError(
                "response_format.json_schema must be {'name': ..., 'schema': {...}}.", "response_format"
            )
        return spec.get("schema", {})
    raise APIError("response_format.type must be 'text', 'json_object' or 'json_schema'.", "response_format")


def _common(body: dict, lm, served: str, prompts: list[list[int]], default_max: int, chat: bool) -> Plan:
    model = body.get("model", served)
    if model != served:
        raise APIError(
            f"model {model!r} is not served here; this server serves {served!r} (see GET /v1/models).",
            "model",
            code="model_not_found",
        )
    context = lm.info.context_length
    longest = max(len(p) for p in prompts)
    room = (context - longest) if context else None
    if room is not None and room < 1:
        raise APIError(
            f"the prompt is {longest} tokens; the model's context is {context} tokens.",
            "messages" if chat else "prompt",
            code="context_length_exceeded",
        )
    name = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    max_tokens = _int(body, name, None, 1)
    if max_tokens is None:
        max_tokens = default_max if room is None else min(default_max, room)
    elif room is not None and max_tokens > room:
        raise APIError(
            f"the prompt ({longest} tokens) plus {name} ({max_tokens}) exceeds the model's context of "
            f"{context} tokens.",
            name,
            code="context_length_exceeded",
        )
    try:
        sampling = SamplingParams(
            temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
            top_p=_number(body, "top_p", None, 0.0, 1.0) if body.get("top_p") not in (None, 1, 1.0) else None,
            top_k=_int(body, "top_k", None, 1) if body.get("top_k") not in (None, -1, 0) else None,
            min_p=_number(body, "min_p", None, 0.0, 1.0),
            repetition_penalty=_number(body, "repetition_penalty", None, 0.01, 100.0),
            seed=_int(body, "seed", None, 0, 2**63 - 1),
        )
    except GemmaKerasError as exc:
        raise APIError(str(exc)) from None
    stop = body.get("stop")
    try:
        stop = check_stop_strings(stop)
    except GemmaKerasError as exc:
        raise APIError(str(exc), "stop") from None
    if len(stop) > MAX_STOPS:
        raise APIError(f"'stop' holds {len(stop)} strings; at most {MAX_STOPS} are allowed.", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError("'stream' must be true or false.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError("'stream_options' must be an object.", "stream_options")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise APIError("'ignore_eos' must be true or false.", "ignore_eos")
    n = _int(body, "n", 1, 1, MAX_N)
    if _int(body, "best_of", n, n, n) != n:
        raise APIError("'best_of' other than n is not supported.", "best_of")
    return Plan(
        chat=chat,
        model=served,
        prompts=prompts,
        max_tokens=max_tokens,
        sampling=sampling,
        n=n,
        stop=stop,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        schema=_response_format(body),
        ignore_eos=ignore_eos,
        id=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
        created=int(time.time()),
    )


def _token_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(checks.is_integer(t) and not isinstance(t, bool) for t in value)
    )


def completion_plan(body: dict, lm, served: str, default_max: int = 16) -> Plan:
    """A `/v1/completions` body as a plan (OpenAI's default `max_tokens` is 16)."""
    _refuse_unsupported(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, str) or _token_list(prompt):
        raw = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _token_list(p) for p in prompt):
        raw = prompt
    else:
        raise APIError("'prompt' must be a string, a list of strings, or token ids.", "prompt")
    prompts, texts = [], []
    vocab = lm.tokenizer.vocabulary_size
    for i, p in enumerate(raw):
        if isinstance(p, str):
            try:
                checks.text(f"prompt[{i}]", p, GemmaKerasError)
            except GemmaKerasError as exc:
                raise APIError(str(exc), "prompt") from None
            if not p:
                raise APIError("the prompt is empty; give at least one character.", "prompt")
            ids = lm.tokenizer.encode(p, add_bos=True)
            texts.append(p)
        else:
            ids = [int(t) for t in p]
            if not all(0 <= t < vocab for t in ids):
                raise APIError(f"prompt token ids must be in 0..{vocab - 1}.", "prompt")
            texts.append(lm.tokenizer.decode(ids))
        prompts.append(ids)
    plan = _common(body, lm, served, prompts, default_max, chat=False)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise APIError("'echo' must be true or false.", "echo")
    plan.echo_texts = texts if echo else None
    return plan


def chat_plan(body: dict, lm, served: str, default_max: int = 512) -> Plan:
    """A `/v1/chat/completions` body as a plan; tools are rendered into the prompt."""
    _refuse_unsupported(body, CHAT_FIELDS)
    tools = tool_calls.parse_tools(body.get("tools"))
    choice = tool_calls.parse_tool_choice(body.get("tool_choice"), tools)
    turns = tool_calls.to_turns(body.get("messages"), tools if choice != "none" else [])
    try:
        ids = lm.encode_messages(turns)
    except GemmaKerasError as exc:
        raise APIError(str(exc), "messages") from None
    plan = _common(body, lm, served, [ids], default_max, chat=True)
    plan.tools, plan.tool_choice = tools, choice
    if plan.forced_call:
        if plan.schema is not None:
            raise APIError("response_format cannot be combined with a forced tool_choice.", "response_format")
        plan.schema = tool_calls.call_schema(choice, tools)
    return plan


# --- responses ---------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def choice_body(plan: Plan, index: int, text: str, finish_reason: str | None) -> dict:
    """One finished choice of a non-streamed response."""
    if not plan.chat:
        if plan.echo_texts is not None:
            text = plan.echo_texts[index // plan.n] + text
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if plan.parses_tools:
        content, calls = tool_calls.parse_reply(text, plan.tools, plan.forced_call)
        if calls:
            message = {"role": "assistant", "content": content, "tool_calls": calls}
            finish_reason = "tool_calls"
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def response_body(plan: Plan, choices: list[dict], prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": plan.id,
        "object": "chat.completion" if plan.chat else "text_completion",
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk_body(plan: Plan, choices: list[dict], usage_body: dict | None = None) -> dict:
    body = {
        "id": plan.id,
        "object": "chat.completion.chunk" if plan.chat else "text_completion",
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
    }
    if plan.include_usage:
        body["usage"] = usage_body
    return body


def delta_choice(
    plan: Plan, index: int, text: str | None, finish_reason: str | None, first: bool = False
) -> dict:
    """One streamed piece of a choice."""
    if not plan.chat:
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
    delta: dict[str, Any] = {}
    if first:
        delta["role"] = "assistant"
    if text is not None:
        delta["content"] = text
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

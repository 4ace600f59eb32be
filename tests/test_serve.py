"""The HTTP server, started for real on a loopback port and driven by the official `openai` client.

One server per module (tiny random Gemma 3, `max_batch=4`), on the
session's backend. Greedy outputs are compared with `lm.generate` on the
same model; faults (disconnect, 429, 400, 401, 413) are provoked and their
effect on the engine is checked, not only the status code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

openai = pytest.importorskip("openai")

from gemma_keras.serving.server import Server  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.test_structured import PERSON  # noqa: E402

PROMPTS = [f"the {w} of" for w in ("France", "Paris", "model", "world", "user", "capital", "hello", "and")]
WAIT = 120  # seconds a state change may take on a loaded CI machine; never a speed check


@pytest.fixture(scope="module")
def lm(tiny_model):
    return tiny_model("gemma3", context=2048)  # room for a tool listing in a vocabulary of characters


@pytest.fixture(scope="module")
def server(lm):
    srv = Server(lm, port=0, max_batch=4, max_queue=64, max_body_bytes=64 * 1024).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=WAIT)


def name(server) -> str:
    return server.state.model_name


def until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def prompt_tokens_seen(server) -> float:
    return server.state.metrics.prompt_tokens._value.get()


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [name(server)]
    response = httpx.get(server.url + "/health")
    assert response.status_code == 200 and response.json() == {"status": "ready"}


def test_requests_that_fit_the_warm_up_compile_nothing(server, client, lm, capsys):
    """After the warm-up, requests within what it compiled (prompts of up to 128 tokens, the default
    budget, greedy or sampled, alone or joining a batch) compile nothing; a longer prompt does, and the
    server counts and logs it."""
    runner = lm.runner
    if not runner.compiles:
        pytest.skip("this backend's runner runs eagerly: it compiles nothing")
    traces = runner.trace_count
    chat = client.chat.completions.create(model=name(server), messages=[{"role": "user", "content": "hi"}])
    assert chat.usage.completion_tokens > 0

    def complete(i: int) -> None:
        prompt = ("the world and " * 10)[: (5, 40, 90, 120)[i]]
        client.completions.create(model=name(server), prompt=prompt, temperature=(0.0, 1.0)[i % 2], seed=i)

    threads = [threading.Thread(target=complete, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert runner.trace_count == traces
    assert server.state.metrics.late_compiles._value.get() == 0

    client.completions.create(model=name(server), prompt="a" * 200, max_tokens=2)
    assert runner.trace_count > traces
    assert server.state.metrics.late_compiles._value.get() > 0
    assert "new shape(s) while serving" in capsys.readouterr().err


def test_completion_matches_generate(server, client, lm):
    out = client.completions.create(model=name(server), prompt=PROMPTS[0], max_tokens=12, temperature=0)
    assert out.choices[0].text == lm.generate(PROMPTS[0], max_new_tokens=12)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == len(lm.tokenizer.encode(PROMPTS[0]))
    assert out.usage.completion_tokens == 12


def test_streamed_text_joins_to_plain(server, client):
    args = dict(model=name(server), prompt=PROMPTS[1], max_tokens=16, temperature=0)
    plain = client.completions.create(**args).choices[0].text
    chunks = list(client.completions.create(stream=True, **args))
    assert "".join(c.choices[0].text for c in chunks) == plain
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_plain_and_streamed(server, client, lm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    args = dict(model=name(server), messages=messages, max_tokens=10, temperature=0)
    plain = client.chat.completions.create(**args)
    expected = lm.generate(lm.encode_messages(messages), max_new_tokens=10)
    assert plain.choices[0].message.content == expected
    assert plain.choices[0].message.role == "assistant"
    stream = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
    assert stream[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_stop_string_and_sampling_options(server, client, lm):
    plain = client.completions.create(
        model=name(server), prompt=PROMPTS[2], max_tokens=20, temperature=0
    ).choices[0]
    stop = plain.text[5:7]
    assert stop
    cut = client.completions.create(
        model=name(server), prompt=PROMPTS[2], max_tokens=20, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == plain.text[: plain.text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    seeded = dict(model=name(server), prompt=PROMPTS[2], max_tokens=12, temperature=1.0, seed=7, n=3)
    one, two = client.completions.create(**seeded), client.completions.create(**seeded)
    assert [c.text for c in one.choices] == [c.text for c in two.choices]  # a seed repeats
    assert len({c.text for c in one.choices}) > 1  # choices draw from their own streams
    assert [c.index for c in one.choices] == [0, 1, 2]


def test_concurrent_streams_equal_alone(server, client, lm):
    """16 streams over 4 rows: each joins, waits or leaves on its own, and gets what it gets alone."""
    jobs = [(PROMPTS[i % 8], 6 + 5 * (i % 7)) for i in range(16)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        prompt, budget = jobs[i]
        try:
            stream = client.completions.create(
                model=name(server), prompt=prompt, max_tokens=budget, temperature=0, stream=True
            )
            results[i] = "".join(c.choices[0].text for c in stream)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, (prompt, budget) in enumerate(jobs):
        assert results[i] == lm.generate(prompt, max_new_tokens=budget), i


def test_requests_that_arrive_together_join_in_one_prefill(lm, monkeypatch):
    """The engine without HTTP: three requests queued in one round join a running batch together."""
    import importlib

    from gemma_keras.serving.engine import Engine, Job

    decode = importlib.import_module("gemma_keras.generation.decode")
    groups: list[int] = []
    join_all = decode.Batch.join_all

    def recorded(batch, requests, width=0):
        groups.append(len(requests))
        return join_all(batch, requests, width)

    monkeypatch.setattr(decode.Batch, "join_all", recorded)
    engine = Engine(lm.runner, lm.tokenizer.pad_id, lm.tokenizer.decode, lm.info.context_length, max_batch=4)
    texts: dict[int, list[str]] = {}
    done = {i: threading.Event() for i in range(4)}
    first_token = threading.Event()

    def deliver_to(i: int):
        def deliver(event) -> None:
            assert not isinstance(event, BaseException), event
            texts.setdefault(i, []).append(event.text)
            first_token.set()
            if event.finish_reason is not None:
                done[i].set()

        return deliver

    budgets = [60, 9, 14, 5]
    encoded = [lm.tokenizer.encode(p) for p in PROMPTS[:4]]
    jobs = [Job(decode.Request(encoded[i], budgets[i]), deliver_to(i)) for i in range(4)]
    engine.start()
    try:
        engine.submit(jobs[:1])
        assert first_token.wait(WAIT)
        engine.submit(jobs[1:])  # queued at once: taken in one round
        for event in done.values():
            assert event.wait(WAIT)
    finally:
        engine.stop()
    assert groups == [1, 3]  # the first request's batch, then the three that joined it
    for i, prompt in enumerate(PROMPTS[:4]):
        assert "".join(texts[i]) == lm.generate(prompt, max_new_tokens=budgets[i]), i


def test_requests_sent_during_a_prefill_join_before_the_next_step(lm, monkeypatch):
    """Requests that arrive while the engine prefills another are admitted before it decodes on."""
    from gemma_keras.generation.decode import Request
    from gemma_keras.serving.engine import Engine, Job

    engine = Engine(lm.runner, lm.tokenizer.pad_id, lm.tokenizer.decode, lm.info.context_length, max_batch=4)
    order: list[int] = []
    done = {i: threading.Event() for i in range(4)}

    def deliver_to(i: int):
        def deliver(event) -> None:
            order.append(i if not isinstance(event, BaseException) else -1)
            if isinstance(event, BaseException) or event.finish_reason is not None:
                done[i].set()

        return deliver

    jobs = [Job(Request(lm.tokenizer.encode(p), 20), deliver_to(i)) for i, p in enumerate(PROMPTS[:4])]
    forward = lm.runner.forward
    sent: list[bool] = []

    def forward_then_submit(*args, **kwargs):
        out = forward(*args, **kwargs)
        if not sent:  # the first call is the first prompt's prefill
            sent.append(True)
            engine.submit(jobs[1:])  # as if sent while it ran
        return out

    monkeypatch.setattr(lm.runner, "forward", forward_then_submit)
    engine.start()
    try:
        engine.submit(jobs[:1])
        for event in done.values():
            assert event.wait(WAIT)
    finally:
        engine.stop()
    assert -1 not in order
    second_of_first = [k for k, i in enumerate(order) if i == 0][1]
    assert all(order.index(i) < second_of_first for i in (1, 2, 3)), order


def test_short_request_is_not_held_back_by_a_long_one(server, client):
    """Ordering, not timing: a short request sent after a long one started finishes first."""
    order: list[str] = []
    long_started = threading.Event()

    def long() -> None:
        stream = client.completions.create(
            model=name(server),
            prompt=PROMPTS[3],
            max_tokens=300,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for _ in stream:
            long_started.set()
        order.append("long")

    thread = threading.Thread(target=long)
    thread.start()
    assert long_started.wait(WAIT)
    client.completions.create(model=name(server), prompt=PROMPTS[4], max_tokens=3, temperature=0)
    order.append("short")
    thread.join()
    assert order == ["short", "long"]


def test_disconnect_frees_the_row(server):
    engine = server.state.engine
    until(lambda: engine.active_rows == 0, "an idle engine")
    body = {
        "model": name(server),
        "prompt": PROMPTS[5],
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.Client(timeout=WAIT) as http:
        with http.stream("POST", server.url + "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            assert engine.active_rows == 1
    # The response is closed after one chunk: the row must leave long before 400 tokens.
    until(lambda: engine.active_rows == 0, "the row of a disconnected client to be freed")
    tokens = server.state.metrics.generated_tokens._value.get()
    time.sleep(0.2)
    assert server.state.metrics.generated_tokens._value.get() == tokens  # nothing decodes for it any more


def test_full_queue_answers_429(server, client):
    engine = server.state.engine
    until(lambda: engine.active_rows == 0, "an idle engine")
    saved = engine.max_queue
    engine.max_queue = 0
    body = {
        "model": name(server),
        "prompt": PROMPTS[6],
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    http = httpx.Client(timeout=WAIT)
    streams = []
    try:
        for _ in range(engine.max_batch):
            response = http.send(
                http.build_request("POST", server.url + "/v1/completions", json=body), stream=True
            )
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: dropping the iterator closes the connection
            assert next(lines).startswith("data: {")
            streams.append((response, lines))
        assert engine.active_rows == engine.max_batch
        refused = http.post(server.url + "/v1/completions", json={**body, "stream": False})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=name(server), prompt="x", max_tokens=2)
    finally:
        engine.max_queue = saved
        for response, _ in streams:
            response.close()
        http.close()
    until(lambda: engine.active_rows == 0, "closed streams to free their rows")


BAD_REQUESTS = [
    ("not json", b"{'prompt': 1", "not valid JSON"),
    ("unknown model", {"model": "gpt-4", "prompt": "hi"}, "not served here"),
    ("negative max_tokens", {"prompt": "hi", "max_tokens": -1}, "'max_tokens' must be >= 1"),
    ("max_tokens a string", {"prompt": "hi", "max_tokens": "8"}, "must be an integer"),
    ("over the context", {"prompt": "hi", "max_tokens": 10**6}, "exceeds the model's context"),
    ("temperature out of range", {"prompt": "hi", "temperature": 5}, "'temperature' must be between"),
    ("unknown field", {"prompt": "hi", "frobnicate": 1}, "unrecognized request argument"),
    ("logprobs", {"prompt": "hi", "logprobs": 2}, "'logprobs' is not supported"),
    ("no prompt", {"max_tokens": 3}, "'prompt' must be"),
    ("too many stops", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ("n too large", {"prompt": "hi", "n": 1000}, "'n' must be between"),
    ("token id out of vocab", {"prompt": [1, 10**9]}, "token ids must be in"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_400_and_never_reach_the_engine(server, case):
    _, body, message = case
    if isinstance(body, dict):
        body = json.dumps({"model": name(server), **body}).encode()
    before = prompt_tokens_seen(server)
    response = httpx.post(
        server.url + "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"
    assert prompt_tokens_seen(server) == before


def test_prompt_over_context_in_chat(server, lm):
    long_text = "hello " * (lm.info.context_length + 10)
    body = {"model": name(server), "messages": [{"role": "user", "content": long_text}]}
    response = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_bad_chat_messages(server):
    for messages, message in [
        ([], "non-empty list"),
        ([{"role": "robot", "content": "x"}], "has role 'robot'"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "only text parts",
        ),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message"),
    ]:
        response = httpx.post(
            server.url + "/v1/chat/completions", json={"model": name(server), "messages": messages}
        )
        assert response.status_code == 400 and message in response.json()["error"]["message"], messages


def test_body_over_the_limit_is_refused(server):
    body = {"model": name(server), "prompt": "x" * (server.state.max_body_bytes + 1)}
    response = httpx.post(server.url + "/v1/completions", json=body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_api_key(server):
    server.state.api_key = "s3cret"
    try:
        body = {"model": name(server), "prompt": "hi", "max_tokens": 2}
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).completions.create(
                **body
            )
        assert httpx.get(server.url + "/v1/models").status_code == 401
        good = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(**body).choices[0].text is not None
        assert httpx.get(server.url + "/health").status_code == 200  # probes need no key
    finally:
        server.state.api_key = None


def test_metrics(server, client):
    client.completions.create(model=name(server), prompt="hi", max_tokens=3, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    for metric in (
        "gemma_keras_requests_total",
        "gemma_keras_generated_tokens_total",
        "gemma_keras_queue_depth",
        "gemma_keras_time_to_first_token_seconds_bucket",
        "gemma_keras_tokens_per_second_bucket",
    ):
        assert metric in text
    assert 'gemma_keras_requests_total{endpoint="/v1/completions",status="200"}' in text


def test_health_says_loading_until_ready(lm):
    release = threading.Event()

    def load():
        release.wait(WAIT)
        return lm

    srv = Server(load, port=0, max_batch=1)
    thread = threading.Thread(target=srv.start, daemon=True)
    thread.start()
    try:
        until(lambda: srv.uvicorn.started, "the server to listen")
        assert httpx.get(srv.url + "/health").json() == {"status": "loading"}
        response = httpx.post(srv.url + "/v1/completions", json={"prompt": "hi"})
        assert response.status_code == 503
        release.set()
        until(lambda: srv.state.ready, "the model to be ready")
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        release.set()
        thread.join(WAIT)
        srv.stop()


def test_sigterm_finishes_requests_in_flight_and_exits_0(tiny_gguf, tmp_path):
    path, _ = tiny_gguf("gemma3", context=2048)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "gemma_keras.cli", "serve", str(path)),
            *("--port", str(port), "--grace", "60", "--max-batch", "1"),  # one request: a short warm-up
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.poll() is None, process.communicate()
            try:
                return httpx.get(url + "/health").status_code == 200
            except httpx.TransportError:
                return False

        until(ready, "the served model to be ready")
        budget = 1500  # long enough to be still decoding when the server has begun to drain
        body = {
            "prompt": PROMPTS[7],
            "max_tokens": budget,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        }
        body["model"] = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        body["stream_options"] = {"include_usage": True}

        def draining() -> bool:
            try:
                return httpx.get(url + "/health").json() == {"status": "draining"}
            except httpx.TransportError:
                return True  # no longer listening

        finish, usage, drained_before_the_end = None, None, False
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=WAIT) as response:
            lines = response.iter_lines()
            first = next(lines)
            process.send_signal(signal.SIGTERM)
            until(draining, "the server to drain")
            for line in [first, *lines]:
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                if chunk["choices"]:
                    finish = chunk["choices"][0]["finish_reason"] or finish
                    drained_before_the_end = drained_before_the_end or finish is None
        assert drained_before_the_end  # the signal came while the request was in flight
        assert finish == "length" and usage["completion_tokens"] == budget  # and it finished whole

        def closed() -> bool:
            try:
                httpx.get(url + "/health")
                return False
            except httpx.TransportError:
                return True

        until(closed, "the port to close")
        assert process.wait(WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in process.stderr.read()


def test_missing_serve_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    for module in [m for m in sys.modules if m.startswith("gemma_keras.serving")]:
        monkeypatch.delitem(sys.modules, module)
    import gemma_keras as gk

    with pytest.raises(gk.MissingExtraError, match=r"gemma-keras\[serve\]"):
        import gemma_keras.serving.server  # noqa: F401


def test_json_schema_output_validates(server, client):
    jsonschema = pytest.importorskip("jsonschema")
    for stream in (False, True):
        out = client.chat.completions.create(
            model=name(server),
            messages=[{"role": "user", "content": "A person as JSON."}],
            max_tokens=80,
            temperature=0,
            stream=stream,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        )
        text = (
            "".join(c.choices[0].delta.content or "" for c in out if c.choices)
            if stream
            else out.choices[0].message.content
        )
        jsonschema.validate(json.loads(text), PERSON)
    unconstrained = client.chat.completions.create(
        model=name(server),
        messages=[{"role": "user", "content": "A person as JSON."}],
        max_tokens=30,
        temperature=0,
    )
    with pytest.raises(json.JSONDecodeError):  # the tiny model writes no JSON of its own accord
        json.loads(unconstrained.choices[0].message.content)


def test_json_object_mode_and_bad_schema(server, client):
    out = client.completions.create(
        model=name(server),
        prompt=PROMPTS[0],
        max_tokens=60,
        temperature=0.8,
        seed=3,
        extra_body={"response_format": {"type": "json_object"}},
    )
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].text), dict)
    else:
        assert out.choices[0].text.startswith("{")
    before = prompt_tokens_seen(server)
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": name(server), "messages": [{"role": "user", "content": "x"}], "response_format": bad},
    )
    assert response.status_code == 400 and "json_schema" in response.json()["error"]["message"]
    assert prompt_tokens_seen(server) == before


def test_tool_call_round_trip(server):
    example = _example()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=WAIT)
    result = example.run(client, max_tokens=40)
    fn, arguments = result["call"]
    assert fn == "get_weather" and isinstance(arguments.get("city"), str)
    pytest.importorskip("jsonschema").validate(result["json"], example.CITY_SCHEMA)
    assert result["final"].choices[0].message.role == "assistant"
    # Naming the function forces it too; streamed, the call arrives as one tool_calls delta.
    tool = example.WEATHER_TOOL
    chunks = list(
        client.chat.completions.create(
            model=name(server),
            messages=[{"role": "user", "content": "weather?"}],
            tools=[tool],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=100,
            stream=True,
        )
    )
    calls = [call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather"]
    assert "city" in json.loads(calls[0].function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_replies_parse_only_wellformed_calls():
    from gemma_keras.serving.tools import Tool, parse_reply

    tools = [Tool("get_weather", "", {"type": "object"})]
    block = '```tool_call\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```'
    content, calls = parse_reply("Let me check.\n" + block, tools, forced=False)
    assert content == "Let me check." and json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    for text in ("no call here", block.replace("get_weather", "rm_rf"), block.replace('{"city"', "{city")):
        assert parse_reply(text, tools, forced=False) == (text, [])


def test_bad_tools_get_400(server):
    cases = [
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "function.name"),
        ({"tools": "x"}, "'tools' must be a list"),
        ({"tool_choice": "required"}, "needs 'tools'"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "not in 'tools'",
        ),
    ]
    for extra, message in cases:
        body = {"model": name(server), "messages": [{"role": "user", "content": "x"}], **extra}
        response = httpx.post(server.url + "/v1/chat/completions", json=body)
        assert response.status_code == 400 and message in response.json()["error"]["message"], extra


def _example():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "serve_client.py"
    spec = importlib.util.spec_from_file_location("serve_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_failed_load_stops_the_server_and_raises():
    import gemma_keras as gk

    def load():
        raise gk.ModelNotFoundError("no such model: nowhere.gguf")

    with pytest.raises(gk.ModelNotFoundError, match="nowhere.gguf"):
        Server(load, port=0).run()

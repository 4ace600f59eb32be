"""Talk to `gemma-keras serve` with the official `openai` client.

Start a server in another terminal (any backend; the embedded Gemma 3 270M
by default):

    gemma-keras serve --backend jax --port 8000

then:

    python examples/serve_client.py --url http://127.0.0.1:8000/v1

or let the example start one in this process on a free port:

    python examples/serve_client.py --start path/to/model.gguf

It streams a chat reply, asks for JSON that follows a schema (and checks it
parses), and runs one tool call round trip. Needs `pip install -e '.[serve,structured]' openai`.
The embedded model is pretrained, not instruction-tuned: its chat replies
ramble, but the JSON and the tool call are constrained, so they parse.
"""

from __future__ import annotations

import argparse
import json

from openai import OpenAI

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "country": {"type": "string", "maxLength": 12},
    },
    "required": ["city", "country"],
    "additionalProperties": False,
}


def run(client: OpenAI, max_tokens: int = 48) -> dict:
    """The three exchanges; returns what each produced."""
    model = client.models.list().data[0].id
    print(f"model: {model}")

    print("chat (streamed): ", end="", flush=True)
    pieces = []
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name a city in France."}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            print(pieces[-1], end="", flush=True)
    print()

    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Which city is the capital of France? Answer in JSON."}],
        max_tokens=max_tokens * 2,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}},
    )
    data = json.loads(answer.choices[0].message.content)
    print(f"json: {data}")

    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=max_tokens * 2,
    )
    call = first.choices[0].message.tool_calls[0]
    arguments = json.loads(call.function.arguments)
    print(f"tool call: {call.function.name}({arguments})")
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "sunny", "celsius": 21})},
    ]
    final = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0
    )
    print(f"after the tool: {final.choices[0].message.content}")
    return {"chat": "".join(pieces), "json": data, "call": (call.function.name, arguments), "final": final}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1", help="the server's /v1 address")
    parser.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
    parser.add_argument(
        "--start", metavar="MODEL", nargs="?", const="", default=None, help="start a server here"
    )
    args = parser.parse_args()
    if args.start is None:
        run(OpenAI(base_url=args.url, api_key=args.api_key))
        return
    import gemma_keras as gk
    from gemma_keras.serving.server import Server

    server = Server(gk.load(args.start or None), port=0).start()
    try:
        run(OpenAI(base_url=server.url + "/v1", api_key="none"))
    finally:
        server.stop()


if __name__ == "__main__":
    main()

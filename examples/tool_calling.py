#!/usr/bin/env python3
"""Function calling with the official `openai` Python client: a weather tool
with `tool_choice: "required"` and with a named function, whole and streamed,
three sampled choices at once (`n`), then a second turn carrying the tool's
result.

Start the server first (`make serve`), then:

    .cache/python/bin/python examples/tool_calling.py

Works the same through the gateway (INFERENCE_BASE_URL=http://127.0.0.1:10000/v1
and OPENAI_API_KEY=<your key>). `required` and a named function are enforced
by the grammar engine, so even a 135M model always answers with a call whose
arguments validate against the function's schema (checked here with
`jsonschema`); it exits non-zero otherwise.

Environment: INFERENCE_BASE_URL (default http://127.0.0.1:8000/v1), OPENAI_API_KEY,
INFERENCE_MODEL (default: the server's first model; through the gateway name a
local one, e.g. smollm2-135m-instruct: an external model may refuse tools and
response formats).
"""

import json
import os
import sys

try:
    import jsonschema
    from openai import OpenAI
except ImportError:
    sys.exit("this example needs the openai client and jsonschema: scripts/python-env.sh")

BASE_URL = os.environ.get("INFERENCE_BASE_URL", "http://127.0.0.1:8000/v1")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z]+$"}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city.",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone.",
                                      "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def check(calls, allowed):
    assert calls, "no tool calls"
    for call in calls:
        assert call.type == "function" and call.id, call
        assert call.function.name in allowed, call.function.name
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def main() -> None:
    client = OpenAI(base_url=BASE_URL, api_key=os.environ.get("OPENAI_API_KEY", "unused"),
                    timeout=120.0, max_retries=0)
    model = os.environ.get("INFERENCE_MODEL") or client.models.list().data[0].id
    print("model:", model)

    # required: one call or more (parallel_tool_calls defaults to true), of
    # either tool.
    reply = client.chat.completions.create(model=model, messages=QUESTION, tools=TOOLS,
                                           tool_choice="required", temperature=0, max_tokens=128)
    choice = reply.choices[0]
    check(choice.message.tool_calls, SCHEMAS)
    print("required:", choice.finish_reason, [(c.function.name, c.function.arguments)
                                              for c in choice.message.tool_calls])

    # A named function, sampled: still that function, valid arguments.
    for seed in range(3):
        reply = client.chat.completions.create(
            model=model, messages=QUESTION, tools=TOOLS, temperature=1.0, seed=seed, max_tokens=128,
            tool_choice={"type": "function", "function": {"name": "get_time"}})
        check(reply.choices[0].message.tool_calls, {"get_time"})
    print("named:", reply.choices[0].finish_reason, reply.choices[0].message.tool_calls[0].function.name)

    # Three sampled choices at once (n), each forced to one call (without
    # parallel_tool_calls=False a sampled small model may go on calling until
    # max_tokens, finish_reason "length"): every call valid, every id unique.
    reply = client.chat.completions.create(model=model, messages=QUESTION, tools=TOOLS, n=3,
                                           tool_choice="required", parallel_tool_calls=False,
                                           temperature=1.0, seed=5, max_tokens=128)
    ids = []
    for choice in reply.choices:
        check(choice.message.tool_calls, SCHEMAS)
        assert choice.finish_reason == "tool_calls", choice
        ids += [c.id for c in choice.message.tool_calls]
    print("n=3:", sorted(c.index for c in reply.choices), "ids unique:", len(set(ids)) == len(ids))

    # Streamed: a call's first delta carries its index, id and name, the
    # next ones fragments of its arguments as the model writes them; the
    # client puts them together by index.
    calls = {}
    finish = None
    for chunk in client.chat.completions.create(model=model, messages=QUESTION, tools=TOOLS,
                                                tool_choice="required", temperature=0, max_tokens=128,
                                                stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for d in delta.tool_calls or []:
            call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": "", "fragments": 0})
            call["id"] = d.id or call["id"]
            call["name"] += (d.function.name or "") if d.function else ""
            fragment = (d.function.arguments or "") if d.function else ""
            call["arguments"] += fragment
            call["fragments"] += bool(fragment)
        finish = chunk.choices[0].finish_reason or finish
    assert calls and finish == "tool_calls", (calls, finish)
    for call in calls.values():
        assert call["id"] and call["name"] in SCHEMAS, call
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
    print("streamed:", finish, [(c["name"], c["arguments"]) for c in calls.values()])
    print("streamed argument fragments:", calls[0]["fragments"])

    # The second turn: the assistant's call and the tool's result go back;
    # tool_choice "none" asks for a text answer.
    first = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=128,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}).choices[0].message
    messages = QUESTION + [
        {"role": "assistant", "content": None,
         "tool_calls": [c.model_dump() for c in first.tool_calls]},
        {"role": "tool", "tool_call_id": first.tool_calls[0].id,
         "content": json.dumps({"temperature": 18, "sky": "sunny"})},
    ]
    answer = client.chat.completions.create(model=model, messages=messages, tools=TOOLS,
                                            tool_choice="none", temperature=0, max_tokens=48)
    text = answer.choices[0].message.content
    assert text and not answer.choices[0].message.tool_calls, answer
    print("second turn:", answer.choices[0].finish_reason, text.replace("\n", " ")[:80])

    # auto: the model decides; whatever it does comes back well-formed.
    auto = client.chat.completions.create(model=model, messages=QUESTION, tools=TOOLS,
                                          temperature=0, max_tokens=96).choices[0]
    if auto.message.tool_calls:
        check(auto.message.tool_calls, SCHEMAS)
        assert auto.finish_reason == "tool_calls"
    print("auto:", auto.finish_reason)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The Responses API (`/v1/responses`) with the official `openai` Python client,
unchanged, against the inference server: a greedy answer, the same streamed
through the client's own event accumulator (which checks every event against
the items it has seen), an answer the budget cut, a forced function call and
the second turn carrying its output, a streamed call, a structured answer
parsed into a pydantic model, and what a server that stores nothing refuses.

Start the server first (`make serve`), then:

    .cache/python/bin/python examples/responses_client.py

(`make test` builds that environment from examples/requirements.txt.)

Environment: INFERENCE_BASE_URL (default http://127.0.0.1:8000/v1).
"""

import json
import os
import sys

try:
    import jsonschema
    import openai
    from openai import OpenAI
    from pydantic import BaseModel
except ImportError:
    sys.exit("this example needs the openai client and jsonschema: scripts/python-env.sh")

BASE_URL = os.environ.get("INFERENCE_BASE_URL", "http://127.0.0.1:8000/v1")

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Current weather for a city.",
     "parameters": WEATHER, "strict": True},
]
QUESTION = "What is the capital of France? Answer in one word."


class City(BaseModel):
    name: str
    country: str


def main() -> None:
    # The server needs no key; the client insists on one, any value will do.
    client = OpenAI(base_url=BASE_URL, api_key="unused", timeout=60.0, max_retries=0)
    model = client.models.list().data[0].id

    whole = client.responses.create(
        model=model, instructions="You are a geography teacher.", input=QUESTION,
        temperature=0, max_output_tokens=16,
    )
    print("status:", whole.status, "id:", whole.id.startswith("resp_"))
    print("answer:", whole.output_text)
    print("usage:", whole.usage.input_tokens, whole.usage.output_tokens,
          whole.usage.total_tokens == whole.usage.input_tokens + whole.usage.output_tokens)

    # The client's accumulator raises on an event out of place (a delta
    # before its item, an item finished under another id, a response that
    # completes with items unfinished).
    deltas, kinds = [], []
    with client.responses.stream(
        model=model, instructions="You are a geography teacher.", input=QUESTION,
        temperature=0, max_output_tokens=16,
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    print("streamed first/last:", kinds[0], kinds[-1])
    print("streamed text is the whole one:", "".join(deltas) == whole.output_text == final.output_text)
    print("streamed usage is the whole one:", final.usage.output_tokens == whole.usage.output_tokens)

    cut = client.responses.create(model=model, input="Write a long story about a dragon.",
                                  temperature=0, max_output_tokens=3)
    print("cut:", cut.status, cut.incomplete_details.reason, cut.usage.output_tokens)

    called = client.responses.create(
        model=model, input="What is the weather like in Paris today?", tools=TOOLS,
        tool_choice="required", temperature=0, max_output_tokens=128,
    )
    calls = [item for item in called.output if item.type == "function_call"]
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), WEATHER)
    print("required:", called.status, [(c.name, c.call_id.startswith("call_")) for c in calls])

    second = client.responses.create(
        model=model, tools=TOOLS, temperature=0, max_output_tokens=40,
        input=[{"role": "user", "content": "What is the weather like in Paris today?"}]
        + [c.model_dump(exclude_none=True) for c in calls]
        + [{"type": "function_call_output", "call_id": c.call_id, "output": "18 C and sunny"} for c in calls],
        tool_choice="none",
    )
    print("second turn:", second.status, bool(second.output_text.strip()))

    fragments = 0
    with client.responses.stream(
        model=model, input="What is the weather like in Paris today?", tools=TOOLS,
        tool_choice={"type": "function", "name": "get_weather"}, temperature=0, max_output_tokens=60,
    ) as stream:
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                fragments += 1
        streamed_call = [i for i in stream.get_final_response().output if i.type == "function_call"][0]
    jsonschema.validate(json.loads(streamed_call.arguments), WEATHER)
    print("streamed call:", streamed_call.name, "argument fragments:", fragments)

    parsed = client.responses.parse(model=model, input="Which city is the capital of France?",
                                    text_format=City, temperature=0, max_output_tokens=60)
    print("parsed:", type(parsed.output_parsed).__name__, parsed.status)

    try:
        client.responses.create(model=model, input="Go on.", previous_response_id=whole.id)
        print("previous_response_id accepted")
    except openai.BadRequestError as e:
        print("previous_response_id refused:", e.status_code, e.body.get("param"), e.body.get("code"))


if __name__ == "__main__":
    main()

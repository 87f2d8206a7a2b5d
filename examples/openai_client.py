#!/usr/bin/env python3
"""The official `openai` Python client against the MaaS gateway.

Start the gateway first (`make run`), then:

    scripts/python-env.sh        # .cache/python: the pinned client, with hashes
    .cache/python/bin/python examples/openai_client.py

Nothing here is gateway-specific: the client only gets another base URL and
an API key from the gateway's configuration. It lists the models the key's
subscription may use, asks for one chat completion, then streams one and
prints the usage the gateway accounted for.

Environment: MAAS_BASE_URL (default http://127.0.0.1:10000/v1), MAAS_API_KEY
(default: the demo key `make run` minted, kept in .cache/control-plane/demo-key;
else the README's static demo key of the `free` subscription), MAAS_MODEL
(default: the embedded local model when the key may use it, else the first).
"""

import os
import sys

try:
    from openai import OpenAI
except ImportError:
    sys.exit(
        "this example needs the official OpenAI client: run scripts/python-env.sh, "
        "then .cache/python/bin/python examples/openai_client.py"
    )

BASE_URL = os.environ.get("MAAS_BASE_URL", "http://127.0.0.1:10000/v1")
def default_key() -> str:
    demo = os.path.join(os.path.dirname(__file__), "..", ".cache", "control-plane", "demo-key")
    try:
        with open(demo, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "sk-maas-demo-free-7f3c9a1e5b2d"


API_KEY = os.environ.get("MAAS_API_KEY") or default_key()


def main() -> None:
    # Bounded: a local gateway answers in milliseconds; do not retry a 429.
    client = OpenAI(base_url=BASE_URL, api_key=API_KEY, timeout=30.0, max_retries=0)

    # GET /v1/models: answered by the gateway itself, never counted against a limit.
    models = [model.id for model in client.models.list()]
    print("models:", ", ".join(models))
    local = "smollm2-135m-instruct"
    model = os.environ.get("MAAS_MODEL") or (local if local in models else models[0])

    # One completion; the gateway clamps max_tokens to the subscription's cap.
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello in five words."}],
        max_tokens=16,
    )
    print("reply:", reply.choices[0].message.content)
    print("usage:", reply.usage.model_dump() if reply.usage else None)

    # A streamed completion. Asking for usage in the stream gets one extra
    # chunk at the end, with empty `choices`, carrying the token counts.
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    print("stream: ", end="", flush=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage:
            usage = chunk.usage
    print()
    print("stream usage:", usage.model_dump() if usage else None)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The official `openai` Python client, unchanged, against the inference server.

Start the server first (`make serve`, or `target/serve/inference-server`), then:

    .cache/python/bin/python examples/inference_client.py

(`make test` builds that environment from examples/requirements.txt.) The
script lists the models, asks a question greedily, streams a reply with usage,
shows that a seed makes sampling reproducible, asks for three choices at once
(`n`), and shows that an unsupported parameter comes back as a clean 400.

Environment: INFERENCE_BASE_URL (default http://127.0.0.1:8000/v1).
"""

import os
import sys

try:
    import openai
    from openai import OpenAI
except ImportError:
    sys.exit("this example needs the official OpenAI client: scripts/python-env.sh")

BASE_URL = os.environ.get("INFERENCE_BASE_URL", "http://127.0.0.1:8000/v1")


def main() -> None:
    # The server needs no key; the client insists on one, any value will do.
    client = OpenAI(base_url=BASE_URL, api_key="unused", timeout=60.0, max_retries=0)

    model = client.models.list().data[0].id
    print("model:", model)

    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        temperature=0,
        max_tokens=16,
    )
    print("answer:", reply.choices[0].message.content)
    print("finish:", reply.choices[0].finish_reason)
    print("usage:", reply.usage.model_dump())

    pieces = []
    usage = None
    for chunk in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name three colors."}],
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    print("stream:", "".join(pieces).replace("\n", " "))
    print("stream usage:", usage.model_dump() if usage else None)

    def sample(seed: int, n: int = 1):
        return client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=16, temperature=1.0, seed=seed, n=n
        )

    print("seeded twice, same text:", sample(7).choices[0].text == sample(7).choices[0].text)

    # n choices share one prefill; choice i samples with seed + i.
    three = sample(7, n=3)
    texts = [c.text for c in sorted(three.choices, key=lambda c: c.index)]
    alone = [sample(7 + i) for i in range(3)]
    print("n=3 indices:", sorted(c.index for c in three.choices))
    print("n=3 choice i is seed 7+i:", texts == [a.choices[0].text for a in alone])
    print("n=3 texts differ:", len(set(texts)) > 1)
    print(
        "n=3 usage is all choices':",
        three.usage.prompt_tokens == alone[0].usage.prompt_tokens
        and three.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone),
    )

    # logit_bias takes token ids; +100 makes one token win every step.
    forced = [
        client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=n, temperature=0,
            logit_bias={"1000": 100}, frequency_penalty=0.5, presence_penalty=0.5,
        ).choices[0].text
        for n in (1, 3)
    ]
    print("logit_bias forces one token:", forced[1] == forced[0] * 3)

    scored = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=4, temperature=0, logprobs=True, top_logprobs=2,
    ).choices[0]
    entries = scored.logprobs.content
    print(
        "logprobs spell the answer:",
        "".join(e.token for e in entries) == scored.message.content
        and all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries),
    )

    try:
        client.completions.create(model=model, prompt="hi", best_of=2)
        print("best_of=2: accepted (unexpected)")
    except openai.BadRequestError as e:
        print("best_of=2 refused:", e.status_code, e.body.get("param") if isinstance(e.body, dict) else e.body)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Structured outputs with the official `openai` Python client: `response_format`
`json_schema` (strict) over two dozen schemas and `json_object`, whole and
streamed, every answer checked with a JSON-schema validator.

Start the server first (`make serve`), then:

    .cache/python/bin/python examples/structured_outputs.py

Works the same through the gateway (INFERENCE_BASE_URL=http://127.0.0.1:10000/v1
and OPENAI_API_KEY=<your key>). The inference server constrains every token to
the schema (llguidance over the model's own vocabulary), so even a 135M model
answers with JSON that validates; it exits non-zero on the first that does not.

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
    import openai
    from openai import OpenAI
except ImportError:
    sys.exit("this example needs the openai client and jsonschema: scripts/python-env.sh")

BASE_URL = os.environ.get("INFERENCE_BASE_URL", "http://127.0.0.1:8000/v1")

NAME = {"type": "string", "minLength": 1, "maxLength": 24}

# (name, prompt, schema): nested objects, arrays, enums, required fields,
# number bounds, string patterns, formats, unions and references.
SCHEMAS = [
    ("person", "Describe a person.", {
        "type": "object",
        "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False}),
    ("weather", "What is the weather in Paris?", {
        "type": "object",
        "properties": {"city": NAME, "unit": {"enum": ["celsius", "fahrenheit"]},
                       "temperature": {"type": "integer", "minimum": -60, "maximum": 60}},
        "required": ["city", "unit", "temperature"], "additionalProperties": False}),
    ("colors", "List three colours.", {
        "type": "array", "items": {"enum": ["red", "green", "blue", "yellow", "black"]},
        "minItems": 3, "maxItems": 3}),
    ("boolean_answer", "Is the sky blue?", {
        "type": "object", "properties": {"answer": {"type": "boolean"}},
        "required": ["answer"], "additionalProperties": False}),
    ("nested_address", "Give an address.", {
        "type": "object",
        "properties": {
            "name": NAME,
            "address": {"type": "object",
                        "properties": {"street": NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                        "required": ["street", "zip"], "additionalProperties": False}},
        "required": ["name", "address"], "additionalProperties": False}),
    ("zip_pattern", "A US zip code.", {"type": "string", "pattern": "^[0-9]{5}(-[0-9]{4})?$"}),
    ("iso_date", "Today's date.", {"type": "string", "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"}),
    ("rating", "Rate a film from 1 to 5.", {
        "type": "object", "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5},
                                         "title": NAME},
        "required": ["stars", "title"], "additionalProperties": False}),
    ("price", "Price a coffee.", {
        "type": "object",
        "properties": {"item": NAME, "price": {"type": "number", "minimum": 0, "maximum": 100},
                       "currency": {"const": "EUR"}},
        "required": ["item", "price", "currency"], "additionalProperties": False}),
    ("tags", "Tag a blog post about Rust.", {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{2,10}$"},
                                "minItems": 1, "maxItems": 4}},
        "required": ["tags"], "additionalProperties": False}),
    ("matrix", "A 2x2 matrix of small numbers.", {
        "type": "array", "minItems": 2, "maxItems": 2,
        "items": {"type": "array", "minItems": 2, "maxItems": 2,
                  "items": {"type": "integer", "minimum": -9, "maximum": 9}}}),
    ("one_of_shape", "Describe a shape.", {
        "anyOf": [
            {"type": "object", "properties": {"kind": {"const": "circle"},
                                              "radius": {"type": "integer", "minimum": 1, "maximum": 99}},
             "required": ["kind", "radius"], "additionalProperties": False},
            {"type": "object", "properties": {"kind": {"const": "square"},
                                              "side": {"type": "integer", "minimum": 1, "maximum": 99}},
             "required": ["kind", "side"], "additionalProperties": False}]}),
    ("nullable", "Name a middle name, if any.", {
        "type": "object", "properties": {"middle": {"type": ["string", "null"], "maxLength": 16}},
        "required": ["middle"], "additionalProperties": False}),
    ("enum_ints", "Pick a prime below 10.", {"enum": [2, 3, 5, 7]}),
    ("steps", "Give two steps to make tea.", {
        "type": "object",
        "properties": {"steps": {"type": "array", "minItems": 2, "maxItems": 2,
                                 "items": {"type": "object",
                                           "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 2},
                                                          "text": NAME},
                                           "required": ["n", "text"], "additionalProperties": False}}},
        "required": ["steps"], "additionalProperties": False}),
    ("refs", "Two points.", {
        "$defs": {"point": {"type": "object",
                            "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "y": {"type": "integer", "minimum": 0, "maximum": 99}},
                            "required": ["x", "y"], "additionalProperties": False}},
        "type": "object", "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
        "required": ["a", "b"], "additionalProperties": False}),
    ("email", "An email address.", {
        "type": "object", "properties": {"email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$"}},
        "required": ["email"], "additionalProperties": False}),
    ("optional_fields", "A book, with a subtitle if it has one.", {
        "type": "object",
        "properties": {"title": NAME, "subtitle": NAME, "year": {"type": "integer", "minimum": 1450, "maximum": 2026}},
        "required": ["title", "year"], "additionalProperties": False}),
    ("exclusive_bounds", "A probability strictly between 0 and 1.", {
        "type": "object", "properties": {"p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
        "required": ["p"], "additionalProperties": False}),
    ("hex_color", "A colour as hex.", {"type": "string", "pattern": "^#[0-9a-f]{6}$"}),
    ("inventory", "Stock of two fruits.", {
        "type": "object",
        "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3,
                                 "items": {"type": "object",
                                           "properties": {"fruit": {"enum": ["apple", "pear", "plum"]},
                                                          "count": {"type": "integer", "minimum": 0, "maximum": 500}},
                                           "required": ["fruit", "count"], "additionalProperties": False}},
                       "total": {"type": "integer", "minimum": 0, "maximum": 1500}},
        "required": ["items", "total"], "additionalProperties": False}),
    ("yes_no_reason", "Should I learn Rust? Answer and say why briefly.", {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}, "reason": {"type": "string", "maxLength": 40}},
        "required": ["answer", "reason"], "additionalProperties": False}),
    ("deep", "Nested settings.", {
        "type": "object",
        "properties": {"a": {"type": "object",
                             "properties": {"b": {"type": "object",
                                                  "properties": {"c": {"type": "boolean"}},
                                                  "required": ["c"], "additionalProperties": False}},
                             "required": ["b"], "additionalProperties": False}},
        "required": ["a"], "additionalProperties": False}),
]

MAX_TOKENS = 200


def main() -> None:
    client = OpenAI(base_url=BASE_URL, api_key=os.environ.get("OPENAI_API_KEY", "unused"),
                    timeout=120.0, max_retries=0)
    model = os.environ.get("INFERENCE_MODEL") or client.models.list().data[0].id
    print("model:", model)

    failures = 0
    tokens = 0
    for i, (name, prompt, schema) in enumerate(SCHEMAS):
        # Half greedy, half sampled with a seed: the constraint must hold
        # whichever token the sampler would have preferred.
        sampling = {"temperature": 0} if i % 2 == 0 else {"temperature": 1.0, "seed": i}
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt + " Answer in JSON."}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": name, "schema": schema, "strict": True}},
            max_tokens=MAX_TOKENS,
            **sampling,
        )
        text = reply.choices[0].message.content
        tokens += reply.usage.completion_tokens
        try:
            jsonschema.validate(json.loads(text), schema)
            print(f"schema {name}: valid ({reply.choices[0].finish_reason}) {text}")
        except (json.JSONDecodeError, jsonschema.ValidationError) as e:
            failures += 1
            print(f"schema {name}: INVALID ({reply.choices[0].finish_reason}) {text!r}: {e}")
    print(f"schemas valid: {len(SCHEMAS) - failures} of {len(SCHEMAS)}")
    print("completion tokens:", tokens)

    # Streamed: the deltas join into a valid document.
    name, prompt, schema = SCHEMAS[1]
    pieces, usage = [], None
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}],
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema}},
        max_tokens=MAX_TOKENS, temperature=0, stream=True, stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    streamed = "".join(pieces)
    jsonschema.validate(json.loads(streamed), schema)
    print("streamed valid:", True, streamed, "usage", usage.completion_tokens if usage else None)

    # json_object: any object. The prompt names the fields: asked only to
    # "describe a cat", the small model's greedy object repeats keys until
    # max_tokens cuts it, and where it stops moves with the kernels' rounding.
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Describe a cat in JSON with its name and age."}],
        response_format={"type": "json_object"}, max_tokens=MAX_TOKENS, temperature=0,
    )
    obj = json.loads(reply.choices[0].message.content)
    print("json_object is an object:", isinstance(obj, dict), reply.choices[0].finish_reason)

    # A schema the grammar engine cannot enforce: 400, naming the schema.
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "bad", "schema": {"type": "strng"}}},
            max_tokens=8,
        )
        print("bad schema accepted")
    except openai.BadRequestError as e:
        print("bad schema refused:", e.status_code, e.body.get("param") if isinstance(e.body, dict) else e.body)

    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()

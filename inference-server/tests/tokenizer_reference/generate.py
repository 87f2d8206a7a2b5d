"""Reference data for the tokenizer and chat-template tests, from Hugging Face
transformers.

`tokens`: transformers builds its fast tokenizer straight from a GGUF file's
metadata (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`), the same
metadata the server reads, so its ids are the ones ours must equal.

`chat-templates`: `apply_chat_template` renders each family's template text
(`tests/chat_template_reference/*.jinja`) for a fixed set of conversations.

Run with the pinned environment (`scripts/python-env.sh reference`) and check
in the JSON written:

    py=.cache/python-reference/bin/python
    gen=inference-server/tests/tokenizer_reference/generate.py
    $py $gen tokens .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf inference-server/tests/tokenizer_reference/smollm2.json
    $py $gen tokens .cache/models/gemma-3-270m-q4_k_m.gguf inference-server/tests/tokenizer_reference/gemma3.json
    $py $gen tokens-as-llama .cache/models/gemma-3-270m-q4_k_m.gguf inference-server/tests/tokenizer_reference/gemma3_vocab_as_llama.json
    $py $gen chat-templates .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        inference-server/tests/chat_template_reference inference-server/tests/chat_template_reference/renderings.json
"""

import json
import os
import sys
from unittest import mock

import gguf
import jinja2
import tokenizers
from tokenizers import pre_tokenizers
import transformers
from transformers import AutoTokenizer

# The same strings for every model: whitespace runs at both ends, every C0
# control, DEL, scripts and symbols the vocabularies lack (byte fallback),
# code, and special-token text.
CONTROLS = "".join(chr(c) for c in range(0x20)) + "\x7f"
TEXTS = [
    "",
    " ",
    "  ",
    "   ",
    "Hello",
    " Hello",
    "Hello ",
    "  two leading spaces",
    "two trailing spaces  ",
    "multiple   spaces    inside     text",
    "\n",
    "\n\n",
    "\n\n\n\n",
    "line one\nline two\n\nline four\n",
    " \n \n",
    "\t",
    "tabs\tseparated\t\tvalues\t",
    "windows\r\nline endings\r\n",
    CONTROLS,
    "a\x00b\x01c\x1fd\x7fe",
    "\x00",
    "\x1b[31mred\x1b[0m",
    "Hello, how are you?",
    "The quick brown fox jumps over the lazy dog.",
    "Crème brûlée à la française, s'il vous plaît",
    "e\u0301 vs \u00e9, \u00c5ngstr\u00f6m, na\u00efve",
    "東京は日本の首都です。你好，世界",
    "한국어 텍스트, العربية, हिन्दी, ไทย",
    "🎉🚀 emoji 👨\u200d👩\u200d👧 family 🏳️\u200d🌈",
    "\U0001f9ff\U0001fa90 \ue000\uf8ff \U000f0000 \ufffd \u200b\u2060 \U0001d518\U0001d52b",
    "12345 3.14159 1,000,000 -42 0x1F",
    "fn main() {\n    println!(\"{}\", x);\n}\n",
    "def f(x):\n\treturn x ** 2  # comment\n",
    "<html><body><div class=\"a\">&amp;</div></body></html>",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos><pad><unk><s></s>[INST] hi [/INST]",
    "<think>reasoning</think> answer",
    "   mixed \t whitespace \n\t at both ends \t\n ",
    # Digits right after whitespace, where SmolLM2's digit split matters.
    "The basic logic is this:\n\n1. The tuple\n\n2. Then",
    "```\n        0 0 1 1\n```",
]

# transformers' GGUF converter has no split for `smollm` and falls back to
# GPT-2's regex over the whole text. SmolLM2's published tokenizer.json, and
# llama.cpp's `smollm` pre-tokenizer, isolate every digit first, which differs
# where a digit follows whitespace ("is:\n\n1." is `\n\n` `1` there, `\n` `\n`
# `1` in the converter's). The reference is the model's own tokenizer, so the
# converter's pre-tokenizer is replaced by the published one for those files.
PUBLISHED_PRE_TOKENIZERS = {
    "smollm": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    ),
}


# Each family's own special tokens; the templates read them as variables.
FAMILIES = {
    "gemma3": {"bos_token": "<bos>", "eos_token": "<eos>"},
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "qwen2.5": {"bos_token": None, "eos_token": "<|im_end|>"},
    "qwen3": {"bos_token": None, "eos_token": "<|im_end|>"},
    "mistral": {"bos_token": "<s>", "eos_token": "</s>"},
}

SYSTEM = {"role": "system", "content": "You are terse. Answer in one line."}
CONVERSATIONS = {
    "system_and_user": [SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
    "multi_turn_with_system": [
        SYSTEM,
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. What do you need?"},
        {"role": "user", "content": "  Two plus two?\n"},
    ],
    "multi_turn_without_system": [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another, with 🎨 and\ttabs."},
    ],
    "thinking_then_answer": [
        {"role": "user", "content": "Is 7 prime?"},
        {"role": "assistant", "content": "<think>\nIt has no divisors but 1 and 7.\n</think>\n\nYes."},
    ],
    "assistant_first": [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "No."}],
}


def load_tokenizer(gguf_path):
    # transformers' GGUF reader imports torch for tensor dtypes and guards the
    # metadata path with is_torch_available(); reading the tokenizer never
    # touches a tensor, so a stand-in module replaces a 1 GB install.
    sys.modules["torch"] = mock.MagicMock(name="torch")
    sys.modules["torch.nn"] = sys.modules["torch"].nn
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    gguf_utils.is_torch_available = lambda: True
    directory, name = os.path.split(os.path.abspath(gguf_path))
    return name, AutoTokenizer.from_pretrained(directory, gguf_file=name)


def tokens_as_llama(gguf_path, out_path):
    """The file's SentencePiece vocabulary through transformers' Llama builder
    (score-ranked merges, a `▁` prefix, one leading space stripped on decode)
    instead of its Gemma one: the path Llama 2 and Mistral files take, on a
    real 262k vocabulary. Called the way `AutoTokenizer` calls it, with the
    architecture the file would name; BOS is added as such a file asks."""
    load_tokenizer(gguf_path)  # installs the torch stand-in
    from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

    _, tokenizer_dict, _ = get_gguf_tokenizer(gguf_path)
    backend, _ = convert_gguf_tokenizer("llama", tokenizer_dict)
    bos = tokenizer_dict["bos_token_id"]
    # The builder alone names Llama's `<s>`/`</s>` special, which are plain
    # text in this vocabulary; the file's control tokens are what a decode of
    # such a file skips (AutoTokenizer names them from the file), so they are
    # left out here and the builder's decoder runs on the rest.
    types = gguf.GGUFReader(gguf_path).fields["tokenizer.ggml.token_type"].contents()
    control = {i for i, t in enumerate(types) if t == 3}
    cases = []
    for text in TEXTS:
        ids = [bos] + backend.encode(text, add_special_tokens=False).ids
        shown = [i for i in ids if i not in control]
        cases.append({"text": text, "ids": ids, "decoded": backend.decode(shown, skip_special_tokens=False)})
    write_json(
        out_path,
        {
            "model": os.path.basename(gguf_path),
            "generator": "inference-server/tests/tokenizer_reference/generate.py tokens-as-llama",
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "tokenizer_class": "convert_gguf_tokenizer('llama', ...)",
            "cases": cases,
        },
    )


def write_json(out_path, value):
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=True, indent=1)
        f.write("\n")


def chat_templates(gguf_path, template_dir, out_path):
    """Any tokenizer renders any template: the text and special tokens are passed in."""
    _, tok = load_tokenizer(gguf_path)
    cases = []
    for family, tokens in FAMILIES.items():
        with open(os.path.join(template_dir, f"{family}.jinja"), encoding="utf-8") as f:
            template = f.read()
        for name, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                case = {
                    "family": family,
                    "conversation": name,
                    "add_generation_prompt": add_generation_prompt,
                    **tokens,
                }
                try:
                    case["rendered"] = tok.apply_chat_template(
                        messages,
                        chat_template=template,
                        tokenize=False,
                        add_generation_prompt=add_generation_prompt,
                        **tokens,
                    )
                except jinja2.exceptions.TemplateError as err:
                    case["raises"] = str(err)
                cases.append(case)
    write_json(
        out_path,
        {
            "generator": "inference-server/tests/tokenizer_reference/generate.py chat-templates",
            "transformers": transformers.__version__,
            "jinja2": jinja2.__version__,
            "conversations": CONVERSATIONS,
            "cases": cases,
        },
    )


def tokens(gguf_path, out_path):
    name, tok = load_tokenizer(gguf_path)
    field = gguf.GGUFReader(gguf_path).fields.get("tokenizer.ggml.pre")
    pre = field.contents() if field is not None else None
    override = PUBLISHED_PRE_TOKENIZERS.get(pre)
    if override is not None:
        tok.backend_tokenizer.pre_tokenizer = override()
    cases = []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        cases.append(
            {
                "text": text,
                "ids": ids,
                "decoded": tok.decode(ids, skip_special_tokens=True),
            }
        )
    reference = {
        "model": name,
        "generator": "inference-server/tests/tokenizer_reference/generate.py",
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "tokenizer_class": type(tok).__name__,
        "pre_tokenizer_replaced": None if override is None else f"{pre}: the published one, see generate.py",
        "cases": cases,
    }
    write_json(out_path, reference)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"tokens": tokens, "tokens-as-llama": tokens_as_llama, "chat-templates": chat_templates}[command](*args)

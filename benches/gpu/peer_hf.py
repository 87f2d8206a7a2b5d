#!/usr/bin/env python3
"""The peer on the same GPU: Hugging Face transformers (torch, bf16, plain
`generate`) on the same GGUF, dequantized at load (needs the `gguf` package).

  peer_hf.py --gguf /tmp/maas/model.gguf --streams "1 8 32 64 128" --max-tokens 256 \
             --deadline 100 --md results.md

Each round is one batched `generate` of N prompts (left-padded; the same
prompts bench.py sends: one topic per stream), exactly --max-tokens new
tokens each (min_new_tokens = max_new_tokens: the peer's ignore_eos), greedy.
Measured per round:
  TTFT         a separate generate of 1 new token on the same batch: prefill
               plus the first token, which every stream of a static batch gets
               at the same moment (so p50 = p99)
  aggregate    all new tokens / wall of the full generate (prefill included)
  decode       (max_tokens - 1) x N / (wall - TTFT): the steady state, the
               counterpart of the server's steady decode
  GPU util     nvidia-smi every 200 ms during the full generate (bench.GpuSampler)
Appends a markdown table to --md; progress on stdout. Stops starting rounds
once the next one would not fit in --deadline.
"""
import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import GpuSampler, fmt_gpu, prompt  # noqa: E402  (stdlib-only sibling)

# GGUF tensor name (blk.N.<part>.weight) -> Hugging Face Llama parameter.
LLAMA_PARTS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def gguf_llama_numpy(path):
    """(config kwargs, {hf name: float32 numpy array}) of a llama-architecture GGUF,
    through gguf-py (numpy only, so it is checked on machines without torch).

    The fallback for a transformers whose own GGUF loader refuses the file
    (some releases dequantize only a few block types, Q4_1 not among them).
    llama.cpp's converter permutes the rows of Q and K for its rotary layout;
    they are permuted back to the Hugging Face layout (rotate_half)."""
    import gguf
    import numpy as np

    r = gguf.GGUFReader(path)

    def field(key, default=None):
        f = r.fields.get(key)
        return f.contents() if f is not None else default

    arch = field("general.architecture")
    if arch != "llama":
        raise ValueError(f"the fallback loader knows the llama architecture only, not {arch}")
    heads = field("llama.attention.head_count")
    kv_heads = field("llama.attention.head_count_kv", heads)
    names = {t.name for t in r.tensors}

    def unpermute(w, n):
        return w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    weights = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        else:
            m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", t.name)
            if not m or m.group(2) not in LLAMA_PARTS:
                raise ValueError(f"unexpected tensor {t.name}")
            name = f"model.layers.{m.group(1)}.{LLAMA_PARTS[m.group(2)]}.weight"
            if m.group(2) == "attn_q":
                w = unpermute(w, heads)
            elif m.group(2) == "attn_k":
                w = unpermute(w, kv_heads)
        weights[name] = np.ascontiguousarray(w, dtype=np.float32)
    config = dict(
        vocab_size=weights["model.embed_tokens.weight"].shape[0],
        hidden_size=field("llama.embedding_length"),
        intermediate_size=field("llama.feed_forward_length"),
        num_hidden_layers=field("llama.block_count"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=field("llama.context_length"),
        rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=field("tokenizer.ggml.bos_token_id"),
        eos_token_id=field("tokenizer.ggml.eos_token_id"),
        pad_token_id=field("tokenizer.ggml.padding_token_id"),
    )
    return config, weights


def load_fallback(path, torch, dtype):
    """A LlamaForCausalLM filled from gguf_llama_numpy."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config, weights = gguf_llama_numpy(path)
    theta = config.pop("rope_theta")
    cfg = LlamaConfig(**config, rope_theta=theta)
    if isinstance(getattr(cfg, "rope_parameters", None), dict):  # transformers 5 keeps it there
        cfg.rope_parameters["rope_theta"] = theta
    model = LlamaForCausalLM(cfg).to(dtype)
    state = {k: torch.from_numpy(v).to(dtype) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config["tie_word_embeddings"])]
    if missing or unexpected:
        raise ValueError(f"fallback loader: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config["tie_word_embeddings"]:
        model.tie_weights()
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--streams", default="1 8 32 64 128")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--deadline", type=float, default=100.0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--md", default="/dev/null")
    args = ap.parse_args()
    t_start = time.perf_counter()

    def left():
        return args.deadline - (time.perf_counter() - t_start)

    md = open(args.md, "a")
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        print(f"peer: no torch/transformers here ({e}); skipped", flush=True)
        md.write(f"\npeer skipped: {e}\n")
        return 2

    model_dir, name = os.path.split(os.path.abspath(args.gguf))
    dev = args.device
    if dev.startswith("cuda"):
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible to torch"
    else:
        gpu = "cpu"
    md.write(f"\ntransformers {transformers.__version__}, torch {torch.__version__}, {gpu}; "
             f"bf16, `generate` (greedy, min_new_tokens = max_new_tokens = {args.max_tokens}), "
             f"static batch of N left-padded prompts\n\n")
    md.flush()
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=name)
    except Exception as e:  # noqa: BLE001 - the timing does not need it: fixed ids then
        print(f"peer: tokenizer from the GGUF failed ({type(e).__name__}: {e}); fixed prompt ids", flush=True)
        tok = None
    loader = "transformers' GGUF loader"
    try:
        kw = {"gguf_file": name}
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, **kw)
        except TypeError:  # transformers before `dtype`
            model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16, **kw)
    except Exception as e:  # noqa: BLE001 - then the gguf-py fallback
        print(f"peer: transformers' GGUF loader failed ({type(e).__name__}: {str(e)[:300]}); "
              "dequantizing with gguf-py instead", flush=True)
        loader = f"gguf-py dequantization into LlamaForCausalLM (transformers' loader: {type(e).__name__})"
        try:
            model = load_fallback(args.gguf, torch, torch.bfloat16)
        except Exception as e2:  # noqa: BLE001 - report what broke, the run goes on
            print(f"peer: loading the GGUF failed: {type(e2).__name__}: {e2}", flush=True)
            md.write(f"peer: loading the GGUF failed: `{type(e).__name__}: {str(e)[:200]}`, "
                     f"then `{type(e2).__name__}: {str(e2)[:200]}`\n")
            return 1
    model = model.to(dev).eval()
    print(f"peer: loaded in {time.perf_counter() - t_start:.1f} s ({loader})", flush=True)
    md.write(f"Loaded by {loader} in {time.perf_counter() - t_start:.1f} s.\n\n")

    # Used only if the GGUF's tokenizer cannot be built: SmolLM2's chat
    # template around "Hello, how are you?" (36 tokens; decoded with the
    # file's vocabulary, and the server counts 36 prompt tokens for it).
    ids = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
           19712, 8182, 2, 198, 1, 4093, 198, 19556, 28, 638, 359, 346, 47, 2, 198, 1, 520, 9531, 198]
    if tok is not None:
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    pad = (tok.pad_token_id if tok is not None else None) or 2

    def batch(n, tag):
        if tok is None:
            t = torch.tensor([ids] * n, device=dev)
            return {"input_ids": t, "attention_mask": torch.ones_like(t)}
        texts = [tok.apply_chat_template([{"role": "user", "content": prompt(i, tag)}], tokenize=False,
                                         add_generation_prompt=True) for i in range(n)]
        return tok(texts, return_tensors="pt", padding=True).to(dev)

    def sync():
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    def gen(enc, new):
        sync()
        t = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=pad)
        sync()
        return time.perf_counter() - t, out.shape[1] - enc["input_ids"].shape[1]

    md.write("| device | streams | tokens | wall s | aggregate tok/s | decode tok/s | per-stream tok/s "
             "| TTFT (batch prefill + 1 token) ms | prompt tok | GPU util mean / max % | GPU mem max MiB |\n"
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    md.flush()
    with torch.inference_mode():
        # Warm-up, as the server gets: CUDA context, cuBLAS handles, kernels,
        # and the largest batch's one-off costs.
        gen(batch(1, "w"), 8)
        gen(batch(max(int(s) for s in args.streams.split()), "w"), 8)
        last = None  # (streams, wall) of the previous round, to forecast the next
        for n in [int(s) for s in args.streams.split()]:
            if last is not None and left() < 1.5 * last[1] * max(1.0, n / last[0]) ** 0.5 + 5:
                print(f"peer: x{n} skipped, {left():.0f} s left", flush=True)
                md.write(f"| hf | {n} | skipped (time budget) | | | | | | | | |\n")
                continue
            enc = batch(n, f"r{n}")
            ttft, _ = gen(enc, 1)
            sampler = GpuSampler(dev.startswith("cuda"))
            wall, new = gen(enc, args.max_tokens)
            util, mem = fmt_gpu(sampler.stop())
            total = new * n
            decode_s = wall - ttft
            line = (f"| hf | {n} | {total} | {wall:.2f} | {total / wall:.1f} | "
                    f"{(new - 1) * n / decode_s if decode_s > 0 else 0:.1f} | "
                    f"{(new - 1) / decode_s if decode_s > 0 else 0:.1f} | {ttft * 1000:.0f} | "
                    f"{enc['input_ids'].shape[1]} | {util} | {mem} |")
            md.write(line + "\n")
            md.flush()
            print("peer: " + line, flush=True)
            last = (n, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Streaming load against an already running inference server (stdlib only).

For each stream count N: N concurrent streamed chat completions (one thread
each, released together), --max-tokens tokens each with ignore_eos,
temperature 0, each with its own prompt. Measured as benches/src/inference.rs
measures:
  aggregate tok/s   = all completion tokens / round wall (first sent -> last done)
  steady decode     = content events arriving while every stream decodes
                      (after the last first token, before the first stream ends)
  per-stream tok/s  = (completion_tokens - 1) / (done - first token), mean and min
  TTFT p50/p99      = nearest rank over the round's requests
  GPU util / memory = nvidia-smi sampled every 200 ms during the round (--smi)
Appends one markdown row per round to --md and prints progress to stdout.
GpuSampler is also used by peer_hf.py, so both sides are sampled alike.
"""
import argparse
import http.client
import json
import math
import shutil
import signal
import subprocess
import sys
import threading
import time

TOPICS = [
    "a lighthouse keeper", "a robot gardener", "a lost cat", "a mountain village",
    "a time traveller", "a chess prodigy", "an old library", "a desert caravan",
    "a deep-sea diver", "a city at night", "a young inventor", "a haunted ship",
    "a winter festival", "a retired pilot", "a talking river", "a clockmaker",
]

HEADER = ("| device | streams | ok | tokens | wall s | aggregate tok/s | steady decode tok/s "
          "| per-stream tok/s mean / min | TTFT p50 / p99 ms | prompt / cached tok | GPU util mean / max % "
          "| GPU mem max MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")


def prompt(i, tag):
    # The tag makes every request of the run distinct, so the server's prefix
    # cache shares only what real traffic shares (the chat template's system
    # prompt), not whole prompts repeated from an earlier round.
    return f"Write a long story about {TOPICS[i % len(TOPICS)]}. (Request {tag}-{i}.)"


class GpuSampler:
    """nvidia-smi every 200 ms in the background; summary() -> (util mean, util max, mem max) or None."""

    def __init__(self, enabled=True, period_ms=200):
        self.samples = []
        self.proc = None
        self.thread = None
        if not enabled or shutil.which("nvidia-smi") is None:
            return
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
               "--format=csv,noheader,nounits", "-lms", str(period_ms)]
        # nvidia-smi writing into a pipe is block-buffered: stdbuf makes it
        # line-buffered so no sample waits in its buffer when it is stopped.
        if shutil.which("stdbuf"):
            cmd = ["stdbuf", "-oL"] + cmd
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.proc = None
            return
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                # one line per GPU; the first GPU is the one the server uses (cuda:0)
                self.samples.append((float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                pass

    def stop(self):
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(2)
        return self.summary()

    def summary(self):
        if not self.samples:
            return None
        util = [s[0] for s in self.samples]
        return sum(util) / len(util), max(util), max(s[1] for s in self.samples), len(util)


def fmt_gpu(g):
    if g is None:
        return "n/a", "n/a"
    return f"{g[0]:.0f} / {g[1]:.0f}", f"{g[2]:.0f}"


def body(model, i, max_tokens, tag):
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt(i, tag)}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def one(host, port, req, timeout, start_barrier, out):
    t = {"sent": None, "first": None, "done": None, "events": [], "tokens": 0,
         "prompt": 0, "cached": 0, "error": None}
    out.append(t)
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        payload = json.dumps(req)
        start_barrier.wait()
        t["sent"] = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=payload,
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            t["error"] = f"HTTP {resp.status}: {resp.read()[:200]!r}"
            return
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json.loads(data)
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                now = time.perf_counter()
                if t["first"] is None:
                    t["first"] = now
                t["events"].append(now)
            usage = chunk.get("usage")
            if usage:
                t["tokens"] = usage.get("completion_tokens", 0)
                t["prompt"] = usage.get("prompt_tokens", 0)
                t["cached"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        t["done"] = time.perf_counter()
        conn.close()
    except Exception as e:  # noqa: BLE001 - report, never hang the round
        t["error"] = f"{type(e).__name__}: {e}"
        t["done"] = time.perf_counter()


def pct(values, p):
    if not values:
        return 0.0
    v = sorted(values)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


def round_(args, n, label, max_tokens, request_timeout, round_timeout, tag, smi=False):
    out = []
    barrier = threading.Barrier(n)
    threads = [threading.Thread(target=one, daemon=True,
                                args=(args.host, args.port, body(args.model, i, max_tokens, tag),
                                      request_timeout, barrier, out))
               for i in range(n)]
    sampler = GpuSampler(smi)
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    deadline = t0 + round_timeout
    for th in threads:
        th.join(max(0.0, deadline - time.perf_counter()))
    gpu = sampler.stop()
    hung = sum(th.is_alive() for th in threads)
    ok = [t for t in out if t["error"] is None and t["done"] and t["first"] and t["sent"]]
    errors = [t["error"] for t in out if t["error"]]
    if hung:
        errors.append(f"{hung} streams still running after {round_timeout:.0f}s")
    row = {"label": label, "streams": n, "ok": len(ok), "errors": len(errors), "gpu": gpu}
    if ok:
        start = min(t["sent"] for t in ok)
        end = max(t["done"] for t in ok)
        wall = end - start
        tokens = sum(t["tokens"] for t in ok)
        frm = max(t["first"] for t in ok)
        to = min(t["done"] for t in ok)
        steady = (sum(1 for t in ok for e in t["events"] if frm < e <= to) / (to - frm)) if to > frm else 0.0
        per = [(t["tokens"] - 1) / (t["done"] - t["first"]) for t in ok
               if t["tokens"] > 1 and t["done"] > t["first"]]
        ttft = [t["first"] - t["sent"] for t in ok]
        row.update(wall=wall, tokens=tokens, agg=tokens / wall if wall > 0 else 0.0, steady=steady,
                   per_mean=sum(per) / len(per) if per else 0.0, per_min=min(per) if per else 0.0,
                   ttft50=pct(ttft, 50), ttft99=pct(ttft, 99),
                   prompt=sum(t["prompt"] for t in ok) / len(ok), cached=sum(t["cached"] for t in ok) / len(ok))
    return row, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--streams", default="1 8 32 64 128")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--warmup", default="1 4", help="stream counts of the warm-up rounds (8 tokens each)")
    ap.add_argument("--label", default="")
    ap.add_argument("--md", default="/dev/null")
    ap.add_argument("--smi", action="store_true", help="sample GPU utilisation with nvidia-smi per round")
    ap.add_argument("--deadline", type=float, default=120.0, help="seconds for the whole bench")
    ap.add_argument("--request-timeout", type=float, default=60.0)
    args = ap.parse_args()
    t_start = time.perf_counter()

    def left():
        return args.deadline - (time.perf_counter() - t_start)

    # Warm-up: the first request on a GPU loads candle's PTX modules (a JIT
    # unless the driver's cache has them: seconds), creates cuBLAS handles and
    # the first batch shapes; none of it belongs in the timed rounds.
    for n in [int(s) for s in args.warmup.split()]:
        row, errors = round_(args, n, "warmup", 8, max(args.request_timeout, 100.0),
                             max(5.0, min(100.0, left())), f"w{n}")
        print(f"bench: {args.label} warm-up x{n}: ok={row['ok']} errors={errors[:2]} "
              f"({time.perf_counter() - t_start:.1f}s)", flush=True)
        if row["ok"] == 0:
            print("bench: warm-up failed; stopping", flush=True)
            with open(args.md, "a") as md:
                md.write(f"\nwarm-up x{n} failed: {errors[:2]}\n")
            return 1

    with open(args.md, "a") as md:
        md.write(HEADER)
        for n in [int(s) for s in args.streams.split()]:
            if left() < 5:
                print(f"bench: {args.label} x{n}: skipped, {left():.0f}s left of the deadline", flush=True)
                md.write(f"| {args.label} | {n} | skipped (time budget) | | | | | | | | | |\n")
                continue
            row, errors = round_(args, n, args.label, args.max_tokens, args.request_timeout, left(), f"r{n}",
                                 args.smi)
            util, mem = fmt_gpu(row["gpu"])
            if "wall" in row:
                line = (f"| {args.label} | {n} | {row['ok']}/{n} | {row['tokens']} | {row['wall']:.2f} | "
                        f"{row['agg']:.1f} | {row['steady']:.1f} | {row['per_mean']:.1f} / {row['per_min']:.1f} | "
                        f"{row['ttft50'] * 1000:.0f} / {row['ttft99'] * 1000:.0f} | "
                        f"{row['prompt']:.0f} / {row['cached']:.0f} | {util} | {mem} |")
            else:
                line = f"| {args.label} | {n} | 0/{n} | | | | | | | | {util} | {mem} |"
            md.write(line + "\n")
            md.flush()
            print("bench: " + line, flush=True)
            for e in errors[:3]:
                print(f"bench:   error: {e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

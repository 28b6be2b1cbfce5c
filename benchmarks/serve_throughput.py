"""slmlab serve under load, side by side with sequential generation and llama.cpp, in one run.

Rows (SmolLM2-135M, the same prompts, greedy, ``--max-tokens`` new tokens per request with EOS
ignored so every row generates the same number of tokens):

* ``sequential generate`` — transformers' ``generate`` one prompt at a time in this process
  (what a script without a server does), float32 like the server.
* ``slmlab serve, C clients`` — a ``slmlab serve`` subprocess; C client threads each send
  ``--requests`` completions back to back over HTTP; aggregate generated tokens/s over the
  wall time, p50 / p95 request latency.
* ``llama.cpp`` — llama-cpp-python on the GGUF the model ships in (Q4_1 — quantized kernels,
  so this is llama.cpp's *best* setting here, not the same arithmetic), one request at a time
  in a subprocess; llama-cpp-python's server also serves one request at a time, so its
  aggregate throughput at any concurrency is this row. Skipped, and said so, when
  ``llama_cpp`` is not importable.
* ``latency under training`` — one client's p50 latency while ``/train`` jobs run back to back
  on the same server, against the same client idle.

    python benchmarks/serve_throughput.py                     # 1, 8 and 32 clients
    python benchmarks/serve_throughput.py --requests 1 --max-tokens 16   # a smoke run

Goals from the serve issue: batched throughput ≥ 3× sequential; latency under training ≤ 1.5×
idle. Timings on a shared machine are noisy: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

PROMPTS = [f"Write one sentence about the {w}." for w in
           "sea sky forest city river mountain desert garden winter summer library market "
           "train bridge castle island harbour meadow storm village kitchen school road lake "
           "clock violin painter farmer sailor doctor baker poet".split()]
KEY = "benchmark-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, state: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    (state / "key").write_text(KEY)
    cmd = [sys.executable, "-m", "slmlab", "serve", "--model", model, "--port", str(port), "--api-key-file",
           str(state / "key"), "--state-dir", str(state / "s")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start")


def one_request(url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    r = httpx.post(url + "/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                                  "temperature": 0, "ignore_eos": True}, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - start, r.json()["usage"]["completion_tokens"]


class Client:
    """One client thread's work: ``n`` requests back to back."""

    def __init__(self, url: str, model: str, index: int, n: int, max_tokens: int):
        self.url, self.model, self.index, self.n, self.max_tokens = url, model, index, n, max_tokens

    def __call__(self, _=None) -> list[tuple[float, int]]:
        return [one_request(self.url, self.model, PROMPTS[(self.index + k) % len(PROMPTS)], self.max_tokens)
                for k in range(self.n)]


def load_test(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: Client(url, model, i, requests, max_tokens)(), range(clients)))
    wall = time.perf_counter() - start
    latencies = sorted(lat for rows in results for lat, _ in rows)
    tokens = sum(t for rows in results for _, t in rows)
    return {"tokens_per_s": tokens / wall, "p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
            "requests": len(latencies)}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def sequential_generate(model_spec: str, n: int, max_tokens: int) -> dict:
    import torch

    from slmlab.models import load

    model, tok = load(model_spec)
    latencies, tokens = [], 0
    start = time.perf_counter()
    for prompt in PROMPTS[:n]:
        t0 = time.perf_counter()
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        tokens += out.shape[1] - enc["input_ids"].shape[1]
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    return {"tokens_per_s": tokens / wall, "p50": percentile(sorted(latencies), 50),
            "p95": percentile(sorted(latencies), 95), "requests": n}


LLAMA_SCRIPT = """
import json, sys, time
from llama_cpp import Llama
path, n, max_tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
prompts = json.loads(sys.stdin.read())[:n]
llm = Llama(model_path=path, n_ctx=512, n_threads=threads, verbose=False, seed=0)
lat, tokens = [], 0
start = time.perf_counter()
for p in prompts:
    t0 = time.perf_counter()
    out = llm.create_completion(p, max_tokens=max_tokens, temperature=0.0, logit_bias={llm.token_eos(): -1e9})
    tokens += out["usage"]["completion_tokens"]
    lat.append(time.perf_counter() - t0)
print(json.dumps({"tokens": tokens, "wall": time.perf_counter() - start, "lat": lat}))
"""


def llama_cpp(n: int, max_tokens: int, python: str) -> dict | str:
    import json

    from slmlab.models import embedded_gguf_path

    probe = subprocess.run([python, "-c", "import llama_cpp"], capture_output=True)
    if probe.returncode != 0:
        return f"skipped: llama_cpp is not importable by {python} (pip install llama-cpp-python)"
    threads = str(os.cpu_count() or 2)
    out = subprocess.run([python, "-c", LLAMA_SCRIPT, str(embedded_gguf_path()), str(n), str(max_tokens), threads],
                         input=json.dumps(PROMPTS), capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return f"failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
    data = json.loads(out.stdout.strip().splitlines()[-1])
    lat = sorted(data["lat"])
    return {"tokens_per_s": data["tokens"] / data["wall"], "p50": percentile(lat, 50), "p95": percentile(lat, 95),
            "requests": n}


class Trainer(threading.Thread):
    """Posts /train jobs back to back until stopped."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.jobs = url, threading.Event(), 0

    def run(self) -> None:
        auth = {"Authorization": f"Bearer {KEY}"}
        while not self.stop.is_set():
            body = {"model": "online", "context": f"Fact number {self.jobs}: the sky is",
                    "continuation": " blue today.", "steps": 1}
            job = httpx.post(self.url + "/train", json=body, headers=auth, timeout=60).json()["id"]
            while httpx.get(f"{self.url}/train/{job}", timeout=60).json()["status"] in ("queued", "running"):
                time.sleep(0.05)
            self.jobs += 1


def latency_under_training(url: str, model: str, requests: int, max_tokens: int) -> tuple[dict, dict, int]:
    idle = load_test(url, model, 1, requests, max_tokens)
    trainer = Trainer(url)
    trainer.start()
    time.sleep(2.0)  # the first job creates the adapter
    busy = load_test(url, model, 1, requests, max_tokens)
    trainer.stop.set()
    trainer.join(120)
    return idle, busy, trainer.jobs


def row(name: str, r: dict | str, base: float | None) -> str:
    if isinstance(r, str):
        return f"| {name} | {r} | | | |"
    ratio = f"{r['tokens_per_s'] / base:.2f}×" if base else ""
    return f"| {name} | {r['tokens_per_s']:.1f} | {r['p50']:.2f} | {r['p95']:.2f} | {ratio} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--sequential", type=int, default=8, help="prompts for the sequential and llama.cpp rows")
    ap.add_argument("--llama-python", default=sys.executable, help="a Python with llama_cpp installed")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]

    print(f"model {args.model}, {args.max_tokens} new tokens per request, greedy; cpu_count {os.cpu_count()}")
    seq = sequential_generate(args.model, args.sequential, args.max_tokens)
    llama = llama_cpp(args.sequential, args.max_tokens, args.llama_python)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args.model, Path(tmp))
        try:
            load_test(url, args.model, 1, 1, 4)  # warm-up
            served = {c: load_test(url, args.model, c, args.requests, args.max_tokens) for c in levels}
            idle, busy, jobs = latency_under_training(url, args.model, max(args.requests, 4), args.max_tokens)
        finally:
            proc.kill()
    base = seq["tokens_per_s"]
    print("\n| row | generated tokens/s | p50 s | p95 s | vs sequential |\n|---|---|---|---|---|")
    print(row("sequential generate (transformers, float32)", seq, base))
    for c, r in served.items():
        print(row(f"slmlab serve, {c} client{'s' if c > 1 else ''}", r, base))
    print(row("llama.cpp (llama-cpp-python, Q4_1 GGUF, one at a time)", llama, base))
    print(f"\nlatency p50, 1 client: idle {idle['p50']:.2f} s, while /train runs {busy['p50']:.2f} s "
          f"({busy['p50'] / idle['p50']:.2f}× idle; {jobs} training jobs ran meanwhile)")
    best = max(served.values(), key=lambda r: r["tokens_per_s"])
    print(f"best batched throughput / sequential: {best['tokens_per_s'] / base:.2f}×")
    if isinstance(llama, dict):
        print(f"best batched throughput / llama.cpp: {best['tokens_per_s'] / llama['tokens_per_s']:.2f}×")


if __name__ == "__main__":
    main()

"""Load on `safepretrain serve`: requests/s and latency percentiles under concurrent clients.

The server is the real CLI (`python -m safepretrain serve`, a subprocess) over a random-weight checkpoint of
the `tiny` preset in a throwaway run directory; the clients are the `openai` package in `--concurrency`
threads, each request a chat completion of exactly `--max-tokens` tokens' budget. Every decoder gets the same
`--requests` prompts; a decoder stops early once `--max-seconds` have passed (the JSON says how many ran).
Latency is the client's wall time per request (queueing included); one machine runs clients and server, so
they share its cores.

    python benchmarks/serve_load.py [--requests 64] [--concurrency 4] [--max-tokens 32] [--decoder topk ...]

Writes benchmarks/results/serve_load.json (and prints it).
"""

from __future__ import annotations

import argparse
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai
import torch
from common import write_result  # benchmarks/common.py
from safetensors.torch import save_model

from safepretrain.config import dump_config, load_config
from safepretrain.data.tokenizer import TextTokenizer, train_tokenizer
from safepretrain.rundir import RUN_MARKER
from safepretrain.train.model import Transformer

WORDS = "rivers towns weather bridges markets harbours lanterns orchards".split()


def make_checkpoint(run: Path, preset: str) -> tuple[Path, int]:
    """A run directory as a study lays it out, with random weights; returns (checkpoint, parameter count)."""
    (run / RUN_MARKER).touch()
    cfg = load_config(None, [f"model.preset={preset}"])
    (run / "study.yaml").write_text(dump_config(cfg))
    tag = cfg.data.interventions.tag
    text = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)) for i in range(200)]
    tok = TextTokenizer(train_tokenizer(text, 1000, 1, tag), tag)
    (run / "data").mkdir()
    tok.save(run / "data" / "tokenizer.json")
    torch.manual_seed(0)
    model = Transformer(cfg.model.model_copy(update={"vocab_size": tok.vocab_size}))
    ckpt = run / "ckpt" / "step_000001"
    ckpt.mkdir(parents=True)
    save_model(model, str(ckpt / "model.safetensors"))
    return ckpt, model.num_params()


def start_server(ckpt: Path, concurrency: int, cap: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "safepretrain", "serve", str(ckpt), "--port", str(port),
                             "--max-concurrency", str(concurrency), "--max-tokens-cap", str(cap)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/v1/models", timeout=1).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("server did not start") from None
            time.sleep(0.2)


def load(url: str, model: str, decoder: str, requests: int, concurrency: int, max_tokens: int,
         max_seconds: float) -> dict:
    """`requests` chat completions from `concurrency` threads; stops handing out work after `max_seconds`."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    next_i = iter(range(requests))
    lock = threading.Lock()
    start = time.perf_counter()

    def worker():
        while time.perf_counter() - start < max_seconds:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            prompt = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(6))
            t0 = time.perf_counter()
            try:
                out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=max_tokens, seed=i, extra_body={"decoder": decoder})
            except openai.APIError as err:
                with lock:
                    errors.append(str(err)[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                tokens.append(out.usage.completion_tokens)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None  # noqa: E731 (nearest rank)
    return {"decoder": decoder, "requests_done": len(lat), "errors": len(errors), "first_errors": errors[:3],
            "wall_s": wall, "requests_per_s": len(lat) / wall, "completion_tokens_per_s": sum(tokens) / wall,
            "latency_p50_s": pct(0.50), "latency_p99_s": pct(0.99),
            "latency_mean_s": statistics.fmean(lat) if lat else None}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=4, help="client threads, and the server's --max-concurrency")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-seconds", type=float, default=120.0, help="per decoder")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--decoder", action="append", help="repeatable; default: topk and safebeam")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_load.json"))
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt, params = make_checkpoint(Path(tmp), args.preset)
        proc, url = start_server(ckpt, args.concurrency, args.max_tokens)
        model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]  # the checkpoint's path in its run
        try:
            load(url, model, "topk", 2 * args.concurrency, args.concurrency, args.max_tokens, 30)  # warm-up
            runs = [load(url, model, d, args.requests, args.concurrency, args.max_tokens, args.max_seconds)
                    for d in (args.decoder or ["topk", "safebeam"])]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {
        "benchmark": "serve_load",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": sys.version.split()[0]},
        "setup": {"preset": args.preset, "params": params, "requests": args.requests,
                  "concurrency": args.concurrency, "max_tokens": args.max_tokens, "max_seconds": args.max_seconds,
                  "endpoint": "/v1/chat/completions"},
        "runs": runs,
    }
    return write_result(result, args.out)


if __name__ == "__main__":
    main()

"""OpenAI's streaming route against TGI's on one `victorian-gpt serve` (one engine): tokens/s side by side.

One server process (the real `victorian-gpt serve`, random-weight export of a preset shape, EOS off so every stream
does the same work) serves both routes. Each round sends `--streams` concurrent greedy streams of `--new-tokens`
tokens to one route, `POST /v1/completions` with `"stream": true` or `POST /generate_stream`, the same prompts;
rounds alternate between the routes, `--repeats` each, after a warm-up round of each. The OpenAI requests ask for
`"logprobs": 0`, so that each token is one event carrying its text and log-probability, as TGI's events do (without
it, OpenAI's route sends text only once it makes whole characters, and a random-weight model writes mostly byte
pieces: its events would come late and few).

Prints one JSON line per (shape, streams): per route, medians over rounds of the time to the first event (ms),
tokens/s seen by one stream and the aggregate tokens/s of all streams; `ratio` = OpenAI's aggregate tokens/s over
TGI's (goal: within 5 %, i.e. >= 0.95).

    python bench/bench_openai.py [--shapes gpt2-124m] [--streams 1 8] [--new-tokens 64] [--repeats 5]
        [--serve-args "--dtype bfloat16"] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_server import build_exports, prompt_of, start_server, tokenizer_source, wait_ready
from common import emit, environment

from victorian_gpt import PRESETS

ROUTES = ("openai", "tgi")


async def one_stream(client: httpx.AsyncClient, url: str, route: str, new_tokens: int, i: int):
    """(time to first event, total time, tokens) of one greedy stream on `route`."""
    if route == "openai":
        path = "/v1/completions"
        body = {"model": "bench", "prompt": prompt_of(i), "max_tokens": new_tokens, "temperature": 0, "logprobs": 0,
                "stream": True, "stream_options": {"include_usage": True}}
    else:
        path = "/generate_stream"
        body = {"inputs": prompt_of(i), "parameters": {"max_new_tokens": new_tokens}}
    start = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", url + path, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(event["error"])
            if first is None:
                first = time.perf_counter() - start
            if route == "tgi":
                tokens += 1
            elif event["choices"]:
                tokens += len(event["choices"][0]["logprobs"]["tokens"])
            else:  # the usage chunk: the server's own count must agree
                assert event["usage"]["completion_tokens"] == tokens, (event, tokens)
    return first, time.perf_counter() - start, tokens


async def round_of(url: str, route: str, streams: int, new_tokens: int) -> dict:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, route, new_tokens, i) for i in range(streams)))
        wall = time.perf_counter() - start
    assert all(tokens == new_tokens for _, _, tokens in results), results
    return {
        "ttft_ms": statistics.median(first for first, _, _ in results) * 1000,
        "stream_tokens_per_s": statistics.median(tokens / total for _, total, tokens in results),
        "aggregate_tokens_per_s": sum(tokens for _, _, tokens in results) / wall,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["gpt2-124m"], choices=sorted(PRESETS))
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--port", type=int, default=18480)
    parser.add_argument("--serve-args", default="", help='more `victorian-gpt serve` flags, e.g. "--dtype bfloat16"')
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the server (default: torch's, one per core); 1 is steadier on a busy "
                             "machine")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server this started

    from victorian_gpt.tokenization import train_tokenizer_from_source

    with tempfile.TemporaryDirectory(prefix="bench-openai-") as tmp:
        root = Path(tmp)
        tokenizer_dir = root / "tokenizer"
        train_tokenizer_from_source(str(tokenizer_source(root)), vocab_size=512, output_dir=str(tokenizer_dir))
        for s, shape_name in enumerate(args.shapes):
            folder = build_exports(shape_name, tokenizer_dir, root)["ours"]
            port = args.port + s
            url, log = f"http://127.0.0.1:{port}", root / f"{shape_name}.log"
            proc = start_server(folder, port, log, extra=args.serve_args.split(), threads=args.threads)
            try:
                wait_ready(url, proc, log)
                for streams in args.streams:
                    for route in ROUTES:  # warm-up
                        asyncio.run(round_of(url, route, streams, min(8, args.new_tokens)))
                    rounds = {route: [] for route in ROUTES}
                    for _ in range(args.repeats):
                        for route in ROUTES:  # alternate, so background noise hits both alike
                            rounds[route].append(asyncio.run(round_of(url, route, streams, args.new_tokens)))
                    med = {route: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                           for route, rs in rounds.items()}
                    record = {"bench": "openai", "shape": shape_name, "streams": streams,
                              "new_tokens": args.new_tokens}
                    for route in ROUTES:
                        record[f"{route}_ttft_ms"] = round(med[route]["ttft_ms"], 1)
                        record[f"{route}_stream_tokens_per_s"] = round(med[route]["stream_tokens_per_s"], 1)
                        record[f"{route}_aggregate_tokens_per_s"] = round(med[route]["aggregate_tokens_per_s"], 1)
                    record["ratio"] = round(med["openai"]["aggregate_tokens_per_s"]
                                            / med["tgi"]["aggregate_tokens_per_s"], 3)
                    record["ratio_of"] = "OpenAI /v1/completions stream / TGI /generate_stream aggregate tokens/s"
                    record.update(repeats=args.repeats, serve_args=args.serve_args,
                                  server_threads=args.threads or "default", **environment())
                    emit(record)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

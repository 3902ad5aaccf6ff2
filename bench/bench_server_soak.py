"""`victorian-gpt serve` soaked: rounds of N concurrent streams, some hanging up at random, against one server.

One server (the real console entry point, batching engine) serves a random-weight export with EOS off. Each round
starts `--streams` streams at once, alternately greedy and seeded-sampling, each with its own prompt; about a third
(chosen by `--seed`) read a random number of events and then drop the connection. Afterwards every stream that
completed is compared with the same request served alone, the server's health is checked, and its threads and
resident memory are read from /proc and compared with the baseline taken after a warm-up round.

Prints one JSON line: completed / disconnected streams, how many completed streams differ from their solo result
(`mismatches`, target 0), /health, threads and RSS (MiB) at baseline and at the end, and aggregate tokens/s.

    python bench/bench_server_soak.py [--shape gpt2-124m] [--streams 32] [--rounds 3] [--new-tokens 48]
"""

from __future__ import annotations

import argparse
import signal
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_server import build_exports, prompt_of, start_server, wait_ready
from common import emit, environment

from victorian_gpt import PRESETS


def proc_status(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return {"threads": int(fields["Threads"]), "rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1)}


def request_body(i: int, new_tokens: int) -> dict:
    parameters = {"max_new_tokens": new_tokens}
    if i % 2:  # seeded sampling, so "equals its solo result" covers the per-request generators too
        parameters.update(do_sample=True, temperature=1.0, top_k=50, top_p=0.95, seed=1000 + i)
    return {"inputs": prompt_of(i), "parameters": parameters}


async def stream(client, url, body, hang_up_after: int | None) -> tuple[list[int], bool]:
    """The token ids of one stream, and whether it ran to its end (False: this client hung up)."""
    ids = []
    async with client.stream("POST", url + "/generate_stream", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if "error" in event:
                    raise RuntimeError(event["error"])
                ids.append(event["token"]["id"])
                if hang_up_after is not None and len(ids) >= hang_up_after:
                    return ids, False  # leaving the block closes the connection mid-stream
    return ids, True


async def soak_round(url, streams, new_tokens, rng) -> tuple[dict, int, float]:
    hang_ups = {i: rng.randint(1, new_tokens - 1) for i in range(streams) if rng.random() < 1 / 3}
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(stream(client, url, request_body(i, new_tokens), hang_ups.get(i))
                                         for i in range(streams)))
        wall = time.perf_counter() - start
    return dict(enumerate(results)), sum(len(ids) for ids, _ in results), wall


async def solo(url, i, new_tokens) -> list[int]:
    async with httpx.AsyncClient(timeout=600) as client:
        ids, _ = await stream(client, url, request_body(i, new_tokens), None)
    return ids


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="gpt2-124m", choices=sorted(PRESETS))
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=18480)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server (default: torch's)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers this started

    from bench_server import tokenizer_source

    from victorian_gpt.tokenization import train_tokenizer_from_source

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        root = Path(tmp)
        train_tokenizer_from_source(str(tokenizer_source(root)), vocab_size=512, output_dir=str(root / "tokenizer"))
        folder = build_exports(args.shape, root / "tokenizer", root)["ours"]
        url, log = f"http://127.0.0.1:{args.port}", root / "serve.log"
        proc = start_server(folder, args.port, log, threads=args.threads)
        try:
            wait_ready(url, proc, log)
            asyncio.run(soak_round(url, args.streams, 8, random.Random(1)))  # warm-up, with hang-ups too
            time.sleep(1)
            baseline = proc_status(proc.pid)
            completed, dropped, tokens, wall = {}, 0, 0, 0.0
            for _ in range(args.rounds):
                results, n, seconds = asyncio.run(soak_round(url, args.streams, args.new_tokens, rng))
                tokens, wall = tokens + n, wall + seconds
                for i, (ids, finished) in results.items():
                    if finished:
                        completed.setdefault(i, []).append(ids)
                    else:
                        dropped += 1
            time.sleep(2)  # let the last cancelled sequences leave
            healthy = httpx.get(url + "/health", timeout=10).status_code == 200
            end = proc_status(proc.pid)
            mismatches = 0
            for i, runs in completed.items():
                alone = asyncio.run(solo(url, i, args.new_tokens))
                mismatches += sum(ids != alone for ids in runs)
            emit({
                "bench": "server_soak",
                "shape": args.shape,
                "streams": args.streams,
                "rounds": args.rounds,
                "new_tokens": args.new_tokens,
                "completed": sum(len(r) for r in completed.values()),
                "disconnected": dropped,
                "mismatches": mismatches,
                "target": "mismatches 0, healthy, threads and memory back to baseline",
                "healthy": healthy,
                "baseline_threads": baseline["threads"],
                "end_threads": end["threads"],
                "baseline_rss_mib": baseline["rss_mib"],
                "end_rss_mib": end["rss_mib"],
                "aggregate_tokens_per_s": round(tokens / wall, 1),
                "server_threads": args.threads or "default",
                **environment(),
            })
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()

"""`victorian-gpt serve` under load: time to first token and tokens/s, 1 and 8 concurrent streams.

For each shape, servers run side by side (separate processes, started with the real `victorian-gpt serve`), each a
`MODEL-ENGINE` pair of `--servers`: MODEL is `ours` (our random-weight export) or `reference` (Hugging Face's
`GPT2LMHeadModel` of the same shape saved the same way; the server loads either through `AutoModelForCausalLM`),
ENGINE is `batch` (the batching engine, the default server) or `threads` (`--engine threads`: one `generate()` thread
per request, the server before the engine). Clients stream greedy `POST /generate_stream` requests over HTTP from
this process, alternating between the servers, several rounds; each stream of a round has its own prompt (lengths
differ, so batches are left-padded). EOS is disabled in the exports' generation_config so every stream does the same
work (random weights would stop at random places otherwise).

Prints one JSON line per (shape, streams): per server, medians over rounds of the time to first token (ms), tokens/s
seen by one stream and the aggregate tokens/s of all streams; `ratio` = aggregate tokens/s of the first server over
the second's (default: ours-batch / ours-threads; target >= 3 at 8 streams). `flips`: streams of the batching server
whose greedy tokens differ from the same request served alone (batching changes the matmuls' shapes, hence low bits,
which can flip a near-tie), counted over all rounds.

    python bench/bench_server.py [--shapes tiny gpt2-124m] [--streams 1 8] [--new-tokens 64] [--repeats 3]
        [--servers ours-batch ours-threads]
"""

from __future__ import annotations

import argparse
import signal
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import build_pair, emit, environment

from victorian_gpt import PRESETS

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_SOURCE = REPO_ROOT.parent / "shared" / "data" / "pg19-sample" / "tiny"
OPENINGS = [
    "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "The fog lay thick upon the river, and the lamplighter had scarcely begun his round",
    "My dear Mrs. Fairfax, I write to you from the parsonage in some haste",
    "Upon the death of old Mr. Dombey the house in Bloomsbury Square was shut up",
    "Mr. Pickwick rose early",
    "The carriage stopped at the gate of the old manor, and the coachman, muttering",
    "Whether I shall turn out to be the hero of my own life",
]


def prompt_of(i: int) -> str:
    return OPENINGS[i % len(OPENINGS)] + ("" if i < len(OPENINGS) else f" (the {i}th time)")


def build_exports(shape_name: str, tokenizer_dir: Path, root: Path) -> dict[str, Path]:
    """Random-weight exports of our model and GPT2LMHeadModel with one shape, EOS off."""
    from transformers import AutoTokenizer

    from victorian_gpt.export import save_model_folder

    shape = PRESETS[shape_name]
    ours, reference = build_pair(**shape)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.model_max_length = shape["n_positions"]
    build_exports.tokenizer = tokenizer
    folders = {}
    for name, model in (("ours", ours), ("reference", reference)):
        model.generation_config.eos_token_id = None  # fixed-length streams: the same work for both
        folders[name] = save_model_folder(model, tokenizer, root / f"{shape_name}-{name}")
    return folders


def tokenizer_source(root: Path) -> Path:
    """Text for the random-weight models' tokenizer: the sample's tiny split, or (in a clone without ../shared) a
    synthetic PG19-format folder written under `root`: any English-like text makes a fitting tokenizer."""
    if TOKENIZER_SOURCE.exists():
        return TOKENIZER_SOURCE
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from helpers.synthetic_pg19 import write_pg19_folder

    return write_pg19_folder(root / "synthetic-pg19")


def start_server(folder: Path, port: int, log: Path, engine: str = "batch", extra=(),
                 threads: int | None = None) -> subprocess.Popen:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "victorian_gpt.cli", "serve", str(folder), "--port", str(port),
             "--log-level", "warning", "--engine", engine, *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server at {url} not ready after {timeout}s")


async def one_stream(client: httpx.AsyncClient, url: str, new_tokens: int, i: int,
                     ids: list | None = None) -> tuple[float, float, int]:
    """(time to first token, total time, tokens) of one greedy stream; its token ids are appended to `ids`."""
    body = {"inputs": prompt_of(i), "parameters": {"max_new_tokens": new_tokens}}
    start = time.perf_counter()
    first, tokens = None, 0
    ids = [] if ids is None else ids
    async with client.stream("POST", url + "/generate_stream", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if "error" in event:
                    raise RuntimeError(event["error"])
                tokens += 1
                ids.append(event["token"]["id"])
                if first is None:
                    first = time.perf_counter() - start
    return first, time.perf_counter() - start, tokens


async def round_of(url: str, streams: int, new_tokens: int, ids: list | None = None) -> dict:
    ids = [[] for _ in range(streams)] if ids is None else ids
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=256)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, new_tokens, i, ids[i]) for i in range(streams)))
        wall = time.perf_counter() - start
    assert all(tokens == new_tokens for _, _, tokens in results), results
    return {
        "ttft_ms": statistics.median(first for first, _, _ in results) * 1000,
        "stream_tokens_per_s": statistics.median(tokens / total for _, total, tokens in results),
        "aggregate_tokens_per_s": sum(tokens for _, _, tokens in results) / wall,
    }


def solo_ids(url: str, streams: int, new_tokens: int) -> list[list[int]]:
    """Each stream's request served alone, one after another: what batching must not change."""
    out = []
    for i in range(streams):
        ids = []
        asyncio.run(round_of_one(url, new_tokens, i, ids))
        out.append(ids)
    return out


async def round_of_one(url, new_tokens, i, ids):
    async with httpx.AsyncClient(timeout=600) as client:
        await one_stream(client, url, new_tokens, i, ids)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "gpt2-124m"], choices=sorted(PRESETS))
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=["ours-batch", "ours-threads"],
                        choices=["ours-batch", "ours-threads", "reference-batch", "reference-threads"],
                        help="MODEL-ENGINE pairs to run side by side; `ratio` is the first over the second")
    parser.add_argument("--base-port", type=int, default=18400)
    parser.add_argument("--serve-args", default="", help='more `victorian-gpt serve` flags for every server, e.g. '
                        '"--dtype bfloat16" or "--quantize int8"')
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the servers (default: torch's, one per core); 1 is steadier on a busy "
                             "machine, and favours the thread-per-request server, whose threads can still use every core")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers this started

    from victorian_gpt.tokenization import train_tokenizer_from_source

    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        root = Path(tmp)
        tokenizer_dir = root / "tokenizer"
        train_tokenizer_from_source(str(tokenizer_source(root)), vocab_size=512, output_dir=str(tokenizer_dir))
        for s, shape_name in enumerate(args.shapes):
            folders = build_exports(shape_name, tokenizer_dir, root)
            servers, urls = {}, {}
            try:
                for i, name in enumerate(args.servers):
                    model, engine = name.split("-")
                    port = args.base_port + len(args.servers) * s + i
                    log = root / f"{shape_name}-{name}.log"
                    servers[name] = (start_server(folders[model], port, log, engine, args.serve_args.split(),
                                                  threads=args.threads), log)
                    urls[name] = f"http://127.0.0.1:{port}"
                for name, (proc, log) in servers.items():
                    wait_ready(urls[name], proc, log)
                batch_servers = [name for name in urls if name.endswith("-batch")]
                for streams in args.streams:
                    for name in urls:  # warm-up: allocator, lazy imports, first-request paths
                        asyncio.run(round_of(urls[name], streams, min(8, args.new_tokens)))
                    rounds = {name: [] for name in urls}
                    tokens = {name: [] for name in batch_servers}
                    for _ in range(args.repeats):
                        for name in urls:  # alternate, so background noise hits both alike
                            ids = [[] for _ in range(streams)]
                            rounds[name].append(asyncio.run(round_of(urls[name], streams, args.new_tokens, ids)))
                            if name in tokens:
                                tokens[name].append(ids)
                    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rounds.items()}
                    first, second = args.servers[0], args.servers[-1]
                    record = {
                        "bench": "server",
                        "shape": shape_name,
                        "streams": streams,
                        "prompt_tokens": sorted({len(build_exports.tokenizer(prompt_of(i)).input_ids)
                                                 for i in range(streams)}),
                        "new_tokens": args.new_tokens,
                    }
                    for name in urls:
                        key = name.replace("-", "_")
                        record[f"{key}_ttft_ms"] = round(med[name]["ttft_ms"], 1)
                        record[f"{key}_stream_tokens_per_s"] = round(med[name]["stream_tokens_per_s"], 1)
                        record[f"{key}_aggregate_tokens_per_s"] = round(med[name]["aggregate_tokens_per_s"], 1)
                    record["ratio"] = round(med[first]["aggregate_tokens_per_s"]
                                            / med[second]["aggregate_tokens_per_s"], 3)
                    record["ratio_of"] = f"{first} / {second} aggregate tokens/s"
                    for name in batch_servers:  # near-tie flips: batched greedy tokens vs the request served alone
                        if streams > 1:
                            alone = solo_ids(urls[name], streams, args.new_tokens)
                            runs = [ids for round_ids in tokens[name] for ids in round_ids]
                            expected = [alone[i % streams] for i in range(len(runs))]
                            record[f"{name.replace('-', '_')}_flips"] = (
                                f"{sum(a != b for a, b in zip(runs, expected))}/{len(runs)} streams")
                    record.update(repeats=args.repeats, server_threads=args.threads or "default", serve_args=args.serve_args, **environment())
                    emit(record)
            finally:
                for proc, _ in servers.values():
                    proc.terminate()
                for proc, _ in servers.values():
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

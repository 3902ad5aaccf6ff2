"""`victorian-gpt serve` under load: time to first token and tokens/s, 1 and 8 concurrent streams.

For each shape, two servers run side by side (separate processes, started with the real `victorian-gpt serve`): one
serving our random-weight export, one serving Hugging Face's `GPT2LMHeadModel` of the same shape saved the same way
(the server loads either through `AutoModelForCausalLM`). Clients stream `POST /generate_stream` over HTTP from this
process, alternating between the two servers, several rounds. EOS is disabled in both exports' generation_config so
every stream does the same work (random weights would stop at random places otherwise).

Prints one JSON line per (shape, streams): medians over rounds of the time to first token (ms), tokens/s seen by
one stream, and the aggregate tokens/s of all streams; `ratio` = ours / reference for the aggregate tokens/s.

    python bench/bench_server.py [--shapes tiny gpt2-124m] [--streams 1 8] [--new-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
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
PROMPT = "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals"


def build_exports(shape_name: str, tokenizer_dir: Path, root: Path) -> dict[str, Path]:
    """Random-weight exports of our model and GPT2LMHeadModel with one shape, EOS off."""
    from transformers import AutoTokenizer

    from victorian_gpt.export import save_model_folder

    shape = PRESETS[shape_name]
    ours, reference = build_pair(**shape)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.model_max_length = shape["n_positions"]
    build_exports.prompt_tokens = len(tokenizer(PROMPT).input_ids)
    folders = {}
    for name, model in (("ours", ours), ("reference", reference)):
        model.generation_config.eos_token_id = None  # fixed-length streams: the same work for both
        folders[name] = save_model_folder(model, tokenizer, root / f"{shape_name}-{name}")
    return folders


def start_server(folder: Path, port: int, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "victorian_gpt.cli", "serve", str(folder), "--port", str(port),
             "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT,
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


async def one_stream(client: httpx.AsyncClient, url: str, new_tokens: int, seed: int) -> tuple[float, float, int]:
    """(time to first token, total time, tokens) of one greedy stream."""
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": new_tokens, "seed": seed}}
    start = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", url + "/generate_stream", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if "error" in event:
                    raise RuntimeError(event["error"])
                tokens += 1
                if first is None:
                    first = time.perf_counter() - start
    return first, time.perf_counter() - start, tokens


async def round_of(url: str, streams: int, new_tokens: int) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, new_tokens, i) for i in range(streams)))
        wall = time.perf_counter() - start
    assert all(tokens == new_tokens for _, _, tokens in results), results
    return {
        "ttft_ms": statistics.median(first for first, _, _ in results) * 1000,
        "stream_tokens_per_s": statistics.median(tokens / total for _, total, tokens in results),
        "aggregate_tokens_per_s": sum(tokens for _, _, tokens in results) / wall,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "gpt2-124m"], choices=sorted(PRESETS))
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=18400)
    args = parser.parse_args()

    from victorian_gpt.tokenization import train_tokenizer_from_source

    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        root = Path(tmp)
        tokenizer_dir = root / "tokenizer"
        train_tokenizer_from_source(str(TOKENIZER_SOURCE), vocab_size=512, output_dir=str(tokenizer_dir))
        for s, shape_name in enumerate(args.shapes):
            folders = build_exports(shape_name, tokenizer_dir, root)
            servers, urls = {}, {}
            try:
                for i, (name, folder) in enumerate(folders.items()):
                    port = args.base_port + 2 * s + i
                    log = root / f"{shape_name}-{name}.log"
                    servers[name] = (start_server(folder, port, log), log)
                    urls[name] = f"http://127.0.0.1:{port}"
                for name, (proc, log) in servers.items():
                    wait_ready(urls[name], proc, log)
                for streams in args.streams:
                    for name in urls:  # warm-up: allocator, lazy imports, first-request paths
                        asyncio.run(round_of(urls[name], streams, min(8, args.new_tokens)))
                    rounds = {name: [] for name in urls}
                    for _ in range(args.repeats):
                        for name in urls:  # alternate, so background noise hits both alike
                            rounds[name].append(asyncio.run(round_of(urls[name], streams, args.new_tokens)))
                    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rounds.items()}
                    emit({
                        "bench": "server",
                        "shape": shape_name,
                        "streams": streams,
                        "prompt_tokens": build_exports.prompt_tokens,
                        "new_tokens": args.new_tokens,
                        "ours_ttft_ms": round(med["ours"]["ttft_ms"], 1),
                        "ours_stream_tokens_per_s": round(med["ours"]["stream_tokens_per_s"], 1),
                        "ours_aggregate_tokens_per_s": round(med["ours"]["aggregate_tokens_per_s"], 1),
                        "reference_ttft_ms": round(med["reference"]["ttft_ms"], 1),
                        "reference_aggregate_tokens_per_s": round(med["reference"]["aggregate_tokens_per_s"], 1),
                        "ratio": round(med["ours"]["aggregate_tokens_per_s"]
                                       / med["reference"]["aggregate_tokens_per_s"], 3),
                        "repeats": args.repeats,
                        **environment(),
                    })
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

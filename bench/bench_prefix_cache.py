"""The engine's prefix cache, on and off side by side in one process, at the 124M shape on CPU.

Two `textgen.Engine`s on the same model (random weights, EOS off, `--dtype` as the server's default, `auto`), one
with `prefix_cache_tokens=--cache-tokens`, one with the cache off, alternating, `--repeats` rounds (after a warm-up);
every round draws fresh random openings, so a "first time" is really a miss.
- `repeat_500`: time to first token of a `--opening-tokens`-token prompt, the first time and the second time it is sent
  (the second time with the cache on prefills only its last block); target: second <= 0.2 x first.
- `shared_300`: `--streams` concurrent streams whose prompts share a `--shared-tokens`-token prefix (then 8-24 tokens
  of their own), `--new-tokens` each: aggregate tokens/s and median time to first token.
Also checks that each stream's tokens are the same with and without the cache. Prints one JSON line.

    python bench/bench_prefix_cache.py [--preset gpt2-124m] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from common import build_pair, emit, environment

from victorian_gpt import PRESETS

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from bench_batching import _Tokenizer  # noqa: E402

from serving import textgen  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2-124m", choices=sorted(PRESETS))
    parser.add_argument("--dtype", default="auto", choices=textgen.DTYPE_CHOICES)
    parser.add_argument("--cache-tokens", type=int, default=4096)
    parser.add_argument("--opening-tokens", type=int, default=500)
    parser.add_argument("--shared-tokens", type=int, default=300)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds idle before each timed request")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)

    shape = {k: PRESETS[args.preset][k] for k in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size")}
    model, _ = build_pair(**shape)
    dtype, why = textgen.resolve_dtype(args.dtype, "cpu", torch.float32)
    model = model.to(dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    tokenizer = _Tokenizer()
    limits = textgen.Limits(max_input_tokens=shape["n_positions"] - 1, max_total_tokens=shape["n_positions"])
    engines = {"off": textgen.Engine(model, tokenizer, limits=limits),
               "on": textgen.Engine(model, tokenizer, limits=limits, prefix_cache_tokens=args.cache_tokens)}
    generator = torch.Generator().manual_seed(0)

    def random_ids(n):
        return torch.randint(2, shape["vocab_size"], (n,), generator=generator).tolist()

    def ttft(engine, prompt):
        time.sleep(args.pause)  # the engine settles (it gives freed memory back when idle), as between visitors
        generation = engine.submit(prompt, textgen.GenerationParameters(max_new_tokens=1))
        ids = [t.id for t in generation]
        return generation.time_to_first_token, ids

    def shared(engine, prompts):
        time.sleep(args.pause)
        params = textgen.GenerationParameters(max_new_tokens=args.new_tokens)
        start = time.perf_counter()
        generations = [engine.submit(p, params) for p in prompts]
        ids = [[t.id for t in g] for g in generations]
        elapsed = time.perf_counter() - start
        return len(prompts) * args.new_tokens / elapsed, statistics.median(g.time_to_first_token for g in generations), ids

    results = {f"{case}_{name}": [] for case in ("first", "second", "tokens_per_s", "ttft_shared") for name in engines}
    same = total = 0
    for round_ in range(args.repeats + 1):  # round 0 warms up
        opening = random_ids(args.opening_tokens)
        prefix = random_ids(args.shared_tokens)
        prompts = [prefix + random_ids(8 + 2 * i) for i in range(args.streams)]
        outputs = {}
        for name, engine in engines.items():
            first, a = ttft(engine, opening)
            second, b = ttft(engine, opening)
            rate, shared_ttft, ids = shared(engine, prompts)
            outputs[name] = a + b + [t for row in ids for t in row]
            if round_:
                for case, value in (("first", first), ("second", second), ("tokens_per_s", rate),
                                    ("ttft_shared", shared_ttft)):
                    results[f"{case}_{name}"].append(value)
        same += outputs["on"] == outputs["off"]
        total += 1
    med = {key: statistics.median(values) for key, values in results.items()}
    emit({
        "bench": "prefix_cache",
        "shape": args.preset,
        "dtype": f"{str(dtype).removeprefix('torch.')} ({why})",
        "repeat_opening_tokens": args.opening_tokens,
        "ttft_first_ms": {name: round(1000 * med[f"first_{name}"], 1) for name in engines},
        "ttft_second_ms": {name: round(1000 * med[f"second_{name}"], 1) for name in engines},
        "second_over_first_cache_on": round(med["second_on"] / med["first_on"], 3),
        "shared_prefix_tokens": args.shared_tokens,
        "streams": args.streams,
        "new_tokens": args.new_tokens,
        "shared_tokens_per_s": {name: round(med[f"tokens_per_s_{name}"], 1) for name in engines},
        "shared_ttft_median_ms": {name: round(1000 * med[f"ttft_shared_{name}"], 1) for name in engines},
        "shared_speedup_cache_on": round(med["tokens_per_s_on"] / med["tokens_per_s_off"], 3),
        "tokens_identical_rounds": f"{same}/{total}",
        "prefix_cache": engines["on"].prefix_cache.stats(),
        "repeats": args.repeats,
        "note": "busy machine",
        **environment(),
    })
    for engine in engines.values():
        engine.close()


if __name__ == "__main__":
    main()

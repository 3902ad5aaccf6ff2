"""Speed past the window: what the context shifts cost while a request writes far beyond the model's context.

    python bench/bench_long_speed.py                                   # the README main command's export
    python bench/bench_long_speed.py --variants auto int8 --streams 1 4 --new-tokens 2000 --plot long-speed.png

For each variant (`auto`: the front ends' default dtype; `int8`: `--quantize int8`), the export is loaded as the
server loads it (`textgen.load_model`) and one `textgen.Engine` writes `--new-tokens` tokens for each of `--streams`
concurrent requests (openings of different lengths, greedy, end-of-sequence ignored, so every request writes the whole
length). Each token's arrival is timed where a client reads it; a token's time is the gap since the one before.

The reference, in the same run: the per-token time of the tokens written inside the first window (before the first
shift; the first token, which carries the prefill, left out). Reported per variant and stream count: that time, the
per-token time of the tokens after the first shift (their contexts hold from `keep` + (1 - discard) x rest up to the
window, as the first window's did from the opening up), their ratio (the goal: at most 1.2), the time of the steps
that shifted (a shift is a step of its own: the rotary cache rotated back, or the kept tokens encoded again), the
number of shifts per request, and whether every request's tokens equal the same request written alone (the shift and
the batch do not change a request's text). `--plot` draws each stream's per-token time against the token's index,
the shifts marked (means of 64 tokens:
tokens reach a reader in bursts).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from common import emit, environment

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from serving import textgen  # noqa: E402

DEFAULT_MODEL = REPO / "runs" / "pg19-sample-cpu" / "model"
OPENINGS = [
    "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals,",
    "The family of Dashwood had long been settled in Sussex.",
    "Whether I shall turn out to be the hero of my own life, or whether that station will be held by anybody else,",
    "In a hole in the hedge by the turnpike road there lived an old man who kept",
    "Mr. Sherlock Holmes, who was usually very late in the mornings,",
    "Of all the winds that blew across the heath that winter, none was colder than",
    "The letter came on a Tuesday, and my aunt read it twice before she spoke.",
    "There were four of us at the inn that evening, and the landlord had gone to bed.",
]


def write(engine, prompts: list[list[int]], params) -> list[dict]:
    """Submit every prompt at once; per request its token ids, arrival times and shift count."""
    generations = [engine.submit(p, params) for p in prompts]
    results = [None] * len(generations)

    def consume(i, generation):
        ids, times = [], []
        for token in generation:
            times.append(time.perf_counter())
            ids.append(token.id)
        results[i] = {"ids": ids, "times": times, "shifts": generation.shifts}

    threads = [threading.Thread(target=consume, args=(i, g)) for i, g in enumerate(generations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def shift_steps(prompt_length: int, written: int, window: int, policy: textgen.ContextShift) -> list[int]:
    """The indices (in the written tokens) of the tokens whose step shifted the context, as the engine shifts it: the
    context is the prompt and the tokens so far, and a step that finds more than `window` tokens shifts first."""
    steps, length = [], prompt_length + 1  # after the prefill: the prompt and the first token
    for j in range(1, written):
        if length > window:
            steps.append(j)
            length = len(policy.apply(list(range(length))))
        length += 1
    return steps


def summarize(result: dict, prompt_length: int, window: int, policy: textgen.ContextShift) -> dict:
    gaps = [b - a for a, b in zip(result["times"], result["times"][1:])]  # gaps[j - 1]: token j
    steps = shift_steps(prompt_length, len(result["ids"]), window, policy)
    first = steps[0] if steps else len(result["ids"])
    inside = gaps[: first - 1]  # tokens 1 .. first - 1: the first window, the prefill's token left out
    after = gaps[first - 1:]
    shifted = [gaps[j - 1] for j in steps]
    shifting = set(steps)
    plain = [gaps[j - 1] for j in range(first, len(result["ids"])) if j not in shifting]
    return {"first_window_s": statistics.mean(inside), "after_s": statistics.mean(after) if after else None,
            "after_without_shift_steps_s": statistics.mean(plain) if plain else None,
            "shift_step_s": statistics.mean(shifted) if shifted else None, "shifts": result["shifts"],
            "expected_shifts": len(steps)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="an exported model folder (default: %(default)s)")
    parser.add_argument("--variants", nargs="+", default=["auto", "int8"], choices=["auto", "int8", "float32"],
                        help="auto: the front ends' default dtype; int8: --quantize int8; float32: the exact path")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4], help="concurrent requests (default: 1 4)")
    parser.add_argument("--new-tokens", type=int, default=2000, help="tokens each request writes (default: 2000)")
    parser.add_argument("--context-keep", type=int, default=None, help="as the front ends' flag (default: the model's)")
    parser.add_argument("--context-discard", type=float, default=None, help="as the front ends' flag")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-solo-check", action="store_true", help="skip writing each request again alone")
    parser.add_argument("--plot", default=None, help="write per-token time against the token's index here (PNG)")
    args = parser.parse_args(argv)
    if not Path(args.model, "config.json").is_file():
        parser.error(f"no exported model at {args.model}: run the README main command first, or pass --model")
    if args.new_tokens < 2 or min(args.streams) < 1 or max(args.streams) > len(OPENINGS):
        parser.error(f"need --new-tokens >= 2 and 1 <= --streams <= {len(OPENINGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    emit({"bench": "long_speed_setup", "model": args.model, "new_tokens": args.new_tokens, "streams": args.streams,
          **environment()})

    series = {}
    for variant in args.variants:
        dtype, quantize = ("auto", "int8") if variant == "int8" else (variant, None)
        model, tokenizer = textgen.load_model(args.model, dtype=dtype, quantize=quantize)
        window = textgen.context_length(model, tokenizer)
        policy = textgen.ContextShift.for_model(model, args.context_keep, args.context_discard).check(window)
        limits = textgen.Limits.for_model(model, tokenizer, max_total_tokens=window + args.new_tokens + 64)
        params = textgen.GenerationParameters(max_new_tokens=args.new_tokens, ignore_eos=True)
        with textgen.Engine(model, tokenizer, limits=limits, context_shift=policy) as engine:
            write(engine, [tokenizer(OPENINGS[0])["input_ids"]],
                  textgen.GenerationParameters(max_new_tokens=8, ignore_eos=True))  # warm-up
            for streams in args.streams:
                prompts = [tokenizer(text)["input_ids"] for text in OPENINGS[:streams]]
                started = time.perf_counter()
                results = write(engine, prompts, params)
                elapsed = time.perf_counter() - started
                rows = [summarize(r, len(p), window, policy) for r, p in zip(results, prompts)]
                same_alone = None
                if not args.no_solo_check and streams > 1:
                    same_alone = sum(write(engine, [p], params)[0]["ids"] == r["ids"] for p, r in zip(prompts, results))
                first = statistics.mean(r["first_window_s"] for r in rows)
                after = statistics.mean(r["after_s"] for r in rows)
                shift_steps = [r["shift_step_s"] for r in rows if r["shift_step_s"] is not None]
                record = {
                    "bench": "long_speed", "variant": variant,
                    "serving_dtype": str(getattr(model, "serving_dtype", "")),
                    "streams": streams, "window": window, "keep": policy.keep, "discard": policy.discard,
                    "new_tokens": args.new_tokens, "tokens_per_s": round(streams * args.new_tokens / elapsed, 1),
                    "first_window_ms_per_token": round(1000 * first, 3),
                    "after_first_shift_ms_per_token": round(1000 * after, 3),
                    "ratio": round(after / first, 3),
                    "plain_steps_after_ms_per_token": round(1000 * statistics.mean(
                        r["after_without_shift_steps_s"] for r in rows), 3),
                    "shift_step_ms": round(1000 * statistics.mean(shift_steps), 2) if shift_steps else None,
                    "shifts_per_request": [r["shifts"] for r in rows],
                    "expected_shifts": [r["expected_shifts"] for r in rows],
                    "same_as_alone": None if same_alone is None else f"{same_alone}/{streams}",
                }
                emit(record)
                series[(variant, streams)] = (results, prompts, window, policy)
        del model

    if args.plot:
        plot(series, args.plot)
    return 0


def plot(series: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.6), squeeze=False)
    for ax, ((variant, streams), (results, prompts, window, policy)) in zip(axes[0], series.items()):
        result, prompt = results[0], prompts[0]
        gaps = [1000 * (b - a) for a, b in zip(result["times"], result["times"][1:])]
        # tokens reach a reader in bursts (a thread switch holds a few back): the mean of each 64 tokens
        means = [statistics.mean(gaps[i : i + 64]) for i in range(0, len(gaps) - 63, 64)]
        ax.plot([i + 64 for i in range(0, len(gaps) - 63, 64)], means, lw=1.2, color="tab:blue", drawstyle="steps-pre")
        for step in shift_steps(len(prompt), len(result["ids"]), window, policy):
            ax.axvline(step, color="tab:red", lw=0.6, alpha=0.6)
        ax.set_title(f"{variant}, {streams} stream{'s' * (streams > 1)} (shifts in red)", fontsize=9)
        ax.set_xlabel("token written")
        ax.set_ylim(0, 1.25 * max(means))
    axes[0][0].set_ylabel("ms per token, mean of 64 (first request)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())

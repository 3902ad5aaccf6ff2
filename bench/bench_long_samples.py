"""Quality of long continuations: does the export, at its shipped sampling defaults, loop or drift over 2,000 tokens
written past its context window? The sibling of bench_samples.py, with its measures, over the whole continuation
and per 500-token quarter, against the books' own next 2,000 tokens.

    python bench/bench_long_samples.py                           # the README main command's export, its defaults
    python bench/bench_long_samples.py --openings 8 --new-tokens 1000 --quarter-tokens 250
    python bench/bench_long_samples.py --temperatures 0.5 0.6 --repetition-penalties 1.1 1.2 --plot long.png
    python bench/bench_long_samples.py --results saved-run.txt --plot long.png   # table, choice, plot again

The openings: as bench_samples.py picks them (the first `--opening-words` words of narrative paragraphs of the
validation split, spread evenly over its books); the real continuation of each is the book's next `--new-tokens`
tokens. Every continuation is written by the batching engine as the server and `victorian-gpt generate` write it:
`textgen.load_model` (the front ends' default dtype), `textgen.prepare_request`, `textgen.Engine`, whose context
shifts when the window is full (the engine's own policy, unless `--context-keep` or `--context-discard`, the front
ends' flags, say otherwise). All requests of a run are in flight together; the engine decodes each to the bits it
would get alone, from its own seed (`--seeds`: the request of opening i gets seed + i), so a setting's text does not
depend on what else was measured. EOS is held back (`min_new_tokens`) so every continuation has the real one's
length.

The settings: the export's `generation_config.json` (`textgen.sampling_defaults`), always measured, and the grid of
`--temperatures` x `--top-ps` x `--repetition-penalties` x `--frequency-penalties` where given (the rest from the
defaults).

Measured per setting (bench_samples.py's measures), over each whole continuation and over each quarter (the words
that start in its `--quarter-tokens` tokens): non-word rate, repeated word 4-grams (the share that repeat an earlier
4-gram of the same quarter), longest repeated span, distinct-2; and per quarter the share of its 4-grams that repeat
one anywhere earlier in the continuation (text written again after the context that held it was shifted out).

The question: a setting holds over the length when its repetition stays within the real text's range (bench_samples'
test: neither mean above the real one by more than `--sigmas` standard errors of the difference) over the whole
continuation and in every quarter. The choice, bench_samples' rule: the lowest non-word rate among the settings that
hold; ties go to the higher distinct-2.

Prints one JSON line per setting (after a header line with the real text's figures), then a Markdown table, the
choice, unedited samples (the first `--sample-chars` characters of three continuations at the chosen setting) and
where the longest repeated span of each looping continuation starts; `--plot` draws each measure per quarter.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_samples as bs  # the measures, the openings, the rule

REPO = bs.REPO
DEFAULT_MODEL = bs.DEFAULT_MODEL
DEFAULT_DATASET = bs.DEFAULT_DATASET
KEYS = ("temperature", "top_k", "top_p", "repetition_penalty", "frequency_penalty")


# --- measures per quarter (pure functions on strings, word lists and token offsets)


def quarter_offsets(decode, ids: list[int], quarter_tokens: int) -> list[int]:
    """The character offsets in `decode(ids)` where each quarter of `quarter_tokens` tokens starts (the first is 0):
    the length of the text of the tokens before it. A quarter boundary inside a character (byte-level tokens) falls
    before that character."""
    return [len(decode(ids[:start]).rstrip("\ufffd")) for start in range(0, len(ids), quarter_tokens)]


def located_words(text: str) -> tuple[list[str], list[int]]:
    """`bs.whole_words(text)` with the character offset where each starts."""
    matches = list(bs.WORD.finditer(text))
    if matches and text and bs.WORD.match(text[-1]):  # the end of the text cut the last word
        matches = matches[:-1]
    return [m.group() for m in matches], [m.start() for m in matches]


def split_words(text: str, offsets: list[int]) -> list[list[str]]:
    """The words of `text` in each part that starts at `offsets` (a word belongs to the part it starts in)."""
    tokens, starts = located_words(text)
    parts = [[] for _ in offsets]
    for word, start in zip(tokens, starts):
        parts[bisect.bisect_right(offsets, start) - 1].append(word)
    return parts


def repeats_earlier(parts: list[list[str]], n: int = 4) -> list[float]:
    """For each part, the share of its word n-grams (those that start in it; lower-cased) that repeat an n-gram
    anywhere earlier in the whole text: this part's earlier words or any earlier part's."""
    lowered = [w.lower() for part in parts for w in part]
    grams = bs.ngrams(lowered, n)
    seen, repeated = set(), []
    for gram in grams:
        repeated.append(gram in seen)
        seen.add(gram)
    shares, start = [], 0
    for part in parts:
        own = repeated[start : start + len(part)]  # n-grams starting in this part (the last parts' may be fewer)
        shares.append(sum(own) / len(own) if own else 0.0)
        start += len(part)
    return shares


def longest_repeat(tokens: list[str]) -> tuple[int, int, int]:
    """(length, first start, second start) in words of the longest word span (lower-cased) that occurs twice, as
    `bs.longest_repeated_span` measures it; (0, -1, -1) when no word repeats."""
    lowered = [w.lower() for w in tokens]
    found = (0, -1, -1)
    for n in range(1, len(lowered)):
        first: dict[tuple, int] = {}
        hit = None
        for i, gram in enumerate(bs.ngrams(lowered, n)):
            if gram in first:
                hit = (n, first[gram], i)
                break
            first[gram] = i
        if hit is None:
            break
        found = hit
    return found


def measure_quarters(continuations: list[dict], word_list: set[str]) -> list[dict]:
    """Per quarter, over all continuations (each a dict with `text` and its quarter `offsets`): non-word and garble
    rates pooled over the quarter's words; repeated 4-grams within the quarter, the longest repeated span within it,
    the share of its 4-grams repeating earlier text and distinct-2, averaged over continuations (with standard
    errors)."""
    per_text = [split_words(c["text"], c["offsets"]) for c in continuations]
    earlier = [repeats_earlier(parts) for parts in per_text]
    quarters = []
    for q in range(max(len(parts) for parts in per_text)):
        words_q = [parts[q] for parts in per_text if q < len(parts)]
        pooled = [w for ws in words_q for w in ws]
        rep4 = [bs.repeated_ngram_share(ws, 4) for ws in words_q]
        span = [bs.longest_repeated_span(ws) for ws in words_q]
        back = [shares[q] for shares in earlier if q < len(shares)]
        quarters.append({
            "words": len(pooled),
            "non_word_rate": bs.non_word_rate(pooled, word_list),
            "garble_rate": bs.garble_rate(pooled, word_list),
            "repeated_4gram_share": statistics.fmean(rep4),
            "repeated_4gram_share_se": bs._se(rep4),
            "longest_repeated_span": statistics.fmean(span),
            "longest_repeated_span_se": bs._se(span),
            "longest_repeated_span_max": max(span),
            "repeats_earlier_4gram_share": statistics.fmean(back),
            "repeats_earlier_4gram_share_se": bs._se(back),
            "distinct_2": statistics.fmean(bs.distinct_n(ws, 2) for ws in words_q),
        })
    return quarters


def measure_all(continuations: list[dict], word_list: set[str]) -> dict:
    """The whole continuations' measures (bs.measure) and each quarter's."""
    whole = bs.measure([c["text"] for c in continuations], word_list)
    return {**whole, "quarters": measure_quarters(continuations, word_list)}


def holds(result: dict, real: dict, sigmas: float) -> bool:
    """Repetition within the real text's range over the whole continuation and in every quarter."""
    return bs.within_real_range(result, real, sigmas) and all(
        bs.within_real_range(mine, theirs, sigmas) for mine, theirs in zip(result["quarters"], real["quarters"]))


def choose(results: list[dict], real: dict, sigmas: float) -> dict | None:
    """bench_samples' rule over the whole length: the lowest non-word rate among the settings that hold (whole and
    every quarter); ties go to the higher distinct-2."""
    candidates = [r for r in results if r["do_sample"] and holds(r, real, sigmas)]
    return min(candidates, key=lambda r: (round(r["non_word_rate"], 6), -r["distinct_2"]), default=None)


def loop_report(continuation: dict, decode, real_span_max: int) -> dict | None:
    """Where the longest repeated span of a continuation starts again (in tokens from the continuation's start), when
    it is longer than any the real continuations have (`real_span_max` words); None otherwise."""
    tokens, starts = located_words(continuation["text"])
    length, first, second = longest_repeat(tokens)
    if length <= real_span_max:
        return None
    char = starts[second]
    ids = continuation["ids"]
    lo, hi = 0, len(ids)  # the first token whose text ends after `char`
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(ids[: mid + 1]).rstrip("\ufffd")) <= char:
            lo = mid + 1
        else:
            hi = mid
    return {"opening": continuation["index"], "span_words": length, "first_word": first, "repeat_word": second,
            "repeat_token": lo, "text": " ".join(tokens[second : second + min(length, 12)])}


# --- openings and real continuations


def long_openings(records: list[dict], count: int, opening_words: int, min_words: int, tokenizer,
                  new_tokens: int) -> list[dict]:
    """bench_samples' openings, each with the book's next `new_tokens` tokens (`real_ids`, `real`)."""
    openings = bs.find_openings(records, count, opening_words, min_words)
    books = {r.get("short_book_title", ""): r["text"] for r in records}
    for item in openings:
        text = books[item["book"]]
        cut = item["offset"] + len(item["opening"])
        item["rest"] = text[cut : cut + 12 * new_tokens]  # more characters than `new_tokens` tokens take
    return bs.real_continuations(openings, tokenizer, new_tokens)


# --- generating through the engine


def settings_grid(defaults: dict, args) -> list[dict]:
    """The export's defaults, then the grid's other settings (values not given taken from the defaults)."""
    base = {"do_sample": True, "temperature": defaults["temperature"], "top_k": defaults["top_k"],
            "top_p": defaults["top_p"], "repetition_penalty": defaults["repetition_penalty"],
            "frequency_penalty": 0.0}
    settings = [dict(base, name="defaults")]
    axes = [(key, getattr(args, key + "s") or [base[key]]) for key in
            ("temperature", "top_p", "repetition_penalty", "frequency_penalty")]
    for values in itertools.product(*(v for _, v in axes)):
        setting = dict(base, **dict(zip((k for k, _ in axes), values)))
        setting["name"] = "grid"
        if not any(all(setting[k] == s[k] for k in KEYS) for s in settings):
            settings.append(setting)
    return settings


def request_parameters(setting: dict, new_tokens: int, seed: int) -> dict:
    """`prepare_request` arguments for a setting, as the front ends map their controls (`control_parameters`), with
    EOS held back for `new_tokens` tokens."""
    from serving import textgen

    parameters = textgen.control_parameters(
        max_new_tokens=new_tokens, do_sample=True, temperature=setting["temperature"], top_k=setting["top_k"],
        top_p=setting["top_p"], repetition_penalty=setting["repetition_penalty"], seed=seed)
    if setting.get("frequency_penalty"):
        parameters["frequency_penalty"] = setting["frequency_penalty"]
    return dict(parameters, min_new_tokens=new_tokens)


def continue_all(model, tokenizer, openings: list[dict], settings: list[dict], new_tokens: int, seeds: list[int],
                 context_shift, batch_size: int, header: dict) -> list[list[dict]]:
    """Every opening continued by `new_tokens` tokens under each setting and seed, all requests in flight in one
    engine (`context_shift` None: the engine's own policy). Prints `header`, completed with the engine's context
    shift policy, as the first JSON line. Returns per setting the continuations (`index`, `seed`, `ids`, `text`,
    `shifts`)."""
    from tqdm.auto import tqdm

    from serving import textgen

    longest = max(len(o["prompt_ids"]) for o in openings) + new_tokens
    limits = textgen.Limits.for_model(model, tokenizer, max_total_tokens=longest)
    engine = textgen.Engine(model, tokenizer, limits=limits, timeout=None, max_batch_size=batch_size,
                            max_concurrent_requests=10**6, context_shift=context_shift)
    header.update(context_keep=engine.context_shift.keep, context_discard=engine.context_shift.discard)
    print(json.dumps(header), flush=True)
    try:
        jobs = []
        for setting in settings:
            for seed in seeds:
                for index, item in enumerate(openings):
                    input_ids, params = textgen.prepare_request(
                        tokenizer, item["opening"], limits, **request_parameters(setting, new_tokens, seed + index))
                    jobs.append((setting, seed, index, engine.submit(input_ids, params)))
        results = {id(s): [] for s in settings}
        # progress on stderr also when it goes to a file (a long run in the background): at most every 30 s there
        for setting, seed, index, generation in tqdm(jobs, desc="continuations", unit="", file=sys.stderr,
                                                     mininterval=1 if sys.stderr.isatty() else 30):
            for _ in generation:
                pass
            ids = [t.id for t in generation.tokens]
            results[id(setting)].append({"index": index, "seed": seed, "ids": ids, "shifts": generation.shifts,
                                         "text": tokenizer.decode(ids, skip_special_tokens=True)})
        return [results[id(s)] for s in settings]
    finally:
        engine.close()


# --- output


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _quarters(result: dict, key: str, fmt) -> str:
    return " / ".join(fmt(q[key]) for q in result["quarters"])


def setting_name(r: dict) -> str:
    name = (f"T {r['temperature']:g}, top-k {r['top_k']}, top-p {r['top_p']:g}, "
            f"penalty {r['repetition_penalty']:g}")
    if r.get("frequency_penalty"):
        name += f", frequency penalty {r['frequency_penalty']:g}"
    return name + (" (the export's defaults)" if r.get("name") == "defaults" else "")


def table(results: list[dict], real: dict, chosen: dict | None, sigmas: float) -> str:
    """Rows: the real text, each setting. Per measure the whole continuation, then its quarters (Q1 / Q2 / Q3 / Q4)."""
    rows = [("| text | non-words % | per quarter | repeated 4-grams % | per quarter | longest repeated span "
             "| per quarter | repeats earlier text % per quarter | distinct-2 | holds |"),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in [real, *results]:
        is_real = r is real
        cells = [
            "*real text*" if is_real else setting_name(r),
            _pct(r["non_word_rate"]), _quarters(r, "non_word_rate", _pct),
            _pct(r["repeated_4gram_share"]), _quarters(r, "repeated_4gram_share", _pct),
            f"{r['longest_repeated_span']:.1f}", _quarters(r, "longest_repeated_span", lambda x: f"{x:.1f}"),
            _quarters(r, "repeats_earlier_4gram_share", _pct), f"{r['distinct_2']:.3f}",
            "" if is_real else ("yes" if holds(r, real, sigmas) else "no"),
        ]
        if r is chosen:
            cells = [f"**{c}**" if c else c for c in cells]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


PANELS = (("non_word_rate", "non-words (%)", 100), ("repeated_4gram_share", "repeated 4-grams within the quarter (%)",
                                                     100),
          ("longest_repeated_span", "longest repeated span (words)", 1),
          ("repeats_earlier_4gram_share", "4-grams repeating earlier text (%)", 100))


def plot(results: list[dict], real: dict, chosen: dict | None, path: Path, sigmas: float, title: str,
         quarter_tokens: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    quarters = range(1, len(real["quarters"]) + 1)
    labels = [f"{(q - 1) * quarter_tokens}–{q * quarter_tokens}" for q in quarters]
    cmap = plt.get_cmap("tab10")
    for ax, (key, label, scale) in zip(axes.flat, PANELS):
        values = [scale * q[key] for q in real["quarters"]]
        se = [scale * q.get(f"{key}_se", 0.0) for q in real["quarters"]]
        ax.plot(quarters, values, color="black", lw=2, marker="*", ms=9, label="real text")
        ax.fill_between(quarters, [v - sigmas * s for v, s in zip(values, se)],
                        [v + sigmas * s for v, s in zip(values, se)], color="black", alpha=0.1,
                        label=f"real text ± {sigmas:g} s.e." if f"{key}_se" in real["quarters"][0] else None)
        for i, r in enumerate(results):
            style = {"lw": 2.2, "marker": "o"} if r is chosen else {"lw": 1.2, "marker": ".", "alpha": 0.85}
            ax.plot(quarters, [scale * q[key] for q in r["quarters"]], color=cmap(i % 10),
                    ls="-" if r.get("name") == "defaults" or r is chosen else "--",
                    label=setting_name(r) + (" — chosen" if r is chosen else ""), **style)
        ax.set_xticks(list(quarters), labels, fontsize=8)
        ax.set_xlabel("tokens of the continuation", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, names = axes.flat[1].get_legend_handles_labels()  # a panel with the real text's band
    fig.legend(handles, names, fontsize=7, loc="lower center", ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.022 * math.ceil((len(results) + 2) / 2), 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args, header: dict, results: list[dict]):
    """The table, the choice, samples, loops and the plot, from the measured settings."""
    real = header["real"]
    for r in results:
        r["holds"] = holds(r, real, args.sigmas)
    chosen = choose(results, real, args.sigmas)
    print("\n" + table(results, real, chosen, args.sigmas) + "\n")
    print(f"{header['openings']} openings from {header['books']} books, seeds {header['seeds']}, "
          f"{header['new_tokens']} new tokens in quarters of {header['quarter_tokens']}; "
          f"real continuations: longest repeated span at most {real['longest_repeated_span_max']} words")
    defaults = next((r for r in results if r.get("name") == "defaults"), None)
    if defaults is not None:
        print(f"the export's defaults {'hold' if defaults['holds'] else 'do not hold'} over "
              f"{header['new_tokens']} tokens")
    if chosen is None:
        print("chosen: none (no setting keeps its repetition within the real text's range in every quarter)")
    else:
        print("chosen: " + json.dumps({k: chosen[k] for k in KEYS}))
    shown = chosen or defaults or results[0]
    print(f"\nsamples at {setting_name(shown)} (unedited, the first {args.sample_chars} characters):")
    for example in shown["examples"]:
        print(f"\n```text\n{example['opening']}{example['text']}\n```")
    for r in results:
        for loop in r["loops"]:
            print(f"loop: {setting_name(r)}, opening {loop['opening']} (seed {loop['seed']}): a span of "
                  f"{loop['span_words']} words repeats from token {loop['repeat_token']}: \"{loop['text']}…\"")
    if args.plot != "none":
        model = Path(header["model"])
        name = str(model.relative_to(REPO)) if model.is_absolute() and model.is_relative_to(REPO) else str(model)
        title = (f"{name}: {header['openings']} validation openings x {len(header['seeds'])} seed(s), "
                 f"{header['new_tokens']} new tokens (context {header['context']}, keep {header['context_keep']}, "
                 f"discard {header['context_discard']:g})")
        plot(results, real, chosen, Path(args.plot), args.sigmas, title, header["quarter_tokens"])
        print(f"plot: {args.plot}")
    return results, real, chosen


def replay(args):
    """`--results`: the table, choice, samples and plot of a saved run (its JSON lines), without generating."""
    lines = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.startswith("{")]
    header = next(line for line in lines if line.get("bench") == "long_samples")
    return report(args, header, [line["setting"] for line in lines if "setting" in line])


def _rounded(value):
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def bench_mode(args, parser):
    from common import require_dataset

    from serving import textgen

    dataset = require_dataset(parser, args.dataset)
    start = time.time()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model, tokenizer = textgen.load_model(args.model, dtype=args.dtype, quantize=args.quantize)
    window = textgen.context_length(model, tokenizer)
    shift = None  # the engine's own choice: the policy the front ends follow by default
    if args.context_keep is not None or args.context_discard is not None:
        default = textgen.ContextShift()
        shift = textgen.ContextShift(keep=default.keep if args.context_keep is None else args.context_keep,
                                     discard=default.discard if args.context_discard is None else args.context_discard)
        try:
            shift.check(window)
        except ValueError as error:
            parser.error(str(error))
    openings = long_openings(bs.read_split(dataset, args.validation_split), args.openings, args.opening_words,
                             args.min_paragraph_words, tokenizer, args.new_tokens)
    if len(openings) < min(args.openings, 2):
        parser.error(f"found {len(openings)} narrative paragraphs in {dataset}'s {args.validation_split} split; "
                     f"need {args.openings}")
    word_list = bs.build_word_list(r["text"] for r in bs.read_split(dataset, args.train_split))
    decode = tokenizer.decode
    real_texts = [{"index": i, "ids": o["real_ids"], "text": o["real"],
                   "offsets": quarter_offsets(decode, o["real_ids"], args.quarter_tokens)}
                  for i, o in enumerate(openings)]
    real = measure_all(real_texts, word_list)
    defaults = textgen.sampling_defaults(model.generation_config)
    header = {"bench": "long_samples", "model": str(args.model), "dataset": str(dataset), "openings": len(openings),
              "books": len({o["book"] for o in openings}), "new_tokens": args.new_tokens,
              "quarter_tokens": args.quarter_tokens, "seeds": args.seeds, "context": window,
              "dtype": str(getattr(model, "serving_dtype", model.dtype)), "word_list_size": len(word_list),
              "defaults": defaults, "real": _rounded({k: v for k, v in real.items() if k != "examples_non_words"})}
    settings = settings_grid(defaults, args)
    continuations = continue_all(model, tokenizer, openings, settings, args.new_tokens, args.seeds, shift,
                                 args.batch_size, header)
    results = []
    for setting, texts in zip(settings, continuations):
        for c in texts:
            c["offsets"] = quarter_offsets(decode, c["ids"], args.quarter_tokens)
        result = {**setting, **measure_all(texts, word_list)}
        result["shifts"] = statistics.fmean(c["shifts"] for c in texts)
        result["loops"] = []
        for c in texts:
            loop = loop_report(c, decode, real["longest_repeated_span_max"])
            if loop is not None:
                result["loops"].append({**loop, "seed": c["seed"]})
        first_seed = [c for c in texts if c["seed"] == args.seeds[0]]
        result["examples"] = [{"opening": openings[c["index"]]["opening"], "text": c["text"][: args.sample_chars]}
                              for c in first_seed[: args.samples]]
        result["holds"] = holds(result, real, args.sigmas)
        results.append(_rounded(result))
        print(json.dumps({"setting": results[-1]}), flush=True)
    print(f"{len(settings)} settings x {len(openings)} openings x {len(args.seeds)} seed(s) in "
          f"{time.time() - start:.0f} s", file=sys.stderr)
    return report(args, header, results)


def main(argv=None):
    from serving.textgen import DTYPE_CHOICES, QUANTIZE_CHOICES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    bs.add_source_arguments(parser)
    parser.add_argument("--openings", type=int, default=12,
                        help="openings, spread over the books (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=2000, help="tokens per continuation, real and generated "
                                                                     "(default: %(default)s)")
    parser.add_argument("--quarter-tokens", type=int, default=500,
                        help="tokens per part measured on its own (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1919],
                        help="one draw per seed (the request of opening i gets seed + i); draws are pooled")
    parser.add_argument("--temperatures", type=float, nargs="+", default=None,
                        help="grid values (default: the export's only)")
    parser.add_argument("--top-ps", dest="top_ps", type=float, nargs="+", default=None)
    parser.add_argument("--repetition-penalties", dest="repetition_penaltys", type=float, nargs="+", default=None)
    parser.add_argument("--frequency-penalties", dest="frequency_penaltys", type=float, nargs="+", default=None,
                        help="OpenAI's frequency penalty (the server's /v1 routes), 0 = off")
    parser.add_argument("--context-keep", type=int, default=None, metavar="N",
                        help="as `victorian-gpt generate --context-keep` (default: the engine's, as the front ends')")
    parser.add_argument("--context-discard", type=float, default=None, metavar="F",
                        help="as `victorian-gpt generate --context-discard` (default: the engine's)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="as the front ends' --dtype (default: %(default)s)")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                        help="as the front ends' --quantize (default: none)")
    parser.add_argument("--batch-size", type=int, default=32, help="the engine's max_batch_size (default: %(default)s)")
    parser.add_argument("--sigmas", type=float, default=2.0,
                        help="standard errors of slack for 'within the real text's range' (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=3, help="continuations shown per setting (default: %(default)s)")
    parser.add_argument("--sample-chars", type=int, default=400)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--plot", default="none", help="write the plot here, e.g. docs/long.png (default: none)")
    parser.add_argument("--results", default=None,
                        help="a saved run's output (its JSON lines): print its table and choice, draw its plot")
    args = parser.parse_args(argv)
    if args.results:
        return replay(args)
    if not Path(args.model).is_dir() or not (Path(args.model) / "config.json").is_file():
        parser.error(f"no exported model at {args.model} (a folder with config.json: the training's output_dir/model; "
                     "or give --model PATH)")
    for name in ("openings", "opening_words", "new_tokens", "quarter_tokens", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.quarter_tokens > args.new_tokens:
        parser.error(f"--quarter-tokens ({args.quarter_tokens}) must be at most --new-tokens ({args.new_tokens})")
    return bench_mode(args, parser)


if __name__ == "__main__":
    main()

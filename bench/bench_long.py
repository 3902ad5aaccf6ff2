"""Long text: bits per byte of the tokens past the model's window, on whole held-out books.

    python bench/bench_long.py                                   # the README main command's export, the PG19 sample
    python bench/bench_long.py --books 3 --max-tokens-per-book 1024 --plot long.png
    python bench/bench_long.py --results long.jsonl --plot long.png     # tables and plot again from a saved run

When a sequence outgrows the model's context of W tokens, the context shifts (serving/textgen/context_shift.py): the
first `keep` tokens stay, the oldest `discard` fraction of the rest is dropped, and the sequence goes on. Each shift
policy is measured teacher-forced: the model reads a book from its first token, the context shifting exactly as
generation would shift it, and each token's NLL is taken from the context the policy has kept when that token comes
(`ContextShift.apply` for the kept ids; for rotary positions `shift_cache` + `rotary_frequencies` on the real KV cache,
the book fed in chunks between shifts; learned positions encode the kept tokens again). Against two references on the
same tokens, computed with `victorian-gpt eval --stride`'s windows (training/evaluate.py):
- ceiling: a full window at every token (stride 1: each token predicted from the W tokens before it);
- floor: a fresh window every W tokens (stride W: a token sees the tokens since the last window boundary, 1 .. W).

Scored: the tokens past the window, positions W .. W + N - 1 of each book (N = --max-tokens-per-book; before W every
method sees the whole book so far). The policy is chosen on the validation split's books (lowest bits per byte past
the window), the test split's figures reported.

RoPE past the trained length (rotary models): sliding windows of s x W tokens (s in --rope-factors; stride W/2) with
the rotary frequencies replaced at run time, as transformers computes them (`modeling_rope_utils`): `dynamic` (NTK
scaling at the window's length: theta x s^(d/(d-2))) and `yarn` (factor s, original_max_position_embeddings W; its
attention factor scales cos and sin), and unscaled rotary (plain extrapolation), against the chosen policy and a
sliding window of W (stride W/2) at the trained length, on the test books' positions s_max x W .. s_max x W + R - 1
(R = --rope-tokens-per-book).

Prints one JSON line per method and split, then Markdown tables; `--plot` writes bits per byte against the position
in the book (buckets of W/2 tokens; test split) for every policy, the ceiling and the floor.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_MODEL = REPO / "runs" / "pg19-sample-cpu" / "model"
DEFAULT_DATASET = REPO.parent / "shared" / "data" / "pg19-sample"
MAIN_COMMAND = ("accelerate launch --config_file accelerate_config.yaml -m training.train "
                "--config training/configs/pg19-sample-cpu.yaml")


# ----------------------------------------------------------------------------------------------------------------------
# per-token NLL under each way of reading a book


@torch.no_grad()
def policy_nll(model, ids: np.ndarray, shift, window: int, frequencies) -> tuple[np.ndarray, np.ndarray, int]:
    """Teacher-forced NLL of tokens 1 .. len(ids) - 1 of a book read from its start with the context shifting as
    `shift` (a `ContextShift`) shifts it whenever the window is full, as the engine does: the context is the kept
    tokens, the last of which is the next one fed; the KV cache holds the others. Returns (NLL per target, context
    length each target was predicted from, number of shifts)."""
    from transformers import DynamicCache

    from serving.textgen.context_shift import shift_cache

    device = next(model.parameters()).device
    n = len(ids)
    nll = np.empty(n - 1, dtype=np.float64)
    seen = np.empty(n - 1, dtype=np.int64)
    context = [int(ids[0])]
    cache = DynamicCache(config=model.config)
    cached, target, shifts = 0, 1, 0
    while target < n:
        if cached == window:  # full: the context (window + the token to feed) shifts
            kept = shift.apply(context)
            if frequencies is not None:  # rotary: drop from the cache, rotate the later keys back; no recomputation
                shift_cache(cache.layers, shift, cached, frequencies)
            else:  # learned positions: the kept tokens encoded again from position 0
                cache = DynamicCache(config=model.config)
                model(input_ids=torch.tensor([kept[:-1]], device=device), cache=cache, use_cache=True)
            context, cached, shifts = kept, len(kept) - 1, shifts + 1
        m = min(window - cached, n - target)
        inputs = [context[-1]] + [int(t) for t in ids[target : target + m - 1]]
        logits = model(input_ids=torch.tensor([inputs], device=device), cache=cache, use_cache=True).logits[0]
        targets = torch.as_tensor(ids[target : target + m].astype(np.int64), device=device)
        nll[target - 1 : target - 1 + m] = F.cross_entropy(logits.float(), targets, reduction="none").double().cpu()
        seen[target - 1 : target - 1 + m] = np.arange(cached + 1, cached + m + 1)
        context.extend(int(t) for t in ids[target : target + m])
        cached, target = cached + m, target + m
    return nll, seen, shifts


def strided_nll(model, ids: np.ndarray, window: int, stride: int, first_target: int = 1, batch_size: int = 8):
    """NLL of targets first_target .. len(ids) - 1 under `victorian-gpt eval --stride` windows (training/evaluate.py);
    windows that score only earlier targets are skipped."""
    from training.evaluate import stride_windows, window_nll

    windows = [w for w in stride_windows(len(ids), window, stride) if w[1] >= first_target]
    device = next(model.parameters()).device
    nll = window_nll(model, ids, windows, batch_size, device)
    first_scored = windows[0][1] - windows[0][2] + 1
    return nll[first_target - first_scored :]


# ----------------------------------------------------------------------------------------------------------------------
# rotary frequencies replaced at run time (the model files are left alone)


def scaled_rotary(config, kind: str, factor: float):
    """(inv_freq, attention_factor) of transformers' rope type `kind` ("default", "dynamic", "yarn") for a model of
    `config` (VictorianGPTConfig) read at `factor` x its context, from transformers' own `ROPE_INIT_FUNCTIONS`."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    window = config.n_positions
    parameters = {"rope_type": kind, "rope_theta": float(config.rope_theta)}
    if kind == "yarn":
        parameters.update(factor=float(factor), original_max_position_embeddings=window)
    elif kind == "dynamic":
        parameters.update(factor=1.0)  # NTK scaling by the length itself: theta x (length / window)^(d / (d - 2))
    llama = LlamaConfig(hidden_size=config.n_embd, num_attention_heads=config.n_head, rope_parameters=parameters,
                        max_position_embeddings=int(window * factor) if kind == "yarn" else window)
    if kind == "dynamic":
        inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[kind](llama, seq_len=int(window * factor))
    elif kind == "yarn":
        inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[kind](llama)
    else:
        head_dim = config.n_embd // config.n_head
        inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        attention_factor = 1.0
    return inv_freq.float(), float(attention_factor)


@contextmanager
def rotary_replaced(model, inv_freq: torch.Tensor, attention_factor: float):
    """The model's rotary embedding computed from `inv_freq`, cos and sin scaled by `attention_factor` (as
    transformers' rotary classes apply it), by replacing `rotary_embeddings` in its remote-code module while the
    block runs."""
    module = sys.modules[type(model).__module__]
    original = getattr(module, "rotary_embeddings", None)
    if original is None:
        raise ValueError(f"{module.__name__} has no rotary_embeddings to replace")

    def rotary_embeddings(position_ids, head_dim, theta, dtype):
        freqs = position_ids[..., None].float() * inv_freq.to(position_ids.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * attention_factor).to(dtype), (emb.sin() * attention_factor).to(dtype)

    module.rotary_embeddings = rotary_embeddings
    try:
        yield
    finally:
        module.rotary_embeddings = original


def check_rotary_replacement(model, ids: np.ndarray):
    """The replacement reaches the model: with the unscaled frequencies it gives the model's own logits, with YaRN's
    other ones."""
    x = torch.as_tensor(ids[:64].astype(np.int64))[None]
    with torch.no_grad():
        own = model(input_ids=x).logits
        with rotary_replaced(model, *scaled_rotary(model.config, "default", 1.0)):
            same = model(input_ids=x).logits
        with rotary_replaced(model, *scaled_rotary(model.config, "yarn", 2.0)):
            other = model(input_ids=x).logits
    if not torch.allclose(own, same, atol=1e-5) or torch.allclose(own, other, atol=1e-3):
        raise RuntimeError("replacing the model's rotary embedding does not act as expected")


# ----------------------------------------------------------------------------------------------------------------------
# figures


def summarise(name: str, split: str, parts: list[dict], byte_table: np.ndarray, bucket: int, **extra) -> dict:
    """One method on one split: `parts` holds, per book, the NLL of targets `start ..` and the book's ids. Besides the
    totals: `buckets`, NLL and bytes per bucket of positions summed over the books (the plot), and `segments`, NLL
    and bytes per bucket of each book (paired comparisons of two methods on the same tokens, `paired`)."""
    segments = []
    for p in parts:
        positions = np.arange(p["start"], p["start"] + len(p["nll"]))
        b = byte_table[p["ids"][positions]]
        keys = positions // bucket
        segments.append([(int(k), float(p["nll"][keys == k].sum()), int(b[keys == k].sum())) for k in np.unique(keys)])
    buckets: dict[int, list[float]] = {}
    for book in segments:
        for k, nll, bytes_ in book:
            acc = buckets.setdefault(k, [0.0, 0])
            acc[0] += nll
            acc[1] += bytes_
    book_nll = [sum(x[1] for x in book) for book in segments]
    book_bytes = [sum(x[2] for x in book) for book in segments]
    return {"bench": "long_text", "method": name, "split": split, **extra,
            "bits_per_byte": round(sum(book_nll) / math.log(2) / sum(book_bytes), 5),
            "tokens": sum(len(p["nll"]) for p in parts), "bytes": sum(book_bytes), "books": len(parts),
            "per_book_bits_per_byte": [round(n / math.log(2) / b, 5) for n, b in zip(book_nll, book_bytes)],
            "bucket_tokens": bucket,
            "buckets": {str(k): [round(v[0], 4), v[1]] for k, v in sorted(buckets.items())},
            "segments": [[round(nll, 6), bytes_] for book in segments for _, nll, bytes_ in book]}


def paired(a: dict, b: dict) -> tuple[float, float]:
    """Bits per byte of `a` minus `b` on the same tokens, and its standard error from the segments' paired
    differences (segments of `bucket_tokens` tokens of one book, taken as independent)."""
    sa, sb = np.array(a["segments"]), np.array(b["segments"])
    if sa.shape != sb.shape or not np.array_equal(sa[:, 1], sb[:, 1]):
        raise ValueError(f"{a['method']} and {b['method']} were not scored on the same tokens")
    d = (sa[:, 0] - sb[:, 0]) / math.log(2)
    total = sa[:, 1].sum()
    if len(d) < 2:  # one segment: no spread to estimate from
        return float(d.sum() / total), math.nan
    return float(d.sum() / total), float(math.sqrt(len(d)) * d.std(ddof=1) / total)


def policy_name(keep: int, discard: float) -> str:
    return f"shift keep={keep} discard={discard:g}"


def choose(lines: list[dict], split: str, incumbent: str, sigmas: float) -> dict:
    """The policy with the lowest bits per byte past the window on `split`, unless the incumbent (the defaults in
    place) is within `sigmas` standard errors of it: a change of defaults needs a measured win."""
    policies = [line for line in lines if line.get("bench") == "long_text" and line["split"] == split
                and line["method"].startswith("shift") and line.get("range", "past") == "past"]
    best = min(policies, key=lambda line: line["bits_per_byte"])
    tied = []
    for line in policies:
        delta, error = paired(line, best)
        if line is best or delta <= sigmas * error:  # (one segment: no error, no tie)
            tied.append(line["method"])
    current = next((line for line in policies if line["method"] == incumbent), None)
    chosen = current if current is not None and incumbent in tied else best
    return {"bench": "long_text_choice", "method": chosen["method"], "keep": chosen["keep"],
            "discard": chosen["discard"], "select_split": split, "bits_per_byte": chosen["bits_per_byte"],
            "lowest": best["method"], "incumbent": incumbent, "sigmas": sigmas,
            "within_sigmas_of_lowest": tied,
            "rule": f"the lowest bits/byte, unless the incumbent is within {sigmas:g} standard errors of it"}


def tables(lines: list[dict]) -> str:
    header = next(line for line in lines if line.get("bench") == "long_text_setup")
    w = header["window"]
    chosen = next((line for line in lines if line.get("bench") == "long_text_choice"), None)
    by = {(line["method"], line["split"], line.get("range", "past")): line for line in lines
          if line.get("bench") == "long_text"}
    test, validation = header["report_split"], header["select_split"]
    ceiling = by.get(("ceiling", test, "past"))

    def versus(line, other):
        if line is None or other is None:
            return "–"
        if line is other:
            return "0"
        delta, error = paired(line, other)
        return f"{delta:+.5f} ± {error:.5f}" if math.isfinite(error) else f"{delta:+.5f}"

    def base(split, range_="past"):
        return by.get((chosen["method"], split, range_)) if chosen else None

    out = [(f"Bits per byte of the tokens past the window: positions {w} .. {w + header['max_tokens_per_book'] - 1} "
            f"of each book, {header['books']} books per split, W = {w}. Differences are paired (the same tokens), "
            f"± one standard error over segments of {header.get('bucket', w // 2)} tokens."), "",
           (f"| method | {validation} | vs chosen | {test} | vs chosen | {test} − ceiling | shifts / 1,000 tokens | "
            "mean context |"),
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    names = [m for (m, s, r) in by if s == validation and r == "past" and m.startswith("shift")]
    for name in sorted(names, key=lambda m: by[(m, validation, "past")]["bits_per_byte"]):
        v, t = by[(name, validation, "past")], by.get((name, test, "past"))
        star = " **(chosen)**" if chosen and name == chosen["method"] else ""
        out.append(f"| {name}{star} | {v['bits_per_byte']:.5f} | {versus(v, base(validation))} | "
                   + (f"{t['bits_per_byte']:.5f} | {versus(t, base(test))} | {versus(t, ceiling)} | " if t
                      else "– | – | – | ")
                   + f"{1000 * v['shifts'] / v['tokens_read']:.2f} | {v['mean_context']:.0f} |")
    for name, what in (("ceiling", "stride 1"), ("floor", f"stride {w}")):
        t = by.get((name, test, "past"))
        if t:
            out.append(f"| {name} ({what}) | – | – | {t['bits_per_byte']:.5f} | {versus(t, base(test))} | "
                       f"{versus(t, ceiling)} | – | {t['mean_context']:.0f} |")
    if chosen:
        out += ["", (f"Chosen: keep={chosen['keep']}, discard={chosen['discard']:g} ({chosen['rule']}; lowest on "
                     f"{validation}: {chosen['lowest']}; within {chosen['sigmas']:g} standard errors of it: "
                     f"{', '.join(chosen['within_sigmas_of_lowest'])}).")]
    rope = [line for (m, s, r), line in by.items() if r == "rope"]
    if rope:
        first = rope[0]
        out += ["", (f"RoPE past the trained length: {test} split, positions {first['first_position']} .. "
                     f"{first['first_position'] + header['rope_tokens_per_book'] - 1} of each book; differences "
                     "paired, ± one standard error."), "",
                f"| method | window | context per token | {test} bits/byte | vs chosen policy |",
                "| --- | ---: | --- | ---: | ---: |"]
        for line in sorted(rope, key=lambda x: (x.get("window", w), x["bits_per_byte"])):
            out.append(f"| {line['method']} | {line.get('window', w)} | {line['context']} | "
                       f"{line['bits_per_byte']:.5f} | {versus(line, base(test, 'rope'))} |")
    return "\n".join(out)


def plot(lines: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header = next(line for line in lines if line.get("bench") == "long_text_setup")
    chosen = next((line["method"] for line in lines if line.get("bench") == "long_text_choice"), None)
    test, w = header["report_split"], header["window"]
    series = [line for line in lines if line.get("bench") == "long_text" and line["split"] == test
              and line.get("range", "past") == "book"]
    ceiling = next(s for s in series if s["method"] == "ceiling")

    def curve(line):
        keys = sorted(int(k) for k in line["buckets"])
        x = np.array([(k + 0.5) * line["bucket_tokens"] for k in keys])
        y = np.array([line["buckets"][str(k)][0] / math.log(2) / line["buckets"][str(k)][1] for k in keys])
        return x, y

    _cx, cy = curve(ceiling)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 9), sharex=True, height_ratios=(3, 2))
    policies = sorted((s for s in series if s["method"].startswith("shift")), key=lambda s: (s["keep"], s["discard"]))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(policies)))
    for line, colour in zip(policies, colours):
        x, y = curve(line)
        bold = line["method"] == chosen
        style = {"color": "red" if bold else colour, "lw": 2.2 if bold else 1.0, "alpha": 1.0 if bold else 0.8,
                     "ls": "-" if line["discard"] == 0.5 else ("--" if line["discard"] < 0.5 else ":")}
        label = line["method"] + (" (chosen)" if bold else "")
        top.plot(x, y, label=label, marker=".", **style)
        bottom.plot(x, y - cy[: len(y)], marker=".", **style)
    for name, style in (("ceiling", {"color": "black", "lw": 2}), ("floor", {"color": "grey", "lw": 2, "ls": "-."})):
        line = next(s for s in series if s["method"] == name)
        x, y = curve(line)
        top.plot(x, y, label=f"{name} ({'stride 1' if name == 'ceiling' else f'stride {w}'})", **style)
        bottom.plot(x, y - cy[: len(y)], **style)
    for ax in (top, bottom):
        ax.axvline(w, color="black", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
    top.set_ylabel("bits per byte")
    bottom.set_ylabel("bits per byte − ceiling")
    bottom.set_xlabel(f"position in the book (tokens; buckets of {ceiling['bucket_tokens']}; the window is {w})")
    model = Path(header["model"])
    model = model.relative_to(REPO) if model.is_relative_to(REPO) else model
    top.set_title(f"Past the window: {header['books']} {test} books of the PG19 sample, {model}")
    top.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------
# the run


def load_books(dataset, split: str, tokenizer, count: int, length: int) -> list[np.ndarray]:
    """The first `count` books of a split, tokenized as the training blocks are (tokens + EOS), cut to `length`."""
    from training.evaluate import book_ids

    books = []
    for ids in book_ids(str(dataset), split, tokenizer):
        books.append(ids[:length])
        if len(books) == count:
            break
    return books


def run(args, parser) -> list[dict]:
    from common import emit, environment, require_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serving.textgen.context_shift import DEFAULT_DISCARD, DEFAULT_KEEP, ContextShift, rotary_frequencies
    from training.measures import token_byte_lengths
    from victorian_gpt.utils.modeling import context_length

    dataset = require_dataset(parser, args.dataset)
    model_path = Path(args.model)
    if not (model_path / "config.json").is_file():
        parser.error(f"no exported model at {model_path}: train one with the README's main command "
                     f"({MAIN_COMMAND}), or pass --model PATH")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    w = context_length(model.config)
    policies = [ContextShift(keep, discard) for keep in args.keep for discard in args.discard]
    for policy in policies:
        try:
            policy.check(w)
        except ValueError as error:
            parser.error(str(error))
    frequencies = rotary_frequencies(model)
    rotary = getattr(model.config, "position_embedding_type", None) == "rope" and frequencies is not None
    byte_table = token_byte_lengths(tokenizer)
    n = args.max_tokens_per_book
    bucket = args.bucket or w // 2
    rope_start = max(args.rope_factors, default=1) * w
    rope_end = rope_start + args.rope_tokens_per_book if rotary and args.rope_factors else 0
    split_books = {}  # both splits read first: too few or too short books are an error before anything is measured
    for split in (args.select_split, args.report_split):
        length = max(w + n, rope_end if split == args.report_split else 0)
        books = load_books(dataset, split, tokenizer, args.books, length)
        if len(books) < args.books or any(len(b) < length for b in books):
            parser.error(f"{split}: need {args.books} books of at least {length} tokens; have "
                         f"{[len(b) for b in books]} (lower --books, --max-tokens-per-book or "
                         "--rope-tokens-per-book)")
        split_books[split] = books
    header = {"bench": "long_text_setup", "model": str(args.model), "dataset": str(dataset), "window": w,
              "bucket": bucket,
              "books": args.books, "max_tokens_per_book": n, "rope_tokens_per_book": args.rope_tokens_per_book,
              "rope_factors": args.rope_factors if rotary else [], "select_split": args.select_split,
              "report_split": args.report_split, "rotary": rotary, **environment()}
    lines = [header]
    emit(header)
    started = time.perf_counter()

    def record(line):
        line["elapsed_s"] = round(time.perf_counter() - started, 1)
        lines.append(line)
        emit(line)

    policy_runs: dict = {}  # (split, name) -> list of (ids, nll, seen, shifts)
    for split, books in split_books.items():
        for policy in policies:
            name = policy_name(policy.keep, policy.discard)
            runs = [(ids, *policy_nll(model, ids, policy, w, frequencies)) for ids in books]
            policy_runs[(split, name)] = runs
            extra = {"keep": policy.keep, "discard": policy.discard, "shifts": sum(r[3] for r in runs),
                         "tokens_read": sum(len(r[0]) for r in runs)}
            past = [{"ids": ids, "nll": nll[w - 1 : w - 1 + n], "start": w} for ids, nll, _, _ in runs]
            seen = np.concatenate([s[w - 1 : w - 1 + n] for _, _, s, _ in runs])
            record(summarise(name, split, past, byte_table, bucket, **extra, mean_context=float(seen.mean())))
            if split == args.report_split:
                whole = [{"ids": ids, "nll": nll[: w - 1 + n], "start": 1} for ids, nll, _, _ in runs]
                record(summarise(name, split, whole, byte_table, bucket, range="book", **extra))
        if split == args.select_split:
            choice = choose(lines, split, policy_name(DEFAULT_KEEP, DEFAULT_DISCARD), args.sigmas)
            lines.append(choice)
            emit(choice)
            continue
        for name, stride in (("ceiling", 1), ("floor", w)):  # the references, on the report split only
            nlls = [strided_nll(model, ids[: w + n], w, stride, first_target=1, batch_size=args.batch_size)
                    for ids in books]
            context = np.concatenate([np.minimum(np.arange(1, w + n), w) if stride == 1
                                      else (np.arange(1, w + n) - 1) % w + 1 for _ in books])
            past = [{"ids": ids, "nll": nll[w - 1 :], "start": w} for ids, nll in zip(books, nlls)]
            record(summarise(name, split, past, byte_table, bucket, stride=stride,
                             mean_context=float(context.reshape(len(books), -1)[:, w - 1 :].mean())))
            whole = [{"ids": ids, "nll": nll, "start": 1} for ids, nll in zip(books, nlls)]
            record(summarise(name, split, whole, byte_table, bucket, stride=stride, range="book"))
        if rope_end:
            rope_section(args, model, books, policy_runs, choice, byte_table, w, rope_start, rope_end, record)
    return lines


def rope_section(args, model, books, policy_runs, choice, byte_table, w, start, end, record):
    """Sliding windows longer than the trained context with scaled rotary frequencies, against the chosen policy and
    the trained window, on targets start .. end - 1 of the report split's books."""
    split = args.report_split
    check_rotary_replacement(model, books[0])
    stride = w // 2

    def rope_line(name, nlls, **extra):
        parts = [{"ids": ids, "nll": nll[: end - start], "start": start} for ids, nll in zip(books, nlls)]
        line = summarise(name, split, parts, byte_table, w // 2, range="rope", first_position=start, **extra)
        record(line)

    runs = policy_runs[(split, choice["method"])]
    seen = np.concatenate([s[start - 1 : end - 1] for _, _, s, _ in runs])
    rope_line(choice["method"], [nll[start - 1 : end - 1] for _, nll, _, _ in runs], window=w,
              context=f"{seen.min()} .. {seen.max()}")
    rope_line("sliding window", [strided_nll(model, ids[:end], w, stride, start, args.batch_size) for ids in books],
              window=w, context=f"{w - stride + 1} .. {w}")
    for factor in args.rope_factors:
        length = factor * w
        for kind, label in (("default", "rotary unscaled"), ("dynamic", "dynamic NTK"), ("yarn", "YaRN")):
            inv_freq, attention_factor = scaled_rotary(model.config, kind, factor)
            with rotary_replaced(model, inv_freq, attention_factor):
                nlls = [strided_nll(model, ids[:end], length, stride, start, max(1, args.batch_size // factor))
                        for ids in books]
            theta = float(inv_freq[1]) ** (-len(inv_freq))  # inv_freq[i] = theta^(-2i/d): the base it amounts to
            rope_line(f"{label} x{factor}", nlls, window=length, context=f"{length - stride + 1} .. {length}",
                      rope_type=kind, factor=factor, attention_factor=round(attention_factor, 5),
                      theta=round(theta, 1) if kind != "yarn" else None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="an exported model folder (default: %(default)s)")
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET), help="a PG19-format folder (default: %(default)s)")
    parser.add_argument("--select-split", default="validation", help="where the policy is chosen")
    parser.add_argument("--report-split", default="test", help="where the figures are reported")
    parser.add_argument("--books", type=int, default=7, help="books per split, the first in file order")
    parser.add_argument("--max-tokens-per-book", type=int, default=2048,
                        help="tokens scored past the window per book: positions W .. W + N - 1")
    parser.add_argument("--keep", type=int, nargs="+", default=[0, 4, 16, 64])
    parser.add_argument("--discard", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--rope-factors", type=int, nargs="*", default=[2, 4],
                        help="windows of s x W with scaled rotary frequencies (rotary models; none: skip)")
    parser.add_argument("--rope-tokens-per-book", type=int, default=2048,
                        help="tokens scored per book for the RoPE comparison, from s_max x W on")
    parser.add_argument("--bucket", type=int, default=None,
                        help="tokens per plotted bucket and per segment of the paired standard errors (default: W / 2)")
    parser.add_argument("--sigmas", type=float, default=2.0,
                        help="a policy replaces the incumbent defaults (serving/textgen/context_shift.py) only when "
                        "it is lower by more than this many standard errors (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward for the references")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--plot", default=None, help="write the plot here (PNG)")
    parser.add_argument("--results", default=None, help="tables and plot from a saved run's JSON lines; no model run")
    args = parser.parse_args(argv)
    if args.max_tokens_per_book < 1 or args.books < 1 or args.rope_tokens_per_book < 1:
        parser.error("--books, --max-tokens-per-book and --rope-tokens-per-book must be 1 or more")
    if args.select_split == args.report_split:
        parser.error(f"--select-split and --report-split must differ (both {args.select_split}): the policy is chosen "
                     "on one split and reported on the other")
    if args.results:
        lines = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.startswith("{")]
    else:
        lines = run(args, parser)
    print()
    print(tables(lines))
    if args.plot:
        plot(lines, Path(args.plot))
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sample quality against sampling settings: which temperature, top-p, repetition penalty (and min-p) make the export
write the fewest non-words without repeating itself more than real Victorian prose does.

    python bench/bench_samples.py                                   # the README main command's export, the default grid
    python bench/bench_samples.py --model runs/x/model --temperatures 0.7 0.8 --top-ps 0.95 --repetition-penalties 1.1
    python bench/bench_samples.py --samples                         # README samples at the export's own defaults
    python bench/bench_samples.py --samples --temperature 0.8 --top-p 0.95 --repetition-penalty 1.1

The openings: the first `--opening-words` words of narrative paragraphs of the validation split (paragraphs of prose:
long enough, ending a sentence, no headings, contents, verse or front matter), spread evenly over its books. Every
setting continues all of them by `--new-tokens` tokens in one batched, seeded `generate()` call (EOS suppressed, so
every continuation has the same length as the real one it is compared with: the next `--new-tokens` tokens of the book).

Measured per setting, on the words (runs of letters) of the continuations:
- non-word rate: words absent from a word list built from the training split (lower-cased); the real continuations'
  own rate is the floor (names, coinages and misprints the training books never had);
- garble: all-capitals words of two or more letters that are not words (`IFANET`, `MLRTPATOMBERESS`);
- repetition: the share of word 4-grams that repeat an earlier one in the same continuation, and the longest word span
  that occurs twice, each against the real continuations;
- distinct-2: distinct word bigrams / word bigrams per continuation.
The model's own bits per byte on the real continuations (given the same openings) is printed beside, for reference.

The choice: the lowest non-word rate among the settings whose repetition stays within the real text's range,
meaning neither mean (repeated 4-gram share, longest repeated span) exceeds the real continuations' mean by more than
two standard errors of the difference (`--sigmas`); ties go to the higher distinct-2. Greedy decoding is measured as a
reference row, never chosen.

Prints one JSON line per setting, then a Markdown table and the choice; `--plot` draws non-word rate against repetition.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import itertools
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "runs" / "pg19-sample-cpu" / "model"
DEFAULT_DATASET = REPO.parent / "shared" / "data" / "pg19-sample"
SPACE_APP = REPO / "spaces_app" / "app.py"

WORD = re.compile(r"[^\W\d_]+")  # a run of letters: apostrophes, hyphens, digits and underscores separate words
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
FRONT_MATTER = re.compile(r"gutenberg|produced by|transcriber|\[illustration|contents|chapter|copyright|e-text|etext",
                          re.IGNORECASE)

DEFAULT_GRID = {
    "temperatures": [0.6, 0.7, 0.8, 0.9, 1.0, 1.3],
    "top_ps": [0.9, 0.95, 1.0],
    "repetition_penalties": [1.0, 1.1, 1.2],
    "min_ps": [0.0, 0.1],
}


# --- text measures (pure functions on strings and word lists)


def words(text: str) -> list[str]:
    """The words of `text` as the measures see them: runs of letters, case kept."""
    return WORD.findall(text)


def build_word_list(texts) -> set[str]:
    """Lower-cased words of `texts` (the training split's books)."""
    vocabulary: set[str] = set()
    for text in texts:
        vocabulary.update(w.lower() for w in set(WORD.findall(text)))
    return vocabulary


def non_words(tokens: list[str], word_list: set[str]) -> list[str]:
    return [w for w in tokens if w.lower() not in word_list]


def non_word_rate(tokens: list[str], word_list: set[str]) -> float:
    return len(non_words(tokens, word_list)) / len(tokens) if tokens else 0.0


def is_garble(word: str, word_list: set[str]) -> bool:
    """An all-capitals run of two or more letters that is not a word of the list (`CHAPTER` and `XIV` are)."""
    return len(word) >= 2 and word.isupper() and word.lower() not in word_list


def garble_rate(tokens: list[str], word_list: set[str]) -> float:
    return sum(is_garble(w, word_list) for w in tokens) / len(tokens) if tokens else 0.0


def ngrams(tokens: list[str], n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_share(tokens: list[str], n: int = 4) -> float:
    """The share of the word n-grams (lower-cased) that repeat an earlier n-gram of the same text."""
    grams = ngrams([w.lower() for w in tokens], n)
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def longest_repeated_span(tokens: list[str]) -> int:
    """The length in words of the longest word sequence (lower-cased) that occurs at least twice (overlaps count)."""
    lowered = [w.lower() for w in tokens]
    longest = 0
    for n in range(1, len(lowered)):  # if an n-gram repeats, so does its (n-1)-prefix: stop at the first n without one
        grams = ngrams(lowered, n)
        if len(set(grams)) == len(grams):
            break
        longest = n
    return longest


def distinct_n(tokens: list[str], n: int = 2) -> float:
    grams = ngrams([w.lower() for w in tokens], n)
    return len(set(grams)) / len(grams) if grams else 0.0


def whole_words(text: str) -> list[str]:
    """`words(text)` less a last word that the end of the text may have cut (a continuation of N tokens can stop
    inside a word: `hesit`), so real and generated continuations are measured alike."""
    tokens = words(text)
    return tokens[:-1] if tokens and text and WORD.match(text[-1]) else tokens


def measure(texts: list[str], word_list: set[str]) -> dict:
    """The sample measures of a set of continuations (rates pooled over all their words; the rest averaged over
    continuations, with standard errors for the repetition test)."""
    per_text = [whole_words(t) for t in texts]
    pooled = [w for ws in per_text for w in ws]
    rep4 = [repeated_ngram_share(ws, 4) for ws in per_text]
    span = [longest_repeated_span(ws) for ws in per_text]
    return {
        "words": len(pooled),
        "non_word_rate": non_word_rate(pooled, word_list),
        "garble_rate": garble_rate(pooled, word_list),
        "repeated_4gram_share": statistics.fmean(rep4),
        "repeated_4gram_share_se": _se(rep4),
        "longest_repeated_span": statistics.fmean(span),
        "longest_repeated_span_se": _se(span),
        "longest_repeated_span_max": max(span),
        "distinct_2": statistics.fmean(distinct_n(ws, 2) for ws in per_text),
        "examples_non_words": sorted(set(non_words(pooled, word_list)))[:12],
    }


def _se(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def within_real_range(result: dict, real: dict, sigmas: float = 2.0) -> bool:
    """Repetition no higher than the real text's, beyond `sigmas` standard errors of the difference of the means."""
    for key in ("repeated_4gram_share", "longest_repeated_span"):
        margin = sigmas * math.hypot(result[f"{key}_se"], real[f"{key}_se"])
        if result[key] > real[key] + margin:
            return False
    return True


def choose(results: list[dict], real: dict, sigmas: float = 2.0) -> dict | None:
    """The rule: the lowest non-word rate whose repetition stays within the real text's range (sampled
    settings only); ties go to the higher distinct-2."""
    candidates = [r for r in results if r["do_sample"] and within_real_range(r, real, sigmas)]
    return min(candidates, key=lambda r: (round(r["non_word_rate"], 6), -r["distinct_2"]), default=None)


# --- openings from the validation split


def read_split(dataset: Path, split: str) -> list[dict]:
    """The records of `split` of a local PG19-format folder (`<split>.jsonl` or `<split>.jsonl.gz`)."""
    for name in (f"{split}.jsonl", f"{split}.jsonl.gz"):
        path = dataset / name
        if path.is_file():
            with (gzip.open(path, "rt", encoding="utf-8") if name.endswith(".gz") else open(path, encoding="utf-8")) as f:
                return [json.loads(line) for line in f if line.strip()]
    raise FileNotFoundError(f"{dataset} has no {split}.jsonl or {split}.jsonl.gz")


def is_narrative(paragraph: str, min_words: int) -> bool:
    """Prose a novel tells: long enough, ends a sentence, not a heading, a list of contents, verse or front matter."""
    lines = [line for line in paragraph.split("\n") if line.strip()]
    tokens = words(paragraph)
    if len(tokens) < min_words or not lines:
        return False
    if FRONT_MATTER.search(paragraph):
        return False
    if sum(line[:1].isspace() for line in lines) > len(lines) // 2:  # indented: verse, quotations, letters' headers
        return False
    if not re.search(r"[.!?][\"'’”)]*\s*$", paragraph) or not re.match(r"[\"'‘“(]*[A-Z]", paragraph.lstrip()):
        return False
    if sum(c.isdigit() for c in paragraph) > 2:  # page numbers, dates of a table
        return False
    capitalised = sum(w[0].isupper() for w in tokens) / len(tokens)
    shouting = sum(w.isupper() and len(w) > 1 for w in tokens) / len(tokens)
    return capitalised < 0.3 and shouting < 0.05


def find_openings(records: list[dict], count: int, opening_words: int = 20, min_words: int = 40,
                  skip_fraction: float = 0.02) -> list[dict]:
    """`count` openings spread evenly over the books: the first `opening_words` words of a narrative paragraph (its
    own line breaks kept), and the book's text after them, from which the real continuation is cut."""
    per_book = []
    for record in records:
        text = record["text"]
        found, start = [], 0
        for match in itertools.chain(PARAGRAPH_BREAK.finditer(text), [None]):
            end = match.start() if match else len(text)
            paragraph = text[start:end].strip("\n")
            offset = start + (len(text[start:end]) - len(text[start:end].lstrip("\n")))
            if offset > skip_fraction * len(text) and is_narrative(paragraph, min_words):
                found.append(offset)
            start = match.end() if match else len(text)
        per_book.append((record, found))
    per_book = [(r, f) for r, f in per_book if f]
    if not per_book:
        return []
    counts = [count // len(per_book) + (i < count % len(per_book)) for i in range(len(per_book))]
    openings = []
    for (record, found), k in zip(per_book, counts):
        for j in range(min(k, len(found))):
            offset = found[int((j + 0.5) * len(found) / k)]
            text = record["text"]
            cut = list(WORD.finditer(text, offset, offset + 2000))[opening_words - 1].end()
            openings.append({"book": record.get("short_book_title", ""), "offset": offset,
                             "opening": text[offset:cut], "rest": text[cut:cut + 4000]})
    return openings


def space_examples(path: Path = SPACE_APP) -> list[str]:
    """The Space's example openings (`EXAMPLES` in spaces_app/app.py), read without importing Gradio."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXAMPLES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"no EXAMPLES list in {path}")


# --- the model


def load(model_path: str, threads: int | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer


def real_continuations(openings: list[dict], tokenizer, new_tokens: int) -> list[dict]:
    """Each opening's token ids and the book's next `new_tokens` tokens (ids and text)."""
    for item in openings:
        item["prompt_ids"] = tokenizer(item["opening"], verbose=False)["input_ids"]
        rest = tokenizer(item["rest"], verbose=False)["input_ids"]
        if len(rest) < new_tokens:
            raise ValueError(f"the text after an opening of {item['book']!r} is shorter than {new_tokens} tokens")
        item["real_ids"] = rest[:new_tokens]
        item["real"] = tokenizer.decode(item["real_ids"])
    return openings


def bits_per_byte(model, openings: list[dict]) -> float:
    """The model's bits per byte on the real continuations, each given its opening."""
    import torch
    import torch.nn.functional as F

    nll, n_bytes = 0.0, 0
    with torch.no_grad():
        for item in openings:
            ids = torch.tensor([item["prompt_ids"] + item["real_ids"]], device=model.device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            targets = ids[0, 1:]
            start = len(item["prompt_ids"]) - 1
            nll += F.cross_entropy(logits[start:], targets[start:], reduction="sum").item()
            n_bytes += len(item["real"].encode("utf-8"))
    return nll / math.log(2) / n_bytes


def generation_config(model, setting: dict, new_tokens: int, pad_token_id: int, min_new_tokens: int | None = None):
    import copy

    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens = new_tokens
    config.min_new_tokens = new_tokens if min_new_tokens is None else min_new_tokens
    if setting["do_sample"]:
        config.do_sample = True
        config.temperature = setting["temperature"]
        config.top_k = setting["top_k"]
        config.top_p = setting["top_p"]
        config.min_p = setting["min_p"] or None
    else:
        config.do_sample, config.temperature, config.top_k, config.top_p, config.min_p = False, 1.0, 50, 1.0, None
    config.repetition_penalty = setting["repetition_penalty"]
    config.pad_token_id = pad_token_id
    return config


def row_processors(setting: dict, padding_lengths):
    """The logits processors HF's `generate()` would build for `setting`, in its order (repetition penalty, then
    temperature, top-k, top-p, min-p). Greedy is top-k 1: the argmax, whatever the sampler draws."""
    from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    processors = []
    if setting["repetition_penalty"] != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(setting["repetition_penalty"],
                                                           prompt_ignore_length=padding_lengths))
    if not setting["do_sample"]:
        return processors + [TopKLogitsWarper(1)]
    if setting["temperature"] != 1.0:
        processors.append(TemperatureLogitsWarper(setting["temperature"]))
    if setting["top_k"]:
        processors.append(TopKLogitsWarper(setting["top_k"]))
    if setting["top_p"] < 1.0:
        processors.append(TopPLogitsWarper(setting["top_p"]))
    if setting["min_p"]:
        processors.append(MinPLogitsWarper(setting["min_p"]))
    return processors


class PerRowSettings:
    """A logits processor that gives each block of rows of one `generate()` batch its own sampling setting, so many
    settings decode together: the forward passes are shared, each row's distribution is what its setting's own
    `generate()` call would sample from."""

    def __init__(self, blocks: list[tuple[slice, list]]):
        self.blocks = blocks

    def __call__(self, input_ids, scores):
        out = scores.clone()
        for rows, processors in self.blocks:
            block_ids, block_scores = input_ids[rows], scores[rows]
            for processor in processors:
                block_scores = processor(block_ids, block_scores)
            out[rows] = block_scores
        return out


def continue_settings(model, tokenizer, prompts_ids: list[list[int]], settings: list[dict], new_tokens: int,
                      seed: int, settings_per_call: int) -> list[list[str]]:
    """Continue every prompt by exactly `new_tokens` tokens under each setting; `settings_per_call` settings share
    one left-padded, seeded `generate()` call. Returns the continuations of each setting."""
    import copy

    import torch
    from transformers import LogitsProcessorList

    config = copy.deepcopy(model.generation_config)  # sampling with no warpers of its own: PerRowSettings does it
    config.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_p=None, repetition_penalty=1.0,
                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
    results = []
    n = len(prompts_ids)
    for first in range(0, len(settings), settings_per_call):
        group = settings[first:first + settings_per_call]
        batch = tokenizer.pad({"input_ids": prompts_ids * len(group)}, return_tensors="pt").to(model.device)
        padding = (batch["attention_mask"] == 0).sum(dim=1)
        blocks = [(slice(i * n, (i + 1) * n), row_processors(setting, padding[i * n:(i + 1) * n]))
                  for i, setting in enumerate(group)]
        torch.manual_seed(seed)
        with torch.no_grad():
            output = model.generate(**batch, generation_config=config,
                                    logits_processor=LogitsProcessorList([PerRowSettings(blocks)]))
        texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        results += [texts[i * n:(i + 1) * n] for i in range(len(group))]
    return results


def settings_grid(args) -> list[dict]:
    grid = [{"do_sample": False, "temperature": None, "top_k": None, "top_p": None, "repetition_penalty": 1.0,
             "min_p": None}] if args.greedy_row else []
    for t, p, r, m in itertools.product(args.temperatures, args.top_ps, args.repetition_penalties, args.min_ps):
        if m and p < 1.0:  # min-p is a replacement for top-p's cut, tried with top-p off
            continue
        grid.append({"do_sample": True, "temperature": t, "top_k": args.top_k, "top_p": p, "repetition_penalty": r,
                     "min_p": m or None})
    return grid


# --- output


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def table(results: list[dict], real: dict, chosen: dict | None, sigmas: float) -> str:
    rows = ["| temperature | top-p | repetition penalty | min-p | non-words % | garble % | repeated 4-grams % | "
            "longest repeated span | distinct-2 | repetition within real |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            f"| real text | | | | {_pct(real['non_word_rate'])} | {_pct(real['garble_rate'])} | "
            f"{_pct(real['repeated_4gram_share'])} | {real['longest_repeated_span']:.1f} | {real['distinct_2']:.3f} | |"]
    for r in results:
        name = (f"{r['temperature']:g} | {r['top_p']:g} | {r['repetition_penalty']:g} | {r['min_p'] or 0:g}"
                if r["do_sample"] else f"greedy | | {r['repetition_penalty']:g} |")
        cells = (f"{_pct(r['non_word_rate'])} | {_pct(r['garble_rate'])} | {_pct(r['repeated_4gram_share'])} | "
                 f"{r['longest_repeated_span']:.1f} | {r['distinct_2']:.3f} | "
                 f"{'yes' if within_real_range(r, real, sigmas) else 'no'}")
        if r is chosen:
            name, cells = "**" + name.replace(" | ", "** | **") + "**", "**" + cells.replace(" | ", "** | **") + "**"
        rows.append(f"| {name} | {cells} |")
    return "\n".join(rows)


def plot(results: list[dict], real: dict, chosen: dict | None, path: Path, sigmas: float, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sampled = [r for r in results if r["do_sample"]]
    fig, ax = plt.subplots(figsize=(8, 5.2))
    temps = sorted({r["temperature"] for r in sampled})
    cmap = plt.get_cmap("viridis", max(len(temps), 2))
    markers = dict(zip(sorted({r["repetition_penalty"] for r in sampled}), "os^Dvp"))
    for r in sampled:
        ax.scatter(100 * r["repeated_4gram_share"], 100 * r["non_word_rate"], s=18 + 40 * (r["top_p"] or 1) ** 8,
                   color=cmap(temps.index(r["temperature"])), marker=markers[r["repetition_penalty"]], alpha=0.8,
                   edgecolors="red" if r["min_p"] else "none", linewidths=1.2)
    for r in results:
        if not r["do_sample"]:
            ax.scatter(100 * r["repeated_4gram_share"], 100 * r["non_word_rate"], marker="x", color="grey")
            ax.annotate("greedy", (100 * r["repeated_4gram_share"], 100 * r["non_word_rate"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    limit = real["repeated_4gram_share"] + sigmas * real["repeated_4gram_share_se"]
    ax.axvspan(0, 100 * limit, color="tab:green", alpha=0.08,
               label=f"real text's repeated 4-grams, mean + {sigmas:g} s.e.")
    ax.axhline(100 * real["non_word_rate"], color="tab:red", ls="--", lw=1, label="real text's non-word rate (floor)")
    ax.scatter(100 * real["repeated_4gram_share"], 100 * real["non_word_rate"], marker="*", s=160, color="tab:red",
               label="real continuations")
    if chosen is not None:
        ax.scatter(100 * chosen["repeated_4gram_share"], 100 * chosen["non_word_rate"], s=220, facecolors="none",
                   edgecolors="black", lw=1.5, label=f"chosen: T {chosen['temperature']:g}, top-p {chosen['top_p']:g}, "
                                                    f"rep. {chosen['repetition_penalty']:g}")
    for i, t in enumerate(temps):
        ax.scatter([], [], color=cmap(i), label=f"temperature {t:g}")
    for penalty, marker in markers.items():
        ax.scatter([], [], color="grey", marker=marker, label=f"repetition penalty {penalty:g}")
    if any(r["min_p"] for r in sampled):
        ax.scatter([], [], color="grey", edgecolors="red", linewidths=1.2, label="min-p (top-p 1)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("repeated word 4-grams in 200-token continuations (%)")
    ax.set_ylabel("non-words (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- modes


def samples_mode(args):
    """Unedited continuations of the Space's first three openings, `torch.manual_seed(seed)` before each: with the
    settings given (the export's generation_config for the rest), or with every setting of the grid (`--samples-grid`)."""
    import torch

    model, tokenizer = load(args.model, args.threads)
    base = model.generation_config
    if args.samples_grid:
        settings = settings_grid(args)
    else:
        settings = [{"do_sample": not args.greedy,
                     "temperature": args.temperature if args.temperature is not None else base.temperature,
                     "top_k": args.top_k if args.top_k is not None else base.top_k,
                     "top_p": args.top_p if args.top_p is not None else base.top_p,
                     "repetition_penalty": (args.repetition_penalty if args.repetition_penalty is not None
                                            else base.repetition_penalty),
                     "min_p": args.min_p if args.min_p is not None else getattr(base, "min_p", None)}]
    for setting in settings:
        config = generation_config(model, setting, args.sample_tokens, tokenizer.pad_token_id, min_new_tokens=0)
        shown = {k: v for k, v in setting.items()
                 if v is not None and (setting["do_sample"] or k in ("do_sample", "repetition_penalty"))}
        print(f"<!-- {args.model}: {json.dumps(shown)}, {args.sample_tokens} new tokens, "
              f"torch.manual_seed({args.seed}) before each -->")
        for opening in space_examples()[:3]:
            torch.manual_seed(args.seed)
            inputs = tokenizer(opening, return_tensors="pt").to(model.device)
            with torch.no_grad():
                output = model.generate(**inputs, generation_config=config)
            text = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            print(f"\n```text\n{opening}{text}\n```")
        print(flush=True)


def bench_mode(args, parser):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import require_dataset

    dataset = require_dataset(parser, args.dataset)
    start = time.time()
    openings = find_openings(read_split(dataset, args.validation_split), args.num_openings, args.opening_words,
                             args.min_paragraph_words)
    if len(openings) < min(args.num_openings, 2):
        parser.error(f"found {len(openings)} narrative paragraphs in {dataset}'s {args.validation_split} split; "
                     f"need {args.num_openings}")
    word_list = build_word_list(r["text"] for r in read_split(dataset, args.train_split))
    model, tokenizer = load(args.model, args.threads)
    longest = max(len(tokenizer(o["opening"])["input_ids"]) for o in openings) + args.new_tokens
    if longest > model.config.max_position_embeddings:
        parser.error(f"an opening plus {args.new_tokens} new tokens is {longest} tokens, longer than the model's "
                     f"context ({model.config.max_position_embeddings}): lower --new-tokens or --opening-words")
    real_continuations(openings, tokenizer, args.new_tokens)
    real = measure([o["real"] for o in openings], word_list)
    bpb = bits_per_byte(model, openings)
    header = {"bench": "samples", "model": str(args.model), "dataset": str(dataset), "openings": len(openings),
              "books": len({o["book"] for o in openings}), "new_tokens": args.new_tokens, "seed": args.seed,
              "word_list_size": len(word_list), "model_bits_per_byte_on_real": round(bpb, 4),
              "real": _rounded(real)}
    print(json.dumps(header), flush=True)
    prompts = [o["prompt_ids"] for o in openings]
    settings = settings_grid(args)
    tick = time.time()
    continuations = continue_settings(model, tokenizer, prompts, settings, args.new_tokens, args.seed,
                                      args.settings_per_call)
    seconds = (time.time() - tick) / len(settings)
    results = []
    for setting, texts in zip(settings, continuations):
        result = {**setting, **measure(texts, word_list), "seconds": round(seconds, 2)}
        result["within_real_range"] = within_real_range(result, real, args.sigmas)
        result["example"] = texts[0][:300]
        results.append(_rounded(result))  # as printed, so that --results replays the same choice
        print(json.dumps({"setting": results[-1]}), flush=True)
    print(f"{len(settings)} settings in {time.time() - start:.0f} s", file=sys.stderr)
    return report(args, header, results)


def report(args, header: dict, results: list[dict]):
    """The table, the real text's figures, the choice and the plot, from the measured settings."""
    real = header["real"]
    for r in results:
        r["within_real_range"] = within_real_range(r, real, args.sigmas)
    chosen = choose(results, real, args.sigmas)
    print("\n" + table(results, real, chosen, args.sigmas) + "\n")
    print(f"real continuations: non-words {_pct(real['non_word_rate'])} %, repeated 4-grams "
          f"{_pct(real['repeated_4gram_share'])} % (± {_pct(real['repeated_4gram_share_se'])}), longest repeated span "
          f"{real['longest_repeated_span']:.1f} words (± {real['longest_repeated_span_se']:.1f}); the model's bits per "
          f"byte on them {header['model_bits_per_byte_on_real']:.3f}; {header['openings']} openings")
    if chosen is None:
        print("chosen: none (no sampled setting keeps its repetition within the real text's range)")
    else:
        keys = ("temperature", "top_k", "top_p", "repetition_penalty", "min_p")
        print("chosen: " + json.dumps({k: chosen[k] for k in keys if chosen[k] is not None}))
    if args.plot != "none":
        model = Path(header["model"])
        name = str(model.relative_to(REPO)) if model.is_absolute() and model.is_relative_to(REPO) else str(model)
        title = (f"{name}: {header['openings']} validation openings, {header['new_tokens']} new tokens, top-k "
                 f"{args.top_k} (marker size: top-p)")
        plot(results, real, chosen, Path(args.plot), args.sigmas, title)
        print(f"plot: {args.plot}")
    return results, real, chosen


def replay(args):
    """`--results`: the table, choice and plot of a saved run (its JSON lines), without generating again."""
    lines = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.startswith("{")]
    header = next(line for line in lines if line.get("bench") == "samples")
    return report(args, header, [line["setting"] for line in lines if "setting" in line])


def _rounded(d: dict) -> dict:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in d.items()}


def add_source_arguments(parser) -> None:
    """The model, the corpus and how openings are cut from it (shared with bench_long_samples.py)."""
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="an exported model folder (default: %(default)s)")
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET),
                        help="a local PG19-format folder: openings from its validation split, the word list from its "
                             "training split (default: %(default)s)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--validation-split", default="validation")
    parser.add_argument("--opening-words", type=int, default=20)
    parser.add_argument("--min-paragraph-words", type=int, default=40)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(parser)
    parser.add_argument("--num-openings", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens per continuation (real and generated)")
    parser.add_argument("--seed", type=int, default=1919)
    parser.add_argument("--temperatures", type=float, nargs="+", default=DEFAULT_GRID["temperatures"])
    parser.add_argument("--top-ps", type=float, nargs="+", default=DEFAULT_GRID["top_ps"])
    parser.add_argument("--repetition-penalties", type=float, nargs="+", default=DEFAULT_GRID["repetition_penalties"])
    parser.add_argument("--min-ps", type=float, nargs="+", default=DEFAULT_GRID["min_ps"],
                        help="0 turns min-p off; min-p > 0 is tried with top-p 1 only (default: %(default)s)")
    parser.add_argument("--no-greedy-row", dest="greedy_row", action="store_false",
                        help="skip the greedy reference row")
    parser.add_argument("--sigmas", type=float, default=2.0,
                        help="standard errors of slack for 'within the real text's range' (default: %(default)s)")
    parser.add_argument("--settings-per-call", type=int, default=16,
                        help="settings decoded together in one generate() call (x the openings = its batch)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--plot", default="none", help="write the plot here, e.g. docs/samples.png (default: none)")
    samples = parser.add_argument_group("--samples: the README's samples (the Space's first three openings)")
    samples.add_argument("--samples", action="store_true", help="print unedited samples instead of benchmarking")
    samples.add_argument("--sample-tokens", type=int, default=80)
    samples.add_argument("--temperature", type=float, default=None, help="default: the export's generation_config")
    samples.add_argument("--top-k", type=int, default=None,
                         help="default: the export's (--samples); the grid's top-k is 50 unless given")
    samples.add_argument("--top-p", type=float, default=None)
    samples.add_argument("--repetition-penalty", type=float, default=None)
    samples.add_argument("--min-p", type=float, default=None)
    samples.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    samples.add_argument("--samples-grid", action="store_true",
                         help="with --samples: samples at every setting of the grid (--temperatures, --top-ps, ...)")
    parser.add_argument("--results", default=None,
                        help="a saved run's output (its JSON lines): print its table and choice, draw its plot")
    args = parser.parse_args(argv)
    if args.results:
        args.top_k = 50 if args.top_k is None else args.top_k
        return replay(args)
    if not Path(args.model).is_dir() or not (Path(args.model) / "config.json").is_file():
        parser.error(f"no exported model at {args.model} (a folder with config.json: the training's output_dir/model)")
    for name in ("num_openings", "opening_words", "new_tokens", "sample_tokens", "settings_per_call"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    grid_top_k = 50 if args.top_k is None else args.top_k
    if args.samples:
        if args.samples_grid:
            args.top_k = grid_top_k
        return samples_mode(args)
    args.top_k = grid_top_k
    return bench_mode(args, parser)


if __name__ == "__main__":
    main()

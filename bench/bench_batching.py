"""Batching in one process (no HTTP): our engine vs one generate() thread per request vs transformers' continuous
batching (`model.generate_batch`, `ContinuousBatchingManager`), at the 124M shape on CPU.

For 1 and 8 concurrent requests (greedy, EOS off, `--new-tokens` each, prompts of different lengths) it times:
- `threads`: each request a `textgen.Generation` (one `generate()` thread each): the server before the engine;
- `engine`: all requests through one `textgen.Engine`;
- `cb_ours` / `cb_reference`: transformers' `generate_batch` (paged attention, its own scheduler) on our model and on
  `GPT2LMHeadModel` of the same shape;
- `generate_batch1`: plain `generate()` of the first request alone (the single-stream reference).
Prints one JSON line per request count: aggregate tokens/s of each (median over `--repeats` alternating rounds),
`ratio` = engine / threads, and how many requests each gave the tokens of `generate()` of that request alone.

`--dtype` (default float32; `auto` is the server's default: bf16 where the CPU computes it natively) sets the
precision of every case; each line also gives `engine_tokens_per_s_vs_1_stream`, the engine's aggregate tokens/s over
its own at one stream in the same run (the first `--streams` value should be 1).

`--variants` instead compares ways of serving side by side in one run, each a model prepared as `load_model` prepares
it (`textgen.prepare_for_serving`) and its own engine: `auto`, `int8`, `float32`, `bfloat16`, each optionally with
`-variant` (batch-invariant decoding off, `--no-batch-invariant`). Per variant and stream count, alternating rounds:
the engine's aggregate tokens/s and plain `generate()`'s at one stream; then the ratios between variants at equal
streams (the first variant is the base) and each variant's 8-against-1 scaling.

    python bench/bench_batching.py [--preset gpt2-124m] [--streams 1 8] [--new-tokens 32] [--repeats 3]
        [--no-continuous-batching] [--dtype auto]
    python bench/bench_batching.py --variants auto auto-variant int8 int8-variant --streams 1 8
    python bench/bench_batching.py --export runs/pg19-sample-cpu/model --variants auto int8   # an export, as served
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from common import build_pair, emit, environment

from victorian_gpt import PRESETS

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from serving import textgen  # noqa: E402
from serving.textgen.loading import in_a_thread_of_its_own, prepare_for_serving  # noqa: E402


class _Tokenizer:
    """Just enough of a tokenizer for textgen's streamer (ids in, ids out): these benchmarks time the model."""

    all_special_ids = [0]
    model_max_length = 2048

    def decode(self, ids, **kwargs):
        return " ".join(str(i) for i in ids)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2-124m", choices=sorted(PRESETS))
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=textgen.DTYPE_CHOICES)
    parser.add_argument("--no-continuous-batching", dest="cb", action="store_false",
                        help="skip transformers' generate_batch")
    parser.add_argument("--export", default=None,
                        help="with --variants: load this export folder as `victorian-gpt serve` does (load_model) "
                             "instead of random weights of --preset")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="compare ways of serving instead: auto, int8, float32, bfloat16, each with an optional "
                             "'-variant' suffix (batch invariance off)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.variants:
        return compare_variants(args)

    shape = {k: PRESETS[args.preset][k] for k in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size")}
    ours, reference = build_pair(**shape)
    dtype, why = textgen.resolve_dtype(args.dtype, "cpu", torch.float32)
    ours, reference = ours.to(dtype).eval(), reference.to(dtype).eval()
    for model in (ours, reference):
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
    tokenizer = _Tokenizer()
    limits = textgen.Limits(max_input_tokens=shape["n_positions"] - 1, max_total_tokens=shape["n_positions"])
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, shape["vocab_size"], (12 + 5 * i,), generator=generator).tolist() for i in range(64)]
    params = textgen.GenerationParameters(max_new_tokens=args.new_tokens)
    engine = textgen.Engine(ours, tokenizer, limits=limits)

    def solo(prompt):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = ours.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                min_new_tokens=args.new_tokens, do_sample=False, repetition_penalty=1.0,
                                eos_token_id=None, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    def run_threads(batch):
        generations = [textgen.Generation(ours, tokenizer, p, params) for p in batch]
        return [[t.id for t in g] for g in generations]

    def run_engine(batch):
        generations = [engine.submit(p, params) for p in batch]
        return [[t.id for t in g] for g in generations]

    def run_cb(model, batch):
        from transformers import GenerationConfig

        config = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
        results = model.generate_batch(batch, generation_config=config, max_new_tokens=args.new_tokens)
        return [list(r.generated_tokens) for r in results.values()]

    engine_rate_1 = None
    for streams in args.streams:
        batch = prompts[:streams]
        expected = [solo(p) for p in batch]
        cases = {"threads": lambda: run_threads(batch), "engine": lambda: run_engine(batch),
                 "generate_batch1": lambda: [solo(batch[0])]}
        if args.cb:
            cases["cb_ours"] = lambda: run_cb(ours, batch)
            cases["cb_reference"] = lambda: run_cb(reference, batch)
        times = {name: [] for name in cases}
        agree = {}
        for round_ in range(args.repeats + 1):  # round 0 warms up
            for name, case in cases.items():
                start = time.perf_counter()
                outputs = case()
                elapsed = time.perf_counter() - start
                if round_:
                    times[name].append(elapsed)
                if name != "cb_reference" and name != "generate_batch1":
                    agree[name] = f"{sum(a == b for a, b in zip(outputs, expected))}/{streams}"
        tokens = {name: (1 if name == "generate_batch1" else streams) * args.new_tokens for name in cases}
        rate = {name: tokens[name] / statistics.median(t) for name, t in times.items()}
        if streams == 1:
            engine_rate_1 = rate["engine"]
        emit({
            "bench": "batching",
            "shape": args.preset,
            "streams": streams,
            "new_tokens": args.new_tokens,
            "prompt_tokens": [len(p) for p in batch],
            **{f"{name}_tokens_per_s": round(value, 1) for name, value in rate.items()},
            "ratio": round(rate["engine"] / rate["threads"], 3),
            "ratio_of": "engine / threads aggregate tokens/s",
            "engine_vs_generate_batch1": round(rate["engine"] / rate["generate_batch1"], 3) if streams == 1 else None,
            "engine_tokens_per_s_vs_1_stream": round(rate["engine"] / engine_rate_1, 3) if engine_rate_1 else None,
            "dtype": f"{str(dtype).removeprefix('torch.')} ({why})",
            "equal_to_solo_generate": agree,
            "repeats": args.repeats,
            "threads_alive": threading.active_count(),
            **environment(),
        })
    engine.close()


def compare_variants(args):
    """Each variant a model prepared for serving and its own engine; the same prompts; alternating rounds."""
    from victorian_gpt import VictorianGPTConfig, VictorianGPTForCausalLM

    if args.export:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.export, trust_remote_code=True)
    else:
        config = VictorianGPTConfig.from_preset(args.preset, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    tokenizer = _Tokenizer()
    limits = textgen.Limits(max_input_tokens=config.n_positions - 1, max_total_tokens=config.n_positions)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, config.vocab_size, (12 + 5 * i,), generator=generator).tolist() for i in range(64)]
    params = textgen.GenerationParameters(max_new_tokens=args.new_tokens)
    served = {}
    for variant in args.variants:
        name, _, suffix = variant.partition("-")
        if name not in ("auto", "int8", "float32", "bfloat16") or suffix not in ("", "variant"):
            raise SystemExit(f"unknown variant {variant!r}: auto, int8, float32 or bfloat16, optionally -variant")
        quantize = "int8" if name == "int8" else None
        dtype, why = textgen.resolve_dtype("auto" if name == "int8" else name, "cpu", torch.float32, quantize)

        def build(dtype=dtype, why=why, quantize=quantize, suffix=suffix):
            torch.manual_seed(0)
            model = VictorianGPTForCausalLM(config)
            return prepare_for_serving(model.to(dtype).eval(), why, quantize=quantize, batch_invariant=not suffix)

        if args.export:
            model, _ = textgen.load_model(args.export, dtype="auto" if quantize else name, quantize=quantize,
                                          batch_invariant=not suffix)
        else:
            model = in_a_thread_of_its_own(build)  # as load_model does (see there)
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        served[variant] = model

    # Each case in a thread that ends with it, as a server runs one engine: see textgen.loading.in_a_thread_of_its_own
    def run_engine(model, batch):
        with textgen.Engine(model, tokenizer, limits=limits) as engine:
            generations = [engine.submit(p, params) for p in batch]
            return [[t.id for t in g] for g in generations]

    def run_generate(model, prompt):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)

    rates = {}
    for streams in args.streams:
        batch = prompts[:streams]
        cases = {(v, "engine"): (lambda m=model: in_a_thread_of_its_own(run_engine, m, batch))
                 for v, model in served.items()}
        if streams == 1:
            cases.update({(v, "generate"): (lambda m=model: in_a_thread_of_its_own(run_generate, m, batch[0]))
                          for v, model in served.items()})
        times = {case: [] for case in cases}
        for round_ in range(args.repeats + 1):  # round 0 warms up
            for case, run in cases.items():
                start = time.perf_counter()
                run()
                if round_:
                    times[case].append(time.perf_counter() - start)
        for (variant, kind), t in times.items():
            rates[(variant, kind, streams)] = streams * args.new_tokens / statistics.median(t)
        base = args.variants[0]
        for variant, model in served.items():
            emit({
                "bench": "batching-variants", "model": args.export or args.preset, "variant": variant,
                "streams": streams,
                "new_tokens": args.new_tokens, "dtype": model.serving_dtype,
                "engine_tokens_per_s": round(rates[(variant, "engine", streams)], 1),
                "generate_tokens_per_s": round(rates[(variant, "generate", 1)], 1) if streams == 1 else None,
                f"engine_vs_{base}": round(rates[(variant, "engine", streams)] / rates[(base, "engine", streams)], 3),
                "engine_vs_1_stream": (round(rates[(variant, "engine", streams)] / rates[(variant, "engine", 1)], 3)
                                       if (variant, "engine", 1) in rates else None),
                "repeats": args.repeats, **environment(),
            })


if __name__ == "__main__":
    main()

"""LoRA adapters per request in one batch (serving/textgen/lora.py) against the base alone, side by side in one process.

The model is loaded twice as `victorian-gpt serve` loads it (`load_model`, `--dtype` default auto: bf16 where the CPU
computes it natively): once plain, once with the adapters (`--lora-adapters NAME=SOURCE,...`, or, by default,
`--adapters` random adapters of rank `--rank` on fine-tuning's default targets, written as training writes them).
Cases, each `--streams` concurrent streams (random prompts of 12 + 5 i tokens, `--new-tokens` each, EOS ignored)
through an engine of its own, alternating, `--repeats` rounds after a warm-up round:
- `base`: every stream on the plain model;
- `base-on-adapted`: every stream on the base, through the model loaded with the adapters (what serving the base
  costs once adapters are loaded);
- `lora` (and `lora-group`, `lora-bmm` with `--methods`): the streams spread over the adapters in turn, in the same
  batch, the delta computed by the `lora_add_` decode kernel (or by PyTorch's operators: rows grouped by adapter, or
  gathered into one batched product).
One JSON line per case (aggregate tokens/s, the median), then one with `ratio` = lora / base tokens/s against the goal
(0.80). Then `--steps` decode steps of `--streams` rows (over a 64-token KV cache) timed one by one, the cases taking
turns step by step (so a busy machine's slow spells fall on all of them alike): the median step of each, and its
ratio to the base's. With `--layer`, one line per row count with one adapted layer's time per call by each method.

    python bench/bench_lora.py [--model runs/pg19-sample-cpu/model] [--lora-adapters NAME=SOURCE,...]
        [--adapters 4] [--rank 16] [--streams 8] [--new-tokens 64] [--repeats 5] [--methods kernel group bmm]
        [--steps 300] [--threads N] [--dtype auto] [--quantize int8] [--layer]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import emit, environment

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from serving import textgen  # noqa: E402
from serving.textgen import lora  # noqa: E402
from serving.textgen.loading import in_a_thread_of_its_own  # noqa: E402

GOAL = 0.80  # tokens/s of the streams over adapters, against the same streams on the base
DEFAULT_MODEL = "runs/pg19-sample-cpu/model"


def random_adapters(model: str, count: int, rank: int, folder: Path) -> dict[str, str]:
    """`count` adapters of `model` with random A and B (peft starts B at zero), as `training --finetuning_type lora`
    writes them: fine-tuning's default targets, lora_alpha = 2 x rank."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.config import TrainingConfig
    from training.finetune import apply_lora
    from victorian_gpt.export import save_model_folder

    tokenizer = AutoTokenizer.from_pretrained(model)
    made = {}
    for i in range(count):
        base = AutoModelForCausalLM.from_pretrained(model, trust_remote_code=True, dtype=torch.float32)
        config = TrainingConfig(finetuning_type="lora", lora_r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                optimizer="adamw")
        torch.manual_seed(i)
        peft_model = apply_lora(base, config)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_" in name:
                    parameter.normal_(0.0, 0.02)
        name = f"style-{i}"
        made[name] = str(save_model_folder(peft_model, tokenizer, folder / name))
    return made


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="export folder or Hub id (default: %(default)s)")
    parser.add_argument("--lora-adapters", type=textgen.parse_lora_adapters, default=None, metavar="NAME=SOURCE,...",
                        help="the adapters to serve (default: --adapters random ones of rank --rank)")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=["kernel"], choices=lora.METHODS,
                        help="how the adapted layers compute the deltas on the CPU (each its own case)")
    parser.add_argument("--dtype", default="auto", choices=textgen.DTYPE_CHOICES)
    parser.add_argument("--quantize", default=None, choices=textgen.QUANTIZE_CHOICES)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's threads (default: its own, one per core); 1 measures the work of each case "
                             "without waiting for other threads, which a busy machine makes long and erratic")
    parser.add_argument("--steps", type=int, default=300, help="decode steps timed one by one per case (0: none)")
    parser.add_argument("--layer", action="store_true",
                        help="also time one adapted layer (the first) per call, for 1, 2, 4 and 8 rows, by method")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    from victorian_gpt.utils.hub import is_hub_id

    local = Path(args.model) if Path(args.model).is_dir() else REPO_ROOT / args.model
    if (local / "config.json").is_file():
        args.model = str(local)
    elif args.model == DEFAULT_MODEL:
        parser.error(f"no model at {args.model}: train the README's main command first (accelerate launch "
                     "--config_file accelerate_config.yaml -m training.train --config "
                     "training/configs/pg19-sample-cpu.yaml), or pass --model")
    elif not is_hub_id(args.model):
        parser.error(f"no model folder at {args.model} (nor a Hub id)")

    with tempfile.TemporaryDirectory() as scratch:
        adapters = args.lora_adapters or random_adapters(args.model, args.adapters, args.rank, Path(scratch))
        base, tokenizer = textgen.load_model(args.model, dtype=args.dtype, quantize=args.quantize)
        adapted, _ = textgen.load_model(args.model, dtype=args.dtype, quantize=args.quantize, lora_adapters=adapters)
    names = adapted.lora_adapters
    window = textgen.context_length(base, tokenizer)
    limits = textgen.Limits.for_model(adapted, tokenizer)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, len(tokenizer), (12 + 5 * i,), generator=generator).tolist()
               for i in range(args.streams)]
    if max(len(p) for p in prompts) + args.new_tokens > window:
        parser.error(f"prompts of up to {max(len(p) for p in prompts)} tokens + --new-tokens exceed the model's "
                     f"{window}-token context")

    def run(model, adapter_ids, method):
        model_lora = getattr(model, "lora", None)
        if model_lora is not None:
            model_lora.method = method
        with textgen.Engine(model, tokenizer, limits=limits) as engine:
            with engine.held():
                generations = [engine.submit(p, textgen.GenerationParameters(max_new_tokens=args.new_tokens,
                                                                             ignore_eos=True, adapter_id=a))
                               for p, a in zip(prompts, adapter_ids)]
            tokens = [[t.id for t in g] for g in generations]
            assert engine.peak_batch_size == args.streams
            return tokens

    spread = [names[i % len(names)] for i in range(args.streams)]
    on_the_base = [None] * args.streams
    cases = {"base": (base, on_the_base, "kernel"), "base-on-adapted": (adapted, on_the_base, "kernel")}
    for method in args.methods:
        cases["lora" if method == "kernel" else f"lora-{method}"] = (adapted, spread, method)
    times = {case: [] for case in cases}
    outputs = {}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for case, (model, adapter_ids, method) in cases.items():
            start = time.perf_counter()
            outputs[case] = in_a_thread_of_its_own(run, model, adapter_ids, method)  # one engine thread, as served
            if round_:
                times[case].append(time.perf_counter() - start)
    rates = {case: args.streams * args.new_tokens / statistics.median(t) for case, t in times.items()}
    common = {"model": args.model, "dtype": adapted.serving_dtype, "streams": args.streams,
              "new_tokens": args.new_tokens, "adapters": len(names), "ranks": sorted({
                  int(m.rank) for m in adapted.modules() if isinstance(m, lora.LoraLinear)}),
              "repeats": args.repeats}
    for case, rate in rates.items():
        emit({"bench": "lora", "case": case, **common, "tokens_per_s": round(rate, 1),
              "seconds": [round(t, 3) for t in times[case]],
              "adapters_per_stream": cases[case][1] if case.startswith("lora") else None,
              "tokens_equal": equal(case, outputs)})
    main_case = "lora" if "lora" in rates else next(case for case in rates if case != "base")
    emit({"bench": "lora", "case": "ratio", **common,
          **{f"{case}_tokens_per_s": round(rate, 1) for case, rate in rates.items()},
          "ratio": round(rates[main_case] / rates["base"], 3), "ratio_of": f"{main_case} / base aggregate tokens/s",
          **{f"ratio_{case}": round(rate / rates["base"], 3) for case, rate in rates.items() if case != "base"},
          "goal": GOAL, "goal_met": rates[main_case] / rates["base"] >= GOAL, **environment()})
    if args.steps:
        step_cases = {case: (model, ids) for case, (model, ids, method) in cases.items() if method == "kernel"}
        steps = in_a_thread_of_its_own(time_steps, step_cases, args.streams, args.steps)
        emit({"bench": "lora-step", **common, "steps": args.steps,
              **{f"{case}_step_ms": round(statistics.median(t) * 1e3, 3) for case, t in steps.items()},
              **{f"ratio_{case}": round(statistics.median(steps["base"]) / statistics.median(t), 3)
                 for case, t in steps.items() if case != "base"},
              "ratio_of": "base's median decode step / the case's (tokens/s)", **environment()})
    if args.layer:
        time_layer(adapted, names, args)


def time_steps(cases: dict, rows: int, steps: int, context: int = 64) -> dict[str, list[float]]:
    """Seconds of each decode step of `rows` sequences over a `context`-token KV cache (the step's new KV dropped
    after it), the cases taking turns step by step, as the engine calls the model (batch-invariant attention, one
    token per row)."""
    import inspect

    from transformers import DynamicCache

    state = {}
    with torch.inference_mode():
        for case, (model, adapter_ids) in cases.items():
            generator = torch.Generator().manual_seed(0)
            vocabulary = model.config.vocab_size
            kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
            parts = []
            for adapter_id in adapter_ids:  # each prompt alone, as the engine prefills, then stacked
                parts.append(DynamicCache(config=model.config))
                with lora.adapter_rows(model, [adapter_id]):
                    model(input_ids=torch.randint(2, vocabulary, (1, context), generator=generator), use_cache=True,
                          **{kwarg: parts[-1]})
            cache = DynamicCache(config=model.config)
            for layer in range(len(parts[0].layers)):
                cache.update(torch.cat([part.layers[layer].keys for part in parts]),
                             torch.cat([part.layers[layer].values for part in parts]), layer)
            inputs = dict(input_ids=torch.randint(2, vocabulary, (rows, 1), generator=generator),
                          attention_mask=torch.ones(rows, context + 1, dtype=torch.long),
                          position_ids=torch.full((rows, 1), context), use_cache=True, logits_to_keep=1)
            state[case] = (model, adapter_ids, kwarg, cache, inputs)
        times = {case: [] for case in cases}
        for step in range(steps + 10):  # 10 to warm up
            for case, (model, adapter_ids, kwarg, cache, inputs) in state.items():
                start = time.perf_counter()
                with lora.adapter_rows(model, adapter_ids):
                    model(**inputs, **{kwarg: cache})
                elapsed = time.perf_counter() - start
                cache.crop(-1)
                if step >= 10:
                    times[case].append(elapsed)
    return times


def equal(case: str, outputs: dict) -> str | None:
    """How many streams of `case` gave the tokens of its reference: `base` for `base-on-adapted`, `lora` for the
    other methods."""
    reference = {"base-on-adapted": "base"}.get(case, "lora" if case.startswith("lora-") else None)
    if reference not in outputs:
        return None
    return f"{sum(a == b for a, b in zip(outputs[case], outputs[reference]))}/{len(outputs[case])} equal to {reference}"


def time_layer(model, names, args, calls: int = 2000):
    """One adapted layer's forward (base + deltas) per call, for a few rows spread over the adapters, by method; and
    the base layer alone."""
    layer = next(m for m in model.modules() if isinstance(m, lora.LoraLinear))
    dtype = next(p for p in model.parameters()).dtype

    def one(rows, method):
        x = torch.randn(rows, 1, layer.in_features).to(dtype)
        ids = [names[i % len(names)] for i in range(rows)]
        model.lora.method = method
        with torch.inference_mode(), model.lora.rows(ids):
            for _ in range(50):
                layer(x)
            start = time.perf_counter()
            for _ in range(calls):
                layer(x)
            return (time.perf_counter() - start) / calls * 1e6

    def plain(rows):
        x = torch.randn(rows, 1, layer.in_features).to(dtype)
        with torch.inference_mode():
            for _ in range(50):
                layer.base(x)
            start = time.perf_counter()
            for _ in range(calls):
                layer.base(x)
            return (time.perf_counter() - start) / calls * 1e6

    for rows in (1, 2, 4, 8):
        timings = {"base_layer": [], **{method: [] for method in lora.METHODS}}
        for _ in range(max(3, args.repeats)):  # alternating
            timings["base_layer"].append(in_a_thread_of_its_own(plain, rows))
            for method in lora.METHODS:
                timings[method].append(in_a_thread_of_its_own(one, rows, method))
        emit({"bench": "lora-layer", "rows": rows, "adapters_in_rows": min(rows, len(names)),
              "layer": f"{layer.in_features} -> {layer.out_features}, rank {layer.rank}",
              **{f"{name}_us": round(statistics.median(t), 1) for name, t in timings.items()},
              "repeats": max(3, args.repeats), **environment()})
    model.lora.method = "kernel"


if __name__ == "__main__":
    main()

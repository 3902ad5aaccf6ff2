"""The int8 CPU path (`victorian-gpt serve/generate --quantize int8`): decode speed and quality, side by side.

Speed (one JSON line per preset): `generate()` time per token, batch 1, a 32-token prompt, 64 new tokens, greedy with
the KV cache, of Hugging Face's `GPT2LMHeadModel` fp32 (the reference), our model fp32, and our model through
`textgen.quantize_int8` (int8 weights per output channel, int8 activations per token, `torch._int_mm`), alternating,
several repeats. With torchao installed, its weight-only and dynamic int8 configs (the ones transformers'
`TorchAoConfig` applies, on the same nn.Linear copy) are timed too, to show why they are not the path on CPU.
`ratio` = int8 / reference (target <= 0.5).

Quality (`--export DIR`, one JSON line): bits per byte of a trained export on the sample's test split, fp32 vs int8,
through training/evaluate.py's `eval_blocks` + `evaluate_blocks`. `ratio` = int8 / fp32 (target <= 1.01).

    python bench/bench_int8.py [--presets gpt2-124m modern-124m] [--repeats 5] [--export /tmp/serve-model/model]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import warnings
from pathlib import Path

import torch
from common import alternate, build_pair, emit, environment, median

from victorian_gpt import PRESETS, VictorianGPTConfig, VictorianGPTForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from serving import textgen  # noqa: E402

SAMPLE = REPO_ROOT.parent / "shared" / "data" / "pg19-sample"


def as_linear(model):
    """A copy of `model` with GPT-2 Conv1D layers turned into nn.Linear and an untied nn.Linear head (what
    transformers' torchao quantizer, which only converts nn.Linear, would need)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                linear.weight = nn.Parameter(child.weight.detach().t().contiguous())
                linear.bias = child.bias
                setattr(parent, name, linear)
    head = nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=False)
    head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    model.lm_head = head
    return model


def torchao_variants(ours) -> dict:
    try:
        logging.getLogger("torchao").setLevel(logging.ERROR)
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        return {}
    variants = {}
    for name, config in (("torchao_int8_weight_only", Int8WeightOnlyConfig()),
                         ("torchao_int8_dynamic", Int8DynamicActivationInt8WeightConfig())):
        model = as_linear(ours)
        quantize_(model, config)
        variants[name] = model
    return variants


def speed(preset: str, args) -> dict:
    shape = {k: PRESETS[preset][k] for k in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size")}
    _, reference = build_pair(**shape)
    torch.manual_seed(0)
    ours = VictorianGPTForCausalLM(VictorianGPTConfig.from_preset(preset, resid_pdrop=0.0, embd_pdrop=0.0,
                                                                  attn_pdrop=0.0)).eval()
    if not PRESETS[preset].get("tie_word_embeddings", True):  # an untied head starts at zero: give it weights
        torch.nn.init.normal_(ours.lm_head.weight, std=0.02)
    models = {"reference": reference.eval(), "ours_fp32": ours, "ours_int8": textgen.quantize_int8(copy.deepcopy(ours))}
    if args.torchao:
        models.update(torchao_variants(ours))
    prompt = torch.randint(2, shape["vocab_size"], (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    settings = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                    repetition_penalty=1.0, eos_token_id=None, pad_token_id=0, use_cache=True)
    outputs = {}

    def run(name):
        with torch.inference_mode():
            out = models[name].generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
        outputs[name] = out[0, args.prompt_tokens :].tolist()

    runs = {name: (lambda name=name: run(name)) for name in models}
    alternate(runs, 1)  # warm-up
    times = alternate(runs, args.repeats)
    ms = {name: 1000 * median(t) / args.new_tokens for name, t in times.items()}
    agree = sum(a == b for a, b in zip(outputs["ours_int8"], outputs["ours_fp32"]))
    return {
        "bench": "int8_decode",
        "shape": preset,
        "weight_layout": ours.config.to_dict().get("weight_layout", "conv1d"),
        "batch": 1,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        **{f"{name}_ms_per_token": round(value, 2) for name, value in ms.items()},
        "ratio": round(ms["ours_int8"] / ms["reference"], 3),
        "ratio_vs_ours_fp32": round(ms["ours_int8"] / ms["ours_fp32"], 3),
        "target": "<= 0.5",
        "greedy_tokens_equal_to_fp32": f"{agree}/{args.new_tokens}",  # random weights: near-ties everywhere
        "repeats": args.repeats,
        **environment(),
    }


def quality(export: str, args) -> dict:
    from training.evaluate import eval_blocks, evaluate_blocks

    try:
        from training.evaluate import text_measures as measures_of
    except ImportError:  # before word-level perplexity
        from training.measures import token_byte_lengths as measures_of

    results = {}
    for quantize in (None, "int8"):
        model, tokenizer = textgen.load_model(export, device="cpu", quantize=quantize)
        block_size = min(args.block_size or model.config.n_positions, model.config.n_positions)
        blocks = eval_blocks(str(args.dataset), args.split, tokenizer, block_size, args.max_eval_blocks)
        results[quantize or "fp32"] = evaluate_blocks(model, blocks, measures_of(tokenizer), 8, torch.device("cpu"))
    fp32, int8 = results["fp32"]["bits_per_byte"], results["int8"]["bits_per_byte"]
    return {
        "bench": "int8_quality",
        "export": export,
        "dataset": str(args.dataset),
        "split": args.split,
        "block_size": block_size,
        "tokens": results["fp32"]["tokens"],
        "fp32_bits_per_byte": round(fp32, 5),
        "int8_bits_per_byte": round(int8, 5),
        "ratio": round(int8 / fp32, 5),
        "target": "<= 1.01",
        **environment(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=["gpt2-124m", "modern-124m"],
                        choices=sorted(PRESETS), help="shapes to time (none: only the quality measurement)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torchao", dest="torchao", action="store_false", help="skip torchao's configs")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's, one per core); 1 is steadier on a busy machine")
    parser.add_argument("--export", default=None, help="a trained export folder: bits per byte fp32 vs int8")
    parser.add_argument("--dataset", default=SAMPLE)
    parser.add_argument("--split", default="test")
    parser.add_argument("--block-size", type=int, default=None, help="default: the model's context")
    parser.add_argument("--max-eval-blocks", type=int, default=None, help="default: the whole split")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    for preset in args.presets:
        emit(speed(preset, args))
    if args.export:
        emit(quality(args.export, args))


if __name__ == "__main__":
    main()

"""generate() time per token, ours vs GPT2LMHeadModel of the same shape (gpt2-124m: 12x768, ctx 2048, vocab 50,304).

Batch 1, a 32-token prompt, 64 new tokens, greedy, KV cache, fp32, CPU. Prints one JSON line:
`ratio` = our time per token / the reference's (target <= 0.9).

    python bench/bench_generate.py [--repeats 5] [--new-tokens 64] [--preset gpt2-124m]
"""

from __future__ import annotations

import argparse

import torch
from common import alternate, build_pair, emit, environment, median

from victorian_gpt import PRESETS


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2-124m", choices=sorted(PRESETS))
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()

    shape = PRESETS[args.preset]
    ours, reference = build_pair(**shape)
    dtype = getattr(torch, args.dtype)
    ours.to(args.device, dtype).eval(), reference.to(args.device, dtype).eval()
    prompt = torch.randint(2, shape["vocab_size"], (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(args.device)
    mask = torch.ones_like(prompt)
    # Greedy with no EOS and no repetition penalty: both produce exactly `new_tokens` tokens, same work.
    settings = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                    repetition_penalty=1.0, eos_token_id=None, pad_token_id=0, use_cache=True)

    def run(model):
        with torch.inference_mode():
            out = model.generate(prompt, attention_mask=mask, **settings)
        assert out.shape[1] == args.prompt_tokens + args.new_tokens

    runs = {"ours": lambda: run(ours), "reference": lambda: run(reference)}
    alternate(runs, 1)  # warm-up: allocator, kernels, lazy imports
    times = alternate(runs, args.repeats)
    ms_per_token = {name: 1000 * median(t) / args.new_tokens for name, t in times.items()}
    emit({
        "bench": "generate",
        "shape": args.preset,
        "batch": 1,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "ours_ms_per_token": round(ms_per_token["ours"], 2),
        "reference_ms_per_token": round(ms_per_token["reference"], 2),
        "ratio": round(ms_per_token["ours"] / ms_per_token["reference"], 3),
        "target": "<= 0.9",
        "dtype": args.dtype,
        "repeats": args.repeats,
        **environment(args.device),
    })


if __name__ == "__main__":
    main()

"""Training-step throughput (forward + backward + AdamW), ours vs GPT2LMHeadModel of the same shape.

Default shape: 6 layers x 384 wide, 6 heads, 8,192-token vocabulary, batch 8 x 256, fp32, CPU. Prints one JSON
line: `ratio` = our tokens/s / the reference's (target >= 1.0).

    python bench/bench_train_step.py [--repeats 5] [--batch 8] [--seq 256]
"""

from __future__ import annotations

import argparse

import torch
from common import alternate, build_pair, emit, environment, median


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"],
                        help="autocast dtype (fp16 adds a GradScaler), as accelerate's mixed_precision")
    args = parser.parse_args()

    ours, reference = build_pair(args.n_layer, args.n_embd, args.n_head, args.seq, args.vocab_size)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, args.vocab_size, (args.batch, args.seq), generator=gen).to(args.device)
    dtype = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]

    def make_step(model):
        model.to(args.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        scaler = torch.amp.GradScaler(args.device, enabled=dtype is torch.float16)

        def step():
            with torch.autocast(args.device, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = model(input_ids=batch, labels=batch).loss
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            return loss.item()  # waits for the device, so the timing is honest

        return step

    runs = {"ours": make_step(ours), "reference": make_step(reference)}
    alternate(runs, 2)  # warm-up
    times = alternate(runs, args.repeats)
    tokens = args.batch * args.seq
    tps = {name: tokens / median(t) for name, t in times.items()}
    emit({
        "bench": "train_step",
        "shape": f"{args.n_layer}x{args.n_embd}, {args.n_head} heads, vocab {args.vocab_size}",
        "batch": f"{args.batch}x{args.seq}",
        "ours_tokens_per_s": round(tps["ours"]),
        "reference_tokens_per_s": round(tps["reference"]),
        "ratio": round(tps["ours"] / tps["reference"], 3),
        "target": ">= 1.0",
        "mixed_precision": args.mixed_precision,
        "repeats": args.repeats,
        **environment(args.device),
    })


if __name__ == "__main__":
    main()

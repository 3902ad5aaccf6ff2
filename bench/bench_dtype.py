"""What `--dtype auto` costs in quality: an export in bf16 against the same export in fp32, side by side.

    python bench/bench_dtype.py runs/pg19-sample-cpu/model --dataset ../shared/data/pg19-sample --split test

One pass over the split's blocks (the model's context; `--max-blocks` to cut it short) runs both precisions on every
block and reports, as one JSON line: bits per byte in each (training/evaluate.py's measure: total NLL / ln 2 /
UTF-8 bytes of the predicted tokens); greedy flips: positions whose argmax differs between the two (teacher-forced on
the real text, so every position is one greedy decision), with the fp32 margin between its top two logits at each
flip (flips are near-ties: small margins); and free-running greedy continuations of `--openings` block starts,
`--new-tokens` long, that stay identical in bf16.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serving import textgen  # noqa: E402
from training.evaluate import eval_blocks, text_measures  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-blocks", type=int, default=None, help="default: the whole split")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--openings", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = {name: textgen.load_model(args.model, dtype=name) for name in ("float32", "bfloat16")}
    models = {name: model for name, (model, _) in loaded.items()}
    tokenizer = loaded["float32"][1]
    block_size = int(models["float32"].config.n_positions)
    byte_table = torch.from_numpy(text_measures(tokenizer)["byte_lengths"])
    nll = {name: 0.0 for name in models}
    tokens = bytes_ = flips = 0
    margins, starts, batch = [], [], []

    def run(batch):
        nonlocal tokens, bytes_, flips
        block = torch.stack(batch)
        targets = block[:, 1:]
        bytes_ += int(byte_table[targets.clamp(max=len(byte_table) - 1)].sum())
        tokens += targets.numel()
        logits = {}
        with torch.inference_mode():
            for name, model in models.items():
                logits[name] = model(input_ids=block[:, :-1]).logits.float()
                nll[name] += float(F.cross_entropy(logits[name].flatten(0, 1), targets.flatten(), reduction="sum"))
        top2 = logits["float32"].topk(2, dim=-1).values
        flipped = logits["float32"].argmax(-1) != logits["bfloat16"].argmax(-1)
        flips += int(flipped.sum())
        margins.extend((top2[..., 0] - top2[..., 1])[flipped].tolist())

    for item in eval_blocks(args.dataset, args.split, tokenizer, block_size, args.max_blocks):
        block = torch.as_tensor(item["input_ids"])
        if len(starts) < args.openings:
            starts.append(block[:32].tolist())
        batch.append(block)
        if len(batch) == args.batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)

    same = 0
    for opening in starts:
        outs = []
        for model in models.values():
            ids = torch.tensor([opening])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                 do_sample=False, top_k=None, top_p=None, temperature=None, repetition_penalty=1.0)
            outs.append(out[0, len(opening):].tolist())
        same += outs[0] == outs[1]
    margins.sort()
    print(json.dumps({
        "bench": "dtype", "model": args.model, "split": args.split, "blocks_tokens": tokens, "bytes": bytes_,
        "bits_per_byte_float32": nll["float32"] / math.log(2) / bytes_,
        "bits_per_byte_bfloat16": nll["bfloat16"] / math.log(2) / bytes_,
        "greedy_flips": flips, "greedy_positions": tokens, "flip_rate": flips / tokens,
        "flip_fp32_margin_median": margins[len(margins) // 2] if margins else None,
        "flip_fp32_margin_max": margins[-1] if margins else None,
        "continuations_identical": f"{same}/{len(starts)}", "new_tokens": args.new_tokens,
        "note": "busy machine",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

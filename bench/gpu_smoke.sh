#!/usr/bin/env bash
# GPU smoke run of the gpt2-124m config (fp16, fused AdamW, torch.compile) and of exact resume, for a GPU machine
# that has neither the Hub nor `datasets`: the data is prepared elsewhere into uint16 shards (runs/gpu-prep).
#   bash bench/gpu_smoke.sh prepare   # here: Python stdlib source as throwaway PG19-format "books" -> runs/gpu-prep
#   bash bench/gpu_smoke.sh run       # on the GPU: 40 steps, checkpoint at 20, then resume from 20; compares losses
#   EXTRA="--optimizer muon --muon_learning_rate 0.02 --lr_scheduler_type warmup_stable_decay" bash bench/gpu_smoke.sh run
set -euo pipefail
PREP=${PREP:-runs/gpu-prep}
if [ "${1:-run}" = prepare ]; then
  python - /tmp/pyl-pg19 <<'PY'
import json, sys, sysconfig, pathlib
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
books, text = [], ""
for f in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
    text += f.read_text(errors="replace")
    if len(text) > 400_000:
        books.append(text); text = ""
for split, rows in {"validation": books[:4], "test": books[4:8], "train": books[8:]}.items():
    with open(out / f"{split}.jsonl", "w") as fh:
        for i, t in enumerate(rows):
            fh.write(json.dumps({"short_book_title": f"{split}-{i}", "publication_date": 1900, "url": "", "text": t}) + "\n")
PY
  victorian-gpt tokenizer --dataset /tmp/pyl-pg19 --vocab-size 8192 --max-books 20 --output "$PREP/tokenizer"
  python -m training.prepare --dataset /tmp/pyl-pg19 --tokenizer "$PREP/tokenizer" --output "$PREP/data" --max_books 120
  exit 0
fi
OUT_DIR=${OUT_DIR:-/tmp/gpu-run}
ARGS=(--config training/configs/gpt2-124m.yaml --prepared_data "$PREP/data" --tokenizer "$PREP/tokenizer"
      --max_steps 40 --tokens_per_step 262144 --micro_batch_size 16 --warmup_steps 10 --eval_steps 20
      --max_eval_samples 32 --save_steps 20 --logging_steps 5 --output_dir "$OUT_DIR" ${EXTRA:-})
accelerate launch --num_processes 1 --mixed_precision fp16 -m training.train "${ARGS[@]}" --overwrite_output_dir
cp "$OUT_DIR/metrics.jsonl" "$OUT_DIR/metrics_full.jsonl"
accelerate launch --num_processes 1 --mixed_precision fp16 -m training.train "${ARGS[@]}" \
  --resume_from_checkpoint "$OUT_DIR/checkpoints/step_20"
python - "$OUT_DIR" <<'PY'
import json, sys
losses = lambda p: {m["step"]: m["loss"] for m in map(json.loads, open(p)) if "loss" in m}
a, b = losses(f"{sys.argv[1]}/metrics_full.jsonl"), losses(f"{sys.argv[1]}/metrics.jsonl")
times = [m["step_time_s"] for m in map(json.loads, open(f"{sys.argv[1]}/metrics_full.jsonl")) if "loss" in m][5:]
print(json.dumps({"bench": "gpu_smoke", "steady_step_s": round(sorted(times)[len(times) // 2], 3),
                  "tokens_per_s": round(262144 / sorted(times)[len(times) // 2]),
                  "resume_max_abs_loss_diff": max(abs(a[s] - b[s]) for s in a)}))
PY

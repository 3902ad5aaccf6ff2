#!/usr/bin/env bash
# The modern-124m recipe against the GPT-2 124M recipe on one GPU: bf16 autocast, torch.compile, the same steps of the
# same data (victorian-fiction's 184 books for training, the PG19 sample's validation split for evaluation), for a
# GPU machine that has neither the Hub nor `datasets` (the data is prepared here into uint16 shards, as gpu_smoke.sh).
#   bash bench/gpu_recipes.sh prepare      # here: 50,304-token BPE trained on victorian-fiction + shards -> gpu-prep/
#   bash bench/gpu_recipes.sh run          # on the GPU: both recipes back to back, evaluation, 3 samples each
#   TINY=1 bash bench/gpu_recipes.sh run   # the same script on CPU: a 2-layer model, 3 steps, no compile (a rehearsal)
# run prints one JSON line per recipe (validation bits/byte on the whole split, tokens/s, MFU, steps, tokens) and
# writes logs, metrics, samples and results.jsonl to $OUT (default runs/gpu-recipes).
# Knobs: STEPS (200), TOKENS_PER_STEP (131072 = 16 x 2048 x 4 accumulation), MICRO (16), WARMUP (STEPS/10),
#   RECIPES ("modern gpt2"), SAMPLE_ARGS (more bench_samples.py --samples flags: "--temperature 0.8", or
#   "--samples-grid --temperatures 0.7 0.8 --top-ps 0.95 --repetition-penalties 1.1 --no-greedy-row").
# 200 x 131,072 = 26.2M tokens per recipe: 1.26 passes over the 20.7M training tokens.
set -euo pipefail
PREP=${PREP:-gpu-prep}
OUT=${OUT:-runs/gpu-recipes}
PY=${PYTHON:-python3}

if [ "${1:-run}" = prepare ]; then
  DATA=${DATA:-../shared/data}
  mkdir -p "$PREP/vf"
  ln -sf "$(realpath "$DATA/victorian-fiction/train.jsonl.gz")" "$PREP/vf/train.jsonl.gz"
  ln -sf "$(realpath "$DATA/pg19-sample/validation.jsonl.gz")" "$PREP/vf/validation.jsonl.gz"
  victorian-gpt tokenizer --dataset "$PREP/vf" --vocab-size 50304 --output "$PREP/tokenizer"
  python -m training.prepare --dataset "$PREP/vf" --tokenizer "$PREP/tokenizer" --output "$PREP/data" \
    --splits train validation
  du -sh "$PREP/data" "$PREP/tokenizer"
  exit 0
fi

mkdir -p "$OUT"
# transformers as this project needs it, where the machine has another (wheels carried in .whl, see the device notes)
if [ -d .whl ] && ! $PY -c 'import transformers, sys; sys.exit(transformers.__version__ != "5.24.0")' 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null || true
  $PY -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__,
          "cuda", torch.cuda.is_available())'; } | tee "$OUT/env.txt"

if [ -n "${TINY:-}" ]; then  # CPU rehearsal: the same commands on a 2-layer, 64-wide model
  STEPS=${STEPS:-3} TOKENS_PER_STEP=${TOKENS_PER_STEP:-512} MICRO=${MICRO:-2} COMPILE=${COMPILE:-false}
  SHAPE="n_layer: 2, n_embd: 64, n_head: 4, n_positions: 128,"
  EVAL=(--max_eval_samples 4)
else
  SHAPE=""
  EVAL=(--max_eval_samples none)  # the whole validation split (1.0M tokens)
fi
STEPS=${STEPS:-200}
TOKENS_PER_STEP=${TOKENS_PER_STEP:-131072}
MICRO=${MICRO:-16}
WARMUP=${WARMUP:-$(( STEPS / 10 > 1 ? STEPS / 10 : 1 ))}
COMPILE=${COMPILE:-true}
COMMON=(--prepared_data "$PREP/data" --tokenizer "$PREP/tokenizer" --max_steps "$STEPS"
        --tokens_per_step "$TOKENS_PER_STEP" --micro_batch_size "$MICRO" --warmup_steps "$WARMUP" --min_lr_ratio 0.1
        --mixed_precision bf16 --torch_compile "$COMPILE" --eval_steps 0 --eval_on_start false --test_split none
        --num_samples 0 --save_steps 0 --logging_steps 10 --report_to none --dataloader_num_workers 1
        --overwrite_output_dir "${EVAL[@]}")
# the 2019 recipe at 124M as nanoGPT trains it: GPT-2 architecture, no dropout, AdamW 6e-4, cosine
GPT2=(--model_preset gpt2-124m --model_overrides "{${SHAPE}resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}"
      --optimizer adamw --learning_rate 6e-4 --lr_scheduler_type cosine)
# the modern recipe keys of the main command (docs/recipe.md)
MODERN=(--model_preset modern-124m --model_overrides "{${SHAPE%,}}" --optimizer muon --muon_learning_rate 0.02
        --muon_adjust_lr_fn original --learning_rate 3e-3 --lr_scheduler_type warmup_stable_decay --decay_ratio 0.3)

for name in ${RECIPES:-modern gpt2}; do
  run_dir=/tmp/gpu-recipes/$name
  declare -n keys=${name^^}
  echo "== $name: ${keys[*]}" | tee -a "$OUT/$name.log"
  start=$(date +%s)
  $PY -m training.train --config training/configs/gpt2-124m.yaml "${keys[@]}" "${COMMON[@]}" \
    --output_dir "$run_dir" >>"$OUT/$name.log" 2>&1 || { echo "$name: training failed, see $OUT/$name.log"; tail -20 "$OUT/$name.log"; continue; }
  wall=$(( $(date +%s) - start ))
  cp "$run_dir/metrics.jsonl" "$OUT/$name-metrics.jsonl"
  $PY - "$run_dir" "$name" "$wall" <<'PY' | tee -a "$OUT/results.jsonl"
import json, statistics, sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from training.hardware import flops_per_token, peak_flops
from victorian_gpt import VictorianGPTConfig

run, name, wall = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
summary = json.loads((run / "model" / "training_summary.json").read_text())
config = VictorianGPTConfig.from_pretrained(run / "model")
steps = [m for m in map(json.loads, open(run / "metrics.jsonl")) if "loss" in m]
steady = [m["step_time_s"] for m in steps[max(1, len(steps) // 10):]] or [steps[-1]["step_time_s"]]  # compile out
tokens_per_s = summary["tokens_per_step"] / statistics.median(steady)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
peak, hardware = peak_flops(device, "bf16")
block = summary["training_config"]["block_size"] or config.n_positions
validation = summary["eval"]["validation"]
print(json.dumps({
    "bench": "gpu_recipes", "recipe": name, "hardware": hardware, "steps": summary["steps"],
    "tokens": summary["tokens_seen"], "tokens_per_step": summary["tokens_per_step"],
    "validation_bits_per_byte": round(validation["bits_per_byte"], 4), "validation_loss": round(validation["loss"], 4),
    "validation_tokens": validation["tokens"], "tokens_per_s": round(tokens_per_s),
    "mfu": round(tokens_per_s * flops_per_token(config, block) / peak, 4),
    "first_step_s": round(steps[0]["step_time_s"], 1), "train_time_s": summary["train_time_s"], "wall_s": wall,
    "final_loss": round(steps[-1]["loss"], 4),
    "parameters": sum(t.numel() for t in load_file(run / "model" / "model.safetensors").values())}))
PY
  $PY bench/bench_samples.py --samples --model "$run_dir/model" ${SAMPLE_ARGS:-} 2>>"$OUT/$name.log" \
    | tee "$OUT/samples-$name.md" || echo "$name: samples failed, see $OUT/$name.log"
done
echo "== results"; cat "$OUT/results.jsonl" 2>/dev/null || true

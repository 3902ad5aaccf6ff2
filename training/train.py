"""Train VictorianGPT with accelerate: mixed precision, DDP, gradient accumulation, exact resume, evaluation, export.

    accelerate launch --config_file accelerate_config.yaml -m training.train --config training/configs/small.yaml \
        [--key value ...]
    victorian-gpt train --config ... [--key value ...]        # the same, in one process

Without CUDA the same command runs on CPU (`Accelerator(cpu=True)`: `accelerate launch` of a multi-GPU config then
starts gloo DDP processes). Output directory layout:

    output_dir/training_config.yaml   the resolved config        output_dir/tokenizer/   trained here if none given
    output_dir/metrics.jsonl          one line per step / eval   output_dir/logs/        TensorBoard
    output_dir/checkpoints/step_K/    accelerator.save_state + trainer_state.json + each rank's data stream state
                                      (atomic; the last K kept, and the best model's)
    output_dir/model/                 the exported model (save_pretrained + training_summary.json + loss_curve.png)

`train()` reads top to bottom: `checks.check_inputs` (every error before any compute), `session.setup` (accelerator,
tokenizer, model, optimizer, resume, data), `train_loop` (which shows only the step: `train_step`), evaluation
(`evaluate`), `export` (the final figures, then `export.write_export`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import CHECKPOINTS, Interrupt, save_checkpoint
from .checks import check_inputs
from .config import FIELDS, TrainingConfig, load_config, parse_overrides
from .evaluate import eval_blocks, evaluate_blocks, lm_loss
from .export import write_export
from .hardware import memory_used
from .optim import lr_factor, muon_momentum, set_learning_rates, set_muon_momentum
from .session import Session, end_training, setup

PROMPTS = [  # Victorian openings for the samples shown at each evaluation
    "It was a dark and stormy night; the rain fell in torrents",
    "My dear Sir, I have the honour to inform you that",
    "The old house stood at the end of the lane,",
]


class NonFiniteLossError(RuntimeError):
    """More than `max_nonfinite_steps` consecutive non-finite losses."""


def train(config: TrainingConfig, checked=None) -> dict:
    """Run (or resume) training as `config` says; export at the end. `checked`: what `check_inputs` returned."""
    with Interrupt() as interrupt:  # from the start: a signal during set-up is answered at the first step
        s = setup(config, checked)
        try:
            if s.run["step"] == 0 and config.eval_on_start and config.max_steps > 0:
                evaluate(s, 0)
            if s.run["step"] == 0 and config.model_name_or_path is not None:
                measure_before(s)
            stopped_by = train_loop(s, interrupt)
        finally:
            if hasattr(s.train_data, "close"):
                s.train_data.close()  # the DataLoader worker, which ignores signals, must be told to go
            if s.fingerprints is not None:
                s.fingerprints.close()
    s.run["wall_time_s"] += time.time() - s.started
    if stopped_by == "nonfinite":
        end_training(s)
        raise NonFiniteLossError(f"{s.run['nonfinite_in_row']} non-finite losses in a row at step {s.run['step']}; "
                                 "stopped without saving (the last checkpoint is the last good state)")
    if stopped_by == "interrupt":
        end_training(s)
        return {"interrupted": True, **s.run}
    return export(s, early_stopped=stopped_by == "early_stopping")


# --- the loop


def train_loop(s: Session, interrupt: Interrupt) -> str | None:
    """Steps until the end of the run. Returns why it stopped early: "interrupt", "nonfinite", "early_stopping"."""
    config = s.config
    s.model.train()
    progress = progress_bar(s)
    window = {"start": time.time(), "tokens": 0}  # tokens/s over the last logging window
    try:
        while not s.finished():
            step = train_step(s, interrupt)
            if s.run["nonfinite_in_row"] > config.max_nonfinite_steps:
                return "nonfinite"
            log_step(s, step, progress, window)
            stop = None
            if config.eval_steps and s.run["step"] % config.eval_steps == 0 and not s.finished():
                stop = evaluate(s, s.run["step"])
                window.update(start=time.time(), tokens=0)  # the pause is not training throughput
            # no periodic save inside a non-finite streak: it could prune good checkpoints
            periodic = config.save_steps and s.run["step"] % config.save_steps == 0 and not s.run["nonfinite_in_row"]
            best_unsaved = config.load_best_model_at_end and s.run["best_step"] == s.run["step"]
            if step["interrupted"] or periodic or best_unsaved:
                path = checkpoint(s)
                if step["interrupted"]:
                    s.accelerator.print(f"interrupted: saved {path}; resume with --resume_from_checkpoint latest")
                    return "interrupt"
            if stop:
                return stop
        return None
    finally:
        progress.close()


def train_step(s: Session, interrupt: Interrupt) -> dict:
    """One optimizer step: the micro-batches, one small all-reduce (loss, interrupt, books, clock), clip, update."""
    acc, run, device = s.accelerator, s.run, s.device
    step_start = time.time()
    factor = lr_factor(run["step"], s.config, s.clock)
    set_learning_rates(s.optimizer, factor)
    if s.config.muon_momentum_warmup_steps:
        set_muon_momentum(s.optimizer, muon_momentum(run["step"], s.config))
    loss_sum, books = torch.zeros((), device=device), -1
    for _ in range(s.accumulation):
        batch = next(s.batches)
        books = max(books, int(batch["book"].max()))
        if s.fingerprints is not None:
            for row in batch["input_ids"]:
                s.fingerprints.write(json.dumps({"step": run["step"], "block": hash_block(row)}) + "\n")
        with acc.accumulate(s.model):  # no DDP all-reduce until the last micro-step
            with acc.autocast():
                loss = lm_loss(s.model, batch["input_ids"].to(device, non_blocking=True))
            acc.backward(loss)  # divided by the accumulation steps inside
        loss_sum += loss.detach()
    clock_rank0 = run["train_time_s"] + time.time() - step_start if acc.is_main_process else 0.0
    flags = torch.stack([loss_sum / s.accumulation, torch.tensor(float(interrupt.requested), device=device),
                         torch.tensor(float(books + 1), device=device),
                         torch.tensor(clock_rank0, dtype=loss_sum.dtype, device=device)])
    flags = acc.reduce(flags, reduction="sum") if acc.num_processes > 1 else flags
    step_loss, s.clock = flags[0].item() / acc.num_processes, flags[3].item()
    if math.isfinite(step_loss):
        grad_norm = float(acc.clip_grad_norm_(s.model.parameters(), s.config.max_grad_norm))
        s.optimizer.step()
        run["nonfinite_in_row"] = 0
    else:
        run["nonfinite_in_row"] += 1
        grad_norm = float("nan")
        warnings.warn(f"step {run['step'] + 1}: non-finite loss {step_loss}; skipping the update "
                      f"({run['nonfinite_in_row']} in a row, limit {s.config.max_nonfinite_steps})")
    s.optimizer.zero_grad(set_to_none=True)
    run["step"] += 1
    run["tokens_seen"] += s.tokens_per_step
    # distinct books reached so far: ranks either share one stream ("blocks") or each read their own books
    books_now = flags[2].item() / (acc.num_processes if s.config.data_sharding == "blocks" else 1)
    run["books_seen"] = max(run["books_seen"], int(round(books_now)))
    step_time = time.time() - step_start
    # rank 0 keeps its own full clock (it writes checkpoints); the others follow the agreed one
    run["train_time_s"] = run["train_time_s"] + step_time if acc.is_main_process else s.clock
    return {"loss": step_loss, "lr": s.config.learning_rate * factor, "grad_norm": grad_norm,
            "step_time_s": step_time, "interrupted": flags[1].item() > 0}


def progress_bar(s: Session):
    kwargs = dict(desc="train", disable=not s.accelerator.is_main_process, dynamic_ncols=True)
    if s.budget_s is None:
        return tqdm(total=s.config.max_steps, initial=s.run["step"], unit="step", **kwargs)
    # training seconds, shown whole: "train: 45%|████▌     | 216/480 s [03:40<04:28, loss=…]"
    return tqdm(total=round(s.budget_s), initial=round(s.run["train_time_s"]), unit="s",
                bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s [{elapsed}<{remaining}{postfix}]", **kwargs)


def log_step(s: Session, step: dict, progress, window: dict):
    run, config = s.run, s.config
    s.record({"step": run["step"], "loss": step["loss"], "lr": step["lr"], "grad_norm": step["grad_norm"],
              "step_time_s": step["step_time_s"], "train_time_s": round(run["train_time_s"], 3), "time": time.time()})
    window["tokens"] += s.tokens_per_step
    if run["step"] % config.logging_steps == 0 or run["step"] == 1:
        # over the last logging window, so compilation and evaluation pauses age out
        tokens_per_s = window["tokens"] / (time.time() - window["start"])
        window.update(start=time.time(), tokens=0)
        mfu = tokens_per_s * s.model_flops / (s.peak * s.accelerator.num_processes)
        s.accelerator.log({"train/loss": step["loss"], "train/lr": step["lr"], "train/grad_norm": step["grad_norm"],
                           "train/tokens_per_s": tokens_per_s, "train/mfu": mfu}, step=run["step"])
        progress.set_postfix(loss=f"{step['loss']:.3f}", lr=f"{step['lr']:.2e}", tok_s=f"{tokens_per_s:,.0f}",
                             mfu=f"{100 * mfu:.1f}%", mem=memory_used(s.device), refresh=False)
    progress.update(1 if s.budget_s is None else step["step_time_s"])


def checkpoint(s: Session) -> Path:
    s.run["wall_time_s"] += time.time() - s.started
    s.started = time.time()
    return save_checkpoint(s.accelerator, s.output_dir, s.run, s.config.save_total_limit,
                           data_state=s.train_data.state_dict(), protect_step=s.run["best_step"])


# --- evaluation


def evaluate_split(s: Session, split: str, dataset: str | None = None) -> dict:
    """Figures on `split` of the training data (or of `dataset`, e.g. `general_dataset`)."""
    config, acc = s.config, s.accelerator
    blocks = eval_blocks(dataset or config.dataset, split, s.tokenizer, s.block_size, config.max_eval_samples,
                         acc.process_index, acc.num_processes, None if dataset else config.prepared_data,
                         text_options=config.text_options)
    return evaluate_blocks(s.raw_model, blocks, s.measures, config.per_device_eval_batch_size or
                           config.micro_batch_size, s.device, acc)


def measure_before(s: Session):
    """Fine-tuning: the starting model's figures on the fine-tuning data's held-out books (validation, test) and on
    `general_dataset`, kept in the trainer state (a resumed run still knows them) for the card's before/after."""
    config = s.config
    before = {}
    if s.last_eval[0] == 0:
        before["validation"] = s.last_eval[1]
    else:
        before["validation"] = evaluate_split(s, config.validation_split)
    if config.test_split:
        before["test"] = evaluate_split(s, config.test_split)
    if config.general_dataset:
        before["general"] = evaluate_split(s, config.general_split, config.general_dataset)
    s.run["before"] = before
    s.record({"step": 0, "before": before})


def evaluate(s: Session, step: int, final: bool = False) -> str | None:
    """Validation figures and samples at `step`, logged; the best model and early stopping follow them.
    Returns "early_stopping" when `early_stopping_patience` evaluations in a row have not improved enough."""
    result = evaluate_split(s, s.config.validation_split)
    s.last_eval = (step, result)
    samples = generate_samples(s.raw_model, s.tokenizer, s.config, s.device) if s.accelerator.is_main_process else []
    s.record({"step": step, "eval": result})
    s.accelerator.log({f"eval/{k}": v for k, v in result.items() if v is not None}, step=step)
    if samples:
        s.accelerator.log({f"samples/{i}": text for i, text in enumerate(samples)}, step=step)
        for text in samples:
            tqdm.write(f"  sample> {text!r}")
    if s.accelerator.is_main_process:
        word_ppl = result["word_perplexity"]
        tqdm.write(f"step {step}: validation loss {result['loss']:.4f}, ppl {result['perplexity']:.2f}, "
                   f"bits/byte {result['bits_per_byte']:.4f}"
                   + (f", word ppl {word_ppl:.2f}" if word_ppl is not None else ""))
    return track_best(s, step, result, final)


def track_best(s: Session, step: int, result: dict, final: bool = False) -> str | None:
    """transformers' rules: the best model is the lowest `metric_for_best_model` so far; an evaluation that does not
    beat the best by more than `early_stopping_threshold` counts towards `early_stopping_patience`."""
    run, config = s.run, s.config
    value = result.get(config.metric_for_best_model)
    if step == 0 or value is None:  # the untrained model is no candidate
        return None
    best = run["best_metric"]
    if best is None or value < best - config.early_stopping_threshold:
        run["evals_without_improvement"] = 0
    else:
        run["evals_without_improvement"] += 1
    if best is None or value < best:
        run.update(best_step=step, best_metric=value, best_eval=result)
    patience = config.early_stopping_patience
    if patience and run["evals_without_improvement"] >= patience and not final:
        s.accelerator.print(f"early stopping at step {step}: {config.metric_for_best_model} has not improved by more "
                            f"than {config.early_stopping_threshold} for {patience} evaluations "
                            f"(best {run['best_metric']:.4f} at step {run['best_step']})")
        return "early_stopping"
    return None


# --- export


def export(s: Session, early_stopped: bool = False) -> dict:
    """Final validation (the best model's with `load_best_model_at_end`) and test figures; the exported folder."""
    run, config, acc = s.run, s.config, s.accelerator
    validation = s.last_eval[1] if s.last_eval[0] == run["step"] else None
    if validation is None:
        evaluate(s, run["step"], final=True)
        validation = s.last_eval[1]
    exported_step = run["step"]
    if config.load_best_model_at_end and run["best_step"] not in (None, run["step"]):
        best_dir = s.output_dir / CHECKPOINTS / f"step_{run['best_step']}"
        acc.load_state(str(best_dir))  # the weights of the best model (and its optimizer and RNG: unused now)
        exported_step, validation = run["best_step"], run["best_eval"]
        acc.print(f"loaded the best model: step {exported_step}, {config.metric_for_best_model} {run['best_metric']}")
    final = {"validation": validation}
    if config.test_split:
        final["test"] = evaluate_split(s, config.test_split)
        s.record({"step": exported_step, "test": final["test"]})
    general = None  # not a split of the training data: only in the fine-tuning before/after
    if config.general_dataset:
        general = evaluate_split(s, config.general_split, config.general_dataset)
        s.record({"step": exported_step, "general": general})
    export_dir = s.output_dir / "model"
    if acc.is_main_process:
        write_export(s, export_dir, final, exported_step, early_stopped, general)
    acc.wait_for_everyone()
    end_training(s)
    return {"interrupted": False, "export_dir": str(export_dir), **run, "eval": final, "general_eval": general,
            "exported_step": exported_step, "early_stopped": early_stopped}


def generate_samples(model, tokenizer, config, device) -> list[str]:
    was_training = model.training
    model.eval()
    samples = []
    with torch.no_grad():
        for prompt in PROMPTS[: config.num_samples]:
            inputs = tokenizer(prompt, return_tensors="pt").to(device)
            out = model.generate(**inputs, max_new_tokens=config.sample_max_new_tokens, do_sample=True,
                                 pad_token_id=tokenizer.pad_token_id)
            samples.append(tokenizer.decode(out[0], skip_special_tokens=True))
    model.train(was_training)
    return samples


def hash_block(block) -> str:
    return hashlib.blake2b(block.numpy().tobytes(), digest_size=8).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="victorian-gpt train",
        description="Train VictorianGPT. Any training-config key can be overridden as --key value.",
        epilog="config keys (see training/config.py): " + ", ".join(
            f"{name}={field.default if field.default is not dataclasses.MISSING else '{}'}" for name, field in FIELDS.items()
        ) + ". max_train_minutes counts the time of the training steps only (data, forward, backward, optimizer), "
        "not evaluation, samples or checkpoint saves, so runs compare at equal compute; the schedule then follows that "
        "clock and max_steps only caps the run. SIGTERM or SIGINT (to this process, to each rank, or to accelerate "
        "launch, which passes it on) finishes the step, saves a checkpoint and exits with status 130; resume with "
        "--resume_from_checkpoint latest. Multi-GPU / mixed precision: accelerate launch --config_file "
        "accelerate_config.yaml -m training.train --config ...",
    )
    parser.add_argument("--config", default=None, help="a YAML training config (training/configs/*.yaml)")
    args, rest = parser.parse_known_args(argv)
    try:
        config = load_config(args.config, parse_overrides(rest))
        checked = check_inputs(config)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        parser.error(str(error))  # exit status 2 with the message, before any compute
    try:
        # an outer handler outlives train()'s: a rank that has saved and is tearing down must not die of the
        # signal the launcher passes on when another rank has already exited
        with Interrupt():
            result = train(config, checked)
    except NonFiniteLossError as error:
        print(f"victorian-gpt train: error: {error}", file=sys.stderr)
        return 1
    return 130 if result["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())

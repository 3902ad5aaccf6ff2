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

`train()` reads top to bottom: `setup` (accelerator, tokenizer, model, optimizer, resume, data), `train_loop` (which
shows only the step: `train_step`), evaluation (`evaluate`), `export`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from .checkpoint import (
    CHECKPOINTS,
    TRAINER_STATE,
    Interrupt,
    find_checkpoint,
    save_checkpoint,
)
from .config import FIELDS, TrainingConfig, load_config, parse_overrides
from .optim import build_optimizer, lr_factor, set_learning_rates

METRICS = "metrics.jsonl"
DEFAULT_PRESET = "gpt2-124m"  # the model trained from scratch when model_preset is not set
NATIVE_EXPORT = "model-hf"  # native_export's folder beside output_dir/model (on the Hub: its own USER/NAME-hf repo)
PROMPTS = [  # Victorian openings for the samples shown at each evaluation
    "It was a dark and stormy night; the rain fell in torrents",
    "My dear Sir, I have the honour to inform you that",
    "The old house stood at the end of the lane,",
]
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12, "V100": 125e12,
              "T4": 65e12, "4090": 165e12, "3090": 71e12}  # dense fp16/bf16 tensor-core peaks


class NonFiniteLossError(RuntimeError):
    """More than `max_nonfinite_steps` consecutive non-finite losses."""


def lr_at(step: int, config: TrainingConfig, train_time_s: float | None = None) -> float:
    """AdamW's learning rate at `step` (see `optim.lr_factor`; Muon's follows the same factor)."""
    return config.learning_rate * lr_factor(step, config, train_time_s)


# ----------------------------------------------------------------------------------------------------------------------
# up-front checks: every error that needs no compute is raised before any


def check_inputs(config: TrainingConfig):
    """Raise a clear error for a bad dataset, tokenizer or output dir. Returns (model config, tokenizer or None)."""
    from transformers import AutoTokenizer

    from victorian_gpt import VictorianGPTConfig
    from victorian_gpt.sources import is_txt_source, load_text_dataset

    from .finetune import check_start, context_length

    if config.model_name_or_path is not None:  # fine-tuning: the model fixes the architecture and the tokenizer
        model_config, start_tokenizer = check_start(config)
    else:
        model_config = VictorianGPTConfig.from_preset(config.model_preset or DEFAULT_PRESET, **config.model_overrides)
        start_tokenizer = None
    if config.native_export:  # an option no native class has fails now, not after the run
        from victorian_gpt.convert import native_architecture

        if not isinstance(model_config, VictorianGPTConfig):
            raise ValueError(f"native_export: {config.model_name_or_path} is already a native "
                             f"{type(model_config).__name__}; its export is the native folder")
        native_architecture(model_config)
    n_positions = context_length(model_config)
    block_size = config.block_size or n_positions
    if block_size > n_positions:
        raise ValueError(f"block_size {block_size} exceeds the model's context n_positions={n_positions}")

    output_dir = Path(config.output_dir)
    if config.resume_from_checkpoint:
        find_checkpoint(output_dir, config.resume_from_checkpoint)
    elif output_dir.exists() and any(output_dir.iterdir()) and not config.overwrite_output_dir:
        raise FileExistsError(
            f"output_dir {str(output_dir)!r} already holds another run; resume it with --resume_from_checkpoint "
            "latest, choose another --output_dir, or pass --overwrite_output_dir"
        )

    sources = [(config.dataset, split) for split in (config.train_split, config.validation_split)]
    if config.general_dataset is not None:
        sources.append((config.general_dataset, config.general_split))
    if config.prepared_data is not None:
        sources = sources[2:]
    for source, split in sources:
        # missing path, deepmind/pg19, known columns; .txt books: no files, empty or binary files, too few to split
        dataset = load_text_dataset(source, split=split, text_options=config.text_options)
        first = next(iter(dataset), None)  # JSON Lines declare no columns: look at the first row
        if first is None:
            raise ValueError(f"{source} ({split}) is empty")
        if not isinstance(first.get("text"), str):
            raise ValueError(f"{source} ({split}) has no 'text' field; its fields are {sorted(first)}")
    if config.prepared_data is None:
        if config.test_split and is_txt_source(config.dataset):  # a .txt folder without it fails now, not at the end
            load_text_dataset(config.dataset, split=config.test_split, text_options=config.text_options)
    else:
        from .data import read_prepared_meta

        meta = read_prepared_meta(config.prepared_data)
        if config.tokenizer is None and start_tokenizer is None:
            raise ValueError("prepared_data needs the tokenizer it was prepared with: set `tokenizer`")
        if start_tokenizer is not None and meta["vocab_size"] != len(start_tokenizer):
            raise ValueError(f"{config.prepared_data} was prepared with a {meta['vocab_size']}-token tokenizer, not "
                             f"{config.model_name_or_path}'s {len(start_tokenizer)}-token one")
    if start_tokenizer is not None:
        return model_config, start_tokenizer

    tokenizer_dir = config.tokenizer or (output_dir / "tokenizer" if config.resume_from_checkpoint else None)
    tokenizer = None
    if tokenizer_dir is not None:
        if not Path(tokenizer_dir).is_dir():
            raise FileNotFoundError(f"tokenizer folder {str(tokenizer_dir)!r} does not exist")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        if len(tokenizer) > model_config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model_config.vocab_size}; "
                "use a model with a larger vocabulary (model_overrides: {vocab_size: ...}) or a smaller tokenizer"
            )
        if config.prepared_data is not None and meta["vocab_size"] != len(tokenizer):
            raise ValueError(f"{config.prepared_data} was prepared with a {meta['vocab_size']}-token tokenizer, "
                             f"not this {len(tokenizer)}-token one ({tokenizer_dir})")
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {tokenizer_dir} has no eos_token (needed between books)")
    return model_config, tokenizer


# ----------------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class Session:
    """What the parts of a run share. `run` is what trainer_state.json holds (and a resumed run starts from)."""

    config: TrainingConfig
    accelerator: Any
    model: Any  # as accelerate prepared it (DDP, compiled): for training steps
    raw_model: Any  # the VictorianGPTForCausalLM itself: evaluation, samples, export
    optimizer: Any
    tokenizer: Any
    model_config: Any
    output_dir: Path
    block_size: int
    accumulation: int
    tokens_per_step: int
    run: dict
    train_data: Any = None  # this rank's block stream (PackedBlocks or PreparedBlocks), positioned by the checkpoint
    batches: Any = None
    measures: dict = field(default_factory=dict)  # bytes and words per token, for evaluation
    history: list = field(default_factory=list)
    fingerprints: Any = None
    model_flops: float = 0.0
    peak: float = 1.0
    started: float = 0.0  # wall clock since the last checkpoint save
    clock: float = 0.0  # the training clock all ranks agree on (rank 0's, carried by each step's all-reduce)
    last_eval: tuple = (None, None)  # (step, validation result)

    @property
    def device(self):
        return self.accelerator.device

    @property
    def budget_s(self) -> float | None:
        return self.config.max_train_minutes * 60 if self.config.max_train_minutes else None

    def finished(self) -> bool:
        budget = self.budget_s
        return self.run["step"] >= self.config.max_steps or (budget is not None and self.clock >= budget)

    def record(self, entry: dict):
        if self.accelerator.is_main_process:
            self.history.append(entry)
            with (self.output_dir / METRICS).open("a") as f:
                f.write(json.dumps(entry) + "\n")


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


def end_training(s: Session):
    """accelerate's `end_training` (trackers, then the process group), in an order that cannot deadlock.

    Destroying the process group first would leave the DDP reducer holding the last reference to gloo's process
    group: when it is freed, the group's destructor joins gloo's worker thread while holding the GIL, and that thread
    may still be releasing the last collective's tensors, which needs the GIL (seen as a rank hanging after export,
    about one run in thirty on a busy machine). So: free the DDP model first, give the worker thread a moment with
    the GIL released, then destroy the group.
    """
    s.model = s.optimizer = None
    s.accelerator.free_memory()  # the accelerator's references to the prepared model and optimizer
    if s.accelerator.num_processes > 1:
        time.sleep(0.2)
    s.accelerator.end_training()


# --- set-up


def setup(config: TrainingConfig, checked=None) -> Session:
    """Accelerator, tokenizer, model and optimizer, then the checkpoint's state, this rank's data stream and logs."""
    from .evaluate import text_measures
    from .finetune import context_length

    started = time.time()
    model_config, tokenizer = checked or check_inputs(config)
    output_dir = Path(config.output_dir)
    resume_dir = find_checkpoint(output_dir, config.resume_from_checkpoint) if config.resume_from_checkpoint else None
    block_size = config.block_size or context_length(model_config)
    accelerator, accumulation = make_accelerator(config, block_size)
    prepare_output_dir(accelerator, output_dir, config, fresh=resume_dir is None)
    tokenizer = tokenizer or make_tokenizer(accelerator, config, model_config, output_dir)
    model, raw_model, optimizer = build_model(accelerator, config, model_config)
    s = Session(config=config, accelerator=accelerator, model=model, raw_model=raw_model, optimizer=optimizer,
                tokenizer=tokenizer, model_config=model_config, output_dir=output_dir, block_size=block_size,
                accumulation=accumulation, started=started,
                tokens_per_step=accumulation * config.micro_batch_size * block_size * accelerator.num_processes,
                run={"step": 0, "tokens_seen": 0, "books_seen": 0, "wall_time_s": 0.0, "train_time_s": 0.0,
                     "nonfinite_in_row": 0, "gradient_accumulation_steps": accumulation,
                     "num_processes": accelerator.num_processes, "best_step": None, "best_metric": None,
                     "best_eval": None, "evals_without_improvement": 0, "before": None})
    data_state = resume(s, resume_dir) if resume_dir is not None else None
    s.clock = s.run["train_time_s"]
    s.model_flops = flops_per_token(model_config, block_size)
    s.peak, _ = peak_flops(s.device, s.accelerator.mixed_precision)  # before the data worker starts competing for the cores
    open_train_data(s, data_state, resumed=resume_dir is not None)
    s.measures = text_measures(tokenizer)
    open_logs(s)
    if config.model_name_or_path is not None and s.accelerator.is_main_process:
        from .finetune import count_parameters

        trainable, total = count_parameters(raw_model)
        s.accelerator.print(f"fine-tuning {config.model_name_or_path} ({config.finetuning_type}): {trainable:,} of "
                            f"{total:,} parameters trainable ({100 * trainable / total:.2f}%)")
    return s


def make_accelerator(config: TrainingConfig, block_size: int):
    """CPU fallback, mixed precision, and the accumulation that makes `tokens_per_step` with this many processes."""
    import torch
    from accelerate import Accelerator, PartialState

    cpu = not torch.cuda.is_available()
    mixed_precision = config.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if cpu and mixed_precision == "fp16":
        warnings.warn("fp16 mixed precision needs a GPU; training in fp32 on CPU (mixed_precision='no')")
        mixed_precision = "no"
    # every rank ran check_inputs before this rendezvous, so none can see files another rank writes after it
    state = PartialState(cpu=cpu, timeout=timedelta(seconds=config.ddp_timeout))
    tokens_per_micro_step = config.micro_batch_size * block_size * state.num_processes
    accumulation = max(1, round(config.tokens_per_step / tokens_per_micro_step))
    if accumulation * tokens_per_micro_step != config.tokens_per_step and state.is_main_process:
        warnings.warn(f"tokens_per_step={config.tokens_per_step} is not a multiple of micro_batch_size x block_size x "
                      f"processes = {tokens_per_micro_step}; using {accumulation * tokens_per_micro_step} per step")
    report_to = None if config.report_to == "none" else config.report_to
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision, gradient_accumulation_steps=accumulation,
                              log_with=report_to, project_dir=str(Path(config.output_dir) / "logs"))
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator, accumulation


def prepare_output_dir(accelerator, output_dir: Path, config: TrainingConfig, fresh: bool):
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if fresh:  # a fresh run (maybe --overwrite_output_dir): no stale checkpoints or metrics
            shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)
            (output_dir / METRICS).unlink(missing_ok=True)
        import yaml

        (output_dir / "training_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def make_tokenizer(accelerator, config: TrainingConfig, model_config, output_dir: Path):
    """No tokenizer given: train one from the training split (main process; the others wait, then load it)."""
    from transformers import AutoTokenizer

    from victorian_gpt.tokenization import train_tokenizer_from_source

    tokenizer_dir = output_dir / "tokenizer"
    if accelerator.is_main_process:
        train_tokenizer_from_source(config.dataset, model_config.vocab_size, str(tokenizer_dir),
                                    split=config.train_split, max_books=config.tokenizer_max_books,
                                    model_max_length=model_config.n_positions, text_options=config.text_options)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def build_model(accelerator, config: TrainingConfig, model_config):
    """Same seed everywhere (identical initial weights), then per-rank seeds (dropout streams). Fine-tuning: the
    starting model's weights (and, for LoRA, the adapters, seeded alike)."""
    import torch
    from accelerate.utils import set_seed

    from victorian_gpt import VictorianGPTForCausalLM

    from .finetune import load_start_model

    set_seed(config.seed)
    if config.model_name_or_path is not None:
        model = raw_model = load_start_model(config, model_config)
    else:
        model = raw_model = VictorianGPTForCausalLM(model_config)
    if config.gradient_checkpointing and config.finetuning_type != "lora":  # transformers 5.23 renamed it
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    optimizer = build_optimizer(model, config, fused=accelerator.device.type == "cuda")
    if config.torch_compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    set_seed(config.seed, device_specific=True)
    return model, raw_model, optimizer


def resume(s: Session, resume_dir: Path) -> dict | None:
    """Weights, optimizer, scaler and RNG (after this nothing draws randomness), the trainer state; returns this rank's
    data stream state (None for a checkpoint from before data states were saved)."""
    from .data import load_data_state

    s.accelerator.load_state(str(resume_dir))
    s.run.update(json.loads((resume_dir / TRAINER_STATE).read_text()))
    if (s.run["gradient_accumulation_steps"], s.run["num_processes"]) != (s.accumulation, s.accelerator.num_processes):
        raise ValueError(
            f"{resume_dir} was written with {s.run['num_processes']} processes x accumulation "
            f"{s.run['gradient_accumulation_steps']}; resuming needs the same layout to find the data position"
        )
    s.accelerator.print(f"resumed from {resume_dir} at step {s.run['step']}")
    return load_data_state(resume_dir, s.accelerator.process_index)


def open_train_data(s: Session, data_state: dict | None, resumed: bool):
    """This rank's endless block stream, where the checkpoint left it."""
    from .data import PackedBlocks, PreparedBlocks, batches_of

    config, acc = s.config, s.accelerator
    if config.prepared_data:
        s.train_data = PreparedBlocks(config.prepared_data, config.train_split, s.block_size, acc.process_index,
                                      acc.num_processes, seed=config.seed)
    else:
        s.train_data = PackedBlocks(config.dataset, config.train_split, s.tokenizer, s.block_size,
                                    acc.process_index, acc.num_processes, sharding=config.data_sharding,
                                    shuffle_buffer=config.shuffle_buffer, seed=config.seed,
                                    num_workers=config.dataloader_num_workers, text_options=config.text_options)
    if data_state is not None:
        s.train_data.load_state_dict(data_state)
    elif resumed:  # an older checkpoint: find the place by re-reading the blocks already trained on
        warnings.warn("the checkpoint holds no data stream state; re-reading the stream up to it")
        s.train_data.skip_blocks = s.run["step"] * s.accumulation * config.micro_batch_size
    s.batches = batches_of(s.train_data, config.micro_batch_size)


def open_logs(s: Session):
    """metrics.jsonl (cut back to the checkpoint when resuming), trackers, per-rank data fingerprints."""
    config, acc = s.config, s.accelerator
    metrics_path = s.output_dir / METRICS
    if acc.is_main_process and metrics_path.exists():  # resuming: keep what led up to the checkpoint
        s.history = [h for h in map(json.loads, metrics_path.read_text().splitlines()) if h["step"] <= s.run["step"]]
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in s.history))
    if config.report_to != "none":
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.to_dict().items()}
        acc.init_trackers("victorian-gpt", config=hparams)
    if config.log_data_fingerprints:
        s.fingerprints = (s.output_dir / f"data_fingerprints.rank{acc.process_index}.jsonl").open("a")


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
    import torch

    from .evaluate import lm_loss

    acc, run, device = s.accelerator, s.run, s.device
    step_start = time.time()
    factor = lr_factor(run["step"], s.config, s.clock)
    set_learning_rates(s.optimizer, factor)
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
    from tqdm.auto import tqdm

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
    from .evaluate import eval_blocks, evaluate_blocks

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
    from tqdm.auto import tqdm

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


def write_export(s: Session, export_dir: Path, final: dict, exported_step: int, early_stopped: bool,
                 general: dict | None = None):
    import torch

    import victorian_gpt
    from victorian_gpt.export import save_model_folder

    from .finetune import count_parameters, is_peft_model

    run, config = s.run, s.config
    summary = {
        "model_preset": config.model_preset or (None if config.model_name_or_path else DEFAULT_PRESET),
        "model_config": s.model_config.to_dict(),
        "training_config": config.to_dict(),
        "dataset": config.prepared_data or config.dataset,
        "dataset_splits": {"train": config.train_split, "validation": config.validation_split,
                           **({"test": config.test_split} if config.test_split else {})},
        "books_seen": run["books_seen"] or None,
        "tokens_seen": run["tokens_seen"],
        "steps": run["step"],
        "tokens_per_step": s.tokens_per_step,
        "micro_batch_size": config.micro_batch_size,
        "gradient_accumulation_steps": s.accumulation,
        "num_processes": s.accelerator.num_processes,
        "optimizer": config.optimizer,
        "learning_rate": config.learning_rate,
        **({"muon_learning_rate": config.muon_learning_rate if config.muon_learning_rate is not None
            else config.learning_rate} if config.optimizer == "muon" else {}),
        "lr_schedule": config.lr_scheduler_type,
        "warmup_steps": config.warmup_steps,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "mixed_precision": s.accelerator.mixed_precision,
        "hardware": hardware_name(s.accelerator),
        "wall_time_s": round(run["wall_time_s"], 1),
        "train_time_s": round(run["train_time_s"], 1),
        "max_train_minutes": config.max_train_minutes,
        "exported_step": exported_step,  # the step whose weights the folder holds
        "best_model": {"metric": config.metric_for_best_model, "value": run["best_metric"], "step": run["best_step"],
                       "load_best_model_at_end": config.load_best_model_at_end},
        "early_stopping": {"patience": config.early_stopping_patience, "threshold": config.early_stopping_threshold,
                           "stopped_early": early_stopped, "stopped_at_step": run["step"] if early_stopped else None},
        "eval": final,
        "loss_curve": "loss_curve.png",
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__.split("+")[0],
        "victorian_gpt_version": victorian_gpt.__version__,
    }
    if config.model_name_or_path is not None:
        trainable, total = count_parameters(s.raw_model)
        summary["finetuning"] = {
            "base_model": config.model_name_or_path,
            "revision": config.revision,
            "finetuning_type": config.finetuning_type,
            "base_model_relation": "adapter" if config.lora_export == "adapter" and config.finetuning_type == "lora"
            else "finetune",
            **({"lora": {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                         "target_modules": sorted(s.raw_model.peft_config["default"].target_modules),
                         "export": config.lora_export}} if config.finetuning_type == "lora" else {}),
            "trainable_parameters": trainable,
            "total_parameters": total,
            "dataset": config.prepared_data or config.dataset,
            "general_dataset": config.general_dataset,
            "general_split": config.general_split if config.general_dataset else None,
            "before": run.get("before"),
            "after": {**final, **({"general": general} if general else {})},
        }
    extra = {"training_summary.json": json.dumps(summary, indent=2).encode(),
             "loss_curve.png": plot_loss_curve(s.history)}
    model = s.raw_model  # ours or a native class; a peft model: the adapter alone, or merged into a standalone model
    if is_peft_model(model) and config.lora_export != "adapter":
        model = model.merge_and_unload()
    save_model_folder(model, s.tokenizer, export_dir, extra_files=extra)
    if config.native_export:
        from victorian_gpt.convert import to_transformers

        native_dir = to_transformers(export_dir, export_dir.with_name(NATIVE_EXPORT), overwrite=True)
        s.accelerator.print(f"exported {native_dir}: the same weights as transformers' own class (no remote code)")
    s.accelerator.print(f"exported {export_dir} (step {exported_step}): validation bits/byte "
                        f"{final['validation']['bits_per_byte']:.4f}, {run['tokens_seen']:,} tokens in "
                        f"{run['wall_time_s']:.0f}s")


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def flops_per_token(model_config, block_size: int) -> float:
    """Training FLOPs per token (forward + backward): 6N + the attention matmuls (PaLM appendix B, as nanoGPT)."""
    n_layer, n_embd = model_config.num_hidden_layers, model_config.hidden_size
    n = n_layer * 12 * n_embd**2 + model_config.vocab_size * n_embd
    return 6 * n + 12 * n_layer * n_embd * block_size


def peak_flops(device, mixed_precision: str = "no") -> tuple[float, str]:
    """The accelerator's peak for the MFU estimate. On CPU it is measured (the fastest of five 2048x2048 matmuls with
    this process's threads, in bf16 when training under bf16 autocast, else fp32), so CPU MFU is relative to what this
    machine gave a matmul of the training's precision at start-up."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_FLOPS.items():
            if key in name:
                return flops, name
        return 312e12, name
    a = torch.randn(2048, 2048, generator=torch.Generator().manual_seed(0))  # not the global RNG (exact resume)
    if mixed_precision == "bf16":
        a = a.bfloat16()
    best = float("inf")
    for _ in range(5):  # the fastest of a few: other load on the machine only ever slows a matmul down
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best, "CPU"


def memory_used(device) -> str:
    import resource

    import torch

    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}G"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f}G"  # peak RSS (KiB on Linux)


def hardware_name(accelerator) -> str:
    import torch

    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes}x {torch.cuda.get_device_name(accelerator.device)}"
    return f"CPU ({os.cpu_count()} cores)"


def generate_samples(model, tokenizer, config, device) -> list[str]:
    import torch

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


def plot_loss_curve(history: list[dict]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and math.isfinite(h["loss"])]
    val = [(h["step"], h["eval"]["loss"]) for h in history if "eval" in h]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.8, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title("VictorianGPT training")
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def hash_block(block) -> str:
    import hashlib

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

"""A run's shared state (`Session`) and how it is set up, resumed and torn down: the accelerator, the tokenizer, the
model and optimizer, the checkpoint's state, this rank's data stream, the logs."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from transformers import AutoTokenizer

from victorian_gpt import VictorianGPTForCausalLM
from victorian_gpt.tokenization import train_tokenizer_from_source
from victorian_gpt.utils.modeling import context_length

from .blocks import PackedBlocks, ReplayBlocks, batches_of, load_data_state, split_tokens
from .checkpoint import CHECKPOINTS, TRAINER_STATE, find_checkpoint
from .checks import check_inputs
from .config import TrainingConfig
from .evaluate import text_measures
from .finetune import count_parameters, load_start_model
from .hardware import flops_per_token, peak_flops
from .optim import build_optimizer
from .shards import PreparedBlocks, read_prepared_meta

METRICS = "metrics.jsonl"


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
    train_data: Any = None  # this rank's block stream (PackedBlocks or PreparedBlocks, maybe in ReplayBlocks), positioned
    #   by the checkpoint
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


def setup(config: TrainingConfig, checked=None) -> Session:
    """Accelerator, tokenizer, model and optimizer, then the checkpoint's state, this rank's data stream and logs."""
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
    limit_to_epochs(s)
    data_state = resume(s, resume_dir) if resume_dir is not None else None
    s.clock = s.run["train_time_s"]
    s.model_flops = flops_per_token(model_config, block_size)
    s.peak, _ = peak_flops(s.device, s.accelerator.mixed_precision)  # before the data worker starts competing for the cores
    open_train_data(s, data_state, resumed=resume_dir is not None)
    s.measures = text_measures(tokenizer)
    open_logs(s)
    if config.model_name_or_path is not None and s.accelerator.is_main_process:
        trainable, total = count_parameters(raw_model)
        s.accelerator.print(f"fine-tuning {config.model_name_or_path} ({config.finetuning_type}): {trainable:,} of "
                            f"{total:,} parameters trainable ({100 * trainable / total:.2f}%)")
    return s


def limit_to_epochs(s: Session):
    """`num_train_epochs` as optimizer steps: `max_steps` lowered to that many passes over the training split (the
    same on every rank and on resuming: the split is measured, not sampled)."""
    config = s.config
    if not config.num_train_epochs:
        return
    if config.prepared_data:
        tokens = read_prepared_meta(config.prepared_data)["splits"][config.train_split]["tokens"]
    else:
        tokens = split_tokens(config.dataset, config.train_split, s.tokenizer, config.text_options)
    blocks = tokens // (s.block_size + 1)  # the packed blocks of one pass (its last partial block dropped)
    blocks /= 1.0 - (config.replay_ratio if config.replay_dataset else 0.0)  # replayed blocks come on top
    steps = max(1, math.ceil(config.num_train_epochs * blocks * s.block_size / s.tokens_per_step))
    if steps < config.max_steps:
        config.max_steps = steps
        s.accelerator.print(f"num_train_epochs {config.num_train_epochs:g}: {steps:,} optimizer steps ({tokens:,} "
                            f"training tokens, {s.tokens_per_step:,} a step)")


def make_accelerator(config: TrainingConfig, block_size: int):
    """CPU fallback, mixed precision, and the accumulation that makes `tokens_per_step` with this many processes."""
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
        (output_dir / "training_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def make_tokenizer(accelerator, config: TrainingConfig, model_config, output_dir: Path):
    """No tokenizer given: train one from the training split (main process; the others wait, then load it)."""
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
    config, acc = s.config, s.accelerator
    if config.prepared_data:
        s.train_data = PreparedBlocks(config.prepared_data, config.train_split, s.block_size, acc.process_index,
                                      acc.num_processes, seed=config.seed)
    else:
        s.train_data = PackedBlocks(config.dataset, config.train_split, s.tokenizer, s.block_size,
                                    acc.process_index, acc.num_processes, sharding=config.data_sharding,
                                    shuffle_buffer=config.shuffle_buffer, seed=config.seed,
                                    num_workers=config.dataloader_num_workers, text_options=config.text_options)
    if config.replay_dataset:
        replay = PackedBlocks(config.replay_dataset, config.replay_split, s.tokenizer, s.block_size,
                              acc.process_index, acc.num_processes, sharding=config.data_sharding,
                              shuffle_buffer=config.shuffle_buffer, seed=config.seed, text_options=config.text_options)
        s.train_data = ReplayBlocks(s.train_data, replay, config.replay_ratio, seed=config.seed)
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

"""Train VictorianGPT with accelerate: mixed precision, DDP, gradient accumulation, exact resume, evaluation, export.

    accelerate launch --config_file accelerate_config.yaml -m training.train --config training/configs/small.yaml \
        [--key value ...]
    victorian-gpt train --config ... [--key value ...]        # the same, in one process

Without CUDA the same command runs on CPU (`Accelerator(cpu=True)`: `accelerate launch` of a multi-GPU config then
starts gloo DDP processes). Output directory layout:

    output_dir/training_config.yaml   the resolved config        output_dir/tokenizer/   trained here if none given
    output_dir/metrics.jsonl          one line per step / eval   output_dir/logs/        TensorBoard
    output_dir/checkpoints/step_K/    accelerator.save_state + trainer_state.json (atomic, last K kept)
    output_dir/model/                 the exported model (save_pretrained + training_summary.json + loss_curve.png)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

from .config import FIELDS, TrainingConfig, load_config, parse_overrides
from .optim import build_optimizer, lr_factor, set_learning_rates

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
METRICS = "metrics.jsonl"
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


def find_checkpoint(output_dir: Path, which: str) -> Path:
    if which != "latest":
        path = Path(which)
        if not (path / TRAINER_STATE).is_file():
            raise FileNotFoundError(f"resume_from_checkpoint={which!r} is not a checkpoint folder (no {TRAINER_STATE})")
        return path
    steps = sorted(_checkpoints(output_dir), key=lambda p: int(p.name.split("_")[1]))
    if not steps:
        raise FileNotFoundError(f"resume_from_checkpoint='latest' but {output_dir / CHECKPOINTS} holds no checkpoint")
    return steps[-1]


def _checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / CHECKPOINTS
    return [p for p in root.glob("step_*") if (p / TRAINER_STATE).is_file()] if root.is_dir() else []


def check_inputs(config: TrainingConfig):
    """Raise a clear error for a bad dataset, tokenizer or output dir. Returns (model config, tokenizer or None)."""
    from transformers import AutoTokenizer

    from victorian_gpt import VictorianGPTConfig
    from victorian_gpt.sources import load_text_dataset

    model_config = VictorianGPTConfig.from_preset(config.model_preset, **config.model_overrides)
    block_size = config.block_size or model_config.n_positions
    if block_size > model_config.n_positions:
        raise ValueError(f"block_size {block_size} exceeds the model's context n_positions={model_config.n_positions}")

    output_dir = Path(config.output_dir)
    if config.resume_from_checkpoint:
        find_checkpoint(output_dir, config.resume_from_checkpoint)
    elif output_dir.exists() and any(output_dir.iterdir()) and not config.overwrite_output_dir:
        raise FileExistsError(
            f"output_dir {str(output_dir)!r} already holds another run; resume it with --resume_from_checkpoint "
            "latest, choose another --output_dir, or pass --overwrite_output_dir"
        )

    if config.prepared_data is None:
        for split in (config.train_split, config.validation_split):
            dataset = load_text_dataset(config.dataset, split=split)  # missing path, deepmind/pg19, known columns
            first = next(iter(dataset), None)  # JSON Lines declare no columns: look at the first row
            if first is None:
                raise ValueError(f"{config.dataset} ({split}) is empty")
            if not isinstance(first.get("text"), str):
                raise ValueError(f"{config.dataset} ({split}) has no 'text' field; its fields are {sorted(first)}")
    else:
        from .data import read_prepared_meta

        meta = read_prepared_meta(config.prepared_data)
        if config.tokenizer is None:
            raise ValueError("prepared_data needs the tokenizer it was prepared with: set `tokenizer`")

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


class Interrupt:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def flops_per_token(model_config, block_size: int) -> float:
    """Training FLOPs per token (forward + backward): 6N + the attention matmuls (PaLM appendix B, as nanoGPT)."""
    n = model_config.n_layer * 12 * model_config.n_embd**2 + model_config.vocab_size * model_config.n_embd
    return 6 * n + 12 * model_config.n_layer * model_config.n_embd * block_size


def peak_flops(device) -> tuple[float, str]:
    """The accelerator's peak for the MFU estimate. On CPU it is measured (the fastest of five 2048x2048 fp32 matmuls
    with this process's threads), so CPU MFU is relative to what this machine gave a matmul at start-up."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_FLOPS.items():
            if key in name:
                return flops, name
        return 312e12, name
    a = torch.randn(2048, 2048, generator=torch.Generator().manual_seed(0))  # not the global RNG (exact resume)
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


def save_checkpoint(accelerator, output_dir: Path, state: dict, keep: int) -> Path:
    """`accelerator.save_state` into a temporary folder renamed into place: a crash mid-save leaves the previous
    checkpoint whole. Then drop all but the last `keep`."""
    root = output_dir / CHECKPOINTS
    final = root / f"step_{state['step']}"
    tmp = root / f".tmp-step_{state['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, grad scaler, every rank's RNG states
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
        if final.exists():  # reached again after resuming from an earlier checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(_checkpoints(output_dir), key=lambda p: int(p.name.split("_")[1]))[:-keep or None]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


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


def train(config: TrainingConfig, checked=None) -> dict:
    """Run (or resume) training as `config` says; export at the end. `checked`: what `check_inputs` returned."""
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    import victorian_gpt
    from victorian_gpt import VictorianGPTForCausalLM
    from victorian_gpt.export import save_model_folder
    from victorian_gpt.tokenization import train_tokenizer_from_source

    from .data import PackedBlocks, PreparedBlocks, make_dataloader, token_byte_lengths
    from .evaluate import eval_blocks, evaluate_blocks, lm_loss

    started = time.time()
    model_config, tokenizer = checked or check_inputs(config)
    block_size = config.block_size or model_config.n_positions
    output_dir = Path(config.output_dir)
    resume_dir = find_checkpoint(output_dir, config.resume_from_checkpoint) if config.resume_from_checkpoint else None

    # --- accelerator: CPU fallback, mixed precision, accumulation derived from the token budget per step
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
                              log_with=report_to, project_dir=str(output_dir / "logs"))
    device = accelerator.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if not resume_dir:  # a fresh run (maybe --overwrite_output_dir): no stale checkpoints or metrics
            shutil.rmtree(output_dir / CHECKPOINTS, ignore_errors=True)
            (output_dir / METRICS).unlink(missing_ok=True)
        import yaml

        (output_dir / "training_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    # --- tokenizer: given, or trained once from the training split (main process; the others wait and load it)
    if tokenizer is None:
        tokenizer_dir = output_dir / "tokenizer"
        if accelerator.is_main_process:
            train_tokenizer_from_source(config.dataset, model_config.vocab_size, str(tokenizer_dir),
                                        split=config.train_split, max_books=config.tokenizer_max_books,
                                        model_max_length=model_config.n_positions)
        accelerator.wait_for_everyone()
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    # --- model and optimizer (same seed everywhere: identical initial weights; then per-rank dropout streams)
    set_seed(config.seed)
    model = VictorianGPTForCausalLM(model_config)
    raw_model = model
    if config.gradient_checkpointing:  # transformers 5.23 renamed gradient_checkpointing_enable
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    optimizer = build_optimizer(model, config, fused=device.type == "cuda")
    if config.torch_compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    set_seed(config.seed, device_specific=True)

    run = {"step": 0, "tokens_seen": 0, "books_seen": 0, "wall_time_s": 0.0, "train_time_s": 0.0, "nonfinite_in_row": 0,
           "gradient_accumulation_steps": accumulation, "num_processes": accelerator.num_processes}
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))  # weights, optimizer, scaler, RNG: after this nothing draws randomness
        run.update(json.loads((resume_dir / TRAINER_STATE).read_text()))
        if (run["gradient_accumulation_steps"], run["num_processes"]) != (accumulation, accelerator.num_processes):
            raise ValueError(
                f"{resume_dir} was written with {run['num_processes']} processes x accumulation "
                f"{run['gradient_accumulation_steps']}; resuming needs the same layout to find the data position"
            )
        accelerator.print(f"resumed from {resume_dir} at step {run['step']}")

    model_flops = flops_per_token(model_config, block_size)
    peak, _ = peak_flops(device)  # before the data worker starts competing for the cores

    # --- data: this rank's endless block stream, positioned after the blocks it has already trained on
    skip = run["step"] * accumulation * config.micro_batch_size
    if config.prepared_data:
        train_data = PreparedBlocks(config.prepared_data, config.train_split, block_size, accelerator.process_index,
                                    accelerator.num_processes, seed=config.seed, skip_blocks=skip)
    else:
        train_data = PackedBlocks(config.dataset, config.train_split, tokenizer, block_size,
                                  accelerator.process_index, accelerator.num_processes, sharding=config.data_sharding,
                                  shuffle_buffer=config.shuffle_buffer, seed=config.seed, skip_blocks=skip)
    batches = iter(make_dataloader(train_data, config.micro_batch_size, config.dataloader_num_workers))
    byte_lengths = token_byte_lengths(tokenizer)
    eval_batch = config.per_device_eval_batch_size or config.micro_batch_size

    def evaluate(split):
        blocks = eval_blocks(config.dataset, split, tokenizer, block_size, config.max_eval_samples,
                             accelerator.process_index, accelerator.num_processes, config.prepared_data)
        return evaluate_blocks(raw_model, blocks, byte_lengths, eval_batch, device, accelerator)

    # --- logging
    history: list[dict] = []
    metrics_path = output_dir / METRICS
    if accelerator.is_main_process and metrics_path.exists():  # resuming: keep what led up to the checkpoint
        history = [h for h in map(json.loads, metrics_path.read_text().splitlines()) if h["step"] <= run["step"]]
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    if report_to:
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.to_dict().items()}
        accelerator.init_trackers("victorian-gpt", config=hparams)

    def record(entry):
        if accelerator.is_main_process:
            history.append(entry)
            with metrics_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    fingerprints = None
    if config.log_data_fingerprints:
        fingerprints = (output_dir / f"data_fingerprints.rank{accelerator.process_index}.jsonl").open("a")

    def run_eval(step):
        result = evaluate(config.validation_split)
        samples = generate_samples(raw_model, tokenizer, config, device) if accelerator.is_main_process else []
        record({"step": step, "eval": result})
        accelerator.log({f"eval/{k}": v for k, v in result.items() if v is not None}, step=step)
        if samples:
            accelerator.log({f"samples/{i}": s for i, s in enumerate(samples)}, step=step)
            for s in samples:
                tqdm.write(f"  sample> {s!r}")
        if accelerator.is_main_process:
            tqdm.write(f"step {step}: validation loss {result['loss']:.4f}, ppl {result['perplexity']:.2f}, "
                       f"bits/byte {result['bits_per_byte']:.4f}")
        return result

    tokens_per_step = accumulation * tokens_per_micro_step
    if run["step"] == 0 and config.eval_on_start and config.max_steps > 0:
        run_eval(0)

    # --- the loop
    model.train()
    budget_s = config.max_train_minutes * 60 if config.max_train_minutes else None
    if budget_s is None:
        progress = tqdm(total=config.max_steps, initial=run["step"], desc="train", unit="step",
                        disable=not accelerator.is_main_process, dynamic_ncols=True)
    else:  # the bar counts seconds of training time
        progress = tqdm(total=round(budget_s), initial=round(run["train_time_s"]), desc="train (seconds)",
                        unit="s", disable=not accelerator.is_main_process, dynamic_ncols=True)
    stopped_by = None
    # the training clock every rank agrees on: rank 0's, carried by the per-step all-reduce
    clock = run["train_time_s"]
    segment_start, segment_tokens = time.time(), 0
    with Interrupt() as interrupt:
        while run["step"] < config.max_steps and (budget_s is None or clock < budget_s):
            step_start = time.time()
            factor = lr_factor(run["step"], config, clock)
            set_learning_rates(optimizer, factor)
            lr = config.learning_rate * factor
            loss_sum = torch.zeros((), device=device)
            books = -1
            for _ in range(accumulation):
                batch = next(batches)
                block = batch["input_ids"].to(device, non_blocking=True)
                books = max(books, int(batch["book"].max()))
                if fingerprints is not None:
                    for row in batch["input_ids"]:
                        fingerprints.write(json.dumps({"step": run["step"], "block": hash_block(row)}) + "\n")
                with accelerator.accumulate(model):  # no DDP all-reduce until the last micro-step
                    with accelerator.autocast():
                        loss = lm_loss(model, block)
                    accelerator.backward(loss)  # divided by the accumulation steps inside
                loss_sum += loss.detach()
            # one small all-reduce carries the loss, non-finite flags and interrupt requests of every rank
            clock_rank0 = run["train_time_s"] + time.time() - step_start if accelerator.is_main_process else 0.0
            flags = torch.stack([loss_sum / accumulation, torch.tensor(float(interrupt.requested), device=device),
                                 torch.tensor(float(books + 1), device=device),
                                 torch.tensor(clock_rank0, dtype=loss_sum.dtype, device=device)])
            flags = accelerator.reduce(flags, reduction="sum") if accelerator.num_processes > 1 else flags
            step_loss, interrupted = flags[0].item() / accelerator.num_processes, flags[1].item() > 0
            clock = flags[3].item()
            if math.isfinite(step_loss):
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                run["nonfinite_in_row"] = 0
            else:
                run["nonfinite_in_row"] += 1
                grad_norm = torch.tensor(float("nan"))
                warnings.warn(f"step {run['step'] + 1}: non-finite loss {step_loss}; skipping the update "
                              f"({run['nonfinite_in_row']} in a row, limit {config.max_nonfinite_steps})")
            optimizer.zero_grad(set_to_none=True)
            run["step"] += 1
            run["tokens_seen"] += tokens_per_step
            # distinct books reached so far: ranks either share one stream ("blocks") or each read their own books
            books_now = flags[2].item() / (accelerator.num_processes if config.data_sharding == "blocks" else 1)
            run["books_seen"] = max(run["books_seen"], int(round(books_now)))
            if run["nonfinite_in_row"] > config.max_nonfinite_steps:
                stopped_by = "nonfinite"
                break
            step_time = time.time() - step_start
            # rank 0 keeps its full clock (saved in checkpoints); the others follow the agreed one
            run["train_time_s"] = run["train_time_s"] + step_time if accelerator.is_main_process else clock
            segment_tokens += tokens_per_step
            entry = {"step": run["step"], "loss": step_loss, "lr": lr, "grad_norm": float(grad_norm),
                     "step_time_s": step_time, "train_time_s": round(run["train_time_s"], 3), "time": time.time()}
            record(entry)
            if run["step"] % config.logging_steps == 0 or run["step"] == 1:
                # over the last logging window, so compilation and evaluation pauses age out
                tokens_per_s = segment_tokens / (time.time() - segment_start)
                segment_start, segment_tokens = time.time(), 0
                mfu = tokens_per_s * model_flops / (peak * accelerator.num_processes)
                accelerator.log({"train/loss": step_loss, "train/lr": lr, "train/grad_norm": float(grad_norm),
                                 "train/tokens_per_s": tokens_per_s, "train/mfu": mfu}, step=run["step"])
                progress.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}",
                                     mfu=f"{100 * mfu:.1f}%", mem=memory_used(device), refresh=False)
            progress.update(1 if budget_s is None else step_time)
            if (config.eval_steps and run["step"] % config.eval_steps == 0 and run["step"] < config.max_steps
                    and (budget_s is None or clock < budget_s)):
                run_eval(run["step"])
                segment_start, segment_tokens = time.time(), 0  # the pause is not training throughput
            periodic = config.save_steps and run["step"] % config.save_steps == 0 and not run["nonfinite_in_row"]
            if interrupted or periodic:  # no periodic save inside a non-finite streak: it could prune good ones
                run["wall_time_s"] += time.time() - started
                started = time.time()
                path = save_checkpoint(accelerator, output_dir, run, config.save_total_limit)
                if interrupted:
                    progress.close()
                    accelerator.print(f"interrupted: saved {path}; resume with --resume_from_checkpoint latest")
                    stopped_by = "interrupt"
                    break
    progress.close()
    if fingerprints is not None:
        fingerprints.close()
    run["wall_time_s"] += time.time() - started
    if stopped_by == "nonfinite":
        accelerator.end_training()
        raise NonFiniteLossError(f"{run['nonfinite_in_row']} non-finite losses in a row at step {run['step']}; stopped "
                           "without saving (the last checkpoint is the last good state)")
    if stopped_by == "interrupt":
        accelerator.end_training()
        return {"interrupted": True, **run}

    # --- final evaluation and export
    final = {"validation": run_eval(run["step"])}
    if config.test_split:
        final["test"] = evaluate(config.test_split)
        record({"step": run["step"], "test": final["test"]})
    export_dir = output_dir / "model"
    if accelerator.is_main_process:
        summary = {
            "model_preset": config.model_preset,
            "model_config": model_config.to_dict(),
            "training_config": config.to_dict(),
            "dataset": config.prepared_data or config.dataset,
            "dataset_splits": {"train": config.train_split, "validation": config.validation_split,
                               **({"test": config.test_split} if config.test_split else {})},
            "books_seen": run["books_seen"] or None,
            "tokens_seen": run["tokens_seen"],
            "steps": run["step"],
            "tokens_per_step": tokens_per_step,
            "micro_batch_size": config.micro_batch_size,
            "gradient_accumulation_steps": accumulation,
            "num_processes": accelerator.num_processes,
            "optimizer": config.optimizer,
            "learning_rate": config.learning_rate,
            **({"muon_learning_rate": config.muon_learning_rate if config.muon_learning_rate is not None
                else config.learning_rate} if config.optimizer == "muon" else {}),
            "lr_schedule": config.lr_scheduler_type,
            "warmup_steps": config.warmup_steps,
            "weight_decay": config.weight_decay,
            "max_grad_norm": config.max_grad_norm,
            "mixed_precision": accelerator.mixed_precision,
            "hardware": hardware_name(accelerator),
            "wall_time_s": round(run["wall_time_s"], 1),
            "train_time_s": round(run["train_time_s"], 1),
            "max_train_minutes": config.max_train_minutes,
            "eval": final,
            "loss_curve": "loss_curve.png",
            "transformers_version": __import__("transformers").__version__,
            "torch_version": torch.__version__.split("+")[0],
            "victorian_gpt_version": victorian_gpt.__version__,
        }
        extra = {"training_summary.json": json.dumps(summary, indent=2).encode(),
                 "loss_curve.png": plot_loss_curve(history)}
        save_model_folder(raw_model, tokenizer, export_dir, extra_files=extra)
        accelerator.print(f"exported {export_dir}: validation bits/byte {final['validation']['bits_per_byte']:.4f}, "
                          f"{run['tokens_seen']:,} tokens in {run['wall_time_s']:.0f}s")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"interrupted": False, "export_dir": str(export_dir), **run, "eval": final}


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
        "clock and max_steps only caps the run. Multi-GPU / mixed precision: accelerate launch --config_file "
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
        result = train(config, checked)
    except NonFiniteLossError as error:
        print(f"victorian-gpt train: error: {error}", file=sys.stderr)
        return 1
    return 130 if result["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())

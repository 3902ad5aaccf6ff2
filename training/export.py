"""The end of a run: the exported folder (save_model_folder + training_summary.json + the loss-curve plot) and, if
asked, its native twin."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib
import torch
import transformers

import victorian_gpt
from victorian_gpt.conversion import to_transformers
from victorian_gpt.export import save_model_folder
from victorian_gpt.summary import SUMMARY_FILE, Finetuning, TrainingSummary

from .config import DEFAULT_PRESET
from .finetune import count_parameters, is_peft_model
from .hardware import hardware_name
from .session import Session

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

NATIVE_EXPORT = "model-hf"  # native_export's folder beside output_dir/model (on the Hub: its own USER/NAME-hf repo)


def write_export(s: Session, export_dir: Path, final: dict, exported_step: int, early_stopped: bool,
                 general: dict | None = None):
    """The export folder: the model (or a LoRA adapter), its tokenizer, training_summary.json and loss_curve.png."""
    extra = {SUMMARY_FILE: summarize(s, final, exported_step, early_stopped, general).to_json().encode(),
             "loss_curve.png": plot_loss_curve(s.history)}
    model = s.raw_model  # ours or a native class; a peft model: the adapter alone, or merged into a standalone model
    if is_peft_model(model) and s.config.lora_export != "adapter":
        model = model.merge_and_unload()
    save_model_folder(model, s.tokenizer, export_dir, extra_files=extra)
    if s.config.native_export:
        native_dir = to_transformers(export_dir, export_dir.with_name(NATIVE_EXPORT), overwrite=True)
        s.accelerator.print(f"exported {native_dir}: the same weights as transformers' own class (no remote code)")
    s.accelerator.print(f"exported {export_dir} (step {exported_step}): validation bits/byte "
                        f"{final['validation']['bits_per_byte']:.4f}, {s.run['tokens_seen']:,} tokens in "
                        f"{s.run['wall_time_s']:.0f}s")


def summarize(s: Session, final: dict, exported_step: int, early_stopped: bool,
              general: dict | None = None) -> TrainingSummary:
    """The run's measured facts, as the model card reads them."""
    run, config = s.run, s.config
    finetuning = None
    if config.model_name_or_path is not None:
        trainable, total = count_parameters(s.raw_model)
        lora = config.finetuning_type == "lora"
        finetuning = Finetuning(
            base_model=config.model_name_or_path,
            revision=config.revision,
            finetuning_type=config.finetuning_type,
            base_model_relation="adapter" if lora and config.lora_export == "adapter" else "finetune",
            lora={"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                  "target_modules": sorted(s.raw_model.peft_config["default"].target_modules),
                  "export": config.lora_export} if lora else None,
            trainable_parameters=trainable,
            total_parameters=total,
            dataset=config.prepared_data or config.dataset,
            general_dataset=config.general_dataset,
            general_split=config.general_split if config.general_dataset else None,
            before=run.get("before"),
            after={**final, **({"general": general} if general else {})},
        )
    return TrainingSummary(
        model_preset=config.model_preset or (None if config.model_name_or_path else DEFAULT_PRESET),
        model_config=s.model_config.to_dict(),
        training_config=config.to_dict(),
        dataset=config.prepared_data or config.dataset,
        dataset_splits={"train": config.train_split, "validation": config.validation_split,
                        **({"test": config.test_split} if config.test_split else {})},
        books_seen=run["books_seen"] or None,
        tokens_seen=run["tokens_seen"],
        steps=run["step"],
        tokens_per_step=s.tokens_per_step,
        micro_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=s.accumulation,
        num_processes=s.accelerator.num_processes,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        muon_learning_rate=(config.muon_learning_rate if config.muon_learning_rate is not None
                            else config.learning_rate) if config.optimizer == "muon" else None,
        lr_schedule=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        mixed_precision=s.accelerator.mixed_precision,
        hardware=hardware_name(s.accelerator),
        wall_time_s=round(run["wall_time_s"], 1),
        train_time_s=round(run["train_time_s"], 1),
        max_train_minutes=config.max_train_minutes,
        exported_step=exported_step,
        best_model={"metric": config.metric_for_best_model, "value": run["best_metric"], "step": run["best_step"],
                    "load_best_model_at_end": config.load_best_model_at_end},
        early_stopping={"patience": config.early_stopping_patience, "threshold": config.early_stopping_threshold,
                        "stopped_early": early_stopped, "stopped_at_step": run["step"] if early_stopped else None},
        eval=final,
        loss_curve="loss_curve.png",
        transformers_version=transformers.__version__,
        torch_version=torch.__version__.split("+")[0],
        victorian_gpt_version=victorian_gpt.__version__,
        finetuning=finetuning,
    )


def plot_loss_curve(history: list[dict]) -> bytes:
    """Train and validation loss against the optimizer step, as PNG bytes."""
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

"""`training_summary.json`: the measured facts of the training run an export carries, as one typed record.

Training writes it into the export folder; the model card and the native folder's card read it; the tests build
their fixtures from it. Every field may be absent from a file (an older export, a run that measured nothing): reading
such a file gives `None` there, and the cards say "unknown" rather than invent a figure.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

SUMMARY_FILE = "training_summary.json"
OPTIONAL = {"optional": True}  # a field's metadata: left out of the file when unset


def _as_dict(record) -> dict:
    """`record` as the file holds it, field by field in order, unset optional fields left out."""
    data = {}
    for spec in dataclasses.fields(record):
        value = getattr(record, spec.name)
        if dataclasses.is_dataclass(value):
            value = _as_dict(value)
        if value is None and spec.metadata.get("optional"):
            continue
        data[spec.name] = value
    return data


@dataclass
class Finetuning:
    """What a fine-tune started from and what it changed (the card's before/after table)."""

    base_model: str | None = None  # model_name_or_path as training read it (a local folder's absolute path)
    revision: str | None = None
    finetuning_type: str | None = None  # "full" or "lora"
    base_model_relation: str | None = None  # "finetune" or "adapter", as the Hub's model tree names them
    lora: dict | None = field(default=None, metadata=OPTIONAL)  # {r, alpha, dropout, target_modules, export}
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    dataset: str | None = None
    general_dataset: str | None = None
    general_split: str | None = None
    before: dict | None = None  # {"validation"|"test"|"general": figures} of the starting model
    after: dict | None = None  # the same, of the fine-tuned one


@dataclass
class TrainingSummary:
    """The fields of training_summary.json, in the order they are written."""

    model_preset: str | None = None
    model_config: dict = field(default_factory=dict)
    training_config: dict = field(default_factory=dict)
    dataset: str | None = None
    dataset_splits: dict = field(default_factory=dict)  # role -> split name ("train", "validation", "test")
    books_seen: int | None = None
    tokens_seen: int | None = None
    steps: int | None = None
    tokens_per_step: int | None = None
    micro_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    num_processes: int | None = None
    optimizer: str | None = None
    learning_rate: float | None = None
    muon_learning_rate: float | None = field(default=None, metadata=OPTIONAL)  # with optimizer "muon" only
    lr_schedule: str | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    max_grad_norm: float | None = None
    mixed_precision: str | None = None
    hardware: str | None = None
    wall_time_s: float | None = None
    train_time_s: float | None = None
    max_train_minutes: float | None = None
    exported_step: int | None = None  # the step whose weights the folder holds
    best_model: dict | None = None  # {metric, value, step, load_best_model_at_end}
    early_stopping: dict | None = None  # {patience, threshold, stopped_early, stopped_at_step}
    eval: dict = field(default_factory=dict)  # split -> {loss, perplexity, bits_per_byte, word_perplexity, ...}
    loss_curve: str | None = None  # the plot's file name in the folder
    transformers_version: str | None = None
    torch_version: str | None = None
    victorian_gpt_version: str | None = None
    finetuning: Finetuning | None = field(default=None, metadata=OPTIONAL)  # a fine-tune's only

    def to_dict(self) -> dict:
        return _as_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingSummary":
        """The record of a parsed file; keys it does not know (a newer writer's) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("finetuning"), dict):
            facts = {f.name for f in dataclasses.fields(Finetuning)}
            values["finetuning"] = Finetuning(**{k: v for k, v in values["finetuning"].items() if k in facts})
        return cls(**values)

    @classmethod
    def read(cls, folder: str | Path) -> "TrainingSummary":
        """The summary in `folder` (FileNotFoundError without one; ValueError for a file that is not a JSON object)."""
        path = Path(folder) / SUMMARY_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a JSON object")
        return cls.from_dict(data)

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / SUMMARY_FILE
        path.write_text(self.to_json())
        return path

"""The training configuration: one dataclass, loaded from YAML and overridden by `--key value` on the command line.

Field names follow `transformers.TrainingArguments` where one exists (`learning_rate`, `warmup_steps`, `max_steps`,
`save_steps`, `save_total_limit`, `eval_steps`, `report_to`, `resume_from_checkpoint`, ...). Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from victorian_gpt.sources import DEFAULT_DATASET

DEFAULT_PRESET = "gpt2-124m"  # the model trained from scratch when model_preset is not set

# Fine-tuning's own defaults, used when `model_name_or_path` is set and the key is not given (YAML or command line):
# the from-scratch defaults (524,288 tokens a step, learning rate 1e-4, 100 warm-up steps) would spend a CPU budget on
# a couple of steps. Chosen on the validation books of the authors' style datasets (docs/finetuning.md#defaults).
FINETUNING_DEFAULTS = {
    "common": {"tokens_per_step": 8192, "micro_batch_size": 8, "warmup_steps": 10, "lr_scheduler_type": "cosine",
               "min_lr_ratio": 0.1, "weight_decay": 0.0, "num_train_epochs": 5.0, "replay_ratio": 0.5},
    "full": {"learning_rate": 1e-4},
    "lora": {"learning_rate": 2e-3, "lora_r": 16, "lora_alpha": 32.0, "lora_dropout": 0.0},
}


@dataclass
class TrainingConfig:
    # --- model and tokenizer
    model_preset: str | None = None  # a name in victorian_gpt.PRESETS; None: gpt2-124m (or, fine-tuning, the model's)
    model_overrides: dict = field(default_factory=dict)  # VictorianGPTConfig fields, e.g. {n_layer: 4, resid_pdrop: 0.0}
    # --- fine-tuning: start from an export folder or Hub repo instead of random weights (its tokenizer too)
    model_name_or_path: str | None = None  # a local export (remote-code or native) or a Hub model id
    revision: str | None = None  # the Hub revision (branch, tag or commit hash) of model_name_or_path
    trust_remote_code: bool = False  # needed for a Hub repo whose config.json has auto_map (a local folder is trusted)
    finetuning_type: str = "full"  # "full" (every weight) or "lora" (low-rank adapters, with peft)
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_target_modules: list | None = None  # module names; None: the attention and MLP projections of the model
    lora_export: str = "merged"  # "merged" (a standalone model) or "adapter" (adapter_config.json + adapter weights)
    general_dataset: str | None = None  # a second source measured before and after fine-tuning (what was forgotten)
    general_split: str = "test"
    replay_dataset: str | None = None  # the base model's own training data, rehearsed while fine-tuning (a share
    #   `replay_ratio` of the training blocks comes from its `replay_split`) so that fine-tuning forgets less; null
    #   with replay_ratio > 0: the dataset the base's training_summary.json names, where it can be read
    replay_split: str = "train"
    replay_ratio: float = 0.0
    native_export: bool = False  # also write output_dir/model-hf: the same weights as transformers' own class
    #   (Qwen3 / Llama / GPT-2, no remote code; `victorian-gpt convert --to transformers`), for vLLM, TGI, MLX
    tokenizer: str | None = None  # a tokenizer folder; None: train one on the training split, saved in output_dir
    tokenizer_max_books: int | None = None  # books used to train that tokenizer (None: the whole split)
    # --- data
    dataset: str = DEFAULT_DATASET  # Hub dataset id, local PG19-format folder/file, or .txt books (folder or file)
    strip_gutenberg: bool = True  # .txt books: cut Project Gutenberg's header and footer when present
    validation_split_percentage: float = 10.0  # flat .txt folder: books held out for validation (at least 1 if > 0)
    test_split_percentage: float = 10.0  # flat .txt folder: books held out for the test split (at least 1 if > 0)
    split_seed: int = 0  # flat .txt folder: the seed of that split by book
    prepared_data: str | None = None  # a folder written by `python -m training.prepare` (used instead of `dataset`)
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = "test"  # evaluated once at the end (None: skip)
    block_size: int | None = None  # tokens of context per example; None: the model's n_positions
    shuffle_buffer: int = 1000  # blocks held by the shuffle buffer
    data_sharding: str = "books"  # "books" (split_dataset_by_node) or "blocks" (every rank keeps 1 block in N)
    dataloader_num_workers: int = 1  # 0 or 1: one worker process tokenizes ahead of the loop
    # --- optimisation
    tokens_per_step: int = 524_288  # tokens per optimizer step; gradient accumulation is derived from it
    micro_batch_size: int = 8  # blocks per forward pass per process
    max_steps: int = 1000  # optimizer steps (with max_train_minutes: a cap; the time budget normally ends the run)
    max_train_minutes: float | None = None  # train for this much training-step time (evaluation, samples and
    #   checkpoint saves not counted); the schedule then follows elapsed time / budget instead of steps
    num_train_epochs: float | None = None  # passes over the training split (a local dataset or prepared_data, whose
    #   size is known): caps max_steps; the run and its schedule end at the first of the three ends
    optimizer: str = "adamw"  # "adamw", or "muon": Muon for the blocks' 2-D matrices, AdamW for the rest
    learning_rate: float = 1e-4  # AdamW's (all parameters, or with optimizer=muon: embeddings, head, norms, biases)
    lr_scheduler_type: str = "cosine"  # "cosine" | "warmup_stable_decay" (transformers' names)
    min_lr_ratio: float = 0.1  # the schedules decay to initial lr * min_lr_ratio
    warmup_steps: int = 100
    decay_ratio: float = 0.2  # warmup_stable_decay: the last fraction of the run (steps or time) spent decaying
    decay_type: str = "linear"  # warmup_stable_decay's decay shape: "linear" | "cosine" | "1-sqrt"
    weight_decay: float = 0.01  # AdamW's, on 2-D weights only
    muon_learning_rate: float | None = None  # None: learning_rate (what muon_adjust_lr_fn=match_rms_adamw is for)
    muon_weight_decay: float | None = None  # None: weight_decay
    muon_momentum: float = 0.95
    muon_momentum_warmup_steps: int = 0  # Muon's momentum rises linearly from muon_momentum_start to muon_momentum
    muon_momentum_start: float = 0.85  # over these first steps (modded-nanogpt: 0.85 -> 0.95 over 300)
    muon_ns_steps: int = 5  # Newton-Schulz iterations
    muon_adjust_lr_fn: str = "match_rms_adamw"  # or "original" (sqrt(max(1, out/in)) on the (out, in) orientation)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None  # "no" | "fp16" | "bf16"; None: what `accelerate launch` configured
    torch_compile: bool = False
    gradient_checkpointing: bool = False
    seed: int = 1337
    ddp_timeout: int = 1800  # seconds a collective may wait (rank 0 trains the tokenizer while the others wait)
    max_nonfinite_steps: int = 10  # consecutive non-finite losses (steps skipped) before the run stops
    # --- evaluation, samples, logging
    eval_steps: int = 200  # evaluate every N steps (0: only at the end)
    eval_on_start: bool = True
    max_eval_samples: int | None = 200  # validation blocks per evaluation (None: the whole split)
    per_device_eval_batch_size: int | None = None  # None: micro_batch_size
    num_samples: int = 3  # generated samples per evaluation
    sample_max_new_tokens: int = 48
    metric_for_best_model: str = "bits_per_byte"  # validation figure that picks the best model (lower is better):
    #   "bits_per_byte", "loss", "perplexity" or "word_perplexity"
    early_stopping_patience: int | None = None  # stop after this many evaluations without improvement (None: never)
    early_stopping_threshold: float = 0.0  # an improvement must beat the best by more than this to reset patience
    load_best_model_at_end: bool = False  # export the best evaluated checkpoint's weights, not the last step's
    logging_steps: int = 10
    report_to: str = "tensorboard"  # an accelerate tracker name, "all" or "none"
    log_data_fingerprints: bool = False  # write a hash of every trained block per rank (to audit sharding)
    # --- checkpoints and output
    output_dir: str = "runs/victorian-gpt"
    save_steps: int = 500  # checkpoint every N steps (0: only on interrupt)
    save_total_limit: int = 3  # keep the last K checkpoints
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    overwrite_output_dir: bool = False

    # not a field: the keys the YAML file and the command line set (load_config fills it), so that a default may
    # bend where a value the user chose may not (a .txt dataset without test/ skips the default test_split)
    given_keys = frozenset()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def text_options(self) -> dict:
        """How `.txt` books are read and split (`victorian_gpt.sources.TextOptions`)."""
        return {k: getattr(self, k) for k in ("strip_gutenberg", "validation_split_percentage",
                                              "test_split_percentage", "split_seed")}


FIELDS = {f.name: f for f in dataclasses.fields(TrainingConfig)}
_TYPES = typing.get_type_hints(TrainingConfig)


def _coerce(name: str, value):
    """Convert a YAML or command-line value to the field's type (so `--learning_rate 3e-4` and YAML `1e-4`, which
    PyYAML reads as a string, both become floats)."""
    hint = _TYPES[name]
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    base = next(t for t in typing.get_args(hint) if t is not type(None)) if optional else hint
    if isinstance(value, str) and optional and value.strip().lower() in ("none", "null", "~", ""):
        return None
    if value is None:
        if optional:
            return None
        raise ValueError(f"config key {name!r} cannot be null")
    try:
        if base is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("true", "1", "yes")
            return bool(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if base is float:
            return float(value)
        if base is list:
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip().startswith("[") else [
                    v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(value)
            return list(value)
        if base is dict:
            value = yaml.safe_load(value) if isinstance(value, str) else value
            if not isinstance(value, dict):
                raise ValueError(value)
            return value
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"config key {name!r} expects {base.__name__}, got {value!r}") from None


def _unknown(keys, where: str):
    unknown = sorted(set(keys) - set(FIELDS))
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, FIELDS, 1)) else repr(k)
                 for k in unknown]
        raise ValueError(f"unknown training config key(s) in {where}: {', '.join(hints)}")


def load_config(path: str | None = None, overrides: dict | None = None) -> TrainingConfig:
    """Defaults <- YAML file <- overrides (each value coerced to its field's type)."""
    values: dict = {}
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"training config {path!r} does not exist")
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        _unknown(loaded, path)
        values.update(loaded)
    overrides = overrides or {}
    _unknown(overrides, "the command line")
    values.update(overrides)
    given = frozenset(values)
    if values.get("model_name_or_path") not in (None, "", "none", "null"):
        kind = str(values.get("finetuning_type", TrainingConfig.finetuning_type))
        for key, value in {**FINETUNING_DEFAULTS["common"], **FINETUNING_DEFAULTS.get(kind, {})}.items():
            values.setdefault(key, value)
    config = TrainingConfig(**{k: _coerce(k, v) for k, v in values.items()})
    config.given_keys = given
    for name, allowed in (("data_sharding", ("books", "blocks")), ("mixed_precision", (None, "no", "fp16", "bf16")),
                          ("optimizer", ("adamw", "muon")), ("lr_scheduler_type", ("cosine", "warmup_stable_decay")),
                          ("decay_type", ("linear", "cosine", "1-sqrt")),
                          ("muon_adjust_lr_fn", ("match_rms_adamw", "original")),
                          ("metric_for_best_model", ("bits_per_byte", "loss", "perplexity", "word_perplexity")),
                          ("finetuning_type", ("full", "lora")), ("lora_export", ("merged", "adapter"))):
        if getattr(config, name) not in allowed:
            raise ValueError(f"config key {name!r} must be one of {allowed}, got {getattr(config, name)!r}")
    for name in ("tokens_per_step", "micro_batch_size", "max_steps"):
        if getattr(config, name) <= 0:
            raise ValueError(f"config key {name!r} must be positive, got {getattr(config, name)}")
    if config.muon_momentum_warmup_steps < 0 or not (0.0 <= config.muon_momentum_start < 1.0
                                                     and 0.0 <= config.muon_momentum < 1.0):
        raise ValueError("Muon's momentum needs muon_momentum_warmup_steps >= 0 and 0 <= muon_momentum_start, "
                         f"muon_momentum < 1; got {config.muon_momentum_warmup_steps}, "
                         f"{config.muon_momentum_start}, {config.muon_momentum}")
    if config.muon_momentum_warmup_steps and config.optimizer != "muon":
        raise ValueError("muon_momentum_warmup_steps warms up Muon's momentum; set optimizer: muon or leave it 0")
    if config.num_train_epochs is not None and config.num_train_epochs <= 0:
        raise ValueError(f"config key 'num_train_epochs' must be positive or null, got {config.num_train_epochs}")
    if config.max_train_minutes is not None and config.max_train_minutes <= 0:
        raise ValueError(f"config key 'max_train_minutes' must be positive or null, got {config.max_train_minutes}")
    if config.early_stopping_patience is not None and config.early_stopping_patience < 1:
        raise ValueError("config key 'early_stopping_patience' must be at least 1 or null, got "
                         f"{config.early_stopping_patience}")
    if (config.early_stopping_patience or config.load_best_model_at_end) and not config.eval_steps:
        raise ValueError("early_stopping_patience and load_best_model_at_end need periodic evaluations: set eval_steps")
    if config.finetuning_type == "lora":
        if config.model_name_or_path is None:
            raise ValueError("finetuning_type 'lora' adapts an existing model: set model_name_or_path")
        if config.optimizer != "adamw":
            raise ValueError("finetuning_type 'lora' trains the adapters with AdamW; set optimizer: adamw")
        if config.lora_r < 1 or config.lora_alpha <= 0 or not 0.0 <= config.lora_dropout < 1.0:
            raise ValueError(f"LoRA needs lora_r >= 1, lora_alpha > 0 and 0 <= lora_dropout < 1; got r="
                             f"{config.lora_r}, alpha={config.lora_alpha}, dropout={config.lora_dropout}")
        if config.lora_target_modules is not None and not config.lora_target_modules:
            raise ValueError("lora_target_modules is empty; leave it null for the attention and MLP projections")
    elif config.lora_export != "merged":
        raise ValueError("lora_export applies to finetuning_type 'lora' only")
    if not 0.0 <= config.replay_ratio < 1.0:
        raise ValueError(f"config key 'replay_ratio' must be at least 0 and below 1, got {config.replay_ratio}")
    if config.replay_dataset and config.replay_ratio == 0:
        raise ValueError("replay_dataset needs replay_ratio, the share of training blocks drawn from it (e.g. 0.25)")
    if config.replay_ratio > 0 and not config.replay_dataset and config.model_name_or_path is None:
        raise ValueError("replay_ratio is the share of training blocks drawn from replay_dataset, which is not set "
                         "(only fine-tuning finds its base model's own training data)")
    if config.replay_dataset and config.prepared_data:
        raise ValueError("replay_dataset is read as text; it cannot be mixed into prepared_data")
    if config.native_export and config.finetuning_type == "lora" and config.lora_export == "adapter":
        raise ValueError("native_export writes a whole model; an adapter export (lora_export: adapter) is not one")
    if config.revision is not None and config.model_name_or_path is None:
        raise ValueError("revision names a revision of model_name_or_path, which is not set")
    for name in ("validation_split_percentage", "test_split_percentage"):
        if not 0.0 <= getattr(config, name) < 100.0:
            raise ValueError(f"config key {name!r} must be between 0 and 100, got {getattr(config, name)}")
    if not 0.0 <= config.decay_ratio <= 1.0:
        raise ValueError(f"config key 'decay_ratio' must be between 0 and 1, got {config.decay_ratio}")
    return config


def parse_overrides(items: list[str]) -> dict:
    """`["--learning_rate", "3e-4", "--eval_steps=50"]` -> {"learning_rate": "3e-4", "eval_steps": "50"}."""
    overrides, i = {}, 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--"):
            raise ValueError(f"expected --key value, got {item!r}")
        key = item[2:].replace("-", "_")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(items) and not items[i + 1].startswith("--"):
            value, i = items[i + 1], i + 2
        elif key in FIELDS and _TYPES[key] is bool:
            value, i = "true", i + 1  # a bare boolean flag
        else:
            raise ValueError(f"--{key} needs a value")
        overrides[key] = value
    return overrides

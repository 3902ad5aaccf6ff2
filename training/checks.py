"""Preflight checks: every error that needs no compute (a bad dataset, tokenizer, starting model or output folder) is
raised before any, in one line, and nothing is written."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from transformers import AutoTokenizer

from victorian_gpt import VictorianGPTConfig
from victorian_gpt.conversion import native_architecture
from victorian_gpt.sources import TextOptions, is_txt_source, load_text_dataset, txt_splits
from victorian_gpt.utils.hub import is_local_path
from victorian_gpt.utils.modeling import context_length

from .checkpoint import find_checkpoint
from .config import DEFAULT_PRESET, FINETUNING_DEFAULTS, TrainingConfig
from .finetune import base_training_data, check_start
from .shards import read_prepared_meta


def _notice(message: str):
    """One line on stderr, from the first process only (every rank runs these checks)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


def replay_the_base_data(config: TrainingConfig):
    """replay_ratio without replay_dataset: rehearse the data the starting model was trained on (its
    training_summary.json names it) where it can be read here; otherwise, for the default ratio, no replay and a line
    saying so, and for a ratio the user gave, a one-line error."""
    found = base_training_data(config)
    split = config.replay_split if "replay_split" in config.given_keys else (found[1] if found else "train")
    readable = False
    if found:
        try:
            readable = next(iter(load_text_dataset(found[0], split=split)), None) is not None
        except Exception:  # a path that is not here, a Hub dataset offline: nothing to replay
            readable = False
    if readable:
        config.replay_dataset, config.replay_split = found[0], split
        _notice(f"replaying {config.replay_ratio:g} of the training blocks from {found[0]} ({split}), the data "
                f"{config.model_name_or_path} was trained on (--replay_ratio 0: none)")
        return
    why = (f"{config.model_name_or_path} names no training data" if not found else
           f"{found[0]} ({split}), the data {config.model_name_or_path} was trained on, cannot be read here")
    if "replay_ratio" in config.given_keys:
        raise ValueError(f"replay_ratio {config.replay_ratio:g}: {why}; set replay_dataset")
    _notice(f"no replay: {why} (set replay_dataset to rehearse it and forget less)")
    config.replay_ratio = 0.0


def check_inputs(config: TrainingConfig):
    """Raise a clear error for a bad dataset, tokenizer or output dir. Returns (model config, tokenizer or None)."""
    if config.model_name_or_path is not None:  # fine-tuning: the model fixes the architecture and the tokenizer
        model_config, start_tokenizer = check_start(config)
        defaults = {**FINETUNING_DEFAULTS["common"], **FINETUNING_DEFAULTS.get(config.finetuning_type, {})}
        used = [f"{key} {getattr(config, key):g}" if isinstance(getattr(config, key), float) else
                f"{key} {getattr(config, key)}" for key in defaults if key not in config.given_keys]
        if used:
            _notice(f"fine-tuning defaults ({config.finetuning_type}): {', '.join(used)}")
        if config.replay_ratio > 0 and config.replay_dataset is None:
            replay_the_base_data(config)
    else:
        model_config = VictorianGPTConfig.from_preset(config.model_preset or DEFAULT_PRESET, **config.model_overrides)
        start_tokenizer = None
    if config.native_export:  # an option no native class has fails now, not after the run
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

    if config.num_train_epochs and config.prepared_data is None and not is_local_path(config.dataset):
        if "num_train_epochs" in config.given_keys:
            raise ValueError(f"num_train_epochs needs the size of the training split, which a streamed Hub dataset "
                             f"({config.dataset}) does not have: use max_steps or max_train_minutes, or a local copy")
        _notice(f"{config.dataset} is streamed: its size is unknown, so the run is not limited to "
                f"num_train_epochs {config.num_train_epochs:g}")
        config.num_train_epochs = None
    sources = [(config.dataset, split) for split in (config.train_split, config.validation_split)]
    if config.prepared_data is not None:
        sources = []
    if config.general_dataset is not None:
        sources.append((config.general_dataset, config.general_split))
    if config.replay_dataset is not None:
        sources.append((config.replay_dataset, config.replay_split))
    for source, split in sources:
        # missing path, deepmind/pg19, known columns; .txt books: no files, empty or binary files, too few to split
        dataset = load_text_dataset(source, split=split, text_options=config.text_options)
        first = next(iter(dataset), None)  # JSON Lines declare no columns: look at the first row
        if first is None:
            raise ValueError(f"{source} ({split}) is empty")
        if not isinstance(first.get("text"), str):
            raise ValueError(f"{source} ({split}) has no 'text' field; its fields are {sorted(first)}")
    if config.prepared_data is None and config.test_split and is_txt_source(config.dataset):
        # a .txt folder of train/ and validation/ alone is a normal thing to have: without a test split asked for by
        # name the test evaluation is skipped, and said so; one asked for fails now, not at the end
        if config.test_split not in txt_splits(config.dataset, TextOptions(**config.text_options)) \
                and "test_split" not in config.given_keys:
            _notice(f"{config.dataset} has no {config.test_split!r} split: the test evaluation is skipped (the "
                    "validation split is the held-out figure)")
            config.test_split = None
        else:
            load_text_dataset(config.dataset, split=config.test_split, text_options=config.text_options)
    if config.prepared_data is not None:
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

"""Write a model folder that anyone can load from the Hub: safetensors weights, config with `auto_map`, the
remote-code files, tokenizer and generation_config.json. The folder appears whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

from .tokenization import save_tokenizer
from .utils.files import atomic_output
from .utils.modeling import context_length


def save_model_folder(model, tokenizer, output_dir: str | os.PathLike, extra_files: dict[str, bytes] | None = None):
    """Save `model` + `tokenizer` (+ `extra_files`, name -> bytes) into `output_dir`, replacing it atomically.

    Written into a temporary sibling first and renamed into place, so a crash never leaves a half-written export.
    `model` is ours, a native transformers class (Qwen3, Llama, GPT-2), or a peft model (then the adapter alone:
    `adapter_config.json` naming its base + `adapter_model.safetensors`).
    """
    with atomic_output(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").unlink(missing_ok=True)  # peft's placeholder card; `victorian-gpt card` writes the real one
        context = context_length(model.config)
        if tokenizer.model_max_length > context:
            tokenizer.model_max_length = context
        save_tokenizer(tokenizer, tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return Path(output_dir)

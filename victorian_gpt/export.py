"""Write a model folder that anyone can load from the Hub: safetensors weights, config with `auto_map`, the
remote-code files, tokenizer and generation_config.json. The folder appears whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .tokenization import save_tokenizer


def _make_readable(folder: Path) -> None:
    """mkdtemp makes the folder 0700 and safetensors' atomic write leaves 0600 files: give the export the usual
    permissions (0777 / 0666 less the umask), as a folder made with mkdir and files written with open would have."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def save_model_folder(model, tokenizer, output_dir: str | os.PathLike, extra_files: dict[str, bytes] | None = None):
    """Save `model` + `tokenizer` (+ `extra_files`, name -> bytes) into `output_dir`, replacing it atomically.

    Written into a temporary sibling first and renamed into place, so a crash never leaves a half-written export.
    `model` is ours, a native transformers class (Qwen3, Llama, GPT-2), or a peft model (then the adapter alone:
    `adapter_config.json` naming its base + `adapter_model.safetensors`).
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").unlink(missing_ok=True)  # peft's placeholder card; `victorian-gpt card` writes the real one
        context = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings  # ours / native
        if tokenizer.model_max_length > context:
            tokenizer.model_max_length = context
        save_tokenizer(tokenizer, tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        _make_readable(tmp)
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            output_dir.rename(old)
            tmp.rename(output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir

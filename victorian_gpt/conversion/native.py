"""`victorian-gpt convert EXPORT --to transformers`: a folder that transformers loads as Qwen3 / Llama / GPT-2, with no
remote code (and vLLM, TGI, SGLang, MLX serve as such). The folder appears whole or not at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file
from transformers import GPT2Config, LlamaConfig, Qwen3Config

from ..utils.files import atomic_output
from .common import (
    COPIED_FILES,
    WEIGHTS_FILE,
    ConversionError,
    Export,
    check_output,
    native_architecture,
    native_tensors,
    read_export,
    read_json,
)


def native_config(export: Export, architecture: str) -> dict:
    """The native config.json, every field spelled (not only those that differ from the class defaults), so readers
    other than transformers (vLLM, llama.cpp's converter, MLX) find what they look up."""
    c = export.config
    common = dict(vocab_size=c.vocab_size, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
                  pad_token_id=c.pad_token_id, tie_word_embeddings=c.tie_word_embeddings,
                  initializer_range=c.initializer_range, use_cache=True)
    if architecture == "GPT2LMHeadModel":
        config = GPT2Config(
            n_positions=c.n_positions, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, n_inner=c.mlp_hidden_size,
            # our "gelu_new" is F.gelu(approximate="tanh"), the same function as GPT-2's gelu_new (max |diff| ~1e-6)
            activation_function=c.activation_function, resid_pdrop=c.resid_pdrop, embd_pdrop=c.embd_pdrop,
            attn_pdrop=c.attn_pdrop, layer_norm_epsilon=c.layer_norm_epsilon, **common,
        )
        extra = {"n_ctx": c.n_positions}  # the context length as llama.cpp's GPT-2 converter and older readers read it
    else:
        rope = {"rope_type": "default", "rope_theta": float(c.rope_theta)}
        kwargs = dict(
            hidden_size=c.n_embd, intermediate_size=c.mlp_hidden_size, num_hidden_layers=c.n_layer,
            num_attention_heads=c.n_head, num_key_value_heads=c.n_head, head_dim=c.n_embd // c.n_head,
            hidden_act="silu", max_position_embeddings=c.n_positions, rms_norm_eps=c.layer_norm_epsilon,
            rope_parameters=rope, attention_bias=c.attention_bias, attention_dropout=c.attn_pdrop, **common,
        )
        if architecture == "Qwen3ForCausalLM":
            config = Qwen3Config(use_sliding_window=False, **kwargs)
        else:
            config = LlamaConfig(mlp_bias=c.mlp_bias, pretraining_tp=1, **kwargs)
        # transformers 5 reads `rope_parameters`; 4.x, vLLM before 0.11 and other readers read `rope_theta`
        extra = {"rope_theta": float(c.rope_theta)}
    data = config.to_dict()
    data.update(extra)
    data["architectures"] = [architecture]
    data["dtype"] = export.config_dict.get("dtype") or export.config_dict.get("torch_dtype") or "float32"
    for key in ("auto_map", "_name_or_path", "custom_pipelines"):
        data.pop(key, None)
    return dict(sorted(data.items()))


def _write_tokenizer_config(source: Path, target: Path) -> None:
    """The export's tokenizer_config.json, without anything that points at remote code."""
    data = read_json(source)
    for key in ("auto_map", "is_local", "local_files_only"):
        data.pop(key, None)
    target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def to_transformers(export, output, *, revision: str | None = None, overwrite: bool = False) -> Path:
    """Write a folder that `AutoModelForCausalLM` loads as Qwen3 / Llama / GPT-2, with no remote code.

    `export`: a local export folder or a Hub repo id (at `revision`). Returns the output folder.
    Every check (the export, the options, the output path) runs before anything is written."""
    output = Path(output).expanduser()
    if output.exists() and not overwrite:  # the cheapest check first: before any download
        raise ConversionError(f"--output {output} already exists (pass --overwrite to replace it)")
    data = read_export(export, revision)
    output = check_output(output, overwrite, data.folder)
    if output.exists() and not output.is_dir():
        raise ConversionError(f"--output {output} is a file; a native export is a folder")
    architecture = native_architecture(data.config)
    config = native_config(data, architecture)
    tensors = native_tensors(data, architecture)
    with atomic_output(output) as tmp:
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for name in COPIED_FILES:
            if not (data.folder / name).is_file():
                continue
            if name == "tokenizer_config.json":
                _write_tokenizer_config(data.folder / name, tmp / name)
            else:
                shutil.copyfile(data.folder / name, tmp / name)
    return output

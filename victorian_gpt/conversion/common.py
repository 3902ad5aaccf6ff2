"""What both conversions (native transformers classes, GGUF) start from: an export read and checked, the native class
that computes exactly what it does, and its weights under that class's names and layouts.

The modern presets are, weight for weight, Qwen3 (Llama when `qk_norm` is off): rotate-half RoPE, QK-norm with a
learnable per-head weight before RoPE, RMSNorm as weight * x / rms, SwiGLU with the gated half first. The GPT-2 presets
are `GPT2LMHeadModel`, name for name. So a conversion only renames, splits the fused projections and transposes
`Conv1D` layouts; nothing is approximated. An option that no native class has is an error naming it, before anything
is written; so is bad input.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file

from ..configuration_victorian_gpt import VictorianGPTConfig
from ..modeling_victorian_gpt import VictorianGPTForCausalLM
from ..utils.hub import first_line, hub_errors, is_hub_id
from ..utils.modeling import as_linear

WEIGHTS_FILE, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"
# Files of the export that describe the same weights and travel with them (the tokenizer, generation defaults, and
# the training run's measured facts, which the native folder's card reports).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
COPIED_FILES = (*TOKENIZER_FILES, "generation_config.json", "training_summary.json", "loss_curve.png")
NATIVE_CLASSES = ("Qwen3ForCausalLM", "LlamaForCausalLM", "GPT2LMHeadModel")


class ConversionError(ValueError):
    """A conversion that must not start (or cannot finish): the message says what to fix, in one line."""


@dataclass
class Export:
    """An export read into memory: where it came from, its config and its weights (our names)."""

    folder: Path
    source: str  # the path or `repo_id@revision` the user named
    config: VictorianGPTConfig
    config_dict: dict
    tensors: dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------- reading
def resolve_export(export: str | os.PathLike, revision: str | None = None) -> tuple[Path, str]:
    """The local folder of `export` (a folder, or a Hub repo id downloaded at `revision`) and how to name it."""
    path = Path(export).expanduser()
    if path.exists():
        if revision is not None:
            raise ConversionError(f"--revision applies to a Hub repo id, but {export} is a local path")
        if not path.is_dir():
            raise ConversionError(f"{export} is not an export folder (it is a file)")
        return path, str(export)
    if not is_hub_id(str(export)):
        raise ConversionError(f"{export} does not exist (expected an export folder or a Hub repo id USER/NAME)")
    patterns = ["config.json", "*.safetensors", WEIGHTS_INDEX, *COPIED_FILES]
    with hub_errors(f"Hub repo {export}", revision, error=ConversionError):
        folder = Path(snapshot_download(str(export), revision=revision, allow_patterns=patterns))
    return folder, f"{export}@{revision or 'main'}"


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path.parent} is not an export: no {path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} is not a JSON object")
    return data


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / WEIGHTS_INDEX).is_file():
        weight_map = read_json(folder / WEIGHTS_INDEX).get("weight_map") or {}
        files = sorted(set(weight_map.values()))
    elif (folder / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        raise ConversionError(f"{folder} has no {WEIGHTS_FILE}: the export's weights are missing")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            tensors.update(load_file(folder / name))
        except FileNotFoundError:
            raise ConversionError(f"{folder / name} is missing (named in {WEIGHTS_INDEX})") from None
        except Exception as error:  # safetensors' SafetensorError, or a header that is not JSON
            raise ConversionError(f"{folder / name} is corrupt: {first_line(error)}") from None
    return tensors


def read_export(export: str | os.PathLike, revision: str | None = None) -> Export:
    """Read and check an export: a VictorianGPT config.json, a tokenizer, weights of the shapes the config says."""
    folder, source = resolve_export(export, revision)
    config_dict = read_json(folder / "config.json")
    if config_dict.get("model_type") != VictorianGPTConfig.model_type:
        raise ConversionError(
            f"{source} is not a VictorianGPT export: config.json has model_type {config_dict.get('model_type')!r}"
        )
    if not (folder / "tokenizer.json").is_file():
        raise ConversionError(f"{source} is not a complete export: no tokenizer.json")
    try:
        config = VictorianGPTConfig.from_dict(dict(config_dict))
    except (ValueError, TypeError) as error:
        raise ConversionError(f"{source}: invalid config.json: {error}") from None
    tensors = _load_weights(folder)
    _check_weights(config, tensors, source)
    return Export(folder, source, config, config_dict, tensors)


def _expected_shapes(config: VictorianGPTConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = VictorianGPTForCausalLM(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _check_weights(config: VictorianGPTConfig, tensors: dict[str, torch.Tensor], source: str) -> None:
    expected = _expected_shapes(config)
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)  # stored once, as the input embedding
        tensors.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ConversionError(f"{source}: {WEIGHTS_FILE} lacks {len(missing)} tensors the config needs, e.g. {missing[0]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ConversionError(
                f"{source}: {name} has shape {tuple(tensors[name].shape)}, but config.json implies {shape}"
            )
        if not tensors[name].is_floating_point():
            raise ConversionError(f"{source}: {name} is {tensors[name].dtype}, not a floating-point tensor")


# --------------------------------------------------------------------------------------------------- the native class
def native_architecture(config: VictorianGPTConfig) -> str:
    """The transformers class that computes exactly what `config` does; ConversionError naming the option if none."""
    def refuse(option: str, why: str):
        raise ConversionError(f"cannot convert to a native class: {option} ({why})")

    if config.final_logit_softcapping is not None:
        refuse(f"final_logit_softcapping={config.final_logit_softcapping}", "Qwen3, Llama and GPT-2 do not cap logits")
    if config.position_embedding_type == "rope":
        if config.norm_type != "rmsnorm":
            refuse(f"norm_type={config.norm_type!r} with rotary positions", "Qwen3 and Llama use RMSNorm")
        if config.activation_function != "swiglu":
            refuse(f"activation_function={config.activation_function!r} with rotary positions",
                   "Qwen3 and Llama have a SwiGLU MLP")
        if config.qk_norm:
            if config.mlp_bias:
                refuse("qk_norm with mlp_bias=True", "Qwen3 has QK-norm but no MLP biases; Llama has biases but no QK-norm")
            return "Qwen3ForCausalLM"
        return "LlamaForCausalLM"
    if config.norm_type != "layernorm":
        refuse(f"norm_type={config.norm_type!r} with learned positions", "GPT-2 uses LayerNorm")
    if config.qk_norm:
        refuse("qk_norm with learned positions", "GPT-2 has no QK-norm")
    if config.activation_function == "swiglu":
        refuse("activation_function='swiglu' with learned positions", "GPT-2's MLP is not gated")
    return "GPT2LMHeadModel"


def native_tensors(export: Export, architecture: str) -> dict[str, torch.Tensor]:
    """Our weights under the native class's names and layouts (each tensor its own contiguous copy)."""
    config, ours = export.config, export.tensors
    conv1d = config.weight_layout == "conv1d"
    out: dict[str, torch.Tensor] = {}
    if architecture == "GPT2LMHeadModel":
        for name, tensor in ours.items():
            if name.endswith(".weight") and any(p in name for p in (".c_attn.", ".c_proj.", ".c_fc.")):
                tensor = tensor if conv1d else tensor.t()  # GPT-2 keeps Conv1D (in, out)
            out[name] = tensor
        for i in range(config.n_layer):  # a bias-free linear layout is GPT-2 with zero biases: the same function
            for proj, size in (("attn.c_attn", 3 * config.n_embd), ("attn.c_proj", config.n_embd),
                               ("mlp.c_fc", config.mlp_hidden_size), ("mlp.c_proj", config.n_embd)):
                key = f"transformer.h.{i}.{proj}.bias"
                if key not in out:
                    out[key] = torch.zeros(size, dtype=ours["transformer.wte.weight"].dtype)
    else:
        C = config.n_embd
        out["model.embed_tokens.weight"] = ours["transformer.wte.weight"]
        out["model.norm.weight"] = ours["transformer.ln_f.weight"]
        for i in range(config.n_layer):
            src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
            out[dst + "input_layernorm.weight"] = ours[src + "ln_1.weight"]
            out[dst + "post_attention_layernorm.weight"] = ours[src + "ln_2.weight"]
            qkv = as_linear(ours[src + "attn.c_attn.weight"], conv1d)  # (3C, C): q, k, v rows
            for j, part in enumerate(("q_proj", "k_proj", "v_proj")):
                out[dst + f"self_attn.{part}.weight"] = qkv[j * C:(j + 1) * C]
                if config.attention_bias:
                    out[dst + f"self_attn.{part}.bias"] = ours[src + "attn.c_attn.bias"][j * C:(j + 1) * C]
            out[dst + "self_attn.o_proj.weight"] = as_linear(ours[src + "attn.c_proj.weight"], conv1d)
            if config.attention_bias:
                out[dst + "self_attn.o_proj.bias"] = ours[src + "attn.c_proj.bias"]
            if config.qk_norm:
                out[dst + "self_attn.q_norm.weight"] = ours[src + "attn.q_norm.weight"]
                out[dst + "self_attn.k_norm.weight"] = ours[src + "attn.k_norm.weight"]
            inner = config.mlp_hidden_size
            fc = as_linear(ours[src + "mlp.c_fc.weight"], conv1d)  # (2I, C): the gate first, then the value
            out[dst + "mlp.gate_proj.weight"], out[dst + "mlp.up_proj.weight"] = fc[:inner], fc[inner:]
            out[dst + "mlp.down_proj.weight"] = as_linear(ours[src + "mlp.c_proj.weight"], conv1d)
            if config.mlp_bias:
                fc_bias = ours[src + "mlp.c_fc.bias"]
                out[dst + "mlp.gate_proj.bias"], out[dst + "mlp.up_proj.bias"] = fc_bias[:inner], fc_bias[inner:]
                out[dst + "mlp.down_proj.bias"] = ours[src + "mlp.c_proj.bias"]
        if not config.tie_word_embeddings:
            out["lm_head.weight"] = ours["lm_head.weight"]
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    _fold_attention_scale(out, config, architecture)
    return {name: tensor.contiguous().clone() for name, tensor in out.items()}


def _fold_attention_scale(out: dict[str, torch.Tensor], config: VictorianGPTConfig, architecture: str) -> None:
    """The native classes scale attention logits by 1/sqrt(head size); another `attention_multiplier` becomes a factor
    on the queries, which are linear in the weights it goes into: the QK-norm's weight (Qwen3), else the query
    projection's weight and bias (Llama; GPT-2's first third of `c_attn`, stored (in, out)). Computed in float32."""
    if config.attention_multiplier is None:
        return
    factor = config.attention_multiplier * (config.n_embd // config.n_head) ** 0.5
    C = config.n_embd

    def scaled(tensor: torch.Tensor) -> torch.Tensor:
        return (tensor.float() * factor).to(tensor.dtype)

    for i in range(config.n_layer):
        if architecture == "GPT2LMHeadModel":
            weight, bias = f"transformer.h.{i}.attn.c_attn.weight", f"transformer.h.{i}.attn.c_attn.bias"
            out[weight] = torch.cat((scaled(out[weight][:, :C]), out[weight][:, C:]), dim=1)
            out[bias] = torch.cat((scaled(out[bias][:C]), out[bias][C:]))
        elif config.qk_norm:
            out[f"model.layers.{i}.self_attn.q_norm.weight"] = scaled(out[f"model.layers.{i}.self_attn.q_norm.weight"])
        else:
            for kind in ("weight", "bias"):
                name = f"model.layers.{i}.self_attn.q_proj.{kind}"
                if name in out:
                    out[name] = scaled(out[name])


# --------------------------------------------------------------------------------------------------- writing
def check_output(output: str | os.PathLike, overwrite: bool, source_folder: Path | None = None) -> Path:
    """Refuse an output that holds something (unless `overwrite`), or that is the export itself."""
    output = Path(output).expanduser()
    if source_folder is not None and output.exists() and output.resolve() == source_folder.resolve():
        raise ConversionError(f"--output {output} is the export itself: write the conversion somewhere else")
    if output.exists() and not overwrite:
        raise ConversionError(f"--output {output} already exists (pass --overwrite to replace it)")
    return output

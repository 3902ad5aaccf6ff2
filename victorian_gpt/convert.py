"""Convert an export (remote-code folder or Hub repo) into formats that engines serve without our code.

    victorian-gpt convert EXPORT --to transformers --output DIR       # Qwen3 / Llama / GPT-2 classes, no remote code
    victorian-gpt convert EXPORT --to gguf --output FILE.gguf [--outtype f32|f16|q8_0]    # llama.cpp, Ollama, ...

The modern presets are, weight for weight, Qwen3 (Llama when `qk_norm` is off): rotate-half RoPE, QK-norm with a
learnable per-head weight before RoPE, RMSNorm as weight * x / rms, SwiGLU with the gated half first. The GPT-2 presets
are `GPT2LMHeadModel`, name for name. So a conversion only renames, splits the fused projections and transposes
`Conv1D` layouts; nothing is approximated. An option that no native class has is an error naming it, before anything
is written; so is bad input. Output appears whole or not at all (written to a temporary sibling, then renamed).

Python API (what training's native-folder key calls):
    to_transformers(export, output, *, revision=None, overwrite=False) -> Path
    to_gguf(export, output, *, outtype="f32", revision=None, overwrite=False) -> Path
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .configuration_victorian_gpt import VictorianGPTConfig

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
def _is_hub_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not text.endswith("/")


def resolve_export(export: str | os.PathLike, revision: str | None = None) -> tuple[Path, str]:
    """The local folder of `export` (a folder, or a Hub repo id downloaded at `revision`) and how to name it."""
    path = Path(export).expanduser()
    if path.exists():
        if revision is not None:
            raise ConversionError(f"--revision applies to a Hub repo id, but {export} is a local path")
        if not path.is_dir():
            raise ConversionError(f"{export} is not an export folder (it is a file)")
        return path, str(export)
    if not _is_hub_id(str(export)):
        raise ConversionError(f"{export} does not exist (expected an export folder or a Hub repo id USER/NAME)")
    return _download(str(export), revision), f"{export}@{revision or 'main'}"


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = ["config.json", "*.safetensors", WEIGHTS_INDEX, *COPIED_FILES]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except HFValidationError as error:
        raise ConversionError(f"{repo_id!r} is not a valid Hub repo id: {error}") from None
    except RevisionNotFoundError:
        raise ConversionError(f"revision {revision!r} not found in the Hub repo {repo_id}") from None
    except GatedRepoError:
        raise ConversionError(f"the Hub repo {repo_id} is gated: accept its terms and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise ConversionError(f"Hub repo {repo_id} not found (or private: log in with `hf auth login`)") from None
    except (LocalEntryNotFoundError, EntryNotFoundError) as error:
        raise ConversionError(f"cannot get {repo_id}@{revision or 'main'}: {_first_line(error)}") from None
    except OSError as error:  # network errors surface as OSError subclasses
        raise ConversionError(f"cannot download {repo_id}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_json(path: Path) -> dict:
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
    from safetensors.torch import load_file

    if (folder / WEIGHTS_INDEX).is_file():
        weight_map = _read_json(folder / WEIGHTS_INDEX).get("weight_map") or {}
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
            raise ConversionError(f"{folder / name} is corrupt: {_first_line(error)}") from None
    return tensors


def read_export(export: str | os.PathLike, revision: str | None = None) -> Export:
    """Read and check an export: a VictorianGPT config.json, a tokenizer, weights of the shapes the config says."""
    folder, source = resolve_export(export, revision)
    config_dict = _read_json(folder / "config.json")
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
    from .modeling_victorian_gpt import VictorianGPTForCausalLM

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


def _as_linear(weight: torch.Tensor, config: VictorianGPTConfig) -> torch.Tensor:
    """(out, in), as nn.Linear stores it: GPT-2's Conv1D layout stores (in, out)."""
    return weight.t() if config.weight_layout == "conv1d" else weight


def native_tensors(export: Export, architecture: str) -> dict[str, torch.Tensor]:
    """Our weights under the native class's names and layouts (each tensor its own contiguous copy)."""
    config, ours = export.config, export.tensors
    out: dict[str, torch.Tensor] = {}
    if architecture == "GPT2LMHeadModel":
        for name, tensor in ours.items():
            if name.endswith(".weight") and any(p in name for p in (".c_attn.", ".c_proj.", ".c_fc.")):
                tensor = tensor if config.weight_layout == "conv1d" else tensor.t()  # GPT-2 keeps Conv1D (in, out)
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
            qkv = _as_linear(ours[src + "attn.c_attn.weight"], config)  # (3C, C): q, k, v rows
            for j, part in enumerate(("q_proj", "k_proj", "v_proj")):
                out[dst + f"self_attn.{part}.weight"] = qkv[j * C:(j + 1) * C]
                if config.attention_bias:
                    out[dst + f"self_attn.{part}.bias"] = ours[src + "attn.c_attn.bias"][j * C:(j + 1) * C]
            out[dst + "self_attn.o_proj.weight"] = _as_linear(ours[src + "attn.c_proj.weight"], config)
            if config.attention_bias:
                out[dst + "self_attn.o_proj.bias"] = ours[src + "attn.c_proj.bias"]
            if config.qk_norm:
                out[dst + "self_attn.q_norm.weight"] = ours[src + "attn.q_norm.weight"]
                out[dst + "self_attn.k_norm.weight"] = ours[src + "attn.k_norm.weight"]
            inner = config.mlp_hidden_size
            fc = _as_linear(ours[src + "mlp.c_fc.weight"], config)  # (2I, C): the gate first, then the value
            out[dst + "mlp.gate_proj.weight"], out[dst + "mlp.up_proj.weight"] = fc[:inner], fc[inner:]
            out[dst + "mlp.down_proj.weight"] = _as_linear(ours[src + "mlp.c_proj.weight"], config)
            if config.mlp_bias:
                fc_bias = ours[src + "mlp.c_fc.bias"]
                out[dst + "mlp.gate_proj.bias"], out[dst + "mlp.up_proj.bias"] = fc_bias[:inner], fc_bias[inner:]
                out[dst + "mlp.down_proj.bias"] = ours[src + "mlp.c_proj.bias"]
        if not config.tie_word_embeddings:
            out["lm_head.weight"] = ours["lm_head.weight"]
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return {name: tensor.contiguous().clone() for name, tensor in out.items()}


def native_config(export: Export, architecture: str) -> dict:
    """The native config.json, every field spelled (not only those that differ from the class defaults), so readers
    other than transformers (vLLM, llama.cpp's converter, MLX) find what they look up."""
    from transformers import GPT2Config, LlamaConfig, Qwen3Config

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


# --------------------------------------------------------------------------------------------------- writing
def check_output(output: str | os.PathLike, overwrite: bool, source_folder: Path | None = None) -> Path:
    """Refuse an output that holds something (unless `overwrite`), or that is the export itself."""
    output = Path(output).expanduser()
    if source_folder is not None and output.exists() and output.resolve() == source_folder.resolve():
        raise ConversionError(f"--output {output} is the export itself: write the conversion somewhere else")
    if output.exists() and not overwrite:
        raise ConversionError(f"--output {output} already exists (pass --overwrite to replace it)")
    return output


def replace_atomically(tmp: Path, output: Path) -> None:
    """Move the finished `tmp` to `output`, replacing what is there only once the new one is whole."""
    if output.exists():
        old = output.with_name(f".{output.name}.old")
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
        output.rename(old)
        tmp.rename(output)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        tmp.rename(output)


def _readable(path: Path) -> None:
    """mkdtemp/mkstemp make 0700/0600 entries: give the output the permissions a plain mkdir/open would."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    if path.is_dir():
        for child in path.iterdir():
            child.chmod((0o777 if child.is_dir() else 0o666) & ~umask)


def _write_tokenizer_config(source: Path, target: Path) -> None:
    """The export's tokenizer_config.json, without anything that points at remote code."""
    data = _read_json(source)
    for key in ("auto_map", "is_local", "local_files_only"):
        data.pop(key, None)
    target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def to_transformers(export, output, *, revision: str | None = None, overwrite: bool = False) -> Path:
    """Write a folder that `AutoModelForCausalLM` loads as Qwen3 / Llama / GPT-2, with no remote code.

    `export`: a local export folder or a Hub repo id (at `revision`). Returns the output folder.
    Every check (the export, the options, the output path) runs before anything is written."""
    from safetensors.torch import save_file

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

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for name in COPIED_FILES:
            if not (data.folder / name).is_file():
                continue
            if name == "tokenizer_config.json":
                _write_tokenizer_config(data.folder / name, tmp / name)
            else:
                shutil.copyfile(data.folder / name, tmp / name)
        _readable(tmp)
        replace_atomically(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def to_gguf(export, output, *, outtype: str = "f32", revision: str | None = None, overwrite: bool = False) -> Path:
    """Write one GGUF file that llama.cpp loads as qwen3 / llama / gpt2, with our vocabulary and merges.

    `outtype`: f32 (exact), f16, or q8_0 (8-bit blocks of 32; norms, biases and GPT-2's position table stay f32,
    as llama.cpp's converter keeps them). Returns the output file."""
    from .convert_gguf import OUTTYPES, write_gguf

    if outtype not in OUTTYPES:
        raise ConversionError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise ConversionError(f"--output {output} already exists (pass --overwrite to replace it)")
    if output.is_dir():
        raise ConversionError(f"--output {output} is a folder; a GGUF output is a file (e.g. model.gguf)")
    data = read_export(export, revision)
    return write_gguf(data, output, outtype)


# --------------------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="victorian-gpt convert",
        description="Convert an export (folder or Hub repo id) to a native transformers folder (Qwen3 / Llama / "
        "GPT-2 classes, no remote code) or to a GGUF file for llama.cpp.",
    )
    parser.add_argument("export", help="export folder, or a Hub repo id USER/NAME")
    parser.add_argument("--to", required=True, choices=("transformers", "gguf"), help="what to write")
    parser.add_argument("--output", required=True, help="folder (--to transformers) or .gguf file (--to gguf)")
    parser.add_argument("--outtype", default=None, help="GGUF tensor type: f32 (exact, default), f16 or q8_0")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub repo id (pin a commit for reproducibility)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    prog = "victorian-gpt convert"
    try:
        if args.to == "transformers":
            if args.outtype is not None:
                raise ConversionError("--outtype applies to --to gguf only")
            path = to_transformers(args.export, args.output, revision=args.revision, overwrite=args.overwrite)
            architecture = json.loads((path / "config.json").read_text())["architectures"][0]
            print(f"wrote {path} ({architecture}; load it with AutoModelForCausalLM, no trust_remote_code)")
        else:
            path = to_gguf(args.export, args.output, outtype=args.outtype or "f32", revision=args.revision,
                           overwrite=args.overwrite)
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.outtype or 'f32'})")
    except ConversionError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

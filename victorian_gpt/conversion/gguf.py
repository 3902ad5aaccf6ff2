"""Write an export as one GGUF file for llama.cpp (and Ollama, LM Studio, ...), with the `gguf` package.

The file is what llama.cpp's own `convert_hf_to_gguf.py` writes for the native class the export converts to (see
`common.native_architecture`): architecture `qwen3`, `llama` or `gpt2`, the same tensor names, layouts and metadata
keys, our byte-level BPE vocabulary and merges, and the pre-tokenizer declared from what our tokenizer *is* (a
`ByteLevel` pre-tokenizer with GPT-2's split pattern: llama.cpp's "gpt-2"), not looked up in a table of hashes.

Two layout facts carry the proof of equality:
- llama.cpp's `llama` architecture rotates pairs of neighbouring values (its "normal" RoPE), where Hugging Face's
  Llama rotates the two halves of a head; the converter therefore permutes the rows of q and k (and their biases)
  within each head. `qwen3` uses the half-rotation ("neox") RoPE as we do, and nothing is permuted.
- GPT-2's fused q/k/v and MLP matrices are written (out, in), as for every other architecture.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..utils.files import atomic_output
from .common import ConversionError, Export, native_architecture, native_tensors, read_export

OUTTYPES = ("f32", "f16", "q8_0")
Q8_0_BLOCK = 32  # values per q8_0 block: a quantized matrix's rows must be a whole number of blocks
ARCHITECTURES = {"Qwen3ForCausalLM": "qwen3", "LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2"}
# A ByteLevel pre-tokenizer with its regex is GPT-2's split pattern; llama.cpp implements it as the "gpt-2" type.
PRE_TOKENIZER = "gpt-2"


def gguf_architecture(export: Export) -> tuple[str, str]:
    """(native class, llama.cpp architecture) of `export`; ConversionError for what llama.cpp cannot compute."""
    config = export.config
    native = native_architecture(config)
    if native == "GPT2LMHeadModel" and config.activation_function != "gelu_new":
        raise ConversionError(
            f"cannot convert to GGUF: activation_function={config.activation_function!r} (llama.cpp's gpt2 "
            "computes GPT-2's tanh-approximated GELU, gelu_new)"
        )
    if native == "Qwen3ForCausalLM" and config.attention_bias:
        raise ConversionError(
            "cannot convert to GGUF: qk_norm with attention_bias=True (llama.cpp's qwen3 has no attention output bias)"
        )
    return native, ARCHITECTURES[native]


# --------------------------------------------------------------------------------------------------- tensors
def _permute_for_llama(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder each head's rows from (first half, second half) to interleaved pairs: HF's rotate-half RoPE on the
    original rows equals llama.cpp's pairwise RoPE on the permuted ones (what convert_hf_to_gguf's `permute` does)."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# (whole-model names, per-layer part names) -> llama.cpp's; per-layer tensors are `<prefix>.{i}.<part>.{weight|bias}`.
GPT2_NAMES = (
    {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
     "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
     "lm_head.weight": "output.weight"},
    {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
     "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"},
)
LLAMA_NAMES = (
    {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
     "lm_head.weight": "output.weight"},
    {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
     "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
     "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
     "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"},
)


def gguf_tensors(export: Export, native: str) -> dict[str, torch.Tensor]:
    """The weights under llama.cpp's names, in PyTorch order (the writer reverses dimensions into ggml's)."""
    config = export.config
    if native == "GPT2LMHeadModel":
        (names, parts) = GPT2_NAMES

        def convert(part, kind, tensor):
            if kind == "weight" and part not in ("ln_1", "ln_2"):
                return tensor.t().contiguous()  # Conv1D (in, out) -> (out, in)
            return tensor
    else:
        (names, parts) = LLAMA_NAMES

        def convert(part, kind, tensor):
            if native == "LlamaForCausalLM" and part in ("self_attn.q_proj", "self_attn.k_proj"):
                return _permute_for_llama(tensor, config.n_head).contiguous()
            return tensor

    out: dict[str, torch.Tensor] = {}
    for name, tensor in native_tensors(export, native).items():
        if name in names:
            out[names[name]] = tensor
            continue
        _, _, layer, *rest = name.split(".")  # transformer.h.{i}.… (GPT-2) or model.layers.{i}.…
        part, kind = ".".join(rest[:-1]), rest[-1]
        out[f"blk.{layer}.{parts[part]}.{kind}"] = convert(part, kind, tensor)
    return out


def tensor_type(name: str, tensor: torch.Tensor, outtype: str) -> str:
    """The type llama.cpp's converter gives this tensor: 1-D tensors, norms, biases and GPT-2's position table stay
    f32; the other matrices take `outtype`."""
    if tensor.dim() <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") or name == "position_embd.weight":
        return "f32"
    return outtype


def check_outtype(tensors: dict[str, torch.Tensor], outtype: str) -> None:
    """q8_0 quantizes rows in blocks of 32 values: a matrix with other row lengths cannot be q8_0 (llama.cpp's
    converter silently falls back to f16 there; we say so and let the user choose)."""
    if outtype != "q8_0":
        return
    for name, tensor in tensors.items():
        if tensor_type(name, tensor, outtype) == "q8_0" and tensor.shape[-1] % Q8_0_BLOCK:
            raise ConversionError(
                f"--outtype q8_0: {name} has rows of {tensor.shape[-1]} values, not a multiple of {Q8_0_BLOCK} "
                "(a q8_0 block); use --outtype f16 or f32"
            )


# --------------------------------------------------------------------------------------------------- tokenizer
def read_vocabulary(folder: Path, vocab_size: int) -> dict:
    """Tokens, their types and the merges from tokenizer.json, after checking that llama.cpp's "gpt-2" BPE
    tokenizes exactly as it does (no normaliser, a ByteLevel pre-tokenizer with GPT-2's regex, plain BPE)."""
    import gguf  # optional (pip install 'victorian-gpt[gguf]'): only this conversion needs it

    try:
        tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConversionError(f"{folder / 'tokenizer.json'} cannot be read: {error}") from None
    model, pre = tokenizer.get("model") or {}, tokenizer.get("pre_tokenizer") or {}
    problems = []
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("ignore_merges"):
        problems.append(f"model {model.get('type')!r} (need byte-level BPE)")
    if tokenizer.get("normalizer"):
        problems.append(f"a normalizer ({tokenizer['normalizer'].get('type')})")
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        problems.append(f"pre-tokenizer {json.dumps(pre)} (need ByteLevel with GPT-2's regex, no prefix space)")
    if problems:
        raise ConversionError("cannot declare a llama.cpp pre-tokenizer for this tokenizer: " + "; ".join(problems))

    by_id = {i: token for token, i in model["vocab"].items()}
    special = {}
    for added in tokenizer.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        special[added["id"]] = added.get("special", False)
    if by_id and max(by_id) >= vocab_size:
        raise ConversionError(f"the tokenizer has id {max(by_id)}, beyond the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # the model's vocabulary is padded past the tokenizer's (a multiple of 64)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if special.get(i) else
                         gguf.TokenType.USER_DEFINED if i in special else gguf.TokenType.NORMAL)
    merges = []
    for merge in model.get("merges", []):
        pair = merge if isinstance(merge, list) else merge.split(" ")
        if len(pair) != 2 or any(" " in part for part in pair):
            raise ConversionError(f"merge {merge!r} in tokenizer.json cannot be written as llama.cpp's 'a b' string")
        merges.append(" ".join(pair))
    return {"tokens": tokens, "types": types, "merges": merges}


# --------------------------------------------------------------------------------------------------- writing
def _model_name(export: Export) -> str:
    """general.name: the Hub repo's name, or the export folder's (its parent's for a generic `model`/`export`)."""
    if "@" in export.source:
        return export.source.split("@")[0].split("/")[-1]
    folder = Path(export.source).expanduser().resolve()
    return folder.parent.name if folder.name in ("model", "export") and folder.parent.name else folder.name


def write_gguf(export: Export, output: Path, outtype: str) -> Path:
    import gguf  # optional (pip install 'victorian-gpt[gguf]'): only this conversion needs it

    config = export.config
    native, arch = gguf_architecture(export)
    tensors = gguf_tensors(export, native)
    check_outtype(tensors, outtype)
    vocab = read_vocabulary(export.folder, config.vocab_size)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    qtypes = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
              "q8_0": gguf.GGMLQuantizationType.Q8_0}

    with atomic_output(output, folder=False) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(_model_name(export))
        writer.add_block_count(config.n_layer)
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.mlp_hidden_size)
        writer.add_head_count(config.n_head)
        if arch == "gpt2":
            writer.add_layer_norm_eps(config.layer_norm_epsilon)
        else:
            head_dim = config.n_embd // config.n_head
            writer.add_head_count_kv(config.n_head)
            writer.add_rope_freq_base(float(config.rope_theta))
            writer.add_layer_norm_rms_eps(config.layer_norm_epsilon)
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
            if arch == "llama":
                writer.add_vocab_size(config.vocab_size)
                writer.add_rope_dimension_count(head_dim)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
        writer.add_tokenizer_pre(PRE_TOKENIZER)
        writer.add_token_list(vocab["tokens"])
        writer.add_token_types(vocab["types"])
        writer.add_token_merges(vocab["merges"])
        writer.add_bos_token_id(config.bos_token_id)
        writer.add_eos_token_id(config.eos_token_id)
        if config.pad_token_id is not None:
            writer.add_pad_token_id(config.pad_token_id)
        writer.add_add_bos_token(False)  # our tokenizer adds no special tokens: neither may llama.cpp
        writer.add_add_eos_token(False)

        for name, tensor in tensors.items():
            kind = tensor_type(name, tensor, outtype)
            data = tensor.float().numpy()
            if kind == "f16":
                data = data.astype(np.float16)
            elif kind == "q8_0":
                data = gguf.quants.quantize(data, qtypes[kind])
            writer.add_tensor(name, data, raw_dtype=qtypes[kind])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return output


def to_gguf(export, output, *, outtype: str = "f32", revision: str | None = None, overwrite: bool = False) -> Path:
    """Write one GGUF file that llama.cpp loads as qwen3 / llama / gpt2, with our vocabulary and merges.

    `outtype`: f32 (exact), f16, or q8_0 (8-bit blocks of 32; norms, biases and GPT-2's position table stay f32,
    as llama.cpp's converter keeps them). Returns the output file."""
    if outtype not in OUTTYPES:
        raise ConversionError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise ConversionError(f"--output {output} already exists (pass --overwrite to replace it)")
    if output.is_dir():
        raise ConversionError(f"--output {output} is a folder; a GGUF output is a file (e.g. model.gguf)")
    data = read_export(export, revision)
    return write_gguf(data, output, outtype)

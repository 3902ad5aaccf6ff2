"""Model loading: a Hub id or a local export folder, through transformers' Auto classes."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .int8 import quantize_int8

QUANTIZE_CHOICES = ("int8",)


def load_model(model_id: str, *, device: str | None = None, dtype: str | torch.dtype | None = None, revision=None,
               quantize: str | None = None):
    """(model, tokenizer) from a Hub id or a local export folder, through the Auto classes with remote code.

    `quantize="int8"` replaces the model's linear layers (GPT-2 `Conv1D` or `nn.Linear`, the output head included)
    with `Int8Linear` after loading: the CPU path, about a third of fp32's bytes per token.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize and torch.device(device).type != "cpu":
        raise ValueError(f"--quantize {quantize} is the CPU path; on {device} use --dtype bfloat16 instead")
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r} (e.g. float32, bfloat16, float16)")
        dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(model_id, trust_remote_code=True, revision=revision, dtype=dtype)
    model.to(device).eval()
    if quantize == "int8":
        quantize_int8(model)
    return model, tokenizer

"""LoRA adapters of a test export, written as `training --finetuning_type lora --lora_export adapter` writes them:
peft's `adapter_config.json` (naming the base folder) + `adapter_model.safetensors`, and the base's tokenizer."""

from __future__ import annotations

from pathlib import Path


def make_lora_adapter(base: Path, out: Path, *, seed: int, r: int = 4, lora_alpha: float = 8.0,
                      target_modules: list[str] | None = None, scale: float = 0.05) -> Path:
    """A LoRA adapter of the export folder `base`, with random A and B (peft starts B at zero, which would make the
    adapter the base and test nothing), seeded by `seed`. `target_modules`: training's default when None."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.finetune import apply_lora
    from training.config import TrainingConfig
    from victorian_gpt.export import save_model_folder

    model = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=True, dtype=torch.float32)
    config = TrainingConfig(finetuning_type="lora", lora_r=r, lora_alpha=lora_alpha, lora_dropout=0.0,
                            lora_target_modules=target_modules, optimizer="adamw")
    torch.manual_seed(seed)
    model = apply_lora(model, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0.0, scale)
    return save_model_folder(model, AutoTokenizer.from_pretrained(base), out)


def merged_model(base: Path, adapter: Path):
    """The adapter merged into its base (peft's `merge_and_unload`), float32, eval mode: the reference a request for
    that adapter must decode exactly like."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=True, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()

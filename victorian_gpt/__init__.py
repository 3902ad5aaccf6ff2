"""VictorianGPT: a GPT-style language model trained from scratch on PG19, native to Hugging Face tools."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_victorian_gpt import PRESETS, VictorianGPTConfig
from .modeling_victorian_gpt import VictorianGPTForCausalLM, VictorianGPTModel, VictorianGPTPreTrainedModel

__version__ = "0.1.0"

# Inside this package the Auto classes know the model without remote code; exported folders carry `auto_map`.
AutoConfig.register(VictorianGPTConfig.model_type, VictorianGPTConfig, exist_ok=True)
AutoModel.register(VictorianGPTConfig, VictorianGPTModel, exist_ok=True)
AutoModelForCausalLM.register(VictorianGPTConfig, VictorianGPTForCausalLM, exist_ok=True)

__all__ = [
    "PRESETS",
    "VictorianGPTConfig",
    "VictorianGPTForCausalLM",
    "VictorianGPTModel",
    "VictorianGPTPreTrainedModel",
]

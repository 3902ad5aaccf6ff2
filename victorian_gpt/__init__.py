"""VictorianGPT: a GPT-style language model trained from scratch on PG19, native to Hugging Face tools."""

from importlib.metadata import PackageNotFoundError, version

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_victorian_gpt import PRESETS, VictorianGPTConfig
from .modeling_victorian_gpt import VictorianGPTForCausalLM, VictorianGPTModel, VictorianGPTPreTrainedModel

try:  # the one place the version is read: pyproject.toml's, as installed
    __version__ = version("victorian-gpt")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

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

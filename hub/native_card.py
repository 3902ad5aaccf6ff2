"""The model card of a native folder (`victorian-gpt convert --to transformers`): which class it is, which engines
serve it, how to load it without remote code, and the training run's evaluation of these same weights.

Every figure is read from the folder: the class and shape from `config.json`, the parameter count from the
safetensors header, sampling defaults from `generation_config.json`, evaluation from `training_summary.json` when the
conversion carried it over.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from victorian_gpt.conversion import NATIVE_CLASSES
from victorian_gpt.summary import SUMMARY_FILE, TrainingSummary
from victorian_gpt.utils.hub import is_hub_id

from .card import check_card, count_parameters, evaluation, read_summary

TEMPLATE = Path(__file__).parent / "templates" / "native_model_card.md"
NATIVE_REQUIRED = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
GENERATION_KEYS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty")

# Per class: (why this class, the engines that run it and how). Each engine runs the class natively: no
# trust_remote_code, no generic fallback.
_WHY = {
    "Qwen3ForCausalLM": "Its modern recipe (rotary positions, RMSNorm, SwiGLU, QK-norm, no biases) is Qwen3's "
                        "architecture weight for weight.",
    "LlamaForCausalLM": "Its recipe (rotary positions, RMSNorm, SwiGLU, no QK-norm) is Llama's architecture weight "
                        "for weight.",
    "GPT2LMHeadModel": "Its recipe (learned positions, LayerNorm, GELU, biases) is GPT-2's architecture, name for "
                       "name.",
}
_MIN_TRANSFORMERS = {"Qwen3ForCausalLM": "4.51", "LlamaForCausalLM": "4.28", "GPT2LMHeadModel": "4.0"}


def engines(architecture: str, repo_id: str) -> list[tuple[str, str]]:
    rows = [
        ("🤗 transformers", f"`AutoModelForCausalLM.from_pretrained(\"{repo_id}\")` (transformers ≥ "
                           f"{_MIN_TRANSFORMERS[architecture]}); `pipeline(\"text-generation\", ...)`"),
        ("vLLM", f"`vllm serve {repo_id}` (OpenAI-compatible server)"),
        ("Text Generation Inference", f"`--model-id {repo_id}`"),
        ("SGLang", f"`python -m sglang.launch_server --model-path {repo_id}`"),
        ("MLX (Apple silicon)", f"`mlx_lm.generate --model {repo_id} --prompt \"...\"`"),
        ("llama.cpp, Ollama, LM Studio", "a GGUF file: `victorian-gpt convert EXPORT --to gguf --output model.gguf "
                                         "--outtype f16` (or `q8_0`), then `llama-cli -m model.gguf`"),
    ]
    return rows


def is_native_folder(folder: Path) -> bool:
    """A folder whose config.json names a native class and no remote code."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return "auto_map" not in config and (config.get("architectures") or [None])[0] in NATIVE_CLASSES


def missing_native_files(folder: Path) -> list[str]:
    missing = [name for name in NATIVE_REQUIRED if not (folder / name).is_file()]
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        missing.append("model.safetensors")
    return missing


def build_native_card(folder, repo_id: str | None = None, source_repo: str | None = None,
                      license: str = "apache-2.0") -> ModelCard:
    """The card for a native folder. `repo_id`: where it will live; `source_repo`: the remote-code repo it was
    converted from (named and linked in the card)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    architecture = config["architectures"][0]
    generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    summary = read_summary(folder) if (folder / SUMMARY_FILE).is_file() else TrainingSummary()
    model_name = repo_id.split("/")[-1] if repo_id else folder.name
    repo_id = repo_id or f"your-username/{folder.name}"
    dataset = summary.dataset or ""
    dataset_is_hub = is_hub_id(dataset)
    eval_results, eval_rows = evaluation(summary)

    family = {"Qwen3ForCausalLM": "qwen3", "LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2"}[architecture]
    card_data = ModelCardData(
        language="en",
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["text-generation", family, "victorian", "pg19", "safetensors", "text-generation-inference"],
        datasets=[dataset] if dataset_is_hub else None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    gpt2 = architecture == "GPT2LMHeadModel"
    n_params = count_parameters(folder)
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        repo_id=repo_id,
        source_repo=source_repo,
        architecture=architecture,
        why_native=_WHY[architecture],
        n_params=f"{n_params / 1e6:.1f}M" if n_params >= 1e6 else f"{n_params / 1e3:.0f}K",
        layers=config["n_layer" if gpt2 else "num_hidden_layers"],
        width=config["n_embd" if gpt2 else "hidden_size"],
        heads=config["n_head" if gpt2 else "num_attention_heads"],
        context=config["n_positions" if gpt2 else "max_position_embeddings"],
        vocab_size=config["vocab_size"],
        engines=engines(architecture, repo_id),
        learned_positions=gpt2,
        generation_defaults=[(k, repr(generation[k])) for k in GENERATION_KEYS if k in generation],
        eval_rows=eval_rows,
    )
    check_card(card)
    return card

"""Start training from an existing model (`model_name_or_path`, `revision`): an export folder, a native folder
(`victorian-gpt convert --to transformers`) or a Hub repo; full fine-tuning or LoRA (`finetuning_type: lora`, peft).

Everything here that can fail does so before any compute and before anything is written to `output_dir`:
`check_start` reads only config.json (through `hf_hub_download` for a Hub id, so a missing repo or revision is a
one-line error), the tokenizer, and, for LoRA, the module names of the model built on the meta device.

Remote code. A model whose config.json has `auto_map` runs its own Python code when loaded. A local folder is trusted
(its code is on the user's disk, as the export wrote it); a Hub repo with remote code needs `trust_remote_code: true`
(`victorian-gpt eval --trust-remote-code`), best with `revision` pinned to a commit hash so that the code cannot
change after it was read. A native folder (no `auto_map`) needs no trust.

What the starting model fixes: its architecture, weights and tokenizer. `model_preset` may only name the model's own
preset; `model_overrides` may only change dropout (`*_pdrop`, `*dropout`) or repeat the model's own values (a shorter
training context is `block_size`, which needs no change to the model).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.pytorch_utils import Conv1D

from victorian_gpt import PRESETS
from victorian_gpt.summary import SUMMARY_FILE, TrainingSummary
from victorian_gpt.utils.hub import ADAPTER_CONFIG, is_local_path
from victorian_gpt.utils.hub import model_source as _model_source

# LoRA's default targets: the attention and MLP projections of each layout we train or convert to.
LORA_TARGETS = (
    "c_attn", "c_proj", "c_fc",  # VictorianGPT (nn.Linear and Conv1D layouts alike), GPT-2
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",  # Llama, Qwen3 (native folders)
)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_MISSING = ("finetuning_type 'lora' needs peft (the Hugging Face LoRA library): pip install 'victorian-gpt[lora]' "
                "(or pip install peft)")


def model_source(name: str, revision: str | None = None, trust_remote_code: bool = False,
                 key: str = "model_name_or_path", trust_hint: str = "trust_remote_code: true, with revision") -> dict:
    """The project's remote-code rule (victorian_gpt.utils.hub.model_source), in fine-tuning's words; a local
    folder's name comes back absolute, as the card and the training summary record it."""
    source = _model_source(name, revision, trust_remote_code, key=key, trust_hint=trust_hint)
    if source["local"]:
        source["name"] = str(Path(source["name"]).resolve())
    return source


def _dropout_key(key: str) -> bool:
    return key.endswith("pdrop") or key.endswith("dropout")


def check_start(config):
    """The starting model's config (with allowed overrides applied) and tokenizer, every contradiction an error.
    For LoRA: peft importable and `lora_target_modules` (resolved) each matching a module."""
    source = model_source(config.model_name_or_path, config.revision, config.trust_remote_code)
    name, trust = source["name"], source["trust_remote_code"]
    model_config = AutoConfig.from_pretrained(name, revision=config.revision, trust_remote_code=trust)

    if config.model_preset is not None:
        if config.model_preset not in PRESETS:
            raise ValueError(f"Unknown model preset {config.model_preset!r}; choose one of {sorted(PRESETS)}")
        differs = {k: (v, getattr(model_config, k, None)) for k, v in PRESETS[config.model_preset].items()
                   if getattr(model_config, k, None) != v}
        if model_config.model_type != "victorian_gpt" or differs:
            what = ", ".join(f"{k} {want!r} vs {got!r}" for k, (want, got) in differs.items()) or model_config.model_type
            raise ValueError(f"model_preset {config.model_preset!r} contradicts {config.model_name_or_path} ({what}); "
                             "drop model_preset when fine-tuning: the model's own config is used")
    for key, value in config.model_overrides.items():
        if not hasattr(model_config, key):
            raise ValueError(f"model_overrides: {config.model_name_or_path}'s config has no {key!r}")
        if _dropout_key(key):
            setattr(model_config, key, value)
        elif getattr(model_config, key) != value:
            raise ValueError(f"model_overrides {key}={value!r} contradicts {config.model_name_or_path} ({key}="
                             f"{getattr(model_config, key)!r}); fine-tuning may override only dropout (*_pdrop, "
                             "*dropout); for a shorter context set block_size")

    try:
        model_tokenizer = AutoTokenizer.from_pretrained(name, revision=config.revision, trust_remote_code=trust)
    except (OSError, ValueError) as error:
        if config.tokenizer is None:
            raise ValueError(f"{config.model_name_or_path} holds no tokenizer ({str(error).splitlines()[0]}); "
                             "set `tokenizer` to the one it was trained with") from None
        model_tokenizer = None
    tokenizer = model_tokenizer
    if config.tokenizer is not None:
        if not Path(config.tokenizer).is_dir():
            raise FileNotFoundError(f"tokenizer folder {config.tokenizer!r} does not exist")
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
        if model_tokenizer is not None and tokenizer.get_vocab() != model_tokenizer.get_vocab():
            raise ValueError(f"tokenizer {config.tokenizer} does not match {config.model_name_or_path}'s own "
                             f"({len(tokenizer)} vs {len(model_tokenizer)} tokens, or other merges): a model is "
                             "fine-tuned with the tokenizer it was trained with; drop `tokenizer`")
    if len(tokenizer) > model_config.vocab_size:
        raise ValueError(f"tokenizer/model mismatch: the tokenizer has {len(tokenizer)} tokens but "
                         f"{config.model_name_or_path}'s vocab_size is {model_config.vocab_size}")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{config.model_name_or_path}'s tokenizer has no eos_token (needed between books)")

    if config.finetuning_type == "lora":
        try:
            import peft  # noqa: F401  (optional: pip install 'victorian-gpt[lora]')
        except ImportError:
            raise ValueError(PEFT_MISSING) from None
        with torch.device("meta"):  # module names without memory or compute
            skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust)
        lora_targets(skeleton, config.lora_target_modules)
    return model_config, tokenizer


def _adaptable(model) -> list[str]:
    """Names of the modules LoRA can adapt (linear layers of either layout)."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))]


def lora_targets(model, wanted: list[str] | None) -> list[str]:
    """`wanted` (peft's matching: a module whose name is, or ends with `.` + , the target), each checked to match;
    None: the known attention/MLP projection names this model has."""
    names = _adaptable(model)

    def matches(target):
        return any(n == target or n.endswith("." + target) for n in names)

    if wanted is None:
        targets = [t for t in LORA_TARGETS if matches(t)]
        if not targets:
            raise ValueError(f"no default LoRA target ({', '.join(LORA_TARGETS)}) in this model; set "
                             f"lora_target_modules (its linear modules: {_short(names)})")
        return targets
    unmatched = [t for t in wanted if not matches(t)]
    if unmatched:
        raise ValueError(f"lora_target_modules {unmatched} match no linear module of the model (its linear modules: "
                         f"{_short(names)})")
    return list(wanted)


def _short(names: list[str]) -> str:
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    return ", ".join(leaves)


def base_training_data(config) -> tuple[str, str] | None:
    """(dataset, training split) that `model_name_or_path` was trained on, as its training_summary.json names them (a
    local export's, or a Hub repo's through `hf_hub_download` and its cache), or None where there is none to read."""
    name = config.model_name_or_path
    try:
        if is_local_path(name):
            folder = Path(os.path.expanduser(name))
        else:
            from huggingface_hub import hf_hub_download

            folder = Path(hf_hub_download(name, SUMMARY_FILE, revision=config.revision)).parent
        summary = TrainingSummary.read(folder)
    except (OSError, ValueError, TypeError):  # no summary (or no such file on the Hub, or offline): nothing to replay
        return None
    if not summary.dataset:
        return None
    return summary.dataset, (summary.dataset_splits or {}).get("train") or "train"


def load_start_model(config, model_config):
    """The starting weights in fp32 (mixed precision autocasts; the master weights stay fp32), then LoRA."""
    source = model_source(config.model_name_or_path, config.revision, config.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(source["name"], revision=config.revision, config=model_config,
                                                 trust_remote_code=source["trust_remote_code"], dtype=torch.float32)
    if config.finetuning_type == "lora":
        model = apply_lora(model, config)
    return model


def apply_lora(model, config):
    from peft import LoraConfig, get_peft_model  # optional: pip install 'victorian-gpt[lora]'

    targets = lora_targets(model, config.lora_target_modules)
    modules = dict(model.named_modules())
    conv1d = any(isinstance(m, Conv1D) for n, m in modules.items()
                 if any(n == t or n.endswith("." + t) for t in targets))
    lora = LoraConfig(task_type="CAUSAL_LM", r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets,
                      fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores weights (in, out)
                      revision=config.revision)
    model = get_peft_model(model, lora)
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters, tied weights counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def is_peft_model(model) -> bool:
    return type(model).__module__.startswith("peft.")


def load_for_eval(name: str, revision: str | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) for `victorian-gpt eval`: an export or native folder, a Hub repo (the remote-code rule
    applies), or a LoRA adapter folder (its base loaded as its adapter_config.json names it, the adapter on top)."""
    folder = Path(os.path.expanduser(name))
    if is_local_path(name) and (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file():
        try:
            from peft import PeftModel  # optional: pip install 'victorian-gpt[lora]'
        except ImportError:
            raise ValueError(f"{name} is a LoRA adapter, which needs peft: pip install 'victorian-gpt[lora]'") from None
        adapter = json.loads((folder / ADAPTER_CONFIG).read_text())
        base = adapter.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{folder / ADAPTER_CONFIG} names no base_model_name_or_path")
        source = model_source(base, adapter.get("revision"), trust_remote_code, key="the adapter's base model",
                              trust_hint="--trust-remote-code, with --revision")
        model = AutoModelForCausalLM.from_pretrained(source["name"], revision=adapter.get("revision"),
                                                     trust_remote_code=source["trust_remote_code"])
        model = PeftModel.from_pretrained(model, str(folder))
        return model, AutoTokenizer.from_pretrained(str(folder))
    source = model_source(name, revision, trust_remote_code, key="model", trust_hint="--trust-remote-code, with --revision")
    model = AutoModelForCausalLM.from_pretrained(source["name"], revision=revision,
                                                 trust_remote_code=source["trust_remote_code"])
    return model, AutoTokenizer.from_pretrained(source["name"], revision=revision,
                                                trust_remote_code=source["trust_remote_code"])

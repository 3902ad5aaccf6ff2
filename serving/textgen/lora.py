"""LoRA adapters served per request over one base model, in the same batch (Punica's and LoRAX's idea).

An adapter is what `training --finetuning_type lora --lora_export adapter` writes (peft's format):
`adapter_config.json` (its base model, `r`, `lora_alpha`, `use_rslora`, `target_modules`, `fan_in_fan_out`) and
`adapter_model.safetensors` (`...<module>.lora_A.weight` (r, in), `...lora_B.weight` (out, r)), with the tokenizer.
`load_model(..., lora_adapters={"dickens": "runs/dickens-lora/model", "hardy": "USER/hardy-lora@main"})` reads
each one at start and checks it against the model before any compute (another base, another tokenizer, a module the
model lacks, a shape that differs: each a one-line ValueError naming the adapter).

Each adapted linear layer becomes a `LoraLinear` around whatever serves it (`PackedLinear`, `Int8Linear`,
`Float32Linear`, `nn.Linear`, `Conv1D`): the base layer computes every row as before, then each row of an adapter
gets `scaling * (x @ A^T) @ B^T` added, with its own adapter's A and B. The layer holds every adapter's matrices
stacked (A^T as (adapters, in, R), scaling * B^T as (adapters, R, out), ranks padded with zeros to the largest, R;
float32, or bf16 in a bf16 model), and a forward pass gets one index per row (which adapter, or none) from
`adapter_rows`: one gather per layer for the whole batch. Rows of the base get nothing added, so they keep the bits
they have without adapters. On the CPU the delta is one call of the decode kernel `lora_add_` (kernels.py) per layer,
each row summed in an order fixed by the shapes alone (batch invariance holds: a row's bits do not depend on the
others); elsewhere, or for comparison (`LoraAdapters.method`), PyTorch's operators, rows grouped by adapter ("group")
or gathered into one batched product ("bmm").
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from victorian_gpt.utils.hub import ADAPTER_CONFIG, first_line, hub_errors, is_hub_id, is_local_path
from victorian_gpt.utils.modeling import is_linear_layer

from .kernels import decode_kernels_available

logger = logging.getLogger("victorian_gpt.serving")

ADAPTER_WEIGHTS = "adapter_model.safetensors"
NAME = re.compile(r"[A-Za-z0-9._-]+")  # names valid as OpenAI model ids (the adapter is picked by `model` there)
# The fields of a model's config.json that fix its architecture: an adapter's base must agree on those both name.
ARCHITECTURE_KEYS = (
    "model_type", "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
    "position_embedding_type", "rope_theta", "norm_type", "qk_norm", "attention_bias", "mlp_bias", "weight_layout",
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "max_position_embeddings", "head_dim", "hidden_act", "tie_word_embeddings",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "tokenizer.model")
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")
METHODS = ("kernel", "group", "bmm")


def parse_lora_adapters(text: str) -> dict[str, str]:
    """`NAME=SOURCE,NAME=SOURCE,...` (SOURCE: an adapter folder, or a Hub id with an optional `@revision`) as
    {name: source}, in the order given. A one-line ValueError for an entry without `=`, an empty name or source, a
    name that is not a valid model id (letters, digits, `-`, `_`, `.`) and a name given twice."""
    adapters: dict[str, str] = {}
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, equals, source = (part.strip() for part in entry.partition("="))
        if not equals:
            raise ValueError(f"LoRA adapter {entry!r} is not NAME=SOURCE (e.g. dickens=runs/dickens-lora/model)")
        if not name or not source:
            raise ValueError(f"LoRA adapter {entry!r} has an empty {'name' if not name else 'source'}")
        if not NAME.fullmatch(name):
            raise ValueError(f"LoRA adapter name {name!r} is not a valid model id: use letters, digits, '-', '_', '.'")
        if name in adapters:
            raise ValueError(f"LoRA adapter name {name!r} is given twice")
        adapters[name] = source
    return adapters


@dataclass
class LoraAdapter:
    """One adapter as read from its folder: per adapted module, A (r, in) and B (out, r) in float32, and its scaling."""

    name: str
    source: str
    folder: Path
    config: dict
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)  # A, B, scaling

    @property
    def label(self) -> str:
        return f"LoRA adapter {self.name!r} ({self.source})"


def adapter_folder(name: str, source: str) -> Path:
    """The local folder of adapter `source`: a folder, or a Hub id (`owner/repo`, optionally `@revision`) downloaded
    through huggingface_hub (its cache, HF_HUB_OFFLINE) -- only the adapter's config, weights and tokenizer files:
    an adapter holds no code."""
    label = f"LoRA adapter {name!r} ({source})"
    if is_local_path(source):
        folder = Path(os.path.expanduser(source))
        if not folder.is_dir():
            raise ValueError(f"{label}: no such folder (nor a Hub id)")
        return folder
    repo, at, revision = source.partition("@")
    if not is_hub_id(repo) or (at and not revision):
        raise ValueError(f"{label}: neither a local folder nor a Hub id (owner/name, optionally @revision)")
    from huggingface_hub import snapshot_download

    with hub_errors(label, revision or None):
        return Path(snapshot_download(repo, revision=revision or None,
                                      allow_patterns=[ADAPTER_CONFIG, ADAPTER_WEIGHTS, *TOKENIZER_FILES]))


def read_adapter(name: str, source: str, model_config: dict | None = None) -> LoraAdapter:
    """Read and check adapter `name` from `source` (see `adapter_folder`): its config (a LoRA that serves per request:
    no DoRA, no trained biases, no whole modules saved), its base against `model_config` (the served model's
    config.json, where the adapter's base can be read), its weights (complete A/B pairs). One-line ValueErrors."""
    folder = adapter_folder(name, source)
    adapter = LoraAdapter(name, source, folder, {})
    label = adapter.label
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        hint = " (it is a model folder, not an adapter)" if (folder / "config.json").is_file() else ""
        raise ValueError(f"{label}: no {ADAPTER_CONFIG}{hint}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (ValueError, OSError) as error:
        raise ValueError(f"{label}: cannot read {ADAPTER_CONFIG}: {first_line(error)}") from None
    adapter.config = config
    kind = str(config.get("peft_type") or "LORA").upper()
    if kind != "LORA":
        raise ValueError(f"{label} is a {kind} adapter; only LoRA adapters are served")
    unsupported = [what for what, on in (("DoRA (use_dora)", config.get("use_dora")),
                                         ("trained biases (bias)", config.get("bias", "none") not in (None, "none")),
                                         ("LoRA biases (lora_bias)", config.get("lora_bias")),
                                         ("whole modules (modules_to_save)", config.get("modules_to_save")))
                   if on]
    if unsupported:
        raise ValueError(f"{label} uses {', '.join(unsupported)}, which cannot be served per request")
    if model_config is not None:
        check_base_config(adapter, model_config)
    adapter.modules = _read_weights(adapter)
    return adapter


def _base_config(adapter: LoraAdapter) -> dict | None:
    """The config.json of the adapter's base model where it can be read (a local folder, or a Hub repo reachable or
    in the cache); None where it cannot (then the weights' shapes and the tokenizer decide)."""
    base = adapter.config.get("base_model_name_or_path")
    if not base:
        return None
    try:
        if is_local_path(base):
            path = Path(os.path.expanduser(base)) / "config.json"
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if is_hub_id(base):
            from huggingface_hub import hf_hub_download

            return json.loads(Path(hf_hub_download(base, "config.json", revision=adapter.config.get("revision")))
                              .read_text(encoding="utf-8"))
    except Exception as error:  # noqa: BLE001 -- unreadable: the shapes and the tokenizer are checked anyway
        logger.info("%s: its base %s could not be read (%s)", adapter.label, base, first_line(error))
    return None


def check_base_config(adapter: LoraAdapter, model_config: dict) -> None:
    """A one-line ValueError when the adapter's base (its config.json, where it can be read) differs from the served
    model in architecture (`ARCHITECTURE_KEYS` that both configs name)."""
    base = _base_config(adapter)
    if base is None:
        return
    differ = [f"{key} {base[key]!r} (this model: {model_config[key]!r})" for key in ARCHITECTURE_KEYS
              if key in base and key in model_config and base[key] != model_config[key]]
    if differ:
        raise ValueError(f"{adapter.label} was made for another model: its base "
                         f"{adapter.config.get('base_model_name_or_path')} has {'; '.join(differ[:3])}")


def _read_weights(adapter: LoraAdapter) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    label, path = adapter.label, adapter.folder / ADAPTER_WEIGHTS
    if not path.is_file():
        other = " (adapter_model.bin is not read: re-save it with safetensors)" if (
            adapter.folder / "adapter_model.bin").is_file() else ""
        raise ValueError(f"{label}: no {ADAPTER_WEIGHTS} in {adapter.folder}{other}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{label}: cannot read {ADAPTER_WEIGHTS}: {first_line(error)}") from None
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = LORA_KEY.match(key)
        if match is None:
            raise ValueError(f"{label}: {ADAPTER_WEIGHTS} holds {key!r}, not a LoRA matrix of a linear layer "
                             "(embedding LoRA and saved modules cannot be served per request)")
        pairs.setdefault(match["module"], {})[match["which"]] = tensor
    if not pairs:
        raise ValueError(f"{label}: {ADAPTER_WEIGHTS} holds no LoRA weights")
    config = adapter.config
    alpha, patterns = float(config.get("lora_alpha") or config.get("r") or 8), config.get("alpha_pattern") or {}
    modules = {}
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(f"{label}: {module} has lora_{'AB'.replace(''.join(pair), '')} missing")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or a.shape[0] < 1:
            raise ValueError(f"{label}: {module} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, "
                             "not (r, in) and (out, r)")
        if not (a.is_floating_point() and b.is_floating_point()):
            raise ValueError(f"{label}: {module} has {a.dtype} LoRA weights, not floating point")
        rank = a.shape[0]
        module_alpha = float(_pattern_value(patterns, module, alpha))
        scaling = module_alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        a, b = a.float(), b.float()
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise ValueError(f"{label}: {module} has LoRA weights that are not finite")
        modules[module] = (a, b, scaling)
    return modules


def _pattern_value(patterns: dict, module: str, default):
    """peft's `alpha_pattern`: the value of the first pattern the module's name ends with (as a regex)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def check_tokenizer(adapter: LoraAdapter, tokenizer) -> None:
    """A one-line ValueError when the adapter's folder carries a tokenizer whose vocabulary is not the model's."""
    if not any((adapter.folder / name).is_file() for name in TOKENIZER_FILES):
        return
    from transformers import AutoTokenizer

    try:
        theirs = AutoTokenizer.from_pretrained(str(adapter.folder)).get_vocab()
    except Exception as error:  # noqa: BLE001 -- garbled files: one line naming the adapter
        raise ValueError(f"{adapter.label}: cannot read its tokenizer: {first_line(error)}") from None
    ours = tokenizer.get_vocab()
    if theirs != ours:
        differ = len(set(theirs.items()) ^ set(ours.items())) // 2 or abs(len(theirs) - len(ours))
        raise ValueError(f"{adapter.label} was made for another model: its tokenizer's vocabulary "
                         f"({len(theirs)} tokens) differs from this model's ({len(ours)} tokens) in {differ} entries")


def check_modules(adapter: LoraAdapter, model: nn.Module) -> None:
    """A one-line ValueError unless every module the adapter adapts is a linear layer of `model` (as loaded, before
    its layers are replaced for serving) of the adapter's shapes and weight layout (`fan_in_fan_out`: GPT-2's
    Conv1D)."""
    label = adapter.label
    fan_in_fan_out = bool(adapter.config.get("fan_in_fan_out"))
    for name, (a, b, _) in adapter.modules.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{label} adapts {name}, which this model lacks: it was made for another model") from None
        if not is_linear_layer(module):
            raise ValueError(f"{label} adapts {name}, a {type(module).__name__} in this model, not a linear layer")
        conv1d = type(module).__name__ == "Conv1D"
        out_features, in_features = (module.weight.shape[1], module.weight.shape[0]) if conv1d else module.weight.shape
        if (a.shape[1], b.shape[0]) != (in_features, out_features):
            raise ValueError(f"{label}: {name} maps {in_features} -> {out_features} features in this model, the "
                             f"adapter's {a.shape[1]} -> {b.shape[0]}: it was made for another model")
        if fan_in_fan_out != conv1d:
            raise ValueError(f"{label} was made for {'Conv1D' if fan_in_fan_out else 'nn.Linear'} layers "
                             f"(fan_in_fan_out={fan_in_fan_out}); this model's {name} is {type(module).__name__}: "
                             "another model")


class LoraAdapters:
    """The adapters a model serves and, per thread, which adapter each row of the current forward pass takes
    (`adapter_rows`). Shared by the model's `LoraLinear` layers; `model.lora`."""

    def __init__(self, names: tuple[str, ...]):
        self.names = tuple(names)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.method = "kernel"  # the CPU's per-layer delta: "kernel" (lora_add_), "group" or "bmm" (PyTorch's)
        self.kernel = decode_kernels_available()
        self._local = threading.local()

    def slot(self, adapter_id: str | None) -> int:
        """The adapter's index in the stacks (-1: the base)."""
        if adapter_id is None:
            return -1
        try:
            return self.index[adapter_id]
        except KeyError:
            raise ValueError(f"unknown adapter {adapter_id!r}; this model has: "
                             f"{', '.join(self.names) or 'none'}") from None

    @contextlib.contextmanager
    def rows(self, adapter_ids):
        """Within the block, this thread's forward passes give row i (of the batch) adapter `adapter_ids[i]` (None:
        the base). A batch with no adapter row runs as if there were no adapters."""
        slots = [self.slot(a) for a in adapter_ids]
        previous = getattr(self._local, "rows", None)
        self._local.rows = _Rows(torch.tensor(slots, dtype=torch.long)) if any(s >= 0 for s in slots) else None
        try:
            yield
        finally:
            self._local.rows = previous

    def current(self) -> "_Rows | None":
        return getattr(self._local, "rows", None)


class _Rows:
    """Which adapter each row of a forward pass takes (-1: none), and its groupings, computed once per pass and row
    count as a method needs them (the layers see B * T rows: a decode step's B, or one prompt's T)."""

    def __init__(self, slots: torch.Tensor):
        self.slots = slots
        self._cache: dict = {}

    def slots_for(self, count: int) -> torch.Tensor:
        """The slot of each of `count` rows (a sequence's T rows take its slot), int64 on the CPU."""
        found = self._cache.get(count)
        if found is None:
            found = self.slots if count == len(self.slots) else self.slots.repeat_interleave(count // len(self.slots))
            self._cache[count] = found
        return found

    def groups_for(self, count: int, device: torch.device) -> list[tuple[int, torch.Tensor | None]]:
        """(slot, its rows, or None for all of them) for each adapter among the rows."""
        key = ("groups", count, device)
        found = self._cache.get(key)
        if found is None:
            slots = self.slots_for(count)
            found = []
            for slot in sorted(set(slots.tolist()) - {-1}):
                rows = (slots == slot).nonzero().flatten()
                found.append((slot, None if len(rows) == count else rows.to(device)))
            self._cache[key] = found
        return found

    def adapted_for(self, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(the rows of some adapter, their slots)."""
        key = ("adapted", count, device)
        found = self._cache.get(key)
        if found is None:
            slots = self.slots_for(count)
            rows = (slots >= 0).nonzero().flatten()
            found = self._cache[key] = (rows.to(device), slots[rows].to(device))
        return found


class LoraLinear(nn.Module):
    """A serving linear layer (`base`) plus every adapter's low-rank delta, each row with its own adapter's
    (`LoraAdapters.rows`); rows of the base, and rows of an adapter that does not adapt this layer, get none."""

    def __init__(self, base: nn.Module, adapters: LoraAdapters, a: torch.Tensor, b: torch.Tensor,
                 ranks: torch.Tensor):
        super().__init__()
        self.base = base
        self.lora = adapters  # shared, not a submodule
        self.in_features, self.rank = a.shape[1], a.shape[2]
        self.out_features = b.shape[2]
        # float32, or bf16 in a bf16 model
        self.register_buffer("a", a.contiguous(), persistent=False)  # (adapters, in, R): A^T, padded with zeros
        self.register_buffer("b", b.contiguous(), persistent=False)  # (adapters, R, out): scaling * B^T, padded
        self.register_buffer("ranks", ranks, persistent=False)  # (adapters,): 0 where an adapter leaves this layer
        self._ranks = ranks.tolist()

    @property
    def weight(self) -> torch.Tensor:
        """The base weight's shape and dtype without its values (on the meta device): code that special-cases plain
        weights (the model's fast CPU output head) calls the module instead."""
        weight = self.base.weight
        return torch.empty(self.out_features, self.in_features, dtype=weight.dtype, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        rows = self.lora.current()
        if rows is None:
            return y
        flat = x.reshape(-1, self.in_features)
        y = y.contiguous()
        out = y.view(-1, self.out_features)
        method = self.lora.method
        if (method == "kernel" and self.lora.kernel and flat.device.type == "cpu" and flat.dtype == out.dtype
                and flat.dtype in (torch.float32, torch.bfloat16)):
            torch.ops.victorian_gpt.lora_add_(out, flat.contiguous(), self.a, self.b, rows.slots_for(len(flat)),
                                              self.ranks)
        elif method == "bmm":
            adapted, adapted_slots = rows.adapted_for(len(flat), flat.device)
            if len(adapted):
                xs = flat.index_select(0, adapted).float()
                h = torch.bmm(xs[:, None, :], self.a.index_select(0, adapted_slots).float())
                delta = torch.bmm(h, self.b.index_select(0, adapted_slots).float())[:, 0]
                out.index_copy_(0, adapted, (out.index_select(0, adapted).float() + delta).to(out.dtype))
        else:  # "group", and the kernel's stand-in where it is not built (or off the CPU)
            for slot, index in rows.groups_for(len(flat), flat.device):
                rank = self._ranks[slot]
                if not rank:
                    continue
                xs = (flat if index is None else flat.index_select(0, index)).float()
                delta = (xs @ self.a[slot, :, :rank].float()) @ self.b[slot, :rank].float()
                if index is None:
                    out.copy_(out.float() + delta)
                else:
                    out.index_copy_(0, index, (out.index_select(0, index).float() + delta).to(out.dtype))
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, adapters={len(self._ranks)}, "
                f"max_rank={self.rank}")


def attach_lora_adapters(model: nn.Module, adapters: list[LoraAdapter]) -> nn.Module:
    """Wrap every module some adapter adapts in a `LoraLinear` holding all the adapters' matrices (after the model's
    layers were replaced for serving; checked by `check_modules` before), in place. Sets `model.lora_adapters` (the
    names, in order; () when none) and `model.lora` (the `LoraAdapters`, None when none). Returns `model`."""
    model.lora_adapters = tuple(adapter.name for adapter in adapters)
    model.lora = None
    if not adapters:
        return model
    lora = LoraAdapters(model.lora_adapters)
    device = next(model.parameters()).device
    # a bf16 model keeps its adapters in bf16 (half the bytes a step reads), any other in float32
    dtype = torch.bfloat16 if model.dtype == torch.bfloat16 else torch.float32
    targets = sorted({name for adapter in adapters for name in adapter.modules})
    for name in targets:
        present = [adapter.modules.get(name) for adapter in adapters]
        rank = max(m[0].shape[0] for m in present if m is not None)
        first = next(m for m in present if m is not None)
        in_features, out_features = first[0].shape[1], first[1].shape[0]
        a = torch.zeros(len(adapters), in_features, rank)
        b = torch.zeros(len(adapters), rank, out_features)
        ranks = torch.zeros(len(adapters), dtype=torch.long)
        for i, found in enumerate(present):
            if found is not None:
                lora_a, lora_b, scaling = found
                r = lora_a.shape[0]
                a[i, :, :r] = lora_a.t()
                b[i, :r] = lora_b.t() * scaling
                ranks[i] = r
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoraLinear(getattr(parent, child), lora, a.to(device, dtype), b.to(device, dtype),
                                          ranks.to(device)))
    model.lora = lora
    return model


@contextlib.contextmanager
def adapter_rows(model, adapter_ids):
    """Run the block's forward passes of `model` (in this thread) with row i of each batch under adapter
    `adapter_ids[i]` (a name of `model.lora_adapters`, or None for the base): the engine's way in. A model without
    adapters accepts only None."""
    lora = getattr(model, "lora", None)
    if lora is None:
        named = [a for a in adapter_ids if a is not None]
        if named:
            raise ValueError(f"unknown adapter {named[0]!r}; this model has none")
        yield
        return
    with lora.rows(list(adapter_ids)):
        yield


def use_adapter(model, adapter_id: str | None):
    """`adapter_rows` for one sequence (`generate()`, a prompt's log-probabilities): every row of the block's forward
    passes under `adapter_id` (None: the base)."""
    return adapter_rows(model, [adapter_id])

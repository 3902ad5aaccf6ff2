"""Optimizers and learning-rate schedules of the training loop.

- `build_optimizer`: AdamW for everything (`optimizer: adamw`), or Muon for the blocks' 2-D weight matrices and
  AdamW for the rest (`optimizer: muon`), as one `torch.optim.Optimizer` so that accelerate's GradScaler,
  gradient clipping, non-finite skipping and `save_state`/`load_state` see one optimizer, as with AdamW alone.
- `lr_factor`: the schedule, a pure function of the step (and, for a time budget, of the training clock), so resuming
  needs no scheduler state. Each parameter group's learning rate is its `initial_lr` times this factor.
"""

from __future__ import annotations

import math

import torch
from transformers.pytorch_utils import Conv1D

from victorian_gpt.utils.modeling import as_linear

from .config import TrainingConfig

HIDDEN_PREFIX = "transformer.h."  # the transformer blocks: their 2-D weights are the "hidden matrices" Muon is for
# ... and where native folders (Llama, Qwen3 classes; a fine-tune's starting point) keep theirs
HIDDEN_PREFIXES = (HIDDEN_PREFIX, "model.layers.")


# ----------------------------------------------------------------------------------------------------------------------
# schedules


def _decay_shape(progress: float, decay_type: str) -> float:
    """1 -> 0 over progress 0 -> 1, as transformers' `get_wsd_schedule` shapes its decay."""
    progress = min(1.0, max(0.0, progress))
    if decay_type == "linear":
        return 1.0 - progress
    if decay_type == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - math.sqrt(progress)  # "1-sqrt"


def lr_factor(step: int, config: TrainingConfig, train_time_s: float | None = None) -> float:
    """Multiplier of each group's initial learning rate for optimizer step `step` (0-based).

    `cosine`: linear warm-up over `warmup_steps` to 1, then cosine decay to `min_lr_ratio` at the end of the run.
    `warmup_stable_decay`: transformers' `get_wsd_schedule` (linear warm-up from `min_lr_ratio`, a stable phase at 1,
    then `decay_type` decay to `min_lr_ratio` over the last `decay_ratio` of the run).

    The end of the run is `max_steps` (which `num_train_epochs` may have lowered) or, with `max_train_minutes`,
    whichever of the two comes first: the decay then follows the larger of `train_time_s / budget` and the step's
    fraction of `max_steps` (the warm-up counts steps: it is about the number of updates).
    """
    m = config.min_lr_ratio
    budget_s = config.max_train_minutes * 60.0 if config.max_train_minutes else None
    if config.lr_scheduler_type == "cosine":
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        if budget_s is not None:
            progress = max(progress, (train_time_s or 0.0) / budget_s)
        return m + (1.0 - m) * _decay_shape(progress, "cosine")
    # warmup_stable_decay
    if step < config.warmup_steps:
        return m + (1.0 - m) * step / config.warmup_steps
    if budget_s is not None:
        progress = max((train_time_s or 0.0) / budget_s, step / config.max_steps)
        if progress < 1.0 - config.decay_ratio:
            return 1.0
        return m + (1.0 - m) * _decay_shape((progress - (1.0 - config.decay_ratio)) / config.decay_ratio,
                                            config.decay_type)
    decay_steps = wsd_decay_steps(config)
    stable_end = config.max_steps - decay_steps
    if step < stable_end:
        return 1.0
    if step >= config.max_steps:
        return m
    return m + (1.0 - m) * _decay_shape((step - stable_end) / max(1, decay_steps), config.decay_type)


def muon_momentum(step: int, config: TrainingConfig) -> float:
    """Muon's momentum for optimizer step `step` (0-based): `muon_momentum_start` rising linearly to `muon_momentum`
    over `muon_momentum_warmup_steps` (modded-nanogpt's warm-up), then `muon_momentum`. A pure function of the step,
    so a resumed run continues it exactly."""
    if step >= config.muon_momentum_warmup_steps:
        return config.muon_momentum
    fraction = step / config.muon_momentum_warmup_steps
    return config.muon_momentum_start + (config.muon_momentum - config.muon_momentum_start) * fraction


def wsd_decay_steps(config: TrainingConfig) -> int:
    """Steps of the decay phase of a step-based warm-up/stable/decay run (never eating into the warm-up)."""
    return min(round(config.decay_ratio * config.max_steps), max(0, config.max_steps - config.warmup_steps))


# ----------------------------------------------------------------------------------------------------------------------
# optimizers


class MuonWithAdamW(torch.optim.Optimizer):
    """`torch.optim.Muon` for some parameters and `torch.optim.AdamW` for the others, stepped as one optimizer.

    One optimizer rather than two, because accelerate steps its GradScaler once per prepared optimizer (`scaler.step`
    then `scaler.update`): with two, the second would see gradients unscaled twice under fp16. Here the scaler unscales
    every group once and then `step` runs both updates. `param_groups` lists Muon's groups, then AdamW's (the same
    dicts, so setting a group's `lr` reaches the inner optimizer); the state dict holds both inner state dicts.
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], muon_kwargs: dict, adamw_kwargs: dict):
        self.muon = torch.optim.Muon(muon_groups, **muon_kwargs)
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw_kwargs)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={})
        self._sync_groups()

    def _sync_groups(self):
        # Optimizer.load_state_dict replaces the inner group dicts: point at the live ones again
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict):
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("this checkpoint's optimizer state is not Muon + AdamW (was it trained with "
                             "optimizer: adamw? resume with the optimizer it was trained with)")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._sync_groups()


def _orientation(model, name: str, param) -> tuple[int, int]:
    """(out_features, in_features) of a 2-D weight whatever its storage: GPT-2's `Conv1D` stores (in, out),
    `nn.Linear` (out, in)."""
    module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return tuple(as_linear(param, isinstance(module, Conv1D)).shape)


def muon_lr_scale(model, name: str, param, adjust_lr_fn: str) -> float:
    """Factor on the group's learning rate that makes Muon's per-shape adjustment independent of the weight layout.

    torch's Muon scales a parameter's step by `sqrt(max(1, A/B))` ("original", Keller Jordan's rule, written for
    (out, in) weights) or `0.2 * sqrt(max(A, B))` ("match_rms_adamw", symmetric in A and B) where (A, B) is the stored
    shape. For a `Conv1D` weight stored (in, out) the "original" rule would see the transposed ratio; this factor
    corrects it so that both layouts train alike.
    """
    if adjust_lr_fn != "original":
        return 1.0
    out_features, in_features = _orientation(model, name, param)
    wanted = math.sqrt(max(1.0, out_features / in_features))
    applied = math.sqrt(max(1.0, param.shape[0] / param.shape[1]))
    return wanted / applied


def build_optimizer(model, config: TrainingConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer `config.optimizer` names, its groups carrying `initial_lr` for `lr_factor`.

    adamw: AdamW, weight decay on 2-D weights (matmuls, embeddings) only; biases and norm gains are not decayed.
    muon: Muon (`muon_learning_rate`, `muon_weight_decay`, `muon_momentum`, `muon_ns_steps`, `muon_adjust_lr_fn`) for
    the 2-D weights inside the transformer blocks; AdamW (`learning_rate`, `weight_decay` on 2-D) for embeddings,
    the head, norms and biases.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # tied weights appear once
    adamw_kwargs = dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
                        fused=fused)
    if config.optimizer == "muon":
        hidden = [(n, p) for n, p in named if n.startswith(HIDDEN_PREFIXES) and p.ndim == 2]
        hidden_ids = {id(p) for _, p in hidden}
        rest = [p for _, p in named if id(p) not in hidden_ids]
    else:
        hidden, rest = [], [p for _, p in named]
    adamw_groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    adamw_groups = [g for g in adamw_groups if g["params"]]
    for group in adamw_groups:
        group["initial_lr"] = config.learning_rate
    if config.optimizer != "muon":
        return torch.optim.AdamW(adamw_groups, **adamw_kwargs)

    if not hidden:
        raise ValueError(f"optimizer 'muon' found no 2-D parameters under {' or '.join(HIDDEN_PREFIXES)}")
    muon_lr = config.muon_learning_rate if config.muon_learning_rate is not None else config.learning_rate
    muon_wd = config.muon_weight_decay if config.muon_weight_decay is not None else config.weight_decay
    by_scale: dict[float, list] = {}
    for name, param in hidden:
        by_scale.setdefault(muon_lr_scale(model, name, param, config.muon_adjust_lr_fn), []).append(param)
    # weight decay is applied as p *= 1 - lr * wd: divide it by the scale so that only the update is rescaled
    muon_groups = [{"params": params, "lr": muon_lr * scale, "initial_lr": muon_lr * scale,
                    "weight_decay": muon_wd / scale} for scale, params in sorted(by_scale.items())]
    muon_kwargs = dict(lr=muon_lr, weight_decay=muon_wd, momentum=config.muon_momentum, nesterov=True,
                       ns_steps=config.muon_ns_steps, adjust_lr_fn=config.muon_adjust_lr_fn)
    return MuonWithAdamW(muon_groups, adamw_groups, muon_kwargs, adamw_kwargs)


def set_learning_rates(optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def set_muon_momentum(optimizer, momentum: float) -> None:
    """Set the momentum of Muon's groups (AdamW's betas stay as configured); `optimizer` may be accelerate's wrapper."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # AcceleratedOptimizer -> the optimizer it wraps
    if isinstance(optimizer, MuonWithAdamW):
        for group in optimizer.muon.param_groups:
            group["momentum"] = momentum

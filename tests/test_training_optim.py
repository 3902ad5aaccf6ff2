"""Optimizers and schedules: Muon + AdamW partition and layout independence, the schedules against transformers'."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.optimization import get_cosine_schedule_with_warmup, get_wsd_schedule
from transformers.pytorch_utils import Conv1D

from training.config import load_config
from training.optim import (MuonWithAdamW, build_optimizer, lr_factor, muon_momentum, set_learning_rates,
                            set_muon_momentum, wsd_decay_steps)


def _reference_factors(scheduler_fn, steps: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = scheduler_fn(opt)
    factors = []
    for _ in range(steps):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return factors


@pytest.mark.parametrize("decay_type", ["linear", "cosine", "1-sqrt"])
def test_warmup_stable_decay_is_transformers_get_wsd_schedule(decay_type):
    config = load_config(None, {"lr_scheduler_type": "warmup_stable_decay", "max_steps": 60, "warmup_steps": 7,
                                "decay_ratio": 0.25, "decay_type": decay_type, "min_lr_ratio": 0.05})
    assert wsd_decay_steps(config) == 15
    reference = _reference_factors(lambda opt: get_wsd_schedule(
        opt, num_warmup_steps=7, num_decay_steps=15, num_training_steps=60, decay_type=decay_type,
        min_lr_ratio=0.05), 60)
    assert [lr_factor(step, config) for step in range(60)] == pytest.approx(reference, abs=1e-12)


def test_cosine_schedule_and_time_budget_schedules():
    config = load_config(None, {"max_steps": 50, "warmup_steps": 5, "min_lr_ratio": 0.0})
    # with min_lr_ratio 0 the cosine equals transformers' (up to its warm-up starting one step earlier)
    reference = _reference_factors(lambda opt: get_cosine_schedule_with_warmup(opt, 5, 50), 51)
    assert [lr_factor(step, config) for step in range(5, 50)] == pytest.approx(reference[5:50], abs=1e-12)
    assert [lr_factor(step, config) for step in range(5)] == pytest.approx(reference[1:6], abs=1e-12)

    # a time budget: the warm-up still counts steps, then the factor follows the clock, not the step
    timed = load_config(None, {"max_train_minutes": 10, "warmup_steps": 5, "max_steps": 10**6, "min_lr_ratio": 0.1,
                               "lr_scheduler_type": "warmup_stable_decay", "decay_ratio": 0.4})
    assert lr_factor(2, timed, 300.0) == pytest.approx(0.1 + 0.9 * 2 / 5)
    assert lr_factor(10, timed, 0.0) == lr_factor(10**5, timed, 359.0) == 1.0  # stable until 60% of 600 s
    assert lr_factor(10, timed, 480.0) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the linear decay
    assert lr_factor(10, timed, 600.0) == pytest.approx(0.1) == lr_factor(10, timed, 900.0)
    timed_cos = load_config(None, {"max_train_minutes": 1, "warmup_steps": 0, "min_lr_ratio": 0.0})
    assert lr_factor(123, timed_cos, 30.0) == pytest.approx(0.5)
    # with both ends set, the schedule follows whichever comes first: here the steps (num_train_epochs lowers them)
    both = load_config(None, {"max_train_minutes": 10, "max_steps": 100, "warmup_steps": 0, "min_lr_ratio": 0.0})
    assert lr_factor(50, both, 6.0) == pytest.approx(0.5) and lr_factor(5, both, 300.0) == pytest.approx(0.5)
    assert lr_factor(99, both, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))


class _Block(nn.Module):
    def __init__(self, linear: bool):
        super().__init__()
        self.c_fc = nn.Linear(8, 32) if linear else Conv1D(32, 8)  # Conv1D(nf=out, nx=in) stores (in, out)
        self.c_proj = nn.Linear(32, 8) if linear else Conv1D(8, 32)
        self.ln = nn.LayerNorm(8)

    def forward(self, x):
        return self.c_proj(torch.relu(self.c_fc(self.ln(x))))


class _Tiny(nn.Module):
    """The parameter names of VictorianGPT (transformer.wte / .h.{i} / .ln_f, lm_head), in either weight layout."""

    def __init__(self, linear: bool):
        super().__init__()
        self.transformer = nn.ModuleDict({"wte": nn.Embedding(16, 8), "h": nn.ModuleList([_Block(linear)]),
                                          "ln_f": nn.LayerNorm(8)})
        self.lm_head = nn.Linear(8, 16, bias=False)

    def forward(self, ids):
        x = self.transformer["wte"](ids)
        return self.lm_head(self.transformer["ln_f"](x + self.transformer["h"][0](x)))


@pytest.mark.parametrize("adjust_lr_fn", ["original", "match_rms_adamw"])
def test_muon_takes_the_hidden_matrices_and_trains_either_weight_layout_alike(adjust_lr_fn):
    torch.manual_seed(0)
    conv, linear = _Tiny(linear=False), _Tiny(linear=True)
    with torch.no_grad():  # the same function: Linear holds the transposes of Conv1D's weights
        for name, p in linear.named_parameters():
            q = conv.get_parameter(name)
            p.copy_(q.T if name.startswith("transformer.h.") and p.ndim == 2 else q)
    config = load_config(None, {"optimizer": "muon", "learning_rate": 1e-2, "muon_learning_rate": 0.05,
                                "muon_weight_decay": 0.1, "muon_adjust_lr_fn": adjust_lr_fn})
    optimizers = [build_optimizer(model, config) for model in (conv, linear)]
    for opt, model in zip(optimizers, (conv, linear)):
        assert isinstance(opt, MuonWithAdamW)
        muon_params = {id(p) for g in opt.muon.param_groups for p in g["params"]}
        names = {n for n, p in model.named_parameters() if id(p) in muon_params}
        assert names == {"transformer.h.0.c_fc.weight", "transformer.h.0.c_proj.weight"}
        adamw_params = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
        assert len(adamw_params) == len(list(model.parameters())) - 2  # embeddings, head, norms, biases
    before = linear.transformer["h"][0].c_fc.weight.detach().clone()
    ids = torch.randint(0, 16, (4, 6))
    for _ in range(3):
        for opt, model in zip(optimizers, (conv, linear)):
            set_learning_rates(opt, 0.7)
            loss = nn.functional.cross_entropy(model(ids).reshape(-1, 16), ids.roll(1, 1).reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad()
    for name, p in linear.named_parameters():
        q = conv.get_parameter(name)
        torch.testing.assert_close(p, q.T if name.startswith("transformer.h.") and p.ndim == 2 else q,
                                   rtol=1e-4, atol=1e-5)
    # Muon moved the hidden matrices (not a no-op), with its own groups' learning rates
    assert (linear.transformer["h"][0].c_fc.weight - before).abs().max() > 1e-3
    assert {g["initial_lr"] for g in optimizers[1].muon.param_groups} == {0.05}
    if adjust_lr_fn == "original":  # Conv1D c_fc (8, 32) needs x2 to match Linear's (32, 8): sqrt(32 / 8)
        assert sorted(g["initial_lr"] for g in optimizers[0].muon.param_groups) == pytest.approx([0.025, 0.1])
        # the weight decay (p *= 1 - lr * wd) is not rescaled
        assert [g["initial_lr"] * g["weight_decay"] for g in optimizers[0].muon.param_groups] == pytest.approx(
            [0.05 * 0.1] * 2)
    state = optimizers[0].state_dict()
    assert set(state) == {"muon", "adamw"} and state["muon"]["state"]
    fresh = build_optimizer(conv, config)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0] is fresh.muon.param_groups[0]  # the live groups, so the schedule reaches them
    assert math.isclose(fresh.param_groups[0]["lr"], optimizers[0].param_groups[0]["lr"])


def test_bad_optimizer_and_schedule_names_are_errors():
    for key, value in (("optimizer", "sgd"), ("lr_scheduler_type", "linear"), ("decay_type", "exp"),
                       ("muon_adjust_lr_fn", "none")):
        with pytest.raises(ValueError, match=f"config key {key!r} must be one of"):
            load_config(None, {key: value})
    with pytest.raises(ValueError, match="max_train_minutes"):
        load_config(None, {"max_train_minutes": "0"})


def test_muon_momentum_warms_up_linearly_and_reaches_torch_muon_with_that_momentum():
    config = load_config(None, {"optimizer": "muon", "muon_momentum_warmup_steps": 4, "muon_momentum_start": 0.85})
    assert [muon_momentum(step, config) for step in range(6)] == pytest.approx([0.85, 0.875, 0.9, 0.925, 0.95, 0.95])
    assert muon_momentum(0, load_config(None, {"optimizer": "muon"})) == 0.95  # no warm-up: the configured momentum
    torch.manual_seed(0)
    model, reference = _Tiny(linear=True), _Tiny(linear=True)
    reference.load_state_dict(model.state_dict())
    ours = build_optimizer(model, config)
    set_muon_momentum(ours, 0.85)
    assert {g["momentum"] for g in ours.muon.param_groups} == {0.85}
    assert {g["betas"] for g in ours.adamw.param_groups} == {(0.9, 0.95)}  # AdamW's betas are not Muon's momentum
    alone = build_optimizer(reference, load_config(None, {"optimizer": "muon", "muon_momentum": 0.85}))
    control = _Tiny(linear=True)
    control.load_state_dict(model.state_dict())
    unchanged = build_optimizer(control, config)  # momentum 0.95: the setting must make a difference
    ids = torch.randint(0, 16, (4, 6))
    for _ in range(3):  # the momentum buffer carries the 0.85 from step to step
        for opt, net in ((ours, model), (alone, reference), (unchanged, control)):
            nn.functional.cross_entropy(net(ids).reshape(-1, 16), ids.roll(1, 1).reshape(-1)).backward()
            opt.step()
            opt.zero_grad()
    hidden = "transformer.h.0.c_fc.weight"
    torch.testing.assert_close(model.get_parameter(hidden), reference.get_parameter(hidden), rtol=0, atol=0)
    assert not torch.allclose(model.get_parameter(hidden), control.get_parameter(hidden))


def test_bad_muon_momentum_warmup_is_a_one_line_error():
    with pytest.raises(ValueError, match="set optimizer: muon"):
        load_config(None, {"muon_momentum_warmup_steps": 300})  # AdamW has no Muon momentum to warm up
    for bad in ({"muon_momentum_warmup_steps": -1}, {"muon_momentum_start": 1.0}, {"muon_momentum": 1.5}):
        with pytest.raises(ValueError, match="Muon's momentum needs"):
            load_config(None, {"optimizer": "muon", **bad})

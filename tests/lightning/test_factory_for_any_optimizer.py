"""The factory's names for any optimizer, the table's AdamW knobs and the scheduler driving betas.

Pure torch (the optimizer layer), kept beside the Lightning tests that use these names.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lightning_o2nc import ExponentiatedO2NC, O2NCAdamW, RandomScaling
from lightning_o2nc.optim import HYPERPARAMETERS, build_optimizer, build_schedulers
from lightning_o2nc.optim.factory import OPTIMIZERS
from lightning_o2nc.optim.hyperparameters import group_value, holds, set_group_value
from lightning_o2nc.optim.schedules import HyperparameterScheduler


def model_with_norm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2))


def run(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> None:
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()


@pytest.mark.parametrize(
    ("name", "cls", "scaling"),
    [
        ("o2nc", ExponentiatedO2NC, "exponential"),
        ("sgdm", ExponentiatedO2NC, "none"),
        ("o2nc_uniform", ExponentiatedO2NC, "uniform"),
        ("adamw", torch.optim.AdamW, None),
        ("o2nc_adamw", O2NCAdamW, "exponential"),
        ("o2nc_adamw_uniform", O2NCAdamW, "uniform"),
    ],
)
def test_every_factory_name_builds_its_optimizer_with_the_scaling_it_names(name, cls, scaling):
    optimizer = build_optimizer(model_with_norm(), name, lr=1e-2)
    assert type(optimizer) is cls
    assert getattr(optimizer, "scaling", None) == scaling
    assert list(OPTIMIZERS)[:3] == ["o2nc", "sgdm", "adamw"]


def test_o2nc_adamw_takes_adamws_knobs_in_the_tables_names_with_the_no_decay_groups():
    model = model_with_norm()
    optimizer = build_optimizer(
        model, "o2nc_adamw", lr=2e-3, beta=0.8, beta2=0.95, eps=1e-6, weight_decay=0.1, seed=3
    )
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert decays[id(p)] == (0.1 if p.ndim > 1 else 0.0), name
    for group in optimizer.optimizer.param_groups:
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6 and group["lr"] == 2e-3

    twin = model_with_norm()
    by_hand = O2NCAdamW(
        [
            {"params": [p for p in twin.parameters() if p.ndim <= 1], "weight_decay": 0.0},
            {"params": [p for p in twin.parameters() if p.ndim > 1], "weight_decay": 0.1},
        ],
        lr=2e-3,
        betas=(0.8, 0.95),
        eps=1e-6,
        seed=3,
    )
    run(model, optimizer)
    run(twin, by_hand)
    assert optimizer.last_scale == by_hand.last_scale != 1.0
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_the_adamw_baseline_with_average_is_plain_adamw_plus_x_bar():
    model, twin = model_with_norm(), model_with_norm()
    averaged = build_optimizer(model, "adamw", lr=1e-2, average=True, average_beta=0.5)
    plain = build_optimizer(twin, "adamw", lr=1e-2)
    assert type(plain) is torch.optim.AdamW
    assert isinstance(averaged, RandomScaling) and averaged.scaling == "none"
    assert averaged.average and averaged.average_beta == 0.5
    run(model, averaged)
    run(twin, plain)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert averaged.last_scale == 1.0
    x_bar = averaged.averaged_iterate()
    assert any(not torch.equal(a, p) for a, p in zip(x_bar, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "sgdm", "scaling": "uniform"}, "'sgdm' means scaling='none' .*'o2nc_uniform'"),
        ({"name": "adamw", "scaling": "exponential"}, "'adamw' means scaling='none'.*'o2nc_adamw'"),
        (
            {"name": "o2nc_adamw_uniform", "scaling": "none"},
            "'o2nc_adamw_uniform' means scaling='uniform'.*'adamw'",
        ),
        ({"name": "o2nc_adamw", "mu": 0.5}, "Invalid mu for 'o2nc_adamw': 0.5; AdamW has no mu"),
        ({"name": "o2nc_adamw", "beta2": 1.0}, r"Invalid beta2: 1\.0; expected 0 <= beta2 < 1"),
        ({"name": "o2nc_adamw", "eps": -1.0}, "Invalid eps: -1.0"),
        ({"name": "o2nc", "beta2": 0.99}, "Unknown option.*beta2.*valid: scaling"),
        ({"name": "adamw", "skip_nonfinite": True}, "Unknown option.*skip_nonfinite"),
    ],
)
def test_a_bad_option_for_a_name_is_refused_naming_it(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_optimizer(model_with_norm(), **kwargs)


def test_an_option_a_name_fixes_may_be_given_its_own_value():
    optimizer = build_optimizer(model_with_norm(), "o2nc_adamw_uniform", scaling="uniform")
    assert optimizer.scaling == "uniform"
    assert build_optimizer(model_with_norm(), "sgdm", scaling="none").scaling == "none"


def test_each_name_schedules_the_fields_its_optimizer_has():
    assert OPTIMIZERS["o2nc"].schedulable == ("lr", "beta", "mu", "weight_decay")
    assert OPTIMIZERS["o2nc_adamw"].schedulable == ("lr", "beta", "weight_decay", "beta2")
    optimizer = build_optimizer(model_with_norm(), "o2nc_adamw", lr=1e-3)
    with pytest.raises(ValueError, match="field 'mu' for 'o2nc_adamw'; valid: lr, beta, weight"):
        build_schedulers(optimizer, {"mu": "constant"}, total_steps=4, name="o2nc_adamw")
    o2nc = build_optimizer(model_with_norm(), "o2nc", lr=0.1)
    with pytest.raises(ValueError, match="field 'beta2' for 'o2nc'; valid: lr, beta, mu, weight"):
        build_schedulers(o2nc, {"beta2": "constant"}, total_steps=4, name="o2nc")


@pytest.mark.parametrize("wrapped", [False, True])
def test_the_scheduler_drives_adamws_betas_by_the_tables_names(wrapped):
    model = model_with_norm()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    optimizer = RandomScaling(base, seed=0) if wrapped else base
    schedules = {
        "beta": {"shape": "linear", "start_factor": 1.0, "end_factor": 0.5},
        "beta2": {"shape": "step", "step_size": 2, "gamma": 0.5},
    }
    scheduler = HyperparameterScheduler(optimizer, schedules, total_steps=4)
    assert base.param_groups[0]["initial_beta"] == 0.9
    assert base.param_groups[0]["initial_beta2"] == 0.99
    seen = []
    for _ in range(4):
        run(model, optimizer, steps=1)
        scheduler.step()
        seen.append(base.param_groups[0]["betas"])
    expected = [(0.9 * (1 - 0.125 * t), 0.99 * 0.5 ** (t // 2)) for t in range(1, 5)]
    assert seen == [pytest.approx(e) for e in expected]
    assert all(type(b) is tuple for b in seen)

    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    again = HyperparameterScheduler(optimizer, schedules, total_steps=4)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert again.base_values == {"beta": [0.9], "beta2": [0.99]} and again.last_epoch == 4


def test_the_scheduler_refuses_a_field_the_group_does_not_hold():
    sgd = torch.optim.SGD(model_with_norm().parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="Invalid schedule field 'beta2': param group 0 has no"):
        HyperparameterScheduler(sgd, {"beta2": "constant"})


def test_the_table_states_adamws_knobs_and_where_a_group_keeps_them():
    assert HYPERPARAMETERS["beta2"].default == 0.999 and HYPERPARAMETERS["eps"].default == 1e-8
    assert HYPERPARAMETERS["beta2"].schedulable and not HYPERPARAMETERS["eps"].schedulable
    adamw_group = {"lr": 1e-3, "betas": (0.9, 0.999)}
    o2nc_group = {"lr": 0.1, "beta": 0.8}
    assert holds(adamw_group, "beta") and holds(adamw_group, "beta2")
    assert holds(o2nc_group, "beta") and not holds(o2nc_group, "beta2")
    assert not holds(o2nc_group, "mu")
    assert group_value(adamw_group, "beta2") == 0.999 and group_value(o2nc_group, "beta") == 0.8
    set_group_value(adamw_group, "beta", 0.7)
    set_group_value(o2nc_group, "beta", 0.7)
    assert adamw_group == {"lr": 1e-3, "betas": (0.7, 0.999)} and o2nc_group["beta"] == 0.7
    tensor_group = {"betas": (torch.tensor(0.9), torch.tensor(0.999))}
    set_group_value(tensor_group, "beta2", 0.5)  # capturable Adam: written in place
    assert float(tensor_group["betas"][1]) == 0.5
    with pytest.raises(KeyError):
        group_value(o2nc_group, "beta2")

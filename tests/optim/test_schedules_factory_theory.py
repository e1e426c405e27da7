"""Schedules of lr/beta/mu, the optimizer factory and the theory-guided starting point."""

from __future__ import annotations

import io
import math

import pytest
import torch

from lightning_o2nc import ExponentiatedO2NC, HyperparameterScheduler, make_schedule
from lightning_o2nc.optim.factory import (
    OPTIMIZERS,
    build_optimizer,
    build_schedulers,
    param_groups_weight_decay,
)
from lightning_o2nc.optim.hyperparameters import (
    GROUP_HYPERPARAMETERS,
    HYPERPARAMETERS,
    SCHEDULABLE,
    validate_hyperparameters,
)
from lightning_o2nc.optim.schedules import SCHEDULE_ARGUMENTS, SCHEDULE_SHAPES
from lightning_o2nc.optim.theory import theory_guided_hyperparameters


def model_with_norm() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
    )


def step_with_ones(opt, scheduler=None, steps=1):
    for _ in range(steps):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        opt.step()
        if scheduler is not None:
            scheduler.step()


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("constant", {0: 1.0, 50: 1.0}),
        (
            {"shape": "linear", "start_factor": 1.0, "end_factor": 0.0},
            {0: 1.0, 50: 0.5, 100: 0.0, 150: 0.0},
        ),
        ({"shape": "cosine", "min_factor": 0.1}, {0: 1.0, 50: 0.55, 100: 0.1}),
        (
            {"shape": "warmup_cosine", "warmup_steps": 10},
            {0: 0.1, 9: 1.0, 10: 1.0, 55: 0.5, 100: 0.0},
        ),
        (
            {"shape": "warmup_cosine", "warmup_fraction": 0.1, "warmup_start_factor": 0.5},
            {0: 0.55, 9: 1.0},
        ),
        ({"shape": "step", "step_size": 30, "gamma": 0.5}, {0: 1.0, 29: 1.0, 30: 0.5, 95: 0.125}),
        ({"shape": "exponential", "gamma": 0.9}, {0: 1.0, 2: 0.81}),
    ],
)
def test_schedule_shapes_give_their_documented_factors(spec, expected):
    schedule = make_schedule(spec, total_steps=100)
    for t, factor in expected.items():
        assert schedule(t) == pytest.approx(factor), t
    assert make_schedule(schedule.to_config()) == schedule


def test_every_shape_is_registered():
    assert set(SCHEDULE_SHAPES) == {
        "constant",
        "linear",
        "cosine",
        "warmup_cosine",
        "step",
        "exponential",
    }


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"shape": "triangle"}, "shape 'triangle'.*constant, linear, cosine"),
        ({"shape": "cosine", "min_factr": 0.1}, "unknown parameter.*min_factr.*valid: min_factor"),
        ({"shape": "cosine", "min_factor": 2.0}, "min_factor"),
        ({"shape": "step", "step_size": 0}, "step_size"),
        ({"shape": "exponential", "gamma": -1.0}, "gamma"),
        ({"shape": "warmup_cosine", "warmup_steps": 500}, "warmup_steps"),
        ({"shape": "warmup_cosine", "warmup_steps": 5, "warmup_fraction": 0.1}, "not both"),
        ({"min_factor": 0.1}, "'shape' key"),
    ],
)
def test_malformed_schedules_are_refused_naming_the_culprit(spec, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(spec, total_steps=100)


def test_a_shape_without_its_required_arguments_names_what_the_user_can_give():
    with pytest.raises(ValueError, match="warmup_cosine.*needs warmup_steps or warmup_fraction"):
        make_schedule({"shape": "warmup_cosine"}, total_steps=100)
    with pytest.raises(ValueError, match="'step' schedule: it needs step_size"):
        make_schedule({"shape": "step"}, total_steps=100)


def test_every_hyperparameter_fact_comes_from_the_one_table():
    assert SCHEDULE_ARGUMENTS["warmup_cosine"] >= {"warmup_steps", "warmup_fraction"}
    schedulable = {field for entry in OPTIMIZERS.values() for field in entry.schedulable}
    assert schedulable == set(SCHEDULABLE)  # every schedulable name is some optimizer's
    assert set(OPTIMIZERS["o2nc"].schedulable) == {"lr", "beta", "mu", "weight_decay"}
    for name in GROUP_HYPERPARAMETERS:
        assert HYPERPARAMETERS[name].per_group
    with pytest.raises(ValueError, match=r"Invalid beta: 1\.5; expected 0 <= beta < 1"):
        validate_hyperparameters(beta=1.5)
    with pytest.raises(ValueError, match="Invalid average_beta: 1.0"):
        validate_hyperparameters(average_beta=1.0)
    assert validate_hyperparameters(lr=torch.tensor([0.5]), average_beta=None) == {
        "lr": 0.5,
        "average_beta": None,
    }


def test_a_horizon_shape_without_total_steps_is_refused():
    with pytest.raises(ValueError, match="needs total_steps"):
        make_schedule("cosine")


# ----------------------------------------------------------------------------- scheduler
def test_scheduler_drives_lr_beta_and_mu_per_group_from_their_base_values():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = ExponentiatedO2NC(
        [{"params": [a]}, {"params": [b], "lr": 0.2, "mu": 1.0}], lr=0.1, beta=0.9, mu=0.5
    )
    sched = HyperparameterScheduler(
        opt,
        {
            "lr": {"shape": "linear", "end_factor": 0.5},
            "beta": {"shape": "linear", "start_factor": 0.5, "end_factor": 1.0},
            "mu": {"shape": "exponential", "gamma": 0.5},
        },
        total_steps=10,
    )
    assert [g["beta"] for g in opt.param_groups] == pytest.approx([0.45, 0.45])
    step_with_ones(opt, sched, steps=10)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.1])
    assert [g["beta"] for g in opt.param_groups] == pytest.approx([0.9, 0.9])
    assert [g["mu"] for g in opt.param_groups] == pytest.approx([0.5 / 1024, 1.0 / 1024])
    assert sched.get_last_lr() == pytest.approx([0.05, 0.1])


def test_scheduler_refuses_a_value_outside_the_fields_range():
    opt = ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1, beta=0.9)
    with pytest.raises(ValueError, match=r"beta.*0 <= beta < 1"):
        HyperparameterScheduler(opt, {"beta": {"shape": "exponential", "gamma": 1.2}}).step()


def test_scheduler_refuses_a_field_the_groups_do_not_have():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="'beta'.*no such key"):
        HyperparameterScheduler(opt, {"beta": "constant"})


def test_scheduler_state_resumes_exactly_after_weights_only_load():
    def make():
        opt = ExponentiatedO2NC([torch.zeros(3, requires_grad=True)], lr=0.1, seed=0)
        sched = HyperparameterScheduler(
            opt,
            {
                "lr": {"shape": "warmup_cosine", "warmup_steps": 3},
                "beta": {"shape": "step", "step_size": 4, "gamma": 0.5},
            },
            total_steps=20,
        )
        return opt, sched

    opt, sched = make()
    step_with_ones(opt, sched, steps=7)
    buffer = io.BytesIO()
    weights = opt.param_groups[0]["params"][0]
    torch.save({"weights": weights, "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    resumed_opt, resumed_sched = make()
    with torch.no_grad():
        resumed_opt.param_groups[0]["params"][0].copy_(ckpt["weights"])
    resumed_opt.load_state_dict(ckpt["opt"])
    resumed_sched.load_state_dict(ckpt["sched"])
    for o, s in ((opt, sched), (resumed_opt, resumed_sched)):
        step_with_ones(o, s, steps=5)
    assert resumed_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert resumed_opt.param_groups[0]["beta"] == opt.param_groups[0]["beta"]
    assert torch.equal(resumed_opt.param_groups[0]["params"][0], opt.param_groups[0]["params"][0])


def test_torch_lr_schedulers_keep_working_for_lr():
    opt = ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    step_with_ones(opt, sched, steps=10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- factory
def test_factory_exempts_biases_and_norm_weights_from_weight_decay():
    model = model_with_norm()
    opt = build_optimizer(model, "o2nc", lr=0.1, weight_decay=5e-4)
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 5e-4 if name.endswith("weight") and p.ndim > 1 else 0.0
        assert decays[id(p)] == expected, name
    assert len(param_groups_weight_decay(model, 5e-4)) == 2
    everything = build_optimizer(model, "o2nc", lr=0.1, weight_decay=5e-4, decay_bias_and_norm=True)
    assert [g["weight_decay"] for g in everything.param_groups] == [5e-4]


def test_factory_names_build_the_expected_optimizers():
    model = model_with_norm()
    o2nc = build_optimizer(model, "o2nc", lr=0.1, seed=0, average=True)
    sgdm = build_optimizer(model, "sgdm", lr=0.1)
    adamw = build_optimizer(model, "adamw", lr=1e-3, beta=0.8)
    assert isinstance(o2nc, ExponentiatedO2NC) and o2nc.scaling == "exponential" and o2nc.average
    assert isinstance(sgdm, ExponentiatedO2NC) and sgdm.scaling == "none"
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.8, 0.999)


def test_factory_sgdm_is_torch_sgd_in_the_eta_beta_mu_parametrization():
    model = model_with_norm()
    twin = model_with_norm()
    sgdm = build_optimizer(model.parameters(), "sgdm", lr=0.1, beta=0.9, mu=1.0)
    zeta = 0.9 / 1.1
    sgd = torch.optim.SGD(twin.parameters(), lr=zeta * 0.1, momentum=zeta)
    x = torch.randn(16, 4, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        for m, o in ((model, sgdm), (twin, sgd)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_factory_returns_one_shape_and_the_scheduler_configs_come_from_their_own_helper():
    model = model_with_norm()
    optimizer = build_optimizer(model, "o2nc", lr=0.1)
    assert isinstance(optimizer, ExponentiatedO2NC)
    assert build_schedulers(optimizer, None) == [] == build_schedulers(optimizer, {})
    (config,) = build_schedulers(optimizer, {"lr": {"shape": "cosine"}}, total_steps=100)
    assert set(config) == {"scheduler", "interval", "frequency", "name"}
    assert config["interval"] == "step"
    assert isinstance(config["scheduler"], torch.optim.lr_scheduler.LRScheduler)
    configs = build_schedulers(
        optimizer,
        {
            "lr": "cosine",
            "beta": {"shape": "step", "step_size": 2, "gamma": 0.9, "interval": "epoch"},
        },
        total_steps=100,
        total_epochs=10.0,
    )
    assert [c["interval"] for c in configs] == ["step", "epoch"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "lion"}, "Unknown optimizer name 'lion'; valid choices: o2nc, sgdm, adamw"),
        ({"name": "o2nc", "momentum": 0.9}, "Unknown option.*momentum.*valid: scaling"),
        ({"name": "sgdm", "scaling": "exponential"}, "scaling='none'"),
        ({"name": "adamw", "mu": 0.1}, "AdamW has no mu"),
        (
            {"name": "adamw", "schedules": {"mu": "constant"}},
            "field 'mu' for 'adamw'; valid: lr, beta, weight_decay, beta2",
        ),
        (
            {"name": "o2nc", "schedules": {"lr": {"shape": "cosine", "interval": "batch"}}},
            "interval 'batch'.*step, epoch",
        ),
        ({"name": "o2nc", "lr": -1.0}, "lr"),
    ],
)
def test_factory_errors_list_the_valid_choices(kwargs, match):
    schedules = kwargs.pop("schedules", None)
    with pytest.raises(ValueError, match=match):
        optimizer = build_optimizer(model_with_norm(), **kwargs)
        build_schedulers(optimizer, schedules, total_steps=10, name=kwargs["name"])


def test_factory_refuses_a_model_without_trainable_parameters():
    model = model_with_norm().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model)


# ----------------------------------------------------------------------------- theory
def test_theory_guided_hyperparameters_follow_the_analysis_scalings():
    hp = theory_guided_hyperparameters(epsilon=0.1, c=2.0, gradient_bound=1.0)
    one_minus_beta = 0.01
    radius = one_minus_beta * math.sqrt(0.1 / 96)
    assert hp["beta"] == pytest.approx(1 - one_minus_beta)
    assert hp["lr"] == pytest.approx(2 * radius * math.sqrt(one_minus_beta))
    assert hp["mu"] == pytest.approx(48 * radius / one_minus_beta**2)
    ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], **hp)  # a valid configuration


def test_theory_guided_beta_is_clipped_to_a_usable_range():
    assert theory_guided_hyperparameters(1e-6, 1.0, 1.0)["beta"] == pytest.approx(1 - 1e-4)
    assert theory_guided_hyperparameters(10.0, 1.0, 1.0)["beta"] == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [{"epsilon": 0.0}, {"c": -1.0}, {"gradient_bound": math.inf}])
def test_theory_guided_hyperparameters_refuse_bad_input(bad):
    kwargs = {"epsilon": 0.1, "c": 1.0, "gradient_bound": 1.0, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        theory_guided_hyperparameters(**kwargs)

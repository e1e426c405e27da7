"""RandomScaling's step: the base steps as it would alone, the move is stretched by s, the
uniform importance weight multiplies the next gradient, and the SGD identity with ExponentiatedO2NC."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_o2nc import ExponentiatedO2NC, O2NCAdamW, RandomScaling
from lightning_o2nc.optim.reference import ReferenceO2NC


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def batches(n: int, seed: int = 123):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen))
        for _ in range(n)
    ]


def loss_of(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


BASES = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    "adamw_for_loop": lambda params: torch.optim.AdamW(params, lr=1e-2, foreach=False),
    "sgd_momentum": lambda params: torch.optim.SGD(
        params, lr=0.05, momentum=0.9, weight_decay=1e-3
    ),
    "adagrad": lambda params: torch.optim.Adagrad(params, lr=0.05),
}


@pytest.mark.parametrize("scaling", ["exponential", "uniform", "none"])
@pytest.mark.parametrize("base", sorted(BASES))
def test_each_move_is_the_base_step_stretched_by_s_and_the_base_state_is_untouched(base, scaling):
    model = tiny_model()
    opt = RandomScaling(BASES[base](model.parameters()), scaling=scaling, seed=3)
    weight = 1.0
    for batch in batches(8):
        # a plain step of a copy of the base, from the same weights and the same weighted gradients
        twin_model = copy.deepcopy(model)
        twin = BASES[base](twin_model.parameters())
        twin.load_state_dict(copy.deepcopy(opt.optimizer.state_dict()))
        before = [p.detach().clone() for p in model.parameters()]
        for m in (model, twin_model):
            m.zero_grad()
            loss_of(m, batch).backward()
        for p in twin_model.parameters():
            p.grad.mul_(weight)
        twin.step()
        assert opt.importance_weight == weight
        opt.step()
        s = opt.last_scale
        weight = 2.0 - s if scaling == "uniform" else 1.0
        for p, q, x_prev in zip(model.parameters(), twin_model.parameters(), before, strict=True):
            expected = x_prev + s * (q.detach() - x_prev)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)
        for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
            assert_states_equal(opt.state[p], twin.state[q])


@pytest.mark.parametrize("scaling", ["exponential", "uniform"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_wrapping_torch_sgd_reproduces_exponentiated_o2nc_and_its_reference(scaling, weight_decay):
    eta, beta, seed = 0.05, 0.9, 11
    model_a, model_b = tiny_model(), tiny_model()
    wrapped = RandomScaling(
        torch.optim.SGD(
            model_a.parameters(), lr=beta * eta, momentum=beta, weight_decay=weight_decay
        ),
        scaling=scaling,
        seed=seed,
    )
    o2nc = ExponentiatedO2NC(
        model_b.parameters(),
        lr=eta,
        beta=beta,
        weight_decay=weight_decay,
        scaling=scaling,
        seed=seed,
    )
    params = list(model_b.parameters())
    reference = ReferenceO2NC(
        params,
        [
            {
                "indices": list(range(len(params))),
                "lr": eta,
                "beta": beta,
                "mu": 0.0,
                "weight_decay": weight_decay,
            }
        ],
    )
    weight = 1.0
    for batch in batches(40):
        for m in (model_a, model_b):
            m.zero_grad()
            loss_of(m, batch).backward()
        grads = [p.grad.clone() for p in params]
        wrapped.step()
        o2nc.step()
        assert wrapped.last_scale == o2nc.last_scale
        reference.step(grads, o2nc.last_scale, weight=weight)
        weight = 2.0 - o2nc.last_scale if scaling == "uniform" else 1.0
    for a, b, r in zip(model_a.parameters(), model_b.parameters(), reference.weights, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.detach().double(), r, rtol=1e-5, atol=1e-6)


def test_the_uniform_weight_multiplies_the_users_gradient_before_the_base_steps():
    model = tiny_model()
    opt = RandomScaling(torch.optim.SGD(model.parameters(), lr=0.1), scaling="uniform", seed=0)
    first, second = batches(2)
    loss_of(model, first).backward()
    raw = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), raw, strict=True))
    s_first = opt.last_scale
    model.zero_grad()
    loss_of(model, second).backward()
    raw = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, g in zip(model.parameters(), raw, strict=True):
        assert torch.equal(p.grad, g * (2.0 - s_first))
    assert opt.importance_weight == 2.0 - opt.last_scale


def test_a_closure_is_called_once_under_grad_and_the_base_steps_without_it():
    model = tiny_model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-2)
    calls = []
    original_step = base.step

    def spy(closure=None):
        calls.append(("base", closure))
        return original_step()

    base.step = spy
    opt = RandomScaling(base, seed=0)
    (batch,) = batches(1)

    def closure():
        calls.append(("closure", torch.is_grad_enabled()))
        model.zero_grad()
        loss = loss_of(model, batch)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert calls == [("closure", True), ("base", None)]
    assert torch.isfinite(loss)


def test_o2nc_adamw_is_random_scaling_around_torch_adamw():
    model_a, model_b = tiny_model(), tiny_model()
    named = O2NCAdamW(model_a.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.05, seed=5)
    wrapped = RandomScaling(
        torch.optim.AdamW(model_b.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.05),
        seed=5,
    )
    assert isinstance(named.optimizer, torch.optim.AdamW)
    for batch in batches(5):
        for m, o in ((model_a, named), (model_b, wrapped)):
            o.zero_grad()
            loss_of(m, batch).backward()
            o.step()
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b)

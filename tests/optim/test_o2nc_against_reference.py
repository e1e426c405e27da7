"""ExponentiatedO2NC's fast paths checked step by step against a plain reference implementation."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_o2nc import ExponentiatedO2NC
from lightning_o2nc.optim.reference import ReferenceO2NC
from tests.optim.buffers import delta_of

TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
}
UNIT_ROUNDOFF = {torch.bfloat16: torch.finfo(torch.bfloat16).eps / 2}  # 2^-8


def low_precision_error_bound(delta, grad, weights, group, s, u):
    """Elementwise bound on |one step in low precision - the exact step| from the same inputs.

    The kernels round every elementary result to the dtype (relative error <= u) and, on the CPU,
    also the scalars they apply (zeta, -zeta*eta, s); each rounding adds u times the magnitude it
    touches, and an error in Delta reaches x multiplied by s. Derived from the dtype's unit
    roundoff, not fitted: zeta off by 2.4% (6u) breaks it.
    """
    eta, beta, mu, wd = group["lr"], group["beta"], group["mu"], group["weight_decay"]
    zeta = beta / (1 + eta * mu)
    g = -grad if group["maximize"] else grad
    scaled = zeta * delta
    error = 2 * u * scaled.abs()  # zeta rounded, product rounded
    new_delta = scaled - zeta * eta * g
    error = error + u * (zeta * eta * g).abs() + u * new_delta.abs()
    if wd:
        decay = zeta * eta * wd * weights
        new_delta = new_delta - decay
        error = error + u * decay.abs() + u * new_delta.abs()
    new_weights = weights + s * new_delta
    weight_error = s * error + u * (s * new_delta).abs() + u * new_weights.abs()
    return 1.01 * weight_error, 1.01 * error


def assert_within(ours, exact, bound, what):
    excess = (ours.to(torch.float64) - exact).abs() - bound
    assert (excess <= 0).all(), f"{what}: {excess.max().item():.3g} beyond the rounding bound"


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=CUDA)]


def make_problem(dtype: torch.dtype, seed: int = 0, device: str = "cpu"):
    """Three parameter tensors in two groups, and a non-smooth loss (ReLU and abs terms)."""
    gen = torch.Generator().manual_seed(seed)
    weights = [
        torch.randn(7, 5, generator=gen, dtype=torch.float64).to(dtype),
        torch.randn(5, generator=gen, dtype=torch.float64).to(dtype),
        torch.randn(3, 4, 2, generator=gen, dtype=torch.float64).to(dtype),
    ]
    targets = [torch.randn_like(w, dtype=torch.float64).to(dtype) for w in weights]

    def loss_fn(params):
        return sum(
            (torch.relu(p - t) + 0.5 * (p - t).abs() + 0.1 * p.square()).sum()
            for p, t in zip(params, targets)
        )

    weights = [w.to(device) for w in weights]
    targets = [t.to(device) for t in targets]
    groups = [
        {"indices": [0, 1], "lr": 0.05, "beta": 0.9, "mu": 0.5, "weight_decay": 0.01},
        {"indices": [2], "lr": 0.02, "beta": 0.8, "mu": 0.0, "weight_decay": 0.0},
    ]
    return weights, loss_fn, groups


def build(weights, groups, dtype, maximize=False, **kwargs):
    params = [w.clone().requires_grad_(True) for w in weights]
    param_groups = [
        {
            "params": [params[i] for i in g["indices"]],
            **{k: v for k, v in g.items() if k != "indices"},
        }
        for g in groups
    ]
    opt = ExponentiatedO2NC(param_groups, lr=1.0, maximize=maximize, seed=1, **kwargs)
    opt.tracks_statistics = True  # as a statistics() user or the monitor switches it on
    ref_groups = [dict(g, maximize=maximize) for g in groups]
    return params, opt, ref_groups


def compute_grads(params, loss_fn):
    for p in params:
        p.grad = None
    loss = loss_fn(params)
    loss.backward()
    return loss


def step_both(params, loss_fn, opt, reference):
    """One step of ours and of the reference, on the same gradients and the same scalar s."""
    compute_grads(params, loss_fn)
    opt.step()
    reference.step([p.grad for p in params], opt.last_scale)


def assert_weights_match(params, reference):
    for i, p in enumerate(params):
        torch.testing.assert_close(p.detach(), reference.weights[i], rtol=1e-11, atol=1e-13)


def assert_average_and_variance_match(opt, reference):
    """Our x_bar and V equal the reference's, computed from the whole history of iterates."""
    averages, variance = reference.averaged_iterate_and_variance()
    assert opt.statistics()["iterate_variance"].item() == pytest.approx(variance, rel=1e-9)
    for ours, avg in zip(opt.averaged_iterate(), averages):
        torch.testing.assert_close(ours, avg, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@pytest.mark.parametrize("use_closure", [False, True], ids=["no-closure", "closure"])
@pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
@pytest.mark.parametrize("device", DEVICES)
def test_each_step_matches_the_reference_update(dtype, foreach, use_closure, maximize, device):
    weights, loss_fn, groups = make_problem(dtype, device=device)
    params, opt, ref_groups = build(weights, groups, dtype, maximize=maximize, foreach=foreach)
    for _ in range(6):
        # the reference takes one step from the optimizer's own state, so low-precision round-off
        # does not accumulate and every step is checked at its dtype's tolerance
        reference = ReferenceO2NC(params, ref_groups)
        reference.deltas = [delta_of(opt, p) for p in params]
        deltas_before = [d.clone() for d in reference.deltas]
        weights_before = [w.clone() for w in reference.weights]
        if use_closure:
            loss = opt.step(lambda: compute_grads(params, loss_fn))
            assert loss is not None
        else:
            compute_grads(params, loss_fn)
            assert opt.step() is None
        reference.step([p.grad for p in params], opt.last_scale)
        if dtype in UNIT_ROUNDOFF:
            for group in ref_groups:
                for i in group["indices"]:
                    p = params[i]
                    bounds = low_precision_error_bound(
                        deltas_before[i],
                        p.grad.to(torch.float64),
                        weights_before[i],
                        group,
                        opt.last_scale,
                        UNIT_ROUNDOFF[dtype],
                    )
                    assert_within(p.detach(), reference.weights[i], bounds[0], f"x[{i}]")
                    assert_within(delta_of(opt, p), reference.deltas[i], bounds[1], f"Delta[{i}]")
            continue
        for i, p in enumerate(params):
            torch.testing.assert_close(
                p.detach().to(torch.float64), reference.weights[i], **TOLERANCES[dtype]
            )
            torch.testing.assert_close(delta_of(opt, p), reference.deltas[i], **TOLERANCES[dtype])


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
def test_float64_trajectory_matches_the_reference_over_many_steps(foreach):
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, ref_groups = build(weights, groups, torch.float64, foreach=foreach)
    reference = ReferenceO2NC(params, ref_groups)
    for _ in range(40):
        step_both(params, loss_fn, opt, reference)
    assert_weights_match(params, reference)


def test_foreach_and_for_loop_paths_agree_bit_for_bit_in_float32():
    weights, loss_fn, groups = make_problem(torch.float32)
    runs = []
    for foreach in (False, True):
        params, opt, _ = build(weights, groups, torch.float32, foreach=foreach)
        for _ in range(10):
            compute_grads(params, loss_fn)
            opt.step()
        runs.append([p.detach().clone() for p in params])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_mutating_group_hyperparameters_takes_effect_at_the_next_step():
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, ref_groups = build(weights, groups, torch.float64)
    reference = ReferenceO2NC(params, ref_groups)
    new_values = [(0.01, 0.5, 2.0), (0.2, 0.95, 0.0), (0.05, 0.0, 1.0), (0.03, 0.99, 0.1)]
    for lr, beta, mu in new_values:
        for group, ref_group in zip(opt.param_groups, reference.groups):
            group.update(lr=lr, beta=beta, mu=mu)
            ref_group.update(lr=lr, beta=beta, mu=mu)
        for _ in range(3):
            step_both(params, loss_fn, opt, reference)
    assert_weights_match(params, reference)


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
def test_scaling_none_reproduces_torch_sgd_per_group(foreach):
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, _ = build(weights, groups, torch.float64, foreach=foreach, scaling="none")
    sgd_params = [w.clone().requires_grad_(True) for w in weights]
    sgd_groups = []
    for g in groups:
        zeta = g["beta"] / (1 + g["lr"] * g["mu"])
        sgd_groups.append(
            {
                "params": [sgd_params[i] for i in g["indices"]],
                "lr": zeta * g["lr"],
                "momentum": zeta,
                "weight_decay": g["weight_decay"],
            }
        )
    sgd = torch.optim.SGD(sgd_groups, lr=1.0, foreach=foreach)
    for _ in range(30):
        compute_grads(params, loss_fn)
        compute_grads(sgd_params, loss_fn)
        opt.step()
        sgd.step()
        assert opt.last_scale == 1.0
    for p, q in zip(params, sgd_params):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)


def test_the_scalar_scales_the_move_and_never_the_buffer():
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, _ = build(weights, groups, torch.float64)
    for _ in range(5):
        before = [p.detach().clone() for p in params]
        buffers_before = [delta_of(opt, p) for p in params]
        compute_grads(params, loss_fn)
        opt.step()
        s = opt.last_scale
        for p, x0 in zip(params, before):
            delta = delta_of(opt, p)
            # one and the same s for every tensor: move = s * Delta exactly (up to round-off)
            torch.testing.assert_close(p.detach() - x0, s * delta, rtol=1e-10, atol=1e-14)
        # the buffer follows the unscaled recursion: Delta_n = zeta (Delta_{n-1} - eta g_n)
        group = opt.param_groups[1]
        p = group["params"][0]
        zeta = group["beta"] / (1 + group["lr"] * group["mu"])
        expected = zeta * (buffers_before[2] - group["lr"] * p.grad)
        torch.testing.assert_close(delta_of(opt, p), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
def test_statistics_match_a_direct_computation(foreach):
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, ref_groups = build(weights, groups, torch.float64, foreach=foreach, average=True)
    reference = ReferenceO2NC(params, ref_groups)
    for _ in range(25):
        step_both(params, loss_fn, opt, reference)
    stats = opt.statistics(c=3.0)
    update_norm = math.sqrt(sum(delta_of(opt, p).square().sum().item() for p in params))
    averages, variance = reference.averaged_iterate_and_variance()
    assert stats["scale"] == opt.last_scale
    assert stats["update_norm"].item() == pytest.approx(update_norm, rel=1e-10)
    assert stats["grad_ema_norm"].item() == pytest.approx(reference.gradient_ema_norm(), rel=1e-9)
    assert stats["iterate_variance"].item() == pytest.approx(variance, rel=1e-9)
    assert stats["stationarity_certificate"].item() == pytest.approx(
        reference.gradient_ema_norm() + 3.0 * variance, rel=1e-9
    )
    for ours, avg in zip(opt.averaged_iterate(), averages):
        torch.testing.assert_close(ours, avg, rtol=1e-10, atol=1e-12)


def test_averaged_iterate_follows_a_beta_schedule():
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, ref_groups = build(weights, groups, torch.float64, average=True)
    reference = ReferenceO2NC(params, ref_groups)
    for step in range(20):
        beta = 0.5 + 0.02 * step
        for group, ref_group in zip(opt.param_groups, reference.groups):
            group["beta"] = ref_group["beta"] = beta
        step_both(params, loss_fn, opt, reference)
    assert_average_and_variance_match(opt, reference)


def test_grad_ema_norm_is_the_normalized_weighted_gradient_average_under_schedules():
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, ref_groups = build(weights, groups, torch.float64)
    reference = ReferenceO2NC(params, ref_groups)
    for step in range(12):
        for group, ref_group in zip(opt.param_groups, reference.groups):
            group["lr"] = ref_group["lr"] = 0.01 * (1 + step)
        step_both(params, loss_fn, opt, reference)
    # Delta_n = -sum_k w_k g_k with w_k = eta_k prod_{j>=k} zeta_j; m_hat = sum w_k g_k / sum w_k:
    # the reference computes m_hat from that weighted sum over its whole history
    assert opt.statistics()["grad_ema_norm"].item() == pytest.approx(
        reference.gradient_ema_norm(), rel=1e-9
    )


def test_skip_nonfinite_leaves_everything_untouched_and_counts_the_step():
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, ref_groups = build(
        weights, groups, torch.float64, average=True, skip_nonfinite=True
    )
    reference = ReferenceO2NC(params, ref_groups)
    for step in range(8):
        compute_grads(params, loss_fn)
        if step in (3, 5):
            params[1].grad[0] = float("nan") if step == 3 else float("inf")
            snapshot = copy.deepcopy(opt.state_dict()["state"])
            weights_before = [p.detach().clone() for p in params]
            opt.step()
            for p, w in zip(params, weights_before):
                assert torch.equal(p.detach(), w)
            after = opt.state_dict()["state"]
            for key, state in snapshot.items():
                for name, value in state.items():
                    assert torch.equal(after[key][name], value), name
            continue
        opt.step()
        reference.step([p.grad for p in params], opt.last_scale)
    assert opt.skipped_steps.item() == 2
    assert_weights_match(params, reference)
    assert_average_and_variance_match(opt, reference)
    assert opt.statistics()["grad_ema_norm"].item() == pytest.approx(
        reference.gradient_ema_norm(), rel=1e-9
    )


def test_averaged_iterate_and_variance_stay_exact_across_deviation_rescalings():
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, ref_groups = build(weights, groups, torch.float64, average=True)
    reference = ReferenceO2NC(params, ref_groups)
    rescalings, previous = 0, [1.0, 1.0]
    for _ in range(120):
        step_both(params, loss_fn, opt, reference)
        scales = [g["deviation_scale"] for g in opt.param_groups]
        rescalings += sum(k > k_old for k, k_old in zip(scales, previous))
        previous = scales
    assert rescalings >= 4  # x - x_bar = k u had its factor k folded back into u several times
    assert_average_and_variance_match(opt, reference)


def test_a_parameter_without_gradient_keeps_an_exact_average_while_its_group_steps():
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, ref_groups = build(weights, groups, torch.float64, average=True)
    reference = ReferenceO2NC(params, ref_groups)
    for step in range(80):
        compute_grads(params, loss_fn)
        grads = [p.grad for p in params]
        if step % 3 == 2:  # params[1] gets no gradient this step: it stays where it is
            params[1].grad = None
            grads[1] = torch.zeros_like(params[1])
            reference_delta = reference.deltas[1].clone()
        opt.step()
        reference.step(grads, opt.last_scale)
        if step % 3 == 2:  # the reference must not move it either: undo its momentum step
            reference.weights[1] = reference.history[-2]["iterates"][1].clone()
            reference.history[-1]["iterates"][1] = reference.weights[1].clone()
            reference.deltas[1] = reference_delta
    assert_average_and_variance_match(opt, reference)

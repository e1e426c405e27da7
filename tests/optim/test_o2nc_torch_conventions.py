"""ExponentiatedO2NC by torch.optim's own rules: copies, argument types, group options, schedules."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch

from lightning_o2nc import ExponentiatedO2NC, HyperparameterScheduler, build_optimizer
from lightning_o2nc.optim.reference import ReferenceO2NC, ReferenceSGDMomentum
from lightning_o2nc.optim.schedules import Schedule
from tests.optim.buffers import delta_of
from tests.optim.kernel_paths import kernel_that_ran


def train(
    weights: list[torch.Tensor], opt: ExponentiatedO2NC, steps: int, seed: int
) -> list[float]:
    """``steps`` steps on a non-smooth loss with a fixed data stream; returns the drawn scalars."""
    gen = torch.Generator().manual_seed(seed)
    scales = []
    for _ in range(steps):
        targets = [torch.randn(w.shape, generator=gen, dtype=w.dtype) for w in weights]
        for w in weights:
            w.grad = None
        sum(
            (w - t).abs().sum() + 0.1 * w.square().sum() for w, t in zip(weights, targets)
        ).backward()
        opt.step()
        scales.append(opt.last_scale)
    return scales


def make(**kwargs) -> tuple[list[torch.Tensor], ExponentiatedO2NC]:
    torch.manual_seed(0)
    weights = [torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    groups = [{"params": [weights[0]]}, {"params": [weights[1]], "lr": 0.02, "beta": 0.8}]
    return weights, ExponentiatedO2NC(groups, lr=0.05, seed=3, average=True, **kwargs)


def deep_copy(obj):
    return copy.deepcopy(obj)


def pickle_round_trip(obj):
    return pickle.loads(pickle.dumps(obj))


def torch_save_round_trip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


# ----------------------------------------------------------------------------- copies
@pytest.mark.parametrize("copier", [deep_copy, pickle_round_trip, torch_save_round_trip])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_copied_optimizer_continues_exactly_like_the_original(copier, mode):
    weights, opt = make(skip_nonfinite=True, average_beta=0.95)
    opt.tracks_statistics = True
    train(weights, opt, 5, seed=1)
    if mode == "eval":
        opt.eval()
    copied = copier({"weights": weights, "opt": opt})  # weights and optimizer copied together
    twin_weights, twin = copied["weights"], copied["opt"]
    assert twin.training == opt.training and twin.scaling == opt.scaling
    assert (twin.average, twin.average_beta, twin.skip_nonfinite) == (True, 0.95, True)
    assert twin.tracks_statistics and torch.equal(twin.skipped_steps, opt.skipped_steps)
    for a, b in zip(twin.averaged_iterate(), opt.averaged_iterate(), strict=True):
        assert torch.equal(a, b)  # the same x_bar
    for o in (opt, twin):
        o.train()
    assert train(twin_weights, twin, 6, seed=2) == train(weights, opt, 6, seed=2)  # same s
    for a, b in zip(twin_weights, weights, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(twin.averaged_iterate(), opt.averaged_iterate(), strict=True):
        assert torch.equal(a, b)
    for name in ("update_norm", "iterate_variance"):
        assert torch.equal(twin.statistics()[name], opt.statistics()[name])


def test_load_state_dict_drops_the_cached_group_lists():
    weights, opt = make()
    train(weights, opt, 3, seed=1)
    state = copy.deepcopy(opt.state_dict())
    twin_weights = [w.detach().clone().requires_grad_() for w in weights]
    twin = ExponentiatedO2NC(
        [{"params": [twin_weights[0]]}, {"params": [twin_weights[1]], "lr": 0.02, "beta": 0.8}],
        lr=0.05,
        average=True,
    )
    train(twin_weights, twin, 2, seed=9)  # its cache now holds its own buffers
    with torch.no_grad():
        for t, w in zip(twin_weights, weights, strict=True):
            t.copy_(w)
    twin.load_state_dict(state)
    assert train(twin_weights, twin, 4, seed=2) == train(weights, opt, 4, seed=2)
    for a, b in zip(twin_weights, weights, strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- argument types
@pytest.mark.parametrize("params", [torch.zeros(3, 2, requires_grad=True), torch.zeros(())])
def test_a_bare_tensor_as_params_is_torchs_type_error(params):
    with pytest.raises(TypeError) as ours:
        ExponentiatedO2NC(params, lr=0.1)
    with pytest.raises(TypeError) as torchs:
        torch.optim.SGD(params, lr=0.1)
    assert str(ours.value) == str(torchs.value)
    assert "should be an iterable of Tensors or dicts" in str(ours.value)


@pytest.mark.parametrize("name", ["lr", "beta", "mu"])
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)], ids=["0-d", "(1,)", "(1,1)"])
def test_one_element_tensor_hyperparameters_are_read_as_floats_at_construction(name, shape):
    value = {"lr": 0.25, "beta": 0.5, "mu": 0.125}[name]  # exact in float32
    w = torch.zeros(3, requires_grad=True)
    opt = ExponentiatedO2NC([w], **{"lr": 0.1, name: torch.full(shape, value)}, seed=0)
    assert type(opt.param_groups[0][name]) is float and opt.param_groups[0][name] == value
    twin_w = torch.zeros(3, requires_grad=True)
    twin = ExponentiatedO2NC([twin_w], **{"lr": 0.1, name: value}, seed=0)
    for p, o in ((w, opt), (twin_w, twin)):
        p.grad = torch.ones(3)
        o.step()
    assert torch.equal(w, twin_w)


def test_a_tensor_written_into_a_group_later_is_refused_by_step_without_reading_it():
    w = torch.zeros(3, requires_grad=True)
    opt = ExponentiatedO2NC([w], lr=0.1)
    opt.param_groups[0]["lr"] = torch.tensor(0.2)
    w.grad = torch.ones(3)
    with pytest.raises(TypeError, match="floats at every step"):
        opt.step()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("scaling", "none"),
        ("seed", 3),
        ("average", True),
        ("average_beta", 0.99),
        ("skip_nonfinite", True),
    ],
)
def test_a_whole_optimizer_option_inside_a_param_group_is_refused_naming_it(key, value):
    w = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=f"'{key}'.*applies to the whole optimizer"):
        ExponentiatedO2NC([{"params": [w], key: value}], lr=0.1)
    opt = ExponentiatedO2NC([w], lr=0.1)
    with pytest.raises(ValueError, match=f"'{key}'.*applies to the whole optimizer"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], key: value})


def test_per_group_keys_keep_working():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    per_group = dict(lr=0.3, beta=0.5, mu=1.0, weight_decay=0.1, maximize=True, foreach=True)
    opt = ExponentiatedO2NC([{"params": [a]}, {"params": [b], **per_group}], lr=0.1, seed=0)
    assert {k: opt.param_groups[1][k] for k in per_group} == per_group
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    assert (b > 0).all() and (a < 0).all()  # group 1 ascends


@pytest.mark.parametrize("value", [1.0, -0.1, math.nan, "0.9"])
def test_a_bad_average_beta_is_refused_naming_it(value):
    error = TypeError if isinstance(value, str) else ValueError
    with pytest.raises(error, match="average_beta"):
        ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1, average_beta=value)


# ----------------------------------------------------------------------------- average_beta
def test_average_beta_sets_x_bars_horizon_and_never_changes_the_trajectory():
    runs = {}
    for average_beta in (None, 0.99):
        weights, opt = make(average_beta=average_beta)
        opt.tracks_statistics = True
        groups = [
            {"indices": [0], "lr": 0.05, "beta": 0.9, "mu": 0.0, "weight_decay": 0.0},
            {"indices": [1], "lr": 0.02, "beta": 0.8, "mu": 0.0, "weight_decay": 0.0},
        ]
        reference = ReferenceO2NC(weights, groups, average_beta=average_beta)
        gen = torch.Generator().manual_seed(5)
        for step in range(30):
            for group, ref_group in zip(opt.param_groups, reference.groups, strict=True):
                group["beta"] = ref_group["beta"] = 0.7 + 0.005 * step  # beta scheduled too
            for w in weights:
                w.grad = torch.randn(w.shape, generator=gen)
            opt.step()
            reference.step([w.grad for w in weights], opt.last_scale)
        averages, variance = reference.averaged_iterate_and_variance()
        for ours, expected in zip(opt.averaged_iterate(), averages, strict=True):
            torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-6)
        assert opt.statistics()["iterate_variance"].item() == pytest.approx(variance, rel=1e-4)
        runs[average_beta] = ([w.detach().clone() for w in weights], averages)
    for a, b in zip(runs[None][0], runs[0.99][0], strict=True):
        assert torch.equal(a, b)  # same trajectory
    assert not torch.allclose(runs[None][1][0], runs[0.99][1][0])  # another average


def test_the_factory_passes_average_beta_through():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, "o2nc", lr=0.1, average=True, average_beta=0.999)
    assert opt.average_beta == 0.999


# ----------------------------------------------------------------------------- statistics
def test_v_is_tracked_only_once_read_and_reported_as_nan_before():
    weights, opt = make()
    train(weights, opt, 3, seed=1)
    assert not opt.tracks_statistics
    assert all(group["iterate_variance"] == 0.0 for group in opt.param_groups)  # nothing paid
    first = opt.statistics()
    assert math.isnan(first["iterate_variance"].item()) and opt.tracks_statistics
    assert math.isfinite(first["update_norm"].item())
    train(weights, opt, 2, seed=2)
    assert opt.statistics()["iterate_variance"].item() > 0
    assert opt.state_dict()["param_groups"][0]["o2nc"]["tracks_statistics"] is True


def test_the_statistics_norms_equal_the_norms_of_the_state_buffers():
    weights, opt = make()
    opt.tracks_statistics = True
    train(weights, opt, 4, seed=1)
    stats = opt.statistics()
    deltas = [delta_of(opt, w) for w in weights]
    update_sq = sum(d.square().sum().item() for d in deltas)
    grad_ema_sq = sum(
        d.square().sum().item() / g["update_weight_sum"] ** 2
        for d, g in zip(deltas, opt.param_groups, strict=True)
    )
    assert stats["update_norm"].item() == pytest.approx(math.sqrt(update_sq), rel=1e-6)
    assert stats["grad_ema_norm"].item() == pytest.approx(math.sqrt(grad_ema_sq), rel=1e-6)


# ----------------------------------------------------------------------------- flat buffers
def test_state_buffers_are_views_of_one_flat_buffer_per_group_with_the_parameters_layout():
    torch.manual_seed(0)
    conv = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last).requires_grad_()
    bias = torch.randn(2, requires_grad=True)
    opt = ExponentiatedO2NC([conv, bias], lr=0.1, seed=0, average=True)
    conv.grad, bias.grad = torch.ones_like(conv), torch.ones_like(bias)
    opt.step()
    for name in ("momentum_buffer", "iterate_deviation"):
        conv_buffer, bias_buffer = opt.state[conv][name], opt.state[bias][name]
        assert conv_buffer.stride() == conv.stride()  # channels_last, as preserve_format gives
        assert conv_buffer.untyped_storage().data_ptr() == bias_buffer.untyped_storage().data_ptr()
    # a checkpoint keeps the per-parameter form and loads into a fresh optimizer exactly
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = ExponentiatedO2NC([conv, bias], lr=0.1, seed=0, average=True)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    twin_weights = [conv.detach().clone(), bias.detach().clone()]
    opt.step()
    after = [conv.detach().clone(), bias.detach().clone()]
    with torch.no_grad():
        conv.copy_(twin_weights[0])
        bias.copy_(twin_weights[1])
    loaded.step()
    assert torch.equal(conv, after[0]) and torch.equal(bias, after[1])


def test_frozen_parameters_cost_no_buffer_until_they_get_a_gradient():
    torch.manual_seed(0)
    live, frozen = torch.randn(3, requires_grad=True), torch.randn(1000, requires_grad=False)
    opt = ExponentiatedO2NC([live, frozen], lr=0.1, seed=0, scaling="none")
    live.grad = torch.ones(3)
    opt.step()
    assert frozen not in opt.state
    flat_sizes = [f.numel() for f in opt._buffers[0].flat["momentum_buffer"]]
    assert flat_sizes == [3]  # the frozen weights took no memory
    delta_before = delta_of(opt, live)
    frozen.requires_grad_()
    frozen.grad = torch.ones(1000)
    opt.step()  # new flat buffers, adopting live's Δ
    assert torch.allclose(delta_of(opt, live), 0.9 * delta_before - 0.09)
    assert torch.allclose(delta_of(opt, frozen), torch.full((1000,), -0.09, dtype=torch.float64))


def test_a_state_replaced_by_hand_is_what_the_next_step_uses():
    """``opt.state.clear()`` (a common way to reset momentum) or assigning a state entry must not
    leave the step on the optimizer's previous buffers (an assigned buffer holds Δ / P)."""
    w = torch.zeros(3, requires_grad=True)
    opt = ExponentiatedO2NC([w], lr=1.0, beta=0.5, scaling="none")
    for _ in range(3):
        w.grad = torch.ones(3)
        opt.step()
    opt.state.clear()
    before = w.detach().clone()
    w.grad = torch.ones(3)
    opt.step()  # from Δ = 0: Δ = 0.5 * (0 - 1)
    assert torch.allclose(w - before, torch.full((3,), -0.5))
    opt.state[w]["momentum_buffer"] = torch.full((3,), 2.0)
    delta = 2.0 * opt.param_groups[0]["update_scale"]
    before = w.detach().clone()
    w.grad = torch.ones(3)
    opt.step()  # Δ = 0.5 * (Δ - 1)
    assert torch.allclose(w - before, torch.full((3,), 0.5 * (delta - 1.0)))


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
def test_a_parameter_without_a_gradient_keeps_its_delta_while_the_others_step(foreach):
    """Δ's discount lives in the group's scale P; a parameter skipped at a step must keep its Δ
    (as torch SGD keeps its buffer), including across the steps where P restarts at 1."""
    torch.manual_seed(0)
    start = [torch.randn(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    weights = [w.clone().requires_grad_() for w in start]
    opt = ExponentiatedO2NC(weights, lr=0.1, beta=0.5, scaling="none", foreach=foreach)
    groups = [{"indices": [0, 1], "lr": 0.1, "beta": 0.5, "mu": 0.0, "weight_decay": 0.0}]
    reference = ReferenceO2NC(start, groups)
    for step in range(30):  # P = 0.5^n restarts at 1 every 10 steps
        grads = [torch.randn(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
        if 5 <= step < 25:
            grads[1] = None  # the second weight sits out 20 steps
        for w, g in zip(weights, grads, strict=True):
            w.grad = g
        opt.step()
        reference.step(grads, 1.0)
        for i, w in enumerate(weights):
            torch.testing.assert_close(
                delta_of(opt, w), reference.deltas[i], rtol=1e-12, atol=1e-14
            )
            torch.testing.assert_close(w.detach(), reference.weights[i], rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- eta schedules
def test_an_eta_schedule_enters_as_in_the_paper_and_differs_from_torch_sgds_placement():
    """O2NC scales each gradient by the eta of its step; torch SGD scales the whole buffer by the
    current lr. Equal for a constant eta, different under a schedule (η -> 0 here)."""
    torch.manual_seed(0)
    start = [torch.randn(5, dtype=torch.float64)]
    groups = [{"indices": [0], "lr": 0.1, "beta": 0.9, "mu": 0.0, "weight_decay": 0.0}]
    ours_w = [start[0].clone().requires_grad_()]
    ours = ExponentiatedO2NC(ours_w, lr=0.1, beta=0.9, scaling="none")
    sgd_w = [start[0].clone().requires_grad_()]
    sgd = torch.optim.SGD(sgd_w, lr=0.9 * 0.1, momentum=0.9)  # lr = zeta * eta, momentum = zeta
    omd_form, sgd_form = (
        ReferenceO2NC(start, [dict(groups[0])]),
        ReferenceSGDMomentum(start, groups),
    )
    schedules = [torch.optim.lr_scheduler.PolynomialLR(o, total_iters=10) for o in (ours, sgd)]
    moves_after_eta_is_zero = {"ours": 0.0, "sgd": 0.0}
    for step in range(25):
        for w in ours_w + sgd_w:
            w.grad = None
        for w in (ours_w[0], sgd_w[0]):
            (w.abs().sum() + w.square().sum()).backward()
        before = {"ours": ours_w[0].detach().clone(), "sgd": sgd_w[0].detach().clone()}
        ours.step()
        sgd.step()
        omd_form.step([ours_w[0].grad], 1.0)
        sgd_form.step([sgd_w[0].grad])
        if step >= 10:  # eta = 0 from here on
            moves_after_eta_is_zero["ours"] += (ours_w[0] - before["ours"]).norm().item()
            moves_after_eta_is_zero["sgd"] += (sgd_w[0] - before["sgd"]).norm().item()
        if step < 1:  # eta has not changed yet: the two forms coincide
            torch.testing.assert_close(ours_w[0].detach(), sgd_w[0].detach())
        for scheduler in schedules:
            scheduler.step()
        omd_form.groups[0]["lr"] = groups[0]["lr"] = ours.param_groups[0]["lr"]
        torch.testing.assert_close(ours_w[0].detach(), omd_form.weights[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(sgd_w[0].detach(), sgd_form.weights[0], rtol=1e-12, atol=0)
    assert moves_after_eta_is_zero["sgd"] == 0.0
    assert moves_after_eta_is_zero["ours"] > 0.1  # Delta keeps moving the iterate for ~1/(1-ζ)
    assert (ours_w[0] - sgd_w[0]).abs().max() > 0.1


def test_with_a_constant_eta_scaling_none_is_torch_sgd_step_for_step():
    torch.manual_seed(1)
    start = torch.randn(6, dtype=torch.float64)
    ours_w, sgd_w = start.clone().requires_grad_(), start.clone().requires_grad_()
    ours = ExponentiatedO2NC([ours_w], lr=0.1, beta=0.9, mu=0.5, scaling="none")
    zeta = 0.9 / (1 + 0.1 * 0.5)
    sgd = torch.optim.SGD([sgd_w], lr=zeta * 0.1, momentum=zeta)
    for _ in range(20):
        for w, o in ((ours_w, ours), (sgd_w, sgd)):
            w.grad = None
            (w.abs().sum() + w.square().sum()).backward()
            o.step()
        torch.testing.assert_close(ours_w, sgd_w, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- kernel paths
SMALL, LARGE = 12, (1 << 18) + 1  # by default, groups up to 2^18 elements run multi-tensor kernels


@pytest.mark.parametrize(
    ("numel", "options", "expected"),
    [
        (SMALL, {}, "multi"),
        (LARGE, {}, "single"),
        (SMALL, {"foreach": False}, "single"),
        (LARGE, {"foreach": True}, "multi"),
        (SMALL, {"skip_nonfinite": True}, "masked"),
        (SMALL, {"skip_nonfinite": True, "foreach": True}, "masked"),
    ],
)
def test_the_kernel_that_runs_is_the_one_the_options_choose_on_the_cpu(numel, options, expected):
    assert kernel_that_ran(torch.device("cpu"), numel, **options) == expected


def test_a_checkpoint_with_an_older_torch_generator_state_loads_with_a_warning():
    weights, opt = make()
    train(weights, opt, 2, seed=1)
    state = opt.state_dict()
    state["param_groups"][0]["o2nc"]["scaling"]["generator_state"] = torch.Generator().get_state()
    twin_weights, twin = make()
    with pytest.warns(UserWarning, match="older lightning-o2nc.*starts afresh"):
        twin.load_state_dict(state)
    train(twin_weights, twin, 1, seed=2)  # and it steps


def test_a_schedule_may_drive_eta_to_zero_but_not_below():
    w = torch.zeros(2, requires_grad=True)
    opt = ExponentiatedO2NC([w], lr=0.1)
    scheduler = HyperparameterScheduler(opt, {"lr": {"shape": "linear"}}, total_steps=2)
    scheduler.step()
    scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.0
    with pytest.raises(ValueError, match=r"drives lr to -0.1, outside 0 <= lr"):
        HyperparameterScheduler(opt, {"lr": BelowZero()}).step()


class BelowZero(Schedule):
    """A user's own schedule shape that goes negative."""

    shape = "below_zero"

    def __call__(self, t: int) -> float:
        return -1.0


def test_a_checkpoint_with_a_scaled_buffer_continues_exactly_under_skip_nonfinite():
    """The masked kernel keeps P at 1: it folds a checkpoint's P into the buffers first."""
    torch.manual_seed(0)
    start = torch.randn(5, dtype=torch.float64)
    plain_w, masked_w = start.clone().requires_grad_(), start.clone().requires_grad_()
    plain = ExponentiatedO2NC([plain_w], lr=0.1, beta=0.9, scaling="none")
    for _ in range(3):
        plain_w.grad = torch.randn(5, dtype=torch.float64)
        plain.step()
    assert plain.param_groups[0]["update_scale"] != 1.0
    masked = ExponentiatedO2NC([masked_w], lr=0.1, beta=0.9, scaling="none", skip_nonfinite=True)
    masked.load_state_dict(copy.deepcopy(plain.state_dict()))  # torch shares the tensors
    with torch.no_grad():
        masked_w.copy_(plain_w)
    for step in range(3):
        grad = torch.randn(5, dtype=torch.float64)
        plain_w.grad, masked_w.grad = grad, grad.clone()
        if step == 1:
            masked_w.grad[0] = math.inf  # skipped: Δ and x stay
            before = (masked_w.detach().clone(), delta_of(masked, masked_w))
            masked.step()
            assert torch.equal(masked_w.detach(), before[0])
            torch.testing.assert_close(delta_of(masked, masked_w), before[1])
            continue
        plain.step()
        masked.step()
        torch.testing.assert_close(masked_w.detach(), plain_w.detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(delta_of(masked, masked_w), delta_of(plain, plain_w))

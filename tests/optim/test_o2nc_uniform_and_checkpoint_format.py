"""ExponentiatedO2NC's uniform scaling is the authors' (the importance weight 2 - s on the next
loss gradient), and its checkpoint format: the options in param_groups[0], older layouts loading."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from lightning_o2nc import RandomScaling
from lightning_o2nc.optim.reference import ReferenceO2NC
from tests.optim.buffers import delta_of
from tests.optim.test_o2nc_against_reference import build, compute_grads, make_problem


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
@pytest.mark.parametrize("skip_nonfinite", [False, True], ids=["plain", "masked"])
def test_uniform_weights_each_next_loss_gradient_by_two_minus_s_as_the_reference(
    foreach, maximize, skip_nonfinite
):
    weights, loss_fn, groups = make_problem(torch.float64)  # weight decay in one group
    params, opt, ref_groups = build(
        weights, groups, torch.float64, maximize=maximize, scaling="uniform", foreach=foreach,
        skip_nonfinite=skip_nonfinite,
    )  # fmt: skip
    reference = ReferenceO2NC(params, ref_groups)
    unweighted = ReferenceO2NC(params, ref_groups)
    weight = 1.0
    for _ in range(40):
        compute_grads(params, loss_fn)
        grads = [p.grad.clone() for p in params]
        opt.step()
        reference.step(grads, opt.last_scale, weight=weight)
        unweighted.step(grads, opt.last_scale)
        weight = 2.0 - opt.last_scale
    for i, p in enumerate(params):
        torch.testing.assert_close(p.detach(), reference.weights[i], rtol=1e-11, atol=1e-13)
        torch.testing.assert_close(delta_of(opt, p), reference.deltas[i], rtol=1e-11, atol=1e-13)
    assert not torch.allclose(params[0].detach(), unweighted.weights[0], rtol=1e-3)


def test_exponential_and_none_never_weight_the_gradient():
    for scaling in ("exponential", "none"):
        weights, loss_fn, groups = make_problem(torch.float64)
        params, opt, ref_groups = build(weights, groups, torch.float64, scaling=scaling)
        reference = ReferenceO2NC(params, ref_groups)
        for _ in range(10):
            compute_grads(params, loss_fn)
            grads = [p.grad.clone() for p in params]
            opt.step()
            assert opt._scaling.weight == 1.0
            reference.step(grads, opt.last_scale)
        for i, p in enumerate(params):
            torch.testing.assert_close(p.detach(), reference.weights[i], rtol=1e-11, atol=1e-13)


def test_the_first_uniform_step_has_weight_one_and_the_weight_is_saved_and_restored():
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, _ = build(weights, groups, torch.float64, scaling="uniform")
    assert opt._scaling.weight == 1.0
    compute_grads(params, loss_fn)
    opt.step()
    saved = opt.state_dict()["param_groups"][0]["o2nc"]["scaling"]
    assert saved["weight"] == 2.0 - opt.last_scale
    twin_params, twin, _ = build(weights, groups, torch.float64, scaling="uniform")
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # no aliasing
    with torch.no_grad():
        for a, b in zip(twin_params, params, strict=True):
            a.copy_(b)
    for ps, o in ((params, opt), (twin_params, twin)):
        compute_grads(ps, loss_fn)
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params, strict=True))


# ----------------------------------------------------------------------------- checkpoint format
def old_format(state_dict):
    """A state dict as versions before format 2 wrote it: a top-level 'o2nc' entry, no weight."""
    state_dict = dict(state_dict)
    groups = [dict(g) for g in state_dict["param_groups"]]
    options = dict(groups[0].pop("o2nc"))
    options.pop("format")
    options["scaling"] = {k: v for k, v in options["scaling"].items() if k != "weight"}
    skipped = options["skipped_steps"]
    options["skipped_steps"] = None if skipped is None else torch.tensor(skipped)
    return {"state": state_dict["state"], "param_groups": groups, "o2nc": options}


def test_the_options_live_in_the_first_param_group_as_plain_data():
    weights, loss_fn, groups = make_problem(torch.float32)
    params, opt, _ = build(weights, groups, torch.float32, skip_nonfinite=True, average=True)
    compute_grads(params, loss_fn)
    opt.step()
    state = opt.state_dict()
    assert set(state) == {"state", "param_groups"}
    options = state["param_groups"][0]["o2nc"]
    assert options["format"] == 2 and options["skipped_steps"] == 0
    assert "o2nc" not in state["param_groups"][1]
    assert all("o2nc" not in group for group in opt.param_groups)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    _, twin, _ = build(weights, groups, torch.float32, skip_nonfinite=True, average=True)
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    assert all("o2nc" not in group for group in twin.param_groups)
    assert twin.skipped_steps.item() == 0 and twin.last_scale == opt.last_scale


@pytest.mark.parametrize("scaling", ["exponential", "none"])
def test_a_checkpoint_in_the_old_layout_loads_and_continues_the_same_stream(scaling):
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, _ = build(weights, groups, torch.float64, scaling=scaling, skip_nonfinite=True)
    compute_grads(params, loss_fn)
    opt.step()
    twin_params, twin, _ = build(
        weights, groups, torch.float64, scaling=scaling, skip_nonfinite=True
    )
    twin.load_state_dict(copy.deepcopy(old_format(opt.state_dict())))
    with torch.no_grad():
        for a, b in zip(twin_params, params, strict=True):
            a.copy_(b)
    for ps, o in ((params, opt), (twin_params, twin)):
        compute_grads(ps, loss_fn)
        o.step()
    assert twin.last_scale == opt.last_scale
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params, strict=True))


def test_an_old_uniform_checkpoint_warns_that_the_meaning_of_uniform_changed():
    weights, loss_fn, groups = make_problem(torch.float64)
    params, opt, _ = build(weights, groups, torch.float64, scaling="uniform")
    compute_grads(params, loss_fn)
    opt.step()
    _, twin, _ = build(weights, groups, torch.float64, scaling="uniform")
    with pytest.warns(UserWarning, match="meaning of 'uniform' changed"):
        twin.load_state_dict(old_format(opt.state_dict()))
    assert twin._scaling.weight == 2.0 - opt.last_scale  # the authors' method from here on


def test_adding_a_group_copied_from_a_state_dict_does_not_duplicate_the_options():
    weights, _, groups = make_problem(torch.float64)
    _, opt, _ = build(weights, groups, torch.float64)
    saved_group = dict(opt.state_dict()["param_groups"][0])
    extra = torch.zeros(3, requires_grad=True)
    opt.add_param_group(dict(saved_group, params=[extra]))
    assert "o2nc" not in opt.param_groups[-1]
    state = opt.state_dict()
    assert ["o2nc" in g for g in state["param_groups"]] == [True, False, False]


def test_the_wrapper_drops_the_options_of_a_group_copied_from_a_state_dict():
    model = torch.nn.Linear(3, 2)
    opt = RandomScaling(torch.optim.SGD(model.parameters(), lr=0.1), scaling="uniform", seed=0)
    saved_group = dict(opt.state_dict()["param_groups"][0])
    opt.add_param_group(dict(saved_group, params=[torch.zeros(2, requires_grad=True)]))
    assert all("o2nc" not in group for group in opt.param_groups)

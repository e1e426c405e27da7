"""RandomScaling as a torch optimizer: shared groups and state, hooks, schedulers, AdamW's lazy
init, AMP, the seed rule on DDP ranks, checkpoints, copies, averaging, statistics and bad input."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lightning_o2nc import ExponentiatedO2NC, O2NCAdamW, RandomScaling
from lightning_o2nc.optim.reference import ReferenceO2NC
from tests.optim.test_o2nc_contract import free_port


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def train(model, opt, steps, seed=123):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def adamw_wrapper(model, **kwargs):
    return RandomScaling(torch.optim.AdamW(model.parameters(), lr=1e-2), **kwargs)


# ----------------------------------------------------------------------------- torch conventions
def test_the_wrapper_shares_the_bases_param_groups_and_state():
    model = tiny_model()
    opt = adamw_wrapper(model, seed=0)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.optimizer.param_groups
    assert opt.state is opt.optimizer.state
    assert opt.defaults is opt.optimizer.defaults


def test_adamws_lazy_initialization_is_intact_and_its_state_holds_only_its_own_keys():
    model = tiny_model()
    opt = adamw_wrapper(model, seed=0, average=True)
    opt.statistics()  # the gradient EMA as well
    assert len(opt.state) == 0
    train(model, opt, 3)
    for p in model.parameters():
        assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
        assert float(opt.state[p]["step"]) == 3.0
    saved = opt.state_dict()["state"][0]
    assert {"averaged_iterate", "gradient_ema"} <= set(saved)


def test_step_hooks_fire_around_each_step():
    model = tiny_model()
    opt = adamw_wrapper(model, seed=0)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(("pre", o.last_scale)))
    opt.register_step_post_hook(lambda o, a, k: seen.append(("post", o.last_scale)))
    train(model, opt, 2)
    assert [kind for kind, _ in seen] == ["pre", "post", "pre", "post"]
    assert seen[0][1] == 1.0 and seen[1][1] != 1.0


def test_global_step_hooks_fire_once_per_step_and_hooks_on_the_base_still_fire():
    from torch.optim.optimizer import register_optimizer_step_post_hook

    model = tiny_model()
    opt = adamw_wrapper(model, seed=0)
    seen = []
    handle = register_optimizer_step_post_hook(lambda o, a, k: seen.append(type(o).__name__))
    try:
        train(model, opt, 2)
        assert seen == ["RandomScaling", "RandomScaling"]
        opt.optimizer.register_step_post_hook(lambda o, a, k: seen.append("base hook"))
        seen.clear()
        train(model, opt, 1)
        assert sorted(seen) == ["AdamW", "RandomScaling", "base hook"]
    finally:
        handle.remove()


def test_an_lr_scheduler_built_on_the_wrapper_drives_the_base():
    model = tiny_model()
    opt = adamw_wrapper(model, seed=0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        train(model, opt, 1)
        scheduler.step()
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 / 8)


def test_add_param_group_adds_to_the_base():
    model, extra = tiny_model(), torch.nn.Linear(3, 3)
    opt = adamw_wrapper(model, seed=0)
    opt.add_param_group({"params": extra.parameters(), "lr": 0.5})
    assert len(opt.optimizer.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.5
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)  # the base's defaults filled in


def test_a_fused_bases_amp_scaling_support_is_not_inherited():
    model = tiny_model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    assert base._step_supports_amp_scaling
    opt = RandomScaling(base, seed=0)
    assert not getattr(opt, "_step_supports_amp_scaling", False)
    train(model, opt, 2)  # and the fused base steps under it


def test_o2nc_adamw_takes_its_arguments_by_name_as_a_class_path_config_gives_them():
    model = tiny_model()
    opt = O2NCAdamW(
        model.parameters(), lr=3e-3, betas=[0.8, 0.95], eps=1e-6, weight_decay=0.0, amsgrad=True,
        scaling="uniform", seed=1, average=True, average_beta=0.99,
    )  # fmt: skip
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["amsgrad"]) == (
        3e-3,
        (0.8, 0.95),
        1e-6,
        True,
    )
    assert (opt.scaling, opt.average, opt.average_beta) == ("uniform", True, 0.99)
    train(model, opt, 2)


# ----------------------------------------------------------------------------- the scalar
def test_the_same_seed_draws_exponentiated_o2ncs_sequence_of_scalars():
    for scaling in ("exponential", "uniform"):
        model = tiny_model()
        opt = adamw_wrapper(model, scaling=scaling, seed=21)
        o2nc = ExponentiatedO2NC(
            [torch.zeros(1, requires_grad=True)], lr=0.1, scaling=scaling, seed=21
        )
        scales = []
        for _ in range(6):
            train(model, opt, 1)
            o2nc.param_groups[0]["params"][0].grad = torch.zeros(1)
            o2nc.step()
            scales.append((opt.last_scale, o2nc.last_scale))
        assert all(a == b for a, b in scales)


RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    import torch.distributed as dist
    from lightning_o2nc import RandomScaling
    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    torch.manual_seed(1000 + rank)  # each rank seeded differently
    model = torch.nn.Linear(4, 2)
    opt = RandomScaling(torch.optim.AdamW(model.parameters(), lr=1e-2), scaling=sys.argv[2])
    scales = []
    for _ in range(5):
        model.weight.grad = torch.ones_like(model.weight)
        model.bias.grad = torch.ones_like(model.bias)
        opt.step()
        scales.append(opt.last_scale)
    with open(f"{sys.argv[1]}.{rank}.json", "w") as f:
        json.dump(scales, f)
    dist.barrier()
    os._exit(0)
    """
)


def test_ddp_ranks_seeded_differently_draw_the_same_scalars(tmp_path: Path):
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "out"), "uniform"],
            env={**env, "RANK": str(rank)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    first, second = (json.loads((tmp_path / f"out.{r}.json").read_text()) for r in range(2))
    assert first == second and len(set(first)) == 5


# ----------------------------------------------------------------------------- checkpoints
RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from lightning_o2nc import O2NCAdamW

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        # seed=None: the generator's saved state, not a re-seed, must carry the stream
        return model, O2NCAdamW(model.parameters(), lr=1e-2, scaling="uniform", average=True)

    def run(model, opt, start, stop):
        scales = []
        for step in range(start, stop):
            gen = torch.Generator().manual_seed(step)
            x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if step == 2:
                opt.statistics()  # tracking starts mid-run, before the checkpoint
            scales.append(opt.last_scale)
        return scales

    mode, path = sys.argv[1], sys.argv[2]
    model, opt = build()
    if mode == "whole":
        scales = run(model, opt, 0, 12)
    elif mode == "first":
        run(model, opt, 0, 5)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
        sys.exit(0)
    else:
        ckpt = torch.load(path, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        scales = run(model, opt, 5, 12)
    stats = {k: float(v) for k, v in opt.statistics().items()}
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "scales": scales, "stats": stats,
                "average": opt.averaged_iterate()}, path + "." + mode)
    """
)


def test_resume_is_bit_exact_in_a_new_process(tmp_path: Path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    ckpt = str(tmp_path / "ckpt.pt")
    for mode in ("whole", "first", "second"):
        run = subprocess.run(
            [sys.executable, str(script), mode, ckpt], capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
    whole = torch.load(ckpt + ".whole", weights_only=True)
    resumed = torch.load(ckpt + ".second", weights_only=True)
    assert resumed["scales"] == whole["scales"][5:]
    assert resumed["stats"] == whole["stats"]
    for key, value in whole["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for a, b in zip(whole["average"], resumed["average"], strict=True):
        assert torch.equal(a, b)
    for index, state in whole["opt"]["state"].items():
        for name, value in state.items():
            assert torch.equal(resumed["opt"]["state"][index][name], value), name
    assert resumed["opt"]["param_groups"][0]["o2nc"] == whole["opt"]["param_groups"][0]["o2nc"]


def test_the_state_dict_keeps_the_non_tensor_state_in_param_groups_as_plain_data():
    model = tiny_model()
    opt = adamw_wrapper(model, scaling="uniform", seed=2, average=True)
    train(model, opt, 2)
    state = opt.state_dict()
    assert set(state) == {"state", "param_groups"}  # what torch.distributed.checkpoint keeps
    options = state["param_groups"][0]["o2nc"]
    assert options["scaling"]["weight"] == 2.0 - opt.last_scale
    assert options["format"] == 2 and options["training"] is True

    def plain(value):
        if isinstance(value, dict):
            return all(plain(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (bool, int, float, str))

    assert plain(options)
    assert all("o2nc" not in group for group in opt.param_groups)  # nothing left in the live groups
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    twin = adamw_wrapper(tiny_model(), scaling="uniform", seed=99, average=True)
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    assert twin.importance_weight == opt.importance_weight
    assert all("o2nc" not in group for group in twin.param_groups)


def test_a_bare_bases_state_dict_loads_with_a_warning_that_the_stream_is_not_restored():
    model = tiny_model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train(model, base, 1)
    opt = adamw_wrapper(model, seed=0)
    with pytest.warns(UserWarning, match="generator is not restored"):
        opt.load_state_dict(base.state_dict())


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
@pytest.mark.parametrize("eval_mode", [False, True])
def test_a_copied_wrapper_continues_exactly_like_the_original(copier, eval_mode):
    model = tiny_model()
    opt = adamw_wrapper(model, scaling="uniform", seed=3, average=True)
    train(model, opt, 3)
    opt.statistics()
    train(model, opt, 1)
    if eval_mode:
        opt.eval()
    pair = (
        copy.deepcopy((model, opt))
        if copier == "deepcopy"
        else pickle.loads(pickle.dumps((model, opt)))
    )
    twin_model, twin = pair
    assert twin.param_groups is twin.optimizer.param_groups and twin.state is twin.optimizer.state
    assert twin.training == opt.training
    if eval_mode:
        opt.train()
        twin.train()
    for m, o in ((model, opt), (twin_model, twin)):
        train(m, o, 3, seed=9)
    assert twin.last_scale == opt.last_scale
    for a, b in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(opt.averaged_iterate(), twin.averaged_iterate(), strict=True):
        assert torch.equal(a, b)
    assert {k: float(v) for k, v in opt.statistics().items()} == {
        k: float(v) for k, v in twin.statistics().items()
    }


def test_hooks_keep_firing_after_the_wrapper_is_copied():
    opt = adamw_wrapper(tiny_model(), seed=0)
    twin = copy.deepcopy(opt)
    fired = []
    twin.register_step_post_hook(lambda o, a, k: fired.append(o.last_scale))
    for p in twin.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    twin.step()
    assert fired == [twin.last_scale]


# ----------------------------------------------------------------------------- averaging
def test_x_bar_and_v_match_their_definitions_and_eval_train_swap_bit_for_bit():
    model = tiny_model()
    opt = RandomScaling(
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.8), seed=4, average=True
    )
    opt.tracks_statistics = True
    iterates = []
    for step in range(6):
        train(model, opt, 1, seed=step)
        iterates.append([p.detach().double().clone() for p in model.parameters()])
    weights = [0.8 ** (len(iterates) - 1 - k) for k in range(len(iterates))]
    total = sum(weights)
    expected = [
        sum(w * it[i] for w, it in zip(weights, iterates, strict=True)) / total for i in range(4)
    ]
    variance = (
        sum(
            w * sum((it[i] - expected[i]).square().sum() for i in range(4))
            for w, it in zip(weights, iterates, strict=True)
        )
        / total
    )
    for average, want in zip(opt.averaged_iterate(), expected, strict=True):
        torch.testing.assert_close(average.double(), want, rtol=1e-5, atol=1e-6)
    assert opt.statistics()["iterate_variance"].item() == pytest.approx(float(variance), rel=1e-4)
    training_weights = [p.detach().clone() for p in model.parameters()]
    averages = opt.averaged_iterate()
    opt.eval()
    assert all(torch.equal(p, a) for p, a in zip(model.parameters(), averages, strict=True))
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step()
    opt.train()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), training_weights, strict=True))


def test_scaling_none_with_averaging_is_the_plain_base_plus_x_bar():
    model_a, model_b = tiny_model(), tiny_model()
    opt = RandomScaling(
        torch.optim.AdamW(model_a.parameters(), lr=1e-2), scaling="none", average=True
    )
    base = torch.optim.AdamW(model_b.parameters(), lr=1e-2)
    train(model_a, opt, 5)
    train(model_b, base, 5)
    assert all(
        torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True)
    )
    assert opt.last_scale == 1.0


def test_average_beta_none_is_the_bases_momentum_coefficient():
    def build(average_beta):
        model = tiny_model()
        base = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.7, 0.99))
        return model, RandomScaling(base, average=True, average_beta=average_beta, seed=1)

    (model_a, implied), (model_b, explicit), (model_c, other) = build(None), build(0.7), build(0.9)
    for model, opt in ((model_a, implied), (model_b, explicit), (model_c, other)):
        train(model, opt, 4)
    pairs = zip(implied.averaged_iterate(), explicit.averaged_iterate(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    pairs = zip(implied.averaged_iterate(), other.averaged_iterate(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)


# ----------------------------------------------------------------------------- statistics
def test_statistics_are_nan_until_tracked_then_match_a_direct_computation():
    model = tiny_model()
    opt = RandomScaling(
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5), scaling="uniform", seed=6
    )
    first = opt.statistics()
    assert math.isnan(first["update_norm"].item()) and opt.tracks_statistics
    grads = []
    for step in range(5):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        grads.append([p.grad.clone() for p in model.parameters()])  # weighted, as the base saw them
        move = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
    stats = opt.statistics()
    assert stats["scale"] == opt.last_scale
    assert stats["update_norm"].item() == pytest.approx(
        math.sqrt(sum(m.square().sum().item() for m in move)), rel=1e-4
    )
    weights = [0.5 ** (4 - k) * 0.5 for k in range(5)]
    ema = [
        sum(w * g[i] for w, g in zip(weights, grads, strict=True)) / sum(weights) for i in range(4)
    ]
    assert stats["grad_ema_norm"].item() == pytest.approx(
        math.sqrt(sum(e.square().sum().item() for e in ema)), rel=1e-4
    )


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda m: RandomScaling(list(m.parameters())), TypeError, "torch.optim.Optimizer"),
        (
            lambda m: RandomScaling(RandomScaling(torch.optim.SGD(m.parameters(), lr=0.1))),
            TypeError,
            "already a RandomScaling",
        ),
        (
            lambda m: RandomScaling(torch.optim.SGD(m.parameters(), lr=0.1), scaling="gauss"),
            ValueError,
            "scaling",
        ),
        (
            lambda m: RandomScaling(torch.optim.SGD(m.parameters(), lr=0.1), average_beta=1.0),
            ValueError,
            "average_beta",
        ),
        (
            lambda m: RandomScaling(torch.optim.SGD(m.parameters(), lr=0.1), average_beta="x"),
            ValueError,
            "average_beta",
        ),
        (
            lambda m: RandomScaling(torch.optim.Adagrad(m.parameters()), average=True),
            ValueError,
            "average_beta",
        ),
        (
            lambda m: RandomScaling(torch.optim.SGD(m.parameters(), lr=0.1), seed=1.5),
            TypeError,
            "seed",
        ),
        (lambda m: O2NCAdamW(m.parameters(), lr=-1.0), ValueError, "learning rate"),
    ],
)
def test_bad_input_is_refused_naming_the_culprit(build, error, match):
    with pytest.raises(error, match=match):
        build(tiny_model())


def test_eval_without_averaging_explains_how_to_enable_it():
    with pytest.raises(RuntimeError, match="average=True"):
        adamw_wrapper(tiny_model()).eval()


def test_a_base_without_momentum_gets_x_bar_with_an_explicit_average_beta():
    model = tiny_model()
    opt = RandomScaling(
        torch.optim.Adagrad(model.parameters(), lr=0.1), average=True, average_beta=0.5, seed=0
    )
    train(model, opt, 2)
    assert len(opt.averaged_iterate()) == 4


def test_the_reference_is_the_oracle_of_the_uniform_weight():
    # ReferenceO2NC takes the weight explicitly: with w = 1 it is the old, unweighted update.
    w = [torch.ones(3)]
    ref_weighted = ReferenceO2NC(
        w, [{"indices": [0], "lr": 0.1, "beta": 0.5, "mu": 0.0, "weight_decay": 0.1}]
    )
    ref_plain = ReferenceO2NC(
        w, [{"indices": [0], "lr": 0.1, "beta": 0.5, "mu": 0.0, "weight_decay": 0.1}]
    )
    ref_weighted.step([torch.ones(3)], 1.0, weight=0.5)
    ref_plain.step([torch.ones(3)], 1.0)
    # Delta = zeta * (-eta * (w g + wd x)): the L2 term is not weighted
    assert torch.allclose(
        ref_weighted.deltas[0], torch.full((3,), -0.5 * 0.1 * (0.5 + 0.1), dtype=torch.float64)
    )
    assert torch.allclose(
        ref_plain.deltas[0], torch.full((3,), -0.5 * 0.1 * (1.0 + 0.1), dtype=torch.float64)
    )


def test_a_group_without_gradients_and_a_frozen_parameter_thawed_later_are_handled():
    model, head = tiny_model(), torch.nn.Linear(3, 3)
    head.weight.requires_grad_(False)
    base = torch.optim.AdamW(
        [{"params": model.parameters()}, {"params": head.parameters(), "lr": 0.1}], lr=1e-2
    )
    opt = RandomScaling(base, seed=0, average=True)
    opt.tracks_statistics = True
    frozen = head.weight.detach().clone()
    train(model, opt, 2)  # head gets no gradient at all: its group sits the steps out
    assert torch.equal(head.weight, frozen) and head.weight not in opt.state
    head.weight.requires_grad_(True)
    for _ in range(2):
        opt.zero_grad()
        (model(torch.randn(4, 6)).sum() + head(torch.randn(2, 3)).sum()).backward()
        opt.step()
    assert not torch.equal(head.weight, frozen)
    assert set(opt.state[head.weight]) == {"step", "exp_avg", "exp_avg_sq"}
    assert all(torch.isfinite(v).all() for v in opt.statistics().values() if torch.is_tensor(v))
    # x_bar of the late parameter started at its weights before its first step
    assert not torch.equal(opt.averaged_iterate()[-2], torch.zeros_like(frozen))


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_grad_scaler_unscales_before_the_wrapper_steps_as_with_16_mixed(fused):
    """Lightning's 16-mixed calls the closure, then GradScaler.step(optimizer) without one."""
    models = [tiny_model(), tiny_model()]
    plain = RandomScaling(torch.optim.AdamW(models[0].parameters(), lr=1e-2, fused=fused), seed=2)
    scaled = RandomScaling(torch.optim.AdamW(models[1].parameters(), lr=1e-2, fused=fused), seed=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        for model, opt in zip(models, (plain, scaled), strict=True):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            if opt is plain:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
    assert scaled.last_scale == plain.last_scale
    for a, b in zip(*(m.parameters() for m in models), strict=True):
        assert torch.equal(a, b)  # a power-of-two scale unscales exactly

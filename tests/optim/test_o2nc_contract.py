"""ExponentiatedO2NC's contract: the scalar, seeds, DDP agreement, resume, eval/train, bad input."""

from __future__ import annotations

import io
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from scipy import stats

from lightning_o2nc import ExponentiatedO2NC


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def train_steps(model, opt, steps, seed=123):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 6, generator=gen)
        y = torch.randint(0, 3, (32,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def draw_scales(opt: ExponentiatedO2NC, n: int) -> list[float]:
    p = opt.param_groups[0]["params"][0]
    scales = []
    for _ in range(n):
        p.grad = torch.zeros_like(p)
        opt.step()
        scales.append(opt.last_scale)
    return scales


# ----------------------------------------------------------------------------- the scalar s
def test_exponential_scalars_follow_exp1():
    opt = ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1, seed=7)
    scales = draw_scales(opt, 20_000)
    assert sum(scales) / len(scales) == pytest.approx(1.0, abs=0.03)
    assert stats.kstest(scales, "expon").statistic < 0.015
    assert min(scales) > 0


def test_uniform_scalars_follow_u02_with_mean_one():
    opt = ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1, seed=7, scaling="uniform")
    scales = draw_scales(opt, 20_000)
    assert sum(scales) / len(scales) == pytest.approx(1.0, abs=0.03)
    assert stats.kstest(scales, "uniform", args=(0.0, 2.0)).statistic < 0.015
    assert stats.kstest(scales, "expon").statistic > 0.1


def test_scaling_none_always_uses_one():
    opt = ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1, scaling="none")
    assert set(draw_scales(opt, 50)) == {1.0}


def test_one_scalar_per_step_even_with_several_groups():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = ExponentiatedO2NC([{"params": [a]}, {"params": [b], "lr": 0.3}], lr=0.1, beta=0.5, seed=3)
    reference = ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1, seed=3)
    expected = draw_scales(reference, 5)
    for s in expected:
        a.grad, b.grad = torch.ones(3), torch.ones(2)
        opt.step()
        assert opt.last_scale == s  # the generator advanced once for both groups


def test_same_seed_gives_same_scalars_and_different_seeds_differ():
    make = lambda seed: ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1, seed=seed)  # noqa: E731
    assert draw_scales(make(5), 20) == draw_scales(make(5), 20)
    assert draw_scales(make(5), 20) != draw_scales(make(6), 20)


def test_seed_none_follows_the_global_seed_without_consuming_the_global_rng():
    torch.manual_seed(11)
    first = draw_scales(ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1), 10)
    after_first = torch.rand(3)
    torch.manual_seed(11)
    second = draw_scales(ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1), 10)
    assert first == second
    torch.manual_seed(11)
    assert torch.equal(torch.rand(3), after_first)  # the optimizer drew nothing from the global RNG


def test_the_scalar_stream_differs_from_the_global_stream_with_the_same_seed():
    opt = ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1, seed=0)
    global_draws = torch.empty(10, dtype=torch.float64).exponential_(
        generator=torch.Generator().manual_seed(0)
    )
    assert draw_scales(opt, 10) != global_draws.tolist()


# ----------------------------------------------------------------------------- DDP agreement
DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, json, torch, torch.distributed as dist
    from lightning_o2nc import ExponentiatedO2NC
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method="env://")
    torch.manual_seed(1000 + rank)  # the common per-rank seeding recipe: seed + rank
    model = torch.nn.Linear(4, 2)
    model = torch.nn.parallel.DistributedDataParallel(model)
    opt = ExponentiatedO2NC(model.parameters(), lr=0.1, beta=0.9, average=True)
    scales = []
    for step in range(6):
        x = torch.randn(8, 4)  # different data per rank
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        scales.append(opt.last_scale)
    gathered = [None, None]
    dist.all_gather_object(gathered, {"scales": scales,
                                      "weights": [p.detach().tolist() for p in model.parameters()]})
    # after the first step the ranks need no communication at all to keep agreeing
    dist.barrier()
    dist.destroy_process_group()
    for step in range(5):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        scales.append(opt.last_scale)
    with open(sys.argv[1] + f".{rank}.json", "w") as f:
        json.dump({"gathered": gathered, "scales": scales}, f)
    os._exit(0)  # skip interpreter teardown, where gloo's threads can abort the process
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_draw_identical_scalars_despite_per_rank_seeds(tmp_path: Path):
    import json

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "out")],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    results = [json.loads((tmp_path / f"out.{rank}.json").read_text()) for rank in range(2)]
    rank0, rank1 = results[0]["gathered"]
    assert rank0["scales"] == rank1["scales"]
    assert len(set(rank0["scales"])) == 6
    assert rank0["weights"] == rank1["weights"]  # same grads (DDP) and same s: identical weights
    assert results[0]["scales"] == results[1]["scales"]  # still agreeing without a process group


# ----------------------------------------------------------------------------- resume
RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from lightning_o2nc import ExponentiatedO2NC
    sys.path.insert(0, sys.argv[3])
    from resume_common import build, train_steps
    mode, path = sys.argv[1], sys.argv[2]
    model, opt = build()
    if mode == "first":
        train_steps(model, opt, 0, 7)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    else:
        ckpt = torch.load(path, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        scales = train_steps(model, opt, 7, 13)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "scales": scales}, path + ".final")
    """
)

RESUME_COMMON = textwrap.dedent(
    """
    import torch
    from lightning_o2nc import ExponentiatedO2NC

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        # seed=None on purpose: the generator's state, not a re-seed, must carry the stream
        opt = ExponentiatedO2NC(model.parameters(), lr=0.05, beta=0.9, mu=0.1, average=True)
        return model, opt

    def train_steps(model, opt, start, stop):
        scales = []
        for step in range(start, stop):
            gen = torch.Generator().manual_seed(step)
            x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            scales.append(opt.last_scale)
        return scales
    """
)


def test_resume_is_bit_exact_in_a_new_process(tmp_path: Path):
    (tmp_path / "resume_common.py").write_text(RESUME_COMMON)
    (tmp_path / "resume.py").write_text(RESUME_SCRIPT)
    ckpt = str(tmp_path / "ckpt.pt")
    for mode in ("first", "second"):
        run = subprocess.run(
            [sys.executable, str(tmp_path / "resume.py"), mode, ckpt, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
    resumed = torch.load(ckpt + ".final", weights_only=True)

    sys.path.insert(0, str(tmp_path))
    try:
        from resume_common import build, train_steps
    finally:
        sys.path.remove(str(tmp_path))
    model, opt = build()
    uninterrupted_scales = train_steps(model, opt, 0, 13)
    assert resumed["scales"] == uninterrupted_scales[7:]
    for key, value in model.state_dict().items():
        assert torch.equal(resumed["model"][key], value), key
    for key, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(resumed["opt"]["state"][key][name], value), name


def test_state_dict_round_trips_through_weights_only_load_with_cast_safe_generator():
    model = tiny_model().to(torch.bfloat16)
    opt = ExponentiatedO2NC(model.parameters(), lr=0.05, seed=1, average=True, skip_nonfinite=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    clone = ExponentiatedO2NC(
        model.parameters(), lr=0.05, seed=99, average=True, skip_nonfinite=True
    )
    clone.load_state_dict(state)
    assert draw_scales(clone, 5) == draw_scales(opt, 5)


def test_loading_a_foreign_state_dict_warns_that_the_scalar_stream_is_not_restored():
    model = tiny_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = ExponentiatedO2NC(model.parameters(), lr=0.1)
    state = sgd.state_dict()
    for group in state["param_groups"]:
        group.update(beta=0.9, mu=0.0, maximize=False)
    with pytest.warns(UserWarning, match="generator is not restored"):
        opt.load_state_dict(state)


def test_loading_a_checkpoint_with_another_scaling_is_refused():
    model = tiny_model()
    state = ExponentiatedO2NC(model.parameters(), lr=0.1, scaling="uniform").state_dict()
    with pytest.raises(ValueError, match="scaling='uniform'"):
        ExponentiatedO2NC(model.parameters(), lr=0.1).load_state_dict(state)


# ----------------------------------------------------------------------------- eval / train
def test_eval_swaps_in_the_averaged_iterate_and_train_restores_weights_bit_for_bit():
    model = tiny_model()
    opt = ExponentiatedO2NC(model.parameters(), lr=0.1, average=True, seed=0)
    train_steps(model, opt, 10)
    weights = [p.detach().clone() for p in model.parameters()]
    averages = opt.averaged_iterate()
    assert not all(torch.equal(w, a) for w, a in zip(weights, averages))
    opt.eval()
    assert not opt.training
    for p, a in zip(model.parameters(), averages):
        assert torch.equal(p.detach(), a)
    opt.eval()  # idempotent
    opt.train()
    for p, w in zip(model.parameters(), weights):
        assert torch.equal(p.detach(), w)
    train_steps(model, opt, 2)  # training continues from the training weights


def test_step_in_eval_mode_is_an_error_that_says_so():
    model = tiny_model()
    opt = ExponentiatedO2NC(model.parameters(), lr=0.1, average=True)
    train_steps(model, opt, 1)
    opt.eval()
    with pytest.raises(RuntimeError, match=r"eval mode.*optimizer.train\(\)"):
        train_steps(model, opt, 1)


def test_eval_without_averaging_explains_how_to_enable_it():
    opt = ExponentiatedO2NC(tiny_model().parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="average=True"):
        opt.eval()


def test_the_train_eval_mode_is_saved_in_the_state_dict():
    model = tiny_model()
    opt = ExponentiatedO2NC(model.parameters(), lr=0.1, average=True)
    train_steps(model, opt, 2)
    opt.eval()
    state = opt.state_dict()
    other = ExponentiatedO2NC(model.parameters(), lr=0.1, average=True)
    other.load_state_dict(state)
    assert other.training is False


# ----------------------------------------------------------------------------- memory
def test_exactly_one_state_buffer_per_parameter_without_averaging_and_two_with():
    for average, expected in (
        (False, {"momentum_buffer"}),
        (True, {"momentum_buffer", "iterate_deviation"}),
    ):
        model = tiny_model()
        opt = ExponentiatedO2NC(model.parameters(), lr=0.1, average=average)
        train_steps(model, opt, 2)
        for p in model.parameters():
            state = opt.state[p]
            assert set(state) == expected
            assert all(t.shape == p.shape and t.dtype == p.dtype for t in state.values())


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": 0.0}, ValueError, "lr"),
        ({"lr": -0.1}, ValueError, "lr"),
        ({"lr": math.nan}, ValueError, "lr"),
        ({"lr": math.inf}, ValueError, "lr"),
        ({"lr": "0.1"}, TypeError, "lr"),
        ({"beta": -0.1}, ValueError, "beta"),
        ({"beta": 1.0}, ValueError, "beta"),
        ({"beta": math.nan}, ValueError, "beta"),
        ({"mu": -1.0}, ValueError, "mu"),
        ({"mu": math.inf}, ValueError, "mu"),
        ({"weight_decay": -1e-4}, ValueError, "weight_decay"),
        ({"weight_decay": math.nan}, ValueError, "weight_decay"),
        ({"scaling": "gaussian"}, ValueError, "scaling.*exponential, uniform, none"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"seed": "3"}, TypeError, "seed"),
        ({"seed": True}, TypeError, "seed"),
    ],
)
def test_bad_arguments_are_refused_with_a_message_naming_them(kwargs, error, match):
    kwargs = {"lr": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        ExponentiatedO2NC(tiny_model().parameters(), **kwargs)


def test_bad_per_group_values_are_refused_naming_the_value():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"beta: 1\.5"):
        ExponentiatedO2NC(
            [{"params": model[0].parameters()}, {"params": model[2].parameters(), "beta": 1.5}],
            lr=0.1,
        )


def test_an_empty_parameter_list_is_refused():
    with pytest.raises(ValueError, match="empty parameter list"):
        ExponentiatedO2NC([], lr=0.1)


def test_sparse_gradients_are_refused_with_a_clear_error():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    opt = ExponentiatedO2NC(embedding.parameters(), lr=0.1)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


def test_parameters_without_gradients_are_left_alone():
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = ExponentiatedO2NC([a, b], lr=0.1, seed=0)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state
    assert not torch.equal(a.detach(), torch.ones(2))


def test_a_state_dict_taken_before_the_first_step_seeds_nothing_and_resumes_the_same_stream():
    opt = ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1, seed=4)
    state = opt.state_dict()  # must not seed (with seed=None that could wait for other ranks)
    assert state["param_groups"][0]["o2nc"]["scaling"]["generator_state"] is None
    clone = ExponentiatedO2NC([torch.zeros(1, requires_grad=True)], lr=0.1, seed=4)
    clone.load_state_dict(state)
    assert draw_scales(clone, 5) == draw_scales(opt, 5)

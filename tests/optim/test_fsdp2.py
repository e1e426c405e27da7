"""ExponentiatedO2NC under FSDP2 (``fully_shard``, DTensor parameters) on 2 CPU ranks with gloo.

One 2-rank run (fsdp2_run.py, ~6 s) is checked against one unsharded process on the same global
batches (fsdp2_recipe.py); its distributed checkpoint is then read back by this single process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from tests.optim import fsdp2_recipe as recipe

SCRIPT = Path(__file__).with_name("fsdp2_run.py")
TOLERANCE = dict(rtol=1e-5, atol=1e-7)  # FSDP2 averages half-batch gradients: rounding only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("fsdp2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")])
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(SCRIPT), str(out),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out / "sharded.pt", weights_only=True), out


def unsharded_run(name: str):
    model = recipe.build_model()
    optimizer = recipe.build_optimizer(model.parameters(), name)
    for step, (x, y) in enumerate(recipe.batches()):
        recipe.train_step(model, optimizer, step, x, y, poison=True)
    return model, optimizer


def _lists(value):
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return [_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _close(a, b):
    return all(torch.allclose(x, y, **TOLERANCE) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("name", recipe.OPTIMIZERS)
def test_two_sharded_ranks_step_as_one_unsharded_process(sharded_run, name):
    result = sharded_run[0][name]
    model, optimizer = unsharded_run(name)
    assert _close(result["weights"], [p.detach() for p in model.parameters()])
    assert _close(result["x_bar"], optimizer.averaged_iterate())
    expected = {k: float(v) for k, v in optimizer.statistics().items()}
    assert result["statistics"] == pytest.approx(expected, rel=1e-5)  # global norms, V, certificate
    if name == "o2nc":  # rank 1's inf skipped the step on both ranks, as in one process
        assert result["skipped_steps"] == int(optimizer.skipped_steps) == 1
    assert result["state_is_dtensor_like_params"]
    assert all(torch.equal(a, b) for a, b in zip(result["eval_weights"], result["x_bar"]))
    assert all(torch.equal(a, b) for a, b in zip(result["weights_after_train"], result["weights"]))


@pytest.mark.slow
@pytest.mark.parametrize("form", ["sharded", "full"])
@pytest.mark.parametrize("name", recipe.OPTIMIZERS)
def test_distributed_state_dict_round_trips_into_a_fresh_optimizer(sharded_run, name, form):
    result = sharded_run[0][name]
    assert result["loaded_equals_saved"][form]  # every rank's shards, bit for bit
    # groups, generator, pending weight, counts (the full form turns AdamW's betas into a list)
    assert _lists(result["loaded_options"][form]) == _lists(result["saved_options"])
    (weights, scale), (original, original_scale) = (
        result["continued"][form],
        result["continued"]["original"],
    )
    assert scale == original_scale  # the same scalars drawn after the load
    assert all(torch.equal(a, b) for a, b in zip(weights, original, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("name", recipe.OPTIMIZERS)
def test_a_two_rank_distributed_checkpoint_loads_into_one_unsharded_process(sharded_run, name):
    result, out = sharded_run[0][name], sharded_run[1] / name
    model = recipe.build_model()
    with torch.no_grad():
        for p, saved in zip(model.parameters(), result["weights"], strict=True):
            p.copy_(saved)
    optimizer = recipe.build_optimizer(model.parameters(), name)
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=out / "dcp")  # reshards the 2 ranks' shards into full tensors
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    full = result["full_state"]
    loaded = get_optimizer_state_dict(model, optimizer)
    assert loaded["state"].keys() == full["state"].keys()
    for name, entries in full["state"].items():
        for key, value in entries.items():
            assert torch.equal(loaded["state"][name][key], value), (name, key)
    assert all(torch.equal(a, b) for a, b in zip(optimizer.averaged_iterate(), result["x_bar"]))
    for step, (x, y) in enumerate(recipe.batches(seed=1, steps=3)):
        recipe.train_step(model, optimizer, step, x, y, poison=False)
    weights, scale = result["continued"]["original"]
    assert optimizer.last_scale == scale
    assert _close([p.detach() for p in model.parameters()], weights)


@pytest.mark.slow
def test_replicated_placements_and_mixed_parameters_are_refused_in_one_line(sharded_run):
    replicated, mixed = sharded_run[0]["refusals"]
    assert "Shard placements only (FSDP2 fully_shard)" in replicated and "Replicate" in replicated
    assert "plain tensors mixed with DTensors" in mixed
    assert "\n" not in replicated + mixed

"""Two ranks of FSDP2 (``fully_shard`` on a CPU mesh, gloo) stepping ExponentiatedO2NC; launched by
test_fsdp2.py through ``torch.distributed.run``. Rank 0 writes OUT/sharded.pt: the full weights, x_bar
and statistics after the run, and how the state-dict round trips continued; every rank writes its
shards to the distributed checkpoint OUT/dcp (read back by the test in one process).

The model, its data and the run's recipe are in :mod:`fsdp2_recipe`, shared with the test's
unsharded reference.
"""

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

sys.path.insert(0, str(Path(__file__).parent))
import fsdp2_recipe as recipe


def sharded_model(mesh):
    model = recipe.build_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def full(tensors):
    return [t.full_tensor() if isinstance(t, DTensor) else t for t in tensors]


def local_state(optimizer):
    """This rank's shards of every per-parameter entry of the state dict."""
    return {
        (i, key): value.to_local().clone() if isinstance(value, DTensor) else value
        for i, entries in optimizer.state_dict()["state"].items()
        for key, value in entries.items()
    }


def copied(state_dict):
    """A copy of an optimizer state dict (its tensors cloned; DTensor views refuse deepcopy)."""
    return {
        "state": {k: {n: v.clone() for n, v in e.items()} for k, e in state_dict["state"].items()},
        "param_groups": copy.deepcopy(state_dict["param_groups"]),
    }


def non_tensor_state(state_dict):
    """Everything but the per-parameter tensors: the groups' scalars and the scaling's state."""
    return {key: value for key, value in state_dict.items() if key != "state"}


def refusals(mesh):
    """The one-line errors for what cannot work: replicated placements (tensor parallelism,
    HSDP) and plain tensors mixed with DTensors."""
    replicated = distribute_tensor(torch.zeros(4), mesh, [Replicate()])
    sharded = distribute_tensor(torch.zeros(4), mesh, [Shard(0)])
    messages = []
    for params in ([torch.nn.Parameter(replicated)], [torch.nn.Parameter(sharded), torch.zeros(2)]):
        try:
            recipe.build_optimizer(params)
        except ValueError as error:
            messages.append(str(error))
    return messages


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    results = {name: run(name, mesh, out / name) for name in recipe.OPTIMIZERS}
    results["refusals"] = refusals(mesh)
    if dist.get_rank() == 0:
        torch.save(results, out / "sharded.pt")
    dist.destroy_process_group()


def run(name: str, mesh, out: Path) -> dict:
    """Steps, statistics, eval/train and the state-dict round trips of one optimizer."""
    rank = dist.get_rank()
    model = sharded_model(mesh)
    optimizer = recipe.build_optimizer(model.parameters(), name)
    for step, (x, y) in enumerate(recipe.batches()):
        half = slice(rank * len(x) // 2, (rank + 1) * len(x) // 2)
        recipe.train_step(model, optimizer, step, x[half], y[half], poison=rank == 1)
    saved_state = optimizer.state_dict()["state"]
    placements_ok = len(saved_state) == 4 and all(
        isinstance(v, DTensor) and v.placements == p.placements and v.shape == p.shape
        for p, i in zip(model.parameters(), range(4), strict=True)
        for key, v in saved_state[i].items()
        if key != "step"
    )
    result = {
        "weights": full(model.parameters()),
        "x_bar": full(optimizer.averaged_iterate()),
        "statistics": {k: float(v) for k, v in optimizer.statistics().items()},
        "skipped_steps": int(getattr(optimizer, "skipped_steps", 0)),
        "state_is_dtensor_like_params": placements_ok,
    }
    optimizer.eval()
    result["eval_weights"] = full(model.parameters())
    optimizer.train()
    result["weights_after_train"] = full(model.parameters())

    # the state-dict round trips: sharded and full form, into fresh optimizers
    forms = {"sharded": StateDictOptions(), "full": StateDictOptions(full_state_dict=True)}
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=out / "dcp")
    result["full_state"] = copied(get_optimizer_state_dict(model, optimizer, options=forms["full"]))
    twins = {"original": (model, optimizer)}
    result["loaded_equals_saved"], result["loaded_options"] = {}, {}
    result["saved_options"] = non_tensor_state(optimizer.state_dict())
    for form, options in forms.items():
        # a copy, as a checkpoint is: torch's load_state_dict adopts the tensors it is given,
        # which here are the live optimizer's own (for every torch optimizer)
        saved = copied(get_optimizer_state_dict(model, optimizer, options=options))
        twin = sharded_model(mesh)
        with torch.no_grad():
            for p, q in zip(twin.parameters(), model.parameters(), strict=True):
                p.copy_(q)
        twin_optimizer = recipe.build_optimizer(twin.parameters(), name)
        set_optimizer_state_dict(twin, twin_optimizer, saved, options=options)
        a, b = local_state(optimizer), local_state(twin_optimizer)
        result["loaded_equals_saved"][form] = a.keys() == b.keys() and all(
            torch.equal(a[k], b[k]) for k in a
        )
        result["loaded_options"][form] = non_tensor_state(twin_optimizer.state_dict())
        twins[form] = (twin, twin_optimizer)
    continued = {}
    for form, (m, opt) in twins.items():
        for step, (x, y) in enumerate(recipe.batches(seed=1, steps=3)):
            half = slice(rank * len(x) // 2, (rank + 1) * len(x) // 2)
            recipe.train_step(m, opt, step, x[half], y[half], poison=False)
        continued[form] = (full(m.parameters()), opt.last_scale)
    result["continued"] = continued
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]))

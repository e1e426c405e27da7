"""The sharded step's cost: ``ExponentiatedO2NC.step()`` against ``torch.optim.AdamW.step()`` on
the same FSDP2 model (``fully_shard`` per layer on a CPU mesh), on 2 ranks with gloo.

    python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.sharded_step

Workload: an MLP of 4 hidden layers of 512 (about 1.1M parameters, each rank holding half),
gradients from one backward, then the optimizer's step alone, timed by
``torch.utils.benchmark.Timer.blocked_autorange`` on each rank (no collective in either step; the
default options, ExponentiatedO2NC also with ``average=True``, and O2NCAdamW: AdamW with random
scaling, whose base steps the DTensors itself). Rank 0 prints the medians
and their ratios to AdamW's with torch's default (on CPU DTensors: the per-tensor loop), each
AdamW also with ``foreach=True``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.utils.benchmark import Timer

from lightning_o2nc import ExponentiatedO2NC, O2NCAdamW


def sharded_mlp(mesh) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(256, 512), torch.nn.GELU()]
    for _ in range(3):
        layers += [torch.nn.Linear(512, 512), torch.nn.GELU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(512, 10))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    arms = {
        "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-3),
        "AdamW(foreach=True)": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
        "O2NCAdamW": lambda p: O2NCAdamW(p, lr=1e-3),
        "O2NCAdamW(foreach=True)": lambda p: O2NCAdamW(p, lr=1e-3, foreach=True),
        "ExponentiatedO2NC": lambda p: ExponentiatedO2NC(p, lr=1e-3),
        "ExponentiatedO2NC(average=True)": lambda p: ExponentiatedO2NC(p, lr=1e-3, average=True),
    }
    medians = {}
    for name, build in arms.items():
        model = sharded_mlp(mesh)
        optimizer = build(model.parameters())
        model(torch.randn(64, 256)).square().mean().backward()
        optimizer.step()  # state made
        timer = Timer("optimizer.step()", globals={"optimizer": optimizer}, num_threads=1)
        medians[name] = timer.blocked_autorange(min_run_time=2.0).median
        dist.barrier()
    if dist.get_rank() == 0:
        base = medians["AdamW"]
        for name, median in medians.items():
            print(f"{name:34s} {median * 1e3:8.3f} ms  {median / base:5.2f}x AdamW")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

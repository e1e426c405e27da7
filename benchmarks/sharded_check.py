"""The sharded paths on one device: ``gpu_check.sh``'s ``sharded`` part (one GPU, so one rank).

- ``fully_shard`` on a mesh of 1 with ``ExponentiatedO2NC`` and ``O2NCAdamW``: the DTensor path
  (local flat buffers, DTensor state, reductions over the mesh) against the same optimizer on an
  unsharded copy, step by step on the same batches: the largest weight and x_bar differences and
  the statistics of both;
- a one-rank ``FSDPStrategy`` (FSDP1) fit of ``O2NCModule`` with its monitor and x_bar.

    python -m benchmarks.gpu_check sharded --out DIR      # on the GPU machine
    O2NC_GPU_CHECK_DRY_RUN=1 python -m benchmarks.gpu_check sharded   # the same on the CPU (gloo)
"""

from __future__ import annotations

import copy
import os
import socket
from typing import Any

import torch

STEPS = 20


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _optimizers(name: str, params: Any) -> Any:
    from lightning_o2nc import ExponentiatedO2NC, O2NCAdamW

    if name == "o2nc":
        return ExponentiatedO2NC(params, lr=0.05, average=True, skip_nonfinite=True, seed=1)
    return O2NCAdamW(params, lr=1e-3, average=True, seed=1)


def fully_shard_against_unsharded(device: str) -> dict[str, Any]:
    """Both optimizers, sharded (mesh of 1) and unsharded, ``STEPS`` steps on the same batches."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", _free_port())
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    try:
        mesh = init_device_mesh(device, (1,))
        results = {}
        for name in ("o2nc", "o2nc_adamw"):
            torch.manual_seed(0)
            plain = torch.nn.Sequential(
                torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 10)
            ).to(device)
            sharded = copy.deepcopy(plain)
            for layer in sharded:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(sharded, mesh=mesh)
            optimizers = [
                _optimizers(name, plain.parameters()),
                _optimizers(name, sharded.parameters()),
            ]
            for opt in optimizers:
                opt.statistics()  # track V from the first step
            for _ in range(STEPS):
                x = torch.randn(32, 64, device=device)
                y = torch.randint(0, 10, (32,), device=device)
                for model, opt in zip((plain, sharded), optimizers, strict=True):
                    torch.nn.functional.cross_entropy(model(x), y).backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            full = [p.full_tensor() for p in sharded.parameters()]
            x_bar = [t.full_tensor() for t in optimizers[1].averaged_iterate()]
            results[name] = {
                "max_weight_difference": max(
                    float((a - b).abs().max())
                    for a, b in zip(plain.parameters(), full, strict=True)
                ),
                "max_x_bar_difference": max(
                    float((a - b).abs().max())
                    for a, b in zip(optimizers[0].averaged_iterate(), x_bar, strict=True)
                ),
                "statistics_unsharded": {
                    k: float(v) for k, v in optimizers[0].statistics().items()
                },
                "statistics_sharded": {k: float(v) for k, v in optimizers[1].statistics().items()},
                "state_is_dtensor": all(
                    type(v).__name__ == "DTensor"
                    for entries in optimizers[1].state_dict()["state"].values()
                    for k, v in entries.items()
                    if k != "step"
                ),
            }
        return results
    finally:
        dist.destroy_process_group()


def fsdp1_fit(accelerator: str) -> dict[str, Any]:
    """A one-rank ``FSDPStrategy`` fit of ``O2NCModule`` (Lightning refuses FSDP1 on the CPU)."""
    if accelerator == "cpu":
        return {"skipped": "FSDPStrategy refuses a CPU accelerator"}
    import lightning.pytorch as pl

    from lightning_o2nc.lightning import O2NCModule, SyntheticDataModule

    module = O2NCModule("mlp", input_shape=(1, 8, 8), num_classes=4, lr=0.05)
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, strategy="fsdp", max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=SyntheticDataModule(num_samples=256, batch_size=32, seed=0))
    return {"metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}


def run(device: str) -> dict[str, Any]:
    return {
        "fully_shard": fully_shard_against_unsharded(device),
        "fsdp1": fsdp1_fit("gpu" if device == "cuda" else "cpu"),
    }

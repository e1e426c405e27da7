"""FSDP2 sharding of a LightningModule's backbone, for ``O2NCModule(shard=True)``."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..optim.sharded import is_dtensor
from .errors import RunConfigError

__all__ = ["shard_blocks"]


def shard_blocks(module: Any, backbone: nn.Module) -> None:
    """``fully_shard`` each top-level block of ``backbone`` that holds parameters, then ``module``,
    over the data-parallel dimension of the strategy's device mesh (the recipe of Lightning's
    ``ModelParallelStrategy``). A module already sharded (``configure_model`` runs once per
    stage) is left as it is.

    Raises:
        RunConfigError: the Trainer's strategy gives no device mesh (not ``ModelParallelStrategy``).
    """
    if any(is_dtensor(p) for p in module.parameters()):
        return
    try:
        mesh = module.device_mesh
    except (AttributeError, RuntimeError):
        mesh = None
    if mesh is None:
        raise RunConfigError(
            "O2NCModule(shard=True) shards with FSDP2 over the strategy's device mesh: fit with "
            "Trainer(strategy=ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1))"
        )
    from torch.distributed.fsdp import fully_shard

    if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names:
        mesh = mesh["data_parallel"]
    for block in backbone.children():
        if any(True for _ in block.parameters()):
            fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)

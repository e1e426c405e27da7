"""x_bar from a distributed checkpoint: the directory that ``ModelParallelStrategy`` writes by default.

Such a checkpoint is a ``torch.distributed.checkpoint`` directory: the module's and optimizers'
tensors as shards (``"state_dict"``, ``"optimizer_0"``, ...), and the rest of Lightning's checkpoint
(callback states included) in one ``meta.pt`` file beside them. Outside fit (``trainer.test(ckpt_path=
...)``) Lightning loads the module only, so :class:`~.averaged_iterate.AveragedIterate` reads the
optimizers' x_bar here: it rebuilds each averaging optimizer over the module's (sharded) parameters
and lets the distributed checkpoint fill its state, resharded to this run's ranks.

The directory layout is Lightning's (``lightning.fabric.strategies.model_parallel``, checked with
Lightning 2.6); this module is the one place that knows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from .checkpointed_optimizers import rebuild_optimizer

__all__ = ["is_distributed_checkpoint", "metadata", "read_optimizers"]

#: Lightning's file of everything but the sharded tensors, inside the checkpoint directory.
METADATA_FILE = "meta.pt"


def is_distributed_checkpoint(path: Any) -> bool:
    """``path`` is a checkpoint directory (written with ``save_distributed_checkpoint=True``)."""
    return Path(path).is_dir()


def metadata(path: Any) -> dict[str, Any]:
    """Lightning's checkpoint without the sharded tensors (callback states, loop progress)."""
    return torch.load(Path(path) / METADATA_FILE, map_location="cpu", weights_only=True)


def read_optimizers(path: Any, module: nn.Module, layout: list[dict[str, Any]]) -> list[Any]:
    """The averaging optimizers of ``layout`` over ``module``'s parameters, loaded from the
    checkpoint directory ``path`` (on every rank: loading is collective)."""
    parameters = dict(module.named_parameters())
    optimizers = []
    for entry in layout:
        groups = [{"params": [parameters[n] for n in names]} for names in entry["param_groups"]]
        opt = rebuild_optimizer(entry, groups, None)
        if opt is None:
            continue
        key = f"optimizer_{entry['optimizer_index']}"
        state = {key: get_optimizer_state_dict(module, opt)}
        dcp.load(state, checkpoint_id=path)
        set_optimizer_state_dict(module, opt, state[key])
        optimizers.append(opt)
    return optimizers

"""DTensor parameters (FSDP2 ``fully_shard``): the layout of the optimizer's state and its reductions.

Under FSDP2 every parameter and gradient is a DTensor sharded on a device mesh, each rank holding
one shard (placements ``(Shard(0),)``). The O2NC update is elementwise given the step's scalars, and
those scalars (ζ, η, s, P, k, the weight sums) are the same on every rank, so each rank steps its own
shard and the sharded run moves exactly as an unsharded one would.

Layout, chosen for speed: a rank keeps its shards of Δ and u as views of one *local* flat buffer per
group, device and dtype, exactly as the unsharded optimizer does (:mod:`~lightning_o2nc.optim.flat`),
and the kernels run on plain local tensors (the parameters', gradients' and buffers' local shards).
Routing each operation through DTensor's dispatch instead costs a sharding propagation per call;
here the step is the unsharded step on this rank's elements, with the same multi-tensor and
flat-buffer paths. The per-parameter state entries are DTensors that wrap those views with the
parameter's mesh, placements, shape and stride (:func:`as_dtensor_like`), so
``torch.distributed.checkpoint`` saves every rank's shard and reshards them on load.

Global quantities are sums over the mesh, reduced only when read:

- ``||Delta||^2`` and V are sums of squares over all elements, so each rank keeps its partial sum
  (V's recursion is linear in ``||d||^2``, so the per-rank partial Vs add up to the global V) and
  :func:`global_sums` adds them over the mesh when ``statistics()`` (or a state dict) asks;
- ``skip_nonfinite``'s verdict is the one per-step collective: one rank's inf skips the step on all
  (:func:`finite_everywhere`).

Supported: every parameter a DTensor whose placements are all ``Shard`` on one device mesh (FSDP2
``fully_shard``, also on a multi-dimensional mesh of shards). Replicated or partial placements
(tensor parallelism, HSDP's replicated dimension) would count an element once per replica in the
norms, so they are refused with a one-line error. Whatever private DTensor API this needs lives here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
except ImportError:  # a torch without public DTensors (before 2.5, or built without distributed)

    class DTensor:  # type: ignore[no-redef]  # nothing is an instance: every tensor is plain
        pass


if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

__all__ = [
    "as_dtensor_like",
    "finite_everywhere",
    "global_sums",
    "is_dtensor",
    "is_first_shard",
    "load_shards",
    "local_tensor",
    "mesh_of",
    "save_global_sums",
    "shard_like",
]

_SUPPORTED = (
    "ExponentiatedO2NC steps plain tensors or DTensors sharded on one device mesh with Shard "
    "placements only (FSDP2 fully_shard)"
)


def mesh_of(params: Iterable[Tensor]) -> DeviceMesh | None:
    """The device mesh the parameters are sharded on, or ``None`` when none is a DTensor.

    Raises:
        ValueError: plain tensors mixed with DTensors, two meshes, or a placement other than
            ``Shard`` (tensor parallelism, HSDP's replicated dimension, partial values).
    """
    mesh, plain = None, False
    for p in params:
        if not isinstance(p, DTensor):
            plain = True
        elif mesh is None:
            mesh = p.device_mesh
        elif p.device_mesh != mesh:
            raise ValueError(
                f"{_SUPPORTED}; got parameters on two meshes: {mesh} and {p.device_mesh}"
            )
        if isinstance(p, DTensor) and not all(type(pl) is Shard for pl in p.placements):
            raise ValueError(f"{_SUPPORTED}; got a parameter with placements {tuple(p.placements)}")
        if plain and mesh is not None:
            raise ValueError(
                f"{_SUPPORTED}; got plain tensors mixed with DTensors (apply fully_shard to the "
                "root module too, so every parameter is sharded)"
            )
    return mesh


def is_dtensor(t: Any) -> bool:
    """``t`` is a DTensor (a sharded parameter or state entry)."""
    return isinstance(t, DTensor)


def local_tensor(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor as the plain tensor that holds it (no copy), else ``t``.

    ``DTensor._local_tensor`` is what ``to_local()`` returns without autograd; read directly, since
    ``to_local()`` of an ``nn.Parameter`` wraps its result anew at every call.
    """
    return t._local_tensor if isinstance(t, DTensor) else t


def as_dtensor_like(local: Tensor, like: Tensor) -> Tensor:
    """``local`` (this rank's shard, shared, not copied) as a DTensor laid out as ``like``."""
    if not isinstance(like, DTensor):
        return local
    return DTensor.from_local(
        local, like.device_mesh, like.placements, run_check=False,
        shape=like.shape, stride=like.stride(),
    )  # fmt: skip


def shard_like(value: Any, like: Tensor) -> Any:
    """A full, plain state tensor (a one-file checkpoint) as this rank's shard of ``like``'s
    layout, sliced locally without communication; anything else is returned as it is."""
    if (
        isinstance(like, DTensor)
        and isinstance(value, Tensor)
        and not isinstance(value, DTensor)
        and value.shape == like.shape
    ):
        value = value.to(local_tensor(like).device)
        return distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)
    return value


def save_global_sums(saved_groups: list[dict], groups: list[dict], key: str) -> None:
    """Put the global value of the per-rank partial sum ``groups[i][key]`` into the state dict's
    ``saved_groups[i][key]`` (one all-reduce: every rank calls it, as for any state dict)."""
    mesh = mesh_of(p for group in groups for p in group["params"])
    device = local_tensor(groups[0]["params"][0]).device
    sums = global_sums([group[key] for group in groups], mesh, device).tolist()
    for saved, value in zip(saved_groups, sums, strict=True):
        saved[key] = value


def load_shards(groups: list[dict], state: dict, key: str) -> None:
    """After torch's ``load_state_dict`` of an optimizer over DTensors: full plain state tensors
    (a one-file checkpoint) become this rank's shards, and the global sums ``group[key]`` stay on
    the first shard only, the others' parts restarting from 0, so their sum is the saved value."""
    mesh = mesh_of(p for group in groups for p in group["params"])
    for group in groups:
        for p in group["params"]:
            entries = state.get(p, {})
            entries.update({k: shard_like(v, p) for k, v in entries.items()})
        if not is_first_shard(mesh):
            group[key] = 0.0


def _reduce(tensor: Tensor, mesh: DeviceMesh, op: Any) -> Tensor:
    """All-reduce over every dimension of the mesh (one call per dimension; one for FSDP2)."""
    if mesh.ndim == 1:
        dist.all_reduce(tensor, op=op, group=mesh.get_group())
    else:
        for dim in range(mesh.ndim):
            dist.all_reduce(tensor, op=op, group=mesh.get_group(dim))
    return tensor


def finite_everywhere(local_finite: Tensor, mesh: DeviceMesh) -> Tensor:
    """A 0-d bool tensor: every rank's gradients are finite (the AND of ``local_finite`` over the
    mesh), so every rank skips or takes the step together."""
    flag = local_finite.to(torch.int32)
    return _reduce(flag, mesh, dist.ReduceOp.MIN).to(torch.bool)


def global_sums(values: list[float | Tensor], mesh: DeviceMesh, device: torch.device) -> Tensor:
    """Per-rank partial sums (floats or 0-d tensors) added over the mesh, as one float64 tensor
    of ``len(values)`` entries on ``device`` (one all-reduce for all of them)."""
    parts = [
        v.to(device, torch.float64)
        if isinstance(v, Tensor)
        else torch.full((), float(v), dtype=torch.float64, device=device)
        for v in values
    ]
    stacked = torch.stack(parts)
    return _reduce(stacked, mesh, dist.ReduceOp.SUM)


def is_first_shard(mesh: DeviceMesh) -> bool:
    """This rank holds coordinate 0 on every mesh dimension (it keeps a global sum on load)."""
    coordinate = mesh.get_coordinate()
    return coordinate is not None and all(c == 0 for c in coordinate)

"""The functional core of :class:`~lightning_o2nc.optim.o2nc.ExponentiatedO2NC`, as in torch.optim.

:func:`o2nc` is one step on lists of tensors: it works out the step's :class:`Coefficients` once
and dispatches to one of three kernels with one signature. :func:`average_o2nc` then moves x_bar
and V. Each kernel takes ``(params, grads, deltas, deviations, coefficients, all_finite, flat)``,
where the dispatcher has worked out the :class:`Coefficients` once, and performs per tensor

    D <- discount D + grad g + decay x;   x <- x + move D;   u <- u + deviation D

(u only with averaging), where the buffer D holds Δ up to a scalar: ``Delta = P D``. Carrying
Δ's discount ζ in P instead of multiplying the buffer by it (``P_n = zeta_n P_{n-1}``) saves one of
the two passes over Δ each step; the buffer takes the discount (``discount = zeta P``) and P
restarts at 1 only when P would fall below 2^-10, or at every step of the masked kernel, whose
P must not depend on the device's verdict. With ``update_scale=None`` the buffers hold Δ itself.

The reductions (``||u||^2`` for V, ``||Delta||^2`` for the statistics) are not the kernels'
business: the optimizer takes them over its flat buffers (:mod:`~lightning_o2nc.optim.flat`), one
call per buffer, and only when something reads them.

- :func:`single_tensor_o2nc`: a loop over tensors, each updated while it is in cache (fastest on
  the CPU for large models);
- :func:`multi_tensor_o2nc`: torch's multi-tensor (``_foreach``) kernels, per device and dtype
  (fastest on CUDA, and on the CPU for small models, where the cost is one call per tensor);
- :func:`masked_o2nc`: the update applied only where a 0-d bool tensor holds, decided on the device
  (``skip_nonfinite``); ``move`` and ``deviation`` are then 0-d tensors.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Coefficients",
    "FlatBuffers",
    "all_gradients_finite",
    "as_device_tensors",
    "average_o2nc",
    "averaged_iterates",
    "by_device_and_dtype",
    "masked_o2nc",
    "multi_tensor_o2nc",
    "o2nc",
    "single_tensor_o2nc",
    "sqrt_of",
    "switch_weights_",
    "total",
    "where",
]


_RESCALE_BELOW = 2.0**-10  # fold a buffer's scale (P of Δ, k of u) into it before it gets tiny


class FlatBuffers(NamedTuple):
    """Flat buffers that the ``deltas`` (and ``deviations``) lists tile exactly, one per device
    and dtype, paired by position: whole-list operations become one call each."""

    deltas: list[Tensor]
    deviations: list[Tensor] | None


class Coefficients(NamedTuple):
    """The step's scalars, for the buffers D (``Delta = P D``): ``discount`` (1, or ``zeta P`` when
    P restarts at 1), ``grad = -/+ zeta eta / P``, ``decay = -zeta eta lambda / P``,
    ``move = s P`` and ``deviation = s P / k`` (``None`` without averaging), with P the new scale."""

    discount: float
    grad: float
    decay: float
    move: float | Tensor
    deviation: float | Tensor | None


def o2nc(
    params: list[Tensor],
    grads: list[Tensor],
    deltas: list[Tensor],
    deviations: list[Tensor] | None,
    *,
    lr: float,
    beta: float,
    mu: float,
    weight_decay: float,
    maximize: bool,
    scale: float,
    deviation_scale: float = 1.0,
    all_finite: Tensor | None = None,
    foreach: bool = False,
    flat: FlatBuffers | None = None,
    update_scale: float | None = None,
    grad_weight: float = 1.0,
) -> float:
    """One O2NC step on lists of tensors, in place (functional API, like ``torch.optim.sgd.sgd``).

    ``Delta <- zeta (Delta - eta g)`` with ``g = w (+/-) grad + weight_decay x`` (w is
    ``grad_weight``, uniform scaling's importance weight, which multiplies the loss gradient only),
    ``x <- x + s Delta``
    and, when ``deviations`` (u) are given, ``u <- u + (s / deviation_scale) Delta``. With
    ``all_finite`` (a 0-d bool tensor) the step is applied only where it holds, decided on the device.
    ``flat``, when the lists are views that tile flat buffers exactly, lets the multi-tensor kernel
    scale Δ and move u with one call per buffer (the others ignore it).

    ``update_scale``: ``None``, ``deltas`` hold Δ; else they hold ``Delta / update_scale`` (P), and
    the new P is returned (see the module docstring). Buffers of parameters that are not stepped
    now keep Δ only if the caller multiplies them by ``old P / new P``.

    Returns:
        The new update scale P (1.0 with ``update_scale=None``).
    """
    zeta = beta / (1.0 + lr * mu)
    scale_before = 1.0 if update_scale is None else update_scale
    if all_finite is not None and scale_before != 1.0:  # a scaled buffer from an unmasked run
        for delta in deltas:
            delta.mul_(scale_before)
        scale_before = 1.0
    new_scale = zeta * scale_before
    if update_scale is None or all_finite is not None or new_scale < _RESCALE_BELOW:
        discount, new_scale = new_scale, 1.0  # the buffer takes the discount, P restarts at 1
    else:
        discount = 1.0
    step = zeta * lr / new_scale
    grad_step = step * grad_weight
    move: float | Tensor = scale * new_scale
    if all_finite is not None:
        move = where(all_finite, move, 0.0)
    coefficients = Coefficients(
        discount=discount,
        grad=grad_step if maximize else -grad_step,
        decay=-step * weight_decay,
        move=move,
        deviation=None if deviations is None else move / deviation_scale,
    )
    if all_finite is not None:
        kernel = masked_o2nc
    elif foreach:
        kernel = multi_tensor_o2nc
    else:
        kernel = single_tensor_o2nc
    kernel(params, grads, deltas, deviations, coefficients, all_finite, flat)
    return new_scale


def total(values: list[Tensor | float], device: torch.device) -> Tensor:
    """The sum of 0-d tensors (on any devices) or floats as one tensor on ``device``."""
    values = [v if isinstance(v, Tensor) else torch.full((), v, device=device) for v in values]
    if not values:
        return torch.zeros((), dtype=torch.float32, device=device)
    if len(values) == 1 and values[0].device == device:
        return values[0]
    return torch.stack([v.to(device) for v in values]).sum()


def sqrt_of(value: float | Tensor) -> float | Tensor:
    """The square root of a host float or a tensor, without moving either."""
    return value.sqrt() if isinstance(value, Tensor) else math.sqrt(value)


def as_device_tensors(
    values: dict[str, float | Tensor], device: torch.device, dtype: torch.dtype
) -> dict[str, Tensor]:
    """Host floats (the CPU's statistics) and 0-d tensors as 0-d tensors on ``device``.

    One fill per float: on the CPU, measured against one tensor made from all of them and
    unbound, it costs less per step of a monitor that reads every step."""
    return {
        name: value.to(device)
        if isinstance(value, Tensor)
        else torch.full((), value, dtype=dtype, device=device)
        for name, value in values.items()
    }


def all_gradients_finite(grads: list[Tensor | None], device: torch.device) -> Tensor:
    """A 0-d bool tensor on ``device``: every given gradient is finite (no host sync)."""
    flags = [torch.isfinite(g).all().to(device, non_blocking=True) for g in grads if g is not None]
    if not flags:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack(flags).all()


def average_o2nc(
    flat_deviations: list[Tensor],
    squared_deviation: float | Tensor | None,
    *,
    deviation_scale: float,
    weight_sum: float | Tensor,
    variance: float | Tensor,
    discount: float,
    all_finite: Tensor | None = None,
) -> tuple[float, float | Tensor, float | Tensor]:
    """x_bar and V after the move (the recursions are in :mod:`~lightning_o2nc.optim.o2nc`).

    x_bar is stored as its deviation from the weights, ``x - x_bar = k u``: one buffer u per
    parameter and one scalar k per group. Since ``d_n = (x_{n-1} - x_bar_{n-1}) + s_n Delta_n``,
    the kernels add ``(s_n / k) Delta_n`` to u in the step's own pass over each tensor, which makes
    ``k u = d_n``. Then ``x_n - x_bar_n = (1 - a_n) d_n`` only rescales k.

    Args:
        flat_deviations: the group's u, as the flat buffers that hold every parameter's u (also of
            parameters that did not move: they share k).
        squared_deviation: ``||u||^2`` over the group when V is tracked, else ``None`` (V is kept
            as is); V needs ``||d_n||^2 = k^2 ||u||^2``, its one reduction.
        deviation_scale: k; weight_sum: A_{n-1}; variance: V_{n-1}; discount: x_bar's beta.
        all_finite: with ``skip_nonfinite``, whether the step happened (decided on the device).

    Returns:
        ``(k, A_n, V_n)``; u is rescaled when k falls below 2^-10. With ``all_finite`` k stays 1
        and u is multiplied on the device.
    """
    new_weight_sum = discount * weight_sum + 1.0
    newest_weight = 1.0 / new_weight_sum  # a_n
    k = deviation_scale
    if all_finite is None:
        new_k = (1.0 - newest_weight) * k  # x_n - x_bar_n = (1 - a_n) d_n
        if new_k < _RESCALE_BELOW:
            for flat in flat_deviations:
                flat.mul_(new_k)
            new_k = 1.0
    else:  # a skipped step multiplies by exactly 1
        new_k = k
        keep = where(all_finite, 1.0 - newest_weight, 1.0)
        for flat in flat_deviations:
            flat.mul_(keep)
    if squared_deviation is not None:
        # V_n = (1 - a) V + (1 - a) a ||d_n||^2, with ||d_n||^2 = k^2 ||u||^2
        keep = 1.0 - newest_weight
        new_variance = keep * variance + (keep * newest_weight * k * k) * squared_deviation
        variance = where(all_finite, new_variance, variance)
    return new_k, where(all_finite, new_weight_sum, weight_sum), variance


@torch.no_grad()
def switch_weights_(
    param_groups: list[dict[str, Any]], state: dict[Tensor, dict[str, Any]], to_average: bool
) -> None:
    """``to_average``: stash x in ``state[p]["training_weights"]`` and write x_bar = x - k u into
    the weights; otherwise restore x from there, bit for bit (schedule_free's train/eval)."""
    for group in param_groups:
        for p in group["params"]:
            p_state = state.get(p, {})
            if "iterate_deviation" not in p_state:
                continue
            if to_average:
                p_state["training_weights"] = p.detach().clone()
                _to_averaged_iterate_(p, p_state["iterate_deviation"], group["deviation_scale"])
            else:
                p.copy_(p_state.pop("training_weights"))


@torch.no_grad()
def averaged_iterates(
    param_groups: list[dict[str, Any]], state: dict[Tensor, dict[str, Any]], training: bool
) -> list[Tensor]:
    """x_bar of every parameter as new tensors (the weights themselves when they hold x_bar)."""
    averages = []
    for group in param_groups:
        for p in group["params"]:
            average = p.detach().clone()
            p_state = state.get(p, {})
            if training and "iterate_deviation" in p_state:
                _to_averaged_iterate_(
                    average, p_state["iterate_deviation"], group["deviation_scale"]
                )
            averages.append(average)
    return averages


def _to_averaged_iterate_(weights: Tensor, deviation: Tensor, scale: float) -> Tensor:
    """x_bar = x - k u in place; eval() and averaged_iterate() share it so they agree bit for bit."""
    return weights.sub_(deviation, alpha=scale)


def single_tensor_o2nc(
    params: list[Tensor],
    grads: list[Tensor],
    deltas: list[Tensor],
    deviations: list[Tensor] | None,
    c: Coefficients,
    all_finite: Tensor | None,
    flat: FlatBuffers | None = None,
) -> None:
    """One tensor at a time: Δ, x and u in one pass over each tensor, while it is in cache."""
    for i, (p, g, delta) in enumerate(zip(params, grads, deltas, strict=True)):
        if c.discount != 1.0:
            delta.mul_(c.discount)
        delta.add_(g, alpha=c.grad)
        if c.decay:
            delta.add_(p, alpha=c.decay)
        p.add_(delta, alpha=c.move)
        if deviations is not None:
            deviations[i].add_(delta, alpha=c.deviation)


def multi_tensor_o2nc(
    params: list[Tensor],
    grads: list[Tensor],
    deltas: list[Tensor],
    deviations: list[Tensor] | None,
    c: Coefficients,
    all_finite: Tensor | None,
    flat: FlatBuffers | None = None,
) -> None:
    """The same update with multi-tensor (foreach) kernels, per device and dtype; with ``flat``,
    Δ's discount and u's move are one call per flat buffer (on the CPU a foreach call costs about
    as much per tensor as a call of its own)."""
    lists = (params, grads, deltas) if deviations is None else (params, grads, deltas, deviations)
    if flat is None:
        buckets = by_device_and_dtype(*lists)
        if c.discount != 1.0:
            for d_list in (bucket[2] for bucket in buckets):
                torch._foreach_mul_(d_list, c.discount)
    else:
        buckets = [lists] if len(flat.deltas) == 1 else by_device_and_dtype(*lists)
        if c.discount != 1.0:
            for flat_delta in flat.deltas:
                flat_delta.mul_(c.discount)
    for p_list, g_list, d_list, *u_lists in buckets:
        torch._foreach_add_(d_list, g_list, alpha=c.grad)
        if c.decay:
            torch._foreach_add_(d_list, p_list, alpha=c.decay)
        torch._foreach_add_(p_list, d_list, alpha=c.move)
        if u_lists and flat is None:
            torch._foreach_add_(u_lists[0], d_list, alpha=c.deviation)
    if flat is not None and deviations is not None:
        for flat_u, flat_delta in zip(flat.deviations, flat.deltas, strict=True):
            flat_u.add_(flat_delta, alpha=c.deviation)


def masked_o2nc(
    params: list[Tensor],
    grads: list[Tensor],
    deltas: list[Tensor],
    deviations: list[Tensor] | None,
    c: Coefficients,
    all_finite: Tensor | None,
    flat: FlatBuffers | None = None,
) -> None:
    """The same update where ``all_finite`` holds; elsewhere Δ, x and u keep their values.

    Δ is only replaced through ``torch.where``, so it stays finite, and a skipped step adds
    ``0 * Delta = 0`` to x and u (``move`` and ``deviation`` are 0 then).
    """
    for i, (p, g, delta) in enumerate(zip(params, grads, deltas, strict=True)):
        new_delta = delta.mul(c.discount).add_(g, alpha=c.grad)
        if c.decay:
            new_delta.add_(p, alpha=c.decay)
        delta.copy_(torch.where(all_finite, new_delta, delta))
        p.add_(delta * c.move)
        if deviations is not None:
            deviations[i].add_(delta * c.deviation)


def by_device_and_dtype(*tensor_lists: list[Tensor]) -> list[tuple[list[Tensor], ...]]:
    """Parallel tensor lists split by the first list's (device, dtype), for foreach kernels.

    Lists whose tensors already share one device and dtype (the usual case) come back as they are.
    """
    first = tensor_lists[0]
    if not first:
        return []
    dtype, device_index = first[0].dtype, first[0].get_device()  # get_device(): -1 on the CPU
    if all(t.dtype is dtype and t.get_device() == device_index for t in first):
        return [tensor_lists]
    buckets: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], ...]] = defaultdict(
        lambda: tuple([] for _ in tensor_lists)
    )
    for tensors in zip(*tensor_lists, strict=True):
        bucket = buckets[(tensors[0].device, tensors[0].dtype)]
        for bucket_list, tensor in zip(bucket, tensors, strict=True):
            bucket_list.append(tensor)
    return list(buckets.values())


def where(condition: Tensor | None, new: Any, old: Any) -> Any:
    """``new`` when there is no condition, else ``torch.where(condition, new, old)`` on the device.

    Host floats become device tensors through ``torch.full`` (a fill kernel), never through a
    host-to-device copy, so no step ever waits for the device.
    """
    if condition is None:
        return new

    def on_device(value: Any) -> Tensor:
        if isinstance(value, Tensor):
            return value.to(condition.device, torch.float64)
        return torch.full((), float(value), dtype=torch.float64, device=condition.device)

    return torch.where(condition, on_device(new), on_device(old))

"""The functional core of :class:`~lightning_o2nc.optim.o2nc.ExponentiatedO2NC`, as in torch.optim.

:func:`o2nc` is one step on lists of tensors: it works out the step's :class:`Coefficients` once
and dispatches to one of three kernels with one signature. :func:`average_o2nc` then moves x_bar
and V. Each kernel takes ``(params, grads, deltas, deviations, coefficients, all_finite, track_norm)``,
where the dispatcher has worked out the :class:`Coefficients` once, and performs per tensor

    Delta <- zeta Delta + grad g + decay x;   x <- x + move Delta;   u <- u + deviation Delta

(u only with averaging). With ``track_norm`` it also returns ``||u||^2`` and ``||Delta||^2`` per
tensor, for V and :meth:`~lightning_o2nc.optim.o2nc.ExponentiatedO2NC.statistics`.

- :func:`single_tensor_o2nc`: a loop over tensors, each updated while it is in cache (fastest on
  the CPU, where it also takes ``||u||^2`` right after updating u);
- :func:`multi_tensor_o2nc`: torch's multi-tensor (``_foreach``) kernels, per device and dtype
  (fastest on CUDA);
- :func:`masked_o2nc`: the update applied only where a 0-d bool tensor holds, decided on the device
  (``skip_nonfinite``); ``move`` and ``deviation`` are then 0-d tensors.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Coefficients",
    "all_gradients_finite",
    "average_o2nc",
    "averaged_iterates",
    "by_device_and_dtype",
    "masked_o2nc",
    "multi_tensor_o2nc",
    "o2nc",
    "single_tensor_o2nc",
    "squared_norm_parts",
    "switch_weights_",
    "total",
    "where",
]


_RESCALE_BELOW = 2.0**-10  # rescale the stored iterate deviation before its factor k gets tiny


class Coefficients(NamedTuple):
    """The step's scalars: ``zeta``, ``grad = -/+ zeta eta``, ``decay = -zeta eta lambda``,
    ``move = s`` and ``deviation = s / k`` (``None`` without averaging)."""

    zeta: float
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
    track_norm: bool = False,
) -> tuple[list[Tensor], list[Tensor]]:
    """One O2NC step on lists of tensors, in place (functional API, like ``torch.optim.sgd.sgd``).

    ``Delta <- zeta (Delta - eta g)`` (g with weight decay and sign applied), ``x <- x + s Delta``
    and, when ``deviations`` (u) are given, ``u <- u + (s / deviation_scale) Delta``. With
    ``all_finite`` (a 0-d bool tensor) the step is applied only where it holds, decided on the device.

    Returns:
        ``(||u_i||^2 per deviation, ||Delta_i||^2 per tensor)`` as 0-d tensors when
        ``track_norm``, else two empty lists.
    """
    zeta = beta / (1.0 + lr * mu)
    step = zeta * lr
    move: float | Tensor = scale if all_finite is None else where(all_finite, scale, 0.0)
    coefficients = Coefficients(
        zeta=zeta,
        grad=step if maximize else -step,
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
    return kernel(params, grads, deltas, deviations, coefficients, all_finite, track_norm)


def total(values: list[Tensor | float], device: torch.device) -> Tensor:
    """The sum of 0-d tensors (on any devices) or floats as one tensor on ``device``."""
    values = [v if isinstance(v, Tensor) else torch.full((), v, device=device) for v in values]
    if not values:
        return torch.zeros((), dtype=torch.float32, device=device)
    if len(values) == 1 and values[0].device == device:
        return values[0]
    return torch.stack([v.to(device) for v in values]).sum()


def all_gradients_finite(grads: list[Tensor | None], device: torch.device) -> Tensor:
    """A 0-d bool tensor on ``device``: every given gradient is finite (no host sync)."""
    flags = [torch.isfinite(g).all().to(device, non_blocking=True) for g in grads if g is not None]
    if not flags:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack(flags).all()


def average_o2nc(
    deviations: list[Tensor],
    squares: list[Tensor] | None,
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
    the kernels add ``(s_n / k) Delta_n`` to u in the step's own pass over each tensor, while Δ is in
    cache, which makes ``k u = d_n``; ``||d_n||^2``, the one reduction V needs, is taken there too,
    and only while V is tracked. Then ``x_n - x_bar_n = (1 - a_n) d_n`` only rescales k.

    Args:
        deviations: every u of the group (also of parameters that did not move: they share k).
        squares: ``||u_i||^2`` of all of them when V is tracked, else ``None`` (V is kept as is).
        deviation_scale: k; weight_sum: A_{n-1}; variance: V_{n-1}; discount: x_bar's beta.
        all_finite: with ``skip_nonfinite``, whether the step happened (decided on the device).

    Returns:
        ``(k, A_n, V_n)``. ``x_n - x_bar_n = (1 - a_n) d_n`` only rescales k; u is rescaled when
        k falls below 2^-10. With ``all_finite`` k stays 1 and u is multiplied on the device.
    """
    new_weight_sum = discount * weight_sum + 1.0
    newest_weight = 1.0 / new_weight_sum  # a_n
    k = deviation_scale
    if all_finite is None:
        new_k = (1.0 - newest_weight) * k  # x_n - x_bar_n = (1 - a_n) d_n
        if new_k < _RESCALE_BELOW:
            for (u_list,) in by_device_and_dtype(deviations):
                torch._foreach_mul_(u_list, new_k)
            new_k = 1.0
    else:  # a skipped step multiplies by exactly 1
        new_k = k
        keep = where(all_finite, 1.0 - newest_weight, 1.0)
        for (u_list,) in by_device_and_dtype(deviations):
            torch._foreach_mul_(u_list, keep)
    if (
        squares is not None
    ):  # V_n = (1 - a) V + (1 - a) a ||d_n||^2, with ||d_n||^2 = k^2 sum ||u||^2
        squared_distance = total(squares, deviations[0].device)
        keep = 1.0 - newest_weight
        new_variance = torch.add(
            keep * variance, squared_distance, alpha=keep * newest_weight * k * k
        )
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
    track_norm: bool,
) -> tuple[list[Tensor], list[Tensor]]:
    """One tensor at a time: Δ, x and u (and their norms) in one pass over each tensor."""
    norms = _Norms() if track_norm else None
    for i, (p, g, delta) in enumerate(zip(params, grads, deltas, strict=True)):
        delta.mul_(c.zeta).add_(g, alpha=c.grad)
        if c.decay:
            delta.add_(p, alpha=c.decay)
        p.add_(delta, alpha=c.move)
        u = None if deviations is None else deviations[i].add_(delta, alpha=c.deviation)
        if norms is not None:
            norms.add(delta, u)
    return ([], []) if norms is None else norms.parts()


def multi_tensor_o2nc(
    params: list[Tensor],
    grads: list[Tensor],
    deltas: list[Tensor],
    deviations: list[Tensor] | None,
    c: Coefficients,
    all_finite: Tensor | None,
    track_norm: bool,
) -> tuple[list[Tensor], list[Tensor]]:
    """The same update with multi-tensor (foreach) kernels, per device and dtype."""
    deviation_squares: list[Tensor] = []
    update_squares: list[Tensor] = []
    lists = (params, grads, deltas) if deviations is None else (params, grads, deltas, deviations)
    for p_list, g_list, d_list, *u_lists in by_device_and_dtype(*lists):
        torch._foreach_mul_(d_list, c.zeta)
        torch._foreach_add_(d_list, g_list, alpha=c.grad)
        if c.decay:
            torch._foreach_add_(d_list, p_list, alpha=c.decay)
        torch._foreach_add_(p_list, d_list, alpha=c.move)
        if track_norm:
            update_squares += squared_norm_parts(d_list)
        if u_lists:
            torch._foreach_add_(u_lists[0], d_list, alpha=c.deviation)
            if track_norm:
                deviation_squares += squared_norm_parts(u_lists[0])
    return deviation_squares, update_squares


def masked_o2nc(
    params: list[Tensor],
    grads: list[Tensor],
    deltas: list[Tensor],
    deviations: list[Tensor] | None,
    c: Coefficients,
    all_finite: Tensor | None,
    track_norm: bool,
) -> tuple[list[Tensor], list[Tensor]]:
    """The same update where ``all_finite`` holds; elsewhere Δ, x and u keep their values.

    Δ is only replaced through ``torch.where``, so it stays finite, and a skipped step adds
    ``0 * Delta = 0`` to x and u (``move`` and ``deviation`` are 0 then).
    """
    norms = _Norms() if track_norm else None
    for i, (p, g, delta) in enumerate(zip(params, grads, deltas, strict=True)):
        new_delta = delta.mul(c.zeta).add_(g, alpha=c.grad)
        if c.decay:
            new_delta.add_(p, alpha=c.decay)
        delta.copy_(torch.where(all_finite, new_delta, delta))
        p.add_(delta * c.move)
        u = None if deviations is None else deviations[i].add_(delta * c.deviation)
        if norms is not None:
            norms.add(delta, u)
    return ([], []) if norms is None else norms.parts()


_HOT_NORM_NUMEL = 1 << 16  # from this size on, a CPU tensor's norm is taken while it is in cache


def _norm_now(t: Tensor) -> bool:
    """Large float32/64 tensors on the CPU: BLAS ``dot`` right after the update, while the tensor
    is in cache (about 2.5x faster there than a norm). Others: one multi-tensor norm later."""
    return t.device.type == "cpu" and t.dtype in _DOT_DTYPES and t.numel() >= _HOT_NORM_NUMEL


_DOT_DTYPES = (torch.float32, torch.float64)


def _dot_square(t: Tensor) -> Tensor:
    flat = t.reshape(-1)
    return torch.dot(flat, flat)


class _Norms:
    """A kernel's ``||Delta||^2`` and ``||u||^2`` parts (0-d tensors that add up to the sums):
    large CPU tensors right after their update, the rest in one multi-tensor norm at the end."""

    def __init__(self) -> None:
        self.now: tuple[list[Tensor], list[Tensor]] = ([], [])  # (deviations, updates)
        self.later: tuple[list[Tensor], list[Tensor]] = ([], [])

    def add(self, delta: Tensor, u: Tensor | None) -> None:
        now = delta.numel() >= _HOT_NORM_NUMEL and _norm_now(delta)
        for kind, t in ((1, delta), (0, u)):
            if t is not None:
                (self.now if now else self.later)[kind].append(_dot_square(t) if now else t)

    def parts(self) -> tuple[list[Tensor], list[Tensor]]:
        return tuple(n + squared_norm_parts(t) for n, t in zip(self.now, self.later, strict=True))


def squared_norm_parts(tensors: list[Tensor]) -> list[Tensor]:
    """0-d tensors that add up to ``sum_i ||t_i||^2``, without a host sync: BLAS ``dot`` for large
    CPU float tensors, one multi-tensor norm (reduced in at least float32) per device and dtype for
    the rest (one call for many small tensors)."""
    parts, rest = [], []
    for t in tensors:
        if t.numel() >= _HOT_NORM_NUMEL and _norm_now(t):
            parts.append(_dot_square(t))
        else:
            rest.append(t)
    for (bucket,) in by_device_and_dtype(rest):
        norm_dtype = torch.promote_types(bucket[0].dtype, torch.float32)
        norms = torch._foreach_norm(bucket, 2, dtype=norm_dtype)
        parts.append(torch.stack(norms).square().sum() if len(norms) > 1 else norms[0].square())
    return parts


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

"""The buffers of :class:`~lightning_o2nc.optim.random_scaling.RandomScaling`, kept apart from the
base optimizer's state.

The wrapper shares the base's ``state``, but writes nothing into it: a base such as AdamW
initializes a parameter's state only while that state is empty, so an entry made by the wrapper
before the base's first step would skip the base's initialization. The wrapper's own per-parameter
tensors live here instead, keyed by parameter like ``state``, and ``RandomScaling.state_dict()``
merges them into the per-parameter entries it returns (``load_state_dict`` takes them back out).

Per group and parameter, as views of one flat buffer per (device, dtype)
(:class:`~lightning_o2nc.optim.flat.GroupBuffers`), made at a parameter's first step:

- ``previous_weights``: x_{n-1} during the step, the scratch of the move (never saved);
- ``averaged_iterate``: x_bar (``average=True``), started at the weights;
- ``gradient_ema``: the EMA of the weighted gradients (once statistics are tracked).

Per group, host floats (0-d tensors for the reductions off the CPU): ``A`` (x_bar's weight sum),
``V`` (the iterates' spread), ``W`` (the gradient EMA's weight sum, ``W <- b W + (1 - b)``, so
``m_hat = ema / W``) and the last move's squared norm.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .flat import GroupBuffers
from .functional import sqrt_of

__all__ = [
    "EXTRA_KEYS",
    "WrapperBuffers",
    "base_momentum",
    "check_average_beta",
]

#: The wrapper's per-parameter entries in ``state_dict()["state"][i]``.
EXTRA_KEYS = ("averaged_iterate", "gradient_ema", "training_weights")

_PREVIOUS, _AVERAGE, _EMA = "previous_weights", "averaged_iterate", "gradient_ema"


def check_average_beta(value: Any) -> float | None:
    """``None`` or a float in ``[0, 1)``, else a ``ValueError`` naming ``average_beta``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid average_beta: {value!r}; expected a float in [0, 1) or None")
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"Invalid average_beta: {value!r}; expected 0 <= average_beta < 1")
    return float(value)


def base_momentum(group: dict[str, Any]) -> float | None:
    """The base's momentum coefficient in ``group``: ``betas[0]`` (Adam family) or ``momentum``
    (SGD, RMSprop), ``None`` where it has neither."""
    if "betas" in group:
        return float(group["betas"][0])
    if "momentum" in group:
        return float(group["momentum"])
    return None


class GroupStep(NamedTuple):
    """What one group's step touches: made once while the group is unchanged, the gradients anew."""

    params: list[Tensor]  # the parameters with a gradient now
    grads: list[Tensor]
    previous: list[Tensor] | None  # their scratch views (x_{n-1})
    averaged_params: list[Tensor]  # every parameter of the group with an x_bar
    averages: list[Tensor]
    average_scratch: list[Tensor]  # the scratch views of averaged_params (V's differences)
    emas: list[Tensor] | None
    key: tuple[Any, ...]  # the buffers and flags this was made for


class WrapperBuffers:
    """The wrapper's per-parameter tensors and per-group sums (see the module docstring)."""

    def __init__(self) -> None:
        self.extra: defaultdict[Tensor, dict[str, Tensor]] = defaultdict(dict)
        self._scratch_state: defaultdict[Tensor, dict[str, Tensor]] = defaultdict(dict)
        self._buffers: dict[tuple[str, int], GroupBuffers] = {}
        self._cache: dict[int, GroupStep] = {}
        self.sums: dict[int, dict[str, Any]] = {}

    def _sums(self, index: int) -> dict[str, Any]:
        return self.sums.setdefault(
            index,
            {
                "average_weight_sum": 0.0,
                "iterate_variance": 0.0,
                "gradient_weight_sum": 0.0,
                "update_norm_sq": math.nan,
            },
        )

    # ----------------------------------------------------------------- buffers
    def _group_buffers(self, name: str, index: int, params: list[Tensor]) -> GroupBuffers:
        buffers = self._buffers.get((name, index))
        state = self._scratch_state if name == _PREVIOUS else self.extra
        if buffers is None or not buffers.is_current(params):
            buffers = self._buffers[(name, index)] = GroupBuffers(params, state, (name,))
        return buffers

    def prepare(
        self, param_groups: list[dict[str, Any]], average: bool, tracking: bool, previous: bool
    ) -> list[GroupStep]:
        """Every group's :class:`GroupStep`; new parameters get their buffers (x_bar = x)."""
        return [
            self._prepare_group(i, g["params"], average, tracking, previous)
            for i, g in enumerate(param_groups)
        ]

    def _prepare_group(
        self, index: int, params: list[Tensor], average: bool, tracking: bool, previous: bool
    ) -> GroupStep:
        grads = [p.grad for p in params]
        complete = all(g is not None for g in grads)
        names = [
            n for n, on in ((_PREVIOUS, previous), (_AVERAGE, average), (_EMA, tracking)) if on
        ]
        buffers = {name: self._group_buffers(name, index, params) for name in names}
        key = (average, tracking, previous, *buffers.values())
        cached = self._cache.get(index)
        if complete and cached is not None and cached.key == key:
            return cached._replace(grads=grads)
        for g in grads:
            if g is not None and g.is_sparse:
                raise RuntimeError("RandomScaling does not support sparse gradients")
        indices = [i for i, g in enumerate(grads) if g is not None]
        if any(not b.covers(i) for b in buffers.values() for i in indices):
            buffers = {n: self._rebuild(n, index, params) for n in names}  # a frozen one thawed
            key = (average, tracking, previous, *buffers.values())
        stepped = [params[i] for i in indices]
        step = GroupStep(
            params=stepped,
            grads=[grads[i] for i in indices],
            previous=[buffers[_PREVIOUS].views[_PREVIOUS][i] for i in indices]
            if previous
            else None,
            averaged_params=[],
            averages=[],
            average_scratch=[],
            emas=None,
            key=key,
        )
        if average:
            for i in indices:
                if _AVERAGE not in self.extra.get(params[i], {}):
                    buffers[_AVERAGE].claim(i)[_AVERAGE].copy_(params[i])  # its own average
            owned = [i for i, p in enumerate(params) if _AVERAGE in self.extra.get(p, {})]
            step = step._replace(
                averaged_params=[params[i] for i in owned],
                averages=[self.extra[params[i]][_AVERAGE] for i in owned],
                average_scratch=[buffers[_PREVIOUS].views[_PREVIOUS][i] for i in owned]
                if previous
                else [],
            )
        if tracking:
            step = step._replace(emas=[buffers[_EMA].claim(i)[_EMA] for i in indices])
        if complete:
            self._cache[index] = step
        return step

    def _rebuild(self, name: str, index: int, params: list[Tensor]) -> GroupBuffers:
        state = self._scratch_state if name == _PREVIOUS else self.extra
        self._buffers[(name, index)] = GroupBuffers(params, state, (name,))
        self._cache.pop(index, None)
        return self._buffers[(name, index)]

    # ----------------------------------------------------------------- the step's parts
    def move(self, index: int, step: GroupStep, scale: float, stretch: bool) -> None:
        """``x <- x_prev + s (x_base - x_prev)``; with statistics also ``||x - x_prev||^2``."""
        if step.emas is not None:  # tracking: the difference is needed for its norm
            torch._foreach_sub_(step.previous, step.params)  # x_prev - x_base
            self._sums(index)["update_norm_sq"] = scale * scale * _sum_of_squares(step.previous)
            if stretch:
                torch._foreach_add_(step.params, step.previous, alpha=1.0 - scale)
        elif stretch:
            torch._foreach_lerp_(step.params, step.previous, 1.0 - scale)

    def update_gradient_ema(self, index: int, step: GroupStep, discount: float) -> None:
        """``ema <- b ema + (1 - b) g`` and ``W <- b W + (1 - b)``, b the base's momentum."""
        torch._foreach_lerp_(step.emas, step.grads, 1.0 - discount)
        sums = self._sums(index)
        sums["gradient_weight_sum"] = discount * sums["gradient_weight_sum"] + (1.0 - discount)

    def update_average(self, index: int, step: GroupStep, discount: float, tracking: bool) -> None:
        """x_bar and V after the move (the recursions are in the wrapper's module docstring)."""
        sums = self._sums(index)
        sums["average_weight_sum"] = discount * sums["average_weight_sum"] + 1.0
        newest = 1.0 / sums["average_weight_sum"]
        if tracking:
            difference = step.average_scratch
            torch._foreach_copy_(difference, step.averaged_params)
            torch._foreach_sub_(difference, step.averages)  # x_n - x_bar_{n-1}
            squared = _sum_of_squares(difference)
            sums["iterate_variance"] = (1.0 - newest) * (
                sums["iterate_variance"] + newest * squared
            )
            torch._foreach_add_(step.averages, difference, alpha=newest)
        else:
            torch._foreach_lerp_(step.averages, step.averaged_params, newest)

    # ----------------------------------------------------------------- reading
    def statistics(self, average: bool, c: float, device: torch.device) -> dict[str, Any]:
        update_sq: Any = 0.0
        grad_ema_sq: Any = 0.0
        variance: Any = 0.0
        for index, sums in sorted(self.sums.items()):
            update_sq = update_sq + sums["update_norm_sq"]
            buffers = self._buffers.get((_EMA, index))
            weight = sums["gradient_weight_sum"]
            if buffers is None or not buffers.has_state or not weight:
                grad_ema_sq = math.nan
            else:
                grad_ema_sq = grad_ema_sq + buffers.squared_norm(_EMA, device) / weight**2
            variance = variance + sums["iterate_variance"]
        if not self.sums:
            update_sq = grad_ema_sq = math.nan
        stats = {"update_norm": sqrt_of(update_sq), "grad_ema_norm": sqrt_of(grad_ema_sq)}
        if average:
            stats["iterate_variance"] = variance
            stats["stationarity_certificate"] = stats["grad_ema_norm"] + c * variance
        return stats

    def switch_weights(self, param_groups: list[dict[str, Any]], to_average: bool) -> None:
        """Stash x and write x_bar into the weights, or restore x bit for bit."""
        with torch.no_grad():
            for group in param_groups:
                for p in group["params"]:
                    extra = self.extra.get(p, {})
                    if _AVERAGE not in extra:
                        continue
                    if to_average:
                        extra["training_weights"] = p.detach().clone()
                        p.copy_(extra[_AVERAGE])
                    else:
                        p.copy_(extra.pop("training_weights"))

    def averaged_iterates(self, param_groups: list[dict[str, Any]], training: bool) -> list[Tensor]:
        averages = []
        for group in param_groups:
            for p in group["params"]:
                extra = self.extra.get(p, {})
                source = extra[_AVERAGE] if training and _AVERAGE in extra else p
                averages.append(source.detach().clone())
        return averages

    # ----------------------------------------------------------------- state
    def per_parameter(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        """``(parameter, its saved entries)`` for every parameter with any."""
        for p, extra in self.extra.items():
            saved = {k: v for k, v in extra.items() if k in EXTRA_KEYS}
            if saved:
                yield p, saved

    def adopt(self, entries: dict[Tensor, dict[str, Tensor]]) -> None:
        """Take saved entries (cast to each parameter's device and dtype, as torch does)."""
        for p, saved in entries.items():
            self.extra[p].update(
                {k: v.to(device=p.device, dtype=p.dtype).clone() for k, v in saved.items()}
            )

    def group_scalars(self, count: int) -> list[dict[str, float]]:
        """The per-group sums as host floats (a checkpoint may wait for the device)."""
        return [
            {k: float(v) for k, v in self._sums(i).items()} if i in self.sums else {}
            for i in range(count)
        ]

    def load_group_scalars(self, saved: list[dict[str, float]]) -> None:
        self.sums = {}
        for index, sums in enumerate(saved):
            if sums:
                self._sums(index).update(sums)


def _sum_of_squares(tensors: list[Tensor]) -> Tensor | float:
    """``sum ||t||^2`` over ``tensors``: a 0-d tensor (no host sync), 0.0 for none."""
    if not tensors:
        return 0.0
    norms = torch._foreach_norm(tensors)
    return torch.stack([n.to(norms[0].device, torch.float32) for n in norms]).square().sum()

"""From a model to an optimizer (:func:`build_optimizer`) and its schedules (:func:`build_schedulers`).

The registry is data: one frozen :class:`OptimizerSpec` per name, with the builder, the fields a
schedule may drive and the keyword arguments it accepts.

- ``"o2nc"``: :class:`ExponentiatedO2NC`.
- ``"sgdm"``: the same class with ``scaling="none"``, which is torch SGD with momentum in the
  (eta, beta, mu) parametrization (``lr = zeta * eta``, ``momentum = zeta``; the equivalence with
  ``torch.optim.SGD`` is checked to round-off in the tests). An O2NC-vs-SGDM comparison therefore
  changes only the scaling, and the baseline gets the averaged iterate and statistics too.
- ``"adamw"``: ``torch.optim.AdamW(lr=eta, betas=(beta, 0.999))``.

``configure_optimizers`` returns ``[optimizer], build_schedulers(optimizer, schedules, ...)``.
This module is pure torch (no lightning import): a Lightning scheduler config is a plain dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .hyperparameters import HYPERPARAMETERS, INTERVALS, SCHEDULABLE, validate_hyperparameters
from .o2nc import ExponentiatedO2NC
from .schedules import HyperparameterScheduler, make_schedule

__all__ = [
    "OPTIMIZERS",
    "OptimizerSpec",
    "build_optimizer",
    "build_schedulers",
    "param_groups_weight_decay",
]


@dataclass(frozen=True)
class OptimizerSpec:
    """How the factory builds one named optimizer."""

    name: str
    build: Callable[..., Optimizer]
    schedulable: tuple[str, ...]
    options: tuple[str, ...]


def _build_o2nc(groups: list[dict[str, Any]], **kwargs: Any) -> Optimizer:
    return ExponentiatedO2NC(groups, **kwargs)


def _build_sgdm(groups: list[dict[str, Any]], **kwargs: Any) -> Optimizer:
    if kwargs.setdefault("scaling", "none") != "none":
        raise ValueError(
            f"Invalid scaling for 'sgdm': {kwargs['scaling']!r}; sgdm is O2NC with scaling='none' "
            "(use name='o2nc' for random scaling)"
        )
    return ExponentiatedO2NC(groups, **kwargs)


def _build_adamw(
    groups: list[dict[str, Any]],
    *,
    lr: float,
    beta: float,
    mu: float,
    weight_decay: float,
    **kwargs: Any,
) -> Optimizer:
    if mu != 0:
        raise ValueError(f"Invalid mu for 'adamw': {mu!r}; AdamW has no mu, leave it at 0")
    validate_hyperparameters(lr=lr, beta=beta, weight_decay=weight_decay)
    return torch.optim.AdamW(
        groups, lr=lr, betas=(beta, 0.999), weight_decay=weight_decay, **kwargs
    )


#: The hyper-parameters every builder takes as keywords (AdamW reads them in its own way).
_COMMON = ("lr", "beta", "mu", "weight_decay")
#: Every other entry of the hyper-parameter table is an option of ExponentiatedO2NC.
_O2NC_OPTIONS = tuple(name for name in HYPERPARAMETERS if name not in _COMMON)
OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("o2nc", _build_o2nc, SCHEDULABLE, _O2NC_OPTIONS),
        OptimizerSpec("sgdm", _build_sgdm, SCHEDULABLE, _O2NC_OPTIONS),
        OptimizerSpec(
            "adamw", _build_adamw, ("lr", "weight_decay"), ("eps", "amsgrad", "foreach", "maximize")
        ),
    )
}


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, no_decay_names: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Two groups: biases and normalization weights (any parameter with ndim <= 1) without decay.

    Args:
        model: the module whose trainable parameters are grouped.
        weight_decay: the decay of the other parameters.
        no_decay_names: extra parameter names to exclude from decay.
    """
    excluded = set(no_decay_names)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in excluded:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    model_or_params: nn.Module | Iterable[Any],
    name: str = "o2nc",
    lr: float = HYPERPARAMETERS["lr"].default,
    beta: float = HYPERPARAMETERS["beta"].default,
    mu: float = HYPERPARAMETERS["mu"].default,
    weight_decay: float = HYPERPARAMETERS["weight_decay"].default,
    decay_bias_and_norm: bool = False,
    **optimizer_kwargs: Any,
) -> Optimizer:
    """Build the named optimizer; always returns the optimizer (schedules: :func:`build_schedulers`).

    Args:
        model_or_params: an ``nn.Module`` (its trainable parameters, grouped for weight decay) or an
            iterable of tensors / param-group dicts (used as given).
        name: ``"o2nc"``, ``"sgdm"`` or ``"adamw"``.
        lr: eta. beta: the momentum. mu: the implicit decay (``zeta = beta / (1 + lr * mu)``).
        weight_decay: L2 decay (added to the gradient for o2nc/sgdm, decoupled for adamw).
        decay_bias_and_norm: ``False`` exempts biases and normalization weights from weight decay
            (timm's ``param_groups_weight_decay``); only applies when a module is given.
        **optimizer_kwargs: the optimizer's own options (o2nc/sgdm: scaling, seed, average,
            average_beta, skip_nonfinite, foreach, maximize; adamw: eps, amsgrad, foreach, maximize).

    Example (``configure_optimizers``)::

        optimizer = build_optimizer(self, "o2nc", lr=0.05, average=True)
        return [optimizer], build_schedulers(optimizer, {"lr": "cosine"},
                                             total_steps=self.trainer.estimated_stepping_batches)
    """
    spec = _spec(name)
    unknown = sorted(set(optimizer_kwargs) - set(spec.options))
    if unknown:
        raise ValueError(
            f"Unknown option(s) for {name!r}: {', '.join(unknown)}; valid: {', '.join(spec.options)}"
        )
    if isinstance(model_or_params, nn.Module):
        if decay_bias_and_norm:
            groups = [{"params": [p for p in model_or_params.parameters() if p.requires_grad]}]
        else:
            groups = param_groups_weight_decay(model_or_params, weight_decay)
    else:
        groups = list(model_or_params)
        if groups and isinstance(groups[0], torch.Tensor):
            groups = [{"params": groups}]
    if not groups or not any(group["params"] for group in groups):
        raise ValueError("Invalid model_or_params: no trainable parameters to optimize")
    return spec.build(
        groups, lr=lr, beta=beta, mu=mu, weight_decay=weight_decay, **optimizer_kwargs
    )


def build_schedulers(
    optimizer: Optimizer,
    schedules: Mapping[str, Any] | None,
    total_steps: float | None = None,
    total_epochs: float | None = None,
    name: str = "o2nc",
) -> list[dict[str, Any]]:
    """Lightning scheduler configs (one per interval used) that drive ``optimizer``'s groups.

    Args:
        optimizer: what :func:`build_optimizer` returned.
        schedules: ``{field: spec}`` for the fields the optimizer ``name`` may schedule (o2nc:
            ``lr``/``beta``/``mu``/``weight_decay``); a spec is a
            :func:`~lightning_o2nc.optim.schedules.make_schedule` mapping (or shape name) plus an
            optional ``interval: step | epoch`` (default ``step``). ``None`` or empty: no configs.
        total_steps: horizon of per-step schedules (Lightning: ``trainer.estimated_stepping_batches``).
        total_epochs: horizon of per-epoch schedules (Lightning: ``trainer.max_epochs``).
        name: the factory name the optimizer was built with, to check the scheduled fields.

    Returns:
        ``[{"scheduler", "interval", "frequency": 1, "name"}, ...]``, so ``configure_optimizers``
        returns ``[optimizer], build_schedulers(...)`` whatever the schedules are.
    """
    spec = _spec(name)
    per_interval: dict[str, dict[str, Any]] = {}
    for field, schedule_spec in (schedules or {}).items():
        if field not in spec.schedulable:
            raise ValueError(
                f"Invalid schedule field {field!r} for {name!r}; valid: {', '.join(spec.schedulable)}"
            )
        schedule_spec = (
            {"shape": schedule_spec} if isinstance(schedule_spec, str) else dict(schedule_spec)
        )
        interval = schedule_spec.pop("interval", "step")
        if interval not in INTERVALS:
            raise ValueError(
                f"Invalid interval {interval!r} in the {field!r} schedule; valid: {', '.join(INTERVALS)}"
            )
        horizon = _as_horizon(total_steps if interval == "step" else total_epochs)
        per_interval.setdefault(interval, {})[field] = make_schedule(schedule_spec, horizon)
    return [
        {
            "scheduler": HyperparameterScheduler(optimizer, fields),
            "interval": interval,
            "frequency": 1,
            "name": f"hyperparameters-{interval}",
        }
        for interval, fields in per_interval.items()
    ]


def _spec(name: str) -> OptimizerSpec:
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer name {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def _as_horizon(total: float | None) -> int | None:
    """Lightning reports ``estimated_stepping_batches`` as a float (inf when unbounded)."""
    if total is None or not math.isfinite(total):
        return None
    return max(int(total), 1)

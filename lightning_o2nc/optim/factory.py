"""From a model to an optimizer (:func:`build_optimizer`) and its schedules (:func:`build_schedulers`).

The registry is data (timm's way): one frozen :class:`OptimizerSpec` per name, with the builder,
the hyper-parameters of the table it takes, the fields a schedule may drive, and the options the
name fixes.

- ``"o2nc"``: :class:`ExponentiatedO2NC`, the fast dedicated path for SGD with momentum.
- ``"sgdm"``: the same class with ``scaling="none"``, which is torch SGD with momentum in the
  (eta, beta, mu) parametrization (``lr = zeta * eta``, ``momentum = zeta``; the equivalence with
  ``torch.optim.SGD`` is checked to round-off in the tests). An O2NC-vs-SGDM comparison therefore
  changes only the scaling, and the baseline gets the averaged iterate and statistics too.
- ``"adamw"``: ``torch.optim.AdamW(lr=eta, betas=(beta, beta2), eps, weight_decay)``; with
  ``average=True`` it is wrapped as ``RandomScaling(adamw, scaling="none", average=True)``: the
  same trajectory, plus x_bar and the statistics of the wrapper for the comparison.
- ``"o2nc_adamw"``: :class:`~.random_scaling.O2NCAdamW`, AdamW whose every move is scaled by one
  random s (``RandomScaling`` around ``torch.optim.AdamW``).
- ``"o2nc_uniform"`` and ``"o2nc_adamw_uniform"``: ``"o2nc"`` and ``"o2nc_adamw"`` with
  ``scaling="uniform"`` (the authors' U(0, 2) with the importance weight 2 - s), the labels of
  the comparison's arms.

The hyper-parameters keep the table's names for every optimizer: ``beta`` is the momentum of
O2NC and SGDM and AdamW's ``betas[0]``; ``beta2`` is ``betas[1]``. A name that an optimizer does
not take is refused (``mu`` for AdamW, ``beta2`` for O2NC).

``configure_optimizers`` returns ``[optimizer], build_schedulers(optimizer, schedules, ...)``.
This module is pure torch (no lightning import): a Lightning scheduler config is a plain dict.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .hyperparameters import HYPERPARAMETERS, INTERVALS, SCHEDULABLE, validate_hyperparameters
from .o2nc import ExponentiatedO2NC
from .random_scaling import O2NCAdamW, RandomScaling
from .schedules import HyperparameterScheduler, make_schedule

__all__ = [
    "AVERAGING_OPTIMIZERS",
    "OPTIMIZERS",
    "OptimizerSpec",
    "build_optimizer",
    "build_schedulers",
    "optimizer_spec",
    "param_groups_weight_decay",
]

#: The optimizer classes that keep x_bar (``average=True``), ``last_scale`` and ``statistics()``:
#: what ``O2NCMonitor`` and ``AveragedIterate`` look for among a Trainer's optimizers.
AVERAGING_OPTIMIZERS: tuple[type[Optimizer], ...] = (ExponentiatedO2NC, RandomScaling)


@dataclass(frozen=True)
class OptimizerSpec:
    """How the factory builds one named optimizer.

    Attributes:
        name: the factory name (``build_optimizer(model, name)``, ``O2NCModule(optimizer=name)``).
        build: ``build(groups, lr=, beta=, mu=, weight_decay=, **options)``.
        takes: the names of the hyper-parameter table this optimizer takes.
        extra_options: options outside the table (AdamW's ``amsgrad``).
        fixed: options the name fixes (``sgdm`` is ``o2nc`` with ``scaling="none"``); giving
            another value is an error.
        averages_by_default: ``O2NCModule``'s ``average=None`` turns x_bar on.
        keeps_statistics: the optimizer keeps ``last_scale`` and ``statistics()`` without
            ``average=True`` (plain AdamW keeps them only when wrapped for x_bar).
    """

    name: str
    build: Callable[..., Optimizer]
    takes: tuple[str, ...]
    extra_options: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    averages_by_default: bool = True
    keeps_statistics: bool = True

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options of :func:`build_optimizer` besides lr, beta, mu and weight_decay."""
        return tuple(n for n in self.takes if n not in _COMMON) + self.extra_options

    @property
    def schedulable(self) -> tuple[str, ...]:
        """The fields a schedule may drive: the table's schedulable names this optimizer takes."""
        return tuple(n for n in SCHEDULABLE if n in self.takes)


def _build_o2nc(groups: list[dict[str, Any]], **kwargs: Any) -> Optimizer:
    return ExponentiatedO2NC(groups, **kwargs)


def _adamw_arguments(
    lr: float, beta: float, mu: float, weight_decay: float, beta2: float, eps: float, name: str
) -> dict[str, Any]:
    """AdamW's arguments in the table's names; AdamW has no mu."""
    if mu != 0:
        raise ValueError(f"Invalid mu for {name!r}: {mu!r}; AdamW has no mu, leave it at 0")
    checked = validate_hyperparameters(
        lr=lr, beta=beta, weight_decay=weight_decay, beta2=beta2, eps=eps
    )
    return {
        "lr": checked["lr"],
        "betas": (checked["beta"], checked["beta2"]),
        "eps": checked["eps"],
        "weight_decay": checked["weight_decay"],
    }


def _build_adamw(
    groups: list[dict[str, Any]],
    *,
    lr: float,
    beta: float,
    mu: float,
    weight_decay: float,
    beta2: float = HYPERPARAMETERS["beta2"].default,
    eps: float = HYPERPARAMETERS["eps"].default,
    scaling: str = "none",
    seed: int | None = None,
    average: bool = False,
    average_beta: float | None = None,
    **kwargs: Any,
) -> Optimizer:
    arguments = _adamw_arguments(lr, beta, mu, weight_decay, beta2, eps, "adamw")
    base = torch.optim.AdamW(groups, **arguments, **kwargs)
    if not average:
        return base
    return RandomScaling(base, scaling=scaling, seed=seed, average=True, average_beta=average_beta)


def _build_o2nc_adamw(
    groups: list[dict[str, Any]],
    *,
    lr: float,
    beta: float,
    mu: float,
    weight_decay: float,
    beta2: float = HYPERPARAMETERS["beta2"].default,
    eps: float = HYPERPARAMETERS["eps"].default,
    **kwargs: Any,
) -> Optimizer:
    return O2NCAdamW(
        groups, **_adamw_arguments(lr, beta, mu, weight_decay, beta2, eps, "o2nc_adamw"), **kwargs
    )


#: The hyper-parameters every builder takes as keywords (AdamW reads them in its own way).
_COMMON = ("lr", "beta", "mu", "weight_decay")
#: The table's names that Exponentiated O2NC (and so SGDM) takes: all but AdamW's own.
_O2NC_TAKES = tuple(name for name in HYPERPARAMETERS if name not in ("beta2", "eps"))
#: The table's names that AdamW takes, with and without random scaling around it.
_ADAMW_TAKES = tuple(name for name in HYPERPARAMETERS if name not in ("mu", "skip_nonfinite"))
_UNIFORM = MappingProxyType({"scaling": "uniform"})
_NO_SCALING = MappingProxyType({"scaling": "none"})

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("o2nc", _build_o2nc, _O2NC_TAKES),
        OptimizerSpec("sgdm", _build_o2nc, _O2NC_TAKES, fixed=_NO_SCALING),
        OptimizerSpec(
            "adamw",
            _build_adamw,
            _ADAMW_TAKES,
            ("amsgrad",),
            fixed=_NO_SCALING,
            averages_by_default=False,
            keeps_statistics=False,
        ),
        OptimizerSpec("o2nc_adamw", _build_o2nc_adamw, _ADAMW_TAKES, ("amsgrad",)),
        OptimizerSpec("o2nc_uniform", _build_o2nc, _O2NC_TAKES, fixed=_UNIFORM),
        OptimizerSpec(
            "o2nc_adamw_uniform", _build_o2nc_adamw, _ADAMW_TAKES, ("amsgrad",), fixed=_UNIFORM
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
        name: a name of :data:`OPTIMIZERS`: ``"o2nc"``, ``"sgdm"``, ``"adamw"``, ``"o2nc_adamw"``,
            ``"o2nc_uniform"`` or ``"o2nc_adamw_uniform"``.
        lr: eta (AdamW: its lr). beta: the momentum (AdamW: ``betas[0]``).
        mu: the implicit decay of O2NC and SGDM (``zeta = beta / (1 + lr * mu)``); 0 for AdamW.
        weight_decay: added to the gradient as L2 for o2nc/sgdm, decoupled for the AdamW names.
        decay_bias_and_norm: ``False`` exempts biases and normalization weights from weight decay
            (timm's ``param_groups_weight_decay``); only applies when a module is given.
        **optimizer_kwargs: the optimizer's own options (:attr:`OptimizerSpec.options`):
            o2nc/sgdm: scaling, seed, average, average_beta, skip_nonfinite, foreach, maximize;
            the AdamW names: beta2, eps, scaling, seed, average, average_beta, foreach, maximize,
            amsgrad. An option the name fixes (``scaling`` of sgdm, adamw and the ``_uniform``
            names) may be left out or given its fixed value.

    Example (``configure_optimizers``)::

        optimizer = build_optimizer(self, "o2nc_adamw", lr=1e-3, weight_decay=0.1, average=True)
        return [optimizer], build_schedulers(optimizer, {"lr": "cosine"}, name="o2nc_adamw",
                                             total_steps=self.trainer.estimated_stepping_batches)
    """
    spec = optimizer_spec(name)
    unknown = sorted(set(optimizer_kwargs) - set(spec.options))
    if unknown:
        raise ValueError(
            f"Unknown option(s) for {name!r}: {', '.join(unknown)}; valid: {', '.join(spec.options)}"
        )
    for option, value in spec.fixed.items():
        given = optimizer_kwargs.setdefault(option, value)
        if given != value:
            raise ValueError(
                f"Invalid {option} for {name!r}: {given!r}; {name!r} means {option}={value!r}"
                f"{_fixed_hint(spec, option, given)}"
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


def _fixed_hint(spec: OptimizerSpec, option: str, given: Any) -> str:
    """A name of the same optimizer family that takes ``option=given``, to suggest instead: one
    that fixes it to ``given`` first (``o2nc_uniform``), else one that leaves it free."""
    family = [other for other in OPTIMIZERS.values() if other.takes == spec.takes]
    others = [o.name for o in family if o.fixed.get(option) == given]
    others += [o.name for o in family if option not in o.fixed]
    return f" (use name={others[0]!r} for {option}={given!r})" if others else ""


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
            ``lr``/``beta``/``mu``/``weight_decay``; the AdamW names: ``lr``/``beta``/``beta2``/
            ``weight_decay``, where ``beta`` drives ``betas[0]``); a spec is a
            :func:`~lightning_o2nc.optim.schedules.make_schedule` mapping (or shape name) plus an
            optional ``interval: step | epoch`` (default ``step``). ``None`` or empty: no configs.
        total_steps: horizon of per-step schedules (Lightning: ``trainer.estimated_stepping_batches``).
        total_epochs: horizon of per-epoch schedules (Lightning: ``trainer.max_epochs``).
        name: the factory name the optimizer was built with, to check the scheduled fields.

    Returns:
        ``[{"scheduler", "interval", "frequency": 1, "name"}, ...]``, so ``configure_optimizers``
        returns ``[optimizer], build_schedulers(...)`` whatever the schedules are.
    """
    spec = optimizer_spec(name)
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


def optimizer_spec(name: str) -> OptimizerSpec:
    """The registry's entry for ``name``; a ``ValueError`` listing the valid names otherwise."""
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer name {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def _as_horizon(total: float | None) -> int | None:
    """Lightning reports ``estimated_stepping_batches`` as a float (inf when unbounded)."""
    if total is None or not math.isfinite(total):
        return None
    return max(int(total), 1)

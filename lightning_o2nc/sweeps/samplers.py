"""Samplers and pruners by name: each in one dict of builders, read by the sweep file's checks
(:class:`SamplerSpec`, :class:`PrunerSpec`) and by the study (:func:`build_sampler`,
:func:`build_pruner`). A new sampler is one entry in :data:`SAMPLERS`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import optuna

from lightning_o2nc.extras import MissingExtra, require

from .checks import check_keys, mapping
from .errors import SweepConfigError

if TYPE_CHECKING:
    from .space import SearchSpace

__all__ = ["PRUNERS", "SAMPLERS", "PrunerSpec", "SamplerSpec", "build_pruner", "build_sampler"]

#: What a builder returns: the Optuna class and its defaults, which the YAML ``options`` override.
Recipe = tuple[Callable[..., Any], dict[str, Any]]


def _cmaes(space: SearchSpace, seed: int | None) -> Recipe:
    try:
        require("cmaes", "sampler.name: cmaes")
    except MissingExtra as error:
        raise SweepConfigError(str(error)) from None
    samplers = optuna.samplers
    independent = samplers.TPESampler(seed=seed, multivariate=True)
    return samplers.CmaEsSampler, {
        "seed": seed,
        "warn_independent_sampling": False,
        "independent_sampler": independent,
    }


#: ``name -> (space, seed) -> (sampler class, defaults)``. Defaults suit parallel workers:
#:
#: - ``tpe``: multivariate TPE with ``group=True`` (the schedule arguments are conditional, and
#:   grouping lets the multivariate model handle each branch) and ``constant_liar=True`` (running
#:   trials of other workers count as bad, so parallel workers spread out);
#: - ``cmaes``: CMA-ES on the continuous dimensions; categorical and conditional ones go to TPE;
#: - ``gp``: Gaussian-process Bayesian optimisation;
#: - ``random``; ``grid`` (every dimension a finite list; see :meth:`SearchSpace.grid_search_space`).
SAMPLERS: dict[str, Callable[[SearchSpace, int | None], Recipe]] = {
    "tpe": lambda space, seed: (
        optuna.samplers.TPESampler,
        {"multivariate": True, "group": True, "constant_liar": True, "seed": seed},
    ),
    "cmaes": _cmaes,
    "gp": lambda space, seed: (optuna.samplers.GPSampler, {"seed": seed}),
    "random": lambda space, seed: (optuna.samplers.RandomSampler, {"seed": seed}),
    "grid": lambda space, seed: (
        optuna.samplers.GridSampler,
        {"search_space": space.grid_search_space(), "seed": seed},
    ),
}

#: ``name -> max_epochs -> (pruner class, defaults)``. Steps are epochs:
#:
#: - ``median``: stop a trial whose epoch-``k`` value is worse than the median of earlier trials
#:   at epoch ``k`` (after 4 finished trials and 1 warm-up epoch, by default);
#: - ``hyperband``: successive halving brackets from 1 epoch up to ``max_epochs``;
#: - ``none``: every trial runs to the end.
PRUNERS: dict[str, Callable[[int | None], Recipe]] = {
    "median": lambda max_epochs: (
        optuna.pruners.MedianPruner,
        {"n_startup_trials": 4, "n_warmup_steps": 1},
    ),
    "hyperband": lambda max_epochs: (
        optuna.pruners.HyperbandPruner,
        {"min_resource": 1, "max_resource": max_epochs or "auto", "reduction_factor": 3},
    ),
    "none": lambda max_epochs: (optuna.pruners.NopPruner, {}),
}


@dataclass(frozen=True)
class _Choice:
    """``<section>: {name, options}``, or just the name; ``options`` are the class's arguments."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    section: ClassVar[str]
    builders: ClassVar[Mapping[str, Any]]
    #: The name a YAML ``null`` stands for (``None``: the default name).
    null_name: ClassVar[str | None] = None

    @classmethod
    def parse(cls, spec: Any) -> Any:
        if isinstance(spec, str) or (spec is None and cls.null_name is not None):
            spec = {"name": spec or cls.null_name}
        spec = mapping(spec, cls.section)
        check_keys(spec, {"name", "options"}, cls.section)
        name = spec.get("name", cls.name)
        if name not in cls.builders:
            raise SweepConfigError(
                f"{cls.section}.name: unknown {cls.section} {name!r}; known: {tuple(cls.builders)}"
            )
        return cls(name, mapping(spec.get("options"), f"{cls.section}.options"))

    def construct(self, recipe: Recipe) -> Any:
        """The class of ``recipe`` called with its defaults, overridden by ``options``."""
        factory, defaults = recipe
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return factory(**{**defaults, **self.options})
        except (TypeError, ValueError) as error:
            raise SweepConfigError(f"{self.section}.options (for {self.name}): {error}") from None


@dataclass(frozen=True)
class SamplerSpec(_Choice):
    """``sampler: {name, options}``; ``options`` are keyword arguments of the Optuna sampler."""

    name: str = "tpe"
    section: ClassVar[str] = "sampler"
    builders: ClassVar[Mapping[str, Any]] = SAMPLERS


@dataclass(frozen=True)
class PrunerSpec(_Choice):
    """``pruner: {name, options}``; ``options`` are keyword arguments of the Optuna pruner."""

    name: str = "median"
    section: ClassVar[str] = "pruner"
    builders: ClassVar[Mapping[str, Any]] = PRUNERS
    null_name: ClassVar[str | None] = "none"


def build_sampler(
    spec: SamplerSpec, space: SearchSpace, seed: int | None = None
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named by ``spec`` (see :data:`SAMPLERS` for the defaults).

    Raises:
        SweepConfigError: for options the sampler does not accept.
    """
    return spec.construct(SAMPLERS[spec.name](space, seed))


def build_pruner(spec: PrunerSpec, max_epochs: int | None = None) -> optuna.pruners.BasePruner:
    """The Optuna pruner named by ``spec`` (see :data:`PRUNERS`); its steps are epochs.

    Raises:
        SweepConfigError: for options the pruner does not accept.
    """
    return spec.construct(PRUNERS[spec.name](max_epochs))

"""The sweep definition file (``lightning_o2nc/configs/sweeps/*.yaml``), loaded and validated before any trial runs.

Layout::

    study_name: o2nc-digits           # default: the file name without .yaml
    train_config: ../train/digits.yaml  # a LightningCLI config; relative to this file, or to the cwd
    n_trials: 24                      # finished trials the study should hold (all workers together)
    timeout: null                     # seconds, per worker
    seed: 0                           # the sampler's seed
    overrides: {trainer.max_epochs: 6}
    objective: {metric: val/acc, direction: maximize, weights: averaged}
    space: {...}                      # see lightning_o2nc.sweeps.space
    sampler: {name: tpe, options: {}} # tpe | cmaes | gp | random | grid
    pruner: {name: median, options: {}}  # median | hyperband | none
    storage: {heartbeat_interval: 60, grace_period: 180, max_retry: 3}  # + storage_class, journal_lock
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightning_o2nc.shipped_configs import resolve_config, shipped_configs

from .checks import check_keys, mapping, positive_int
from .errors import SweepConfigError
from .paths import check_path, get_path, set_path
from .samplers import PrunerSpec, SamplerSpec
from .space import SearchSpace, parse_space
from .storage_settings import StorageSpec

__all__ = [
    "ObjectiveSpec",
    "PrunerSpec",
    "SamplerSpec",
    "StorageSpec",
    "SweepConfig",
    "SweepConfigError",
    "load_sweep_config",
    "load_yaml",
    "spawn_strategy",
]

_TOP_LEVEL = {
    "study_name",
    "train_config",
    "n_trials",
    "timeout",
    "seed",
    "overrides",
    "objective",
    "space",
    "sampler",
    "pruner",
    "storage",
}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """``yaml.safe_load`` a file that must hold a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SweepConfigError(f"cannot read {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SweepConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise SweepConfigError(f"{path} must hold a YAML mapping, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class ObjectiveSpec:
    """What a trial returns: a logged metric, its direction and at which weights.

    ``weights: averaged`` reads the metric at the averaged iterate x_bar (``val/acc`` becomes
    ``val/acc_avg``), which needs ``model.average: true``.
    """

    metric: str = "val/acc"
    direction: str = "maximize"
    weights: str = "current"

    @property
    def monitor(self) -> str:
        """The logged metric name the trial reports and returns."""
        if self.weights == "averaged" and not self.metric.endswith("_avg"):
            return f"{self.metric}_avg"
        return self.metric

    @classmethod
    def parse(cls, spec: Any) -> ObjectiveSpec:
        spec = mapping(spec, "objective")
        check_keys(spec, {"metric", "direction", "weights"}, "objective")
        metric = spec.get("metric", "val/acc")
        if not isinstance(metric, str) or not metric:
            raise SweepConfigError(f"objective.metric must be a metric name, got {metric!r}")
        direction = spec.get("direction")
        if direction is None:
            if "acc" in metric:
                direction = "maximize"
            elif "loss" in metric:
                direction = "minimize"
            else:
                raise SweepConfigError(
                    f"objective.direction: say `maximize` or `minimize` for metric {metric!r}"
                )
        if direction not in ("maximize", "minimize"):
            raise SweepConfigError(
                f"objective.direction must be `maximize` or `minimize`, got {direction!r}"
            )
        weights = spec.get("weights", "current")
        if weights not in ("current", "averaged"):
            raise SweepConfigError(
                f"objective.weights must be `current` or `averaged`, got {weights!r}"
            )
        if weights == "current" and metric.endswith("_avg"):
            raise SweepConfigError(
                f"objective: metric {metric!r} is measured at the averaged weights; "
                "set `weights: averaged` or drop the `_avg` suffix"
            )
        return cls(metric, direction, weights)


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep definition together with the train config it points at."""

    source: Path
    study_name: str
    train_config_path: Path
    train_config: Mapping[str, Any]
    overrides: Mapping[str, Any]
    #: The train config with the overrides applied, built once: what every trial starts from.
    base_config: Mapping[str, Any]
    objective: ObjectiveSpec
    space: SearchSpace
    sampler: SamplerSpec
    pruner: PrunerSpec
    storage: StorageSpec
    n_trials: int = 20
    timeout: float | None = None
    seed: int | None = None

    def trial_config(self, assignment: Mapping[str, Any]) -> dict[str, Any]:
        """A deep copy of the train config with the overrides and one trial's values applied."""
        return _with_values(self.base_config, assignment)


def _with_values(config: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` with ``{dotted path: value}`` written into it."""
    config = copy.deepcopy(dict(config))
    for path, value in values.items():
        set_path(config, path, copy.deepcopy(value))
    return config


#: Strategies whose launcher re-runs the command and have no spawn-based twin.
_RELAUNCHING = ("fsdp", "deepspeed")
_RELAUNCHING_CLASSES = ("ModelParallelStrategy", "FSDPStrategy", "DeepSpeedStrategy")
_SPAWN_EQUIVALENT = {
    "ddp": "ddp_spawn",
    "ddp_find_unused_parameters_true": "ddp_spawn_find_unused_parameters_true",
    "ddp_find_unused_parameters_false": "ddp_spawn_find_unused_parameters_false",
}


def spawn_strategy(trainer_config: Mapping[str, Any]) -> str | None:
    """The spawn-based twin of a script-relaunching DDP strategy, when the trial needs one.

    Lightning's ``ddp`` launcher re-runs the command for ranks 1..N-1 and can do so only once per
    process, but a sweep worker fits one Trainer per trial. ``ddp_spawn`` starts fresh rank
    processes for every fit (this is what Optuna's own DDP example uses) and the main process
    keeps the trial, so every rank trains with the same parameters.

    Raises:
        SweepConfigError: for a multi-device ``fsdp`` or ``deepspeed`` trial, which has no twin,
            and for ``ModelParallelStrategy``, ``FSDPStrategy`` or ``DeepSpeedStrategy`` given
            by ``class_path``.
    """
    strategy = trainer_config.get("strategy", "auto")
    if isinstance(strategy, Mapping):  # a strategy object in the config: class_path, init_args
        strategy_class = str(strategy.get("class_path", "")).rsplit(".", 1)[-1]
        if strategy_class in _RELAUNCHING_CLASSES:
            raise SweepConfigError(
                f"trainer.strategy: {strategy_class} (sharded training) relaunches the script for "
                "its ranks, which works once per process, but a sweep worker fits one Trainer per "
                "trial; sweep with `ddp` or one device per trial, and train the chosen "
                "configuration sharded with o2nc-train"
            )
    if not isinstance(strategy, str):
        return None
    if strategy in _SPAWN_EQUIVALENT:
        return _SPAWN_EQUIVALENT[strategy]
    if strategy != "auto" and not strategy.startswith(_RELAUNCHING):
        return None
    devices = trainer_config.get("devices", "auto")
    nodes = trainer_config.get("num_nodes", 1)
    accelerator = trainer_config.get("accelerator", "auto")
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, int) and devices > 0:
        count = devices
    elif devices in (-1, "-1", "auto") and accelerator in ("auto", "gpu", "cuda"):
        import torch

        count = torch.cuda.device_count()  # Lightning takes every visible GPU
    elif isinstance(devices, str) and devices.isdigit():
        count = int(devices)
    else:
        count = 1
    if count * (nodes if isinstance(nodes, int) else 1) <= 1:
        return None
    if strategy != "auto":
        raise SweepConfigError(
            f"trainer.strategy: {strategy!r} relaunches the script for its ranks, which works "
            "once per process, but a sweep worker fits one Trainer per trial; use `ddp` (run as "
            "ddp_spawn) for multi-device trials, or one device per trial and several workers"
        )
    return "ddp_spawn"


def _resolve_train_config(value: Any, source: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise SweepConfigError(f"train_config must be a path to a train YAML, got {value!r}")
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        options = [candidate]
    else:
        options = [source.parent / candidate, Path.cwd() / candidate]
    for option in options:
        if option.is_file():
            return option.resolve()
    shipped = shipped_configs("train")
    if value.removesuffix(".yaml") in shipped:  # a shipped train config's name
        return shipped[value.removesuffix(".yaml")]
    raise SweepConfigError(
        f"train_config: {value!r} not found (looked at {', '.join(str(o) for o in options)}) "
        f"and not a shipped train config ({', '.join(shipped)})"
    )


def load_sweep_config(
    path: str | Path,
    *,
    study_name: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
) -> SweepConfig:
    """Load, validate and resolve a sweep file; command-line values replace the file's.

    Every problem that can be found without running a trial is found here: unknown keys, bad
    bounds, unknown samplers or pruners, and paths that do not exist in the train config.

    Args:
        path: the sweep file, or the name of a shipped sweep config (``digits``; an existing
            path wins). Its ``train_config`` is a path (relative to the sweep file or the
            working directory) or a shipped train config's name.
        study_name: replaces the file's ``study_name``.
        n_trials: replaces the file's ``n_trials``.
        timeout: stop starting trials after this many seconds.

    Raises:
        SweepConfigError: naming the offending key.
    """
    try:
        source = Path(resolve_config(str(path), "sweep")).resolve()
    except ValueError as error:
        raise SweepConfigError(str(error)) from None
    spec = load_yaml(source)
    check_keys(spec, _TOP_LEVEL, "")
    if "space" not in spec:
        raise SweepConfigError("space: missing; a sweep needs at least one searched field")

    train_path = _resolve_train_config(spec.get("train_config"), source)
    train_config = load_yaml(train_path)

    overrides = mapping(spec.get("overrides"), "overrides")
    for dotted, value in overrides.items():
        check_path(train_config, str(dotted), key=f"overrides.{dotted}")
        if isinstance(value, Mapping) and "type" in value:
            raise SweepConfigError(
                f"overrides.{dotted} looks like a search dimension; move it to `space`"
            )
    space = parse_space(spec["space"])
    for path in space.paths:
        check_path(train_config, path, key=f"space.{path}")
        if path in overrides:
            raise SweepConfigError(
                f"space.{path}: also set in overrides; a field is either fixed or searched"
            )
        for dotted in overrides:
            if dotted.startswith(path + ".") or path.startswith(dotted + "."):
                raise SweepConfigError(
                    f"space.{path}: overlaps overrides.{dotted}; a field is either fixed or "
                    "searched"
                )

    base_config = _with_values(train_config, overrides)
    spawn_strategy(base_config.get("trainer") or {})  # refuses fsdp/deepspeed on many devices

    objective = ObjectiveSpec.parse(spec.get("objective"))
    averaged = get_path(base_config, "model.average", default=False) is True
    if objective.weights == "averaged" and "model.average" not in space.paths and not averaged:
        raise SweepConfigError(
            "objective.weights: `averaged` reads the averaged iterate, which needs "
            "`model.average: true` in the train config or the overrides"
        )

    sampler = SamplerSpec.parse(spec.get("sampler"))
    if sampler.name == "grid":
        space.grid_search_space()  # refuses dimensions without a finite list of values

    n = n_trials if n_trials is not None else spec.get("n_trials", 20)
    n = positive_int(n, "n_trials")
    limit = timeout if timeout is not None else spec.get("timeout")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
            raise SweepConfigError(f"timeout must be a positive number of seconds, got {limit!r}")
        if not math.isfinite(limit):
            limit = None
    seed = spec.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise SweepConfigError(f"seed must be an integer or null, got {seed!r}")
    name = study_name or spec.get("study_name") or source.stem
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise SweepConfigError(f"study_name must be a non-empty name without '/', got {name!r}")

    return SweepConfig(
        source=source,
        study_name=name,
        train_config_path=train_path,
        train_config=train_config,
        overrides=overrides,
        base_config=base_config,
        objective=objective,
        space=space,
        sampler=sampler,
        pruner=PrunerSpec.parse(spec.get("pruner", "median")),
        storage=StorageSpec.parse(spec.get("storage")),
        n_trials=n,
        timeout=limit,
        seed=seed,
    )

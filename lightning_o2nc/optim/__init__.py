"""Pure-torch layer: the optimizers, random scaling around any optimizer, schedules, the factory
and theory helpers."""

from .factory import OPTIMIZERS, build_optimizer, build_schedulers, param_groups_weight_decay
from .hyperparameters import HYPERPARAMETERS, Hyperparameter, validate_hyperparameters
from .o2nc import ExponentiatedO2NC
from .random_scaling import O2NCAdamW, RandomScaling
from .scaling import SCALINGS, ScaleSampler
from .schedules import SCHEDULE_SHAPES, HyperparameterScheduler, Schedule, make_schedule
from .theory import theory_guided_hyperparameters

__all__ = [
    "HYPERPARAMETERS",
    "OPTIMIZERS",
    "SCALINGS",
    "SCHEDULE_SHAPES",
    "ExponentiatedO2NC",
    "Hyperparameter",
    "HyperparameterScheduler",
    "O2NCAdamW",
    "RandomScaling",
    "ScaleSampler",
    "Schedule",
    "build_optimizer",
    "build_schedulers",
    "make_schedule",
    "param_groups_weight_decay",
    "theory_guided_hyperparameters",
    "validate_hyperparameters",
]

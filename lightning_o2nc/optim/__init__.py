"""Pure-torch layer: the optimizer, its random scaling, schedules, the factory and theory helpers."""

from .factory import OPTIMIZERS, build_optimizer, build_schedulers, param_groups_weight_decay
from .hyperparameters import HYPERPARAMETERS, Hyperparameter, validate_hyperparameters
from .o2nc import ExponentiatedO2NC
from .scaling import SCALINGS, RandomScaling
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
    "RandomScaling",
    "Schedule",
    "build_optimizer",
    "build_schedulers",
    "make_schedule",
    "param_groups_weight_decay",
    "theory_guided_hyperparameters",
    "validate_hyperparameters",
]

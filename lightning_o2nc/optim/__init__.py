"""The optimizers in pure torch, for a plain PyTorch loop or any trainer: Exponentiated O2NC,
random scaling around any optimizer, their schedules, the factory and the plain reference."""

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

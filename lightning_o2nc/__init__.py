"""lightning-o2nc: Exponentiated O2NC (SGD with momentum, every update scaled by one s ~ Exp(1))
for PyTorch and Lightning; this module is the public API that users import from."""

# The optimizer layer imports only torch. Lightning names are re-exported lazily (__getattr__), so
# `from lightning_o2nc import ExponentiatedO2NC` never imports lightning.
from importlib import import_module
from typing import Any

from .optim import (
    ExponentiatedO2NC,
    HyperparameterScheduler,
    O2NCAdamW,
    RandomScaling,
    build_optimizer,
    build_schedulers,
    make_schedule,
    param_groups_weight_decay,
    theory_guided_hyperparameters,
)

__version__ = "0.1.0"

_LIGHTNING_EXPORTS = (
    "O2NCModule",
    "CharLanguageModule",
    "CharTextDataModule",
    "GPT",
    "GPTConfig",
    "ClassificationDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
    "SyntheticDataModule",
    "O2NCMonitor",
    "AveragedIterate",
    "MLP",
    "SmallCNN",
    "resnet18_cifar",
    "build_backbone",
)

__all__ = [
    "ExponentiatedO2NC",
    "HyperparameterScheduler",
    "O2NCAdamW",
    "RandomScaling",
    "build_optimizer",
    "build_schedulers",
    "make_schedule",
    "param_groups_weight_decay",
    "theory_guided_hyperparameters",
    *_LIGHTNING_EXPORTS,
]


def __getattr__(name: str) -> Any:
    if name in _LIGHTNING_EXPORTS:
        return getattr(import_module(".lightning", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

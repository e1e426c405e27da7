"""The optimizers in a Lightning run: LightningModules, callbacks (statistics, the averaged
iterate), data modules, backbones and the o2nc-train CLI, for either Lightning package."""

from .averaged_iterate import AveragedIterate
from .backbones import MLP, SmallCNN, build_backbone, resnet18_cifar
from .data import (
    ClassificationDataModule,
    DigitsDataModule,
    EpochSeededSampler,
    SyntheticDataModule,
)
from .gpt import GPT, GPTConfig
from .image_datasets import CIFAR10DataModule, FashionMNISTDataModule
from .language_module import CharLanguageModule
from .module import O2NCModule
from .monitor import O2NCMonitor
from .text_data import CharTextDataModule

__all__ = [
    "GPT",
    "MLP",
    "AveragedIterate",
    "CIFAR10DataModule",
    "CharLanguageModule",
    "CharTextDataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "EpochSeededSampler",
    "FashionMNISTDataModule",
    "GPTConfig",
    "O2NCModule",
    "O2NCMonitor",
    "SmallCNN",
    "SyntheticDataModule",
    "build_backbone",
    "resnet18_cifar",
]

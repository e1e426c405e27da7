"""Lightning layer: LightningModule, backbones, data modules, callbacks and the CLI."""

from .averaged_iterate import AveragedIterate
from .backbones import MLP, SmallCNN, build_backbone, resnet18_cifar
from .data import (
    ClassificationDataModule,
    DigitsDataModule,
    EpochSeededSampler,
    SyntheticDataModule,
)
from .image_datasets import CIFAR10DataModule, FashionMNISTDataModule
from .module import O2NCModule
from .monitor import O2NCMonitor

__all__ = [
    "MLP",
    "AveragedIterate",
    "CIFAR10DataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "EpochSeededSampler",
    "FashionMNISTDataModule",
    "O2NCModule",
    "O2NCMonitor",
    "SmallCNN",
    "SyntheticDataModule",
    "build_backbone",
    "resnet18_cifar",
]

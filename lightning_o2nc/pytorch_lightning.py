"""The Lightning layer for code that imports ``pytorch_lightning`` (the standalone package).

    import pytorch_lightning as pl
    from lightning_o2nc.pytorch_lightning import O2NCModule, O2NCMonitor, AveragedIterate

It holds the names of :mod:`lightning_o2nc.lightning`. The callbacks and data modules are the
very same classes (each derives from both packages' base class, so either Trainer accepts it);
``O2NCModule`` and ``O2NCLightningCLI`` are the same bodies put on ``pytorch_lightning``'s base
classes by :func:`~lightning_o2nc.lightning.packages.for_package`.
"""

from .lightning import (
    MLP,
    AveragedIterate,
    CIFAR10DataModule,
    ClassificationDataModule,
    DigitsDataModule,
    EpochSeededSampler,
    FashionMNISTDataModule,
    O2NCMonitor,
    SmallCNN,
    SyntheticDataModule,
    build_backbone,
    resnet18_cifar,
)
from .lightning import O2NCModule as _O2NCModule
from .lightning.cli import O2NCLightningCLI as _O2NCLightningCLI
from .lightning.packages import for_package

O2NCModule = for_package(_O2NCModule, "pytorch_lightning")
O2NCLightningCLI = for_package(_O2NCLightningCLI, "pytorch_lightning")

__all__ = [
    "MLP",
    "AveragedIterate",
    "CIFAR10DataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "EpochSeededSampler",
    "FashionMNISTDataModule",
    "O2NCLightningCLI",
    "O2NCModule",
    "O2NCMonitor",
    "SmallCNN",
    "SyntheticDataModule",
    "build_backbone",
    "resnet18_cifar",
]

"""Data modules: the base class, digits (embedded default) and synthetic data for tests.

All of them are image classification data modules with a fixed train/val/test split, an
``input_shape`` ``(C, H, W)`` and a ``num_classes`` that the model is built for (the CLI links
them; ``O2NCModule`` reads them from the data module otherwise). The training order is a pure
function of ``(seed, epoch)`` (see :class:`EpochSeededSampler`), so a fit resumed from an
end-of-epoch checkpoint sees the same batches as an uninterrupted one. Fashion-MNIST and CIFAR-10
live in :mod:`.image_datasets`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset
from typing_extensions import override

from .packages import LightningDataModule


class EpochSeededSampler(Sampler[int]):
    """A random permutation of ``range(num_samples)`` that depends only on ``seed`` and the epoch.

    Lightning calls ``set_epoch`` at the start of every epoch (as for ``DistributedSampler``), so
    the order of an epoch does not depend on what consumed the global RNG before it.

    Args:
        num_samples: Size of the dataset.
        seed: Base seed of the permutations.
    """

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


class ClassificationDataModule(LightningDataModule):  # of both Lightning packages
    """Image classification data: batch size, loaders, and the ``input_shape`` / ``num_classes``.

    Subclasses set ``self.train_set``, ``self.val_set`` and ``self.test_set`` in ``setup``.

    Args:
        batch_size: Examples per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        seed: Seed of the data split and of the training order.
        pin_memory: Pin host memory (useful with CUDA).
    """

    input_shape: tuple[int, ...] = ()
    num_classes: int = 0

    def __init__(
        self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, pin_memory: bool = False
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not built this split yet")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(len(dataset), self.seed) if train else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)


def _standardize(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (x - reference.mean()) / reference.std()


class SyntheticDataModule(ClassificationDataModule):
    """Gaussian class clusters in image shape, for tests and smoke runs.

    Args:
        num_samples: Total examples, split into train/val/test.
        input_shape: Shape of one example ``(C, H, W)``.
        num_classes: Number of classes.
        separation: Distance scale between class means (noise has unit variance).
        val_fraction: Fraction of examples held out for validation.
        test_fraction: Fraction of examples held out for testing.
        batch_size: Examples per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory for faster copies to a GPU.
        seed: Seed of the data, the split and the training order.
    """

    def __init__(
        self,
        num_samples: int = 256,
        input_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 4,
        separation: float = 1.0,
        val_fraction: float = 0.25,
        test_fraction: float = 0.25,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ):
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, pin_memory=pin_memory
        )
        self.num_samples = num_samples
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.separation = separation
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    @override
    def setup(self, stage: str) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        means = self.separation * torch.randn(
            self.num_classes, *self.input_shape, generator=generator
        )
        labels = torch.arange(self.num_samples) % self.num_classes
        labels = labels[torch.randperm(self.num_samples, generator=generator)]
        images = means[labels] + torch.randn(
            self.num_samples, *self.input_shape, generator=generator
        )
        n_val = int(self.val_fraction * self.num_samples)
        n_test = int(self.test_fraction * self.num_samples)
        n_train = self.num_samples - n_val - n_test
        self.train_set = TensorDataset(images[:n_train], labels[:n_train])
        self.val_set = TensorDataset(
            images[n_train : n_train + n_val], labels[n_train : n_train + n_val]
        )
        self.test_set = TensorDataset(images[n_train + n_val :], labels[n_train + n_val :])


class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's 8x8 handwritten digits (1797 images, bundled with scikit-learn, no download).

    The split is stratified and fixed by ``seed``; pixels are standardized with the training
    split's mean and standard deviation.

    Args:
        batch_size: Examples per batch.
        val_fraction: Fraction of all examples held out for validation.
        test_fraction: Fraction of all examples held out for testing.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory for faster copies to a GPU.
        seed: Seed of the split and of the training order.
    """

    input_shape = (1, 8, 8)
    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ):
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, pin_memory=pin_memory
        )
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    @override
    def setup(self, stage: str) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
        labels = torch.tensor(digits.target, dtype=torch.long)
        index = np.arange(len(labels))
        train_val, test = train_test_split(
            index, test_size=self.test_fraction, stratify=digits.target, random_state=self.seed
        )
        train, val = train_test_split(
            train_val,
            test_size=self.val_fraction / (1.0 - self.test_fraction),
            stratify=digits.target[train_val],
            random_state=self.seed,
        )
        reference = images[train]
        images = _standardize(images, reference)
        self.train_set = TensorDataset(images[train], labels[train])
        self.val_set = TensorDataset(images[val], labels[val])
        self.test_set = TensorDataset(images[test], labels[test])

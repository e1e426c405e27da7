"""Data modules: digits (embedded default), Fashion-MNIST, CIFAR-10 and synthetic data for tests.

All of them are image classification data modules with a fixed train/val/test split, an
``input_shape`` ``(C, H, W)`` and a ``num_classes`` that the CLI links into the model. The
training order is a pure function of ``(seed, epoch)`` (see :class:`EpochSeededSampler`), so a fit
resumed from an end-of-epoch checkpoint sees the same batches as an uninterrupted one.

Nothing is downloaded unless ``download=True``. A missing dataset fails in ``prepare_data`` /
``setup`` (before any training step) with an error naming the paths looked at and how to get it.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset
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
    """Base class: batch size, loaders, and the ``input_shape`` / ``num_classes`` the model needs.

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


class _NormalizedImages(Dataset):
    """uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` served as normalized float ``(C, H, W)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float):
        self.images = images
        self.labels = labels
        self.mean = mean
        self.std = std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index].float().div_(255.0).sub_(self.mean).div_(self.std)
        return image.unsqueeze(0), self.labels[index]


def _split_indices(n: int, n_val: int, seed: int) -> tuple[list[int], list[int]]:
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(permutation[n_val:]), sorted(permutation[:n_val])


class FashionMNISTDataModule(ClassificationDataModule):
    """Fashion-MNIST through ``torchvision.datasets.FashionMNIST`` over ``root``.

    torchvision reads the uncompressed idx files in ``ROOT/FashionMNIST/raw/``. ``prepare_data``
    fills that folder, in this order of preference, without copying anything that is already
    usable: files already there; ``.gz`` files there (decompressed in place); the Debian package
    ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``, decompressed into the raw
    folder, or linked when uncompressed); a download when ``download=True``.

    Args:
        root: Data directory (``ROOT/FashionMNIST/raw/`` is used).
        download: Download from the torchvision mirrors when the files are missing.
        system_dirs: Extra folders holding the four idx files (``.gz`` or not).
        val_size: Training images held out for validation (fixed by ``seed``).
        batch_size: Examples per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory for faster copies to a GPU.
        seed: Seed of the split and of the training order.
    """

    input_shape = (1, 28, 28)
    num_classes = 10
    files = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    mean, std = 0.2860, 0.3530

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        system_dirs: Sequence[str] = ("/usr/share/datasets/fashion-mnist",),
        val_size: int = 5000,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ):
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, pin_memory=pin_memory
        )
        self.root = Path(root)
        self.download = download
        self.system_dirs = [Path(d) for d in system_dirs]
        self.val_size = val_size

    @property
    def raw_folder(self) -> Path:
        """The folder torchvision reads: ``ROOT/FashionMNIST/raw``."""
        return self.root / "FashionMNIST" / "raw"

    def _missing(self) -> list[str]:
        return [name for name in self.files if not (self.raw_folder / name).is_file()]

    def _fill_raw_folder(self, name: str) -> bool:
        target = self.raw_folder / name
        for folder in [self.raw_folder, *self.system_dirs]:
            compressed = folder / f"{name}.gz"
            if folder != self.raw_folder and (folder / name).is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink((folder / name).resolve(), target)
                return True
            if compressed.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".partial")
                with gzip.open(compressed, "rb") as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                partial.replace(target)
                rank_zero_info(f"Fashion-MNIST: decompressed {compressed} into {target}")
                return True
        return False

    def _missing_error(self, missing: list[str]) -> FileNotFoundError:
        looked = [str(self.raw_folder)] + [str(d) for d in self.system_dirs]
        return FileNotFoundError(
            f"Fashion-MNIST files {missing} not found (looked in {looked}, as plain or .gz idx "
            "files). Get them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or "
            f"copy the four idx files into {self.raw_folder}, or set `download: true` "
            "(--data.init_args.download=true) to download them."
        )

    @override
    def prepare_data(self) -> None:
        missing = [name for name in self._missing() if not self._fill_raw_folder(name)]
        if missing and self.download:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(self.root), train=True, download=True)
            missing = self._missing()
        if missing:
            raise self._missing_error(missing)

    @override
    def setup(self, stage: str) -> None:
        from torchvision.datasets import FashionMNIST

        if missing := self._missing():
            raise self._missing_error(missing)
        if stage in ("fit", "validate"):
            train = FashionMNIST(str(self.root), train=True)
            train_idx, val_idx = _split_indices(len(train.targets), self.val_size, self.seed)
            full = _NormalizedImages(train.data, train.targets, self.mean, self.std)
            self.train_set = Subset(full, train_idx)
            self.val_set = Subset(full, val_idx)
        if stage in ("test", "predict"):
            test = FashionMNIST(str(self.root), train=False)
            self.test_set = _NormalizedImages(test.data, test.targets, self.mean, self.std)


def _cifar10_class():
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        """torchvision's CIFAR10 that accepts any complete archive in the python format.

        torchvision checks the official MD5 sums even when nothing is downloaded, which rejects
        re-packed or reduced copies. Here the sums are checked only by ``download``.
        """

        @override
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
            return all((folder / name).is_file() for name in names)

        @override
        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                data = pickle.load(f, encoding="latin1")
            self.classes = data[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    return LocalCIFAR10


class CIFAR10DataModule(ClassificationDataModule):
    """CIFAR-10 through ``torchvision.datasets.CIFAR10`` (python format) over ``root``.

    Training images get the standard augmentation (random 32x32 crop with 4 pixels of padding and
    a horizontal flip); all images are normalized with the CIFAR-10 channel statistics.

    Args:
        root: Data directory holding ``cifar-10-batches-py/``.
        download: Download the archive (with MD5 check) when it is missing.
        val_size: Training images held out for validation (fixed by ``seed``, no augmentation).
        augment: Apply crop+flip to training images.
        batch_size: Examples per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory for faster copies to a GPU.
        seed: Seed of the split and of the training order.
    """

    input_shape = (3, 32, 32)
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        val_size: int = 5000,
        augment: bool = True,
        batch_size: int = 128,
        num_workers: int = 4,
        pin_memory: bool = False,
        seed: int = 0,
    ):
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, pin_memory=pin_memory
        )
        self.root = Path(root)
        self.download = download
        self.val_size = val_size
        self.augment = augment

    @property
    def data_folder(self) -> Path:
        """The folder torchvision reads: ``ROOT/cifar-10-batches-py``."""
        return self.root / "cifar-10-batches-py"

    def _check(self) -> None:
        dataset = _cifar10_class()
        names = [name for name, _ in dataset.train_list + dataset.test_list] + [
            dataset.meta["filename"]
        ]
        if not all((self.data_folder / name).is_file() for name in names):
            raise FileNotFoundError(
                f"CIFAR-10 not found in {self.data_folder} (expected data_batch_1..5, test_batch and "
                "batches.meta in the python format). Set `download: true` "
                "(--data.init_args.download=true) to download it, or extract "
                f"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html into {self.root}."
            )

    def _transforms(self, train: bool):
        from torchvision import transforms

        steps = (
            [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
            if train
            else []
        )
        return transforms.Compose(
            [*steps, transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        )

    @override
    def prepare_data(self) -> None:
        if self.download and not self.data_folder.is_dir():
            from torchvision.datasets import CIFAR10

            CIFAR10(str(self.root), train=True, download=True)
        self._check()

    @override
    def setup(self, stage: str) -> None:
        dataset = _cifar10_class()
        if stage in ("fit", "validate"):
            train = dataset(str(self.root), train=True, transform=self._transforms(self.augment))
            plain = dataset(str(self.root), train=True, transform=self._transforms(False))
            train_idx, val_idx = _split_indices(len(train), self.val_size, self.seed)
            self.train_set = Subset(train, train_idx)
            self.val_set = Subset(plain, val_idx)
        if stage in ("test", "predict"):
            self.test_set = dataset(str(self.root), train=False, transform=self._transforms(False))

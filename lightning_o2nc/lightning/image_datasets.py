"""Fashion-MNIST and CIFAR-10 data modules, over torchvision's readers and local files.

``prepare_data`` finds or fetches the files (see :mod:`.dataset_files`: safe when several
processes prepare one folder at once); a dataset that cannot be found stops the run before any
training with a :class:`~.errors.DatasetNotFoundError` naming the paths looked at and how to get it.
Nothing is downloaded unless ``download=True``.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import Dataset, Subset
from typing_extensions import override

from .data import ClassificationDataModule
from .dataset_files import gunzip_to, idx_file_is_complete, link_to, private_folder, publish
from .errors import DatasetNotFoundError


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
    folder, or linked when uncompressed); a download when ``download=True``. A file counts as
    there when its size matches its idx header; several processes may prepare one folder at once.

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
        return [name for name in self.files if not idx_file_is_complete(self.raw_folder / name)]

    def _fill_raw_folder(self, name: str) -> bool:
        target = self.raw_folder / name
        for folder in [self.raw_folder, *self.system_dirs]:
            plain, compressed = folder / name, folder / f"{name}.gz"
            if folder != self.raw_folder and idx_file_is_complete(plain):
                link_to(plain, target, idx_file_is_complete)
                return True
            if compressed.is_file():
                if gunzip_to(compressed, target, idx_file_is_complete):
                    rank_zero_info(f"Fashion-MNIST: decompressed {compressed} into {target}")
                return True
        return False

    def _download(self) -> None:
        """torchvision's download into a private folder, then each file published into ours."""
        from torchvision.datasets import FashionMNIST

        with private_folder(self.root, "FashionMNIST-download") as folder:
            FashionMNIST(str(folder), train=True, download=True)
            for name in self._missing():
                self.raw_folder.mkdir(parents=True, exist_ok=True)
                fetched = folder / "FashionMNIST" / "raw" / name
                publish(fetched, self.raw_folder / name, idx_file_is_complete)

    def _missing_error(self, missing: list[str]) -> DatasetNotFoundError:
        looked = [str(self.raw_folder)] + [str(d) for d in self.system_dirs]
        return DatasetNotFoundError(
            f"Fashion-MNIST files {missing} not found (looked in {looked}, as plain or .gz idx "
            "files). Get them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or "
            f"copy the four idx files into {self.raw_folder}, or set `download: true` "
            "(--data.init_args.download=true) to download them."
        )

    @override
    def prepare_data(self) -> None:
        missing = [name for name in self._missing() if not self._fill_raw_folder(name)]
        if missing and self.download:
            self._download()
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

    @staticmethod
    def _is_complete(folder: Path, checksums: bool = False) -> bool:
        """All files of the python format in ``folder`` (with ``checksums``: the official MD5s)."""
        from torchvision.datasets.utils import check_integrity

        dataset = _cifar10_class()
        files = [
            *dataset.train_list,
            *dataset.test_list,
            (dataset.meta["filename"], dataset.meta["md5"]),
        ]
        if checksums:
            return all(check_integrity(str(folder / name), md5) for name, md5 in files)
        return all((folder / name).is_file() for name, _ in files)

    def _download(self) -> None:
        """torchvision's download (MD5-checked) into a private folder, then one atomic rename.

        A folder another process renamed into place first is kept when its checksums match.
        """
        from torchvision.datasets import CIFAR10

        with private_folder(self.root, "cifar-10-download") as folder:
            CIFAR10(str(folder), train=True, download=True)
            try:
                (folder / self.data_folder.name).rename(self.data_folder)
            except OSError:  # the target exists: another process was faster
                if not self._is_complete(self.data_folder, checksums=True):
                    raise

    def _check(self) -> None:
        if not self._is_complete(self.data_folder):
            raise DatasetNotFoundError(
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
            self._download()
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

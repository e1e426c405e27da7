"""The data and models the benchmarks train, built from the Lightning layer's own components.

Nothing here re-implements a data module or a model: the datasets are
:class:`~lightning_o2nc.DigitsDataModule` and :class:`~lightning_o2nc.FashionMNISTDataModule`,
the model is :class:`~lightning_o2nc.O2NCModule` around the project's ``SmallCNN`` (narrowed to
``width`` channels so that 5 seeds x 3 arms fit a 2-core budget) or the CIFAR ResNet-18.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .report import WORK_DIR

# A benchmark fit writes no checkpoint, draws no progress bar and prints no model summary.
QUIET_TRAINER: dict[str, Any] = {
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DATA_ROOT = WORK_DIR / "data"
HOW_TO_GET_FASHION_MNIST = (
    "Fashion-MNIST is missing. On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` "
    f"(files in {DEBIAN_FASHION_MNIST}); elsewhere copy the four idx files "
    f"({', '.join(FASHION_FILES)}, .gz or not) into {DATA_ROOT / 'FashionMNIST' / 'raw'}, or set "
    "O2NC_FASHION_MNIST_DIR to a folder that holds them."
)


def fashion_mnist_dirs() -> list[Path]:
    """Folders that may hold the Fashion-MNIST idx files, in order of preference."""
    dirs = []
    if os.environ.get("O2NC_FASHION_MNIST_DIR"):
        dirs.append(Path(os.environ["O2NC_FASHION_MNIST_DIR"]))
    dirs += [DATA_ROOT / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]
    return dirs


def fashion_mnist_available() -> bool:
    """All four idx files (plain or ``.gz``) are in one of :func:`fashion_mnist_dirs`."""
    return any(
        all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in FASHION_FILES)
        for d in fashion_mnist_dirs()
    )


def ensure_fashion_mnist(install: bool = True) -> str | None:
    """Make Fashion-MNIST available; return None when it is, else the reason it is not.

    With ``install`` and apt-get on the machine, installs Debian's ``dataset-fashion-mnist`` (with
    sudo when not root and sudo exists).
    """
    if fashion_mnist_available():
        return None
    if install and shutil.which("apt-get"):
        sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
        if sudo is not None:
            print(
                "Fashion-MNIST: installing Debian's dataset-fashion-mnist with apt-get", flush=True
            )
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(
                [*sudo, "apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], env=env
            )
            if not fashion_mnist_available():
                subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env)
                subprocess.run(
                    [*sudo, "apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], env=env
                )
    return None if fashion_mnist_available() else HOW_TO_GET_FASHION_MNIST


#: The hyper-parameters a benchmark takes from ``lightning_o2nc/configs/train/<dataset>_sgdm.yaml`` when not given.
TRAIN_HYPERPARAMETERS = ("lr", "beta", "weight_decay", "batch_size")


def train_hyperparameters(dataset: str) -> dict[str, Any]:
    """η, β, weight decay and batch size of ``lightning_o2nc/configs/train/<dataset>_sgdm.yaml``."""
    import yaml

    from .report import REPO_ROOT

    path = REPO_ROOT / "lightning_o2nc" / "configs" / "train" / f"{dataset}_sgdm.yaml"
    if not path.is_file():
        raise ValueError(f"no train config {path} for dataset {dataset!r}")
    config = yaml.safe_load(path.read_text())
    model = config["model"]
    return {
        "lr": model["lr"],
        "beta": model["beta"],
        "weight_decay": model["weight_decay"],
        "batch_size": config["data"]["init_args"]["batch_size"],
    }


def with_train_hyperparameters(config: Any) -> Any:
    """``config`` (a dataclass with ``dataset``) with every unset (None) training hyper-parameter
    taken from the dataset's train config."""
    import dataclasses

    known = train_hyperparameters(config.dataset)
    unset = {k: known[k] for k in TRAIN_HYPERPARAMETERS if getattr(config, k) is None}
    return dataclasses.replace(config, **unset)


def module_hyperparameters(config: Any) -> dict[str, Any]:
    """The model's share of ``config``'s training hyper-parameters (all but the batch size)."""
    return {k: getattr(config, k) for k in TRAIN_HYPERPARAMETERS if k != "batch_size"}


def make_datamodule(dataset: str, batch_size: int, seed: int = 0, num_workers: int = 0) -> Any:
    """``"digits"`` or ``"fashion_mnist"`` as the Lightning layer's data module."""
    from lightning_o2nc import DigitsDataModule, FashionMNISTDataModule

    if dataset == "digits":
        return DigitsDataModule(batch_size=batch_size, seed=seed, num_workers=num_workers)
    if dataset == "fashion_mnist":
        return FashionMNISTDataModule(
            root=str(DATA_ROOT),
            system_dirs=[
                str(d) for d in fashion_mnist_dirs() if d != DATA_ROOT / "FashionMNIST" / "raw"
            ],
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
        )
    raise ValueError(f"Unknown dataset {dataset!r}; valid: digits, fashion_mnist")


def make_backbone(name: str, input_shape: tuple[int, ...], num_classes: int, width: int) -> Any:
    """``"small_cnn"`` (the project's SmallCNN with ``width`` channels) or ``"resnet18_cifar"``."""
    from lightning_o2nc.lightning.backbones import SmallCNN, build_backbone

    if name == "small_cnn":
        return SmallCNN(input_shape[0], num_classes, width=width)
    return build_backbone(name, input_shape, num_classes)

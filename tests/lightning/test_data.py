import gzip
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from lightning_o2nc.lightning import (
    CIFAR10DataModule,
    DigitsDataModule,
    EpochSeededSampler,
    FashionMNISTDataModule,
    O2NCModule,
    SyntheticDataModule,
)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _split(dm, stage="fit"):
    dm.setup(stage)
    return dm


def test_digits_split_is_fixed_by_seed_disjoint_complete_and_stratified():
    first = DigitsDataModule(seed=3)
    first.setup("fit")
    again = DigitsDataModule(seed=3)
    again.setup("fit")
    other = DigitsDataModule(seed=4)
    other.setup("fit")
    assert torch.equal(first.train_set.tensors[0], again.train_set.tensors[0])
    assert not torch.equal(first.train_set.tensors[1], other.train_set.tensors[1])
    sizes = [len(s) for s in (first.train_set, first.val_set, first.test_set)]
    assert sum(sizes) == 1797
    assert sizes[2] == pytest.approx(0.2 * 1797, abs=1)
    images = torch.cat(
        [s.tensors[0] for s in (first.train_set, first.val_set, first.test_set)]
    ).flatten(1)
    assert len(torch.unique(images, dim=0)) == len(torch.unique(torch.tensor(_all_digits()), dim=0))
    for subset in (first.val_set, first.test_set):
        counts = torch.bincount(subset.tensors[1], minlength=10).float()
        assert counts.min() >= 0.9 * counts.mean() - 1  # stratified: every class equally present
    assert first.train_set.tensors[0].shape[1:] == DigitsDataModule.input_shape


def _all_digits():
    from sklearn.datasets import load_digits

    return load_digits().data


def test_training_order_depends_only_on_seed_and_epoch():
    sampler = EpochSeededSampler(50, seed=1)
    sampler.set_epoch(2)
    order = list(sampler)
    torch.manual_seed(123)  # the global RNG must not matter
    replay = EpochSeededSampler(50, seed=1)
    replay.set_epoch(2)
    assert list(replay) == order
    assert sorted(order) == list(range(50))
    sampler.set_epoch(3)
    assert list(sampler) != order


def test_synthetic_data_is_deterministic_and_shaped_as_declared():
    a, b = (
        SyntheticDataModule(input_shape=(3, 4, 4), num_classes=5),
        SyntheticDataModule(input_shape=(3, 4, 4), num_classes=5),
    )
    a.setup("fit")
    b.setup("fit")
    x, y = next(iter(a.train_dataloader()))
    assert x.shape[1:] == (3, 4, 4)
    assert int(y.max()) < 5
    assert torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])


# ------------------------------------------------------------------ Fashion-MNIST
def _write_idx(folder: Path, n_train=12, n_test=6, compress=True):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)

    def write(name, magic, array):
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
        payload = header + array.astype(np.uint8).tobytes()
        if compress:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(payload)
        else:
            (folder / name).write_bytes(payload)

    write("train-images-idx3-ubyte", 2051, rng.integers(0, 256, (n_train, 28, 28)))
    write("train-labels-idx1-ubyte", 2049, np.arange(n_train) % 10)
    write("t10k-images-idx3-ubyte", 2051, rng.integers(0, 256, (n_test, 28, 28)))
    write("t10k-labels-idx1-ubyte", 2049, np.arange(n_test) % 10)


def test_fashion_mnist_decompresses_system_files_once_into_the_raw_folder(tmp_path):
    system = tmp_path / "system"
    _write_idx(system)
    dm = FashionMNISTDataModule(
        root=str(tmp_path / "data"), system_dirs=[str(system)], val_size=2, batch_size=4
    )
    dm.prepare_data()
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FashionMNISTDataModule.files)
    stamps = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    dm.prepare_data()  # nothing is rewritten
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == stamps
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (10, 2, 6)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 28, 28)
    assert x.dtype == torch.float32


def test_fashion_mnist_links_uncompressed_files_instead_of_copying(tmp_path):
    system = tmp_path / "system"
    _write_idx(system, compress=False)
    dm = FashionMNISTDataModule(root=str(tmp_path / "data"), system_dirs=[str(system)], val_size=2)
    dm.prepare_data()
    for name in FashionMNISTDataModule.files:
        assert os.path.islink(dm.raw_folder / name)


def test_fashion_mnist_uses_a_users_gz_copy_in_place(tmp_path):
    root = tmp_path / "data"
    _write_idx(root / "FashionMNIST" / "raw")
    dm = FashionMNISTDataModule(root=str(root), system_dirs=[], val_size=2)
    dm.prepare_data()
    dm.setup("test")
    assert len(dm.test_set) == 6


def test_missing_fashion_mnist_fails_before_training_naming_paths_and_remedies(tmp_path):
    dm = FashionMNISTDataModule(
        root=str(tmp_path / "nowhere"), system_dirs=[str(tmp_path / "nosys")]
    )
    with pytest.raises(FileNotFoundError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in message
    assert str(tmp_path / "nosys") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download: true" in message
    with pytest.raises(FileNotFoundError):
        dm.setup("fit")


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_fashion_mnist_finds_the_debian_package(tmp_path):
    dm = FashionMNISTDataModule(root=str(tmp_path))
    dm.prepare_data()
    dm.setup("test")
    assert len(dm.test_set) == 10000


# ------------------------------------------------------------------ CIFAR-10
def _write_tiny_cifar(root: Path, per_batch=4, n_test=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name, n, offset):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {"batch_label": name, "labels": [(offset + i) % 10 for i in range(n)], "data": data}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)

    for i in range(1, 6):
        dump(f"data_batch_{i}", per_batch, i)
    dump("test_batch", n_test, 0)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2
        )


def test_cifar10_reads_an_archive_in_the_python_format_and_augments_only_training(tmp_path):
    _write_tiny_cifar(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=4, batch_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (16, 4, 6)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32)
    # normalization: raw pixels in [0, 1] mapped with the CIFAR-10 channel statistics
    image, _ = dm.test_set[0]
    raw = torch.tensor(dm.test_set.data[0]).permute(2, 0, 1).float() / 255
    mean = torch.tensor(CIFAR10DataModule.mean)[:, None, None]
    std = torch.tensor(CIFAR10DataModule.std)[:, None, None]
    assert torch.allclose(image, (raw - mean) / std, atol=1e-6)
    train_dataset = dm.train_set.dataset
    assert [type(t).__name__ for t in train_dataset.transform.transforms][:2] == [
        "RandomCrop",
        "RandomHorizontalFlip",
    ]
    assert [type(t).__name__ for t in dm.val_set.dataset.transform.transforms] == [
        "ToTensor",
        "Normalize",
    ]


def test_cifar10_resnet18_trains_a_step_on_the_tiny_archive(tmp_path, trainer_kwargs):
    _write_tiny_cifar(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=4, batch_size=8, num_workers=0)
    model = O2NCModule(
        "resnet18_cifar", input_shape=dm.input_shape, num_classes=10, lr=0.01, seed=0
    )
    trainer = Trainer(
        **{**trainer_kwargs, "max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1}
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 1
    assert "val/acc_avg" in trainer.callback_metrics


def test_missing_cifar10_fails_in_prepare_data_naming_the_path(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*download: true"):
        dm.prepare_data()


# ------------------------------------------------------------------ many processes, one folder
def _prepare_in_lockstep(roots, system, barrier):
    for root in roots:
        barrier.wait(timeout=30)  # all processes start on the same fresh folder together
        FashionMNISTDataModule(root=root, system_dirs=[system]).prepare_data()


@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "plain"])
def test_many_processes_prepare_one_fresh_folder_at_once_without_failing(tmp_path, compressed):
    system = tmp_path / "system"
    _write_idx(system, n_train=3000, n_test=1000, compress=compressed)  # ~3 MB to decompress
    roots = [str(tmp_path / f"data{i}") for i in range(5)]  # five rounds, a fresh folder each
    context = multiprocessing.get_context("fork")  # independent processes, started in a blink
    barrier = context.Barrier(4)
    processes = [
        context.Process(target=_prepare_in_lockstep, args=(roots, str(system), barrier))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * 4
    for root in roots:
        dm = FashionMNISTDataModule(root=root, system_dirs=[], val_size=2)
        assert sorted(p.name for p in dm.raw_folder.iterdir()) == sorted(dm.files)  # no leftovers
        for name in dm.files:
            source = system / name
            if compressed:
                with gzip.open(f"{source}.gz") as f:
                    expected = f.read()
            else:
                expected = source.read_bytes()
            assert (dm.raw_folder / name).read_bytes() == expected
        dm.setup("test")
        assert len(dm.test_set) == 1000


def test_a_truncated_file_left_in_the_raw_folder_is_replaced(tmp_path):
    system = tmp_path / "system"
    _write_idx(system)
    dm = FashionMNISTDataModule(root=str(tmp_path / "data"), system_dirs=[str(system)], val_size=2)
    dm.prepare_data()
    target = dm.raw_folder / "t10k-images-idx3-ubyte"
    whole = target.read_bytes()
    target.write_bytes(whole[:100])  # e.g. a copy interrupted by a full disk
    dm.prepare_data()
    assert target.read_bytes() == whole


def test_missing_dataset_is_a_one_line_config_error(tmp_path):
    from lightning_o2nc.lightning.errors import RunConfigError

    dm = FashionMNISTDataModule(root=str(tmp_path / "none"), system_dirs=[])
    with pytest.raises(RunConfigError, match="apt-get install dataset-fashion-mnist"):
        dm.prepare_data()
    with pytest.raises(RunConfigError, match="download: true"):
        CIFAR10DataModule(root=str(tmp_path / "none")).prepare_data()

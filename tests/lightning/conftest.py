"""Shared fixtures for the Lightning layer tests: tiny synthetic data, fast CPU trainers."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from lightning_o2nc.lightning import O2NCModule, SyntheticDataModule
from tests.train_configs import QUIET_CPU


@pytest.fixture(autouse=True)
def _quiet_lightning():
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        yield


@pytest.fixture
def trainer_kwargs(tmp_path):
    """Fast single-process CPU Trainer settings writing only under tmp_path."""
    return dict(
        default_root_dir=tmp_path,
        devices=1,
        max_epochs=2,
        num_sanity_val_steps=0,
        deterministic=True,
        **QUIET_CPU,
    )


@pytest.fixture
def make_data():
    def make(**kwargs) -> SyntheticDataModule:
        options = dict(num_samples=192, input_shape=(1, 8, 8), num_classes=4, batch_size=16, seed=0)
        options.update(kwargs)
        return SyntheticDataModule(**options)

    return make


@pytest.fixture
def make_model():
    def make(**kwargs) -> O2NCModule:
        options = dict(backbone="mlp", input_shape=(1, 8, 8), num_classes=4, lr=0.1, seed=0)
        options.update(kwargs)
        return O2NCModule(**options)

    return make

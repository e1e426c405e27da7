"""Fixtures for the sweep tests: tiny train configs, sweep files, and a throw-away PostgreSQL.

The PostgreSQL cluster is real (:func:`lightning_o2nc.sweeps.local_postgres.local_postgres`, shared with the
storage benchmark): ``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback
port with password authentication, ``pg_ctl stop`` afterwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_o2nc.sweeps.local_postgres import PostgresUnavailable, local_postgres
from tests.train_configs import cpu_trainer

REPO = Path(__file__).resolve().parents[2]
PG_PASSWORD = "Tr0ub4dor-pg-secret"


def tiny_train_config(**trainer: Any) -> dict[str, Any]:
    """A train config that fits in about a second: synthetic clusters, a small MLP, 2 epochs."""
    return {
        "seed_everything": 0,
        "trainer": cpu_trainer({"enable_checkpointing": False, "log_every_n_steps": 1}, trainer),
        "model": {
            "backbone": "mlp",
            "optimizer": "o2nc",
            "lr": 0.05,
            "beta": 0.9,
            "mu": 0.0,
            "scaling": "exponential",
            "seed": 0,
            "average": True,
        },
        "data": {
            "class_path": "lightning_o2nc.SyntheticDataModule",
            "init_args": {"num_samples": 192, "batch_size": 32, "seed": 0, "separation": 2.0},
        },
    }


def default_sweep(train: Path, /, **changes: Any) -> dict[str, Any]:
    """A small but complete sweep over lr, beta, mu and the lr schedule."""
    sweep: dict[str, Any] = {
        "study_name": "tiny",
        "train_config": str(train),
        "n_trials": 3,
        "seed": 0,
        "objective": {"metric": "val/acc", "direction": "maximize", "weights": "averaged"},
        "space": {
            "model.lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
            "model.beta": {"type": "one_minus", "low": 0.01, "high": 0.5},
            "model.mu": {"type": "zero_or_float", "low": 1.0e-4, "high": 0.1},
            "model.schedules.lr": {
                "type": "schedule",
                "choices": {
                    "constant": {},
                    "warmup_cosine": {
                        "warmup_fraction": {"type": "float", "low": 0.0, "high": 0.3}
                    },
                },
            },
        },
        "sampler": {"name": "tpe", "options": {"n_startup_trials": 2}},
        "pruner": {"name": "median", "options": {"n_startup_trials": 1}},
        "storage": {"heartbeat_interval": 1, "grace_period": 2, "max_retry": 3},
    }
    sweep.update(changes)
    return sweep


@pytest.fixture(name="tiny_train_config")
def _tiny_train_config_fixture():
    """The :func:`tiny_train_config` factory."""
    return tiny_train_config


@pytest.fixture(name="default_sweep")
def _default_sweep_fixture():
    """The :func:`default_sweep` factory."""
    return default_sweep


@pytest.fixture(name="worker")
def _worker_fixture():
    """``(worker_command, worker_env)``: run ``o2nc-sweep`` in a separate process."""
    return worker_command, worker_env


@pytest.fixture
def write_yaml(tmp_path: Path):
    """``write_yaml(name, data) -> path`` under the test's tmp_path."""

    def write(name: str, data: dict[str, Any]) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def train_config(write_yaml) -> Path:
    return write_yaml("train.yaml", tiny_train_config())


def worker_command(*args: str) -> list[str]:
    """The ``o2nc-sweep`` command line run as a separate process with this interpreter."""
    return [sys.executable, "-m", "lightning_o2nc.sweeps.cli", *args]


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("O2NC_SWEEP_STORAGE", None)
    return env


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A URL (with a password) of a throw-away PostgreSQL server on loopback."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(local_postgres(PG_PASSWORD))
        except PostgresUnavailable as missing:
            pytest.skip(str(missing))
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path: Path) -> str:
    """Each real storage in turn: a SQLite file, and the throw-away PostgreSQL server.

    Studies get unique names per test, so tests can share the PostgreSQL database.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def study_name(request) -> str:
    """A study name unique to this test (and parameter), for the shared PostgreSQL database."""
    name = request.node.name.replace("[", "-").replace("]", "")
    return f"{name}-{os.getpid()}"

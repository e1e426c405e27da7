"""Send every benchmark's scratch files to the test's own folder (``benchmarks`` is importable
through pytest's ``pythonpath``)."""

from __future__ import annotations

import logging
import warnings

import pytest


@pytest.fixture(autouse=True)
def _isolated_work_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("O2NC_BENCH_WORK_DIR", str(tmp_path / "work"))
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        yield

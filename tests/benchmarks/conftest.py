"""The benchmarks package lives at the repository root (it is not installed): make it importable,
and send every benchmark's scratch files to the test's own folder."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(autouse=True)
def _isolated_work_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("O2NC_BENCH_WORK_DIR", str(tmp_path / "work"))
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        yield

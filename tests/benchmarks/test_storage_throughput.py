"""The storage benchmark on tiny settings: real worker processes, every trial accounted for, the
JSON, the table and the plot written, and nothing committed touched. No time is asserted."""

from __future__ import annotations

import json

import pytest

from benchmarks.experiments import get
from benchmarks.experiments.storage_throughput import figure, render, table
from benchmarks.harness import RESULTS_DIR, RESULTS_PATH, quick_dir, run_experiment
from lightning_o2nc.sweeps.local_postgres import PostgresUnavailable, local_postgres

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _committed_files() -> dict:
    """Every file under benchmarks/results (sub-folders such as saved studies included)."""
    return {p: p.read_bytes() for p in RESULTS_DIR.rglob("*") if p.is_file()}


def _quick_run(storages: list[str]) -> dict:
    committed = _committed_files()
    overrides = {"workers": [1, 2], "seconds": 0.3, "storages": storages}
    path = run_experiment(get("storage_throughput"), quick=True, overrides=overrides)
    assert _committed_files() == committed and path.parent == quick_dir()
    result = json.loads(path.read_text())
    assert {(row["storage"], row["workers"]) for row in result["rows"]} == {
        (storage, k) for storage in storages for k in (1, 2)
    }
    for row in result["rows"]:
        # run() has already checked that the study holds exactly the trials reported, all complete
        assert row["trials"] >= 1 and row["trials_per_s"] == pytest.approx(
            row["trials"] / row["seconds"], rel=0.01
        )
    assert result["figures"] == ["storage_throughput.png"]  # RESULTS.md shows it
    assert (path.parent / "storage_throughput.png").read_bytes().startswith(PNG_MAGIC)
    return result


@pytest.mark.slow
def test_a_quick_run_measures_each_file_storage_and_worker_count_and_touches_nothing_committed():
    text = render(_quick_run(["sqlite", "journal"]))
    assert "| SQLite file |" in text and "| journal file |" in text and "2 workers" in text
    assert text.count("\n- **") == 4  # which storage at which scale, one line per storage


@pytest.mark.slow
@pytest.mark.postgres
def test_postgresql_and_the_grpc_proxy_in_front_of_it_account_for_every_trial():
    pytest.importorskip("grpc")
    try:
        with local_postgres("probe"):
            pass
    except PostgresUnavailable as missing:
        pytest.skip(str(missing))
    text = render(_quick_run(["postgresql", "grpc"]))
    assert "| PostgreSQL |" in text and "| PostgreSQL via gRPC proxy |" in text


def test_the_table_puts_storages_in_rows_and_worker_counts_in_columns():
    rows = [
        {"storage": "journal", "workers": 4, "trials_per_s": 20.0},
        {"storage": "sqlite", "workers": 1, "trials_per_s": 5.25},
    ]
    lines = table({"rows": rows}).splitlines()
    assert lines[0] == "| storage | 1 worker | 4 workers |"
    assert lines[2] == "| SQLite file | 5.2 | - |"
    assert lines[3] == "| journal file | - | 20.0 |"


def test_the_committed_result_renders_its_section_and_figure_of_results_md(tmp_path):
    result = json.loads((RESULTS_DIR / "storage_throughput.json").read_text())
    assert render(result) in RESULTS_PATH.read_text()
    assert figure(result, tmp_path) == result["figures"]
    assert (tmp_path / "storage_throughput.png").read_bytes().startswith(PNG_MAGIC)

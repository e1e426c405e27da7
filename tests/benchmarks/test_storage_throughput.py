"""The storage benchmark on tiny settings: real worker processes, every trial accounted for, the
JSON, the table and the plot written. No time is asserted."""

from __future__ import annotations

import json

import pytest

from benchmarks import storage_throughput

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _committed_files():
    """Every file under benchmarks/results (sub-folders such as saved studies included)."""
    return {p: p.read_bytes() for p in storage_throughput.RESULTS_DIR.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_the_storage_benchmark_measures_each_storage_and_worker_count(tmp_path, capsys):
    committed = _committed_files()
    plot = tmp_path / "storage_throughput.png"  # the default beside the JSON (make bench-quick)
    argv = ["--workers", "1", "2", "--seconds", "0.3", "--storages", "sqlite", "journal"]
    result = storage_throughput.main([*argv, "--output-dir", str(tmp_path)])
    assert _committed_files() == committed

    saved = json.loads((tmp_path / "storage_throughput.json").read_text())
    assert saved["rows"] == result["rows"]
    cells = {(row["storage"], row["workers"]) for row in saved["rows"]}
    assert cells == {("sqlite", 1), ("sqlite", 2), ("journal", 1), ("journal", 2)}
    for row in saved["rows"]:
        # measure() has already checked that the study holds exactly the trials reported.
        assert row["trials"] >= 1 and row["trials_per_s"] == pytest.approx(
            row["trials"] / row["seconds"], rel=0.01
        )
    assert plot.read_bytes().startswith(PNG_MAGIC)
    assert saved["figures"] == [plot.name]  # RESULTS.md shows it under the section
    out = capsys.readouterr().out
    assert "| SQLite file |" in out and "| journal file |" in out and "2 workers" in out
    assert out.count("\n- **") == 4  # which storage at which scale, one line per storage


def test_the_table_puts_storages_in_rows_and_worker_counts_in_columns():
    rows = [
        {"storage": "journal", "workers": 4, "trials_per_s": 20.0},
        {"storage": "sqlite", "workers": 1, "trials_per_s": 5.25},
    ]
    lines = storage_throughput.table({"rows": rows}).splitlines()
    assert lines[0] == "| storage | 1 worker | 4 workers |"
    assert lines[2] == "| SQLite file | 5.2 | - |"
    assert lines[3] == "| journal file | - | 20.0 |"

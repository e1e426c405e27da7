"""``o2nc-sweep`` end to end, as a user runs it: against a password-protected PostgreSQL, and with
a sweep file whose train config cannot be built."""

from __future__ import annotations

import subprocess

import optuna
import pytest
import sqlalchemy.engine

from lightning_o2nc.sweeps.storage import open_storage

pytestmark = pytest.mark.slow


@pytest.mark.postgres
def test_a_sweep_and_its_report_command_print_where_everything_is_and_never_the_password(
    tmp_path, write_yaml, tiny_train_config, default_sweep, worker, postgres_url, study_name
):
    command, env = worker
    password = sqlalchemy.engine.make_url(postgres_url).password
    train = write_yaml("train.yaml", tiny_train_config(max_epochs=1))
    sweep = write_yaml("sweep.yaml", default_sweep(train, study_name=study_name, n_trials=2))
    logdir = tmp_path / "logs"
    run = subprocess.run(
        command("--config", str(sweep), "--storage", postgres_url, "--logdir", str(logdir)),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    study_dir = logdir / study_name
    assert "best trial" in run.stdout and "model.beta = " in run.stdout
    assert f"report:      {study_dir / 'report' / 'report.md'}" in run.stdout
    assert f"tensorboard: tensorboard --logdir {study_dir}" in run.stdout
    assert "retrain:     o2nc-train fit --config " in run.stdout
    assert "postgres:***@127.0.0.1" in run.stdout

    (study_dir / "report" / "report.md").unlink()
    again = subprocess.run(
        command("report", "--storage", postgres_url, "--study-name", study_name),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    report = (study_dir / "report" / "report.md").read_text()
    assert "## Best trial" in report and "postgres:***@" in report

    # Not in anything printed, nor in any file the sweep wrote (configs, TensorBoard, report, CSV).
    assert password not in output + again.stdout + again.stderr
    written = [p for p in logdir.rglob("*") if p.is_file()]
    assert len(written) > 10
    for path in written:
        assert password.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("traceback", [False, True], ids=["one-line", "O2NC_TRACEBACK"])
def test_a_bad_override_is_refused_with_one_line_before_any_trial_and_leaves_no_trial(
    tmp_path, write_yaml, tiny_train_config, default_sweep, worker, traceback
):
    command, env = worker
    train = write_yaml("train.yaml", tiny_train_config(max_epochs=1))
    sweep = write_yaml(
        "sweep.yaml", default_sweep(train, n_trials=2, overrides={"model.backbone": "nope"})
    )
    url = f"sqlite:///{tmp_path / 'study.db'}"
    variables = env()
    if traceback:
        variables["O2NC_TRACEBACK"] = "1"
    run = subprocess.run(
        command("--config", str(sweep), "--storage", url, "--logdir", str(tmp_path / "logs")),
        env=variables,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("o2nc-sweep: error:")]
    assert len(errors) == 1 and "nope" in errors[0], run.stderr
    assert ("Traceback (most recent call last)" in run.stderr) == traceback
    if not traceback:
        assert run.stderr.strip().splitlines()[-1] == errors[0]
    storage = open_storage(url)
    studies = optuna.get_all_study_summaries(storage)
    assert all(summary.n_trials == 0 for summary in studies)

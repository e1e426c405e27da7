"""Storage URLs: the embedded default, real databases, clear errors, and no password anywhere."""

from __future__ import annotations

import socket
import sqlite3
import threading
import traceback
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileOpenLock, JournalFileSymlinkLock

from lightning_o2nc.sweeps import SweepConfigError
from lightning_o2nc.sweeps.cli import main
from lightning_o2nc.sweeps.config import StorageSpec
from lightning_o2nc.sweeps.storage import (
    JOURNAL_CLASS,
    STORAGE_CLASS_ENV,
    STORAGE_ENV,
    StorageError,
    open_storage,
    redact,
    resolve_storage_class,
    resolve_storage_url,
    with_available_driver,
)

SECRET = "pa55-w0rd-never-shown"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://sweeper:{SECRET}@db.example.org:5432/optuna",
        f"postgresql+psycopg2://sweeper:{SECRET}@10.0.0.1/optuna?sslmode=require",
        f"mysql+pymysql://root:{SECRET}@localhost/optuna",
        f"postgresql://sweeper@db.example.org/optuna?password={SECRET}",
    ],
)
def test_redact_hides_every_form_of_password(url):
    shown = redact(f"cannot reach {url} (retrying {url})", url)
    assert SECRET not in shown
    assert "***" in shown


def test_redact_also_hides_a_password_the_driver_quotes_without_the_url():
    url = f"postgresql://sweeper:{SECRET}@db/optuna"
    assert SECRET not in redact(f'FATAL: password "{SECRET}" rejected', url)


def test_the_default_storage_is_a_sqlite_file_under_the_logdir(tmp_path, monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    url = resolve_storage_url(None, tmp_path / "logs")
    assert url == f"sqlite:///{(tmp_path / 'logs' / 'optuna.db').resolve()}"
    storage = open_storage(url)
    optuna.create_study(storage=storage, study_name="s")
    assert (tmp_path / "logs" / "optuna.db").is_file()


def test_a_sqlite_study_is_written_ahead_and_read_back_by_a_plain_connection(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    trial = study.ask()
    trial.report(0.5, step=0)
    study.tell(trial, 1.0)
    with sqlite3.connect(tmp_path / "optuna.db") as connection:  # without our connect hook
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    plain = optuna.load_study(study_name="s", storage=url)  # Optuna's own RDBStorage
    assert [t.value for t in plain.trials] == [1.0]
    assert plain.trials[0].intermediate_values == {0: 0.5}


def test_a_bare_path_means_sqlite_and_the_environment_variable_is_the_fallback(
    tmp_path, monkeypatch
):
    assert resolve_storage_url(str(tmp_path / "x.db"), tmp_path) == f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.setenv(STORAGE_ENV, "postgresql://u@h/db")
    assert resolve_storage_url(None, tmp_path) == "postgresql://u@h/db"
    assert resolve_storage_url("sqlite:///a.db", tmp_path) == "sqlite:///a.db"


def test_a_bare_postgresql_url_uses_whichever_driver_is_installed():
    import importlib.util

    url = with_available_driver("postgresql://u:p@h:5432/db")
    if importlib.util.find_spec("psycopg") is None:
        assert url.startswith("postgresql+psycopg2://u:p@h:5432/db")
    else:
        assert url == "postgresql://u:p@h:5432/db"
    assert with_available_driver("postgresql+pg8000://u@h/db") == "postgresql+pg8000://u@h/db"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"postgresql://sweeper:{SECRET}@127.0.0.1:PORT/optuna", "cannot open storage"),
        (f"postgresql://sweeper:{SECRET}@/optuna", "names no host"),
        (f"oracle://sweeper:{SECRET}@db/optuna", "unsupported storage"),
        (f"postgresql://sweeper:{SECRET}@db:notaport/optuna", "malformed storage URL"),
        (f"::sweeper:{SECRET}@db://", "malformed storage URL"),
    ],
)
def test_an_unreachable_or_malformed_storage_is_a_clear_error_without_the_password(url, message):
    url = url.replace("PORT", str(_closed_port()))
    with pytest.raises(StorageError) as error:
        open_storage(url)
    assert message in str(error.value)
    # Not in the message, nor anywhere in the traceback a user would see (no chained cause).
    assert SECRET not in "".join(traceback.format_exception(error.value))


@pytest.mark.postgres
def test_a_wrong_password_on_a_real_server_is_reported_without_either_password(postgres_url):
    import sqlalchemy.engine

    right = sqlalchemy.engine.make_url(postgres_url).password
    wrong = postgres_url.replace(right, SECRET)
    with pytest.raises(StorageError) as error:
        open_storage(wrong)
    assert "authentication failed" in str(error.value)
    assert SECRET not in str(error.value) and right not in str(error.value)


def test_the_cli_reports_a_bad_storage_with_exit_code_2_and_no_password(
    tmp_path, write_yaml, train_config, default_sweep, capsys
):
    sweep = write_yaml("sweep.yaml", default_sweep(train_config))
    url = f"postgresql://sweeper:{SECRET}@127.0.0.1:{_closed_port()}/optuna"
    code = main(["--config", str(sweep), "--storage", url, "--logdir", str(tmp_path / "l")])
    captured = capsys.readouterr()
    assert code == 2
    assert "cannot open storage" in captured.err and "sweeper:***@127.0.0.1" in captured.err
    assert SECRET not in captured.out + captured.err
    assert not list(Path(tmp_path).glob("l/*/trial_*"))


def test_the_report_command_refuses_an_unknown_study_naming_the_studies_there(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(storage=open_storage(url), study_name="present")
    code = main(["report", "--storage", url, "--study-name", "absent"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no study 'absent'" in err and "['present']" in err


def test_the_storage_class_comes_from_the_flag_then_the_environment_then_the_sweep_file(
    monkeypatch,
):

    from_file = StorageSpec.parse({"storage_class": JOURNAL_CLASS})
    monkeypatch.delenv(STORAGE_CLASS_ENV, raising=False)
    assert resolve_storage_class(None, StorageSpec()) is None
    assert resolve_storage_class(None, from_file) == JOURNAL_CLASS
    monkeypatch.setenv(STORAGE_CLASS_ENV, "RDBStorage")
    assert resolve_storage_class(None, from_file) == "RDBStorage"
    assert resolve_storage_class(JOURNAL_CLASS, StorageSpec()) == JOURNAL_CLASS
    with pytest.raises(StorageError, match=r"--storage-class: unsupported storage class 'Redis'"):
        resolve_storage_class("Redis")


def test_a_journal_file_is_a_path_made_absolute_never_a_url(tmp_path, monkeypatch):

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert resolve_storage_url("j/s.log", "logs", JOURNAL_CLASS) == str(tmp_path / "j/s.log")
    default = resolve_storage_url(None, tmp_path / "logs", JOURNAL_CLASS)
    assert default == str(tmp_path / "logs" / "optuna-journal.log")
    with pytest.raises(StorageError, match="takes a file path") as error:
        resolve_storage_url(f"postgresql://u:{SECRET}@h/db", tmp_path, JOURNAL_CLASS)
    assert SECRET not in str(error.value)
    with pytest.raises(StorageError, match="is a directory"):
        open_storage(str(tmp_path), storage_class=JOURNAL_CLASS)


@pytest.mark.parametrize(("writer", "reader"), [("symlink", "open"), ("open", "symlink")])
def test_a_journal_written_under_one_lock_is_read_and_extended_under_the_other(
    tmp_path, writer, reader
):

    path = str(tmp_path / "study.log")
    locks = {"symlink": JournalFileSymlinkLock, "open": JournalFileOpenLock}
    for lock, x in ((writer, 0.5), (reader, -0.5)):
        storage = open_storage(path, StorageSpec(journal_lock=lock), JOURNAL_CLASS)
        assert isinstance(storage._backend._lock, locks[lock])
        study = optuna.create_study(storage=storage, study_name="s", load_if_exists=True)
        study.enqueue_trial({"x": x})
        study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=1)
    assert [t.params["x"] for t in study.trials] == [0.5, -0.5]
    # Both take the same lock file, so workers using either lock exclude each other.
    held, waiting = locks[writer](path, grace_period=None), locks[reader](path, grace_period=None)
    held.acquire()
    other = threading.Thread(target=waiting.acquire)
    other.start()
    other.join(timeout=0.5)
    assert other.is_alive()  # blocked while the first lock is held
    held.release()
    other.join(timeout=10)
    assert not other.is_alive()
    waiting.release()


def test_the_sweep_file_checks_its_storage_class_and_journal_lock():

    assert StorageSpec.parse({"journal_lock": "open"}).journal_lock == "open"
    with pytest.raises(SweepConfigError, match="journal_lock must be symlink or open"):
        StorageSpec.parse({"journal_lock": "flock"})
    with pytest.raises(SweepConfigError, match="storage_class must be a class name"):
        StorageSpec.parse({"storage_class": 3})

"""Opening a relational database as an Optuna ``RDBStorage``: SQLAlchemy's engine options per
dialect, SQLite's write-ahead log, a driver that is installed, heartbeats with the retry callback
of the Optuna at hand, and the race of workers creating the tables together.

This module changes when a database, a driver, SQLAlchemy or Optuna's ``RDBStorage`` changes.
Both :func:`lightning_o2nc.sweeps.storage.open_storage` and the gRPC proxy's server open their
database here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage

from lightning_o2nc.extras import MissingExtra

from .storage_settings import JOURNAL_CLASS, StorageError, StorageSpec, redact

__all__ = ["SUPPORTED_DIALECTS", "open_database", "with_available_driver"]

#: The databases Optuna's ``RDBStorage`` is used with here.
SUPPORTED_DIALECTS = ("sqlite", "postgresql", "mysql")


def _engine_kwargs(dialect: str) -> dict[str, Any]:
    if dialect == "sqlite":
        # Several worker processes on one file: wait for the write lock instead of failing.
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}  # trials leave connections idle for long
    if dialect == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10}
    elif dialect == "mysql":
        kwargs["pool_recycle"] = 3600
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def _write_ahead_log(storage: RDBStorage) -> None:
    """SQLite in write-ahead-log mode, synced at checkpoints rather than at every commit.

    A trial writes its storage some 25 times (parameters, attributes, one report per epoch), and
    SQLite's default rollback journal syncs the disk at each commit: about 2 ms each, a tenth of a
    small trial. With ``journal_mode=WAL`` and ``synchronous=NORMAL`` a commit costs about half
    that, readers no longer block the writer, and the database stays consistent after a crash (a
    power loss may lose the last commits, never corrupt the file). The mode is stored in the file,
    so every later connection (other workers, reports, Optuna's CLI) uses it. Like every SQLite
    file, it is for workers on one machine; a shared file system takes a journal file.
    """
    import sqlite3

    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _pragmas(connection: Any, record: Any) -> None:
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:  # a read-only file keeps its mode; Optuna reports what fails later
            pass
        finally:
            cursor.close()

    storage.engine.dispose()  # the connections opened before the listener existed


def _dialect(url: str) -> str:
    import sqlalchemy.engine
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(
            f"malformed storage URL {redact(url, url)!r}; expected e.g. sqlite:///path/optuna.db "
            "or postgresql://user@host:5432/dbname"
        ) from None
    dialect = parsed.get_backend_name()
    if dialect not in SUPPORTED_DIALECTS:
        raise StorageError(
            f"unsupported storage {dialect!r} in {redact(url, url)!r}; use one of {SUPPORTED_DIALECTS}, "
            f"a journal file (--storage-class {JOURNAL_CLASS}) or a gRPC proxy (grpc://HOST:PORT)"
        )
    if dialect == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    elif dialect != "sqlite" and not parsed.host:
        raise StorageError(f"storage URL {redact(url, url)!r} names no host")
    return dialect


_DRIVERS = {
    # dialect: (module SQLAlchemy's bare URL loads, [(fallback module, driver name)])
    "postgresql": ("psycopg", [("psycopg2", "psycopg2"), ("pg8000", "pg8000")]),
    "mysql": ("MySQLdb", [("pymysql", "pymysql"), ("mysql.connector", "mysqlconnector")]),
}


def with_available_driver(url: str) -> str:
    """Name an installed driver when the URL names none and SQLAlchemy's default is missing.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3 (2.0 mapped it to psycopg2), so the
    same URL works with whichever driver is installed.
    """
    import importlib.util

    import sqlalchemy.engine

    parsed = sqlalchemy.engine.make_url(url)
    if "+" in parsed.drivername or parsed.drivername not in _DRIVERS:
        return url
    default, fallbacks = _DRIVERS[parsed.drivername]
    if importlib.util.find_spec(default) is not None:
        return url
    for module, driver in fallbacks:
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            return parsed.set(drivername=f"{parsed.drivername}+{driver}").render_as_string(
                hide_password=False
            )
    return url


def _retry_callback(max_retry: int | None) -> tuple[str, Any]:
    """Optuna >= 4.9 calls it ``RetryHeartbeatStaleTrialCallback``; older ones ``RetryFailedTrial``."""
    try:
        from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

        keyword = "heartbeat_stale_trial_callback"
    except ImportError:  # pragma: no cover - optuna < 4.9
        from optuna.storages import RetryFailedTrialCallback as Retry

        keyword = "failed_trial_callback"
    return keyword, Retry(max_retry=max_retry, inherit_intermediate_values=False)


def open_database(url: str, spec: StorageSpec | None = None, heartbeat: bool = True) -> RDBStorage:
    """Connect to the database at ``url`` and create Optuna's tables if needed.

    Args:
        url: a ``sqlite://``, ``postgresql://`` or ``mysql://`` URL (the driver may be left out).
        spec: heartbeat interval, grace period and retries of failed trials.
        heartbeat: whether workers beat (off for the gRPC proxy's server and for reports).

    Raises:
        StorageError: for a malformed URL, a missing driver or an unreachable database; the
            message shows the URL with its password replaced by ``***``.
    """
    spec = spec or StorageSpec()
    import warnings

    import sqlalchemy.exc

    dialect = _dialect(url)
    url = with_available_driver(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            keyword, retry = _retry_callback(spec.max_retry)
            for attempt in range(3):
                try:
                    beats = (
                        {
                            "heartbeat_interval": spec.heartbeat_interval,
                            "grace_period": spec.grace_period,
                            keyword: retry,
                        }
                        if heartbeat
                        else {}
                    )
                    storage = RDBStorage(url, engine_kwargs=_engine_kwargs(dialect), **beats)
                    if dialect == "sqlite":
                        _write_ahead_log(storage)
                    return storage
                except sqlalchemy.exc.SQLAlchemyError as error:
                    # Workers started together race to create the tables and the schema version
                    # row: the loser finds them there on its next attempt.
                    text = str(getattr(error, "orig", None) or error)
                    if attempt == 2 or not ("already exists" in text or "UNIQUE" in text.upper()):
                        raise
                    time.sleep(0.5 * (attempt + 1))
            raise AssertionError("unreachable")
    except ImportError as error:
        if dialect == "postgresql":
            feature = f"the storage {redact(url, url)!r}"
            missing = MissingExtra(feature, "postgres", error.name or "psycopg2")
            raise StorageError(str(missing)) from None
        driver = {"mysql": "PyMySQL"}.get(dialect, "a driver")
        raise StorageError(
            f"no database driver for {redact(url, url)!r}: install {driver} "
            f"({redact(str(error), url)})"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, OSError, ValueError) as error:
        lines = str(getattr(error, "orig", None) or error).splitlines()
        reason = " ".join(line.strip() for line in lines if line.strip()) or type(error).__name__
        raise StorageError(
            f"cannot open storage {redact(url, url)!r}: {redact(reason, url)}"
        ) from None

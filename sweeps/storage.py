"""Where a study lives: an embedded SQLite file by default, PostgreSQL or MySQL across machines.

Every URL that reaches a message, a log line or a report goes through :func:`redact` first, and
errors raised here never chain the driver's exception (whose text could quote the URL).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import optuna
from optuna.storages import RDBStorage

from .config import StorageSpec

__all__ = [
    "STORAGE_ENV",
    "StorageError",
    "default_storage_url",
    "open_storage",
    "redact",
    "resolve_storage_url",
]

#: Read when ``--storage`` is not given, so a password needs to appear neither in the shell
#: history nor in the process list.
STORAGE_ENV = "O2NC_SWEEP_STORAGE"
_DEFAULT_DB = "optuna.db"
_SUPPORTED = ("sqlite", "postgresql", "mysql")
_USERINFO = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^/@:?#\s]*):(?P<password>[^@/\s]*)@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<password>[^&#\s]*)", re.I)


class StorageError(RuntimeError):
    """A storage URL is malformed or its database cannot be reached. Never holds a password."""


def redact(text: str, url: str | None = None) -> str:
    """Replace every password in ``text`` by ``***``.

    Catches ``scheme://user:password@host`` and ``?password=...`` forms, and, when the original
    ``url`` is given, any literal occurrence of its password (drivers sometimes quote it).
    """
    text = _USERINFO.sub(lambda m: f"{m['head']}:***@", text)
    text = _QUERY_PASSWORD.sub(lambda m: f"{m['head']}***", text)
    if url:
        for secret in _passwords(url):
            if len(secret) >= 3:
                text = text.replace(secret, "***")
    return text


def _passwords(url: str) -> list[str]:
    found = [m["password"] for m in _USERINFO.finditer(url)]
    found += [m["password"] for m in _QUERY_PASSWORD.finditer(url)]
    head, at, _ = url.rpartition("@")
    if at:  # a URL too malformed for the patterns: everything after the user's first ':'
        userinfo = head.split("://", 1)[-1]
        found += [userinfo.partition(":")[2], userinfo.rpartition(":")[2]]
    return [p for p in {*found, *(unquote(p) for p in found)} if p and p != "***"]


def default_storage_url(logdir: str | Path) -> str:
    """The embedded storage: ``sqlite:///<logdir>/optuna.db``."""
    return f"sqlite:///{(Path(logdir) / _DEFAULT_DB).resolve()}"


def resolve_storage_url(storage: str | None, logdir: str | Path) -> str:
    """The storage URL to use: the argument, else ``$O2NC_SWEEP_STORAGE``, else SQLite.

    A bare file path (no ``://``) means a SQLite file.
    """
    value = storage or os.environ.get(STORAGE_ENV) or None
    if value is None:
        return default_storage_url(logdir)
    value = value.strip()
    if "://" not in value:
        return f"sqlite:///{Path(value).expanduser().resolve()}"
    return value


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
    if dialect not in _SUPPORTED:
        raise StorageError(
            f"unsupported storage {dialect!r} in {redact(url, url)!r}; use one of {_SUPPORTED} "
            "(pruning under DDP needs a relational database)"
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


def open_storage(url: str, spec: StorageSpec | None = None) -> RDBStorage:
    """Connect to (and if needed create the tables of) the study database.

    Heartbeats are on: a worker that dies mid-trial stops beating, and after ``grace_period``
    the next worker to start a trial marks it failed and re-queues its parameters.

    Raises:
        StorageError: for a malformed URL, a missing driver or an unreachable database. The
            message shows the URL with its password replaced by ``***``.
    """
    import warnings

    import sqlalchemy.exc

    spec = spec or StorageSpec()
    dialect = _dialect(url)
    url = with_available_driver(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            keyword, retry = _retry_callback(spec.max_retry)
            for attempt in range(3):
                try:
                    return RDBStorage(
                        url,
                        engine_kwargs=_engine_kwargs(dialect),
                        heartbeat_interval=spec.heartbeat_interval,
                        grace_period=spec.grace_period,
                        **{keyword: retry},
                    )
                except sqlalchemy.exc.SQLAlchemyError as error:
                    # Workers started together race to create the tables and the schema version
                    # row: the loser finds them there on its next attempt.
                    text = str(getattr(error, "orig", None) or error)
                    if attempt == 2 or not ("already exists" in text or "UNIQUE" in text.upper()):
                        raise
                    time.sleep(0.5 * (attempt + 1))
            raise AssertionError("unreachable")
    except ImportError as error:
        driver = {"postgresql": "psycopg2-binary", "mysql": "PyMySQL"}.get(dialect, "a driver")
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

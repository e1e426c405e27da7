"""Where a study lives, named the way Optuna's own CLI names it (``--storage`` plus
``--storage-class``):

- a relational database URL: ``sqlite:///file.db`` (the embedded default), ``postgresql://...``
  or ``mysql://...`` across machines;
- a journal file on a shared file system, ``--storage PATH --storage-class JournalFileBackend``
  (Optuna's ``JournalStorage``; no database server needed);
- ``grpc://HOST:PORT``: Optuna's gRPC storage proxy (``o2nc-sweep serve``) in front of a
  database, so hundreds of workers share a few database connections.

Every URL that reaches a message, a log line or a report goes through :func:`redact` first, and
errors raised here never chain the driver's exception (whose text could quote the URL).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import optuna
from optuna.storages import BaseStorage, RDBStorage

from lightning_o2nc.extras import MissingExtra

from .checks import check_keys, mapping, positive_int
from .errors import SweepConfigError

__all__ = [
    "GRPC_SCHEME",
    "JOURNAL_CLASS",
    "STORAGE_CLASS_ENV",
    "STORAGE_ENV",
    "StorageError",
    "StorageSpec",
    "default_storage_url",
    "is_relational",
    "open_resolved_storage",
    "open_storage",
    "redact",
    "refuse_ddp_without_rdb",
    "resolve_storage_class",
    "resolve_storage_url",
]


@dataclass(frozen=True)
class StorageSpec:
    """Failed-worker recovery: a worker that stops beating for ``grace_period`` seconds has its
    trial failed and re-queued (up to ``max_retry`` times) by the next worker that starts a trial.

    ``storage_class`` (``JournalFileBackend`` for a journal file, as in Optuna's CLI) applies when
    neither ``--storage-class`` nor ``$O2NC_SWEEP_STORAGE_CLASS`` is given; ``journal_lock``
    (``symlink`` or ``open``) is the journal file's lock (see lightning_o2nc.sweeps.storage).
    """

    heartbeat_interval: int = 60
    grace_period: int = 180
    max_retry: int | None = 3
    storage_class: str | None = None
    journal_lock: str = "symlink"

    @classmethod
    def parse(cls, spec: Any) -> StorageSpec:
        spec = mapping(spec, "storage")
        check_keys(
            spec,
            {"heartbeat_interval", "grace_period", "max_retry", "storage_class", "journal_lock"},
            "storage",
        )
        interval = positive_int(spec.get("heartbeat_interval", 60), "storage.heartbeat_interval")
        grace = positive_int(spec.get("grace_period", 3 * interval), "storage.grace_period")
        if grace <= interval:
            raise SweepConfigError(
                f"storage.grace_period ({grace}) must exceed heartbeat_interval ({interval})"
            )
        max_retry = spec.get("max_retry", 3)
        if max_retry is not None and (
            isinstance(max_retry, bool) or not isinstance(max_retry, int) or max_retry < 0
        ):
            raise SweepConfigError(
                f"storage.max_retry must be a non-negative integer or null, got {max_retry!r}"
            )
        storage_class = spec.get("storage_class")
        if storage_class is not None and not isinstance(storage_class, str):
            raise SweepConfigError(
                f"storage.storage_class must be a class name, got {storage_class!r}"
            )
        lock = spec.get("journal_lock", "symlink")
        if lock not in ("symlink", "open"):
            raise SweepConfigError(f"storage.journal_lock must be symlink or open, got {lock!r}")
        return cls(interval, grace, max_retry, storage_class, lock)


#: Read when ``--storage`` is not given, so a password needs to appear neither in the shell
#: history nor in the process list.
STORAGE_ENV = "O2NC_SWEEP_STORAGE"
#: Read when ``--storage-class`` is not given (``JournalFileBackend`` for a journal file).
STORAGE_CLASS_ENV = "O2NC_SWEEP_STORAGE_CLASS"
#: ``--storage-class`` of a journal file, as Optuna's CLI spells it.
JOURNAL_CLASS = "JournalFileBackend"
#: Workers reach ``o2nc-sweep serve`` (Optuna's gRPC storage proxy) at ``grpc://HOST:PORT``.
GRPC_SCHEME = "grpc"
#: ``--storage-class`` values and what they mean; ``JournalFileStorage`` is Optuna's old name.
_STORAGE_CLASSES = {
    "RDBStorage": "rdb",
    JOURNAL_CLASS: "journal",
    "JournalFileStorage": "journal",
    "GrpcStorageProxy": "grpc",
}
_DEFAULT_DB = "optuna.db"
_DEFAULT_JOURNAL = "optuna-journal.log"
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


def default_storage_url(logdir: str | Path, storage_class: str | None = None) -> str:
    """The embedded storage: ``sqlite:///<logdir>/optuna.db``, or ``<logdir>/optuna-journal.log``
    for a journal file."""
    if _kind_of_class(storage_class) == "journal":
        return str((Path(logdir) / _DEFAULT_JOURNAL).resolve())
    return f"sqlite:///{(Path(logdir) / _DEFAULT_DB).resolve()}"


def resolve_storage_class(
    storage_class: str | None = None, spec: StorageSpec | None = None
) -> str | None:
    """The storage class to use: the argument (``--storage-class``), else
    ``$O2NC_SWEEP_STORAGE_CLASS``, else the sweep file's ``storage.storage_class``, else ``None``
    (the kind follows from the URL).

    Raises:
        StorageError: for a class this project cannot open, naming where it came from.
    """
    sources = [
        ("--storage-class", storage_class),
        (f"${STORAGE_CLASS_ENV}", os.environ.get(STORAGE_CLASS_ENV)),
        ("storage.storage_class", getattr(spec, "storage_class", None)),
    ]
    for source, value in sources:
        if value and value.strip():
            value = value.strip()
            if value not in _STORAGE_CLASSES:
                raise StorageError(
                    f"{source}: unsupported storage class {value!r}; use one of "
                    f"{sorted(_STORAGE_CLASSES)} (or none: a URL names its database)"
                )
            return value
    return None


def _kind_of_class(storage_class: str | None) -> str | None:
    return _STORAGE_CLASSES.get(storage_class) if storage_class else None


def storage_kind(url: str, storage_class: str | None = None) -> str:
    """``"rdb"``, ``"journal"`` or ``"grpc"``: what :func:`open_storage` will open."""
    kind = _kind_of_class(storage_class)
    if url.startswith(f"{GRPC_SCHEME}://"):
        if kind not in (None, "grpc"):
            raise StorageError(
                f"--storage-class {storage_class} cannot open {redact(url, url)!r}: a grpc:// "
                "URL is the gRPC storage proxy (leave --storage-class out)"
            )
        return "grpc"
    if kind == "grpc":
        raise StorageError(f"GrpcStorageProxy needs a grpc://HOST:PORT URL, got {url!r}")
    return kind or "rdb"


def resolve_storage_url(
    storage: str | None, logdir: str | Path, storage_class: str | None = None
) -> str:
    """The storage to use: the argument, else ``$O2NC_SWEEP_STORAGE``, else the default file
    under ``logdir``.

    Without a storage class a bare file path (no ``://``) means a SQLite file; with
    ``storage_class="JournalFileBackend"`` it is the journal file, made absolute (its directory
    is created when it is opened).
    """
    value = storage or os.environ.get(STORAGE_ENV) or None
    if value is None:
        return default_storage_url(logdir, storage_class)
    value = value.strip()
    if storage_kind(value, storage_class) == "journal":
        if "://" in value:
            raise StorageError(
                f"--storage-class {storage_class} takes a file path (on a file system every "
                f"worker sees), got the URL {redact(value, value)!r}"
            )
        return str(Path(value).expanduser().resolve())
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
    if dialect not in _SUPPORTED:
        raise StorageError(
            f"unsupported storage {dialect!r} in {redact(url, url)!r}; use one of {_SUPPORTED}, "
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


def open_storage(
    url: str,
    spec: StorageSpec | None = None,
    storage_class: str | None = None,
    *,
    heartbeat: bool = True,
) -> BaseStorage:
    """Open the storage named by ``url`` (and ``storage_class``; see :func:`storage_kind`).

    - A database: connects and, if needed, creates the tables. Heartbeats are on (unless
      ``heartbeat=False``): a worker that dies mid-trial stops beating, and after
      ``grace_period`` the next worker to start a trial marks it failed and re-queues it.
    - A journal file: Optuna's ``JournalStorage`` with the lock ``spec.journal_lock`` names.
    - ``grpc://HOST:PORT``: a ``GrpcStorageProxy``, once the proxy answers.

    Journal files and the proxy have no heartbeats: a worker killed with SIGKILL leaves its
    trial RUNNING (one stopped by SIGINT/SIGTERM records it as failed).

    Raises:
        StorageError: for a malformed URL, a missing driver or an unreachable database or proxy.
            The message shows the URL with its password replaced by ``***``.
    """
    spec = spec or StorageSpec()
    kind = storage_kind(url, storage_class)
    if kind == "journal":
        return _open_journal(url, getattr(spec, "journal_lock", "symlink"))
    if kind == "grpc":
        from .grpc_proxy import open_grpc_proxy

        return open_grpc_proxy(url)
    return _open_rdb(url, spec, heartbeat)


def open_resolved_storage(
    storage: str | None, storage_class: str | None, logdir: str | Path, spec: StorageSpec | None
) -> tuple[str, BaseStorage]:
    """The URL and class resolved from the arguments, and the storage opened there."""
    storage_class = resolve_storage_class(storage_class, spec)
    url = resolve_storage_url(storage, logdir, storage_class)
    return url, open_storage(url, spec, storage_class)


def is_relational(storage: BaseStorage) -> bool:
    """Whether ``storage`` is (a cache in front of) an ``RDBStorage``."""
    from optuna.storages._cached_storage import _CachedStorage

    if isinstance(storage, _CachedStorage):
        storage = storage._backend
    return isinstance(storage, RDBStorage)


def refuse_ddp_without_rdb(storage: BaseStorage, url: str, strategy: str) -> None:
    """Refuse DDP trials on a storage that optuna-integration's pruning callback refuses.

    ``PyTorchLightningPruningCallback`` accepts only ``RDBStorage`` under DDP (it keeps the
    ranks' intermediate values in the trial's system attributes of the database). It would
    raise inside the first trial's spawned ranks; this says so before any trial runs.

    Raises:
        StorageError: naming the storage to use instead.
    """
    if is_relational(storage):
        return
    what = "the gRPC storage proxy" if url.startswith(f"{GRPC_SCHEME}://") else "a journal file"
    raise StorageError(
        f"trials run DDP ({strategy}) and optuna-integration's pruning callback accepts only a "
        f"relational database under DDP, but the storage {redact(url, url)!r} is {what}; use "
        "--storage postgresql://USER@HOST/DB (or mysql://..., or sqlite:///FILE.db on one "
        "machine) for DDP trials, or run one device per trial with several workers"
    )


def _open_journal(path: str, lock: str) -> BaseStorage:
    from optuna.storages.journal import (
        JournalFileBackend,
        JournalFileOpenLock,
        JournalFileSymlinkLock,
        JournalStorage,
    )

    locks = {"symlink": JournalFileSymlinkLock, "open": JournalFileOpenLock}
    if lock not in locks:
        raise StorageError(f"storage.journal_lock must be one of {sorted(locks)}, got {lock!r}")
    file = Path(path)
    if file.is_dir():
        raise StorageError(f"journal file {path!r} is a directory; give a file path")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(file), lock_obj=locks[lock](str(file)))
        return JournalStorage(backend)
    except (OSError, ValueError) as error:
        raise StorageError(f"cannot open journal file {path!r}: {error}") from None


def _open_rdb(url: str, spec: StorageSpec, heartbeat: bool) -> RDBStorage:
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

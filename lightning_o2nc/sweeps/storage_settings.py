"""What a sweep says about its storage, before anything is opened: the sweep file's ``storage:``
section (:class:`StorageSpec`), ``--storage``/``--storage-class`` and their environment variables,
the kind of storage a URL names, and :func:`redact`, which hides every password.

Named the way Optuna's own CLI names a storage. This module opens nothing; it changes when the
way a user names a storage changes. The openers (``databases``, ``grpc_proxy``, ``storage``)
import it, never the other way round.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

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
    "redact",
    "resolve_storage_class",
    "resolve_storage_url",
    "storage_kind",
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

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

The names a sweep gives its storage (URLs, classes, environment variables, :func:`redact`) live in
``storage_settings``, the database opener in ``databases`` and the proxy's client in ``grpc_proxy``;
this module chooses among them and is the one place the rest of the sweeps open a storage from.
"""

from __future__ import annotations

from pathlib import Path

from optuna.storages import BaseStorage, RDBStorage

from .databases import open_database, with_available_driver
from .grpc_proxy import open_grpc_proxy
from .storage_settings import (
    GRPC_SCHEME,
    JOURNAL_CLASS,
    STORAGE_CLASS_ENV,
    STORAGE_ENV,
    StorageError,
    StorageSpec,
    default_storage_url,
    redact,
    resolve_storage_class,
    resolve_storage_url,
    storage_kind,
)

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
    "storage_kind",
    "with_available_driver",
]


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
        return open_grpc_proxy(url)
    return open_database(url, spec, heartbeat)


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

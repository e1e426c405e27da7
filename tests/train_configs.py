"""Pieces of the tiny train configs the Lightning and sweep tests write."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def cpu_trainer(*sections: Mapping[str, Any]) -> dict[str, Any]:
    """A config's ``trainer`` section: 2 epochs on one CPU device, updated by each of
    ``sections`` in turn (a later one overrides an earlier one's keys)."""
    trainer: dict[str, Any] = {"max_epochs": 2, "accelerator": "cpu", "devices": 1}
    for section in sections:
        trainer.update(section)
    return trainer


#: Trainer options of a test fit on the CPU that writes nothing (no logger, checkpoint, progress
#: bar or model summary).
QUIET_CPU: dict[str, Any] = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}

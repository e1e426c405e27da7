"""Distinct trials: workers of one study never evaluate the same configuration twice.

Two measures, because one alone is not enough:

- **A sampler seed per worker** (:func:`worker_seed`). Seeding every process with the file's
  ``seed`` makes parallel workers, and every continuation, replay the same random start-up
  trials. Each worker instead derives its seed from the file's seed and the number of trials the
  study holds when the worker starts, so a sequence of single-worker runs is reproducible. Two
  workers that start on the same study state would still collide, so every worker records its
  seed in the study, and one that finds the same seed recorded by another worker mixes its own
  unique token into it.
- **A check before any training** (:func:`duplicate_of`). Optuna has no de-duplication, and
  different seeds only make a repeat unlikely: a small discrete space, a queued trial or TPE's
  exploitation can still propose a configuration the study already holds. A trial first records
  its configuration (the ``values`` user attribute), then looks for the same configuration in
  every other trial that is running or finished for good. If there is one, the trial is not
  trained: it is recorded as failed with ``duplicate_of`` and does not count towards
  ``n_trials``, and the sampler draws again. Failing is chosen over returning the earlier value
  (Optuna's FAQ recipe) because a copied value would count as a trial the user asked for while
  adding no information, and would put a second "best" without a TensorBoard run in the report.
  Recording before looking means two workers that draw the same configuration at the same moment
  both see each other: then both step aside, so a configuration can be lost but never repeated.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from .errors import FAIL_REASON

__all__ = [
    "DUPLICATE_OF",
    "VALUES",
    "WORKER_ATTR_PREFIX",
    "DuplicateConfiguration",
    "duplicate_of",
    "worker_seed",
]

#: Trial user attribute: the trial's resolved configuration (config path -> value).
VALUES = "values"
#: Trial user attribute: the number of the trial that already holds this configuration.
DUPLICATE_OF = "duplicate_of"
#: Study user attributes ``o2nc_worker:<token>`` record each worker's sampler seed.
WORKER_ATTR_PREFIX = "o2nc_worker:"


class DuplicateConfiguration(Exception):
    """A trial drew a configuration that another trial of the study holds; it is not trained."""

    def __init__(self, number: int, earlier: int) -> None:
        super().__init__(f"same configuration as trial {earlier}: not trained")
        self.number = number
        self.earlier = earlier


def _mix(*parts: int) -> int:
    """A 31-bit seed from integers, through NumPy's SeedSequence (well spread, reproducible)."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0] >> 1)


def worker_seed(study: optuna.Study, file_seed: int | None) -> int | None:
    """This worker's sampler seed; recorded in the study under ``o2nc_worker:<token>``.

    ``mix(file_seed, trials in the study)``: reproducible for one worker at a time (a fresh study
    and its continuations draw the same trials on every replay). When another worker already
    recorded that seed (workers started together on the same study state), this worker's random
    token is mixed in too. ``None`` (no ``seed`` in the file) stays ``None``: every process then
    draws from fresh entropy, which is distinct already.
    """
    token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    key = WORKER_ATTR_PREFIX + token
    trials = len(study.get_trials(deepcopy=False))
    seed = None if file_seed is None else _mix(file_seed, trials)
    study.set_user_attr(key, {"seed": seed, "trials_at_start": trials})
    if seed is None:
        return None
    # Read back after writing: of two workers writing the same seed, at least the later reader
    # sees the other one (both may), so at most one of them keeps it.
    taken = any(
        name != key and name.startswith(WORKER_ATTR_PREFIX) and value.get("seed") == seed
        for name, value in study.user_attrs.items()
        if isinstance(value, Mapping)
    )
    if taken:
        seed = _mix(file_seed, trials, uuid.uuid4().int)
        study.set_user_attr(key, {"seed": seed, "trials_at_start": trials, "shared_start": True})
    return seed


def configuration_key(values: Mapping[str, Any]) -> str:
    """A canonical text of a configuration, equal for equal values (floats compared exactly)."""
    return json.dumps(values, sort_keys=True, default=repr)


def _holds_its_configuration(trial: FrozenTrial) -> bool:
    """Trials a new one must not repeat: running, complete, pruned, or failed on their own.

    A trial that crashed, was interrupted, or was itself a duplicate holds nothing: its
    configuration may (and, when queued again, should) run.
    """
    if trial.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED):
        return DUPLICATE_OF not in trial.user_attrs
    return trial.state == TrialState.FAIL and FAIL_REASON in trial.user_attrs


def duplicate_of(
    trial: optuna.Trial,
    values: Mapping[str, Any],
    trials: Iterable[FrozenTrial] | None = None,
) -> int | None:
    """The number of another trial that holds ``values`` already, else ``None``.

    Call it after recording ``values`` on ``trial`` (see the module docstring for why); ``trials``:
    the study's trials read after that, if the caller has them (one read of the storage less).
    """
    key = configuration_key(values)
    if trials is None:
        trials = trial.study.get_trials(deepcopy=False)
    for other in trials:
        if other.number == trial.number or not _holds_its_configuration(other):
            continue
        recorded = other.user_attrs.get(VALUES)
        if recorded is not None and configuration_key(recorded) == key:
            return other.number
    return None

"""The live sweep display: trials done, best value so far, and the running trial's epoch."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from .distinct import DUPLICATE_OF
from .errors import FAIL_REASON
from .signals import RETRY_OF
from .study import count_finished

__all__ = ["SweepProgress", "format_params"]


def format_params(params: dict[str, Any], limit: int = 6) -> str:
    """``lr=0.0312 1-model.beta=0.0841 ...`` with short numbers, for one-line summaries."""
    parts = []
    for name, value in list(params.items())[:limit]:
        short = name.removeprefix("model.").removeprefix("trainer.")
        parts.append(f"{short}={value:.3g}" if isinstance(value, float) else f"{short}={value}")
    if len(params) > limit:
        parts.append("...")
    return " ".join(parts)


class SweepProgress:
    """A rich progress display for one worker. Use as a context manager.

    The trials bar counts the study's finished trials (every worker's), so two workers on one
    study show the same total; the second bar follows this worker's running trial epoch by epoch.
    """

    def __init__(
        self,
        n_trials: int,
        metric: str,
        direction: str,
        *,
        console: Console | None = None,
        enabled: bool = True,
    ) -> None:
        self.metric = metric
        self.direction = direction
        self.console = console or Console(stderr=False)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self._trials: TaskID = self._progress.add_task("trials", total=n_trials, info="")
        self._epochs: TaskID | None = None

    def __enter__(self) -> SweepProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def print(self, message: str) -> None:
        """A line above the live bars (or plain output when the display is off)."""
        self._progress.console.print(message, highlight=False)

    def show_study(self, study: optuna.Study) -> None:
        """Refresh the trials bar from the storage: finished count and best value so far."""
        info = ""
        try:
            best = study.best_trial
            info = f"best {self.metric}={best.value:.4g} (trial {best.number})"
        except ValueError:
            info = "no completed trial yet"
        self._progress.update(self._trials, completed=count_finished(study), info=info)

    def begin_trial(self, number: int, max_epochs: int | None, params: dict[str, Any]) -> None:
        """Start the epoch bar of this worker's new trial."""
        if self._epochs is not None:
            self._progress.remove_task(self._epochs)
        self._epochs = self._progress.add_task(
            f"trial {number}", total=max_epochs, info=format_params(params)
        )

    def epoch_done(self, epoch: int, metrics: dict[str, float]) -> None:
        """Advance the epoch bar and show the trial's latest objective value."""
        if self._epochs is None:
            return
        value = metrics.get(self.metric)
        info = f"{self.metric}={value:.4g}" if value is not None else ""
        self._progress.update(self._epochs, completed=epoch, info=info)

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: one line per finished trial, then refresh the trials bar."""
        if self._epochs is not None:
            self._progress.remove_task(self._epochs)
            self._epochs = None
        state = trial.state.name.lower()
        if DUPLICATE_OF in trial.user_attrs:
            self.print(
                f"trial {trial.number} skipped: same configuration as trial "
                f"{trial.user_attrs[DUPLICATE_OF]}, not trained and not counted"
            )
            return
        if RETRY_OF in trial.user_attrs:
            state += f" (retry of trial {trial.user_attrs[RETRY_OF]})"
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            detail = f"{self.metric}={trial.value:.4g}"
        elif trial.state == TrialState.PRUNED:
            last = max(trial.intermediate_values, default=None)
            value = trial.intermediate_values.get(last) if last is not None else math.nan
            detail = f"at epoch {last + 1 if last is not None else 0} ({self.metric}={value:.4g})"
        else:
            detail = trial.user_attrs.get(FAIL_REASON) or trial.system_attrs.get("fail_reason", "")
        self.print(f"trial {trial.number} {state}: {detail}  [{format_params(trial.params)}]")
        self.show_study(study)

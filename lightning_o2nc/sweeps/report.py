"""The sweep report: ``report.md``, PNG plots, one interactive HTML page and a CSV of all trials.

Written at the end of every sweep run and by ``o2nc-sweep report``. Everything is read from the
study's storage; the storage URL appears only with its password replaced by ``***``.
"""

from __future__ import annotations

import csv
import json
import shlex
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from lightning_o2nc.extras import MissingExtra, require

from .errors import FAIL_REASON
from .paths import flatten_paths
from .storage import redact
from .study import STUDY_ATTR, is_finished_for_good

__all__ = ["Report", "retrain_command", "tensorboard_command", "write_report"]


@dataclass
class Report:
    """Where a report went and what it found."""

    directory: Path
    markdown: Path
    csv: Path
    html: Path | None
    plots: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    best: FrozenTrial | None = None
    #: the best trial's config, set to checkpoint and to log into a folder of its own
    retrain: Path | None = None


def tensorboard_command(logdir: Path, study_name: str) -> str:
    """The command that opens every trial of the study side by side in TensorBoard."""
    return f"tensorboard --logdir {shlex.quote(str(Path(logdir) / study_name))}"


def retrain_command(report: Report) -> str | None:
    """The command that retrains the best trial (:func:`write_retrain_config`)."""
    return f"o2nc-train fit --config {shlex.quote(str(report.retrain))}" if report.retrain else None


def write_retrain_config(trial: FrozenTrial, directory: Path) -> Path | None:
    """``retrain_trial_<n>.yaml`` in ``directory``: the config ``trial`` ran with, but with
    checkpoints on and its TensorBoard logger under ``directory/../retrain/trial_<n>``.

    Trials run without checkpoints (a sweep compares curves) and log beside the other trials;
    a retrained best trial is the run a user keeps, so it gets ``last.ckpt`` and a folder of
    its own. ``None`` when the trial recorded no config.
    """
    source = trial.user_attrs.get("config")
    if not source or not Path(source).is_file():
        return None
    config = yaml.safe_load(Path(source).read_text()) or {}
    trainer = config.setdefault("trainer", {})
    trainer["enable_checkpointing"] = True
    logs = {"save_dir": str(directory.parent / "retrain"), "name": f"trial_{trial.number}"}
    logger = trainer.get("logger")
    if isinstance(logger, dict) and "class_path" in logger:
        logger.setdefault("init_args", {}).update(logs)
    else:
        trainer["logger"] = {
            "class_path": "TensorBoardLogger",
            "init_args": {**logs, "default_hp_metric": False},
        }
    path = directory / f"retrain_trial_{trial.number}.yaml"
    path.write_text(
        f"# Retrains trial {trial.number} of the sweep (from {source}):\n"
        f"#   o2nc-train fit --config {path}\n" + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def _epochs(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get("epochs_trained", len(trial.intermediate_values)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _figure_of(axes: Any) -> Any:
    import numpy as np

    first = np.asarray(axes, dtype=object).flat[0]
    return first.figure


def _plots(study: optuna.Study, meta: dict[str, Any]) -> dict[str, Callable[[Any], Any]]:
    """Plot name -> function of a visualization module (matplotlib or plotly flavour)."""
    beta, lr = meta.get("beta_param"), meta.get("lr_param")
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = {name for t in completed for name in t.params}
    plots: dict[str, Callable[[Any], Any]] = {
        "history": lambda vis: vis.plot_optimization_history(study),
        "importances": lambda vis: vis.plot_param_importances(study),
        "slices": lambda vis: vis.plot_slice(study),
        "learning_curves": lambda vis: vis.plot_intermediate_values(study),
    }
    if beta in names and lr in names:
        plots["beta_eta_contour"] = lambda vis: vis.plot_contour(study, params=[beta, lr])
    return plots


def _write_csv(trials: list[FrozenTrial], path: Path) -> None:
    """One row per trial: the columns of Optuna's ``trials_dataframe``, without pandas."""
    params = list(dict.fromkeys(name for t in trials for name in t.params))
    attrs = list(dict.fromkeys(name for t in trials for name in t.user_attrs))
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["number", "value", "state", "datetime_start", "duration"]
            + [f"params_{name}" for name in params]
            + [f"user_attrs_{name}" for name in attrs]
        )
        for t in trials:
            duration = (
                t.datetime_complete - t.datetime_start
                if t.datetime_complete and t.datetime_start
                else ""
            )
            writer.writerow(
                [t.number, "" if t.value is None else t.value, t.state.name, t.datetime_start or ""]
                + [duration]
                + [t.params.get(name, "") for name in params]
                + [_csv_cell(t.user_attrs.get(name, "")) for name in attrs]
            )


def _csv_cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


#: Legend entries per column: a 5-inch figure holds about this many at the small font size.
_LEGEND_ROWS = 16


def _fit_legends(figure: Any) -> None:
    """Optuna's learning-curve legend has one entry per trial in one column, taller than the
    figure from ~20 trials on: spread it over columns beside the axes, in a small font."""
    for axes in figure.axes:
        legend = axes.get_legend()
        if legend is None or len(legend.get_texts()) <= _LEGEND_ROWS:
            continue
        handles, labels = axes.get_legend_handles_labels()
        axes.legend(
            handles,
            labels,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            borderaxespad=0.0,
            ncol=-(-len(labels) // _LEGEND_ROWS),
            fontsize="small",
        )


def _write_plots(
    study: optuna.Study, meta: dict[str, Any], directory: Path, report: Report
) -> None:
    matplotlib, _ = require("report", "the sweep report's plots", "matplotlib", "plotly")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as plotly_vis
    import optuna.visualization.matplotlib as mpl_vis

    plots = _plots(study, meta)
    if "beta_eta_contour" not in plots:
        report.skipped["beta_eta_contour"] = (
            "needs completed trials that searched both beta and eta"
        )
    html_parts: list[str] = []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "unique value length" chatter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, plot in plots.items():
            try:
                figure = _figure_of(plot(mpl_vis))
                figure.set_size_inches(max(figure.get_size_inches()[0], 7), 5)
                _fit_legends(figure)
                figure.tight_layout()
                path = directory / f"{name}.png"
                # bbox "tight": the learning curves' legend sits outside the axes, and
                # tight_layout alone leaves it cut off at the figure's edge
                figure.savefig(path, dpi=110, bbox_inches="tight")
                plt.close(figure)
                report.plots[name] = path
            except Exception as error:  # optuna refuses plots the study cannot support yet
                plt.close("all")
                report.skipped[name] = f"{type(error).__name__}: {error}"
                continue
            try:
                html_parts.append(
                    plot(plotly_vis).to_html(full_html=False, include_plotlyjs=not html_parts)
                )
            except Exception as error:
                report.skipped[f"{name} (html)"] = f"{type(error).__name__}: {error}"
    optuna.logging.set_verbosity(verbosity)
    if html_parts:
        report.html = directory / "report.html"
        report.html.write_text(
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{study.study_name}</title></head><body>"
            f"<h1>Sweep {study.study_name}</h1>{''.join(html_parts)}</body></html>"
        )


def write_report(
    study: optuna.Study,
    *,
    storage_url: str,
    logdir: str | Path | None = None,
    plots: bool = True,
) -> Report:
    """Write ``<logdir>/<study>/report/`` and return where everything went.

    Args:
        study: the study, loaded from its storage.
        storage_url: shown (redacted) in the report and in the commands it prints.
        logdir: the sweep's log directory; defaults to the one recorded in the study.
        plots: also write the PNG and HTML plots.
    """
    meta = dict(study.user_attrs.get(STUDY_ATTR, {}))
    root = Path(logdir or meta.get("logdir") or ".")
    directory = root / study.study_name / "report"
    directory.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)

    csv_path = directory / "trials.csv"
    _write_csv(trials, csv_path)

    report = Report(directory, directory / "report.md", csv_path, None)
    try:
        report.best = study.best_trial
    except ValueError:
        report.best = None
    if report.best is not None:
        report.retrain = write_retrain_config(report.best, directory)
    if plots:
        try:
            _write_plots(study, meta, directory, report)
        except MissingExtra as error:  # the core install: report.md and trials.csv only
            report.skipped["plots"] = str(error)

    report.markdown.write_text(_markdown(study, trials, meta, root, storage_url, report))
    return report


def _markdown(
    study: optuna.Study,
    trials: list[FrozenTrial],
    meta: dict[str, Any],
    root: Path,
    storage_url: str,
    report: Report,
) -> str:
    metric = meta.get("metric", "value")
    direction = study.direction.name.lower()
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    lines = [
        f"# Sweep report: {study.study_name}",
        "",
        f"- objective: **{direction} `{metric}`**"
        + (f" (at the {meta['weights']} weights)" if meta.get("weights") else ""),
        f"- sampler: {meta.get('sampler', '?')}, pruner: {meta.get('pruner', '?')}",
        f"- storage: `{redact(storage_url, storage_url)}`",
        f"- trials: {len(trials)} ("
        + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        + f"); target {meta.get('n_trials', '?')} finished",
    ]
    for key in ("sweep_config", "train_config"):
        if meta.get(key):
            lines.append(f"- {key.replace('_', ' ')}: `{meta[key]}`")
    max_epochs = meta.get("max_epochs")
    finished = [t for t in trials if is_finished_for_good(t)]
    if isinstance(max_epochs, int) and finished:
        trained = sum(_epochs(t) for t in finished)
        budget = max_epochs * len(finished)
        saved = 1 - trained / budget if budget else 0.0
        lines.append(f"- epochs: {trained} trained of {budget} without pruning ({saved:.0%} saved)")
    lines += [
        "",
        f"TensorBoard, all trials side by side: `{tensorboard_command(root, study.study_name)}`",
        "",
    ]

    best = report.best
    lines.append("## Best trial")
    lines.append("")
    if best is None:
        lines.append("No trial has completed yet.")
    else:
        lines += [
            f"Trial **{best.number}**: `{metric}` = **{_fmt(best.value)}** "
            f"after {_epochs(best)} epochs.",
            "",
            "| parameter | value |",
            "| --- | --- |",
        ]
        lines += [f"| `{name}` | {_fmt(value)} |" for name, value in best.params.items()]
        values = best.user_attrs.get("values")
        if values:
            lines += [
                "",
                "Config values it ran with:",
                "",
                "| config path | value |",
                "| --- | --- |",
            ]
            lines += [
                f"| `{path}` | {_fmt(value)} |" for path, value in flatten_paths(values).items()
            ]
        lines.append("")
        if best.user_attrs.get("tensorboard_run"):
            lines.append(f"- TensorBoard run: `{best.user_attrs['tensorboard_run']}`")
        command = retrain_command(report)
        if command:
            lines.append(f"- retrain it: `{command}`")
    lines.append("")

    ranked = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
        key=lambda t: t.value,
        reverse=direction == "maximize",
    )
    if ranked:
        names = list(dict.fromkeys(name for t in ranked for name in t.params))
        lines += [
            "## Top trials",
            "",
            "| trial | " + metric + " | epochs | " + " | ".join(f"`{n}`" for n in names) + " |",
            "| --- " * (3 + len(names)) + "|",
        ]
        for trial in ranked[:10]:
            cells = [_fmt(trial.params[n]) if n in trial.params else "" for n in names]
            lines.append(
                f"| {trial.number} | {_fmt(trial.value)} | {_epochs(trial)} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")

    failed = [t for t in trials if t.state == TrialState.FAIL]
    if failed:
        lines += ["## Failed trials", "", "| trial | reason |", "| --- | --- |"]
        for trial in failed:
            reason = trial.user_attrs.get(FAIL_REASON) or trial.system_attrs.get(
                "fail_reason", "worker stopped (crash or kill); retried if a retry was queued"
            )
            first = str(reason).strip().splitlines()[0] if str(reason).strip() else "?"
            lines.append(f"| {trial.number} | {_fmt(redact(first, storage_url))} |")
        lines.append("")

    lines += ["## Plots", ""]
    for name, path in report.plots.items():
        lines.append(f"![{name}]({path.name})")
    if report.html is not None:
        lines += ["", f"Interactive versions: [{report.html.name}]({report.html.name})"]
    for name, reason in report.skipped.items():
        lines.append(f"- {name}: not drawn ({_fmt(redact(reason, storage_url))})")
    lines += ["", f"All trials: [{report.csv.name}]({report.csv.name})", ""]
    return "\n".join(lines)

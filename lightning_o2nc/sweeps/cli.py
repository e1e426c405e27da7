"""``o2nc-sweep``: run or continue a sweep, or write the report of an existing study.

    o2nc-sweep --config digits [--storage URL] [--study-name NAME]
               [--n-trials N] [--timeout S] [--logdir DIR] [--no-progress]
    o2nc-sweep report --storage URL --study-name NAME [--logdir DIR]
    o2nc-sweep serve --storage postgresql://... [--host 127.0.0.1] [--port 13000]
    o2nc-sweep configs        # the shipped sweep and train configs, by name
    o2nc-sweep --version

``--config`` takes a path or the name of a shipped config (an existing path wins).

Run the first form on several machines with one ``--storage`` (PostgreSQL or MySQL, a journal
file on a shared file system with ``--storage-class JournalFileBackend``, or ``grpc://HOST:PORT``
of an ``o2nc-sweep serve`` proxy) and one ``--study-name`` and they share the study.
``--storage`` may be left out in favour of the ``O2NC_SWEEP_STORAGE`` environment variable, which
keeps a password out of the process list (``O2NC_SWEEP_STORAGE_CLASS`` for ``--storage-class``).

A bad sweep file, train config or storage is refused before any trial with one line,
``o2nc-sweep: error: ...``, and exit status 2 (``O2NC_TRACEBACK=1`` adds the traceback). SIGINT and
SIGTERM stop the sweep at a safe point with exit status 130 or 143 (see :mod:`lightning_o2nc.sweeps.signals`).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from .paths import flatten_paths
from .signals import StopRequest, TrialInterrupted

__all__ = ["main"]

_DEFAULT_LOGDIR = "runs/sweeps"


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="o2nc-sweep",
        description="Optuna sweep over O2NC hyper-parameters (beta, eta, mu and their schedules). "
        "`o2nc-sweep configs` lists the shipped configs, `o2nc-sweep report --help` is the report "
        "command, `o2nc-sweep serve --help` the gRPC storage proxy.",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument(
        "--config",
        required=True,
        help="sweep definition: a YAML path or a shipped config's name (`o2nc-sweep configs`)",
    )
    parser.add_argument(
        "--storage",
        help="database URL (sqlite:///f.db, postgresql://user@host/db, mysql://...), or a file "
        "path for SQLite; grpc://HOST:PORT for an `o2nc-sweep serve` proxy; default: "
        "$O2NC_SWEEP_STORAGE, else <logdir>/optuna.db",
    )
    _add_storage_class(parser)
    parser.add_argument("--study-name", help="default: the sweep file's study_name")
    parser.add_argument(
        "--n-trials",
        type=int,
        help="finished trials the study should hold, all workers together (default: the file's)",
    )
    parser.add_argument("--timeout", type=float, help="stop starting trials after S seconds")
    parser.add_argument(
        "--logdir",
        default=_DEFAULT_LOGDIR,
        help=f"TensorBoard runs, default SQLite file and report (default: {_DEFAULT_LOGDIR})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no live progress display")
    parser.add_argument("--no-plots", action="store_true", help="report without plots")
    return parser


def _version() -> str:
    from lightning_o2nc import __version__

    return f"o2nc-sweep (lightning-o2nc) {__version__}"


def _add_storage_class(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-class",
        help="as in Optuna's CLI: JournalFileBackend makes --storage a journal file path (for a "
        "shared file system without a database); default: $O2NC_SWEEP_STORAGE_CLASS, else the "
        "sweep file's storage.storage_class, else what the URL names",
    )


def _report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="o2nc-sweep report",
        description="Write report.md, plots and trials.csv of an existing study.",
    )
    parser.add_argument(
        "--storage", help="database URL or SQLite file; default: $O2NC_SWEEP_STORAGE"
    )
    _add_storage_class(parser)
    parser.add_argument("--study-name", required=True)
    parser.add_argument(
        "--logdir", help="the sweep's log directory (default: the one recorded in the study)"
    )
    parser.add_argument("--no-plots", action="store_true", help="report without plots")
    return parser


def _report(argv: Sequence[str], console: Console) -> int:
    import optuna

    from .report import write_report
    from .storage import STORAGE_ENV, StorageError, open_resolved_storage, redact

    args = _report_parser().parse_args(argv)
    if not args.storage and not os.environ.get(STORAGE_ENV):
        raise StorageError(f"give --storage URL (or set {STORAGE_ENV})")
    url, storage = open_resolved_storage(args.storage, args.storage_class, Path.cwd(), None)
    try:
        study = optuna.load_study(study_name=args.study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StorageError(
            f"no study {args.study_name!r} in {redact(url, url)!r}; studies there: {names}"
        ) from None
    report = write_report(study, storage_url=url, logdir=args.logdir, plots=not args.no_plots)
    _print_summary(console, report, study, report.directory.parent.parent)
    return 0


def _print_summary(console: Console, report, study, logdir: Path) -> None:
    from .report import retrain_command, tensorboard_command
    from .study import STUDY_ATTR

    study_name = study.study_name
    metric = study.user_attrs.get(STUDY_ATTR, {}).get("metric", "value")
    best = report.best
    if best is None:
        console.print("no completed trial yet")
    else:
        console.print(f"[bold]best trial {best.number}[/bold]: {metric} = {best.value:.6g}")
        values = flatten_paths(best.user_attrs.get("values") or best.params)
        for name, value in values.items():
            shown = f"{value:.6g}" if isinstance(value, float) else str(value)
            console.print(f"  {name} = {shown}", highlight=False)
    console.print(
        f"logdir:      {logdir / study_name}  (one TensorBoard run per trial)", highlight=False
    )
    console.print(f"report:      {report.markdown}", highlight=False)
    if "plots" in report.skipped:
        console.print(f"plots:       {report.skipped['plots']}", highlight=False)
    console.print(f"tensorboard: {tensorboard_command(logdir, study_name)}", highlight=False)
    if best is not None and retrain_command(report):
        console.print(f"retrain:     {retrain_command(report)}", highlight=False)


def _configs(argv: Sequence[str]) -> int:
    from lightning_o2nc.shipped_configs import listing

    argparse.ArgumentParser(
        prog="o2nc-sweep configs",
        description="List the shipped sweep and train configs that --config accepts by name.",
    ).parse_args(argv)
    try:
        print(listing(), flush=True)
    except BrokenPipeError:  # `o2nc-sweep configs | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0


def _run(argv: Sequence[str], console: Console, stop: StopRequest) -> int:
    from .config import load_sweep_config
    from .run import run_sweep

    args = _run_parser().parse_args(argv)
    sweep = load_sweep_config(
        args.config, study_name=args.study_name, n_trials=args.n_trials, timeout=args.timeout
    )
    outcome = run_sweep(
        sweep,
        logdir=args.logdir,
        storage=args.storage,
        storage_class=args.storage_class,
        progress=not args.no_progress,
        console=console,
        plots=not args.no_plots,
        stop=stop,
    )
    console.print(
        f"study {sweep.study_name!r}: {outcome.trials_run} trial(s) run here; "
        f"storage {outcome.redacted_storage}",
        highlight=False,
    )
    _print_summary(console, outcome.report, outcome.study, Path(args.logdir))
    return outcome.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``o2nc-sweep`` console script."""
    from lightning_o2nc.lightning.errors import wants_traceback

    from .errors import SweepConfigError
    from .storage import STORAGE_ENV, StorageError, redact

    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console(highlight=False, soft_wrap=True)  # commands stay copy-pasteable
    secret_source = " ".join(argv) + " " + os.environ.get(STORAGE_ENV, "")
    # Until a study is open a signal exits at once; run_sweep then defers it to a safe point.
    stop = StopRequest(immediate=True)
    try:
        with stop.installed():
            if argv and argv[0] == "configs":
                return _configs(argv[1:])
            if argv and argv[0] == "report":
                return _report(argv[1:], console)
            if argv and argv[0] == "serve":
                from .grpc_proxy import serve_main

                return serve_main(argv[1:])
            if argv and argv[0] == "run":
                argv = argv[1:]
            return _run(argv, console, stop)
    except (SweepConfigError, StorageError) as error:
        if wants_traceback():  # O2NC_TRACEBACK=1, as for o2nc-train
            print(redact(traceback.format_exc(), secret_source), file=sys.stderr)
        print(f"o2nc-sweep: error: {redact(str(error), secret_source)}", file=sys.stderr)
        return 2
    except TrialInterrupted:
        print(
            f"o2nc-sweep: {stop.signal_name}: stopped before the study was opened", file=sys.stderr
        )
        return stop.exit_status
    except KeyboardInterrupt:
        return 130
    except Exception:
        # A database error deep inside a trial may quote the URL: redact the whole traceback.
        print(redact(traceback.format_exc(), secret_source), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

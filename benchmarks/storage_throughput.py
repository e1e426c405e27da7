"""Trials per second each sweep storage sustains, with 1 to 16 worker processes on one study.

Storages, each opened exactly as an ``o2nc-sweep`` worker opens it (``lightning_o2nc.sweeps.storage``):

- ``sqlite``: one SQLite file (the embedded default);
- ``journal``: one journal file, ``--storage-class JournalFileBackend`` (symlink lock);
- ``postgresql``: a throw-away PostgreSQL server on loopback (``lightning_o2nc.sweeps.local_postgres``);
- ``grpc``: the same PostgreSQL behind ``o2nc-sweep serve`` (Optuna's gRPC proxy).

The objective is trivial (``x**2``, random sampler), so the figure is the storage's own cost per
trial: create, suggest, set attributes, finish. Database workers keep o2nc-sweep's heartbeats
(a journal file and the proxy have none; ``--no-heartbeat`` drops them). Worker processes are
started once and told, over stdin, which storage and study to run next; every cell (storage,
workers) gets a fresh study, all its workers start together after each has loaded it, and run
for ``--seconds``. Afterwards the study must hold exactly the trials the workers report, all
complete.

    python -m benchmarks.storage_throughput [--workers 1 4 8 16] [--seconds 5]
        [--storages sqlite journal postgresql grpc] [--output-dir benchmarks/results]

It writes ``benchmarks/results/storage_throughput.json`` and ``.png``; ``benchmarks.render``
puts :func:`to_markdown` of the JSON into RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
NAME = "storage_throughput"
STORAGES = ("sqlite", "journal", "postgresql", "grpc")
LABELS = {
    "sqlite": "SQLite file",
    "journal": "journal file",
    "postgresql": "PostgreSQL",
    "grpc": "PostgreSQL via gRPC proxy",
}
_PASSWORD = "o2nc-bench-pg"
_SERVE = [sys.executable, "-m", "lightning_o2nc.sweeps.cli", "serve"]


# --- the worker process -------------------------------------------------------------------------


def _worker() -> None:
    """Read one JSON job per line from stdin; load its study, say ready, wait for go, run."""
    import warnings

    import optuna

    from lightning_o2nc.sweeps.storage import open_storage

    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storages: dict[tuple[str, str | None], Any] = {}
    calls = [0]

    def objective(trial: optuna.Trial) -> float:
        calls[0] += 1
        x = trial.suggest_float("x", -1.0, 1.0)
        return x * x

    for line in sys.stdin:
        job = json.loads(line)
        if job is None:
            break
        key = (job["url"], job["storage_class"])
        if key not in storages:
            storages[key] = open_storage(
                job["url"], storage_class=job["storage_class"], heartbeat=job["heartbeat"]
            )
        study = optuna.load_study(
            study_name=job["study"], storage=storages[key], sampler=optuna.samplers.RandomSampler()
        )
        print("ready", flush=True)
        sys.stdin.readline()  # "go"
        calls[0] = 0
        start = time.perf_counter()
        study.optimize(objective, timeout=job["seconds"])
        seconds = time.perf_counter() - start
        print(json.dumps({"trials": calls[0], "seconds": seconds}), flush=True)
    for storage in storages.values():
        if hasattr(storage, "close"):
            storage.close()  # the gRPC channel
    os._exit(0)  # nothing left to flush; skip the interpreter's slow teardown of torch & co.


# --- the driver ---------------------------------------------------------------------------------


class WorkerPool:
    """``n`` worker processes, started once (their imports take seconds) and reused by every cell."""

    def __init__(self, n: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.pop("O2NC_SWEEP_STORAGE", None)
        env.pop("O2NC_SWEEP_STORAGE_CLASS", None)
        command = [sys.executable, "-m", "benchmarks.storage_throughput", "--worker"]
        self.processes = [
            subprocess.Popen(
                command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            for _ in range(n)
        ]

    def run(self, k: int, job: dict[str, Any]) -> list[dict[str, float]]:
        """Run ``job`` on the first ``k`` workers at once; their reports."""
        chosen = self.processes[:k]
        for process in chosen:
            process.stdin.write(json.dumps(job) + "\n")
            process.stdin.flush()
        for process in chosen:
            self._expect(process, "ready")
        for process in chosen:
            process.stdin.write("go\n")
            process.stdin.flush()
        return [json.loads(self._expect(process, "{")) for process in chosen]

    @staticmethod
    def _expect(process: subprocess.Popen, start: str) -> str:
        line = process.stdout.readline()
        if not line.startswith(start):
            raise RuntimeError(f"worker {process.pid} said {line!r} (exit {process.poll()})")
        return line

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.stdin.write("null\n")
                process.stdin.close()
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _start_proxy(database: str, log: Path, stack: ExitStack) -> str:
    from lightning_o2nc.sweeps.grpc_proxy import open_grpc_proxy
    from lightning_o2nc.sweeps.local_postgres import free_port

    port = free_port()
    with log.open("w") as output:
        proxy = subprocess.Popen(
            [*_SERVE, "--port", str(port)],  # the URL in the environment, not in `ps`
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "O2NC_SWEEP_STORAGE": database},
            stdout=output,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=60)

    stack.callback(stop)
    url = f"grpc://127.0.0.1:{port}"
    open_grpc_proxy(url, timeout=120).close()
    return url


def _storage_targets(
    storages: list[str], scratch: Path, stack: ExitStack
) -> dict[str, tuple[str, str | None]]:
    """``storage -> (url, storage_class)``; PostgreSQL ones are skipped without a server."""
    from lightning_o2nc.sweeps.local_postgres import PostgresUnavailable, local_postgres
    from lightning_o2nc.sweeps.storage import JOURNAL_CLASS

    targets: dict[str, tuple[str, str | None]] = {}
    database = None
    for storage in storages:
        if storage == "sqlite":
            targets[storage] = (f"sqlite:///{scratch / 'optuna.db'}", None)
        elif storage == "journal":
            targets[storage] = (str(scratch / "optuna-journal.log"), JOURNAL_CLASS)
        else:
            if database is None:
                try:
                    database = stack.enter_context(local_postgres(_PASSWORD, max_connections=200))
                except PostgresUnavailable as missing:
                    print(f"skipping {storage}: {missing}", file=sys.stderr)
                    continue
            if storage == "postgresql":
                url = database
            else:
                url = _start_proxy(database, scratch / "proxy.log", stack)
            targets[storage] = (url, None)
    return targets


def measure(
    workers: list[int], seconds: float, storages: list[str], heartbeat: bool = True
) -> dict[str, Any]:
    """Run every (storage, worker count) cell; the raw result."""
    import optuna

    from lightning_o2nc.sweeps.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="o2nc-storage-") as scratch:
        targets = _storage_targets(storages, Path(scratch), stack)
        pool = WorkerPool(max(workers))
        stack.callback(pool.close)
        for storage, (url, storage_class) in targets.items():
            own = open_storage(url, storage_class=storage_class)
            for k in workers:
                study = f"{storage}-{k}"
                optuna.create_study(storage=own, study_name=study)
                job = {"url": url, "storage_class": storage_class, "study": study}
                job["heartbeat"] = heartbeat
                reports = pool.run(k, {**job, "seconds": seconds})
                trials = optuna.load_study(study_name=study, storage=own).get_trials()
                ran = sum(r["trials"] for r in reports)
                wall = max(r["seconds"] for r in reports)
                complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
                if not ran == len(trials) == complete:
                    raise RuntimeError(
                        f"{storage}, {k} workers: workers report {ran} trials, the study holds "
                        f"{len(trials)} ({complete} complete)"
                    )
                rows.append(
                    {
                        "storage": storage,
                        "workers": k,
                        "trials": ran,
                        "seconds": round(wall, 3),
                        "trials_per_s": round(ran / wall, 2),
                    }
                )
                print(
                    f"{LABELS[storage]:>26}  {k:>2} workers  {ran / wall:8.1f} trials/s", flush=True
                )
    return {
        "benchmark": NAME,
        "command": "python -m benchmarks.storage_throughput " + " ".join(sys.argv[1:]),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "host": platform.machine(),
            "CPU": f"{len(os.sched_getaffinity(0))} usable cores",
            "python": platform.python_version(),
            "optuna": optuna.__version__,
        },
        # Every worker needs a core: other load on the machine lowers every figure.
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "seconds_per_cell": seconds,
        "database_heartbeats": heartbeat,
        "objective": "x**2 with the random sampler (storage cost only)",
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per storage, one column per worker count, trials per second."""
    workers = sorted({row["workers"] for row in result["rows"]})
    storages = [s for s in STORAGES if any(row["storage"] == s for row in result["rows"])]
    cell = {(row["storage"], row["workers"]): row["trials_per_s"] for row in result["rows"]}
    lines = [
        "| storage | " + " | ".join(f"{k} worker{'s' * (k > 1)}" for k in workers) + " |",
        "| --- |" + " ---: |" * len(workers),
    ]
    for storage in storages:
        values = [f"{cell[(storage, k)]:.1f}" if (storage, k) in cell else "-" for k in workers]
        lines.append(f"| {LABELS[storage]} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def to_markdown(result: dict[str, Any]) -> str:
    """The table, what it was measured on, and which storage to choose at which scale."""
    cell = {(row["storage"], row["workers"]): row["trials_per_s"] for row in result["rows"]}
    few, many = min(w for _, w in cell), max(w for _, w in cell)

    def rate(storage: str, workers: int) -> str:
        return f"{cell[(storage, workers)]:.0f}" if (storage, workers) in cell else "-"

    machine = result.get("machine") or {}
    load = result.get("load_average_1min")
    context = ", ".join(f"{key} {value}" for key, value in machine.items())
    if load:
        context += f"; 1-minute load average {load[0]} before, {load[1]} after"
    lines = [
        table(result),
        "",
        f"Trials per second, all workers together, {result['seconds_per_cell']:g} s per cell "
        f"({context}). Every worker needs a core, so on a small machine the figures measure each "
        "storage's CPU cost per trial more than its I/O. Which storage at which scale:",
        "",
        f"- **One machine, a few workers: SQLite** (the default): {rate('sqlite', few)} trials/s "
        f"with {few} worker, {rate('sqlite', many)} with {many} (one writer at a time).",
        f"- **A shared file system without a database server: the journal file**: "
        f"{rate('journal', few)} trials/s with {few} worker, {rate('journal', many)} with {many}, "
        "as every append waits for the one lock file (on NFS, a network round trip each).",
        f"- **Several machines: PostgreSQL**: {rate('postgresql', few)} trials/s with {few} "
        f"worker, {rate('postgresql', many)} with {many}; each worker runs its own SQL and holds "
        "its own connection pool.",
        f"- **Many workers: PostgreSQL behind the gRPC proxy** (`o2nc-sweep serve`): "
        f"{rate('grpc', many)} trials/s with {many} workers against {rate('postgresql', many)} "
        f"direct, and {rate('grpc', few)} against {rate('postgresql', few)} with {few}. One "
        "process holds the database connections and runs the SQL; it is also the answer to "
        "PostgreSQL's connection limit at hundreds of workers.",
        "",
        "A trial that trains for 10 s keeps 16 workers at 1.6 trials/s, below every rate above: "
        "the storage limits only sweeps of sub-second trials or of hundreds of workers.",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    """Trials per second against worker count, one line per storage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for storage in STORAGES:
        rows = sorted(
            (r["workers"], r["trials_per_s"]) for r in result["rows"] if r["storage"] == storage
        )
        if rows:
            axes.plot(*zip(*rows), marker="o", label=LABELS[storage])
    axes.set_xlabel("worker processes")
    axes.set_ylabel("trials per second (all workers)")
    axes.set_title("Sweep storage throughput, trivial objective")
    axes.set_xscale("log", base=2)
    ticks = sorted({r["workers"] for r in result["rows"]})
    axes.set_xticks(ticks, [str(k) for k in ticks])
    axes.minorticks_off()
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=5.0, help="run time of each cell")
    parser.add_argument("--storages", nargs="+", choices=STORAGES, default=list(STORAGES))
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR, help="for the JSON")
    parser.add_argument(
        "--plot", type=Path, help=f"default: <output-dir>/{NAME}.png (never the committed one)"
    )
    parser.add_argument(
        "--no-heartbeat",
        action="store_true",
        help="databases without o2nc-sweep's heartbeats (to see what they cost)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker()
        return None
    args.plot = args.plot or args.output_dir / f"{NAME}.png"
    if min(args.workers) < 1 or args.seconds <= 0:
        parser.error("--workers must be positive and --seconds > 0")
    result = measure(
        sorted(set(args.workers)), args.seconds, args.storages, heartbeat=not args.no_heartbeat
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    plot(result, args.plot)
    if args.plot.parent.resolve() == args.output_dir.resolve():
        result["figures"] = [args.plot.name]  # shown under the section of RESULTS.md
    json_path = args.output_dir / f"{NAME}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    print(to_markdown(result))
    print(f"raw results: {json_path}\nplot: {args.plot}")
    return result


if __name__ == "__main__":
    main()

"""Trials per second each sweep storage sustains, with 1 to 16 worker processes on one study.

Each storage is opened as an ``o2nc-sweep`` worker opens it (:func:`open_storage`): a SQLite file,
a journal file (symlink lock), a throw-away PostgreSQL on loopback, and that PostgreSQL behind
``o2nc-sweep serve`` (Optuna's gRPC proxy); databases keep o2nc-sweep's heartbeats. The objective
is trivial (``x**2``, random sampler), so the figure is the storage's own cost per trial. Every
cell (storage, k workers) gets a fresh study, which its k workers load before starting together:
trials/s = all their trials / the longest run; the study must then hold exactly those trials.
"""

import multiprocessing
import os
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from contextlib import ExitStack, contextmanager
from pathlib import Path

import optuna
from matplotlib.figure import Figure  # no pyplot: no backend, no global figure to close

from lightning_o2nc.sweeps.grpc_proxy import open_grpc_proxy, serve
from lightning_o2nc.sweeps.local_postgres import PostgresUnavailable, free_port, local_postgres
from lightning_o2nc.sweeps.storage import JOURNAL_CLASS, open_storage

from ..harness import Experiment, run_jobs

LABELS = {"sqlite": "SQLite file", "journal": "journal file", "postgresql": "PostgreSQL",
          "grpc": "PostgreSQL via gRPC proxy"}  # fmt: skip
_OPENED: dict = {}  # (run, url, storage_class) -> storage, kept by a worker process across cells


def cell_worker(job: dict, barrier) -> dict:
    """One worker of a cell: load the study, wait for the others at ``barrier``, run ``seconds``."""
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if (key := (job["run"], job["url"], job["storage_class"])) not in _OPENED:
        _OPENED[key] = open_storage(key[1], storage_class=key[2], heartbeat=job["heartbeat"])
    sampler, calls = optuna.samplers.RandomSampler(), []
    study = optuna.load_study(study_name=job["study"], storage=_OPENED[key], sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        calls.append(trial.number)
        return trial.suggest_float("x", -1.0, 1.0) ** 2

    barrier.wait(timeout=600)
    start = time.perf_counter()
    study.optimize(objective, timeout=job["seconds"])
    return {"trials": len(calls), "seconds": time.perf_counter() - start}


@contextmanager
def grpc_proxy(database: str):
    """``o2nc-sweep serve`` (:func:`serve`) in front of ``database``, in its own process."""
    spawn = multiprocessing.get_context("spawn")
    stop, port = spawn.Event(), free_port()  # the URL travels by pipe, never on a command line
    proxy = spawn.Process(target=serve, args=(database,), kwargs={"port": port, "stop": stop})
    proxy.start()
    try:
        open_grpc_proxy(url := f"grpc://127.0.0.1:{port}", timeout=120).close()
        yield url
    finally:
        stop.set()
        proxy.join(60)


def open_targets(storages: list[str], scratch: Path, stack: ExitStack) -> dict:
    """``storage -> (url, storage_class)``; the PostgreSQL ones are skipped without a server."""
    targets = {"sqlite": (f"sqlite:///{scratch / 'optuna.db'}", None),
               "journal": (str(scratch / "journal.log"), JOURNAL_CLASS)}  # fmt: skip
    try:
        if {"postgresql", "grpc"} & set(storages):
            database = stack.enter_context(local_postgres("o2nc-bench", max_connections=200))
            targets["postgresql"] = (database, None)
            if "grpc" in storages:
                targets["grpc"] = (stack.enter_context(grpc_proxy(database)), None)
    except PostgresUnavailable as missing:
        print(f"skipping PostgreSQL: {missing}")
    return {storage: targets[storage] for storage in storages if storage in targets}


def run(settings: dict, work: Path) -> dict:
    """Every (storage, worker count) cell; ``settings``: workers, seconds, storages, heartbeat."""
    workers, seconds, storages = sorted(set(settings["workers"])), settings["seconds"], settings["storages"]  # fmt: skip
    if not workers or min(workers) < 1 or seconds <= 0 or not set(storages) <= set(LABELS):
        raise ValueError(f"storage_throughput: need workers >= 1, seconds > 0 and storages from "
                         f"{', '.join(LABELS)}; got {workers}, {seconds}, {storages}")  # fmt: skip
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load_before, rows = os.getloadavg()[0], []
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=work)))
        manager = stack.enter_context(multiprocessing.Manager())  # holds each cell's barrier
        for storage, (url, storage_class) in open_targets(storages, scratch, stack).items():
            own = open_storage(url, storage_class=storage_class)
            job = {"url": url, "storage_class": storage_class, "run": scratch.name, **settings}
            for k in workers:
                study = optuna.create_study(storage=own, study_name=f"{storage}-{k}")
                cell = ({**job, "study": study.study_name}, manager.Barrier(k))
                reports = run_jobs(cell_worker, [cell] * k, workers=k)
                ran, wall = sum(r["trials"] for r in reports), max(r["seconds"] for r in reports)
                if (states := Counter(t.state.name for t in study.trials)) != Counter(COMPLETE=ran):
                    raise RuntimeError(f"{storage}, {k} workers: workers report {ran} trials, "
                                       f"the study holds {dict(states)}")  # fmt: skip
                rows.append({"storage": storage, "workers": k, "trials": ran,
                             "seconds": round(wall, 3), "trials_per_s": round(ran / wall, 2)})  # fmt: skip
                print(f"{LABELS[storage]:>26}  {k:>2} workers  {ran / wall:8.1f} trials/s")
    return {
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "seconds_per_cell": seconds, "database_heartbeats": settings["heartbeat"],
        "objective": "x**2 with the random sampler (storage cost only)", "rows": rows,
        "optuna": optuna.__version__,
    }  # fmt: skip


def table(result: dict) -> str:
    """Markdown: one row per storage, one column per worker count, trials per second."""
    workers = sorted({row["workers"] for row in result["rows"]})
    cell = {(row["storage"], row["workers"]): row["trials_per_s"] for row in result["rows"]}
    header = " | ".join(f"{k} worker{'s' * (k > 1)}" for k in workers)
    lines = [f"| storage | {header} |", "| --- |" + " ---: |" * len(workers)]
    for storage in (s for s in LABELS if any(key[0] == s for key in cell)):
        values = [f"{cell[(storage, k)]:.1f}" if (storage, k) in cell else "-" for k in workers]
        lines.append(f"| {LABELS[storage]} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def render(result: dict) -> str:
    """The table, its context (``env`` or the old ``machine``), and which storage at which scale."""
    cell = {(row["storage"], row["workers"]): row["trials_per_s"] for row in result["rows"]}
    few, many = min(w for _, w in cell), max(w for _, w in cell)
    rate = defaultdict(lambda: "-", {key: f"{value:.0f}" for key, value in cell.items()})
    machine = result.get("machine") or {"CPU": result["env"]["CPU"], "optuna": result["optuna"]}
    context = ", ".join(f"{key} {value}" for key, value in machine.items())
    return f"""{table(result)}

Trials per second, all workers together, {result["seconds_per_cell"]:g} s per cell ({context}; 1-minute load average {result["load_average_1min"][0]} before, {result["load_average_1min"][1]} after). Every worker needs a core, so on a small machine the figures measure each storage's CPU cost per trial more than its I/O. Which storage at which scale:

- **One machine, a few workers: SQLite** (the default): {rate["sqlite", few]} trials/s with {few} worker, {rate["sqlite", many]} with {many} (one writer at a time).
- **A shared file system without a database server: the journal file**: {rate["journal", few]} trials/s with {few} worker, {rate["journal", many]} with {many}, as every append waits for the one lock file (on NFS, a network round trip each).
- **Several machines: PostgreSQL**: {rate["postgresql", few]} trials/s with {few} worker, {rate["postgresql", many]} with {many}; each worker runs its own SQL and holds its own connection pool.
- **Many workers: PostgreSQL behind the gRPC proxy** (`o2nc-sweep serve`): {rate["grpc", many]} trials/s with {many} workers against {rate["postgresql", many]} direct, and {rate["grpc", few]} against {rate["postgresql", few]} with {few}. One process holds the database connections and runs the SQL; it is also the answer to PostgreSQL's connection limit at hundreds of workers.

A trial that trains for 10 s keeps 16 workers at 1.6 trials/s, below every rate above: the storage limits only sweeps of sub-second trials or of hundreds of workers."""


def figure(result: dict, folder: Path) -> list[str]:
    """Trials per second against worker count, one line per storage."""
    axes = Figure(figsize=(6, 4), layout="tight").subplots()
    for storage, label in LABELS.items():
        rows = sorted((r["workers"], r["trials_per_s"]) for r in result["rows"] if r["storage"] == storage)  # fmt: skip
        if rows:
            axes.plot(*zip(*rows, strict=True), marker="o", label=label)
    axes.set(xlabel="worker processes", ylabel="trials per second (all workers)",
             title="Sweep storage throughput, trivial objective", xscale="log")  # fmt: skip
    ticks = sorted({r["workers"] for r in result["rows"]})
    axes.set_xticks(ticks, [str(k) for k in ticks])
    axes.minorticks_off()
    axes.grid(True, alpha=0.3)
    axes.legend()
    axes.figure.savefig(folder / "storage_throughput.png", dpi=120)
    return ["storage_throughput.png"]


EXPERIMENTS = (
    Experiment(
        name="storage_throughput", title="Sweep storage throughput", run=run, render=render, figure=figure,
        workload="a trivial objective (x**2, random sampler) on one study, worker processes started together",
        measurement="trials per second of all workers together over `seconds` per cell, every trial checked",
        settings={"workers": [1, 4, 8, 16], "seconds": 5.0, "storages": [*LABELS], "heartbeat": True},
        quick={"workers": [1, 2], "seconds": 0.5}, arms=tuple(LABELS.values()),
    ),
)  # fmt: skip

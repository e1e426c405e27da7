"""Run every benchmark and write ``benchmarks/RESULTS.md`` with its plots (``make bench``).

    python -m benchmarks.run_all            # full: ~30-40 min on 2 CPU cores -> benchmarks/RESULTS.md
    python -m benchmarks.run_all --quick    # smoke: a few minutes -> benchmarks/_work/quick/RESULTS.md

Sections: optimizer step overhead, Lightning throughput, accuracy parity with curves, the
stationarity panel, the scaling sweep (``benchmarks/sweep_scaling.py``), the CIFAR-10 pipeline
check, and the kept blocks that other scripts fill (CIFAR-10 rows from
``benchmarks/cifar10_resnet18.py``, the GPU section from ``benchmarks/gpu_check.sh``). Each section
is guarded: one that fails says so in the file and the others still run; the exit status is 1 when
any failed. Every number in the file comes from these scripts.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import cifar10_resnet18, gpu_check
from .report import (
    README_PATH,
    REPO_ROOT,
    RESULTS_PATH,
    WORK_DIR,
    command_line,
    machine_description,
    machine_markdown,
    mean_std,
    read_block,
    work_dir,
    wrap_block,
)


@dataclass
class Plan:
    """What one mode runs, and where it writes."""

    quick: bool
    output: Path
    step_rounds: int
    throughput: dict[str, Any]
    parity: dict[str, Any]
    cifar_arms: list[str]
    cifar_limit_train_batches: int | None
    # (section, target, measured, verdict) rows and sentences for the README summary
    targets: list[tuple[str, str, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)
    reuse: bool = False  # re-render from the last run's saved raw results where they exist
    reused: set[str] = field(default_factory=set)

    @property
    def figure_dir(self) -> Path:
        return self.output.parent


DATASET_NAMES = {"fashion_mnist": "Fashion-MNIST", "digits": "digits"}
FULL_PARITY = {"dataset": "fashion_mnist"}
QUICK_PARITY = {
    "dataset": "digits",
    "epochs": 12,
    "limit_train_batches": 0,
    "batch_size": 64,
    "val_batches": 6,
    "log_every_n_steps": 5,
}
DIGITS_PARITY = {**QUICK_PARITY, "epochs": 20}


def make_plan(quick: bool, output: Path | None) -> Plan:
    if quick:
        return Plan(
            quick=True,
            output=output or WORK_DIR / "quick" / "RESULTS.md",
            step_rounds=8,
            throughput={"dataset": "digits", "batches": 10, "repeats": 2},
            parity=QUICK_PARITY,
            cifar_arms=["o2nc"],
            cifar_limit_train_batches=2,
        )
    return Plan(
        quick=False,
        output=output or RESULTS_PATH,
        step_rounds=40,
        throughput={"dataset": "fashion_mnist", "batches": 40, "repeats": 5},
        parity=FULL_PARITY,
        cifar_arms=["sgdm", "o2nc"],
        cifar_limit_train_batches=None,
    )


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (for commands in the file)."""
    path = path.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _relative(path: Path, plan: Plan) -> str:
    return os.path.relpath(path, plan.output.parent)


# ----------------------------------------------------------------------------- sections
def section_step_overhead(plan: Plan) -> str:
    from . import step_overhead

    result = _load(plan, "step_overhead")
    if result is None:
        result = step_overhead.run("cpu", rounds=plan.step_rounds)
        _save(plan, "step_overhead", result)
    for target, measured, verdict, _ in step_overhead.targets(result):
        plan.targets.append(("step overhead (CPU)", target, measured, verdict))
    rows = {row["arm"]: row for row in result["rows"]}
    default = next(r for name, r in rows.items() if name.startswith("O2NC defaults"))
    averaged = next(r for name, r in rows.items() if "statistics" in name)
    over = " (over the 1.5× target, see section 1)" if averaged["ratio"] > 1.5 else ""
    plan.facts["step"] = (
        f"On the CPU an O2NC step over ResNet-18's parameters takes {default['ratio']:.2f}× the "
        "time of the faster torch SGD path with the defaults (one state buffer per parameter, "
        f"like SGD) and {averaged['ratio']:.2f}× with the averaged iterate and statistics{over}."
    )
    command = command_line("benchmarks.step_overhead", "--rounds", str(plan.step_rounds))
    return "\n\n".join(
        [
            "Issue targets: step time ≤ 1.02× the faster torch SGD path with the defaults, ≤ 1.5× "
            "with averaging and statistics; exactly one state buffer per parameter without "
            "averaging. On CPU, `foreach=None` picks the for-loop (torch SGD does the same), so "
            "both paths are shown. The GPU numbers are in the GPU section.",
            step_overhead.to_markdown(result, command),
        ]
    )


def section_throughput(plan: Plan) -> str:
    from . import throughput

    config = throughput.ThroughputConfig(**plan.throughput)
    result = _load(plan, "throughput")
    if result is None:
        result = throughput.run(config)
        _save(plan, "throughput", result)
    import statistics

    ratio_text = []
    for name, values in result["ratios"].items():
        if name.startswith("O2NC / "):
            median = statistics.median(values)
            ratio_text.append(
                f"{median:.3f}× {name.removeprefix('O2NC / ')} "
                f"(range {min(values):.2f}–{max(values):.2f})"
            )
            plan.targets.append(
                (
                    "throughput (CPU)",
                    f"{name} ≥ 0.99",
                    f"{median:.3f} (range {min(values):.3f}–{max(values):.3f})",
                    "met" if median >= 0.99 else "**missed**",
                )
            )
    plan.facts["throughput"] = (
        f"A Lightning fit on {DATASET_NAMES.get(config.dataset, config.dataset)} runs O2NC at "
        + " and ".join(ratio_text)
        + f" in samples per second over {config.repeats} interleaved repetitions."
    )
    return throughput.to_markdown(result)


def _parity_section(plan: Plan, overrides: dict[str, Any], note: str = "") -> tuple[str, dict]:
    from . import accuracy_parity as parity

    config = parity.ParityConfig(**overrides)
    result = _load(plan, f"parity_{config.dataset}")
    if result is None:
        result = parity.run(config)
        _save(plan, f"parity_{config.dataset}", result)
    png = plan.figure_dir / f"parity_{config.dataset}.png"
    parity.plot_curves(result, png)
    accuracies = parity.test_accuracies(result)
    import statistics

    for arm, values in accuracies.items():
        if arm == parity.BASELINE or not values:
            continue
        diff = 100 * (statistics.fmean(values) - statistics.fmean(accuracies[parity.BASELINE]))
        _, p = parity.welch(values, accuracies[parity.BASELINE])
        plan.targets.append(
            (
                f"accuracy parity ({config.dataset})",
                f"{arm} within 0.3 points of SGDM",
                f"{diff:+.2f} points (Welch p = {p:.3f})",
                "met" if abs(diff) <= 0.3 else "**missed**",
            )
        )
    base = accuracies[parity.BASELINE]
    exponential = accuracies["O2NC (exponential)"]
    diff = 100 * (statistics.fmean(exponential) - statistics.fmean(base))
    _, p_value = parity.welch(exponential, base)
    plan.facts["parity"] = (
        f"On {DATASET_NAMES.get(config.dataset, config.dataset)} (small CNN, "
        f"{len(config.seeds)} seeds, {config.epochs} short epochs, equal (η, β)) "
        f"O2NC reaches {mean_std(exponential, 100)}% test accuracy against SGDM's "
        f"{mean_std(base, 100)}% (Δ = {diff:+.2f} points, Welch p = {p_value:.2f}); the averaged "
        f"iterate x̄ gives {mean_std(accuracies[parity.AVERAGED_ARM], 100)}% and uniform scaling "
        f"{mean_std(accuracies['O2NC (uniform)'], 100)}%."
    )
    text = parity.to_markdown(result, _relative(png, plan))
    return (note + "\n\n" + text if note else text), result


def section_parity(plan: Plan) -> tuple[str, dict | None]:
    from .workloads import ensure_fashion_mnist

    if plan.parity["dataset"] == "fashion_mnist":
        problem = ensure_fashion_mnist(install=True)
        if problem:
            note = f"**Fashion-MNIST was not available, so this table is on digits instead.** {problem}"
            return _parity_section(plan, DIGITS_PARITY, note)
    return _parity_section(plan, plan.parity)


def section_stationarity(plan: Plan, parity_result: dict | None) -> str:
    from . import accuracy_parity as parity

    if parity_result is None:
        return "Not produced: the accuracy-parity runs did not finish."
    dataset = parity_result["config"]["dataset"]
    png = plan.figure_dir / f"stationarity_{dataset}.png"
    summary = parity.stationarity_panel(parity_result, png)
    if summary is None:
        return "Not produced: no run logged the O2NC statistics."
    rows = [
        (parity.PANEL_TAGS[tag], f"{first:.4g}", f"{last:.4g}", f"{last / first:.3g}×")
        for tag, (first, last) in summary.items()
    ]
    from .report import markdown_table

    return "\n\n".join(
        [
            "The theory's quantities on a real run: the first seed's O2NC (exponential, "
            "average=True) run of the parity table above, logged by `O2NCMonitor` to TensorBoard "
            "and read back from the event files with tbparse. ‖m̂‖ is the normalized EMA of "
            "gradients (from Δ, no extra buffer), V the β-weighted spread of the iterates around "
            "x̄, and ‖m̂‖ + c·V the (c, ε)-stationarity certificate of x̄. Command: the parity "
            "command above (the panel is drawn by `benchmarks.accuracy_parity.stationarity_panel`).",
            markdown_table(["quantity", "first logged", "last logged", "last / first"], rows),
            f"![stationarity panel]({_relative(png, plan)})",
        ]
    )


def section_sweep(plan: Plan) -> str:
    try:
        from . import sweep_scaling
    except ImportError as error:
        return f"Not available: `benchmarks/sweep_scaling.py` could not be imported ({error})."
    saved = _load(plan, "sweep")
    if saved is not None:
        return _demote_headings(saved["markdown"])
    text = sweep_scaling.run(plan.quick)
    _save(plan, "sweep", {"markdown": text})
    return _demote_headings(text)


def _demote_headings(text: str) -> str:
    """Nest a section's own markdown headings one level under this file's ``##`` sections."""
    return re.sub(r"^(#{2,5}) ", r"#\1 ", text, flags=re.M)


def section_cifar(plan: Plan) -> str:
    saved = _load(plan, "cifar_fixture")
    if saved is not None:
        return _cifar_text(plan, saved["rows"], saved["seconds"], saved["args"])
    check_file = work_dir() / "cifar10_fixture_check.md"
    check_file.unlink(missing_ok=True)
    args = [
        "--fixture",
        "--results",
        _shown(check_file),
        "--seeds",
        "0",
        "--arms",
        *plan.cifar_arms,
    ]
    if plan.cifar_limit_train_batches is not None:
        args += ["--limit-train-batches", str(plan.cifar_limit_train_batches)]
    started = time.perf_counter()
    rows = cifar10_resnet18.main(args)
    seconds = time.perf_counter() - started
    _save(plan, "cifar_fixture", {"rows": rows, "seconds": seconds, "args": args})
    return _cifar_text(plan, rows, seconds, args)


def _cifar_text(plan: Plan, rows: list[dict], seconds: float, args: list[str]) -> str:
    arms = ", ".join(cifar10_resnet18.ARM_LABELS[r["arm"]] for r in rows)
    rows_block = read_block(cifar10_resnet18.BLOCK, plan.output)
    kept = rows_block if rows_block is not None else cifar10_resnet18.block_markdown([])
    sgdm = cifar10_resnet18.recipe("sgdm")
    model, trainer, data = sgdm["model"], sgdm["trainer"], sgdm["data"]["init_args"]
    torch_lr = model["beta"] / (1 + model["lr"] * model["mu"]) * model["lr"]
    return "\n\n".join(
        [
            "`benchmarks/cifar10_resnet18.py` trains the paper's recipe, read from the project's "
            "`configs/train/cifar10_resnet18_{sgdm,o2nc}.yaml`: "
            f"{model['backbone']}, batch {data['batch_size']}, eta {model['lr']:.4g} and beta "
            f"{model['beta']} (SGDM = torch SGD with lr {torch_lr:.3g}, momentum {model['beta']}), "
            f"weight decay {model['weight_decay']}, {model['schedules']['lr']['shape']} schedule, "
            f"{trainer['max_epochs']} epochs, crop+flip; O2NC with the same (eta, beta). It runs "
            "both arms for the given seeds and writes one row per run into the block below.",
            f"**Here (no CIFAR-10 data, no GPU) only its pipeline was checked**, on a tiny "
            f"random CIFAR-format fixture: {len(rows)} run(s) ({arms}) went through fit, test at "
            f"the final weights and at x̄, and the row writer, in {seconds:.0f} s (command: "
            f"{command_line('benchmarks.cifar10_resnet18', *args)}). Accuracies on random "
            "images mean nothing and are not shown. No CIFAR-10 number in this file is invented: "
            "the block below holds only rows from real runs.",
            wrap_block(cifar10_resnet18.BLOCK, kept),
        ]
    )


def section_gpu(plan: Plan) -> str:
    kept = read_block(gpu_check.BLOCK, plan.output)
    found = re.search(r"<!-- gpu-facts: (.*?) -->", kept or "", re.S)
    if found:
        gpu_facts = json.loads(found.group(1))
        plan.targets += [tuple(row) for row in gpu_facts["targets"]]
        if gpu_facts["sentence"]:
            plan.facts["gpu"] = gpu_facts["sentence"]
    if kept is None:
        kept = (
            "**Not run yet.** `benchmarks/gpu_check.sh` is ready: one call on one GPU (about 8 "
            "minutes at most on an H200) checks the O2NC step under "
            '`torch.cuda.set_sync_debug_mode("error")` for every option, the CUDA step-time ratios '
            "against torch SGD foreach and fused, and ResNet-18 training throughput O2NC vs SGDM "
            "on Fashion-MNIST (plain loop with the data on the GPU, and a Lightning fit). Steps: "
            "`python -m benchmarks.gpu_check prepare` here; `bash benchmarks/gpu_check.sh` on the "
            "GPU machine (carry `benchmarks/_work/fashion-mnist-gz`); then "
            "`python -m benchmarks.gpu_check merge OUT_FOLDER` writes this section and "
            "`python -m benchmarks.run_all --reuse` adds its targets to the table at the top "
            "(without rerunning the CPU benchmarks)."
        )
    return wrap_block(gpu_check.BLOCK, kept)


# ----------------------------------------------------------------------------- driver
def _results_dir(plan: Plan) -> Path:
    return work_dir() / ("results-quick" if plan.quick else "results")


def _save(plan: Plan, name: str, result: dict[str, Any]) -> None:
    folder = _results_dir(plan)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, default=str))


# Sections whose finished text is kept by --reuse when their raw result was not saved.
KEEP_WHEN_REUSING = {"sweep": "sweep", "cifar": "cifar_fixture"}


def _saved_exists(plan: Plan, name: str) -> bool:
    return (_results_dir(plan) / f"{name}.json").exists()


def _load(plan: Plan, name: str) -> dict[str, Any] | None:
    """The saved raw result ``name`` when re-rendering (``--reuse``) and it exists, else None."""
    path = _results_dir(plan) / f"{name}.json"
    if not plan.reuse or not path.exists():
        return None
    plan.reused.add(name)
    print(f"reusing {path}", flush=True)
    return json.loads(path.read_text())


def _guarded(plan: Plan, name: str, build: Callable[[], Any]) -> Any:
    print(f"\n=== {name} ===", flush=True)
    started = time.perf_counter()
    try:
        value = build()
        print(f"=== {name}: done in {time.perf_counter() - started:.0f} s ===", flush=True)
        return value, time.perf_counter() - started
    except Exception as error:
        traceback.print_exc()
        plan.failures.append(name)
        return f"**FAILED**: `{type(error).__name__}: {error}` (see the run's log).", None


def previous_run(path: Path) -> dict[str, Any] | None:
    """Machine, total minutes and sections (text, seconds) of a RESULTS.md written by :func:`run`.

    Lets ``--reuse`` re-render a file whose run saved no ``run.json`` (or keep the text of a
    section whose raw result was not saved, such as the sweep's).
    """
    if not path.exists():
        return None
    text = path.read_text()
    total = re.search(r"in ([0-9.]+) minutes", text)
    machine_part = text.split("## Machine", 1)[-1].split("\n## ", 1)[0]
    machine = dict(re.findall(r"^- \*\*(.+?)\*\*: (.*)$", machine_part, re.M))
    sections: dict[str, tuple[str, float | None]] = {}
    # split on this file's own headings only (a section's text may hold "## " headings of its own)
    for chunk in re.split(r"^## (?=\d+\. |Machine$|Targets at a glance$)", text, flags=re.M)[1:]:
        title, _, body = chunk.partition("\n")
        timing = re.match(r"\s*_Section wall time(?: \(([0-9.]+) min\))?[^\n]*_\n", body)
        if timing:
            body = body[timing.end() :]
            minutes = timing.group(1)
            sections[title.strip()] = (body.strip("\n"), float(minutes) * 60 if minutes else None)
    if not machine or total is None:
        return None
    return {"machine": machine, "total": float(total.group(1)) * 60, "sections": sections}


def run(plan: Plan, only: set[str] | None = None) -> str:
    started = time.perf_counter()
    saved_run = _load(plan, "run")
    previous = previous_run(plan.output) if plan.reuse else None
    if saved_run is None and previous is not None:
        saved_run = {
            "machine": previous["machine"],
            "total": previous["total"],
            "seconds": {t: sec for t, (_, sec) in previous["sections"].items()},
        }
        plan.reused.add("run")
    machine = saved_run["machine"] if saved_run else machine_description()
    plan.output.parent.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, str, float | None]] = []

    def add(key: str, title: str, build: Callable[[], Any]) -> Any:
        if only and key not in only:
            return None
        reused_before = set(plan.reused)
        kept = previous["sections"].get(title) if previous else None
        if kept and key in KEEP_WHEN_REUSING and not _saved_exists(plan, KEEP_WHEN_REUSING[key]):
            plan.reused.add(f"{key} (text)")
            sections.append((title, _demote_headings(kept[0]), kept[1]))
            return None
        value, seconds = _guarded(plan, title, build)
        if plan.reused - reused_before and saved_run and title in saved_run["seconds"]:
            seconds = saved_run["seconds"][title]  # the measuring run's time, not the re-render's
        extra = None
        if isinstance(value, tuple):
            value, extra = value
        sections.append((title, value, seconds))
        return extra

    add(
        "step",
        "1. Optimizer step overhead (CPU, ResNet-18 parameters)",
        lambda: section_step_overhead(plan),
    )
    add(
        "throughput",
        "2. End-to-end throughput (Lightning fit, CPU)",
        lambda: section_throughput(plan),
    )
    parity_result = add("parity", "3. Accuracy parity on real data", lambda: section_parity(plan))
    add("parity", "4. Stationarity panel", lambda: section_stationarity(plan, parity_result))
    add("sweep", "5. Scaling sweep", lambda: section_sweep(plan))
    add("cifar", "6. CIFAR-10 / ResNet-18 (the paper's experiment)", lambda: section_cifar(plan))
    add("gpu", "7. GPU check (H200)", lambda: section_gpu(plan))

    total = time.perf_counter() - started
    if saved_run:
        total = saved_run["total"]
    else:
        _save(
            plan,
            "run",
            {"machine": machine, "total": total, "seconds": {t: s for t, _, s in sections}},
        )
    mode = " --quick" if plan.quick else ""
    command = "make bench-quick" if plan.quick else "make bench"
    rerendered = (
        f" This file was re-rendered (`--reuse`) from that run's saved raw results "
        f"({', '.join(sorted(plan.reused - {'run'}))})."
        if plan.reused - {"run"}
        else ""
    )
    header = [
        "# Benchmark results" + (" (quick smoke run)" if plan.quick else ""),
        "",
        f"Measured by `{command}` (`python -m benchmarks.run_all{mode}`) in "
        f"{total / 60:.1f} minutes; every number and figure below comes from the scripts in "
        "`benchmarks/` (each table names its command). Rerun the whole file with "
        f"`{command}`.{rerendered}",
        "",
        "## Machine",
        "",
        machine_markdown(machine),
        "",
        "## Targets at a glance",
        "",
    ]
    from .report import markdown_table

    header.append(
        markdown_table(["section", "target", "measured", "verdict"], plan.targets)
        if plan.targets
        else "No target was measured in this run."
    )
    if plan.failures:
        header += ["", f"**Sections that failed in this run:** {', '.join(plan.failures)}."]
    body = []
    for title, text, seconds in sections:
        timing = f" ({seconds / 60:.1f} min)" if seconds is not None else ""
        body += ["", f"## {title}", "", f"_Section wall time{timing or ': failed'}._", "", text]
    content = "\n".join(header + body).rstrip() + "\n"
    plan.output.write_text(content)
    print(f"\nwrote {plan.output} in {total / 60:.1f} min", flush=True)
    if plan.output.resolve() == RESULTS_PATH.resolve() and not only:
        write_readme_summary(plan, machine)
    return content


def write_readme_summary(plan: Plan, machine: dict[str, str]) -> None:
    """Fill the README's generated summary paragraph (between its markers) from this run."""
    gpu = read_block(gpu_check.BLOCK, plan.output) or ""
    cifar_rows = cifar10_resnet18.read_rows(plan.output)
    sentences = [plan.facts[k] for k in ("step", "throughput", "parity") if k in plan.facts]
    last = (
        f"{len(cifar_rows)} CIFAR-10 / ResNet-18 run(s) are recorded"
        if cifar_rows
        else "The CIFAR-10 / ResNet-18 script is ready but was only checked on a tiny fixture "
        "here (no data, no GPU)"
    )
    merged = gpu and "Not run yet" not in gpu
    if "gpu" in plan.facts:
        last += ". " + plan.facts["gpu"]
    else:
        last += (
            "; the GPU check is merged (section 7)."
            if merged
            else "; the GPU check script is ready and has not run yet."
        )
    summary = (
        f"Measured {machine['date (UTC)']} UTC on {machine['CPU']}: "
        + " ".join([*sentences, last])
        + " Missed targets are listed, with their reasons, in RESULTS.md."
    )
    if README_PATH.exists() and read_block("bench-summary", README_PATH) is not None:
        from .report import write_block

        write_block("bench-summary", summary, README_PATH)
        print("updated the summary in README.md", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke version")
    parser.add_argument("--output", type=Path, help="the markdown file to write")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="re-render from the last run's raw results (benchmarks/_work/results) where they "
        "exist, running only what is missing",
    )
    parser.add_argument(
        "--only",
        help="comma-separated sections: step, throughput, parity, sweep, cifar, gpu "
        "(stationarity comes with parity)",
    )
    args = parser.parse_args(argv)
    plan = make_plan(args.quick, args.output)
    plan.reuse = args.reuse
    only = set(args.only.split(",")) if args.only else None
    print(
        f"benchmarks.run_all: {'quick' if plan.quick else 'full'} mode -> {plan.output} "
        f"(started {_dt.datetime.now().strftime('%H:%M:%S')}; plan {asdict(plan)})",
        flush=True,
    )
    run(plan, only)
    if plan.failures:
        raise SystemExit(f"benchmark sections failed: {', '.join(plan.failures)}")


if __name__ == "__main__":
    main()

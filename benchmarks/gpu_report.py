"""The GPU section of RESULTS.md, from ``benchmarks/results/gpu_check.json``.

``python -m benchmarks.gpu_check merge DIR`` gathers the ``part_<name>.json`` files that
``benchmarks/gpu_check.sh`` left in DIR into that one file::

    {"command": ..., "machine": ...,            # as every results file
     "parts": {"env": {...}, "sync": {...}, "step": {...}, "train_plain": {...},
               "train_lightning": {...}}}      # whichever parts finished

``sync`` holds ``{"tests": "passed" | "failed" | "skipped", "failed": [test ids], "output": ...}`` (the CUDA host-sync tests of
``tests/optim`` run on the GPU), ``step`` the raw result of :func:`benchmarks.step_overhead.run`,
``train_plain`` samples/s and paired ratios per arm, ``train_lightning`` the raw result of
:func:`benchmarks.throughput.run`.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from .report import machine_description, markdown_table
from .results import RESULTS_DIR, write_result

PARTS = ("env", "sync", "step", "train_plain", "train_lightning")


def merge(out: Path, results_dir: Path = RESULTS_DIR) -> Path:
    """Gather the finished parts in ``out`` into ``results_dir/gpu_check.json``."""
    parts = {
        name: json.loads((out / f"part_{name}.json").read_text())
        for name in PARTS
        if (out / f"part_{name}.json").is_file()
    }
    env = parts.get("env", {})
    result = {
        "command": "bash benchmarks/gpu_check.sh; python -m benchmarks.gpu_check merge OUT",
        "machine": env.get("machine") or machine_description(),
        "parts": parts,
    }
    return write_result("gpu_check", result, results_dir)


def _missing(name: str) -> str:
    return f"Part `{name}` did not finish (see gpu_check.log)."


def to_markdown(result: dict[str, Any]) -> str:
    """The GPU section from whichever parts finished (a missing part says so)."""
    from . import step_overhead, throughput_report

    parts = result["parts"]
    lines = [
        "Each part of `bash benchmarks/gpu_check.sh` is a separate, time-limited process, so a "
        "failed part loses only its own numbers.",
        "",
    ]
    env = parts.get("env")
    if env:
        gpu = env.get("gpu", {})
        lines += [
            f"- **GPU**: {gpu.get('name', '?')}, {gpu.get('memory_gib', '?')} GiB, compute "
            f"capability {gpu.get('capability', '?')}; nvidia-smi: {env.get('nvidia_smi', '?')}",
            f"- **lightning** {env.get('lightning')}",
            "",
        ]
    lines += ["### Host syncs in the O2NC step (CUDA)", ""]
    sync = parts.get("sync")
    lines += [
        f"`pytest tests/optim/test_cuda_no_host_sync.py` on the GPU: **{sync['tests']}**."
        if sync
        else _missing("sync"),
        "",
        "### Step time on CUDA",
        "",
        step_overhead.to_markdown(parts["step"]) if "step" in parts else _missing("step"),
        "",
        "### ResNet-18 training throughput on Fashion-MNIST (data on the GPU, plain loop)",
        "",
    ]
    plain = parts.get("train_plain")
    if plain:
        rows = [
            (name, f"{statistics.median(v):.0f}", f"{min(v):.0f} – {max(v):.0f}")
            for name, v in plain["samples_per_second"].items()
        ]
        ratio_rows = [
            (name, f"{statistics.median(v):.3f}", f"{min(v):.3f} – {max(v):.3f}")
            for name, v in plain["ratios"].items()
        ]
        lines += [
            f"CIFAR ResNet-18 (1 input channel) on 28×28 Fashion-MNIST, batch {plain['batch_size']}, "
            f"fp32, the 60k training images resident on the GPU; {plain['rounds']} interleaved "
            f"rounds of {plain['steps']} steps per arm (after warm-up).",
            "",
            markdown_table(["arm", "median samples/s", "range"], rows),
            "",
            markdown_table(["ratio (paired per round)", "median", "range"], ratio_rows),
            "",
        ]
    else:
        lines += [_missing("train_plain"), ""]
    lines += ["### Lightning fit throughput on the GPU (ResNet-18, Fashion-MNIST)", ""]
    fit = parts.get("train_lightning")
    lines += [throughput_report.to_markdown(fit) if fit else _missing("train_lightning")]
    return "\n".join(lines)


def targets(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Zero host syncs, the step-time bounds and O2NC / SGDM ≥ 0.99 in training, on the GPU."""
    from .render import step_overhead_targets

    parts = result["parts"]
    rows: list[tuple[str, str, str]] = []
    if "sync" in parts:
        sync = parts["sync"]
        ok = sync["tests"] == "passed"
        failed = sync.get("failed") or []
        measured = "all ok" if ok else "syncs: " + ", ".join(failed) if failed else sync["tests"]
        rows.append(
            (
                "zero host syncs per step, every option (GPU)",
                measured,
                "met" if ok else "**missed**",
            )
        )
    if "step" in parts:
        rows += [
            (f"{target} (GPU)", *rest) for target, *rest in step_overhead_targets(parts["step"])
        ]
    for name, label in (
        ("train_plain", "training, data on the GPU"),
        ("train_lightning", "Lightning fit"),
    ):
        ratios = parts.get(name, {}).get("ratios", {}).get("O2NC / SGDM (factory)")
        if ratios:
            median = statistics.median(ratios)
            rows.append(
                (
                    f"ResNet-18 {label}: O2NC / SGDM (factory) ≥ 0.99",
                    f"{median:.3f} (range {min(ratios):.3f}–{max(ratios):.3f})",
                    "met" if median >= 0.99 else "**missed**",
                )
            )
    return rows

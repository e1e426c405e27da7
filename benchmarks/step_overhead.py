"""Optimizer step overhead: ExponentiatedO2NC against torch SGD(momentum), and RandomScaling
around AdamW against torch AdamW, on three model sizes.

Models (parameters with fixed random gradients; each arm keeps its own optimizer state):

- ``mlp``: an MLP 64-128-10 (4 tensors), where the cost is Python overhead per call and tensor;
- ``transformer``: ``nn.TransformerEncoder``, 6 layers of width 128 (72 tensors);
- ``resnet18``: torchvision's ResNet-18 (62 tensors, 11.7 M floats), where memory passes dominate.

Arms: torch SGD(momentum) with ``foreach=True`` and ``foreach=False`` (and ``fused=True`` on
CUDA); ExponentiatedO2NC with its defaults (multi-tensor kernels on CUDA and for CPU groups of up
to 2^18 elements, the per-tensor loop for larger CPU groups) and with each path forced; with
``average=True``; and with ``average=True`` plus ``statistics()`` after every step (as a monitor
that logs every step). torch AdamW with ``foreach=True``, and ``RandomScaling`` around it without
and with x_bar (``average=True``).

Timing: one process, every round visits every (model, arm) pair in a fresh random order and times a
block of steps, so drift of a shared machine hits all arms alike. Ratios are against the faster
SGD path of the same model (the ``RandomScaling`` arms: against ``AdamW foreach=True``), as the median over rounds of each round's paired ratio, with its
interquartile range (the noise). Raw results go to ``benchmarks/results/step_overhead.json``;
``RESULTS.md`` is rendered from that file.

Run: ``python -m benchmarks.step_overhead [--device cpu|cuda] [--rounds N] [--threads T]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_o2nc import ExponentiatedO2NC, RandomScaling

from .report import markdown_table

LR, BETA = 1e-3, 0.9  # small steps: thousands of them leave the weights in a normal range
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "step_overhead.json"
BLOCK_SECONDS = 2e-3  # each timed block runs about this long, so the clock's resolution is moot

ADAMW = "AdamW foreach=True"  # the baseline of the RandomScaling arms

#: The issue's targets, as data: (arm, the most it may cost as a multiple of its baseline: the
#: faster SGD path, or AdamW for the arms that wrap it).
TARGETS = (
    ("O2NC defaults", 1.00),
    ("O2NC average=True", 1.5),
    ("O2NC average=True + statistics()", 1.6),
    ("RandomScaling(AdamW)", 1.35),
    ("RandomScaling(AdamW) average=True", 1.5),
)


def mlp_module() -> nn.Module:
    """MLP 64-128-10."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def transformer_module() -> nn.Module:
    """TransformerEncoder, 6 layers of d_model 128, 4 heads, feed-forward 512."""
    layer = nn.TransformerEncoderLayer(128, 4, dim_feedforward=512, batch_first=True)
    return nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)


def resnet18_module() -> nn.Module:
    """torchvision's ResNet-18 (ImageNet head)."""
    from torchvision.models import resnet18

    return resnet18()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": mlp_module,
    "transformer": transformer_module,
    "resnet18": resnet18_module,
}


def model_parameters(name: str, device: str | torch.device = "cpu", seed: int = 0) -> list[Tensor]:
    """The named model's parameters on ``device``, each with a fixed random gradient."""
    torch.manual_seed(seed)
    params = [p.detach().to(device).requires_grad_() for p in MODELS[name]().parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def resnet18_parameters(device: str | torch.device = "cpu", seed: int = 0) -> list[Tensor]:
    """ResNet-18's parameters with fixed random gradients."""
    return model_parameters("resnet18", device, seed)


@dataclass
class Arm:
    """One way of stepping: how to build its optimizer and what runs after each step."""

    name: str
    build: Callable[[list[Tensor]], torch.optim.Optimizer]
    sgd: bool = False
    baseline: str | None = None  # the arm its ratio is taken against; None: the faster SGD path
    after_step: Callable[[torch.optim.Optimizer], Any] | None = None
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)

    def step(self) -> None:
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step(self.optimizer)


def build_arms(device: torch.device) -> list[Arm]:
    """The arms compared on ``device`` (``fused`` SGD only where torch has the kernel)."""

    def sgd(**kwargs: Any) -> Callable[[list[Tensor]], torch.optim.Optimizer]:
        return lambda params: torch.optim.SGD(params, lr=LR, momentum=BETA, **kwargs)

    def o2nc(**kwargs: Any) -> Callable[[list[Tensor]], torch.optim.Optimizer]:
        return lambda params: ExponentiatedO2NC(params, lr=LR, beta=BETA, seed=0, **kwargs)

    def adamw(params: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=LR, foreach=True)

    arms = [
        Arm("SGD foreach=True", sgd(foreach=True), sgd=True),
        Arm("SGD foreach=False", sgd(foreach=False), sgd=True),
    ]
    if device.type == "cuda":
        arms.append(Arm("SGD fused=True", sgd(fused=True), sgd=True))
    arms += [
        Arm("O2NC defaults", o2nc()),
        Arm("O2NC foreach=True", o2nc(foreach=True)),
        Arm("O2NC foreach=False", o2nc(foreach=False)),
        Arm("O2NC average=True", o2nc(average=True)),
        Arm(
            "O2NC average=True + statistics()",
            o2nc(average=True),
            after_step=lambda opt: opt.statistics(),
        ),
        Arm(ADAMW, adamw),
        Arm("RandomScaling(AdamW)", lambda p: RandomScaling(adamw(p), seed=0), baseline=ADAMW),
        Arm(
            "RandomScaling(AdamW) average=True",
            lambda p: RandomScaling(adamw(p), seed=0, average=True),
            baseline=ADAMW,
        ),
    ]
    return arms


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_block(run: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds per call of ``run``, over a block of ``steps`` calls."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    _synchronize(device)
    return (time.perf_counter() - start) / steps


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's per-parameter state."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, Tensor)
    )


def buffers_per_parameter(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> list[int]:
    """The distinct numbers of parameter-shaped state tensors per parameter (ideally one value)."""
    return sorted(
        {
            sum(
                1
                for value in optimizer.state[p].values()
                if isinstance(value, Tensor) and value.shape == p.shape
            )
            for p in params
        }
    )


@dataclass
class Bench:
    """One model's parameters and its arms, each with its own optimizer."""

    model: str
    params: list[Tensor]
    arms: list[Arm]
    steps_per_block: int = 1
    samples: dict[str, list[float]] = field(default_factory=dict)


def _prepare(
    model: str, device: torch.device, seed: int, warmup_steps: int, steps_per_block: int | None
) -> Bench:
    params = model_parameters(model, device, seed)
    bench = Bench(model, params, build_arms(device))
    for arm in bench.arms:
        arm.optimizer = arm.build(params)
        for _ in range(warmup_steps):
            arm.step()
        bench.samples[arm.name] = []
    if steps_per_block is None:  # calibrate on the slowest arm: blocks of about BLOCK_SECONDS
        single = max(_time_block(arm.step, 1, device) for arm in bench.arms)
        steps_per_block = max(1, min(200, round(BLOCK_SECONDS / single)))
    bench.steps_per_block = steps_per_block
    return bench


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def _summarize(bench: Bench) -> dict[str, Any]:
    samples = bench.samples
    sgd_arms = [a for a in bench.arms if a.sgd]
    fastest = min(sgd_arms, key=lambda a: statistics.median(samples[a.name]))
    reference = next(a for a in sgd_arms if a.name == "SGD foreach=False")
    rows = []
    for arm in bench.arms:
        values = samples[arm.name]
        baseline = arm.baseline or fastest.name
        paired = [t / r for t, r in zip(values, samples[baseline], strict=True)]
        rows.append(
            {
                "arm": arm.name,
                "baseline": baseline,
                "median_us": statistics.median(values) * 1e6,
                "iqr_us": [q * 1e6 for q in _quartiles(values)],
                "min_us": min(values) * 1e6,
                "ratio": statistics.median(paired),
                "ratio_iqr": list(_quartiles(paired)),
                "ratio_of_minima": min(values) / min(samples[baseline]),
                "state_bytes": state_bytes(arm.optimizer),
                "state_ratio": state_bytes(arm.optimizer) / state_bytes(reference.optimizer),
                "buffers_per_param": buffers_per_parameter(arm.optimizer, bench.params),
            }
        )
    return {
        "num_params": sum(p.numel() for p in bench.params),
        "num_tensors": len(bench.params),
        "steps_per_block": bench.steps_per_block,
        "fastest_sgd": fastest.name,
        "rows": rows,
    }


def run(
    device: str | torch.device = "cpu",
    rounds: int = 40,
    steps_per_block: int | None = None,
    warmup_steps: int = 3,
    seed: int = 0,
    models: tuple[str, ...] = tuple(MODELS),
) -> dict[str, Any]:
    """Time every (model, arm) pair interleaved; return medians, paired ratios and state sizes."""
    device = torch.device(device)
    load_before = os.getloadavg()
    benches = [_prepare(m, device, seed, warmup_steps, steps_per_block) for m in models]
    runners = [(bench, arm) for bench in benches for arm in bench.arms]
    order = random.Random(seed)
    started = time.perf_counter()
    for _ in range(rounds):
        order.shuffle(runners)
        for bench, arm in runners:
            bench.samples[arm.name].append(_time_block(arm.step, bench.steps_per_block, device))
    return {
        "benchmark": "step_overhead",
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python -m benchmarks.step_overhead", *sys.argv[1:]]),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "rounds": rounds,
        "seconds": time.perf_counter() - started,
        "load_average": [load_before[0], os.getloadavg()[0]],
        "targets": [{"arm": arm, "at_most": bound} for arm, bound in TARGETS],
        "models": {bench.model: _summarize(bench) for bench in benches},
    }


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of :data:`TARGETS` on each model, with the measured ratio and whether it is met."""
    checks = []
    for model, summary in result["models"].items():
        for target in result["targets"]:
            row = next((r for r in summary["rows"] if r["arm"] == target["arm"]), None)
            if row is None:  # a result from before the arm existed
                continue
            checks.append(
                {
                    "model": model,
                    "arm": row["arm"],
                    "baseline": row.get("baseline", summary["fastest_sgd"]),
                    "at_most": target["at_most"],
                    "ratio": row["ratio"],
                    "met": row["ratio"] <= target["at_most"],
                }
            )
    return checks


def to_markdown(result: dict[str, Any]) -> str:
    """One table: each arm's paired ratio (and its IQR) per model, then the median times."""
    models = list(result["models"])
    arms = [row["arm"] for row in result["models"][models[0]]["rows"]]

    def cell(model: str, arm: str) -> str:
        row = next(r for r in result["models"][model]["rows"] if r["arm"] == arm)
        low, high = row["ratio_iqr"]
        return f"{row['ratio']:.3f}× ({low:.2f}–{high:.2f}), {row['median_us']:.1f} µs"

    header = [
        f"{m} ({s['num_tensors']} tensors, {s['num_params'] / 1e6:.2f} M)"
        for m, s in result["models"].items()
    ]
    lines = [
        f"{result['device_name']}, torch {result['torch']}, {result['torch_threads']} thread(s), "
        f"{result['rounds']} interleaved rounds; 1-min load {result['load_average'][0]:.1f} → "
        f"{result['load_average'][1]:.1f} on {result['cpu_count']} CPUs. Cells: median paired "
        f"ratio to the faster SGD path (to {ADAMW} for the RandomScaling arms; IQR over rounds), "
        "median time per step.",
        "",
        markdown_table(["arm", *header], [(arm, *(cell(m, arm) for m in models)) for arm in arms]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--steps-per-block", type=int, default=None, help="default: calibrated")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--json", default=str(RESULTS_PATH), help="where the raw result goes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.device, args.rounds, args.steps_per_block, models=tuple(args.models))
    print(to_markdown(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nraw result: {args.json}")


if __name__ == "__main__":
    main()

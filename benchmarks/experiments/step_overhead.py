"""Optimizer step overhead of ExponentiatedO2NC against torch SGD(momentum), RandomScaling(AdamW)
against AdamW, each arm with its own state, on fixed random gradients: ``mlp`` (4 tensors: per-call
overhead dominates), ``transformer`` (6 layers, width 128, 72 tensors), ``resnet18`` (11.7 M floats:
memory passes dominate). Ratios are paired per round with the faster SGD path (or AdamW foreach)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import TransformerEncoder, TransformerEncoderLayer
from torch.utils.benchmark import Measurement
from torchvision.models import resnet18

from lightning_o2nc import ExponentiatedO2NC, RandomScaling

from ..harness import Experiment, Result
from ..stats import markdown_table
from ..timing import print_comparison, summarize, time_arms

LR, BETA = 1e-3, 0.9  # small steps: many thousands leave the weights in a normal range
ADAMW = "AdamW foreach=True"  # the baseline of the RandomScaling arms
TARGETS = {  # arm -> the most it may cost as a multiple of its baseline
    "O2NC defaults": 1.00,
    "O2NC average=True": 1.5,
    "O2NC average=True + statistics()": 1.6,
    "RandomScaling(AdamW)": 1.35,
    "RandomScaling(AdamW) average=True": 1.5,
}
MODELS = {
    "mlp": lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)),
    "transformer": lambda: TransformerEncoder(TransformerEncoderLayer(128, 4, 512), 6, None, False),
    "resnet18": resnet18,
}


def model_parameters(model: str, device: str = "cpu") -> list[Tensor]:
    """The model's parameters on ``device``, each with a fixed random gradient (seed 0)."""
    torch.manual_seed(0)
    params = [p.detach().to(device).requires_grad_() for p in MODELS[model]().parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def optimizers(params: list[Tensor], device: str) -> dict[str, torch.optim.Optimizer]:
    """Every arm's optimizer on ``params`` (``SGD fused=True`` only on CUDA)."""
    sgd = {f"SGD foreach={f}": {"foreach": f} for f in (True, False)}
    sgd |= {"SGD fused=True": {"fused": True}} if torch.device(device).type == "cuda" else {}
    found = {n: torch.optim.SGD(params, lr=LR, momentum=BETA, **k) for n, k in sgd.items()}
    o2nc = {"defaults": {}, "foreach=True": {"foreach": True}, "foreach=False": {"foreach": False}}
    o2nc |= {"average=True": {"average": True}, "average=True + statistics()": {"average": True}}
    for name, kwargs in o2nc.items():
        found[f"O2NC {name}"] = ExponentiatedO2NC(params, lr=LR, beta=BETA, seed=0, **kwargs)
    found[ADAMW] = torch.optim.AdamW(params, lr=LR, foreach=True)
    for name, average in (("", False), (" average=True", True)):
        adamw = torch.optim.AdamW(params, lr=LR, foreach=True)
        found[f"RandomScaling(AdamW){name}"] = RandomScaling(adamw, seed=0, average=average)
    return found


def state_size(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> dict[str, Any]:
    """State bytes over parameter bytes (SGD: 1), and the counts of parameter-shaped buffers."""
    states = [optimizer.state[p].values() for p in params]
    size = sum(v.numel() * v.element_size() for s in states for v in s if isinstance(v, Tensor))
    counts = {sum(getattr(v, "shape", 0) == p.shape for v in s) for p, s in zip(params, states)}
    size /= sum(p.numel() * p.element_size() for p in params)
    return {"state_ratio": size, "buffers_per_param": sorted(counts)}


def run(settings: dict[str, Any], work: Any) -> Result:
    device, load, arms, models, calls = settings["device"], [os.getloadavg()[0]], {}, {}, {}
    for model in settings["models"]:
        params = model_parameters(model, device)
        arms[model] = (params, optimizers(params, device))
        for name, o in arms[model][1].items():
            step = (lambda o=o: (o.step(), o.statistics())) if "statistics" in name else o.step
            calls[f"{model}: {name}"] = step
            step()  # the state exists before timing
    measured = time_arms(calls, settings["rounds"], settings["block_seconds"], settings["threads"])
    print_comparison(measured)
    for model, (params, found) in arms.items():
        mine = {name: measured[f"{model}: {name}"] for name in found}
        sgd = {n: Measurement.merge(mine[n])[0].median for n in found if n.startswith("SGD")}
        base = {n: ADAMW if n.startswith("RandomScaling") else min(sgd, key=sgd.get) for n in found}
        rows = summarize(mine, base)
        for n, row in rows.items():
            row |= {"arm": n, "baseline": base[n]} | state_size(found[n], params)
        size, rows = sum(p.numel() for p in params), list(rows.values())
        models[model] = {"num_params": size, "num_tensors": len(params), "rows": rows}
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    result = {"load_average": [*load, os.getloadavg()[0]], "device_name": name}
    return result | {"cpu_count": os.cpu_count(), "models": models}


def targets(result: Result) -> list[tuple[str, str, str]]:
    found = []
    for model, summary in result["models"].items():
        for row in (row for row in summary["rows"] if row["arm"] in TARGETS):
            arm, ratio, base = row["arm"], row["ratio"], row["baseline"]
            base = "the faster SGD path" if base.startswith("SGD") else base
            verdict = "met" if ratio <= TARGETS[arm] else "**missed**"
            found.append((f"{arm} ≤ {TARGETS[arm]}× {base} ({model})", f"{ratio:.3f}×", verdict))
    return found


def render(result: Result) -> str:
    header, cells = [], {}
    for model, s in result["models"].items():
        header.append(f"{model} ({s['num_tensors']} tensors, {s['num_params'] / 1e6:.2f} M)")
        for row in s["rows"]:
            ratio = f"{row['ratio']:.3f}× ({row['ratio_q1']:.2f}–{row['ratio_q3']:.2f})"
            cells.setdefault(row["arm"], []).append(f"{ratio}, {row['median_us']:.1f} µs")
    settings, (before, after) = result["settings"], result["load_average"]
    return (
        f"{result['device_name']}, {settings['threads']} thread(s), {settings['rounds']} rounds of "
        f"{settings['block_seconds'] * 1e3:.0f} ms blocks per arm, arms alternating; 1-min load "
        f"{before:.1f} → {after:.1f} on {result['cpu_count']} CPUs. Cells: median paired ratio to "
        f"the faster SGD path (to {ADAMW} for the RandomScaling arms; IQR over rounds), median "
        "time per step.\n\n"
        + markdown_table(["arm", *header], [(arm, *row) for arm, row in cells.items()])
    )


EXPERIMENTS = (
    Experiment(
        name="step_overhead",
        title="Optimizer step overhead",
        workload="one optimizer step on fixed random gradients: mlp, transformer, resnet18",
        arms=("SGD foreach/fused", "O2NC defaults/foreach/average", ADAMW, "RandomScaling(AdamW)"),
        measurement="torch.utils.benchmark blocks, arms alternating; median paired ratio, IQR",
        run=run,
        render=render,
        settings=dict(device="cpu", rounds=12, threads=1, models=list(MODELS), block_seconds=0.02),
        quick={"models": ["mlp"], "rounds": 3},
        targets=targets,
    ),
)

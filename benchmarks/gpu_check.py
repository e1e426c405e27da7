"""The parts of ``benchmarks/gpu_check.sh``, one per invocation, each writing ``part_<name>.json``.

    python -m benchmarks.gpu_check env             --out DIR   # what the machine is
    python -m benchmarks.gpu_check sync            --out DIR   # no host sync in any O2NC option
    python -m benchmarks.gpu_check sharded         --out DIR   # fully_shard (mesh of 1), FSDP1 fit
    python -m benchmarks.gpu_check step            --out DIR   # CUDA step time vs SGD foreach/fused
    python -m benchmarks.gpu_check train_plain     --out DIR   # ResNet-18 on Fashion-MNIST, data on GPU
    python -m benchmarks.gpu_check train_lightning --out DIR   # the same through a Lightning fit
    python -m benchmarks.gpu_check merge DIR       # DIR's parts -> benchmarks/results/gpu_check.json

``prepare`` copies the Fashion-MNIST ``.gz`` files into ``benchmarks/_work/fashion-mnist-gz``
(gitignored, about 30 MB), to take along to a GPU machine without the Debian package.
:mod:`benchmarks.gpu_report` renders the merged file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .gpu_report import merge
from .report import WORK_DIR
from .results import RESULTS_DIR

CARRY_DIR = WORK_DIR / "fashion-mnist-gz"
# O2NC_GPU_CHECK_DRY_RUN=1: every part on the CPU with tiny sizes, to check the script end to end
# without a GPU (CUDA-only checks are marked as skipped).
DRY_RUN = os.environ.get("O2NC_GPU_CHECK_DRY_RUN", "") not in ("", "0")


# ----------------------------------------------------------------------------- parts
def part_env() -> dict[str, Any]:
    import torch

    from .report import machine_description

    info: dict[str, Any] = {"machine": machine_description(), "python": sys.executable}
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
        }
    try:
        info["nvidia_smi"] = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        info["nvidia_smi"] = f"unavailable: {error}"
    import lightning

    from lightning_o2nc import O2NCModule  # noqa: F401  (the Lightning layer imports here)

    from .workloads import fashion_mnist_available

    info["lightning"] = lightning.__version__
    info["fashion_mnist"] = fashion_mnist_available()
    info["dry_run"] = DRY_RUN
    if not torch.cuda.is_available() and not DRY_RUN:
        raise RuntimeError("CUDA is not available: the GPU check cannot run")
    return info


def part_sync() -> dict[str, Any]:
    """On the GPU: the host-sync tests of tests/optim (every option under CUDA's sync debug mode),
    and O2NC-AdamW fits under Lightning's 32-true, bf16-mixed and 16-mixed precisions."""
    tests_dir = Path(__file__).resolve().parent.parent / "tests"
    tests = [
        str(tests_dir / "optim" / "test_cuda_no_host_sync.py"),
        str(tests_dir / "lightning" / "test_wrapper_precision.py"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        capture_output=True,
        text=True,
    )
    output = (done.stdout + done.stderr)[-4000:]
    skipped = "skipped" in output and "passed" not in output
    status = "skipped" if skipped else "passed" if done.returncode == 0 else "failed"
    failed = [line.split()[1] for line in output.splitlines() if line.startswith("FAILED ")]
    return {"tests": status, "failed": failed, "output": output}


def part_step() -> dict[str, Any]:
    from .step_overhead import run

    if DRY_RUN:
        return run("cpu", rounds=2, steps_per_block=1, warmup_steps=1)
    return run("cuda", rounds=60, steps_per_block=20, warmup_steps=5)


def _fashion_on_gpu(device: Any) -> tuple[Any, Any]:
    """Fashion-MNIST's 60k training images, normalized, as one GPU tensor (and the labels)."""
    from torchvision.datasets import FashionMNIST

    from .workloads import make_datamodule

    datamodule = make_datamodule("fashion_mnist", batch_size=128)
    datamodule.prepare_data()  # decompresses the idx files where torchvision reads them
    train = FashionMNIST(str(datamodule.root), train=True)
    images = train.data.to(device).float().div_(255).sub_(datamodule.mean).div_(datamodule.std)
    return images.unsqueeze(1).contiguous(), train.targets.to(device)


def part_train_plain(
    batch_size: int = 128, steps: int = 40, rounds: int = 6, warmup: int = 10
) -> dict[str, Any]:
    """ResNet-18 (CIFAR variant, 1 channel) training steps on GPU-resident Fashion-MNIST.

    Arms: O2NC, the factory's SGDM, torch SGD foreach and fused, O2NC with average and statistics
    every step; each with its own model from the same initialization, interleaved in rounds.
    Also checks that one whole training step (forward, backward, O2NC step) runs under
    ``set_sync_debug_mode("error")``.
    """
    import torch
    import torch.nn.functional as F

    from lightning_o2nc import build_optimizer, param_groups_weight_decay
    from lightning_o2nc.lightning.backbones import resnet18_cifar

    device = torch.device("cpu" if DRY_RUN else "cuda")
    if DRY_RUN:
        batch_size, steps, rounds, warmup = 4, 1, 1, 1
    images, labels = _fashion_on_gpu(device)
    eta, beta, wd = 0.05, 0.9, 5e-4
    zeta = beta
    torch.manual_seed(0)
    initial = resnet18_cifar(num_classes=10, in_channels=1).to(device)

    def fresh() -> torch.nn.Module:
        model = resnet18_cifar(num_classes=10, in_channels=1).to(device)
        model.load_state_dict(initial.state_dict())
        return model

    def torch_sgd(model: torch.nn.Module, **kwargs: Any) -> torch.optim.Optimizer:
        groups = param_groups_weight_decay(model, wd)
        return torch.optim.SGD(groups, lr=zeta * eta, momentum=zeta, **kwargs)

    builders = {
        "O2NC": lambda m: build_optimizer(m, "o2nc", lr=eta, beta=beta, weight_decay=wd, seed=0),
        "SGDM (factory)": lambda m: build_optimizer(m, "sgdm", lr=eta, beta=beta, weight_decay=wd),
        "torch SGD foreach": lambda m: torch_sgd(m, foreach=True),
        "torch SGD fused": lambda m: torch_sgd(m, fused=not DRY_RUN),
        "O2NC + average + statistics/step": lambda m: build_optimizer(
            m, "o2nc", lr=eta, beta=beta, weight_decay=wd, seed=0, average=True
        ),
    }
    arms = {}
    for name, build in builders.items():
        model = fresh()
        arms[name] = (model, build(model), "statistics" in name)

    generator = torch.Generator(device=device).manual_seed(0)

    def train_steps(name: str, n: int) -> None:
        model, optimizer, with_statistics = arms[name]
        for _ in range(n):
            index = torch.randint(0, len(labels), (batch_size,), device=device, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images[index]), labels[index])
            loss.backward()
            optimizer.step()
            if with_statistics:
                optimizer.statistics()

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for name in arms:
        train_steps(name, warmup)
    synchronize()
    sync_result = "skipped: needs CUDA"
    if device.type == "cuda":
        sync_result = "ok"
        try:
            torch.cuda.set_sync_debug_mode("error")
            train_steps("O2NC", 2)
            train_steps("O2NC + average + statistics/step", 2)
        except Exception as error:
            sync_result = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
        synchronize()

    samples: dict[str, list[float]] = {name: [] for name in arms}
    order = list(arms)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            synchronize()
            start = time.perf_counter()
            train_steps(name, steps)
            synchronize()
            samples[name].append(steps * batch_size / (time.perf_counter() - start))
    reference = "SGDM (factory)"
    ratios = {
        f"{name} / {base}": [a / b for a, b in zip(samples[name], samples[base], strict=True)]
        for name in arms
        for base in (reference, "torch SGD fused")
        if name != base
    }
    return {
        "batch_size": batch_size,
        "steps": steps,
        "rounds": rounds,
        "samples_per_second": samples,
        "ratios": ratios,
        "whole_step_sync_check": sync_result,
    }


def part_train_lightning() -> dict[str, Any]:
    from .throughput import ThroughputConfig, run

    config = ThroughputConfig(
        dataset="fashion_mnist",
        backbone="resnet18_cifar",
        batch_size=128,
        warmup_batches=10,
        batches=100,
        repeats=3,
        accelerator="gpu",
        num_workers=8,
        threads=0,
    )
    if DRY_RUN:
        config.accelerator, config.num_workers = "cpu", 0
        config.warmup_batches, config.batches, config.repeats, config.batch_size = 1, 1, 1, 4
    return run(config)


def prepare() -> None:
    """Copy the Fashion-MNIST .gz files into benchmarks/_work/fashion-mnist-gz for the carry."""
    from .workloads import FASHION_FILES, ensure_fashion_mnist, fashion_mnist_dirs

    problem = ensure_fashion_mnist()
    if problem:
        raise SystemExit(problem)
    CARRY_DIR.mkdir(parents=True, exist_ok=True)
    for name in FASHION_FILES:
        for folder in fashion_mnist_dirs():
            if (folder / f"{name}.gz").is_file():
                shutil.copy2(folder / f"{name}.gz", CARRY_DIR / f"{name}.gz")
                break
            if (folder / name).is_file():
                import gzip

                with (
                    open(folder / name, "rb") as src,
                    gzip.open(CARRY_DIR / f"{name}.gz", "wb") as dst,
                ):
                    shutil.copyfileobj(src, dst)
                break
    size = sum(p.stat().st_size for p in CARRY_DIR.iterdir()) / 2**20
    print(f"{CARRY_DIR} holds the Fashion-MNIST files ({size:.0f} MiB)")


def part_sharded() -> dict[str, Any]:
    from .sharded_check import run

    return run("cpu" if DRY_RUN else "cuda")


PART_FUNCTIONS = {
    "env": part_env,
    "sharded": part_sharded,
    "sync": part_sync,
    "step": part_step,
    "train_plain": part_train_plain,
    "train_lightning": part_train_lightning,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=[*PART_FUNCTIONS, "merge", "prepare"])
    parser.add_argument("dir", nargs="?", help="merge: the folder holding the part files")
    parser.add_argument("--out", default=os.environ.get("OUT", str(WORK_DIR / "gpu_out")))
    parser.add_argument("--results", default=str(RESULTS_DIR), help="merge: the results folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.part == "prepare":
        prepare()
        return
    if args.part == "merge":
        print(f"wrote {merge(Path(args.dir or out), Path(args.results))}")
        return
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        result = PART_FUNCTIONS[args.part]()
    except Exception:
        traceback.print_exc()
        raise SystemExit(1) from None
    result["seconds"] = time.perf_counter() - started
    result["host"] = platform.node()
    (out / f"part_{args.part}.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str)[:4000])


if __name__ == "__main__":
    main()

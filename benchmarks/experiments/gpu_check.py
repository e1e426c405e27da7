"""The GPU check: the parts that ``benchmarks/gpu_check.sh`` runs (one process each, see there) and
their merge (``run``; ``--quick`` first runs the script's dry run: every part tiny on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from lightning_o2nc import ExponentiatedO2NC, O2NCAdamW

from ..harness import REPO_ROOT, Experiment, Result, read_result
from ..stats import difference_text, markdown_table, mean_std
from ..timing import summarize, time_arms
from . import step_overhead, throughput, transformer_evidence

DRY_RUN = os.environ.get("O2NC_GPU_CHECK_DRY_RUN", "") not in ("", "0")
DEVICE, BACKEND, ROUNDS, BLOCK = ("cpu", "gloo", 2, 1e-3) if DRY_RUN else ("cuda", "nccl", 20, 0.05)
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.sh"
#: nanoGPT's GPU recipe for shakespeare_char: 6 layers, 6 heads, width 384, block 256, batch 64.
GPT_GPU_SIZE = {"model.n_layer": 6, "model.n_head": 6, "model.n_embd": 384, "model.dropout": 0.2}
GPT_GPU_SIZE |= {"data.init_args.block_size": 256, "data.init_args.batch_size": 64}
GPT_GPU_SIZE |= {"trainer.accelerator": "cuda"}
TESTS = ("tests/optim/test_cuda_no_host_sync.py", "tests/lightning/test_wrapper_precision.py",
         "tests/optim/test_fsdp2.py", "tests/lightning/test_model_parallel.py")  # fmt: skip
SHARDED = {  # the sharded step's arms; AdamW (also inside O2NCAdamW) steps the DTensors itself
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-3),
    "O2NCAdamW average=True": lambda p: O2NCAdamW(p, lr=1e-3, average=True, seed=1),
    "ExponentiatedO2NC": lambda p: ExponentiatedO2NC(p, lr=0.05, seed=1),
    "ExponentiatedO2NC average=True": lambda p: ExponentiatedO2NC(p, lr=0.05, average=True, seed=1),
}


def part_tests() -> dict:
    """pytest on :data:`TESTS` (collected only in a dry run): the verdict and the failed ids."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
    done = subprocess.run(command + ["--collect-only"] * DRY_RUN, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).splitlines()
    failed = [line.split()[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    status = "collected" if DRY_RUN else "passed" if done.returncode == 0 else "failed"
    return {"tests": status, "failed": failed, "output": "\n".join(lines[-40:])}


def largest(plain: list, sharded: list) -> float:
    return max(float((a - b.full_tensor()).abs().max()) for a, b in zip(plain, sharded))


def part_sharded() -> dict:
    dist.init_process_group(BACKEND, store=dist.HashStore(), rank=0, world_size=1)
    mesh, found = dist.init_device_mesh(DEVICE, (1,)), {}
    for name in ("O2NCAdamW average=True", "ExponentiatedO2NC average=True"):
        torch.manual_seed(0)
        plain, sharded = (step_overhead.MODELS["mlp"]().to(DEVICE) for _ in range(2))
        sharded.load_state_dict(plain.state_dict())
        fully_shard(sharded, mesh=mesh)
        optimizers = [SHARDED[name](model.parameters()) for model in (plain, sharded)]
        for _ in range(20):
            x, y = torch.randn(32, 64, device=DEVICE), torch.randint(0, 10, (32,), device=DEVICE)
            for model, optimizer in zip((plain, sharded), optimizers):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
        found[name] = {"weights": largest(plain.parameters(), sharded.parameters())}
        found[name]["x_bar"] = largest(*(o.averaged_iterate() for o in optimizers))
    steps = {n: b(sharded.parameters()).step for n, b in SHARDED.items()}  # on the last gradients
    timed = summarize(time_arms(steps, ROUNDS, BLOCK), dict.fromkeys(steps, "AdamW"))
    dist.destroy_process_group()
    return {"largest_difference": found, "step": timed}


def part_step() -> dict:
    settings = step_overhead.EXPERIMENTS[0].settings | {"device": DEVICE}  # its 12 rounds
    settings |= {"models": ["mlp"], "rounds": ROUNDS, "block_seconds": BLOCK} if DRY_RUN else {}
    return step_overhead.run(settings, None) | {"settings": settings}


def part_train_lightning() -> dict:
    fit = throughput.EXPERIMENTS[0]
    settings = fit.settings | {"backbone": "resnet18_cifar", "repeats": 3, "accelerator": DEVICE}
    settings |= fit.quick | {"num_workers": 0} if DRY_RUN else {"num_workers": 8, "batches": 60}
    return throughput.run(settings, Path(os.environ.get("OUT", "."), "logs"))


def part_transformer() -> dict:
    """The CPU comparison's best ``adamw`` and ``o2nc_adamw`` configurations at nanoGPT's GPU size
    for shakespeare_char, 3 seeds each (a dry run: the train config's values, tiny, one seed)."""
    arms, folder = ("adamw", "o2nc_adamw"), Path(os.environ.get("OUT", "."), "transformer")
    settings = {"steps": 500, "min_trials": 1, "horizons": [0.99, 0.999], "fixed": GPT_GPU_SIZE}
    best, seeds, text = {arm: {} for arm in arms}, range(1 if DRY_RUN else 3), folder / "tiny.txt"
    if DRY_RUN:
        folder.mkdir(parents=True, exist_ok=True)
        text.write_text("to be, or not to be: that is the question. " * 900)
        tiny = {"data.init_args.path": str(text), "trainer.accelerator": "cpu"}
        settings |= {"steps": 2, "fixed": transformer_evidence.QUICK["fixed"] | tiny}
    else:
        best = {arm: read_result("transformer_evidence")["arms"][arm]["best"] for arm in arms}
    jobs = [(settings, folder, arm, best[arm], seed) for arm in arms for seed in seeds]
    return {"settings": settings, "runs": [transformer_evidence.seed_run(*job) for job in jobs]}


def part(name: str, out: str) -> None:
    """Run part ``name`` and write ``out/part_<name>.json`` (gpu_check.sh logs its seconds)."""
    Path(out, f"part_{name}.json").write_text(json.dumps(globals()[f"part_{name}"](), default=str))


def run(settings: dict, work: Path) -> Result:
    """The part files in ``settings["parts"]``; in a dry run, the script's in ``work``."""
    folder = work / "parts" if settings["dry_run"] else REPO_ROOT / settings["parts"]
    env = {"OUT": str(folder), "O2NC_GPU_CHECK_DRY_RUN": "1", "PYTHON": sys.executable}
    if settings["dry_run"]:
        subprocess.run(["bash", str(SCRIPT)], env=os.environ | env, check=True)
    if not folder.is_dir():
        raise ValueError(f"gpu_check: no folder {folder}; OUT={folder} bash {SCRIPT} writes it")
    return {"parts": {p.stem[5:]: json.loads(p.read_text()) for p in folder.glob("part_*.json")}}


def render_sharded(part: dict) -> str:
    found, step = part["largest_difference"].items(), part["step"].items()
    rows = [(n, f"{d['weights']:.1e}", f"{d['x_bar']:.1e}") for n, d in found]
    text = markdown_table(["optimizer", "largest weight difference", "largest x̄ difference"], rows)
    rows = [(n, f"{r['ratio']:.3f}× ({r['ratio_q1']:.2f}–{r['ratio_q3']:.2f})") for n, r in step]
    return f"{text}\n\nThe step alone:\n\n{markdown_table(['arm', 'vs AdamW (IQR)'], rows)}"


def render_transformer(part: dict) -> str:
    runs, horizons = part["runs"], [str(h) for h in part["settings"]["horizons"]]
    rows, x = [], {}
    for arm in ("adamw", "o2nc_adamw"):
        x[arm] = [r["val_loss"] for r in runs if r["arm"] == arm]
        at = [[r["val_loss_avg"][h] for r in runs if r["arm"] == arm] for h in horizons]
        rows.append([arm, *(mean_std(values, digits=3) for values in (x[arm], *at))])
    delta, test = difference_text(x["o2nc_adamw"], x["adamw"], scale=1, digits=3)
    columns = ["arm", "val loss at x", *(f"at x̄ ({h})" for h in horizons)]
    return (
        f"nanoGPT's GPU size for shakespeare_char, {part['settings']['steps']} steps, "
        f"{len(x['adamw'])} seeds:\n\n{markdown_table(columns, rows)}\n\n"
        f"`o2nc_adamw` − `adamw` at x: {delta} nats/char ({test})."
    )


def render(result: Result) -> str:
    parts, text = result["parts"], [f"GPU: {result.get('env', {}).get('GPU')}."]
    for name, title, body in (
        ("tests", "pytest on CUDA", lambda p: f"**{p['tests']}**; failed: {p['failed'] or 'none'}"),
        ("step", "Step time on CUDA", step_overhead.render),
        ("sharded", "fully_shard on a mesh of 1 against the unsharded optimizer", render_sharded),
        ("train_lightning", "Lightning fit on CUDA (ResNet-18)", throughput.render),
        ("transformer", "Character-level GPT on CUDA (tuned on the CPU)", render_transformer),
    ):
        missing = f"Part `{name}` did not finish (see gpu_check.log)."
        text += [f"### {title}", body(parts[name]) if name in parts else missing]
    return "\n\n".join(text)


def targets(result: Result) -> list[tuple[str, str, str]]:
    parts, rows, verdict = result["parts"], [], {True: "met", False: "**missed**"}
    if "tests" in parts:
        status = parts["tests"]["tests"]
        syncs = [t.split("::")[-1] for t in parts["tests"]["failed"] if "no_host_sync" in t]
        ok = f"syncs: {', '.join(syncs)}" if syncs else "all ok" if status == "passed" else status
        rows.append(("zero host syncs per step, every option (GPU)", ok, verdict[ok == "all ok"]))
    if "step" in parts:
        rows += [(f"{t} (GPU)", m, v) for t, m, v in step_overhead.targets(parts["step"])]
    fit = throughput.targets(parts["train_lightning"]) if "train_lightning" in parts else []
    return rows + [(f"ResNet-18 Lightning fit (GPU): {t}", m, v) for t, m, v in fit]


EXPERIMENTS = (
    Experiment(
        name="gpu_check",
        title="GPU check",
        workload="one CUDA GPU: the GPU tests, fully_shard, the step, ResNet-18 training",
        arms=("O2NC", "SGDM (factory)", "torch SGD foreach/fused", "AdamW", "O2NCAdamW"),
        measurement="pytest verdicts; torch.utils.benchmark paired ratios; Lightning samples/s",
        run=run,
        render=render,
        settings={"parts": "benchmarks/_work/gpu_out", "dry_run": False},
        quick={"dry_run": True},
        targets=targets,
        command="OUT=DIR bash benchmarks/gpu_check.sh; cp DIR/gpu_check.json benchmarks/results/",
    ),
)

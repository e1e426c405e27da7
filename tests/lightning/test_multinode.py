"""Multi-node: ``o2nc-train fit`` launched by torchrun as two nodes of one process each, on loopback.

The README's "Multi-GPU and multi-node" section gives the same command lines for real machines.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_nodes_end_with_identical_weights_and_x_bar_and_one_set_of_logs(tmp_path):
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "devices": 1,
            "num_nodes": 2,
            "strategy": "ddp",
            "log_every_n_steps": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "two_nodes"},
            },
            "callbacks": [
                {
                    "class_path": "tests.lightning.ddp_run.DumpRankState",
                    "init_args": {"out": str(tmp_path)},
                }
            ],
        },
        "model": {"backbone": "small_cnn", "lr": 0.05, "bn_update_batches": 2},
        "data": {
            "class_path": "lightning_o2nc.SyntheticDataModule",
            "init_args": {"num_samples": 160, "batch_size": 8, "seed": 0},
        },
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
    ]
    rendezvous = ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    o2nc_train = ["-m", "lightning_o2nc.lightning.cli", "fit", "--config", str(config_path)]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    nodes = [
        subprocess.Popen(
            [*torchrun, "--node-rank", str(node_rank), *rendezvous, *o2nc_train],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node_rank in (0, 1)
    ]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=400)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node_rank, (node, output) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {node_rank}:\n{output[-4000:]}"

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for name, tensor in ranks[0]["weights"].items():
        assert torch.equal(tensor, ranks[1]["weights"][name]), name
    for a, b in zip(ranks[0]["x_bar"], ranks[1]["x_bar"], strict=True):
        assert torch.equal(a, b)
    assert ranks[0]["last_scale"] == ranks[1]["last_scale"]
    for name in ("val/acc", "val/acc_avg"):
        assert ranks[0]["metrics"][name] == ranks[1]["metrics"][name], name

    # one set of logs and checkpoints, written by global rank zero
    versions = sorted(p.name for p in (tmp_path / "runs" / "two_nodes").iterdir())
    assert versions == ["version_0"]
    run = tmp_path / "runs" / "two_nodes" / "version_0"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch=1-step=10.ckpt",
        "last.ckpt",
    ]

"""The README's ``o2nc-train`` commands, run as written, each in a new process in a scratch folder.

The commands are read from the README itself, so the README and this test cannot drift apart. Two
flags are added to keep the test short: fewer epochs (for every run alike, so the schedules'
horizon is the same), and for the interrupted run a callback that presses Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = "--trainer.max_epochs=4"
# Output nobody can act on, which our entry points must not print.
NOISE = ("💡 Tip", "LeafSpec", "v_num", "no last checkpoint available", "is not empty")


def _readme_train_commands() -> list[list[str]]:
    """The ``o2nc-train`` lines of the README's code block that shows fit, test and resume."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    block = next(b for b in blocks if "o2nc-train test" in b and "--ckpt_path last" in b)
    return [
        shlex.split(line, comments=True)
        for line in block.splitlines()
        if line.startswith("o2nc-train ")
    ]


def _o2nc_train(scratch: Path, argv: list[str], *extra: str) -> subprocess.CompletedProcess:
    """Run ``o2nc-train`` as the README says (``.venv/bin/o2nc-train``) in ``scratch``."""
    assert argv[0] == "o2nc-train"
    script = Path(sys.executable).with_name("o2nc-train")
    command = (
        [str(script)]
        if script.is_file()
        else [sys.executable, "-m", "lightning_o2nc.lightning.cli"]
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    env.pop("O2NC_TRACEBACK", None)
    return subprocess.run(
        [*command, *argv[1:], *extra],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _scratch(path: Path) -> Path:
    """An empty folder: the README's commands name shipped configs, which resolve from anywhere."""
    path.mkdir()
    return path


def _training_state(checkpoint: Path) -> dict:
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    return {
        k: state[k]
        for k in ("epoch", "global_step", "state_dict", "optimizer_states", "lr_schedulers")
    }


def _assert_identical(a, b, where="checkpoint") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow
def test_readme_fit_test_and_resume_commands_work_as_written(tmp_path):
    fit, test, resume = _readme_train_commands()
    assert fit[fit.index("--config") + 1] == "digits_o2nc"  # a shipped config, by name
    assert "--ckpt_path" not in fit and resume[-2:] == ["--ckpt_path", "last"]

    reference = _o2nc_train(_scratch(tmp_path / "uninterrupted"), fit, EPOCHS)
    assert reference.returncode == 0, reference.stderr

    scratch = _scratch(tmp_path / "readme")
    ctrl_c = {"class_path": "tests.lightning.interrupting.CtrlCAtEpoch", "init_args": {"epoch": 2}}
    interrupted = _o2nc_train(scratch, fit, EPOCHS, f"--trainer.callbacks+={json.dumps(ctrl_c)}")
    assert interrupted.returncode == 1, interrupted.stderr  # as after Ctrl-C
    run = scratch / "runs" / "digits_o2nc"
    # last.ckpt holds the end of epoch 1 (0-based), where Lightning records epoch=1
    assert torch.load(run / "version_0/checkpoints/last.ckpt", weights_only=True)["epoch"] == 1

    tested = _o2nc_train(scratch, test)
    assert tested.returncode == 0, tested.stderr
    assert re.search(r"test/acc_avg\s.*\s0\.\d+", tested.stdout), tested.stdout

    resumed = _o2nc_train(scratch, resume, EPOCHS)
    assert resumed.returncode == 0, resumed.stderr
    output = resumed.stdout + resumed.stderr
    assert (
        "Restoring states from the checkpoint path at runs/digits_o2nc/version_0/checkpoints/last.ckpt"
        in output
    )
    # the resumed fit continues the same run: same version folder, no new one with checkpoints
    assert sorted(p.name for p in run.iterdir()) == [
        "version_0",
        "version_1",
    ]  # version_1: the test
    assert len(list((run / "version_0").glob("events.out.tfevents.*"))) == 2
    _assert_identical(
        _training_state(run / "version_0/checkpoints/last.ckpt"),
        _training_state(
            tmp_path / "uninterrupted/runs/digits_o2nc/version_0/checkpoints/last.ckpt"
        ),
    )
    for result in (reference, interrupted, tested, resumed):
        for noise in NOISE:
            assert noise not in result.stdout + result.stderr, noise
    print(f"$ {shlex.join(resume)} {EPOCHS}\n{output}")


def _readme_python_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return next(b for b in blocks if marker in b)


def test_readme_plain_pytorch_snippet_runs_as_written(tmp_path):
    snippet = _readme_python_block("ExponentiatedO2NC(model.parameters()")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(r"loss \d\.\d{3}, last s = \d+\.\d{3}\n", run.stdout), run.stdout


def test_readme_sweep_examples_use_their_own_study_names():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    sweeps = [
        shlex.split(line, comments=True)
        for block in blocks
        for line in block.splitlines()
        if line.startswith("o2nc-sweep --config")
    ]
    demo = yaml.safe_load((ROOT / "lightning_o2nc/configs/sweeps/digits.yaml").read_text())
    for argv in sweeps:
        if "--study-name" in argv:
            assert argv[argv.index("--study-name") + 1] != demo["study_name"], argv
        else:  # the demo's own command, with the demo's own space
            assert argv[argv.index("--logdir") + 1] == "runs/demo", argv

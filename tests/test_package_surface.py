"""What a pip user meets first: shipped configs by name, the listing, ``--version``, and the one
line that names a missing extra (with the module really absent: in a new process, ``None`` in
``sys.modules`` makes ``import matplotlib`` fail as it does where the extra is not installed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import lightning_o2nc
from lightning_o2nc.shipped_configs import CONFIG_DIR, listing, resolve_config, shipped_configs
from lightning_o2nc.sweeps.config import SweepConfigError, load_sweep_config
from lightning_o2nc.sweeps.objective import check_trial_config

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path, *, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter in ``cwd``; the ``blocked`` modules cannot be imported."""
    # None in sys.modules is Python's documented way to make a module unimportable: `import`
    # raises ModuleNotFoundError and importlib.util.find_spec returns None, as when not installed
    hook = f"import sys\nsys.modules.update(dict.fromkeys({blocked!r}))\n"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-c", hook + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_shipped_yaml_has_a_name_and_the_listing_prints_them_all():
    sweeps, trains = shipped_configs("sweep"), shipped_configs("train")
    assert {"digits", "fashion_mnist", "cifar10_resnet18"} <= set(sweeps)
    assert {"digits_o2nc", "digits_sgdm"} <= set(trains)
    files = {p.stem for p in CONFIG_DIR.glob("*/*.yaml")}
    assert files == set(sweeps) | set(trains)
    text = listing()
    for name in files:
        assert f"  {name} " in text, name


def test_a_name_resolves_from_any_directory_and_an_existing_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Path(resolve_config("digits", "sweep")) == CONFIG_DIR / "sweeps" / "digits.yaml"
    assert Path(resolve_config("digits.yaml", "sweep")) == CONFIG_DIR / "sweeps" / "digits.yaml"
    (tmp_path / "digits").write_text("study_name: mine\n")
    assert resolve_config("digits", "sweep") == "digits"
    # YAML text (which LightningCLI accepts as --config) is passed through untouched
    assert resolve_config("{trainer: {max_epochs: 1}}", "train") == "{trainer: {max_epochs: 1}}"
    with pytest.raises(ValueError, match=r"^--config 'digitz': no such file.*shipped: "):
        resolve_config("digitz", "sweep")


def test_a_shipped_sweep_loads_by_name_with_its_shipped_train_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep_config("digits")
    assert sweep.source == CONFIG_DIR / "sweeps" / "digits.yaml"
    assert sweep.train_config_path == CONFIG_DIR / "train" / "digits_o2nc.yaml"
    with pytest.raises(SweepConfigError, match="no shipped sweep config"):
        load_sweep_config("no_such_sweep")


def test_a_sweep_file_may_name_a_shipped_train_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = yaml.safe_load((CONFIG_DIR / "sweeps" / "digits.yaml").read_text())
    spec["train_config"] = "digits_sgdm"
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(spec))
    sweep = load_sweep_config(tmp_path / "mine.yaml")
    assert sweep.train_config_path == CONFIG_DIR / "train" / "digits_sgdm.yaml"


@pytest.mark.slow
def test_o2nc_train_reads_a_shipped_config_by_name_and_a_local_file_of_that_name_first(tmp_path):
    printed = "from lightning_o2nc.lightning.cli import main; main({})"
    shipped = _python(
        printed.format(["fit", "--config", "digits_o2nc", "--print_config"]), tmp_path
    )
    assert shipped.returncode == 0, shipped.stderr
    local = yaml.safe_load((CONFIG_DIR / "train" / "digits_o2nc.yaml").read_text())
    assert yaml.safe_load(shipped.stdout)["model"]["lr"] == pytest.approx(local["model"]["lr"])
    local["model"]["lr"] = 0.123
    (tmp_path / "digits_o2nc").write_text(yaml.safe_dump(local))
    own = _python(printed.format(["fit", "--config=digits_o2nc", "--print_config"]), tmp_path)
    assert own.returncode == 0, own.stderr
    assert yaml.safe_load(own.stdout)["model"]["lr"] == pytest.approx(0.123)
    wrong = _python(printed.format(["fit", "-c", "digits_o2nx"]), tmp_path)
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("o2nc-train: error: --config 'digits_o2nx': no such file")


@pytest.mark.slow
def test_both_commands_print_the_one_version(tmp_path):
    for module, program in (("lightning.cli", "o2nc-train"), ("sweeps.cli", "o2nc-sweep")):
        run = _python(f"from lightning_o2nc.{module} import main; main(['--version'])", tmp_path)
        assert run.stdout.strip() == f"{program} (lightning-o2nc) {lightning_o2nc.__version__}"
    listed = _python("from lightning_o2nc.sweeps.cli import main; main(['configs'])", tmp_path)
    assert "digits_o2nc" in listed.stdout and "o2nc-sweep --config NAME" in listed.stdout


@pytest.mark.slow
def test_a_missing_report_extra_leaves_the_report_without_plots_and_names_the_extra(tmp_path):
    code = """
        import optuna
        from optuna.distributions import FloatDistribution
        from lightning_o2nc.sweeps.report import write_report
        study = optuna.create_study(direction="maximize", study_name="s")
        study.add_trial(optuna.trial.create_trial(
            params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, value=1.0))
        report = write_report(study, storage_url="sqlite://", logdir=".", plots=True)
        print(report.skipped["plots"])
        print(report.csv.read_text().splitlines()[0])
    """
    run = _python(code, tmp_path, blocked=("matplotlib", "plotly", "pandas"))
    assert run.returncode == 0, run.stderr
    message, header = run.stdout.splitlines()
    assert message == (
        "the sweep report's plots: the [report] extra is not installed (no module named "
        "'matplotlib'); pip install 'lightning-o2nc[report]'"
    )
    assert header.startswith("number,value,state,datetime_start,duration,params_x")
    assert "[report] extra is not installed" in (tmp_path / "s/report/report.md").read_text()


@pytest.mark.slow
def test_a_missing_cmaes_or_postgres_extra_is_one_line_naming_it(tmp_path):
    spec = yaml.safe_load((CONFIG_DIR / "sweeps" / "digits.yaml").read_text())
    spec["train_config"] = "digits_o2nc"
    spec["sampler"] = {"name": "cmaes"}
    (tmp_path / "cmaes.yaml").write_text(yaml.safe_dump(spec))
    sweep = "import sys; from lightning_o2nc.sweeps.cli import main; sys.exit(main({}))"
    cmaes = _python(
        sweep.format(["--config", "cmaes.yaml", "--logdir", "."]), tmp_path, blocked=("cmaes",)
    )
    assert cmaes.returncode == 2
    assert cmaes.stderr == (
        "o2nc-sweep: error: sampler.name: cmaes: the [cmaes] extra is not installed (no module "
        "named 'cmaes'); pip install 'lightning-o2nc[cmaes]'\n"
    )
    url = "postgresql://sweeper:hunter2@127.0.0.1:1/optuna"
    postgres = _python(
        sweep.format(["--config", "digits", "--storage", url]),
        tmp_path,
        blocked=("psycopg", "psycopg2", "pg8000"),
    )
    assert postgres.returncode == 2
    assert postgres.stderr.count("\n") == 1 and "hunter2" not in postgres.stderr
    assert "the [postgres] extra is not installed" in postgres.stderr
    assert "pip install 'lightning-o2nc[postgres]'" in postgres.stderr


@pytest.mark.slow
def test_o2nc_train_help_is_plain_text_with_lr_beta_and_mu_first(tmp_path):
    run = _python(
        "from lightning_o2nc.lightning.cli import main; main(['fit', '--help'])", tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert "``" not in run.stdout and ":class:`" not in run.stdout
    model_options = [
        line.split()[0]
        for line in run.stdout.splitlines()
        if line.startswith("  --model.") and not line.startswith("  --model.help")
    ]
    assert model_options[:3] == ["--model.lr", "--model.beta", "--model.mu"], model_options[:5]


@pytest.mark.slow
def test_a_config_printed_by_o2nc_train_is_a_valid_sweep_train_config(tmp_path, monkeypatch):
    printed = _python(
        "from lightning_o2nc.lightning.cli import main; "
        "main(['fit', '--config', 'digits_o2nc', '--print_config'])",
        tmp_path,
    )
    assert printed.returncode == 0, printed.stderr
    config = yaml.safe_load(printed.stdout)
    assert config["ckpt_path"] is None  # fit's own argument, in every printed config
    (tmp_path / "mine.yaml").write_text(printed.stdout)
    spec = yaml.safe_load((CONFIG_DIR / "sweeps" / "digits.yaml").read_text())
    spec["train_config"] = str(tmp_path / "mine.yaml")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep_config("sweep.yaml")
    assert sweep.train_config_path == tmp_path / "mine.yaml"
    check_trial_config(sweep)  # what o2nc-sweep runs before any trial: one batch, built as a trial

    config["ckpt_path"] = "last"
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SweepConfigError, match="ckpt_path: 'last' belongs to `o2nc-train fit`"):
        check_trial_config(load_sweep_config("sweep.yaml"))

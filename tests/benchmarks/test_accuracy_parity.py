"""The fixed-η parity run and the CIFAR-10 experiment (the same run of another recipe) through the
harness, on tiny settings: real Trainer fits, real TensorBoard files read back with tbparse, real
JSON and PNG files; CIFAR-10 on a tiny archive in its python format.

No test asserts a time or an accuracy: both depend on the machine and on tiny budgets.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.experiments import get
from benchmarks.experiments.accuracy_parity import AVERAGED_ARM, PANEL_TAGS, write_tiny_cifar10
from benchmarks.harness import RESULTS_DIR, read_result, run_experiment
from benchmarks.render import render_section

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stored_results() -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(RESULTS_DIR.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_quick_parity_writes_its_json_modest_pngs_and_targets_and_leaves_the_results_alone(
    tmp_path,
):
    before = stored_results()
    path = run_experiment(get("accuracy_parity"), quick=True)
    assert stored_results() == before
    result = json.loads(path.read_text())
    assert result["figures"] == ["parity_digits.png", "stationarity_digits.png"]
    for name in result["figures"]:
        png = path.parent / name
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size < 300_000
    # every arm and seed ran; x̄ is read on the exponential runs only
    assert [len(v) for v in result["accuracies"].values()] == [2, 2, 2, 2]
    assert set(result["stationarity"]) == set(PANEL_TAGS)
    panel = [r for r in result["curves"] if "o2nc/stationarity_certificate" in r["curves"]]
    assert [(r["arm"], r["seed"]) for r in panel] == [("O2NC (exponential)", 0)]
    steps, values = panel[0]["curves"]["o2nc/iterate_variance"]
    assert len(steps) == len(values) > 1 and steps == sorted(steps)
    targets = get("accuracy_parity").targets(result)
    assert [t[0].split(" within")[0] for t in targets] == [
        "O2NC (exponential)",
        "O2NC (uniform)",
        AVERAGED_ARM,
    ]
    assert all(verdict in ("met", "**missed**") for _, _, verdict in targets)

    section, rows = render_section(get("accuracy_parity"), path.parent, tmp_path / "RESULTS.md")
    assert "Could not render" not in section and "| O2NC (uniform) |" in section
    assert "parity_digits.png)" in section and "stationarity_digits.png)" in section
    assert "Command: `python -m benchmarks run accuracy_parity --quick`" in section
    assert [row[1:] for row in rows] == targets


def test_the_committed_parity_result_renders_section_5_and_keeps_its_figures():
    result = read_result("accuracy_parity")
    text = get("accuracy_parity").render(result)
    assert "| O2NC (exponential) | 86.19 ± 0.51 | -0.95 ± 0.26 | t = -3.66, p = 0.010 |" in text
    assert "| V (iterate variance around x̄) | 0.04568 | 5.462e-06 | 0.00012× |" in text
    for name in result["figures"]:
        assert (RESULTS_DIR / name).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_cifar_quick_run_is_the_parity_run_of_the_resnet18_recipe_on_a_tiny_fixture(tmp_path):
    before = stored_results()
    cifar = get("cifar10_resnet18")
    path = run_experiment(cifar, quick=True)
    assert stored_results() == before
    result = json.loads(path.read_text())
    config = result["config"]
    assert config["recipe"] == "cifar10_resnet18_sgdm" and config["width"] is None
    # the recipe's η and β, every arm on the one seed, x̄ read on the exponential run
    assert (config["lr"], config["beta"]) == (0.1111111111, 0.9)
    assert [len(v) for v in result["accuracies"].values()] == [1, 1, 1, 1]
    assert all(0.0 <= v[0] <= 1.0 for v in result["accuracies"].values())
    assert set(result["stationarity"]) == set(PANEL_TAGS)
    assert result["figures"] == ["parity_cifar10.png", "stationarity_cifar10.png"]
    section, rows = render_section(cifar, path.parent, tmp_path / "RESULTS.md")
    assert (
        "cifar10, ResNet-18 from `lightning_o2nc`" in section and "(on every parameter)" in section
    )
    assert "| O2NC (uniform) |" in section and [row[1:] for row in rows] == cifar.targets(result)


def test_without_a_result_the_cifar_section_says_not_run_yet_and_how_to_run_it(tmp_path):
    section, rows = render_section(get("cifar10_resnet18"), tmp_path, tmp_path / "RESULTS.md")
    assert section.startswith("**Not run yet.**") and rows == []
    assert "`python -m benchmarks run cifar10_resnet18 --set data_root=DATA`" in section


def test_a_full_run_refuses_the_fixture_and_leaves_the_stored_results_alone():
    before = stored_results()
    with pytest.raises(ValueError, match="fixture is for --quick runs only"):
        run_experiment(get("cifar10_resnet18"), overrides={"fixture": True})
    assert stored_results() == before


def test_a_missing_cifar_data_root_is_one_clear_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=f"data_root '{tmp_path}' holds no cifar-10-batches-py"):
        run_experiment(get("cifar10_resnet18"), overrides={"data_root": str(tmp_path)})
    write_tiny_cifar10(tmp_path)
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()

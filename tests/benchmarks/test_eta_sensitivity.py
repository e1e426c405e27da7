"""The η-sensitivity grid through the harness, on the digits MLP: real fits, real JSON and PNG."""

from __future__ import annotations

import json

import pytest

from benchmarks.experiments import get
from benchmarks.experiments.eta_sensitivity import blowup, summary, tail_of_largest
from benchmarks.harness import RESULTS_DIR, read_result, run_experiment


def stored_results() -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(RESULTS_DIR.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_eta_grid_finds_where_sgdm_stops_training_and_the_scales_before_blow_ups():
    before = stored_results()
    experiment = get("eta_sensitivity")
    path = run_experiment(experiment, quick=True, overrides={"etas": [0.1, 100], "workers": 0})
    assert stored_results() == before
    result = json.loads(path.read_text())
    assert len(result["runs"]) == 2 * 3
    at_100 = [r for r in result["runs"] if r["eta"] == 100]
    assert all(r["blowup_step"] is not None for r in at_100)
    found = summary(result, "digits")
    assert found["SGDM"]["largest_training_eta"] == 0.1
    assert found["SGDM"]["max_scale"] == 1.0
    assert found["O2NC (exponential)"]["scales_before_blowup"]
    assert "largest η that trains" in experiment.render(result)
    assert result["figures"] == ["eta_sensitivity.png"]
    assert (path.parent / "eta_sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_the_committed_grid_renders_section_4():
    text = get("eta_sensitivity").render(read_result("eta_sensitivity"))
    assert "| 1 | 92.6 | 45.1 (2✗) | 32.1 (2✗) |" in text
    assert (
        "| O2NC (exponential) | 0.1 | 96.9 | 0.31623 | 7/16 | 5.20 | median 1.81, max 2.91; "
        "P(largest of 5 draws ≥ median) = 0.59 | 3.16 | 3.16 |"
    ) in text


def test_a_blow_up_is_the_first_loss_above_three_uniform_guesses_with_the_largest_s_before():
    limit = 3 * 2.302585  # 3 ln 10
    losses = [2.3, 2.0, 1.5, limit + 0.1, float("nan")]
    assert blowup(losses, [0.5, 3.0, 0.2, 9.0, 1.0]) == {
        "blowup_step": 4,
        "scale_before_blowup": 3.0,
    }
    assert blowup([2.3, float("inf")], [0.7, 0.1]) == {"blowup_step": 2, "scale_before_blowup": 0.7}
    assert blowup([2.3, 1.0], [1.0, 1.0]) == {"blowup_step": None, "scale_before_blowup": None}
    # P(max of 5 Exp(1) draws >= s) = 1 - (1 - e^-s)^5; for U(0, 2): 1 - (s / 2)^5
    assert tail_of_largest("O2NC (exponential)", 0.0) == 1.0
    assert tail_of_largest("O2NC (uniform)", 2.0) == 0.0
    assert tail_of_largest("O2NC (exponential)", 5.0) == pytest.approx(
        1 - (1 - 2.718281828**-5) ** 5
    )


def test_an_unknown_dataset_is_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown datasets \['cifar'\]"):
        run_experiment(get("eta_sensitivity"), quick=True, overrides={"datasets": ["cifar"]})

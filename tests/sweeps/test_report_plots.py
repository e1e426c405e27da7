"""The report's plots as a reader sees them: the learning-curve legend of a demo-sized study fits."""

from __future__ import annotations

import optuna
from matplotlib.image import imread
from optuna.distributions import FloatDistribution

from lightning_o2nc.sweeps.report import write_report


def test_the_learning_curve_legend_of_30_trials_fits_inside_the_png(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", study_name="legend")
    for trial in range(30):
        curve = {epoch: 0.5 + 0.04 * epoch + 0.001 * trial for epoch in range(12)}
        study.add_trial(
            optuna.trial.create_trial(
                params={"model.lr": 0.01 * (trial + 1)},
                distributions={"model.lr": FloatDistribution(0.0, 1.0)},
                value=curve[11],
                intermediate_values=curve,
            )
        )
    report = write_report(study, storage_url="sqlite://", logdir=tmp_path, plots=True)
    height, width = imread(report.plots["learning_curves"]).shape[:2]
    # saved with bbox "tight": whatever the legend covers is in the PNG. Spread over columns
    # beside the axes it stays within the 5-inch figure (110 dpi) instead of running below it
    assert height <= 5 * 110 + 20, (height, width)
    assert width > 7 * 110 * 0.9  # the axes and the legend beside them

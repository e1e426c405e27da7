"""What the fixed-η parity run compares: its arms, the baseline, the averaged iterate's label, and
the O2NC statistics its stationarity panel shows.

Both the run (:mod:`benchmarks.accuracy_parity`) and its figures (:mod:`benchmarks.parity_plots`)
read these names from here, so neither imports the other's module back.
"""

from __future__ import annotations

from typing import Any

ARMS: dict[str, dict[str, Any]] = {
    "SGDM": {"optimizer": "sgdm", "average": False},
    "O2NC (exponential)": {"optimizer": "o2nc", "scaling": "exponential", "average": True},
    "O2NC (uniform)": {"optimizer": "o2nc", "scaling": "uniform", "average": False},
}
AVERAGED_ARM = "O2NC at x̄ (exponential runs)"
BASELINE = "SGDM"
PANEL_TAGS = {
    "o2nc/grad_ema_norm": "‖m̂‖ (normalized gradient EMA)",
    "o2nc/iterate_variance": "V (iterate variance around x̄)",
    "o2nc/stationarity_certificate": "certificate ‖m̂‖ + c·V",
}

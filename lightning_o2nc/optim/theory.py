"""A theory-guided starting point for (beta, eta, mu).

The O2NC analyses (Cutkosky, Mehta & Orabona 2023; Zhang & Cutkosky 2024) reach a
(c, eps)-stationary point with these scalings, for a loss whose stochastic gradients are bounded
by G:

    1 - beta = eps^2 / G^2                 (clipped to a usable range)
    D        = (1 - beta) * sqrt(eps / (48 c))
    eta      = 2 D sqrt(1 - beta) / G
    mu       = 24 c D / (1 - beta)^2

The constants (48, 24, 2) come from the proofs' worst cases: they give the order of magnitude
and the way the three quantities move together, not tuned values. Use them to centre a search
space, not as a final answer.

The scalings do not change them. The analysis needs, for the step's scalar S with density p,

    E[F(x + S Delta)] - F(x) = E[<grad F(x + S Delta), Delta> * P(S > s) / p(s)]

(Lemma 3.1 for Exp(1), where P(S > s) / p(s) = 1). For S ~ U(0, 2) the factor is 2 - s, so the
gradient taken at x + s Delta, the next step's, enters the update multiplied by w = 2 - s: this is
``scaling="uniform"`` in ``ExponentiatedO2NC`` and ``RandomScaling``. Without the weight, uniform
scaling would not carry the guarantee.
"""

from __future__ import annotations

import math

__all__ = ["theory_guided_hyperparameters"]


def theory_guided_hyperparameters(
    epsilon: float,
    c: float,
    gradient_bound: float,
    *,
    min_one_minus_beta: float = 1e-4,
    max_one_minus_beta: float = 0.5,
) -> dict[str, float]:
    """Return ``{"beta", "lr", "mu"}`` from the analysis' scalings (see the module docstring).

    Args:
        epsilon: target stationarity eps > 0.
        c: the certificate's constant c > 0 (the scale of the neighbourhood, ~ 1/delta).
        gradient_bound: G > 0, a bound on the stochastic gradients' norm.
        min_one_minus_beta: lower clip of 1 - beta (beta at most 0.9999 by default).
        max_one_minus_beta: upper clip of 1 - beta (beta at least 0.5 by default).

    Example:
        >>> hp = theory_guided_hyperparameters(epsilon=0.1, c=1.0, gradient_bound=1.0)
        >>> round(hp["beta"], 4)
        0.99
    """
    for name, value in (("epsilon", epsilon), ("c", c), ("gradient_bound", gradient_bound)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"Invalid {name}: {value!r}; expected a finite number > 0")
    if not 0 < min_one_minus_beta <= max_one_minus_beta < 1:
        raise ValueError(
            f"Invalid clip range [{min_one_minus_beta}, {max_one_minus_beta}] for 1 - beta; "
            "expected 0 < min <= max < 1"
        )
    one_minus_beta = min(
        max(epsilon**2 / gradient_bound**2, min_one_minus_beta), max_one_minus_beta
    )
    radius = one_minus_beta * math.sqrt(epsilon / (48.0 * c))
    return {
        "beta": 1.0 - one_minus_beta,
        "lr": 2.0 * radius * math.sqrt(one_minus_beta) / gradient_bound,
        "mu": 24.0 * c * radius / one_minus_beta**2,
    }

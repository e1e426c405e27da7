"""Prints pip requirements pinning the packages named on the command line to the lower bounds
that pyproject.toml states for them (``lightning>=2.6,<3`` -> ``lightning==2.6``; needs Python 3.11).

    python .ci/lower_bounds.py lightning optuna optuna-integration

``pytorch-lightning`` (the standalone package, not a dependency of the project) is pinned to
``lightning``'s lower bound: the two are supported at the same versions.
"""

import re
import sys
from pathlib import Path

import tomllib

ALIASES = {"pytorch-lightning": "lightning"}


def lower_bounds(names: list[str]) -> list[str]:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    bounds = {}
    for requirement in pyproject["project"]["dependencies"]:
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)$", requirement)
        name, specifiers = match.group(1).lower(), match.group(3)
        lower = re.search(r">=\s*([0-9][^,\s]*)", specifiers)
        if lower:
            bounds[name] = lower.group(1)
    pins = []
    for name in names:
        source = ALIASES.get(name, name)
        if source not in bounds:
            raise SystemExit(
                f"lower_bounds.py: pyproject.toml states no lower bound for {source!r}"
            )
        pins.append(f"{name}=={bounds[source]}")
    return pins


if __name__ == "__main__":
    print(" ".join(lower_bounds(sys.argv[1:])))

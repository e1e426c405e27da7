"""The configs that ship in the wheel, by name: ``o2nc-sweep --config digits``.

``lightning_o2nc/configs/sweeps/*.yaml`` are sweep definitions, ``lightning_o2nc/configs/train/*.yaml``
LightningCLI train configs; a config's name is its file name without ``.yaml``. An existing path
always wins over a name, so ``--config digits`` in a folder holding a file ``digits`` reads that
file. ``o2nc-sweep configs`` prints the names (:func:`listing`).

Standard library only, so that both CLIs resolve names before importing anything heavy.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["CONFIG_DIR", "KINDS", "listing", "resolve_config", "shipped_configs"]

#: Where the configs live inside the installed package.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: kind -> (folder under CONFIG_DIR, the command that runs such a config)
KINDS = {
    "sweep": ("sweeps", "o2nc-sweep --config NAME"),
    "train": ("train", "o2nc-train fit --config NAME"),
}

# A value that can only mean a file or a name (not YAML text, which jsonargparse also accepts).
_PATH_LIKE = re.compile(r"^[\w.~/\\-]+$")


def shipped_configs(kind: str) -> dict[str, Path]:
    """``name -> path`` of the shipped configs of ``kind`` (``"sweep"`` or ``"train"``), sorted."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    folder = CONFIG_DIR / KINDS[kind][0]
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def resolve_config(value: str, kind: str) -> str:
    """The file ``value`` names: itself if it exists, else the shipped config of that name.

    Args:
        value: a path, a shipped config's name (``digits``; ``digits.yaml`` works too), or YAML
            text (returned unchanged: LightningCLI parses a ``--config`` that is not a file as
            YAML).
        kind: ``"sweep"`` or ``"train"``.

    Raises:
        ValueError: ``value`` looks like a path or a name, but is neither an existing file nor a
            shipped config; the message lists the shipped names.
    """
    names = shipped_configs(kind)
    if Path(value).expanduser().exists() or not _PATH_LIKE.match(value):
        return value
    name = value[: -len(".yaml")] if value.endswith(".yaml") else value
    if name in names:
        return str(names[name])
    raise ValueError(
        f"--config {value!r}: no such file, and no shipped {kind} config of that name; "
        f"shipped: {', '.join(names)} (`o2nc-sweep configs` lists them)"
    )


def _summary(path: Path) -> str:
    """The first line of the file's leading comment."""
    first = path.read_text().split("\n", 1)[0]
    return first.lstrip("# ").rstrip(".") if first.startswith("#") else ""


def listing() -> str:
    """What ``o2nc-sweep configs`` prints: every shipped config's name, summary and path."""
    lines = []
    for kind, (_, command) in KINDS.items():
        configs = shipped_configs(kind)
        lines.append(f"{kind} configs ({command}):")
        width = max(map(len, configs), default=0)
        for name, path in configs.items():
            lines.append(f"  {name:<{width}}  {_summary(path)}")
        lines.append("")
    lines.append(f"files: {CONFIG_DIR}  (copy one to change it; a path works wherever a name does)")
    return "\n".join(lines)

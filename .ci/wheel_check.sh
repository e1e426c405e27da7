#!/usr/bin/env bash
# The wheel as a pip user gets it (`make wheel`; .ci/run calls it after the tests).
#
# Builds the sdist and the wheel (the wheel from the sdist, as `python -m build` does), checks
# them (twine check, check-wheel-contents, nothing installed at the top level but lightning_o2nc),
# then installs the wheel into a fresh venv OUTSIDE the repository (no --system-site-packages;
# torch comes from pip's cache, filled when .venv was made) and, from a folder outside it too:
#   core only:   --version on both commands, `o2nc-sweep configs`, a 2-trial `o2nc-sweep --config
#                digits` (its report without plots names the [report] extra), an `o2nc-train fit`
#                of a shipped config that writes last.ckpt, the README's plain-PyTorch snippet;
#   + sweeps:    PyPI's `sweeps` 0.2.0 installed beside it: `import lightning_o2nc.sweeps` and the
#                commands still work, and `sweeps` is PyPI's;
#   + [report]:  `o2nc-sweep report` of that study draws the plots.
# Usage: .ci/wheel_check.sh [TOOLS_PYTHON]   (a Python with build, twine, check-wheel-contents)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TOOLS=${1:-$REPO/.venv/bin/python}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/o2nc-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
step() { printf '\n== wheel: %s (%s s)\n' "$*" "$SECONDS"; }

step "build sdist and wheel"
"$TOOLS" -m build --outdir "$WORK/dist" "$REPO" > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
if grep -iE "deprecat|SetuptoolsWarning|BuildBackendWarning" "$WORK/build.log"; then
  echo "the build printed deprecation warnings (above)"; exit 1
fi
ls -l "$WORK"/dist
"$TOOLS" -m twine check --strict "$WORK"/dist/*
"$TOOLS" -m check_wheel_contents "$WORK"/dist/*.whl
WHEEL=$(ls "$WORK"/dist/*.whl)
"$TOOLS" - "$WHEEL" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
top = sorted({n.split("/")[0] for n in names})
assert len(top) == 2 and top[0] == "lightning_o2nc" and top[1].endswith(".dist-info"), top
shipped = [n for n in names if n.startswith("lightning_o2nc/configs/") and n.endswith(".yaml")]
assert any(n.endswith("sweeps/digits.yaml") for n in shipped), shipped
assert "lightning_o2nc/py.typed" in names
print(f"top level: {top}; {len(shipped)} shipped configs")
PY

step "install the wheel, core only, into a fresh venv outside the repository"
"$PYTHON" -m venv "$WORK/venv"
BIN=$WORK/venv/bin
"$BIN/pip" install --quiet --upgrade pip
started=$(date +%s)
"$BIN/pip" install --quiet "$WHEEL"
echo "core install: $(( $(date +%s) - started )) s"
if "$BIN/python" -c "import matplotlib" 2>/dev/null || "$BIN/python" -c "import pandas" 2>/dev/null; then
  echo "the core install pulled in a [report] package"; exit 1
fi
mkdir "$WORK/user" && cd "$WORK/user"   # no repository in sight: only the installed package

"$BIN/o2nc-sweep" --version
"$BIN/o2nc-train" --version
"$BIN/o2nc-sweep" configs

step "a 2-trial sweep of the shipped digits config"
"$BIN/o2nc-sweep" --config digits --n-trials 2 --study-name wheel-check --logdir runs \
  --no-progress | tee sweep.log
grep -q "the \[report\] extra is not installed" runs/wheel-check/report/report.md
test -s runs/wheel-check/report/trials.csv
RETRAIN=$(sed -n 's/^retrain: *//p' sweep.log)
test -n "$RETRAIN"

step "o2nc-train fit of a shipped config"
"$BIN/o2nc-train" fit --config digits_o2nc --trainer.max_epochs=2 > train.log 2>&1 || { cat train.log; exit 1; }
test -f runs/digits_o2nc/version_0/checkpoints/last.ckpt

step "the README's plain-PyTorch snippet"
"$BIN/python" - "$REPO/README.md" > snippet.py <<'PY'
import re, sys
blocks = re.findall(r"```python\n(.*?)```", open(sys.argv[1]).read(), flags=re.S)
print(next(b for b in blocks if "ExponentiatedO2NC(model.parameters()" in b))
PY
"$BIN/python" snippet.py

step "beside PyPI's sweeps 0.2.0 (the Weights & Biases sweeps engine)"
"$BIN/pip" install --quiet "sweeps==0.2.0"
"$BIN/python" - <<'PY'
import importlib.metadata as metadata
import lightning_o2nc.sweeps
import lightning_o2nc.sweeps.cli
import sweeps
assert "lightning_o2nc" not in sweeps.__file__, sweeps.__file__
assert metadata.version("sweeps") == "0.2.0"
files = metadata.files("lightning-o2nc")
assert not [f for f in files if str(f).startswith("sweeps/")], "lightning-o2nc installs sweeps/"
print(f"sweeps: {sweeps.__file__}\nlightning_o2nc.sweeps: {lightning_o2nc.sweeps.__file__}")
PY
"$BIN/o2nc-sweep" configs > /dev/null

step "with the [report] extra: the report draws its plots"
"$BIN/pip" install --quiet "$WHEEL[report]"
"$BIN/o2nc-sweep" report --storage runs/optuna.db --study-name wheel-check --logdir runs
test -s runs/wheel-check/report/history.png
test -s runs/wheel-check/report/report.html
echo
echo "wheel check passed: $(basename "$WHEEL") in $SECONDS s"

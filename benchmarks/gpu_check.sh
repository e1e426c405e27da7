#!/usr/bin/env bash
# GPU check of lightning-o2nc: one call on one CUDA GPU, each part under its own time limit
# (about 8 minutes in all on a current data-center GPU).
#
# Before (on a machine with the Debian package dataset-fashion-mnist, if the GPU machine lacks it):
#     python -m benchmarks.gpu_check prepare     # copies the .gz files to benchmarks/_work/fashion-mnist-gz
# On the GPU machine:
#     bash benchmarks/gpu_check.sh               # part_<name>.json files in $OUT
# Then:
#     python -m benchmarks.gpu_check merge OUT   # -> benchmarks/results/gpu_check.json
#     python -m benchmarks.render                # -> benchmarks/RESULTS.md
#
# Parts (each a separate, time-limited process; a failure loses only that part's numbers):
#   env (machine), sync (tests/optim's host-sync tests and the O2NC-AdamW precision fits on the GPU), sharded (fully_shard on a
#   mesh of 1 against the unsharded step, and a one-rank FSDPStrategy fit), step (CUDA step time vs SGD
#   foreach/fused), train_plain (ResNet-18 on GPU-resident Fashion-MNIST), train_lightning (the same
#   through a Lightning fit).
# Needs only the repository and a python with torch, torchvision and lightning (the repository is
# put on PYTHONPATH). Output in $OUT (or benchmarks/_work/gpu_out): gpu_check.log, part_<name>.json.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/benchmarks/_work/gpu_out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export O2NC_FASHION_MNIST_DIR="${O2NC_FASHION_MNIST_DIR:-$ROOT/benchmarks/_work/fashion-mnist-gz}"
export MPLBACKEND=Agg
T0=$(date +%s)

log() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*"; }

# part NAME SECONDS: run one part under a hard time limit, never aborting the script.
part() {
  local name=$1 limit=$2 start rc
  start=$(date +%s)
  log "part $name: start (limit ${limit}s)"
  if timeout --signal=TERM --kill-after=10 "$limit" "$PY" -m benchmarks.gpu_check "$name" --out "$OUT"; then
    rc=0
  else
    rc=$?
  fi
  log "part $name: exit $rc after $(( $(date +%s) - start ))s$([ "$rc" = 124 ] && echo ' (TIMED OUT)')"
  return 0
}

log "repo $ROOT, out $OUT, python $(command -v "$PY"), data $O2NC_FASHION_MNIST_DIR"
ls -la "$O2NC_FASHION_MNIST_DIR" 2>/dev/null || log "WARNING: no carried Fashion-MNIST folder; the training parts will fail"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || log "nvidia-smi failed"

part env 45
part sync 60
part sharded 60
part step 90
part train_plain 100
part train_lightning 140

log "done; files in $OUT:"
ls -la "$OUT"
sleep 1  # let tee flush the log into $OUT before the call returns

#!/usr/bin/env bash
# GPU check of lightning-o2nc: one prepared call on one GPU (sized for 8 minutes on an H200).
#
# Here, before the device call (copies the Fashion-MNIST .gz files, ~30 MB, into a gitignored folder):
#     .venv/bin/python -m benchmarks.gpu_check prepare
# On the device machine (carry: benchmarks/_work/fashion-mnist-gz; timeout_s: 540):
#     bash benchmarks/gpu_check.sh
# Back here, with the folder the device returned:
#     .venv/bin/python -m benchmarks.gpu_check merge FOLDER     # writes the GPU section of RESULTS.md
#     .venv/bin/python -m benchmarks.run_all --reuse            # targets table + README summary, no rerun
#
# Parts (each a separate, time-limited process; a failure loses only that part's numbers):
#   env (machine), sync (no host sync in any O2NC option), step (CUDA step time vs SGD foreach/fused),
#   train_plain (ResNet-18 on GPU-resident Fashion-MNIST), train_lightning (the same through a
#   Lightning fit), then report (gpu_results.md from whatever finished).
# Needs only the repository and the machine's python3 (torch, torchvision, lightning): nothing is
# installed; the repo is put on PYTHONPATH. Output in $OUT (or benchmarks/_work/gpu_out):
#   gpu_check.log, part_<name>.json, gpu_results.md.
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
part sync 45
part step 90
part train_plain 100
part train_lightning 140
part report 20

log "done; files in $OUT:"
ls -la "$OUT"
sleep 1  # let tee flush the log into $OUT before the call returns

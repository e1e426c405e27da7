#!/usr/bin/env bash
# The GPU check of lightning-o2nc: ONE call on one CUDA GPU, each part a separate process under its
# own time limit (a failed part loses only its own numbers; the limits add up to 9.25 minutes).
#
#   OUT=DIR bash benchmarks/gpu_check.sh    # on the GPU machine: DIR/part_<name>.json, the log,
#                                            # and DIR/gpu_check.json (the parts merged there)
#   cp DIR/gpu_check.json benchmarks/results/ && python -m benchmarks render
#
# Parts (benchmarks/experiments/gpu_check.py): tests (pytest: host syncs, precisions, FSDP), sharded
# (fully_shard on a mesh of 1 against the unsharded step; the sharded step's time), step (the step
# overhead on CUDA), train_lightning (Lightning fit throughput, ResNet-18 on Fashion-MNIST),
# transformer (transformer_evidence.json's best adamw and o2nc_adamw at nanoGPT's GPU size, 3 seeds).
# Needs the repository, a python with torch, torchvision and lightning, and Fashion-MNIST: the
# Debian package dataset-fashion-mnist, or its four .gz files in benchmarks/_work/fashion-mnist-gz
# (cp /usr/share/datasets/fashion-mnist/*.gz there, and carry that folder along); and the plays in
# data/shakespeare (`make data-shakespeare` here, and carry that folder along).
# O2NC_GPU_CHECK_DRY_RUN=1: every part tiny on the CPU, to check the script without a GPU
# (`python -m benchmarks run gpu_check --quick` does that and merges into the work folder).
set -euo pipefail
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/benchmarks/_work/gpu_out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export O2NC_FASHION_MNIST_DIR="${O2NC_FASHION_MNIST_DIR:-$ROOT/benchmarks/_work/fashion-mnist-gz}"
T0=$(date +%s)
SCALE=1  # of the time limits: a dry run on a small shared CPU is slower than the GPU
if [ "${O2NC_GPU_CHECK_DRY_RUN:-0}" != 0 ]; then SCALE=4; fi
log() { echo "[gpu_check +$(($(date +%s) - T0))s] $*"; }

# part NAME SECONDS: one part under a hard time limit, never aborting the script.
part() {
  local name=$1 limit=$(($2 * SCALE)) start=$(date +%s) rc=0
  log "part $name: start (limit ${limit}s)"
  timeout --signal=TERM --kill-after=10 "$limit" "$PY" -c \
    'import sys; from benchmarks.experiments.gpu_check import part; part(*sys.argv[1:])' \
    "$name" "$OUT" || rc=$?
  log "part $name: exit $rc after $(($(date +%s) - start))s$([ "$rc" = 124 ] && echo ' (TIMED OUT)')"
}

log "repo $ROOT, out $OUT, python $(command -v "$PY"), dry run ${O2NC_GPU_CHECK_DRY_RUN:-0}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || log "no nvidia-smi"
"$PY" -c 'import torch, os; assert torch.cuda.is_available() or os.environ.get("O2NC_GPU_CHECK_DRY_RUN"), "no CUDA"'

part tests 130
part sharded 50
part step 75
part train_lightning 110
part transformer 190

log "merging the parts into $OUT/gpu_check.json"
"$PY" -c 'import sys
from pathlib import Path
from benchmarks.experiments import get
from benchmarks.harness import run_experiment
run_experiment(get("gpu_check"), overrides={"parts": sys.argv[1]}, results_dir=Path(sys.argv[1]))' "$OUT"
log "done; files in $OUT:"
ls -la "$OUT"
sleep 1  # let tee flush the log into $OUT before the call returns

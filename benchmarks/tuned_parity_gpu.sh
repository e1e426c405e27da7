#!/usr/bin/env bash
# The tuned comparison's longer budget on one CUDA GPU (sized for about 8 minutes on a large one):
# full Fashion-MNIST (55k training images per epoch), 30 epochs, 5 seeds per arm at each arm's
# configuration tuned on the CPU (benchmarks/results/tuned_parity.json; no tuning here), tested
# on the full test set at x, x_bar and the longer x_bar horizons; 8 runs share the GPU at a time.
# Writes benchmarks/results/tuned_parity_gpu.json and its plot; `python -m benchmarks.render`
# puts it into RESULTS.md. Extra arguments go to benchmarks.tuned_parity, for example
#   bash benchmarks/tuned_parity_gpu.sh --set 'data.init_args.system_dirs=[/path/to/fashion-mnist]'
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m benchmarks.tuned_parity \
  --best-from benchmarks/results/tuned_parity.json --name tuned_parity_gpu \
  --epochs 30 --seeds 0 1 2 3 4 --workers 8 \
  --set trainer.accelerator=gpu \
  --set trainer.limit_train_batches=1.0 \
  --set trainer.limit_val_batches=1.0 \
  --set trainer.limit_test_batches=1.0 \
  "$@"

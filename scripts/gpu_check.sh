#!/usr/bin/env bash
# One GPU check (about 5-8 minutes on one GPU): the tests that need CUDA, the training and the
# prediction benchmarks with --device cuda, and a short fine-tuning run, all written to
# results/gpu/. Run from the repository root on a machine with a CUDA device:
#
#   bash scripts/gpu_check.sh [DATA [LAYOUT]]
#
# DATA defaults to CamVid at ../shared/data/camvid when it exists, else a generated dataset
# (segcl's synthetic generator, 256 train + 32 val images at 192x256). Every step has its own
# time limit, so one slow step cannot eat the rest of a short GPU loan.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_OUT:-results/gpu}
mkdir -p "$OUT"
DATA=${1:-}
LAYOUT=${2:-auto}
if [ -z "$DATA" ]; then
  if [ -d ../shared/data/camvid ]; then DATA=../shared/data/camvid; LAYOUT=camvid
  else
    DATA=$OUT/synthetic
    python -c "from segcl.data.synthetic import make_synthetic_dataset as m; m('$DATA', n_train=256, n_val=32, size=(192, 256), seed=0)"
  fi
fi
step() {  # step NAME LIMIT_S COMMAND...: run, log to $OUT/NAME.txt, record the exit status
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" | tee "$OUT/$name.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" >> "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
}
: > "$OUT/summary.txt"
step device 30 bash -c "nvidia-smi; python -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))'"
step cuda_tests 120 python -m pytest -q -rs tests/test_metrics.py -k cuda
step bench_train 180 python scripts/bench_train.py "$DATA" --layout "$LAYOUT" --device cuda \
  --methods finetune,semi --image-size 192x256 --batch-sizes 8,16 --cache on --steps 30 \
  --warmup 5 --workers 8 --json "$OUT/bench_train.json"
step finetune 150 python -m segcl finetune "$DATA" --layout "$LAYOUT" --device cuda \
  --image-size 192x256 --steps 300 --batch-size 16 --workers 8 --loss ce+dice \
  --val-every 1000 --out "$OUT/run" --overwrite --quiet
step bench_predict 90 python scripts/bench_predict.py "$OUT/run" "$DATA/val/images" \
  --device cuda --limit 64 --batch-size 16
cat "$OUT/summary.txt"

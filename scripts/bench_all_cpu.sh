#!/usr/bin/env bash
# Every CPU throughput row of issue 13 in one go, on an otherwise idle machine (about 15 minutes
# on 2 cores with the defaults). Writes results/bench/*.txt.
#
#   bash scripts/bench_all_cpu.sh RUN [DATA [LAYOUT]]
#
# RUN: a CamVid checkpoint (run folder or checkpoint folder with config.json + model.safetensors)
# for the prediction rows; DATA (default ../shared/data/camvid) and LAYOUT (default camvid).
# BEFORE (default: the merge-base with main) is the commit whose bench_predict.py and library
# give the "before" prediction rows (extracted with git archive; skipped when BEFORE=none).
# Knobs for a quick dry run: STEPS, WARMUP, LIMIT, REPEATS, ENCODER, SIZE, BIG, BATCHES,
# FRACTION, OUT; ONLY=predict,batches,big,procs runs some parts.
set -euo pipefail
RUN=${1:?usage: bench_all_cpu.sh RUN [DATA [LAYOUT]]}
DATA=${2:-../shared/data/camvid}
LAYOUT=${3:-camvid}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/results/bench}
STEPS=${STEPS:-10} WARMUP=${WARMUP:-3} LIMIT=${LIMIT:-101} REPEATS=${REPEATS:-2}
ENCODER=${ENCODER:-resnet18} SIZE=${SIZE:-96x128} BIG=${BIG:-192x256} BATCHES=${BATCHES:-4,8,16}
FRACTION=${FRACTION:-0.125} ONLY=${ONLY:-predict,batches,big,procs}
IMAGES=${IMAGES:-$DATA/val/images}
BEFORE=${BEFORE:-$(git -C "$REPO" merge-base HEAD main 2>/dev/null || echo none)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$OUT"
train() { PYTHONPATH=$REPO python "$REPO/scripts/bench_train.py" "$DATA" --layout "$LAYOUT" \
  --encoder "$ENCODER" --methods finetune --labeled-fraction "$FRACTION" --steps "$STEPS" \
  --warmup "$WARMUP" "$@"; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }
log() { echo "== $(date +%T) $*" >&2; }

if want predict; then
log "prediction, after ($(git -C "$REPO" rev-parse --short HEAD))"
PYTHONPATH=$REPO python "$REPO/scripts/bench_predict.py" "$RUN" "$IMAGES" --limit "$LIMIT" \
  --repeats "$REPEATS" --device cpu | tee "$OUT/predict_after.txt"
if [ "$BEFORE" != none ]; then
  log "prediction, before ($BEFORE)"
  old=$(mktemp -d)
  trap 'rm -rf "$old"' EXIT
  git -C "$REPO" archive "$BEFORE" segcl scripts/bench_predict.py | tar -x -C "$old"
  PYTHONPATH=$old python "$old/scripts/bench_predict.py" "$RUN" "$IMAGES" --limit "$LIMIT" \
    --repeats "$REPEATS" --device cpu | tee "$OUT/predict_before.txt"
fi
fi
if want batches; then
log "training: batch sizes $BATCHES at $SIZE"
train --image-size "$SIZE" --batch-sizes "$BATCHES" | tee "$OUT/train_batches.txt"
fi
if want big; then
log "training: $BIG, batch 8"
train --image-size "$BIG" --batch-sizes 8 | tee "$OUT/train_${BIG}.txt"
fi
if want procs; then
log "training: 1 process (2 threads) vs 2 processes (1 thread each), batch 8 per process"
{ train --image-size "$SIZE" --batch-sizes 8
  OMP_NUM_THREADS=1 train --image-size "$SIZE" --batch-sizes 8 --nproc 2; } \
  | tee "$OUT/train_processes.txt"
fi
log "done: $OUT"

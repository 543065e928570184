#!/usr/bin/env bash
# Attacks of a preset on one GPU lease (the paper's regime: width 64, 100 epochs), written for
# the device tool's limits: one command of at most 10 minutes, files back only from $OUT (at
# most 8, 16 MiB each, 64 MiB together), nothing kept between leases.
#
#   here:        make gpu-data       # CIFAR-10 tarball, triggers and the commit into .gpu-data/
#                bash experiments/gpu/travel.sh hide   # the committed models stay here (64 MiB limit)
#   on the GPU:  bash experiments/gpu/run.sh badnets blended   (device run, carry [".gpu-data"])
#   back here:   bash experiments/gpu/travel.sh restore; bash experiments/gpu/collect.sh DIR
#
# Stages, each packed into $OUT as soon as it ends, so a command cut off still returns what it
# finished: 0) seconds per epoch by precision (train_gpu.json, benchmarks/train_gpu.py); then per
# attack 1) training (none.json, model.pt), 2) DeepFool over the training set in float32
# (deepfool.npz) and Burn with the defaults (burn.json), 3) Burn's opt-ins. An attack's results
# folder travels as <attack>.tar.part-NN (15 MiB parts). A stage starts only when the time it
# took before (or the sizing's estimate) fits in what is left of BUDGET seconds. log.txt holds
# everything.
# COMPILE=reduce-overhead trains through torch.compile with CUDA graphs (Runtime.compile) and
# measures TF32 eager against compiled in stage 0 (float32 and bf16 are in
# results/benchmarks/train_gpu.json); not measured on a GPU yet, so not the default.
# A CPU dry run: PRESET=smoke DEVICE=cpu PYTHON=.venv/bin/python OUT=/tmp/out bash experiments/gpu/run.sh badnets
set -uo pipefail
ATTACKS=${*:-badnets}
PRESET=${PRESET:-paper}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-540}
PY=${PYTHON:-python3}
OUT=${OUT:?set OUT to the folder whose files come back}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONPATH=$ROOT/src PYTHONUNBUFFERED=1 BURN_CACHE=${BURN_CACHE:-/tmp/burn-cache}
if [ -d "$ROOT/.gpu-data" ]; then
  export BURN_DATA=$ROOT/.gpu-data BURN_TRIGGERS=$ROOT/.gpu-data/triggers
  [ -f "$ROOT/.gpu-data/commit" ] && read -r BURN_GIT_COMMIT BURN_GIT_DIRTY < "$ROOT/.gpu-data/commit" \
    && export BURN_GIT_COMMIT BURN_GIT_DIRTY
fi
RES=/tmp/burn-results
LOG=$OUT/log.txt
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
say() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
burn() { "$PY" -m burn.cli "$@" --preset "$PRESET" --device "$DEVICE" ${COMPILE:+--compile "$COMPILE"} \
  --results-root "$RES" --quiet 2>&1 | tee -a "$LOG"; }
DATASET=$("$PY" -c "from burn.config import load_preset; print(load_preset('$PRESET').data.dataset)")
folder() { echo "$RES/$PRESET/$DATASET/$1"; }
pack() {  # the attack's results folder (without variants/) into $OUT as 15 MiB parts
  local d; d=$(folder "$1"); [ -d "$d" ] || return 0
  rm -rf "/tmp/pack-$1" && mkdir -p "/tmp/pack-$1"
  tar -C "$d" --exclude=variants -cf "/tmp/pack-$1/$1.tar" . \
    && split -b 15M -d "/tmp/pack-$1/$1.tar" "/tmp/pack-$1/$1.tar.part-" && rm "/tmp/pack-$1/$1.tar" \
    && rm -f "$OUT/$1.tar.part-"* && mv "/tmp/pack-$1/"* "$OUT/"
}
fits() { [ "$(left)" -gt "$1" ] || { say "skipped: $2 needs about $1 s, $(left) s left"; return 1; }; }
mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >> "$LOG"

say "stage 0: seconds per epoch by precision"
"$PY" "$ROOT/benchmarks/train_gpu.py" --device "$DEVICE" --out "$OUT/train_gpu.json" \
  $([ "$PRESET" = smoke ] && echo "--width 4 --n 512") ${COMPILE:+--precisions tf32 --compile "$COMPILE"} 2>&1 | tee -a "$LOG"
# training at the measured TF32 epoch (3.2 s on an H200), plus DeepFool and Burn (96 s + 36 s
# there on 2026-11-28): the first attack's estimate; later ones use what the first one took
NEED=$("$PY" -c "
import json; from burn.config import load_preset
rows = {r['precision']: min(r['epoch_s']) for r in json.load(open('$OUT/train_gpu.json'))['rows']}
print(int(load_preset('$PRESET').train.epochs * rows['tf32'] * 1.05 + 150))" 2>/dev/null || echo 500)

for A in $ATTACKS; do
  fits "$NEED" "$A (training, DeepFool, Burn)" || break
  t=$(date +%s)
  say "stage 1: $A training"; burn attack --attack "$A"; pack "$A"
  say "stage 2: $A DeepFool + Burn"; burn defend --attack "$A"; pack "$A"
  NEED=$(( $(date +%s) - t + 30 ))
  say "$A: training + DeepFool + Burn took $(( NEED - 30 )) s"
  for opt in "burn.lambda_end=0.5 lambda_end_0.5" "burn.selection=suspect_class suspect_class"; do
    set -- $opt
    fits 60 "$A Burn $2" || continue  # 45 s each on an H200 (DeepFool stored)
    say "stage 3: $A Burn $2"; burn defend --attack "$A" --set "$1" --tag "$2"; pack "$A"
  done
done
say "done"

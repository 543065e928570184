#!/usr/bin/env bash
# One attack of a preset on one GPU lease (the paper's regime: width 64, 100 epochs), written
# for the device tool's limits: one command of at most 10 minutes, files back only from $OUT
# (at most 8, 16 MiB each, flat), nothing kept between leases.
#
#   here:        make gpu-data       # CIFAR-10 tarball + triggers into .gpu-data/ (git-ignored)
#   on the GPU:  bash experiments/gpu/run.sh badnets      (device run, carry [".gpu-data"])
#   back here:   bash experiments/gpu/collect.sh DIR      (DIR: the files that came back)
#
# Stages, each written to $OUT as soon as it ends, so a command cut off still returns what it
# finished: 1) two epochs, timed, to size the rest (e2_none.json); 2) the full training
# (none.json, model.pt split into model.pt.part-*); 3) DeepFool over the training set in
# float32 (deepfool.npz); 4) Burn with the defaults (burn.json). log.txt holds everything.
# A CPU dry run: PRESET=smoke DEVICE=cpu PYTHON=.venv/bin/python OUT=/tmp/out bash experiments/gpu/run.sh badnets
set -uo pipefail
ATTACK=${1:-badnets}
PRESET=${PRESET:-paper}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
OUT=${OUT:?set OUT to the folder whose files come back}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONPATH=$ROOT/src PYTHONUNBUFFERED=1 BURN_CACHE=${BURN_CACHE:-/tmp/burn-cache}
[ -d "$ROOT/.gpu-data" ] && export BURN_DATA=$ROOT/.gpu-data BURN_TRIGGERS=$ROOT/.gpu-data/triggers
RES=/tmp/burn-results
LOG=$OUT/log.txt
burn() { "$PY" -m burn.cli "$@" --device "$DEVICE" --results-root "$RES" --quiet 2>&1 | tee -a "$LOG"; }
folder() { echo "$RES/$PRESET/$("$PY" -c "from burn.config import load_preset; print(load_preset('$PRESET').data.dataset)")/$ATTACK$1"; }
mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >> "$LOG"

t0=$(date +%s)
burn attack --preset "$PRESET" --attack "$ATTACK" --set train.epochs=2 --variant gpu-e2
cp "$(folder /variants/gpu-e2)/none.json" "$OUT/e2_none.json" 2>/dev/null
echo "stage 1 (2 epochs): $(( $(date +%s) - t0 )) s" | tee -a "$LOG"

t1=$(date +%s)
burn attack --preset "$PRESET" --attack "$ATTACK"
D=$(folder "")
cp "$D/none.json" "$OUT/none.json" 2>/dev/null && split -b 15M -d "$D/model.pt" "$OUT/model.pt.part-"
echo "stage 2 (training): $(( $(date +%s) - t1 )) s" | tee -a "$LOG"

t2=$(date +%s)
burn defend --preset "$PRESET" --attack "$ATTACK"
cp "$D/deepfool.npz" "$D/burn.json" "$OUT/" 2>/dev/null
echo "stages 3-4 (DeepFool + Burn): $(( $(date +%s) - t2 )) s; all: $(( $(date +%s) - t0 )) s" | tee -a "$LOG"

#!/usr/bin/env bash
# Put the files a GPU run returned (experiments/gpu/run.sh) into results/<preset>/<dataset>/<attack>/.
# Usage: bash experiments/gpu/collect.sh DIR [ATTACK] [PRESET]. model.pt is joined from its
# parts and every file is checked by loading it (checksums), so nothing damaged is committed.
set -euo pipefail
DIR=$1; ATTACK=${2:-badnets}; PRESET=${3:-paper}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEST=$ROOT/results/$PRESET/cifar10/$ATTACK
mkdir -p "$DEST"
[ -f "$DIR/model.pt.part-00" ] && cat "$DIR"/model.pt.part-* > "$DEST/model.pt"
for f in none.json deepfool.npz burn.json; do [ -f "$DIR/$f" ] && cp "$DIR/$f" "$DEST/$f"; done
cd "$ROOT" && "${PYTHON:-.venv/bin/python}" - "$DEST" <<'PY'
import sys
from pathlib import Path
from burn.cache import load_npz, load_torch, read_json
d = Path(sys.argv[1])
for f in sorted(d.iterdir()):
    if f.suffix == ".json": read_json(f)
    elif f.suffix == ".npz": load_npz(f)
    elif f.name == "model.pt": load_torch(f)
    print("ok", f)
PY

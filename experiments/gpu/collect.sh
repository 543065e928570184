#!/usr/bin/env bash
# Put what a GPU run returned (experiments/gpu/run.sh) into results/<preset>/<dataset>/.
# Usage: bash experiments/gpu/collect.sh DIR [PRESET]. Each <attack>.tar.part-NN set is joined
# and unpacked into a scratch folder; every file is checked by loading it (checksums) before it
# is copied to results/<preset>/cifar10/<attack>/, and a file already there with other bytes is
# never overwritten (the script stops and names it).
set -euo pipefail
DIR=$1; PRESET=${2:-paper}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
for first in "$DIR"/*.tar.part-00; do
  [ -e "$first" ] || { echo "no <attack>.tar.part-00 in $DIR" >&2; exit 1; }
  attack=$(basename "$first" .tar.part-00)
  mkdir -p "$SCRATCH/$attack"
  cat "$DIR/$attack.tar.part-"* | tar -x -C "$SCRATCH/$attack"
done
cd "$ROOT" && "${PYTHON:-.venv/bin/python}" - "$SCRATCH" "$ROOT/results/$PRESET/cifar10" <<'PY'
import filecmp, shutil, sys
from pathlib import Path
from burn.cache import load_npz, load_torch, read_json
src, dest = Path(sys.argv[1]), Path(sys.argv[2])
files = [f for f in sorted(src.rglob("*")) if f.is_file()]
for f in files:  # all checked before anything is copied
    if f.suffix == ".json": read_json(f)
    elif f.suffix == ".npz": load_npz(f)
    elif f.suffix == ".pt": load_torch(f)
    target = dest / f.relative_to(src)
    if target.exists() and not filecmp.cmp(f, target, shallow=False):
        sys.exit(f"{target} exists with other contents: move it away first (nothing was copied)")
for f in files:
    target = dest / f.relative_to(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(f, target)
    print("ok", target.relative_to(dest.parents[2]))
PY

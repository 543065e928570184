"""Give every stored result file the checksum that the loaders verify (2026-11-28).

Files written before checksums existed are read as they are; this script adds one to each, so
that from now on a damaged copy is detected: a ``checksum`` field in every JSON record and
sidecar, a ``checksum`` array in every ``.npz``, a ``sha256`` of the weights in every
``model.pt``. Contents are otherwise unchanged (each file is read back and compared).
Idempotent: ``python experiments/migrations/seal_checksums.py [ROOT ...]`` (default: results/
and figures/).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from burn.cache import load_npz, load_torch, read_json, save_npz, save_torch, tensors_sha256, write_json
from burn.config import PROJECT_ROOT


def seal(path: Path) -> bool:
    """Add the checksum to one file; True if it was rewritten."""
    if path.suffix == ".json":
        raw = path.read_text()
        data = read_json(path)
        if '"checksum"' in raw or not isinstance(data, dict):
            return False
        write_json(path, data)
        assert read_json(path) == data
        return True
    if path.suffix == ".npz":
        arrays = load_npz(path)
        with np.load(path) as z:
            if "checksum" in z.files:
                return False
        save_npz(path, **arrays)
        back = load_npz(path)
        assert all(np.array_equal(back[k], v) for k, v in arrays.items())
        return True
    if path.name == "model.pt":
        saved = load_torch(path)
        if "sha256" in saved:
            return False
        saved["sha256"] = tensors_sha256(saved["state_dict"])
        save_torch(saved, path)
        return load_torch(path)["sha256"] == saved["sha256"]
    return False


def main(roots) -> int:
    n = 0
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and seal(path):
                n += 1
    print(f"sealed {n} files")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main(sys.argv[1:] or [PROJECT_ROOT / "results", PROJECT_ROOT / "figures"]))

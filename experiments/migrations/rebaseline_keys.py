"""Re-key the results committed before the re-baseline on BackdoorBench's setting (2026-11-28).

The re-baseline changed the config schema, and so every config hash: ``model.final_bn_relu``
and ``attack.pool`` were added (the earlier results used a final BatchNorm-ReLU and the
non-target pool, which their presets now set explicitly), ``train.channels_last`` and
``deepfool.batch_size`` moved to the runtime (speed only, outside every hash). The models,
distances and Burn runs themselves are unchanged; only their keys are.

For every committed folder this script recomputes the old key from the stored config (and
checks that it equals the stored one, so nothing is re-keyed on a guess), computes the new key
with the current code from the same settings, and rewrites the keys in place: ``model.pt``,
``none.json``, ``deepfool*.npz``, ``burn*.json``, ``unlearning_budget.json``, the sidecars, and
the ablation folder names. Run once: ``python experiments/migrations/rebaseline_keys.py``.
It refuses to run on results that are already re-keyed (their stored keys are new keys).
``--configs`` (the second step, run after the first) rewrites the configs stored in those
records and models in the new schema, so each file shows its own head and poison pool; it
checks that each rewritten config hashes to the record's (new) key.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from burn import keys
from burn.atomic import atomic_path, write_text
from burn.cache import load_torch, save_torch
from burn.config import PROJECT_ROOT, ExperimentCfg, from_dict
from burn.defenses import Burn

RESULTS = PROJECT_ROOT / "results"


def new_cfg(old: dict) -> ExperimentCfg:
    """The stored (old-schema) config in the new schema, with the earlier results' settings."""
    c = json.loads(json.dumps(old))
    c["model"].setdefault("final_bn_relu", True)
    c["attack"].setdefault("pool", "non_target")
    c["train"].pop("channels_last", None)
    c["deepfool"].pop("batch_size", None)
    return from_dict(ExperimentCfg, c)


def old_attack_key(old: dict, data_name: str) -> str:
    """The key of a config stored in the old schema (its sections as the dicts stored)."""
    return keys.attack_key_of(data_name, old["data"], old["model"], old["train"], old["attack"])


def folder_keys(folder: Path, mapping: dict) -> None:
    """Add this folder's old -> new keys (attack, DeepFool, subsets, Burn, ablation, Fig. 6)."""
    rec = json.loads((folder / "none.json").read_text())
    old, data_name = rec["config"], rec["dataset"]
    ok = old_attack_key(old, data_name)
    assert ok == rec["config_hash"], (folder, ok, rec["config_hash"])
    cfg = new_cfg(old)
    nk = keys.attack_key(cfg, data_name)
    mapping[ok] = nk
    old_df = old["deepfool"]
    odk = keys.distances_key(ok, old_df)
    ndk = keys.distances_key(nk, cfg.deepfool)
    mapping[odk] = ndk
    for npz in folder.glob("deepfool_*.npz"):
        with np.load(npz) as z:
            index = z["index"].tolist()
            stored = str(z["key"])
        o = keys.subset_distances_key(ok, old_df, index)
        assert o == stored, (npz, o, stored)
        mapping[o] = keys.subset_distances_key(nk, cfg.deepfool, index)
    for f in [*folder.glob("burn*.json"), *folder.glob("ablation/*/burn.json")]:
        b = json.loads(f.read_text())
        bc = from_dict(Burn, b["config"]["burn"])
        o = keys.burn_key(bc, ok, b["deepfool"]["key"])
        assert o == b["config_hash"] and b["deepfool"]["key"] == odk, f
        mapping[o] = keys.burn_key(bc, nk, ndk)
        if f.parent.parent.name == "ablation":
            mapping[keys.ablation_key(ok, bc)] = keys.ablation_key(nk, bc)
    budget = folder / "unlearning_budget.json"
    if budget.is_file():
        for k, row in json.loads(budget.read_text()).items():
            bc = from_dict(Burn, old["burn"])
            parts = (row["n_poisoned"], row["n_clean"], row["labels"], 0)
            o = keys.unlearning_budget_key(ok, odk, bc, *parts)
            assert o == k, (budget, k)
            mapping[o] = keys.unlearning_budget_key(nk, ndk, bc, *parts)


def rewrite(folder_root: Path, mapping: dict) -> int:
    """Replace every old key by its new key in the files under ``folder_root``."""
    n = 0
    for f in sorted(folder_root.rglob("*")):
        if f.suffix == ".json" or f.name.endswith(".csv.json") or f.suffix == ".md":
            text = f.read_text()
            new = text
            for o, k in mapping.items():
                new = new.replace(o, k)
            if new != text:
                write_text(f, new)
                n += 1
        elif f.suffix == ".npz":
            with np.load(f) as z:
                arrays = {k: z[k] for k in z.files}
            if str(arrays["key"]) in mapping:
                arrays["key"] = np.array(mapping[str(arrays["key"])])
                with atomic_path(f, suffix=".npz") as tmp:
                    np.savez_compressed(tmp, **arrays)
                n += 1
        elif f.name == "model.pt":
            saved = load_torch(f)
            if saved["config_hash"] in mapping:
                saved["config_hash"] = mapping[saved["config_hash"]]
                saved["config"] = json.loads(json.dumps(saved["config"]))
                save_torch(saved, f)
                n += 1
    for d in sorted(folder_root.rglob("ablation/*")):
        if d.is_dir() and d.name in mapping:
            shutil.move(d, d.with_name(mapping[d.name]))
            n += 1
    return n


def update_configs(root: Path) -> int:
    """Rewrite the old-schema ``config`` stored in records and models under ``root``."""
    from burn.cache import read_json, write_json
    from burn.config import to_dict

    n = 0
    for f in sorted(root.rglob("none.json")):  # the non-target pool put no poison in the target class
        data = read_json(f)
        if "num_poisoned_target_class" not in data and data["config"]["attack"].get("pool") == "non_target":
            write_json(f, {**data, "num_poisoned_target_class": 0})
            n += 1
    for f in sorted(root.rglob("*")):
        if f.suffix == ".json" and f.name != "regime.csv.json":
            data = read_json(f)
            cfg = data.get("config") if isinstance(data, dict) else None
            if not (isinstance(cfg, dict) and "model" in cfg and "final_bn_relu" not in cfg["model"]):
                continue
            new = new_cfg(cfg)
            if f.name == "none.json":
                assert keys.attack_key(new, data["dataset"]) == data["config_hash"], f
            write_json(f, {**data, "config": to_dict(new)})
            n += 1
        elif f.name == "model.pt":
            saved = load_torch(f)
            if "final_bn_relu" not in saved["config"]["model"]:
                saved["config"] = to_dict(new_cfg(saved["config"]))
                save_torch(saved, f)
                n += 1
    return n


def main() -> int:
    if "--configs" in sys.argv:
        print(f"rewrote the configs of {update_configs(RESULTS / 'cpu-w16')} files")
        return 0
    folders = sorted(p.parent for p in RESULTS.glob("cpu-w16/**/none.json"))
    mapping: dict[str, str] = {}
    for folder in folders:
        folder_keys(folder, mapping)
    assert not set(mapping) & set(mapping.values()), "old and new keys collide"
    print(f"{len(folders)} model folders, {len(mapping)} keys")
    print(f"rewrote {rewrite(RESULTS / 'cpu-w16', mapping)} files")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())

"""Damaged files stop a run with one line that names the file and says how to recover;
nothing damaged is trusted, and nothing stored is overwritten by another config."""

import json
import os

import numpy as np
import pytest
import torch

from burn.cache import (
    DamagedFileError,
    load_npz,
    load_torch,
    read_json,
    save_npz,
    save_torch,
    tensors_sha256,
    write_json,
)
from burn.cli import main


def _flip(path, n=400, offset=None):
    """Flip ``n`` bytes in the middle of ``path`` (or from ``offset``)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    for i in range(start, min(start + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_json_checksum_catches_truncation_and_edits(tmp_path):
    p = tmp_path / "none.json"
    write_json(p, {"acc": 0.8263, "asr": 0.9408, "nested": {"t": [1, 2]}})
    assert read_json(p) == {"acc": 0.8263, "asr": 0.9408, "nested": {"t": [1, 2]}}
    p.write_text(p.read_text().replace("0.8263", "0.9263"))
    with pytest.raises(DamagedFileError, match="does not match its checksum"):
        read_json(p)
    p.write_text(p.read_text()[:20])
    with pytest.raises(DamagedFileError, match="none.json is damaged .not valid JSON") as e:
        read_json(p)
    assert "git checkout --" in str(e.value)


def test_npz_checksum_catches_truncation_and_bit_flips(tmp_path):
    p = tmp_path / "deepfool.npz"
    norms = np.random.default_rng(0).random(5000).astype(np.float32)
    save_npz(p, key=np.array("abc"), norms=norms)
    z = load_npz(p)
    assert str(z["key"]) == "abc" and np.array_equal(z["norms"], norms) and "checksum" not in z
    good = p.read_bytes()
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(DamagedFileError, match="deepfool.npz is damaged .cannot be read"):
        load_npz(p)
    p.write_bytes(good)
    _flip(p, n=8)
    with pytest.raises(DamagedFileError, match="deepfool.npz is damaged"):
        load_npz(p)


def test_model_file_checksum_and_truncation(tmp_path):
    p = tmp_path / "model.pt"
    state = {"w": torch.randn(64, 64).half(), "n": torch.tensor(3)}
    save_torch({"config_hash": "k", "state_dict": state, "sha256": tensors_sha256(state)}, p)
    assert torch.equal(load_torch(p)["state_dict"]["w"], state["w"])
    state2 = {"w": state["w"].clone(), "n": state["n"]}
    state2["w"][0, 0] = float("inf")
    save_torch({"config_hash": "k", "state_dict": state2, "sha256": tensors_sha256(state)}, p)
    with pytest.raises(DamagedFileError, match="weights do not match their checksum"):
        load_torch(p)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DamagedFileError, match="model.pt is damaged .cannot be loaded"):
        load_torch(p)


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    assert main(["attack", "--preset", "smoke", "--results-root", str(root), "--quiet"]) == 0
    return root


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("burn: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_damaged_committed_model_is_refused_by_the_cli(smoke_results, tmp_path, capsys):
    import shutil

    root = tmp_path / "r"
    shutil.copytree(smoke_results, root)
    model = root / "smoke" / "synthetic" / "badnets" / "model.pt"
    args = ["attack", "--preset", "smoke", "--results-root", str(root), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "measured now on the stored model" in out and "stored in none.json" in out
    _flip(model, n=400)
    err = _one_line_error(capsys, args)
    assert "model.pt is damaged" in err and ("--retrain" in err or "git checkout" in err)
    model.write_bytes(model.read_bytes()[:1000])
    assert "model.pt is damaged" in _one_line_error(capsys, args)


def test_a_model_that_does_not_reproduce_its_record_is_refused(smoke_results, tmp_path, capsys):
    import shutil

    root = tmp_path / "r"
    shutil.copytree(smoke_results, root)
    rec = root / "smoke" / "synthetic" / "badnets" / "none.json"
    data = read_json(rec)
    write_json(rec, {**data, "acc": data["acc"] - 0.05})  # a consistent but wrong record
    err = _one_line_error(capsys, ["attack", "--preset", "smoke", "--results-root", str(root), "--quiet"])
    assert "does not reproduce the numbers of none.json" in err


def test_defend_refuses_a_non_default_config_without_a_tag(smoke_results, capsys):
    err = _one_line_error(capsys, ["defend", "--preset", "smoke", "--results-root", str(smoke_results),
                                   "--set", "burn.divergence=js", "--quiet"])
    assert "--tag" in err
    assert not (smoke_results / "smoke" / "synthetic" / "badnets" / "burn.json").exists()


@pytest.mark.parametrize("setting, message", [
    ("train.epochs=three", "train.epochs must be an integer, got 'three'"),
    ("train.epochs=3.5", "train.epochs must be an integer, got 3.5"),
    ("train.lr=abc", "train.lr must be a number, got 'abc'"),
    ("model.width=-1", "model.width must be > 0, got -1"),
    ("train.augment=maybe", "train.augment must be true or false, got 'maybe'"),
    ("attack.rate=1.5", "attack.rate must be a fraction in [0, 1], got 1.5"),
    ("defenses.burn.divergence=kld", "defenses.burn.divergence must be one of ['kl', 'js', 'l2'], got 'kld'"),
    ("burn.divergence=kld", "defenses.burn.divergence must be one of"),  # the former spelling
    ("defenses.fp.epochs=2.5", "defenses.fp.epochs must be an integer, got 2.5"),
    ("train=3", "train is a section, not a value"),
])
def test_set_is_checked_against_the_schema_before_any_data_is_loaded(setting, message, tmp_path, capsys):
    # the data root is empty: the error must come from the schema, before data loading
    err = _one_line_error(capsys, ["attack", "--preset", "cpu", "--data-root", str(tmp_path),
                                   "--set", setting, "--quiet"])
    assert message in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only folder")
def test_unwritable_results_folder_is_found_before_training(tmp_path, capsys):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    err = _one_line_error(capsys, ["attack", "--preset", "smoke", "--results-root", str(root), "--quiet"])
    assert "cannot write results to" in err


def test_unwritable_results_folder_as_root(tmp_path, capsys):
    """As root (CI here), a results root that is a file is the unwritable case."""
    root = tmp_path / "file"
    root.write_text("")
    err = _one_line_error(capsys, ["attack", "--preset", "smoke", "--results-root", str(root), "--quiet"])
    assert "cannot write results to" in err and "--results-root" in err


def test_records_keep_their_checksum_on_disk(smoke_results):
    rec = json.loads((smoke_results / "smoke" / "synthetic" / "badnets" / "none.json").read_text())
    assert len(rec["checksum"]) == 16

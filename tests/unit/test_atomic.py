"""Atomic writes: a failed write leaves the previous file intact and no temporary behind."""

import numpy as np
import pytest

from burn.atomic import atomic_path
from burn.cache import read_json, write_json


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"acc": 0.8})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text('{"acc": 0.')  # half written, then the run dies
            raise RuntimeError("interrupted")
    assert read_json(path) == {"acc": 0.8}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_suffix_for_writers_that_append_one(tmp_path):
    path = tmp_path / "sub" / "arrays.npz"
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, a=np.arange(3))
    with np.load(path) as z:
        assert z["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["arrays.npz"]

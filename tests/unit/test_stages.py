"""The one mechanism of cached stages (``burn.stages.cached``) over each kind of store."""

import numpy as np
import pandas as pd
import pytest

from burn.cache import DamagedFileError
from burn.stages import EntryStore, JsonStore, NpzStore, TableStore, TorchStore, cached


def _counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value
    return compute, calls


@pytest.mark.parametrize("make, value", [
    (lambda p: JsonStore(p / "r.json"), {"acc": 0.5}),
    (lambda p: NpzStore(p / "d.npz"), {"norms": np.arange(3, dtype=np.float32)}),
    (lambda p: TableStore(p / "t.csv"), pd.DataFrame({"a": [1, 2]})),
    (lambda p: EntryStore(p / "rows.json", "k1"), {"n": 5}),
    (lambda p: TorchStore(p / "x.pt"), {"t": 1}),
], ids=["json", "npz", "csv", "entry", "torch"])
def test_computed_once_reused_and_recomputed_for_another_key(tmp_path, make, value):
    store = make(tmp_path)
    compute, calls = _counting(value)
    first = cached(store, "k1", compute)
    again = cached(store, "k1", compute)
    assert len(calls) == 1
    if isinstance(value, pd.DataFrame):
        assert first.equals(again)
    elif isinstance(store, NpzStore):
        assert np.array_equal(first["norms"], again["norms"]) and str(again["key"]) == "k1"
    else:
        assert first == again
    cached(store, "k1", compute, rerun=True)
    assert len(calls) == 2
    if not isinstance(store, EntryStore):  # an entry store keys each entry separately
        cached(store, "k2", compute)
        assert len(calls) == 3 and store.stored_key() == "k2"


def test_a_conflicting_result_is_refused_not_replaced(tmp_path):
    store = JsonStore(tmp_path / "r.json")
    cached(store, "k1", lambda: {"v": 1})
    with pytest.raises(RuntimeError, match="k1"):
        cached(store, "k2", lambda: {"v": 2}, conflict=lambda old: RuntimeError(f"holds {old}"))
    assert store.load()["v"] == 1
    assert cached(store, "k2", lambda: {"v": 2}, rerun=True)["v"] == 2  # replacing is explicit


def test_a_damaged_store_is_reported_with_its_recovery(tmp_path):
    store = JsonStore(tmp_path / "r.json", redo="compute it again with --rerun")
    cached(store, "k1", lambda: {"v": 1})
    store.path.write_text(store.path.read_text()[:-10])
    with pytest.raises(DamagedFileError, match="--rerun"):
        cached(store, "k1", lambda: {"v": 1})


def test_a_torch_store_reads_its_key_mapped_and_reports_a_truncated_file(tmp_path):
    import torch

    store = TorchStore(tmp_path / "sets.pt")
    value = {"images": torch.arange(4096, dtype=torch.uint8).reshape(4, 1024)}
    cached(store, "k1", lambda: value)
    assert store.stored_key() == "k1"
    assert torch.equal(cached(store, "k1", lambda: None)["images"], value["images"])
    data = store.path.read_bytes()
    store.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedFileError, match="sets.pt"):
        cached(store, "k1", lambda: value)


def test_entries_of_a_sweep_are_kept_side_by_side(tmp_path):
    path = tmp_path / "rows.json"
    for k in ("a", "b"):
        cached(EntryStore(path, k), k, lambda k=k: {"row": k})
    compute, calls = _counting({"row": "a2"})
    assert cached(EntryStore(path, "a"), "a", compute) == {"row": "a"} and not calls


def test_fitted_attack_is_returned_as_fitted_and_rebuilt_from_its_stored_state(tmp_path):
    from dataclasses import dataclass, replace

    from burn.experiment import FittedAttackStore

    @dataclass(frozen=True)
    class Fitted:  # an attack's state interface: attack_state() / with_state()
        weight: float = 0.0
        restored: bool = False

        def attack_state(self):
            return {"weight": round(self.weight, 1)}  # stored rounded, as float16 would be

        def with_state(self, state):
            return replace(self, weight=state["weight"], restored=True)

    store = FittedAttackStore(tmp_path / "fitted_attack.pt", Fitted())
    compute, calls = _counting(Fitted(weight=0.123))
    assert cached(store, "k1", compute) == Fitted(weight=0.123)  # unrounded when fitted now
    assert cached(store, "k1", compute) == Fitted(weight=0.1, restored=True)
    assert len(calls) == 1
    cached(store, "k1", compute, rerun=True)
    cached(store, "k2", compute)
    assert len(calls) == 3

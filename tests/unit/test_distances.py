"""The distances stage: resumable in parts through ``burn.stages.cached``, bit-identical to one
``deepfool_dataset`` pass, stored in ``deepfool.npz`` under ``burn.keys.distances_key``."""

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
from test_deepfool import one_thread, synthetic, train_tiny_cnn  # noqa: F401 (one_thread: autouse)
from torch import nn

import burn.distances as dist
from burn import keys
from burn.config import DeepFoolCfg
from burn.data import cache_dir
from burn.deepfool import deepfool_dataset
from burn.runtime import Runtime

CFG = DeepFoolCfg(num_candidates=4, max_iter=20)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return train_tiny_cnn()


@pytest.fixture
def images() -> torch.Tensor:
    x, _ = synthetic(20, seed=9)
    return (x * 255).round().to(torch.uint8)  # batches of 8 in parts of 1 batch: 8, 8, 4


def _spy(monkeypatch, stop_after: int | None = None) -> list[int]:
    """The sizes of the parts computed from now on; once ``stop_after`` are done, the next one
    raises KeyboardInterrupt (an interrupted run)."""
    sizes = []

    def spy(model, images, *args, **kw):
        if stop_after is not None and len(sizes) == stop_after:
            raise KeyboardInterrupt
        sizes.append(len(images))
        return deepfool_dataset(model, images, *args, **kw)

    monkeypatch.setattr(dist, "deepfool_dataset", spy)
    return sizes


def _equal(a: dict, b: dict):
    for name, v in b.items():
        assert torch.equal(a[name], v), name


def test_parts_resume_after_an_interruption_bit_identical(model, images, tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "CHUNK_BATCHES", 1)
    expected = deepfool_dataset(model, images, CFG, batch_size=8, progress=False).tensors()
    _spy(monkeypatch, stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        dist.deepfool_in_parts(model, images, CFG, tmp_path, batch_size=8, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part_00000000_00000008.pt"]

    sizes = _spy(monkeypatch)
    r = dist.deepfool_in_parts(model, images, CFG, tmp_path, batch_size=8, progress=False)
    assert sizes == [8, 4]  # only the two missing parts
    _equal(r.tensors(), expected)

    sizes = _spy(monkeypatch)
    again = dist.deepfool_in_parts(model, images, CFG, tmp_path, batch_size=8, progress=False)
    assert sizes == []
    _equal(again.tensors(), expected)
    # A part of other images in the same folder is an error, not a silent reuse.
    with pytest.raises(ValueError, match="other images"):
        dist.deepfool_in_parts(model, images.flip(0), CFG, tmp_path, batch_size=8, progress=False)


@dataclass
class _Poisoned:
    images: torch.Tensor

    def __len__(self):
        return len(self.images)


@dataclass
class _Run:
    """What ``boundary_distances`` reads of an ``AttackRun``."""

    model: nn.Module
    poisoned: _Poisoned
    results_dir: object
    key: str = "m1"
    cfg: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(deepfool=CFG))
    runtime: Runtime = Runtime(device="cpu", deepfool_batch=8, progress=False)


def test_boundary_distances_resume_then_store_npz_and_drop_parts(model, images, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(dist, "CHUNK_BATCHES", 1)
    run = _Run(model, _Poisoned(images), tmp_path / "results")
    expected = deepfool_dataset(model, images, CFG, batch_size=8, progress=False).tensors()
    _spy(monkeypatch, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        dist.boundary_distances(run)
    assert not (run.results_dir / "deepfool.npz").exists()
    parts = cache_dir() / "runs" / "deepfool"
    assert len(list(parts.rglob("part_*.pt"))) == 2

    sizes = _spy(monkeypatch)
    bd = dist.boundary_distances(run)
    assert sizes == [4]  # the third part only
    assert bd["key"] == keys.distances_key("m1", CFG) == dist.distances_key(run)
    assert bd["norms"].dtype == torch.float32
    _equal({k: bd[k] for k in expected}, expected)
    assert not list(parts.iterdir())  # stored in deepfool.npz: the parts are deleted

    sizes = _spy(monkeypatch)
    again = dist.boundary_distances(run)
    assert sizes == []
    _equal({k: again[k] for k in expected}, expected)


def test_parts_from_the_end_meet_the_front_job_and_it_reads_them(model, images, tmp_path,
                                                                 monkeypatch):
    """``burn deepfool --from-end`` beside a front job: it computes the parts the front job has
    not, from the last, stops at the first one stored, and the front job then reads its parts
    (bit-identical to one pass); once deepfool.npz is stored it does nothing."""
    monkeypatch.setattr(dist, "CHUNK_BATCHES", 1)
    run = _Run(model, _Poisoned(images), tmp_path / "results")
    expected = deepfool_dataset(model, images, CFG, batch_size=8, progress=False).tensors()
    _spy(monkeypatch, stop_after=1)  # the front job has stored part 0, then stops
    with pytest.raises(KeyboardInterrupt):
        dist.boundary_distances(run)

    sizes = _spy(monkeypatch)
    assert dist.deepfool_parts_from_end(run) == 2
    assert sizes == [4, 8]  # parts 2 and 1, from the end; part 0 was stored: met
    sizes = _spy(monkeypatch)
    bd = dist.boundary_distances(run)
    assert sizes == []  # every part was stored by one of the two
    _equal({k: bd[k] for k in expected}, expected)

    sizes = _spy(monkeypatch)
    assert dist.deepfool_parts_from_end(run) == 0 and sizes == []


def test_cli_deepfool_from_the_end_then_from_the_front(tmp_path, capsys):
    """``burn deepfool --from-end`` computes parts but no deepfool.npz; ``burn deepfool`` then
    writes deepfool.npz from them, and a second ``--from-end`` has nothing to do."""
    from burn.cli import main

    args = ["deepfool", "--preset", "smoke", "--results-root", str(tmp_path), "--quiet"]
    npz = tmp_path / "smoke" / "synthetic" / "badnets" / "deepfool.npz"
    assert main([*args, "--from-end"]) == 0
    out = capsys.readouterr().out
    assert "part(s) computed from the end" in out and not npz.exists()
    assert int(out.split("DeepFool part(s)")[0].split()[-1]) >= 1
    assert main(args) == 0
    out = capsys.readouterr().out
    assert npz.exists() and "mean L2 distance clean" in out and "ratio" in out
    assert "coverage of the target label" in out and "poisoned images fall back to it" in out
    assert main([*args, "--from-end"]) == 0
    assert "0 DeepFool part(s)" in capsys.readouterr().out

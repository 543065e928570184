import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from burn.config import DataCfg
from burn.data import (
    CIFAR10_CLASSES,
    DatasetNotFoundError,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_tiny_imagenet,
    stratified_subset,
)


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar_rows(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)


def test_cifar10_original_pickle_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = {}
    for i in range(1, 6):
        rows[i] = _cifar_rows(4, i)
        _write_pickle(folder / f"data_batch_{i}", {b"data": rows[i], b"labels": [i, 0, 9, 3]})
    test_rows = _cifar_rows(3, 99)
    _write_pickle(folder / "test_batch", {b"data": test_rows, b"labels": [7, 7, 1]})
    train, test = load_cifar10(tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist()[:4] == [1, 0, 9, 3]
    assert np.array_equal(train.images[4].numpy().reshape(-1), rows[2][0])  # CHW row order
    assert test.labels.tolist() == [7, 7, 1]
    assert train.name == "CIFAR-10" and train.classes == CIFAR10_CLASSES


def _jpeg_bytes(color):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_cifar10_jpeg_tarball_and_folder_are_labelled_as_jpeg_copy(tmp_path):
    files = {f"cifar10-jpeg/{split}/{cls}/{i:04d}.jpg": _jpeg_bytes((20 * c, 100, 200))
             for split in ("train", "test") for c, cls in enumerate(CIFAR10_CLASSES) for i in range(2)}
    tar_root = tmp_path / "tar"
    tar_root.mkdir()
    with tarfile.open(tar_root / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    train, test = load_cifar10(tar_root)
    assert len(train) == 20 and len(test) == 20
    assert train.name == "CIFAR-10 (JPEG copy)"
    assert train.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert abs(int(train.images[2, 0].float().mean()) - 20) <= 3  # class 1 red channel ~20

    dir_root = tmp_path / "dir"
    for name, data in files.items():
        p = dir_root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    train2, _ = load_cifar10(dir_root)
    assert torch.equal(train2.images, train.images) and torch.equal(train2.labels, train.labels)


def test_cifar100_pickle_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _write_pickle(folder / "train", {b"data": _cifar_rows(5, 0), b"fine_labels": [0, 1, 99, 50, 2]})
    _write_pickle(folder / "test", {b"data": _cifar_rows(2, 1), b"fine_labels": [3, 4]})
    _write_pickle(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    train, test = load_cifar100(tmp_path)
    assert train.labels.tolist() == [0, 1, 99, 50, 2] and test.labels.tolist() == [3, 4]
    assert train.num_classes == 100 and train.classes[99] == "c99"


def test_tiny_imagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02", "n03"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius\nn02\tcat\nn03\tdog\n")
    for c, w in enumerate(wnids):
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 64), (80 * c, 0, 0)).save(d / f"{w}_{i}.JPEG")
    ann = []
    for i, w in enumerate(["n03", "n01"]):
        Image.new("RGB", (64, 64), (0, 0, 0)).save(root / "val" / "images" / f"val_{i}.JPEG")
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    train, test = load_tiny_imagenet(tmp_path)
    assert train.images.shape == (6, 3, 64, 64)
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert test.labels.tolist() == [2, 0]
    assert train.classes == ("goldfish", "cat", "dog")


@pytest.mark.parametrize("loader,what", [(load_cifar10, "cifar-10-batches-py"),
                                         (load_cifar100, "cifar-100-python"),
                                         (load_tiny_imagenet, "tiny-imagenet-200")])
def test_missing_dataset_says_what_where_and_how(tmp_path, loader, what):
    with pytest.raises(DatasetNotFoundError) as e:
        loader(tmp_path / "empty")
    msg = str(e.value)
    assert what in msg and str(tmp_path / "empty") in msg and "BURN_DATA" in msg


def test_data_root_env_var_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("BURN_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        load_cifar10()


def test_stratified_subset_is_balanced_and_seeded():
    from burn.data import load_synthetic

    train, _ = load_synthetic(n_train=1000)
    sub = stratified_subset(train, 100, seed=0)
    assert len(sub) == 100 and torch.bincount(sub.labels).tolist() == [10] * 10
    assert torch.equal(stratified_subset(train, 100, seed=0).images, sub.images)
    assert not torch.equal(stratified_subset(train, 100, seed=1).images, sub.images)


def test_load_dataset_rejects_unknown_name():
    with pytest.raises(ValueError, match="cifar10"):
        load_dataset(DataCfg(dataset="mnist"))

"""Datasets as uint8 tensors: CIFAR-10 (original or the shared JPEG copy), CIFAR-100,
Tiny-ImageNet-200, and a synthetic set for the smoke preset.

Every loader returns ``(train, test)`` :class:`ImageDataset` objects with images of shape
``(N, 3, H, W)`` in uint8 and int64 labels; ``ImageDataset.float()`` gives [0, 1] floats.

Where data is looked for is one setting, the *data root*: the ``root`` argument (CLI
``--data-root``), else the ``BURN_DATA`` environment variable, else ``../shared/data`` beside
the repository, else ``./data``. The first load decodes the images once into the cache
directory (``BURN_CACHE``, default ``~/.cache/burn``), outside the repository.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_path
from .config import PROJECT_ROOT, DataCfg

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
JPEG_TARBALL = "cifar10-jpeg.tar.gz"
JPEG_DIR = "cifar10-jpeg"


class DatasetNotFoundError(FileNotFoundError):
    """Raised with a message saying what was looked for, where, and how to get it."""


@dataclass
class ImageDataset:
    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64
    classes: tuple[str, ...]
    name: str  # human-readable, e.g. "CIFAR-10 (JPEG copy)"; goes into every output

    def __post_init__(self):
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4, self.images.shape
        assert self.labels.shape == (len(self.images),), (self.labels.shape, self.images.shape)
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def float(self, idx=None) -> Tensor:
        """Images in [0, 1] as float32 (all, or those at ``idx``)."""
        x = self.images if idx is None else self.images[idx]
        return x.float().div_(255.0)

    def subset(self, idx) -> "ImageDataset":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.name)


def cache_dir() -> Path:
    return Path(os.environ.get("BURN_CACHE", Path.home() / ".cache" / "burn"))


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The one place datasets are looked for (see the module docstring)."""
    if root is not None:
        return Path(root)
    if os.environ.get("BURN_DATA"):
        return Path(os.environ["BURN_DATA"])
    shared = PROJECT_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else PROJECT_ROOT / "data"


def _sha_short(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]


def _decode_cached(key: str, decode) -> dict[str, np.ndarray]:
    """Decode once, keep the uint8 arrays in the cache directory (written atomically)."""
    path = cache_dir() / "data" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    arrays = decode()
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return arrays


def _to_datasets(arrays, classes, name):
    out = []
    for split in ("train", "test"):
        x = torch.from_numpy(np.ascontiguousarray(arrays[f"x_{split}"]))
        if x.shape[-1] == 3:  # NHWC -> NCHW
            x = x.permute(0, 3, 1, 2).contiguous()
        out.append(ImageDataset(x, torch.from_numpy(arrays[f"y_{split}"]).long(), tuple(classes), name))
    return tuple(out)


# --------------------------------------------------------------------------------- CIFAR-10/100
def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar_batches(files: list[Path], label_key: bytes):
    xs, ys = [], []
    for f in files:
        d = _unpickle(f)
        xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _decode_cifar10_pickles(folder: Path):
    x_tr, y_tr = _cifar_batches([folder / f"data_batch_{i}" for i in range(1, 6)], b"labels")
    x_te, y_te = _cifar_batches([folder / "test_batch"], b"labels")
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def _decode_jpeg_members(members):
    """``members``: iterable of (relative path 'split/class/file.jpg', bytes loader)."""
    from PIL import Image

    index = {c: i for i, c in enumerate(CIFAR10_CLASSES)}
    data = {"train": [], "test": []}
    for rel, read in members:
        parts = rel.split("/")
        if len(parts) != 3 or parts[0] not in data or not parts[2].lower().endswith(".jpg"):
            continue
        split, cls, fname = parts
        img = np.asarray(Image.open(io.BytesIO(read())).convert("RGB"), dtype=np.uint8)
        data[split].append((index[cls], fname, img))
    out = {}
    for split, items in data.items():
        items.sort(key=lambda t: (t[0], t[1]))  # class, then file name: deterministic order
        out[f"x_{split}"] = np.stack([t[2] for t in items]).transpose(0, 3, 1, 2)
        out[f"y_{split}"] = np.array([t[0] for t in items], dtype=np.int64)
    return out


def _decode_jpeg_tarball(path: Path):
    def members():
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                if m.isfile():
                    rel = m.name.split(JPEG_DIR + "/", 1)[-1]
                    yield rel, tar.extractfile(m).read
    return _decode_jpeg_members(members())


def _decode_jpeg_folder(folder: Path):
    return _decode_jpeg_members(
        (p.relative_to(folder).as_posix(), p.read_bytes) for p in sorted(folder.glob("*/*/*.jpg"))
    )


def load_cifar10(root=None, *, download: bool = False):
    """CIFAR-10 from, in this order: torchvision's ``cifar-10-batches-py`` under the data root
    (the original data), the JPEG copy ``cifar10-jpeg.tar.gz`` or its extracted
    ``cifar10-jpeg/`` folder, or, with ``download=True``, torchvision's download."""
    root = data_root(root)
    original = root / "cifar-10-batches-py"
    if not original.is_dir() and download:
        import torchvision

        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    if original.is_dir():
        arrays = _decode_cached(f"cifar10-original-{_sha_short(original / 'test_batch')}",
                                lambda: _decode_cifar10_pickles(original))
        return _to_datasets(arrays, CIFAR10_CLASSES, "CIFAR-10")
    for candidate, decode in ((root / JPEG_TARBALL, _decode_jpeg_tarball),
                              (root / JPEG_DIR, _decode_jpeg_folder)):
        if candidate.exists():
            arrays = _decode_cached(f"cifar10-jpeg-{_sha_short(candidate)}", lambda: decode(candidate))
            return _to_datasets(arrays, CIFAR10_CLASSES, "CIFAR-10 (JPEG copy)")
    raise DatasetNotFoundError(
        f"CIFAR-10 not found under the data root {root}: looked for {original} (torchvision's "
        f"original layout), {root / JPEG_TARBALL} and {root / JPEG_DIR}/ (the JPEG copy). "
        "Put one of them there, point BURN_DATA or --data-root at the folder that holds it, "
        "or pass --download (needs internet) to fetch the original with torchvision."
    )


def load_cifar100(root=None, *, download: bool = False):
    """CIFAR-100 (fine labels) from torchvision's ``cifar-100-python`` layout."""
    root = data_root(root)
    folder = root / "cifar-100-python"
    if not folder.is_dir() and download:
        import torchvision

        torchvision.datasets.CIFAR100(str(root), train=True, download=True)
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"CIFAR-100 not found: looked for {folder} (torchvision's layout: train, test, meta). "
            "Put it there, point BURN_DATA or --data-root at its parent folder, or pass "
            "--download (needs internet)."
        )

    def decode():
        x_tr, y_tr = _cifar_batches([folder / "train"], b"fine_labels")
        x_te, y_te = _cifar_batches([folder / "test"], b"fine_labels")
        return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}

    classes = [c.decode() for c in _unpickle(folder / "meta")[b"fine_label_names"]]
    arrays = _decode_cached(f"cifar100-{_sha_short(folder / 'test')}", decode)
    return _to_datasets(arrays, classes, "CIFAR-100")


# ----------------------------------------------------------------------------- Tiny-ImageNet
def load_tiny_imagenet(root=None, *, download: bool = False):
    """Tiny-ImageNet-200 from its standard layout: ``tiny-imagenet-200/wnids.txt``,
    ``train/<wnid>/images/*.JPEG`` and ``val/images`` + ``val/val_annotations.txt`` (the
    labelled validation set serves as test set, as in BackdoorBench)."""
    from PIL import Image

    root = data_root(root)
    folder = root / "tiny-imagenet-200"
    if not folder.is_dir():
        hint = ("--download is not supported for Tiny-ImageNet; " if download else "")
        raise DatasetNotFoundError(
            f"Tiny-ImageNet-200 not found: looked for {folder} (train/<wnid>/images/*.JPEG, "
            f"val/val_annotations.txt). {hint}Download tiny-imagenet-200.zip from the Stanford "
            "CS231n site, unzip it under the data root, or point BURN_DATA / --data-root there."
        )
    wnids = [w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}

    def read(p):
        return np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8)

    def decode():
        train = sorted((index[w], p) for w in wnids for p in (folder / "train" / w / "images").glob("*.JPEG"))
        val = []
        for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                val.append((index[parts[1]], folder / "val" / "images" / parts[0]))
        val.sort(key=lambda t: t[1].name)
        return {
            "x_train": np.stack([read(p) for _, p in train]).transpose(0, 3, 1, 2),
            "y_train": np.array([c for c, _ in train], dtype=np.int64),
            "x_test": np.stack([read(p) for _, p in val]).transpose(0, 3, 1, 2),
            "y_test": np.array([c for c, _ in val], dtype=np.int64),
        }

    names = {}
    words = folder / "words.txt"
    if words.is_file():
        for line in words.read_text().splitlines():
            w, _, text = line.partition("\t")
            names[w] = text.split(",")[0].strip()
    arrays = _decode_cached(f"tiny-{_sha_short(folder / 'wnids.txt')}", decode)
    return _to_datasets(arrays, [names.get(w, w) for w in wnids], "Tiny-ImageNet-200")


# --------------------------------------------------------------------------------- synthetic
def load_synthetic(root=None, *, download: bool = False, n_train=1000, n_test=500,
                   num_classes=10, size=32, seed=1234):
    """A learnable synthetic 10-class set for the smoke preset and tests: each class is a
    smooth random colour template plus per-image noise. Never reported as a result."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                                align_corners=False)

    def make(n):
        y = torch.arange(n) % num_classes
        x = 0.7 * templates[y] + 0.3 * torch.rand(n, 3, size, size, generator=g)
        return (x * 255).round().clamp(0, 255).to(torch.uint8), y

    classes = tuple(f"class{i}" for i in range(num_classes))
    (xa, ya), (xb, yb) = make(n_train), make(n_test)
    return (ImageDataset(xa, ya, classes, "synthetic"), ImageDataset(xb, yb, classes, "synthetic"))


@dataclass(frozen=True)
class DatasetSpec:
    """How a dataset is loaded and transformed, as BackdoorBench's
    ``utils/aggregate_block/dataset_and_transform_generate.py`` does: its normalization
    constants (the model's first layer) and whether training flips horizontally (CIFAR-10
    only; every dataset gets the random crop)."""

    loader: object
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool


DATASETS = {
    "cifar10": DatasetSpec(load_cifar10, (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261), True),
    "cifar100": DatasetSpec(load_cifar100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), False),
    "tiny": DatasetSpec(load_tiny_imagenet, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), False),
    # not BackdoorBench's: CIFAR-10's settings, so the smoke preset exercises the same code
    "synthetic": DatasetSpec(load_synthetic, (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261), True),
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def stratified_subset(ds: ImageDataset, n: int | None, seed: int) -> ImageDataset:
    """A seeded subset of ``n`` samples with (as near as possible) equal counts per class."""
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds), generator=g)
    labels = ds.labels[perm]
    # rank of each sample within its class, in permuted order; take the lowest ranks first
    rank = torch.empty_like(labels)
    for c in labels.unique():
        pos = (labels == c).nonzero().squeeze(1)
        rank[pos] = torch.arange(len(pos))
    order = perm[torch.argsort(rank * len(ds) + torch.arange(len(ds)), stable=True)]
    return ds.subset(order[:n].sort().values)


def load_dataset(cfg: DataCfg, root=None, *, download: bool = False, seed: int = 0):
    """Load ``cfg.dataset`` and apply the preset's subset limits."""
    train, test = dataset_spec(cfg.dataset).loader(root, download=download)
    return (stratified_subset(train, cfg.limit_train, seed),
            stratified_subset(test, cfg.limit_test, seed + 1))

"""Readers of data sets: Fashion-MNIST IDX(.gz) files, ``.npz`` arrays, or random inputs.

Images are float32 NCHW in the scale the model sees (uint8 / 255)."""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from edgecompress.data.dataset import Dataset, as_float
from edgecompress.data.folders import is_image_folder
from edgecompress.errors import BadInput, one_line

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_HINT = (
    "install the Debian package (apt-get install dataset-fashion-mnist), pass --data DIR "
    "holding the IDX .gz files, or --data FILE.npz with arrays x and y"
)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise BadInput(f"cannot read IDX file {path}: {e}; re-download or reinstall it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise BadInput(f"{path} is not an IDX file (bad magic number); pass the original files")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise BadInput(f"{path} is truncated (header); re-download or reinstall it")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != need:
        raise BadInput(
            f"{path} is truncated or padded: {len(raw) - header} data bytes for shape {dims}, "
            f"expected {need}; re-download or reinstall it"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _idx_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    for suffix in (".gz", ""):
        imgs = directory / f"{prefix}-images-idx3-ubyte{suffix}"
        labs = directory / f"{prefix}-labels-idx1-ubyte{suffix}"
        if imgs.exists() and labs.exists():
            x, y = read_idx(imgs), read_idx(labs)
            if len(x) != len(y):
                raise BadInput(f"{imgs} has {len(x)} images but {labs} has {len(y)} labels")
            return x, y
    return None


def _to_nchw(x: np.ndarray, where: str, keep_uint8: bool = False) -> np.ndarray:
    """N,C,H,W float32 (uint8 scaled by 1/255), or uint8 as it is with ``keep_uint8`` (see as_float)."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise BadInput(f"{where}: x has shape {x.shape}; expected N,H,W or N,C,H,W")
    if x.dtype == np.uint8:
        return x if keep_uint8 else as_float(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise BadInput(f"{where}: x has dtype {x.dtype}; use uint8 (scaled by 1/255) or float")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise BadInput(f"{where}: x contains NaN or infinite values; clean the data first")
    return x


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise BadInput(f"{where}: y has shape {y.shape}; expected ({n},) to match x: one class id per sample")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise BadInput(f"{where}: y has dtype {y.dtype}; labels must be integer class ids")
    if len(y) and y.min() < 0:
        raise BadInput(f"{where}: negative label {int(y.min())}; labels must be 0..num_classes-1")
    return y.astype(np.int64)


def load_fashion_mnist(directory: Path, split: str) -> Dataset:
    pair = _idx_pair(directory, "train" if split == "train" else "t10k")
    if pair is None:
        raise BadInput(f"no Fashion-MNIST {split} IDX files in {directory}; {_HINT}")
    x, y = pair
    return Dataset(
        _to_nchw(x, str(directory)),
        _labels(y, len(x), str(directory)),
        f"fashion-mnist:{directory}:{split}",
        FASHION_MNIST_CLASSES,
    )


def load_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if "x" not in keys:
                raise BadInput(f"{path} has no array 'x' (found {sorted(keys)}); save it with "
                               "numpy.savez(path, x=images, y=labels)")
            x = z["x"]
            y = z["y"] if "y" in keys else None
            targets = {k[2:]: z[k] for k in sorted(keys) if k.startswith("y_")}
    except BadInput:
        raise
    except (OSError, ValueError, zlib.error, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise BadInput(f"cannot read {path} as .npz ({one_line(e, 160)}); write it with numpy.savez(path, x=..., y=...)") from None
    if len(x) == 0:
        raise BadInput(f"{path}: x is empty; the data set needs at least one sample")
    xs = _to_nchw(x, str(path), keep_uint8=True)  # 1/4 of the float32 bytes; scaled per batch (as_float)
    extra = dict(targets)
    if y is not None and not _class_ids(y):  # targets of another shape (masks, multi-hot, boxes): --metric reads them
        extra, y = {"y": y} | extra, None
    for k, t in extra.items():
        if t.ndim == 0 or len(t) != len(xs):
            raise BadInput(f"{path}: {'y' if k == 'y' else 'y_' + k} has shape {t.shape}; expected one row per "
                           f"sample of x ({len(xs)})")
    labels = None if y is None else _labels(y, len(xs), str(path))
    return Dataset(xs, labels, f"npz:{path}", (), extra or (None if labels is None else {"y": labels}))


def _class_ids(y: np.ndarray) -> bool:
    """One integer class id per sample (what top-1 reads)."""
    return y.ndim == 1 and (np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and bool(np.all(np.isfinite(y))) and bool(np.all(y == np.round(y)))))


def random_data(shape: tuple[int, int, int], n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(rng.random((n, *shape), dtype=np.float32), None, f"random:{shape}")


def resolve_data(spec: str | None) -> tuple[str, Path | None]:
    """Returns (kind, path) with kind in {fashion-mnist, npz, images, random}."""
    if spec in (None, "fashion-mnist"):
        env = os.environ.get("EDGECOMPRESS_FASHION_MNIST")
        d = Path(env) if env else DEBIAN_FASHION_MNIST
        if _idx_pair_exists(d):
            return "fashion-mnist", d
        raise BadInput(f"Fashion-MNIST not found in {d}; {_HINT}")
    if spec == "random":
        return "random", None
    p = Path(spec)
    if not p.exists():
        raise BadInput(f"--data {spec}: no such file or directory; {_HINT}")
    if p.is_dir():
        if _idx_pair_exists(p):
            return "fashion-mnist", p
        if is_image_folder(p):
            return "images", p
        raise BadInput(f"--data {spec}: directory holds no IDX files and no images in class subfolders (nor labels.csv); {_HINT}")
    if p.suffix == ".npz":
        return "npz", p
    raise BadInput(f"--data {spec}: unsupported file type {p.suffix!r}; {_HINT}")


def _idx_pair_exists(d: Path) -> bool:
    return any(
        (d / f"train-images-idx3-ubyte{s}").exists() and (d / f"train-labels-idx1-ubyte{s}").exists()
        for s in (".gz", "")
    )

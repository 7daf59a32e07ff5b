"""Image files as a data set: a folder of class subfolders (the ImageFolder layout) or a flat folder
with ``labels.csv`` (``file,label`` rows; the label a class name or an integer id).

Nothing is decoded up front: :class:`ImageFiles` is an array-like (``shape``, ``len``, integer /
slice / index-array indexing) that decodes the images it is asked for, through the same
:class:`~edgecompress.runtime.imageprep.ImagePrep` that ``edgecompress predict`` applies. The file
list is a sorted numpy array of relative paths (bytes), so a 200k-image set costs a few MB and is
cheap to pickle into loader workers.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.data.dataset import Dataset
from edgecompress.errors import BadInput, one_line
from edgecompress.runtime.imageprep import ImagePrep, read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm")
LABELS_CSV = "labels.csv"


def is_image_folder(p: Path) -> bool:
    """A folder of class subfolders with images, or a flat folder with labels.csv."""
    if (p / LABELS_CSV).is_file():
        return True
    return any(c.is_dir() and any(_is_image(f) for f in c.iterdir()) for c in p.iterdir())


def _is_image(f: Path) -> bool:
    return f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()


@dataclass(frozen=True)
class ImageFiles:
    """Lazily decoded images: ``self[idx]`` -> float32 (len(idx), *prep.sample_shape)."""

    root: str
    files: np.ndarray  # bytes (numpy 'S'), paths relative to root
    prep: ImagePrep

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), *self.prep.sample_shape)

    dtype = np.dtype(np.float32)
    ndim = 4

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        return Path(self.root) / self.files[i].decode()

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self.prep.load(self.path(int(idx)))
        rows = np.arange(len(self.files))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64)
        out = np.empty((len(rows), *self.prep.sample_shape), np.float32)
        for k, i in enumerate(rows):
            out[k] = self.prep.load(self.path(int(i)))
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def take(self, idx: np.ndarray) -> ImageFiles:
        return ImageFiles(self.root, self.files[np.asarray(idx, dtype=np.int64)], self.prep)

    def file_list_sha256(self) -> str:
        return hashlib.sha256(b"\n".join(self.files.tolist())).hexdigest()


def scan(root: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(relative paths as bytes, labels, class names), sorted by path: the same order on every machine."""
    if (root / LABELS_CSV).is_file():
        return _scan_csv(root)
    classes = tuple(sorted(c.name for c in root.iterdir() if c.is_dir() and not c.name.startswith(".")))
    files: list[str] = []
    labels: list[int] = []
    for k, c in enumerate(classes):
        names = sorted(f.name for f in (root / c).iterdir() if _is_image(f))
        files += [f"{c}/{n}" for n in names]
        labels += [k] * len(names)
    if not files:
        raise BadInput(f"--data {root}: no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...) in class subfolders; "
                       f"lay it out as {root}/CLASS/IMAGE or add {LABELS_CSV} (file,label)")
    return np.array([f.encode() for f in files], dtype=np.bytes_), np.array(labels, np.int64), classes


def _scan_csv(root: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    path = root / LABELS_CSV
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BadInput(f"cannot read {path} ({one_line(e)}); write rows 'file,label'") from None
    if rows and rows[0][:2] == ["file", "label"]:
        rows = rows[1:]
    bad = next((r for r in rows if len(r) < 2), None)
    if bad is not None or not rows:
        raise BadInput(f"{path}: {'row ' + repr(bad) if bad else 'no rows'}; write rows 'file,label' (the label a "
                       "class name or an integer id)")
    rows.sort(key=lambda r: r[0])
    names = [r[1].strip() for r in rows]
    if all(n.isdigit() for n in names):
        labels = np.array([int(n) for n in names], np.int64)
        classes = tuple(str(i) for i in range(int(labels.max()) + 1))
    else:
        classes = tuple(sorted(set(names)))
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[n] for n in names], np.int64)
    missing = next((r[0] for r in rows if not (root / r[0]).is_file()), None)
    if missing is not None:
        raise BadInput(f"{path} lists {missing}, which is not in {root}; fix the CSV or add the file")
    return np.array([r[0].encode() for r in rows], dtype=np.bytes_), labels, classes


def first_image(root: Path, files: np.ndarray) -> np.ndarray:
    return read_image(root / files[0].decode())


def drop_unreadable(root: Path, files: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``--bad-files skip``: decode every file once and drop those that fail (their names returned)."""
    keep = np.ones(len(files), bool)
    bad: list[str] = []
    for i, f in enumerate(files):
        try:
            read_image(root / f.decode())
        except BadInput:
            keep[i] = False
            bad.append(f.decode())
    if not keep.any():
        raise BadInput(f"--data {root}: none of the {len(files)} images can be decoded")
    return files[keep], labels[keep], bad


def load_image_folder(root: Path, prep: ImagePrep | None, prep_for, *, bad_files: str = "error") -> tuple[Dataset, dict]:
    """The folder as a lazily decoded data set and the record of it (counts, file-list hash, skipped).

    ``prep`` (the training set's, for an eval folder) or else ``prep_for(first_image) -> ImagePrep``
    decides size and channels (from the flags, the model, or the first image)."""
    files, labels, classes = scan(root)
    skipped: list[str] = []
    if bad_files == "skip":
        files, labels, skipped = drop_unreadable(root, files, labels)
    prep = prep or prep_for(first_image(root, files))
    x = ImageFiles(str(root), files, prep)
    record = {"files": len(files), "classes": len(classes), "file_list_sha256": x.file_list_sha256(),
              "skipped_unreadable": len(skipped), "skipped_examples": skipped[:5]}
    return Dataset(x, labels, f"images:{root}", classes), record

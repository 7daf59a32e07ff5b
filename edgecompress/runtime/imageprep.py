"""Images -> model input, one definition for training, calibration, evaluation and ``predict``.

numpy (+ Pillow for PNG/JPEG/WebP; PGM/PPM are parsed here) only, no torch: ``edgecompress predict``
applies the very :class:`ImagePrep` a run recorded in the ONNX metadata (``input.preprocess``), so
predictions on raw image files reproduce the run's own evaluation.

Pipeline of one image: decode to H x W x {1,3} float in [0, 1] (8-bit / 255, 16-bit / 65535) ->
channels (gray <-> RGB; ``bgr`` reverses RGB) -> geometry (``stretch`` to the size; ``crop``: the
shorter side to size / crop_fraction, then the centre; ``letterbox``: fit inside, zero padding) with
an antialiased bilinear (triangle) filter -> (x - mean) / std per channel -> C x H x W (or H x W x C).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgecompress.errors import BadInput, one_line

META_KEY = "input.preprocess"
RESIZE_MODES = ("stretch", "crop", "letterbox")
CHANNELS = ("gray", "rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")
PNM_MAGIC = {b"P2": (1, False), b"P5": (1, True), b"P3": (3, False), b"P6": (3, True)}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, as Pillow's convert("L")


@dataclass(frozen=True)
class ImagePrep:
    size: tuple[int, int]  # H, W the model sees
    channels: str = "rgb"  # gray | rgb | bgr (channel order of the model input)
    resize: str = "stretch"  # stretch | crop | letterbox
    crop_fraction: float = 1.0  # resize=crop: the centre crop is this fraction of the resized shorter side
    mean: tuple[float, ...] = ()  # per channel (or one value); () = 0
    std: tuple[float, ...] = ()  # per channel (or one value); () = 1
    layout: str = "nchw"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES or self.channels not in CHANNELS or self.layout not in LAYOUTS:
            raise BadInput(f"image preprocessing {self}: resize in {RESIZE_MODES}, channels in {CHANNELS}, "
                           f"layout in {LAYOUTS}")
        c = self.num_channels
        for k in ("mean", "std"):
            v = getattr(self, k)
            if len(v) not in (0, 1, c):
                raise BadInput(f"--{k} {','.join(map(str, v))}: give 1 or {c} values (one per channel)")
        if any(s == 0 for s in self.std):
            raise BadInput("--std has a 0: every value must be non-zero")
        if not 0 < self.crop_fraction <= 1:
            raise BadInput(f"--crop-fraction {self.crop_fraction}: must be in (0, 1]")

    @property
    def num_channels(self) -> int:
        return 1 if self.channels == "gray" else 3

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        h, w = self.size
        c = self.num_channels
        return (c, h, w) if self.layout == "nchw" else (h, w, c)

    def to_meta(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_meta(cls, text: str) -> ImagePrep:
        try:
            d = json.loads(text)
            d["size"], d["mean"], d["std"] = tuple(d["size"]), tuple(d["mean"]), tuple(d["std"])
            return cls(**d)
        except (ValueError, TypeError, KeyError) as e:
            raise BadInput(f"the model's {META_KEY} metadata is unreadable ({one_line(e)}); re-export it") from None

    def load(self, path: Path | str) -> np.ndarray:
        """One image file -> the model's sample (float32)."""
        return self.apply(read_image(Path(path)))

    def apply(self, img: np.ndarray) -> np.ndarray:
        """H x W x {1,3} float image in [0, 1] -> the model's sample (float32)."""
        img = _convert_channels(img, self.channels)
        img = self._geometry(img)
        if self.mean:
            img = img - np.asarray(self.mean, np.float32)
        if self.std:
            img = img / np.asarray(self.std, np.float32)
        img = img.astype(np.float32, copy=False)
        return np.ascontiguousarray(img.transpose(2, 0, 1) if self.layout == "nchw" else img)

    def _geometry(self, img: np.ndarray) -> np.ndarray:
        h, w = self.size
        ih, iw = img.shape[:2]
        if self.resize == "stretch":
            return resize(img, h, w)
        if self.resize == "crop":
            s = max(h, w) / self.crop_fraction / min(ih, iw)  # the shorter side covers the crop
            rh, rw = max(h, round(ih * s)), max(w, round(iw * s))
            img = resize(img, rh, rw)
            top, left = (rh - h) // 2, (rw - w) // 2
            return img[top : top + h, left : left + w]
        s = min(h / ih, w / iw)  # letterbox: fit inside, pad the rest with zeros
        rh, rw = max(1, min(h, round(ih * s))), max(1, min(w, round(iw * s)))
        out = np.zeros((h, w, img.shape[2]), np.float32)
        top, left = (h - rh) // 2, (w - rw) // 2
        out[top : top + rh, left : left + rw] = resize(img, rh, rw)
        return out


def _convert_channels(img: np.ndarray, channels: str) -> np.ndarray:
    have = img.shape[2]
    if channels == "gray":
        return img if have == 1 else (img[..., :3] @ _LUMA)[..., None]
    rgb = np.repeat(img, 3, axis=2) if have == 1 else img
    return rgb[..., ::-1] if channels == "bgr" else rgb


def read_image(p: Path) -> np.ndarray:
    """An image file -> H x W x {1,3} float32 in [0, 1]; BadInput naming the file if it cannot be read."""
    try:
        with open(p, "rb") as f:
            head = f.read(2)
    except OSError as e:
        raise BadInput(f"{p}: cannot read the image ({one_line(e)})") from None
    return read_pnm(p) if head in PNM_MAGIC else _read_pillow(p)


def read_pnm(p: Path) -> np.ndarray:
    """PGM/PPM (P2, P3, P5, P6; 8 or 16 bit) -> H x W x {1,3} float32 in [0, 1], numpy only."""
    raw = p.read_bytes()
    chans, binary = PNM_MAGIC[raw[:2]]
    tokens: list[bytes] = []
    i = 2
    while len(tokens) < 3:
        while i < len(raw) and raw[i : i + 1].isspace():
            i += 1
        if i < len(raw) and raw[i : i + 1] == b"#":
            while i < len(raw) and raw[i : i + 1] not in (b"\n", b"\r"):
                i += 1
            continue
        j = i
        while j < len(raw) and not raw[j : j + 1].isspace() and raw[j : j + 1] != b"#":
            j += 1
        if j == i:
            raise BadInput(f"{p}: truncated PGM/PPM header; re-save the image")
        tokens.append(raw[i:j])
        i = j
    try:
        w, h, maxval = (int(t) for t in tokens)
    except ValueError:
        raise BadInput(f"{p}: bad PGM/PPM header {b' '.join(tokens)!r}; re-save the image") from None
    if w < 1 or h < 1 or not 0 < maxval < 65536:
        raise BadInput(f"{p}: bad PGM/PPM header (width {w}, height {h}, maxval {maxval}); re-save the image")
    n = w * h * chans
    if binary:
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        data = raw[i + 1 :]  # exactly one whitespace byte after maxval
        if len(data) < n * dtype.itemsize:
            raise BadInput(f"{p}: truncated PGM/PPM data ({len(data)} bytes for {w}x{h}); re-save the image")
        a = np.frombuffer(data, dtype=dtype, count=n)
    else:
        try:
            a = np.array(raw[i:].split(), dtype=np.int64)
        except ValueError:
            raise BadInput(f"{p}: non-numeric PGM/PPM pixel data; re-save the image") from None
        if len(a) < n:
            raise BadInput(f"{p}: truncated PGM/PPM data ({len(a)} values for {w}x{h}); re-save the image")
        a = a[:n]
    return (a.astype(np.float32) / maxval).clip(0, 1).reshape(h, w, chans)


def _read_pillow(p: Path) -> np.ndarray:
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        raise BadInput(f"{p}: reading {p.suffix or 'this'} images needs Pillow (pip install pillow); or pass "
                       "PGM/PPM images or an .npz with array x") from None
    try:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except UnidentifiedImageError:
        raise BadInput(f"{p}: not an image (nor an .npz); pass PNG/JPEG/PGM files or an .npz with array x") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadInput(f"{p}: cannot decode the image ({one_line(e)}); re-save it as PNG") from None
    mode = im.mode
    try:
        if mode in ("1", "L", "LA", "La"):
            a = np.asarray(im.convert("L"), dtype=np.float32)[..., None] / 255.0
        elif mode.startswith("I;16") or mode == "I":  # 16-bit gray (Pillow may widen it to I)
            a = np.asarray(im, dtype=np.float32)[..., None]
            a = a / (65535.0 if a.max() > 255 else 255.0)
        elif mode == "F":
            a = np.asarray(im, dtype=np.float32)[..., None]
        else:  # RGB, RGBA (alpha dropped), palette, CMYK, YCbCr, ...
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (ValueError, OSError) as e:
        raise BadInput(f"{p}: unsupported image mode {mode} ({one_line(e)}); re-save it as 8-bit gray or "
                       "RGB PNG") from None
    return np.clip(a, 0, 1)



def _weights(n_in: int, n_out: int) -> np.ndarray:
    """n_out x n_in matrix of an antialiased linear (triangle) filter, half-pixel centres."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    src = np.arange(n_in)
    wts = np.clip(1.0 - np.abs(src[None, :] - centres[:, None]) / support, 0.0, None)
    sums = wts.sum(1, keepdims=True)
    empty = sums[:, 0] == 0
    if empty.any():  # cannot happen with support >= 1, but stay safe: nearest pixel
        wts[empty, np.clip(np.round(centres[empty]).astype(int), 0, n_in - 1)] = 1.0
        sums = wts.sum(1, keepdims=True)
    return (wts / sums).astype(np.float32)


def resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """H x W x C float image -> h x w x C (antialiased bilinear; identity when the size matches)."""
    if img.shape[:2] == (h, w):
        return img.astype(np.float32, copy=False)
    wh, ww = _weights(img.shape[0], h), _weights(img.shape[1], w)
    return np.einsum("ij,jkc,lk->ilc", wh, img.astype(np.float32), ww, optimize=True)



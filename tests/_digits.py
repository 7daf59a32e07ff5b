"""Printed digits made by a script, in the style of MNIST: white on black, the digit fitted into a
20x20 box and centred by its centre of mass in a 28x28 frame (as LeCun et al. prepared MNIST),
rendered from the machine's TrueType fonts (Debian's fonts-dejavu-core) with random rotation and
scale. Labelled data for digit classifiers whose weights ship in PyPI wheels, without a download."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FONT_DIR = Path("/usr/share/fonts/truetype")


def fonts() -> list[Path]:
    return sorted(p for p in FONT_DIR.rglob("*.ttf") if "Math" not in p.name and "ExtraLight" not in p.name)


def render_digits(n: int, *, size: int = 28, box: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digits as uint8 ``(n, 1, size, size)`` and their labels ``(n,)``."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    faces = [ImageFont.truetype(str(p), 48) for p in fonts()]
    if not faces:
        raise FileNotFoundError(f"no TrueType fonts under {FONT_DIR}; apt-get install fonts-dejavu-core")
    x = np.zeros((n, 1, size, size), np.uint8)
    y = rng.integers(0, 10, n)
    for i, d in enumerate(y):
        img = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(img).text((24, 12), str(d), fill=255, font=faces[rng.integers(len(faces))])
        img = img.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
        img = img.crop(img.getbbox())
        w, h = img.size
        s = box / max(w, h) * float(rng.uniform(0.85, 1.0))
        a = np.asarray(img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS), np.float32)
        cy, cx = np.argwhere(a > 0).mean(0)
        top = min(max(int(round(size / 2 - cy)), 0), size - a.shape[0])
        left = min(max(int(round(size / 2 - cx)), 0), size - a.shape[1])
        x[i, 0, top : top + a.shape[0], left : left + a.shape[1]] = np.clip(a, 0, 255).astype(np.uint8)
    return x, y


def write_npz(path: Path, n: int, seed: int = 0) -> Path:
    x, y = render_digits(n, seed=seed)
    np.savez(path, x=x, y=y)
    return path

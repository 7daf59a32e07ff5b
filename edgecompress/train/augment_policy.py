"""Which training augmentation fits the input: random shift and horizontal flip are image
augmentations, and applied to anything else they destroy the signal. A (1, 1024, 1) frame shifted
by 2 "pixels" along its width of 1 is cropped out of a 5-wide zero-padded strip: 4 times in 5 it
becomes all zeros.

An input is image-like when it is C x H x W with at most ``MAX_CHANNELS`` channels (grey, RGB,
RGBA: more channels are usually features, spectra or stacked frames, not colours) and both H and W
at least ``MIN_SIDE`` (a shift of a few pixels then moves the content without cropping most of it
away). A shift is kept only while it is at most a quarter of the shorter side. Anything else trains
without shift and flip; the decision and its reason go to the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

MAX_CHANNELS = 4
MIN_SIDE = 8


@dataclass(frozen=True)
class AugmentPolicy:
    shift: int  # pixels of random shift applied (0 = none)
    flip: bool  # random horizontal flip applied
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def augment_policy(sample_shape: Sequence[int], shift: int, flip: bool) -> AugmentPolicy:
    """The augmentation to apply to samples of ``sample_shape`` (C, H, W) when ``shift`` and
    ``flip`` are asked for."""
    if not shift and not flip:
        return AugmentPolicy(0, False, "augmentation off")
    shape = tuple(int(d) for d in sample_shape)
    if len(shape) != 3:
        return AugmentPolicy(0, False, f"samples of shape {shape} are not C x H x W images: no shift or flip")
    c, h, w = shape
    if c > MAX_CHANNELS:
        return AugmentPolicy(0, False, f"{c} channels (more than {MAX_CHANNELS}): not an image, no shift or flip")
    if min(h, w) < MIN_SIDE:
        return AugmentPolicy(0, False, f"{h} x {w} samples (a side under {MIN_SIDE}): not an image, shifting or "
                             "flipping would crop the signal away; no shift or flip")
    if shift * 4 > min(h, w):
        return AugmentPolicy(0, flip, f"shift {shift} is more than a quarter of the {min(h, w)}-pixel side: "
                             f"no shift{', flip kept' if flip else ''}")
    return AugmentPolicy(shift, flip, f"{c} x {h} x {w} images: shift {shift} px, flip {'on' if flip else 'off'}")

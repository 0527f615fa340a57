"""Image preprocessing without torchvision.

:func:`targetpad_transform` reproduces the transform every QuRe dataset applies (CLIP4Cir's
``targetpad_transform(1.25, 224)``, research notes datasets.md §5.1), step for step with
PIL operations that match torchvision's PIL path: TargetPad (zero padding to aspect
ratio 1.25 when the image is more elongated than that), Resize of the shorter side to
224 (bicubic), CenterCrop 224, conversion to RGB (after padding, so palette or RGBA
images are padded in their own mode), ToTensor and CLIP mean/std normalisation.

:func:`simple_transform` is the mini backbone's: RGB, bilinear resize to a square,
normalise. Both transforms carry a JSON-able ``config`` that goes into feature-cache
fingerprints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image, ImageOps

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


class ImageTransform(Protocol):
    """A PIL image -> normalised [3,H,W] float tensor, with a JSON-able description."""

    @property
    def config(self) -> dict[str, Any]: ...

    def __call__(self, image: Image.Image) -> torch.Tensor: ...


def load_image(path: str | Path, mode: str | None = "RGB") -> Image.Image:
    """Read an image fully into memory; ``mode=None`` keeps the file's own mode (needed by
    :func:`targetpad_transform`, which converts to RGB only after padding)."""
    with Image.open(path) as handle:
        handle.load()
        image = handle if mode is None else handle.convert(mode)
        return image.copy() if image is handle else image


def to_tensor_normalised(image: Image.Image, size: int | tuple[int, int] | None,
                         mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB PIL image -> float32 [3,H,W] in [0,1], then ``(x - mean) / std`` per channel.

    ``size`` (``int`` for a square, or ``(width, height)``) resizes bilinearly first when
    the image differs; ``None`` keeps it as is.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    if size is not None:
        wh = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if image.size != wh:
            image = image.resize(wh, Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    array = array.transpose(2, 0, 1)
    mean_ = np.asarray(mean, dtype=np.float32)[:, None, None]
    std_ = np.asarray(std, dtype=np.float32)[:, None, None]
    return torch.from_numpy(np.ascontiguousarray((array - mean_) / std_))


def target_pad_sizes(width: int, height: int, target_ratio: float = 1.25) -> tuple[int, int]:
    """CLIP4Cir TargetPad: per-side (horizontal, vertical) zero padding for an image.

    Nothing when ``max/min < target_ratio``; otherwise each side gets
    ``max(int((max(w, h) / target_ratio - side) / 2), 0)``, so the longer side keeps its
    length and the shorter one grows to ``max / target_ratio`` (up to int truncation).
    """
    if max(width, height) / min(width, height) < target_ratio:
        return 0, 0
    scaled = max(width, height) / target_ratio
    return max(int((scaled - width) / 2), 0), max(int((scaled - height) / 2), 0)


def target_pad(image: Image.Image, target_ratio: float = 1.25) -> Image.Image:
    """Zero-pad ``image`` in its own mode (palette images keep their palette, so they pad
    with palette index 0, as torchvision does)."""
    horizontal, vertical = target_pad_sizes(*image.size, target_ratio=target_ratio)
    if horizontal == 0 and vertical == 0:
        return image
    bands = len(image.getbands())
    fill: int | tuple[int, ...] = 0 if bands == 1 else (0,) * bands
    border = (horizontal, vertical, horizontal, vertical)
    if image.mode == "P":
        palette = image.getpalette()
        padded = ImageOps.expand(image, border=border, fill=fill)
        if palette is not None:
            padded.putpalette(palette)
        return padded
    return ImageOps.expand(image, border=border, fill=fill)


def resize_shorter(image: Image.Image, size: int,
                   resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """torchvision ``Resize(size)``: shorter side to ``size``, longer side
    ``int(size * long / short)`` (truncated); unchanged if already that size."""
    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    return image if new == image.size else image.resize(new, resample)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision ``CenterCrop(size)`` for an image at least ``size`` on both sides
    (offsets ``int(round((side - size) / 2))``, Python rounding)."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"image {width}x{height} is smaller than the {size} crop")
    left = round((width - size) / 2.0)
    top = round((height - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


@dataclass(frozen=True)
class TargetPadTransform:
    """QuRe's image transform; see :func:`targetpad_transform`."""

    target_ratio: float = 1.25
    size: int = 224
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    @property
    def config(self) -> dict[str, Any]:
        return {"name": "targetpad", "target_ratio": self.target_ratio, "size": self.size,
                "interpolation": "bicubic", "mean": list(self.mean), "std": list(self.std)}

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = target_pad(image, self.target_ratio)
        image = center_crop(resize_shorter(image, self.size), self.size)
        return to_tensor_normalised(image.convert("RGB"), None, self.mean, self.std)


@dataclass(frozen=True)
class SimpleTransform:
    """RGB, bilinear resize to ``size`` x ``size`` (aspect ratio not kept), normalise."""

    size: int = 64
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    @property
    def config(self) -> dict[str, Any]:
        return {"name": "simple", "size": self.size, "interpolation": "bilinear",
                "mean": list(self.mean), "std": list(self.std)}

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return to_tensor_normalised(image.convert("RGB"), self.size, self.mean, self.std)


def targetpad_transform(target_ratio: float = 1.25, size: int = 224) -> TargetPadTransform:
    """CLIP4Cir/QuRe ``targetpad_transform(target_ratio, size)``."""
    return TargetPadTransform(float(target_ratio), int(size))


def simple_transform(size: int = 64) -> SimpleTransform:
    """The mini backbone's transform."""
    return SimpleTransform(int(size))


def build_transform(config: Mapping[str, Any]) -> TargetPadTransform | SimpleTransform:
    """The transform a ``config`` dict (as produced by ``.config``) describes."""
    name = config.get("name")
    mean = tuple(float(x) for x in config.get("mean", CLIP_MEAN))
    std = tuple(float(x) for x in config.get("std", CLIP_STD))
    if name == "targetpad":
        return TargetPadTransform(float(config.get("target_ratio", 1.25)),
                                  int(config.get("size", 224)), mean, std)
    if name == "simple":
        return SimpleTransform(int(config.get("size", 64)), mean, std)
    raise ValueError(f"unknown transform {name!r}; expected 'targetpad' or 'simple'")

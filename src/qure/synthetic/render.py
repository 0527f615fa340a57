"""The drawing layer shared by the fashion and scene worlds.

Shapes are drawn with PIL on a canvas twice the output size, box-downsampled (cheap
anti-aliasing), then pixel noise is added and the image is encoded. Coordinates are in the
unit square; ``Canvas`` maps them to pixels. Encoders are byte-deterministic: PNG is
written by hand (no timestamps, fixed filter and zlib level) and JPEG by PIL with fixed
settings and no metadata.
"""

from __future__ import annotations

import hashlib
import io
import math
import multiprocessing
import os
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from qure.synthetic.common import ImageJob

RGB = tuple[int, int, int]
Point = tuple[float, float]

SUPERSAMPLE = 2
JPEG_QUALITY = 92
NOISE_BANK_SIZE, NOISE_BANK_SEED = 384, 20250713
PARALLEL_MIN_JOBS = 1500  # below this a process pool costs more than it saves


# --- colours ------------------------------------------------------------------------------

def luminance(color: RGB) -> float:
    r, g, b = color
    return 0.299 * r + 0.587 * g + 0.114 * b


def rgb(values: Iterable[float]) -> RGB:
    """Three channel values rounded and clipped to 0..255."""
    r, g, b = (min(255, max(0, round(float(v)))) for v in values)
    return r, g, b


def mix(a: RGB, b: RGB, t: float) -> RGB:
    """``a`` moved a fraction ``t`` of the way towards ``b``."""
    return rgb(x + (y - x) * t for x, y in zip(a, b, strict=True))


def jitter(rng: np.random.Generator, color: RGB, amount: int) -> RGB:
    """``color`` with each channel shifted by up to ``amount`` (a nuisance, not a new name)."""
    deltas = rng.integers(-amount, amount + 1, size=3)
    return rgb(c + int(d) for c, d in zip(color, deltas, strict=True))


def contrast_ink(color: RGB, strength: float = 0.5) -> RGB:
    """A tone of ``color`` that stands out on it: paler on dark colours, darker on light
    ones. Moderate by default so that a patterned garment keeps its colour name."""
    target = (255, 255, 255) if luminance(color) < 135 else (0, 0, 0)
    return mix(color, target, strength)


def extreme_of(color: RGB) -> tuple[RGB, RGB]:
    """(fill, outline) in near-white/near-black, whichever pair contrasts with ``color``."""
    light, dark = (250, 250, 250), (16, 16, 16)
    return (light, dark) if luminance(color) < 150 else (dark, light)


def outline_of(color: RGB) -> RGB:
    """A darker edge colour, so that white shapes stay visible on pale backgrounds."""
    return mix(color, (0, 0, 0), 0.55) if luminance(color) > 60 else (110, 110, 110)


# --- shape geometry (unit coordinates) ----------------------------------------------------

def rotate(points: Iterable[Point], center: Point, degrees: float) -> list[Point]:
    cx, cy = center
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c)
            for x, y in points]


def regular_polygon(center: Point, radius: float, sides: int, degrees: float = 0.0) -> list[Point]:
    """A regular polygon with a vertex pointing up (before rotation)."""
    cx, cy = center
    return [(cx + radius * math.sin(2 * math.pi * k / sides + math.radians(degrees)),
             cy - radius * math.cos(2 * math.pi * k / sides + math.radians(degrees)))
            for k in range(sides)]


def star_polygon(center: Point, radius: float, degrees: float = 0.0, points: int = 5,
                 inner: float = 0.45) -> list[Point]:
    cx, cy = center
    out = []
    for k in range(2 * points):
        r = radius if k % 2 == 0 else radius * inner
        angle = math.pi * k / points + math.radians(degrees)
        out.append((cx + r * math.sin(angle), cy - r * math.cos(angle)))
    return out


def cross_polygon(center: Point, radius: float, degrees: float = 0.0,
                  arm: float = 0.36) -> list[Point]:
    """A plus sign whose arms are ``2 * arm * radius`` wide."""
    cx, cy = center
    a, r = arm * radius, radius
    outline = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r),
               (-a, a), (-r, a), (-r, -a), (-a, -a)]
    return rotate([(cx + x, cy + y) for x, y in outline], center, degrees)


def heart_polygon(center: Point, radius: float, steps: int = 40) -> list[Point]:
    """The classic parametric heart, scaled to fit in a circle of ``radius``."""
    cx, cy = center
    pts = []
    for k in range(steps):
        t = 2 * math.pi * k / steps
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((cx + radius * x / 17, cy - radius * (y + 2.5) / 17))
    return pts


def letter_a_strokes(center: Point, radius: float) -> list[tuple[Point, Point]]:
    """The capital letter A as three strokes."""
    cx, cy = center
    top = (cx, cy - radius)
    left, right = (cx - 0.75 * radius, cy + radius), (cx + 0.75 * radius, cy + radius)
    bar = ((cx - 0.4 * radius, cy + 0.2 * radius), (cx + 0.4 * radius, cy + 0.2 * radius))
    return [(left, top), (top, right), bar]


def mirror_x(points: Sequence[Point]) -> list[Point]:
    """Reflect unit-square points about the vertical centre line."""
    return [(1.0 - x, y) for x, y in points]


# --- textures -----------------------------------------------------------------------------

def pattern_texture(pattern: str, px: int, base: RGB, ink: RGB, period: float,
                    phase: tuple[float, float]) -> Image.Image:
    """A ``px``-square RGB texture: solid, stripes, dots or checks with the given period (px)."""
    if pattern == "solid":
        return Image.new("RGB", (px, px), base)
    # Every pattern is separable, so build it from a column and a row vector.
    y = (np.arange(px, dtype=np.float32) + phase[0])[:, None]
    x = (np.arange(px, dtype=np.float32) + phase[1])[None, :]
    if pattern == "stripes":
        on = np.broadcast_to((y % period) < 0.4 * period, (px, px))
    elif pattern == "dots":
        dy, dx = (y % period) - period / 2, (x % period) - period / 2
        on = dy * dy + dx * dx <= (0.3 * period) ** 2
    elif pattern == "checks":
        on = (np.floor(y / (period / 2)) + np.floor(x / (period / 2))) % 2 == 0
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    mask = Image.fromarray(np.ascontiguousarray(on, dtype=np.uint8) * np.uint8(255), "L")
    return Image.composite(Image.new("RGB", (px, px), ink), Image.new("RGB", (px, px), base),
                           mask)


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed field of standard-normal noise; each image adds a random crop of it
    (drawing fresh Gaussian noise per image cost as much as drawing the garment)."""
    return np.random.default_rng(NOISE_BANK_SEED).standard_normal(
        (NOISE_BANK_SIZE, NOISE_BANK_SIZE, 3), dtype=np.float32)


# --- canvas -------------------------------------------------------------------------------

class Canvas:
    """A supersampled RGB drawing surface addressed in unit coordinates."""

    def __init__(self, size: int, top: RGB, bottom: RGB):
        self.size = size
        self.px = size * SUPERSAMPLE
        ramp = np.linspace(0.0, 1.0, self.px, dtype=np.float32)[:, None, None]
        column = np.array(top, np.float32) * (1 - ramp) + np.array(bottom, np.float32) * ramp
        # A one-pixel-wide vertical gradient stretched sideways (cheaper than a full array).
        self.image = Image.fromarray(column.round().astype(np.uint8), "RGB").resize(
            (self.px, self.px), Image.Resampling.NEAREST)
        self.draw = ImageDraw.Draw(self.image)

    def pixels(self, points: Iterable[Point]) -> list[Point]:
        return [(x * self.px, y * self.px) for x, y in points]

    def width(self, unit: float) -> int:
        """A stroke width in supersampled pixels, at least one."""
        return max(1, round(unit * self.px))

    def polygon(self, points: Sequence[Point], fill: RGB | None,
                outline: RGB | None = None, width: float = 0.02) -> None:
        self.draw.polygon(self.pixels(points), fill=fill, outline=outline,
                          width=self.width(width) if outline else 1)

    def ellipse(self, center: Point, radius: tuple[float, float], fill: RGB | None,
                outline: RGB | None = None, width: float = 0.02) -> None:
        cx, cy = center
        box = self.pixels([(cx - radius[0], cy - radius[1]), (cx + radius[0], cy + radius[1])])
        self.draw.ellipse([box[0], box[1]], fill=fill, outline=outline,
                          width=self.width(width) if outline else 1)

    def line(self, start: Point, end: Point, color: RGB, width: float) -> None:
        self.draw.line(self.pixels([start, end]), fill=color, width=self.width(width))

    def new_mask(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        mask = Image.new("L", (self.px, self.px), 0)
        return mask, ImageDraw.Draw(mask)

    def paste(self, texture: Image.Image, mask: Image.Image) -> None:
        self.image.paste(texture, (0, 0), mask)

    def finish(self, rng: np.random.Generator, noise_sigma: float) -> np.ndarray:
        """Downsample to the output size and add Gaussian pixel noise: HxWx3 uint8."""
        small = np.asarray(self.image.reduce(SUPERSAMPLE), dtype=np.float32)
        bank = _noise_bank()
        top, left = (int(v) for v in rng.integers(0, len(bank) - self.size, size=2))
        small += bank[top:top + self.size, left:left + self.size] * noise_sigma
        return np.rint(np.clip(small, 0, 255, out=small), out=small).astype(np.uint8)


# --- encoding -----------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(pixels: np.ndarray) -> bytes:
    """A minimal RGB PNG with the "Sub" filter on every row; ~5x faster than PIL's
    adaptive filtering on noisy images and free of timestamps."""
    height, width, _ = pixels.shape
    rows = pixels.reshape(height, width * 3).astype(np.int16)
    filtered = rows.copy()
    filtered[:, 3:] = rows[:, 3:] - rows[:, :-3]  # Sub: difference to the pixel on the left
    raw = np.empty((height, width * 3 + 1), np.uint8)
    raw[:, 0] = 1
    raw[:, 1:] = (filtered % 256).astype(np.uint8)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + _png_chunk(b"IEND", b""))


def encode_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY,
                                        optimize=False, progressive=False)
    return buffer.getvalue()


ENCODERS = {"png": encode_png, "jpeg": encode_jpeg}


# --- running jobs -------------------------------------------------------------------------
#
# Images are written the way qure.io.atomic_write writes one file (temporary sibling, then
# rename, so a reader never sees a partial image under its final name) but with ONE flush
# for the whole batch: fsync per file costs 1-7 ms on the disks measured here, which for
# ~15k images is longer than the whole generation budget.

def _flush_all(paths: Sequence[Path]) -> None:
    if hasattr(os, "sync"):
        os.sync()
        return
    for path in paths:  # pragma: no cover - platforms without sync()
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())


def _stage_chunk(jobs: list[ImageJob], root: Path, size: int) -> list[tuple[str, str, str]]:
    """Render and encode ``jobs`` into temporary files: [(path, temporary path, sha256)]."""
    staged: list[tuple[str, str, str]] = []
    try:
        for job in jobs:
            data = ENCODERS[job.fmt](job.paint(job.design, job.render_seed, size))
            final = root / job.path
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp",
                                       dir=final.parent)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            staged.append((job.path, tmp, hashlib.sha256(data).hexdigest()))
    except BaseException:
        for _, tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    return staged


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork is fastest, but forking a process that has loaded torch (and its thread pools)
    # can deadlock, so use forkserver then; spawn where fork does not exist.
    if sys.platform != "linux":
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("forkserver" if "torch" in sys.modules else "fork")


def _stage_all(jobs: Sequence[ImageJob], root: Path, size: int,
               workers: int) -> list[tuple[str, str, str]]:
    if workers == 1 or len(jobs) < PARALLEL_MIN_JOBS:
        return _stage_chunk(list(jobs), root, size)
    step = max(32, math.ceil(len(jobs) / (workers * 8)))
    chunks = [list(jobs[i:i + step]) for i in range(0, len(jobs), step)]
    staged: list[tuple[str, str, str]] = []
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            for result in pool.map(_stage_chunk, chunks, [root] * len(chunks),
                                   [size] * len(chunks)):
                staged += result
    except BaseException:
        for _, tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    return staged


def render_all(jobs: Sequence[ImageJob], root: Path, size: int,
               workers: int | None = None) -> dict[str, str]:
    """Render and atomically write every job (in parallel when worth it): {path: sha256}.

    Each job's pixels depend only on the job, so the output does not depend on the number
    of workers or on scheduling.
    """
    workers = default_workers() if workers is None else max(1, workers)
    for folder in sorted({(root / job.path).parent for job in jobs}):
        folder.mkdir(parents=True, exist_ok=True)
    staged = _stage_all(jobs, root, size, workers)
    try:
        _flush_all([Path(tmp) for _, tmp, _ in staged])
        for rel, tmp, _ in staged:
            os.replace(tmp, root / rel)
    finally:
        for _, tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
    return {rel: digest for rel, _, digest in staged}

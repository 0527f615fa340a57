"""The fashion world: garments with a category silhouette, colour, pattern, sleeves,
neckline and a chest print, drawn on a tinted studio background.

Categories have distinct silhouettes (a flared full-length dress; a long shirt with collar
points and a button placket; a wide, cropped top with a hem band). Nuisance per image:
placement, scale, exact shade, pattern phase and period, background tint and noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qure.synthetic.common import Design
from qure.synthetic.render import (
    RGB,
    SUPERSAMPLE,
    Canvas,
    Point,
    contrast_ink,
    extreme_of,
    heart_polygon,
    jitter,
    letter_a_strokes,
    mirror_x,
    mix,
    outline_of,
    pattern_texture,
    rgb,
    star_polygon,
)
from qure.synthetic.world import AttributeSchema

CATEGORIES = ("dress", "shirt", "toptee")

GARMENT_COLORS: dict[str, RGB] = {
    "black": (28, 28, 30),
    "white": (244, 244, 242),
    "gray": (132, 132, 136),
    "red": (204, 30, 38),
    "pink": (244, 132, 186),
    "orange": (240, 128, 20),
    "yellow": (240, 212, 40),
    "green": (36, 148, 62),
    "blue": (36, 80, 204),
    "purple": (118, 48, 164),
}

FASHION = AttributeSchema(
    world="fashion",
    attributes=("category", "color", "pattern", "sleeves", "neckline", "logo"),
    values={
        "category": CATEGORIES,
        "color": tuple(GARMENT_COLORS),
        "pattern": ("solid", "stripes", "dots", "checks"),
        "sleeves": ("sleeveless", "short", "long"),
        "neckline": ("round", "v-neck", "square"),
        "logo": ("none", "star", "heart", "letter"),
    },
    fixed=("category",),
    # Plain garments are the most common, as in any catalogue.
    weights={"pattern": (0.4, 0.2, 0.2, 0.2), "logo": (0.4, 0.2, 0.2, 0.2)},
)


@dataclass(frozen=True)
class Silhouette:
    """A category's outline in unit coordinates (left sleeves; right ones are mirrored)."""

    body: tuple[Point, ...]
    short_sleeve: tuple[Point, ...]
    long_sleeve: tuple[Point, ...]
    neck_y: float
    logo_center: Point
    logo_radius: float


SILHOUETTES = {
    "dress": Silhouette(
        body=((0.35, 0.16), (0.65, 0.16), (0.61, 0.42), (0.80, 0.94), (0.20, 0.94), (0.39, 0.42)),
        short_sleeve=((0.35, 0.16), (0.24, 0.21), (0.28, 0.33), (0.37, 0.28)),
        long_sleeve=((0.35, 0.16), (0.24, 0.20), (0.16, 0.58), (0.23, 0.60), (0.37, 0.30)),
        neck_y=0.16, logo_center=(0.5, 0.66), logo_radius=0.085),
    "shirt": Silhouette(
        body=((0.32, 0.15), (0.68, 0.15), (0.69, 0.85), (0.31, 0.85)),
        short_sleeve=((0.32, 0.15), (0.20, 0.23), (0.25, 0.38), (0.33, 0.33)),
        long_sleeve=((0.32, 0.15), (0.21, 0.21), (0.12, 0.76), (0.20, 0.78), (0.32, 0.37)),
        neck_y=0.15, logo_center=(0.5, 0.5), logo_radius=0.085),
    "toptee": Silhouette(
        body=((0.28, 0.25), (0.72, 0.25), (0.74, 0.73), (0.26, 0.73)),
        short_sleeve=((0.28, 0.25), (0.14, 0.32), (0.19, 0.46), (0.29, 0.40)),
        long_sleeve=((0.28, 0.25), (0.16, 0.30), (0.08, 0.74), (0.16, 0.76), (0.28, 0.43)),
        neck_y=0.25, logo_center=(0.5, 0.5), logo_radius=0.09),
}


def neckline_curve(kind: str, neck_y: float) -> list[Point]:
    """The neckline's edge inside the garment, left to right (an open polyline)."""
    if kind == "round":
        angles = np.linspace(np.pi, 0.0, 13)
        return [(0.5 + 0.09 * float(np.cos(a)), neck_y + 0.09 * float(np.sin(a)))
                for a in angles]
    if kind == "v-neck":
        return [(0.41, neck_y), (0.5, neck_y + 0.17), (0.59, neck_y)]
    if kind == "square":
        return [(0.415, neck_y), (0.415, neck_y + 0.095), (0.585, neck_y + 0.095),
                (0.585, neck_y)]
    raise ValueError(f"unknown neckline {kind!r}")


def garment_parts(category: str, sleeves: str) -> list[Sequence[Point]]:
    """Body and sleeve polygons of a garment in unit coordinates."""
    shape = SILHOUETTES[category]
    parts: list[Sequence[Point]] = [shape.body]
    if sleeves != "sleeveless":
        sleeve = shape.short_sleeve if sleeves == "short" else shape.long_sleeve
        parts += [sleeve, mirror_x(sleeve)]
    return parts


class _Placement:
    """The per-image nuisance transform: scale about the centre, then shift."""

    def __init__(self, scale: float, shift: tuple[float, float]):
        self.scale, self.shift = scale, shift

    def __call__(self, points: Sequence[Point]) -> list[Point]:
        s, (dx, dy) = self.scale, self.shift
        return [(0.5 + s * (x - 0.5) + dx, 0.5 + s * (y - 0.5) + dy) for x, y in points]


def _draw_logo(canvas: Canvas, logo: str, center: Point, radius: float, base: RGB) -> None:
    # Near-white on near-black (or the reverse), so the print stays legible over patterns.
    ink, edge = extreme_of(base)
    if logo == "star":
        canvas.polygon(star_polygon(center, radius * 1.2, inner=0.5), ink, edge, width=0.01)
    elif logo == "heart":
        canvas.polygon(heart_polygon(center, radius), ink, edge, width=0.012)
    elif logo == "letter":
        for start, end in letter_a_strokes(center, radius):
            canvas.line(start, end, edge, width=0.055)
        for start, end in letter_a_strokes(center, radius):
            canvas.line(start, end, ink, width=0.03)
    elif logo != "none":
        raise ValueError(f"unknown logo {logo!r}")


def paint_garment(design: Design, render_seed: int, size: int) -> np.ndarray:
    """Render one garment design; nuisance comes from ``render_seed``."""
    rng = np.random.default_rng(render_seed)
    attrs = FASHION.as_dict(design)
    shape = SILHOUETTES[attrs["category"]]
    top = rgb(rng.uniform(200, 252, size=3))
    canvas = Canvas(size, top, mix(top, (0, 0, 0), float(rng.uniform(0.0, 0.12))))
    place = _Placement(float(rng.uniform(0.86, 1.04)),
                       (float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.04, 0.04))))
    base = jitter(rng, GARMENT_COLORS[attrs["color"]], 8)
    ink, edge = contrast_ink(base, 0.45), outline_of(base)  # pattern ink, seam colour

    period = float(rng.uniform(9.0, 12.0)) * SUPERSAMPLE * place.scale
    phase = (float(rng.uniform(0, period)), float(rng.uniform(0, period)))
    texture = pattern_texture(attrs["pattern"], canvas.px, base, ink, period, phase)

    parts = [place(p) for p in garment_parts(attrs["category"], attrs["sleeves"])]
    neck = place(neckline_curve(attrs["neckline"], shape.neck_y))
    lift = 0.08 * place.scale  # close the neckline cut above the shoulder line
    cut = [*neck, (neck[-1][0], neck[-1][1] - lift), (neck[0][0], neck[0][1] - lift)]
    mask, mask_draw = canvas.new_mask()
    for part in parts:
        mask_draw.polygon(canvas.pixels(part), fill=255)
    mask_draw.polygon(canvas.pixels(cut), fill=0)
    canvas.paste(texture, mask)
    for part in parts:
        canvas.polygon(part, None, edge, width=0.012)
    canvas.draw.line(canvas.pixels(neck), fill=edge, width=canvas.width(0.014), joint="curve")

    _draw_category_details(canvas, attrs["category"], place, neck, base, edge)
    center, radius = place([shape.logo_center])[0], shape.logo_radius * place.scale
    _draw_logo(canvas, attrs["logo"], center, radius, base)
    return canvas.finish(rng, noise_sigma=float(rng.uniform(1.5, 3.5)))


def _draw_category_details(canvas: Canvas, category: str, place: _Placement,
                           neck: Sequence[Point], base: RGB, edge: RGB) -> None:
    """Category cues beyond the outline: waist seam, collar and placket, hem band."""
    if category == "dress":
        canvas.line(*place([(0.39, 0.42), (0.61, 0.42)]), edge, width=0.012)
    elif category == "shirt":
        # Collar flaps lie on the shoulders beside the neckline so they do not hide it.
        for collar in ([(0.33, 0.14), (0.415, 0.14), (0.40, 0.25)],
                       [(0.67, 0.14), (0.585, 0.14), (0.60, 0.25)]):
            canvas.polygon(place(collar), mix(base, (255, 255, 255), 0.15), edge, width=0.012)
        # The placket runs from the bottom of the neckline to the hem.
        start = ((neck[0][0] + neck[-1][0]) / 2, max(y for _, y in neck))
        canvas.line(start, place([(0.5, 0.85)])[0], edge, width=0.014)
    elif category == "toptee":
        band = [(0.26, 0.67), (0.74, 0.67), (0.74, 0.73), (0.26, 0.73)]
        canvas.polygon(place(band), mix(base, (0, 0, 0), 0.3), edge, width=0.012)

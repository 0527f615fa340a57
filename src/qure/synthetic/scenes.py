"""The general-domain scene world shared by mini-CIRR and mini-CIRCO: one to four objects
of one kind, colour and size on a coloured background.

Nuisance per image: which grid cells the objects occupy and their jitter, rotation and
exact size, the exact shades, the background gradient and pixel noise.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qure.synthetic.common import NUMBER_WORDS, Design
from qure.synthetic.render import (
    RGB,
    Canvas,
    Point,
    cross_polygon,
    jitter,
    mix,
    outline_of,
    regular_polygon,
    star_polygon,
)
from qure.synthetic.world import AttributeSchema

OBJECT_COLORS: dict[str, RGB] = {
    "red": (210, 34, 40),
    "orange": (244, 134, 24),
    "yellow": (242, 216, 36),
    "green": (40, 156, 60),
    "blue": (40, 84, 210),
    "purple": (128, 52, 172),
}
BACKGROUNDS: dict[str, RGB] = {
    "white": (242, 242, 240),
    "gray": (128, 128, 130),
    "black": (24, 24, 28),
    "beige": (226, 206, 164),
    "blue": (116, 168, 226),
    "green": (132, 196, 124),
}
KINDS = ("circle", "square", "triangle", "star", "cross", "ring")
PLURALS = {"cross": "crosses"}
OBJECT_RADIUS = {"small": 0.085, "large": 0.15}
# Grid cells that keep objects of each size apart and inside the frame.
CELLS = {
    "small": [(x, y) for y in (0.2, 0.5, 0.8) for x in (0.2, 0.5, 0.8)],
    "large": [(x, y) for y in (0.27, 0.73) for x in (0.27, 0.73)],
}


def _legible(values: Mapping[str, str]) -> bool:
    # A blue object on a blue background would be invisible, so such scenes do not exist.
    return values["color"] != values["background"]


SCENE = AttributeSchema(
    world="scene",
    attributes=("kind", "count", "color", "size", "background"),
    values={
        "kind": KINDS,
        "count": ("1", "2", "3", "4"),
        "color": tuple(OBJECT_COLORS),
        "size": ("small", "large"),
        "background": tuple(BACKGROUNDS),
    },
    valid=_legible,
)


def plural(kind: str) -> str:
    return PLURALS.get(kind, kind + "s")


def noun(kind: str, count: int) -> str:
    """``circle`` or ``circles`` as the count requires."""
    return kind if count == 1 else plural(kind)


def _draw_object(canvas: Canvas, kind: str, center: Point, radius: float, degrees: float,
                 fill: RGB, edge: RGB) -> None:
    width = 0.012
    if kind == "circle":
        canvas.ellipse(center, (radius, radius), fill, edge, width)
    elif kind == "ring":
        canvas.ellipse(center, (radius, radius), None, fill, 0.42 * radius)
        canvas.ellipse(center, (radius, radius), None, edge, width)
        canvas.ellipse(center, (0.58 * radius, 0.58 * radius), None, edge, width)
    elif kind == "square":
        canvas.polygon(regular_polygon(center, radius * 1.2, 4, 45 + degrees), fill, edge, width)
    elif kind == "triangle":
        cx, cy = center  # shift down so the triangle's area sits on the cell centre
        canvas.polygon(regular_polygon((cx, cy + 0.15 * radius), radius * 1.2, 3, degrees),
                       fill, edge, width)
    elif kind == "star":
        canvas.polygon(star_polygon(center, radius * 1.15, degrees), fill, edge, width)
    elif kind == "cross":
        canvas.polygon(cross_polygon(center, radius, degrees),
                       fill, edge, width)
    else:
        raise ValueError(f"unknown object kind {kind!r}")


def paint_scene(design: Design, render_seed: int, size: int) -> np.ndarray:
    """Render one scene design; nuisance comes from ``render_seed``."""
    rng = np.random.default_rng(render_seed)
    attrs = SCENE.as_dict(design)
    background = jitter(rng, BACKGROUNDS[attrs["background"]], 10)
    shade = (0, 0, 0) if rng.random() < 0.5 else (255, 255, 255)
    canvas = Canvas(size, background, mix(background, shade, float(rng.uniform(0.0, 0.15))))
    cells = CELLS[attrs["size"]]
    chosen = sorted(int(i) for i in rng.choice(len(cells), size=int(attrs["count"]),
                                               replace=False))
    base_color = OBJECT_COLORS[attrs["color"]]
    for index in chosen:
        cx, cy = cells[index]
        center = (cx + float(rng.uniform(-0.045, 0.045)), cy + float(rng.uniform(-0.045, 0.045)))
        radius = OBJECT_RADIUS[attrs["size"]] * float(rng.uniform(0.9, 1.08))
        fill = jitter(rng, base_color, 12)
        _draw_object(canvas, attrs["kind"], center, radius, float(rng.uniform(-15, 15)),
                     fill, outline_of(fill))
    return canvas.finish(rng, noise_sigma=float(rng.uniform(1.5, 3.5)))


def counted(kind: str, count: int) -> str:
    """'one circle', 'three stars'."""
    return f"{NUMBER_WORDS[count]} {noun(kind, count)}"


def indefinite(phrase: str) -> str:
    """'a circle', 'an orange star'."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def with_article(kind: str, count: int, adjective: str = "") -> str:
    """'a circle' / 'an orange circle' for one object, '(orange) circles' otherwise."""
    words = f"{adjective} " if adjective else ""
    return indefinite(words + kind) if count == 1 else words + plural(kind)

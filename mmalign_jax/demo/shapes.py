"""Scenes of coloured shapes on a 3×3 grid, and how to draw them.

A scene holds 1–4 objects. Each object has a shape, a colour, a grid cell (row, col) and a
size/offset inside that cell. No two objects share a cell, and no two share the same
(colour, shape) pair, so "the red circle" always names exactly one object. Every grid cell has
a name ("top left", "top", "center", ...) so positions can be asked about and checked.

Everything is deterministic: `random_scene(rng)` consumes a `random.Random`, and
`draw_scene(scene)` is a pure function of the scene.
"""
from __future__ import annotations

import dataclasses
import math
import random
from typing import Iterable, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star")

# Clearly distinct, saturated colours on a dark gray background.
COLORS: dict = {
    "red": (222, 40, 40),
    "green": (40, 180, 70),
    "blue": (45, 105, 245),
    "yellow": (245, 220, 40),
    "purple": (155, 65, 215),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
COLOR_NAMES: Tuple[str, ...] = tuple(COLORS)
BACKGROUND = (48, 48, 48)
BACKGROUND_NAME = "dark gray"

GRID = 3
# Canonical name of every cell of the 3×3 grid, (row, col) with row 0 at the top.
POSITION_NAMES: dict = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}
# Natural phrases for each cell (the first is canonical). All are understood by the scorer.
POSITION_PHRASES: dict = {
    (0, 0): ("in the top left", "in the top left corner", "in the upper left"),
    (0, 1): ("at the top", "in the top middle", "at the top center"),
    (0, 2): ("in the top right", "in the top right corner", "in the upper right"),
    (1, 0): ("on the left", "on the left side", "in the middle left"),
    (1, 1): ("in the center", "in the middle", "in the center of the image"),
    (1, 2): ("on the right", "on the right side", "in the middle right"),
    (2, 0): ("in the bottom left", "in the bottom left corner", "in the lower left"),
    (2, 1): ("at the bottom", "in the bottom middle", "at the bottom center"),
    (2, 2): ("in the bottom right", "in the bottom right corner", "in the lower right"),
}

PLURALS = {s: s + "s" for s in SHAPES}


@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    row: int
    col: int
    size: float = 0.7   # diameter as a fraction of the cell side
    dx: float = 0.0     # offset of the centre from the cell centre, fraction of the cell side
    dy: float = 0.0

    @property
    def position(self) -> str:
        return POSITION_NAMES[(self.row, self.col)]

    @property
    def cell(self) -> Tuple[int, int]:
        return (self.row, self.col)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["position"] = self.position  # redundant, for readers of the JSON
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SceneObject":
        return cls(shape=d["shape"], color=d["color"], row=int(d["row"]), col=int(d["col"]),
                   size=float(d.get("size", 0.7)), dx=float(d.get("dx", 0.0)),
                   dy=float(d.get("dy", 0.0)))


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: Tuple[SceneObject, ...]
    grid: int = GRID

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        cells = [o.cell for o in self.objects]
        names = [(o.color, o.shape) for o in self.objects]
        if len(set(cells)) != len(cells) or len(set(names)) != len(names):
            raise ValueError("scene objects must have distinct cells and distinct (color, shape)")
        for o in self.objects:
            if o.shape not in SHAPES or o.color not in COLORS:
                raise ValueError(f"unknown shape/color {o.shape!r}/{o.color!r}")
            if not (0 <= o.row < self.grid and 0 <= o.col < self.grid):
                raise ValueError(f"cell {o.cell} outside a {self.grid}x{self.grid} grid")

    # -- queries used by questions and the scorer --
    def count(self, shape: Optional[str] = None, color: Optional[str] = None) -> int:
        return sum(1 for o in self.objects
                   if (shape is None or o.shape == shape) and (color is None or o.color == color))

    def find(self, color: Optional[str] = None, shape: Optional[str] = None) -> list:
        return [o for o in self.objects
                if (shape is None or o.shape == shape) and (color is None or o.color == color)]

    def sorted_objects(self) -> list:
        """Objects in reading order (top to bottom, left to right)."""
        return sorted(self.objects, key=lambda o: (o.row, o.col))

    def to_json(self) -> dict:
        return {"grid": self.grid, "background": BACKGROUND_NAME,
                "objects": [o.to_json() for o in self.objects]}

    @classmethod
    def from_json(cls, d) -> "Scene":
        if isinstance(d, Scene):
            return d
        return cls(objects=tuple(SceneObject.from_json(o) for o in d["objects"]),
                   grid=int(d.get("grid", GRID)))


def random_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 4) -> Scene:
    n = rng.randint(min_objects, max_objects)
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], n)
    pairs = rng.sample([(c, s) for c in COLOR_NAMES for s in SHAPES], n)
    objs = []
    for (row, col), (color, shape) in zip(cells, pairs):
        size = round(rng.uniform(0.6, 0.85), 3)
        slack = (1.0 - size) / 2 * 0.8
        dx = round(rng.uniform(-slack, slack), 3)
        dy = round(rng.uniform(-slack, slack), 3)
        objs.append(SceneObject(shape, color, row, col, size, dx, dy))
    return Scene(tuple(objs))


def _regular_points(cx: float, cy: float, radii: Sequence[float], n: int, start_deg: float):
    pts = []
    for i in range(n):
        a = math.radians(start_deg + 360.0 * i / n)
        r = radii[i % len(radii)]
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def _draw_object(draw: ImageDraw.ImageDraw, o: SceneObject, cell: float) -> None:
    cx = (o.col + 0.5 + o.dx) * cell
    cy = (o.row + 0.5 + o.dy) * cell
    r = o.size * cell / 2
    fill = COLORS[o.color]
    if o.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif o.shape == "square":
        h = r * 0.85
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif o.shape == "triangle":
        draw.polygon(_regular_points(cx, cy + r * 0.15, [r * 1.05], 3, -90.0), fill=fill)
    elif o.shape == "star":
        draw.polygon(_regular_points(cx, cy + r * 0.05, [r * 1.08, r * 0.45], 10, -90.0), fill=fill)
    else:  # pragma: no cover - guarded by Scene validation
        raise ValueError(o.shape)


def draw_scene(scene: Scene, size: int = 64, supersample: int = 4) -> Image.Image:
    """RGB image of `scene`, `size`×`size` pixels (drawn `supersample`× larger, then reduced
    with a box filter for smooth edges). Deterministic."""
    scene = Scene.from_json(scene)
    big = size * supersample
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    cell = big / scene.grid
    for o in scene.objects:
        _draw_object(draw, o, cell)
    if supersample > 1:
        img = img.resize((size, size), Image.Resampling.BOX)
    return img


def describe_objects(objects: Iterable[SceneObject]) -> str:
    return ", ".join(o.name for o in objects)

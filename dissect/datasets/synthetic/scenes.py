"""Objects, parts and scenes of the synthetic world, and the renderer that paints one image.

Every object is a list of primitives (rectangles, ellipses, polygons) in a unit box, each
belonging to a named part. A scene is a set of four characteristic objects; an image of a scene
shows three or four of them. Any three objects identify the scene (no two scenes share three), so
a scene can only be recognised through its objects: backgrounds, object colours and materials,
positions, scales and counts are drawn independently of the scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .textures import BACKGROUND_MATERIALS, MATERIALS, OBJECT_MATERIALS, PALETTE, TILE, texture

# A primitive: (part, kind, parameters) in unit-box coordinates (u right, v down, both 0..1).
#   rect: (u0, v0, u1, v1); ellipse: (cu, cv, ru, rv, v_max); poly: ((u, v), ...) in either
#   order (see _inside_polygon).
Primitive = tuple[str, str, tuple]


@dataclass(frozen=True)
class ObjectKind:
    """One object class.

    Attributes
    ----------
    name : str
        The object concept.
    aspect : float
        Width / height of its box.
    height : float
        Typical height as a fraction of the image side (randomised by +-30% per instance).
    primitives : tuple of Primitive
        Painted in order; later ones cover earlier ones.
    """

    name: str
    aspect: float
    height: float
    primitives: tuple[Primitive, ...]

    @property
    def parts(self) -> tuple[str, ...]:
        """Part names in order of first appearance."""
        return tuple(dict.fromkeys(part for part, _, _ in self.primitives))


# Heights are 14-25 % of the image side (about 16-35 px at 112 px): most objects span one or two
# cells of the built-in networks' conv5 (stride 16), so a unit can cover a whole object, not
# only a part of it (issue 13; at twice these heights conv5 units settled on parts).
OBJECTS = (
    ObjectKind(
        "car",
        2.0,
        0.14,
        (
            ("body", "rect", (0.0, 0.38, 1.0, 0.8)),
            ("body", "poly", ((0.18, 0.4), (0.3, 0.0), (0.72, 0.0), (0.84, 0.4))),
            ("window", "poly", ((0.27, 0.36), (0.35, 0.08), (0.48, 0.08), (0.48, 0.36))),
            ("window", "poly", ((0.53, 0.36), (0.53, 0.08), (0.66, 0.08), (0.75, 0.36))),
            ("wheel", "ellipse", (0.22, 0.8, 0.1, 0.2, 1.0)),
            ("wheel", "ellipse", (0.78, 0.8, 0.1, 0.2, 1.0)),
        ),
    ),
    ObjectKind(
        "house",
        1.0,
        0.25,
        (
            ("wall", "rect", (0.1, 0.45, 0.9, 1.0)),
            ("roof", "poly", ((0.0, 0.48), (0.5, 0.0), (1.0, 0.48))),
            ("door", "rect", (0.4, 0.68, 0.6, 1.0)),
        ),
    ),
    ObjectKind(
        "tree",
        0.7,
        0.25,
        (
            ("trunk", "rect", (0.4, 0.5, 0.6, 1.0)),
            ("crown", "ellipse", (0.5, 0.33, 0.5, 0.33, 1.0)),
        ),
    ),
    ObjectKind(
        "lamp",
        0.4,
        0.25,
        (
            ("pole", "rect", (0.44, 0.2, 0.56, 1.0)),
            ("pole", "rect", (0.2, 0.93, 0.8, 1.0)),
            ("shade", "poly", ((0.0, 0.28), (0.25, 0.0), (0.75, 0.0), (1.0, 0.28))),
        ),
    ),
    ObjectKind(
        "table",
        1.6,
        0.15,
        (
            ("top", "rect", (0.0, 0.0, 1.0, 0.18)),
            ("leg", "rect", (0.06, 0.18, 0.16, 1.0)),
            ("leg", "rect", (0.84, 0.18, 0.94, 1.0)),
        ),
    ),
    ObjectKind(
        "bed",
        1.8,
        0.16,
        (
            ("headboard", "rect", (0.0, 0.0, 0.1, 1.0)),
            ("mattress", "rect", (0.1, 0.45, 1.0, 0.8)),
            ("mattress", "rect", (0.93, 0.8, 1.0, 1.0)),
            ("pillow", "ellipse", (0.24, 0.38, 0.12, 0.14, 1.0)),
        ),
    ),
    ObjectKind(
        "umbrella",
        1.0,
        0.21,
        (
            ("shaft", "rect", (0.46, 0.38, 0.54, 1.0)),
            ("canopy", "ellipse", (0.5, 0.42, 0.5, 0.42, 0.42)),
        ),
    ),
    ObjectKind(
        "boat",
        1.3,
        0.21,
        (
            ("hull", "poly", ((0.0, 0.68), (1.0, 0.68), (0.82, 1.0), (0.18, 1.0))),
            ("mast", "rect", (0.47, 0.02, 0.53, 0.68)),
            ("sail", "poly", ((0.55, 0.06), (0.55, 0.62), (0.92, 0.62))),
            ("sail", "poly", ((0.45, 0.16), (0.45, 0.62), (0.14, 0.62))),
        ),
    ),
    ObjectKind(
        "person",
        0.42,
        0.24,
        (
            ("torso", "rect", (0.15, 0.2, 0.85, 0.58)),
            ("leg", "rect", (0.22, 0.58, 0.45, 1.0)),
            ("leg", "rect", (0.55, 0.58, 0.78, 1.0)),
            ("head", "ellipse", (0.5, 0.1, 0.24, 0.1, 1.0)),
        ),
    ),
    ObjectKind(
        "window",
        0.8,
        0.18,
        (
            ("frame", "rect", (0.0, 0.0, 1.0, 1.0)),
            ("pane", "rect", (0.12, 0.1, 0.45, 0.46)),
            ("pane", "rect", (0.55, 0.1, 0.88, 0.46)),
            ("pane", "rect", (0.12, 0.54, 0.45, 0.9)),
            ("pane", "rect", (0.55, 0.54, 0.88, 0.9)),
        ),
    ),
    ObjectKind(
        "chair",
        0.6,
        0.18,
        (
            ("back", "rect", (0.0, 0.0, 0.16, 0.6)),
            ("seat", "rect", (0.0, 0.5, 1.0, 0.62)),
            ("leg", "rect", (0.0, 0.62, 0.12, 1.0)),
            ("leg", "rect", (0.86, 0.62, 0.98, 1.0)),
        ),
    ),
)

#: Scene -> its four characteristic objects. No two scenes share three objects.
SCENES = {
    "street": ("car", "lamp", "house", "person"),
    "bedroom": ("bed", "lamp", "window", "table"),
    "harbour": ("boat", "person", "umbrella", "house"),
    "park": ("tree", "person", "lamp", "umbrella"),
    "resort": ("umbrella", "chair", "boat", "tree"),
    "dining room": ("table", "chair", "window", "person"),
    "garden": ("tree", "house", "chair", "table"),
    "parking lot": ("car", "tree", "umbrella", "window"),
}

OBJECT_INDEX = {kind.name: i for i, kind in enumerate(OBJECTS)}
#: (object, part) pairs in concept order.
PARTS = tuple((kind.name, part) for kind in OBJECTS for part in kind.parts)
PART_INDEX = {pair: i for i, pair in enumerate(PARTS)}
MATERIAL_INDEX = {name: i for i, name in enumerate(MATERIALS)}
_TINTS = np.array(list(PALETTE.values()), dtype=np.float32)


@dataclass
class Rendered:
    """One rendered image and its label maps (0-based class indices, -1 where none).

    Attributes
    ----------
    rgb : ndarray
        (S, S, 3) uint8.
    object, part, material : ndarray
        (S, S) int32 indices into OBJECTS, PARTS and MATERIALS.
    scene : int
        Index into SCENES.
    """

    rgb: np.ndarray
    object: np.ndarray
    part: np.ndarray
    material: np.ndarray
    scene: int


def _primitive_mask(kind: str, params: tuple, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where the primitive ``(kind, params)`` covers the points ``(u, v)`` (broadcast)."""
    if kind == "rect":
        u0, v0, u1, v1 = params
        return (u >= u0) & (u < u1) & (v >= v0) & (v < v1)
    if kind == "ellipse":
        cu, cv, ru, rv, v_max = params
        return (((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0) & (v <= v_max)
    return _inside_polygon(params, u, v)


def _inside_polygon(vertices: tuple, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Even-odd crossing test: which points ``(u, v)`` lie inside the polygon ``vertices``.

    Counts the polygon edges crossed by a ray from each point towards +u. Each edge is taken
    with its lower-``v`` end first and counted over the half-open span ``va <= v < vb``, so the
    result is the same for either vertex order (clockwise or not, bit for bit: the arithmetic
    does not depend on the listed direction) and a point on an edge shared by two polygons
    belongs to one of them. Only subtractions, multiplications and comparisons: correctly
    rounded, so every machine paints the same pixels.

    Parameters
    ----------
    vertices : tuple of (float, float)
        The polygon's ``(u, v)`` corners, in either order; need not be convex.
    u, v : ndarray
        Point coordinates, broadcast against each other.

    Returns
    -------
    ndarray of bool
        The broadcast shape of ``u`` and ``v``.
    """
    inside = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for (ua, va), (ub, vb) in zip(vertices, vertices[1:] + vertices[:1], strict=True):
        if va == vb:
            continue
        if va > vb:
            (ua, va), (ub, vb) = (ub, vb), (ua, va)
        # The edge crosses the point's row and lies to its right: u < ua + (v-va)(ub-ua)/(vb-va).
        inside ^= (v >= va) & (v < vb) & ((u - ua) * (vb - va) < (ub - ua) * (v - va))
    return inside


class _Canvas:
    """The image under construction and its label maps."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        self.rng = rng
        self.rgb = np.empty((size, size, 3), dtype=np.float32)
        self.object = np.full((size, size), -1, dtype=np.int32)
        self.part = np.full((size, size), -1, dtype=np.int32)
        self.material = np.empty((size, size), dtype=np.int32)

    def texture_patch(self, material: str, height: int, width: int) -> np.ndarray:
        """A (height, width) crop of the material's tile at a random offset."""
        tile = texture(material)
        y0 = int(self.rng.integers(0, TILE - height + 1))
        x0 = int(self.rng.integers(0, TILE - width + 1))
        return tile[y0 : y0 + height, x0 : x0 + width]

    def background(self) -> None:
        names = list(BACKGROUND_MATERIALS)
        size = self.size
        horizon = (
            size if self.rng.random() < 0.25 else int(self.rng.integers(size // 4, size * 3 // 4))
        )
        for top, bottom in ((0, horizon), (horizon, size)):
            if bottom <= top:
                continue
            name = names[int(self.rng.integers(len(names)))]
            tint = np.array(BACKGROUND_MATERIALS[name], np.float32) + self.rng.uniform(-20, 20, 3)
            patch = self.texture_patch(name, bottom - top, size)
            self.rgb[top:bottom] = patch[..., None] * tint.astype(np.float32)
            self.material[top:bottom] = MATERIAL_INDEX[name]

    def paint(self, kind: ObjectKind, box: tuple[int, int, int, int], flip: bool) -> None:
        """Paint one instance of ``kind`` into the pixel box (top, left, height, width)."""
        top, left, height, width = box
        y0, y1 = max(top, 0), min(top + height, self.size)
        x0, x1 = max(left, 0), min(left + width, self.size)
        if y1 <= y0 or x1 <= x0:
            return
        v = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - top) / height)[:, None]
        u = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - left) / width)[None, :]
        if flip:
            u = 1.0 - u
        looks = {}
        for part in kind.parts:
            material = OBJECT_MATERIALS[int(self.rng.integers(len(OBJECT_MATERIALS)))]
            tint = _TINTS[int(self.rng.integers(len(_TINTS)))] + self.rng.uniform(-25, 25, 3)
            patch = self.texture_patch(material, y1 - y0, x1 - x0)
            looks[part] = (material, patch[..., None] * tint.astype(np.float32))
        rgb = self.rgb[y0:y1, x0:x1]
        obj, prt, mat = (m[y0:y1, x0:x1] for m in (self.object, self.part, self.material))
        for part, shape, params in kind.primitives:
            mask = _primitive_mask(shape, params, u, v)
            material, colours = looks[part]
            rgb[mask] = colours[mask]
            obj[mask] = OBJECT_INDEX[kind.name]
            prt[mask] = PART_INDEX[(kind.name, part)]
            mat[mask] = MATERIAL_INDEX[material]


def _place(rng: np.random.Generator, kind: ObjectKind, size: int, boxes: list) -> tuple:
    """A random box for ``kind`` that overlaps earlier boxes little (best of a few tries)."""
    best, best_overlap = None, np.inf
    for _ in range(8):
        height = int(round(kind.height * size * rng.uniform(0.75, 1.3)))
        width = int(round(height * kind.aspect * rng.uniform(0.85, 1.15)))
        if width > size:
            height, width = int(height * size / width), size
        top = int(rng.integers(-height // 8, size - height * 7 // 8 + 1))
        left = int(rng.integers(-width // 8, size - width * 7 // 8 + 1))
        overlap = max(
            (_intersection((top, left, height, width), other) for other in boxes), default=0.0
        ) / (height * width)
        if overlap < best_overlap:
            best, best_overlap = (top, left, height, width), overlap
        if overlap < 0.15:
            break
    return best


def _intersection(a: tuple, b: tuple) -> float:
    dy = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dx = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return float(max(dy, 0) * max(dx, 0))


def render(rng: np.random.Generator, size: int) -> Rendered:
    """Render one random scene image of side ``size`` with the generator ``rng``."""
    scene = int(rng.integers(len(SCENES)))
    members = list(SCENES.values())[scene]
    count = 3 + int(rng.random() < 0.5)
    chosen = [members[i] for i in rng.permutation(len(members))[:count]]
    if rng.random() < 0.35:
        chosen.append(chosen[int(rng.integers(len(chosen)))])
    canvas = _Canvas(size, rng)
    canvas.background()
    placed: list[tuple[ObjectKind, tuple, bool]] = []
    for name in chosen:
        kind = OBJECTS[OBJECT_INDEX[name]]
        box = _place(rng, kind, size, [box for _, box, _ in placed])
        placed.append((kind, box, bool(rng.random() < 0.5)))
    for kind, box, flip in sorted(placed, key=lambda item: item[1][0] + item[1][2]):
        canvas.paint(kind, box, flip)
    light = rng.uniform(0.8, 1.15)
    rgb = np.clip(canvas.rgb * light, 0, 255).astype(np.uint8)
    return Rendered(rgb, canvas.object, canvas.part, canvas.material, scene)

"""Procedural scenes for the shipped tiny model, and a classifier that grades its outputs.

Each scene is one flat shape (circle, square, triangle) in one of five well separated colours
on a plain background, captioned the way a user would prompt: "a red circle", "a blue square
on a yellow background". The same module renders the training set and grades generated
images, so the quality check and the training data cannot drift apart.

The classifier is plain image analysis, no learned weights: the background is the median of
the border ring; the foreground is whatever differs from it clearly; the colour is the
palette hue most foreground pixels are nearest to; the shape follows from how the foreground
fills its bounding box (a square fills it, a circle leaves the corners empty, an upright
triangle leaves the top corners empty and puts most of its mass in the lower half).
"""

from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (240, 210, 20),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (140, 40, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    **COLOURS,
}
DEFAULT_BACKGROUND = "white"

# Style variants, the datasets of the shipped LoRAs; a scene without styles renders exactly as
# the base model's training data. Styles combine: ("grey", "outline") is a hollow shape on grey.
# They stay inside what the tiny model's VAE can draw: it has only seen flat palette colours,
# white and mid grey, and decodes darker backdrops (black, navy) as noise.
STYLES: tuple[str, ...] = ("grey", "outline")
# Stroke width as a share of the shape's size: thinner strokes blur in the VAE (4x smaller
# latents), thicker ones leave triangles no hole.
OUTLINE_FRACTION = 0.2


@dataclass(frozen=True)
class Scene:
    """One image's content: what is drawn, where, and on what."""

    shape: str
    colour: str
    background: str
    size: int  # side of the bounding box, in pixels at IMAGE_SIZE
    cx: float
    cy: float
    style: tuple[str, ...] = ()


@dataclass(frozen=True)
class Classification:
    """What the classifier sees in an image; `None` fields mean "nothing recognisable"."""

    colour: str | None
    shape: str | None
    background: str | None
    foreground_fraction: float


def prompts() -> list[tuple[str, str, str]]:
    """Every colour x shape prompt on the default background: (prompt, colour, shape)."""
    return [(f"a {c} {s}", c, s) for s in SHAPES for c in COLOURS]


def random_scene(rng: random.Random) -> Scene:
    """Draw a scene: mostly on white (the default, unmentioned background), some on grey or
    on another palette colour, so that background phrases mean something."""
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    roll = rng.random()
    if roll < 0.65:
        background = "white"
    elif roll < 0.75:
        background = "grey"
    else:
        background = rng.choice([c for c in COLOURS if c != colour])
    size = rng.randint(24, 40)
    margin = size / 2 + 4
    cx = rng.uniform(margin, IMAGE_SIZE - margin)
    cy = rng.uniform(margin, IMAGE_SIZE - margin)
    return Scene(shape, colour, background, size, cx, cy)


def caption(scene: Scene, rng: random.Random) -> str:
    """The prompt a user would write for `scene`; white goes unmentioned most of the time."""
    text = f"a {scene.colour} {scene.shape}"
    if scene.background != DEFAULT_BACKGROUND or rng.random() < 0.2:
        text += f" on a {scene.background} background"
    return text


def render(scene: Scene) -> Image.Image:
    """Draw `scene` at IMAGE_SIZE with anti-aliased edges (drawn large, then downsampled).

    Styles: "grey" draws the default white background grey (a background the caption names
    stays); "outline" draws only a thick stroke along the shape's edge, inside its outline,
    so a hollow shape covers the same box as the filled one."""
    unknown = set(scene.style) - set(STYLES)
    if unknown:
        raise ValueError(f"unknown scene style(s) {sorted(unknown)}; known: {STYLES}")
    k = SUPERSAMPLE
    background = BACKGROUNDS[scene.background]
    if "grey" in scene.style and scene.background == DEFAULT_BACKGROUND:
        background = BACKGROUNDS["grey"]
    big = Image.new("RGB", (IMAGE_SIZE * k, IMAGE_SIZE * k), background)
    draw = ImageDraw.Draw(big)
    half = scene.size * k / 2
    cx, cy = scene.cx * k, scene.cy * k
    fill = COLOURS[scene.colour]
    hollow = "outline" in scene.style
    # A hollow shape is Pillow's stroke in the shape's colour, drawn inside its outline.
    paint = {"fill": None if hollow else fill, "outline": fill if hollow else None,
             "width": max(1, round(scene.size * k * OUTLINE_FRACTION)) if hollow else 1}
    if scene.shape == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], **paint)
    elif scene.shape == "square":
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], **paint)
    else:
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)],
                     **paint)
    return big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def make_dataset(n: int, seed: int, style: tuple[str, ...] = ()
                 ) -> tuple[np.ndarray, list[str], list[Scene]]:
    """`n` scenes rendered as a uint8 array (n, 64, 64, 3) with their captions; the same
    seed always gives the same data. A `style` renders the very same scenes and captions
    in that style (the LoRA datasets), so the only thing that differs is the style."""
    rng = random.Random(seed)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions: list[str] = []
    scenes: list[Scene] = []
    for i in range(n):
        scene = random_scene(rng)
        if style:
            scene = replace(scene, style=tuple(style))
        images[i] = np.asarray(render(scene))
        captions.append(caption(scene, rng))
        scenes.append(scene)
    return images, captions, scenes


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees of each RGB row (values 0..255)."""
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    delta = np.where(mx - mn == 0, 1e-9, mx - mn)
    h = np.where(mx == r, ((g - b) / delta) % 6,
                 np.where(mx == g, (b - r) / delta + 2, (r - g) / delta + 4))
    return h * 60.0


def _saturation(rgb: np.ndarray) -> np.ndarray:
    mx = rgb.max(axis=-1).astype(np.float64)
    mn = rgb.min(axis=-1).astype(np.float64)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0.0)


_PALETTE_HUES = {name: colorsys.rgb_to_hsv(*(v / 255 for v in rgb))[0] * 360
                 for name, rgb in COLOURS.items()}


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into COLOURS of the palette hue nearest to each pixel (circular distance)."""
    hues = np.array(list(_PALETTE_HUES.values()))
    d = np.abs(_hue(rgb)[..., None] - hues)
    d = np.minimum(d, 360 - d)
    return d.argmin(axis=-1)


def _background_name(rgb: np.ndarray) -> str:
    names = list(BACKGROUNDS)
    ref = np.array([BACKGROUNDS[n] for n in names], dtype=np.float64)
    return names[int(np.linalg.norm(ref - rgb, axis=1).argmin())]


def foreground_mask(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, background_rgb): pixels that differ clearly from the border's median colour."""
    x = img.astype(np.float64)
    border = np.concatenate([x[:2].reshape(-1, 3), x[-2:].reshape(-1, 3),
                             x[:, :2].reshape(-1, 3), x[:, -2:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(x - bg, axis=-1)
    peak = np.percentile(dist, 99.5)
    mask = dist > max(50.0, 0.5 * peak)
    return mask, bg


# Shape prototypes over (fill of the bounding box, mass in its lower half, top-corner fill,
# bottom-corner fill), measured on rendered ground truth; classification is nearest prototype.
_SHAPE_PROTOTYPES: dict[str, tuple[float, float, float, float]] = {
    "circle": (0.79, 0.50, 0.03, 0.03),
    "square": (1.00, 0.50, 1.00, 1.00),
    "triangle": (0.50, 0.75, 0.00, 0.60),
}


def shape_features(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Fill ratio, lower-half mass, top- and bottom-corner fill of the mask's bounding box.
    The box comes from robust percentiles so a few stray pixels do not stretch it."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 12:
        return None
    y0, y1 = np.percentile(ys, [1, 99]).round().astype(int)
    x0, x1 = np.percentile(xs, [1, 99]).round().astype(int)
    box = mask[y0:y1 + 1, x0:x1 + 1].astype(np.float64)
    h, w = box.shape
    if h < 4 or w < 4:
        return None
    fill = float(box.mean())
    lower = float(box[h // 2:].sum() / max(box.sum(), 1.0))
    ch, cw = max(1, round(h * 0.15)), max(1, round(w * 0.15))
    top = float((box[:ch, :cw].mean() + box[:ch, -cw:].mean()) / 2)
    bottom = float((box[-ch:, :cw].mean() + box[-ch:, -cw:].mean()) / 2)
    return fill, lower, top, bottom


def classify(image: Image.Image | np.ndarray) -> Classification:
    """Colour, shape and background of a generated (or rendered) image."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    mask, bg = foreground_mask(img)
    frac = float(mask.mean())
    background = _background_name(bg)
    fg = img[mask]
    colour = None
    if len(fg) >= 12:
        vivid = fg[_saturation(fg) > 0.35]
        if len(vivid) >= 12:
            votes = np.bincount(nearest_colour(vivid), minlength=len(COLOURS))
            colour = list(COLOURS)[int(votes.argmax())]
    features = shape_features(mask)
    shape = None
    if features is not None:
        f = np.array(features)
        shape = min(_SHAPE_PROTOTYPES,
                    key=lambda s: float(np.sum((f - np.array(_SHAPE_PROTOTYPES[s])) ** 2)))
    return Classification(colour, shape, background, frac)


def background_luminance(image: Image.Image | np.ndarray) -> float:
    """Luminance (0..255, Rec. 601) of the background, the median of the border ring: how a
    backdrop style's effect is measured."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    _, bg = foreground_mask(img)
    return float(bg @ np.array([0.299, 0.587, 0.114]))


def centre_fill(image: Image.Image | np.ndarray) -> float | None:
    """Share of foreground in the middle of the shape's bounding box: near 1 for a filled
    shape, near 0 for a hollow one; None when no shape is found. The window sits at 45-75 %
    of the box's height so it falls inside triangles too."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    mask, _ = foreground_mask(img)
    ys, xs = np.nonzero(mask)
    if len(ys) < 12:
        return None
    y0, y1 = np.percentile(ys, [1, 99]).round().astype(int)
    x0, x1 = np.percentile(xs, [1, 99]).round().astype(int)
    h, w = y1 - y0 + 1, x1 - x0 + 1
    if h < 8 or w < 8:
        return None
    window = mask[y0 + int(h * 0.45):y0 + int(np.ceil(h * 0.75)),
                  x0 + int(w * 0.35):x0 + int(np.ceil(w * 0.65))]
    return float(window.mean())

"""Image nodes: load, save (with the workflow inside the PNG), preview, batch, grid.

Saved files are never overwritten: names are `prefix_00001_.png`, `prefix_00002_.png`, ...
(ComfyUI's pattern), the counter continuing after the highest one present, and each file
is created exclusively so two runs racing for a number cannot clobber each other.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageOps
from PIL.PngImagePlugin import PngInfo

from graph_runtime.context import current
from graph_runtime.nodes import Choice, Int, Text, node
from nodes.types import Image, Mask

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def input_dir() -> Path:
    return Path(os.environ.get("NOODLE_INPUT_DIR", "input"))


def temp_dir() -> Path:
    """Where PreviewImage writes: `NOODLE_TEMP_DIR`, else `temp` beside the output folder."""
    env = os.environ.get("NOODLE_TEMP_DIR")
    if env:
        return Path(env)
    ctx = current()
    return (ctx.output_dir.parent if ctx is not None else Path(".")) / "temp"


def input_choices() -> list[str]:
    folder = input_dir()
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def resolve_image_path(path: str) -> Path:
    """An absolute path, a path under the input folder, or one relative to the working
    directory or to the project (shipped workflows refer to `workflows/images/...`)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for candidate in (input_dir() / p, p, REPO_ROOT / p):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"image {path!r} not found in {input_dir()} nor in "
                            f"{Path.cwd()}")


def image_fingerprint(inputs: Mapping[str, Any]) -> str | None:
    path = inputs.get("path")
    if not isinstance(path, str):
        return None
    p = resolve_image_path(path)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[H, W, C] floats in 0..1 -> uint8, rounded (as diffusers' `numpy_to_pil`)."""
    return (pixels.numpy() * 255).round().clip(0, 255).astype(np.uint8)


def to_pil(pixels: torch.Tensor) -> PILImage.Image:
    arr = to_uint8(pixels)
    return PILImage.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


_NUMBERED = re.compile(r"_(\d{5,})_\.png$")


def numbered_path(folder: Path, prefix: str) -> tuple[Path, int]:
    """The next free `prefix_NNNNN_.png` in `folder` (prefix may contain subfolders)."""
    rel = Path(prefix)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"filename_prefix {prefix!r} must stay inside the output folder")
    target = folder / rel.parent
    target.mkdir(parents=True, exist_ok=True)
    base = rel.name or "noodle"
    counter = 0
    for existing in target.glob(f"{glob_escape(base)}_*_.png"):
        m = _NUMBERED.search(existing.name)
        if m and existing.name[: m.start()] == base:
            counter = max(counter, int(m.group(1)))
    return target / base, counter + 1


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def write_png(image: PILImage.Image, stem: Path, counter: int, info: PngInfo | None,
              compress_level: int) -> Path:
    """Create `stem_NNNNN_.png` exclusively, moving on to the next number if taken."""
    while True:
        path = stem.parent / f"{stem.name}_{counter:05d}_.png"
        try:
            with open(path, "xb") as fh:
                image.save(fh, format="PNG", pnginfo=info, compress_level=compress_level)
            return path
        except FileExistsError:
            counter += 1


class Loaded(NamedTuple):
    images: Image
    mask: Mask


@node("LoadImage", category="image", fingerprint=image_fingerprint, display_name="Load Image")
def load_image(
    path: str = Choice(input_choices, default="", allow_other=True,
                       tooltip="a file in the input folder, or a path"),
) -> Loaded:
    """Load an image as RGB; its alpha channel becomes the mask (1 where transparent)."""
    with PILImage.open(resolve_image_path(path)) as raw:
        img = ImageOps.exif_transpose(raw)
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        if "A" in img.getbands():
            alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
            mask = 1.0 - torch.from_numpy(alpha)
        else:
            mask = torch.zeros(rgb.shape[:2], dtype=torch.float32)
    return Loaded(Image(torch.from_numpy(rgb)[None]), Mask(mask[None]))


@node("SaveImage", category="image", output_node=True, display_name="Save Image")
def save_image(images: Image, filename_prefix: str = Text("noodle")) -> None:
    """Save PNGs into the output folder, each carrying the workflow that made it (tEXt
    chunk "workflow"), so dropping it on the canvas brings the graph back."""
    ctx = current()
    folder = ctx.output_dir if ctx is not None else Path("output")
    info = PngInfo()
    if ctx is not None and ctx.workflow is not None:
        info.add_text("workflow", json.dumps(ctx.workflow, ensure_ascii=False))
    stem, counter = numbered_path(folder, filename_prefix)
    for i in range(images.batch):
        path = write_png(to_pil(images.pixels[i]), stem, counter + i, info, 4)
        if ctx is not None:
            ctx.add_file(path)


@node("PreviewImage", category="image", output_node=True, display_name="Preview Image")
def preview_image(images: Image) -> None:
    """Show images on the canvas without keeping them (written to the temp folder)."""
    ctx = current()
    folder = temp_dir()
    stem, counter = numbered_path(folder, f"preview_{secrets.token_hex(4)}")
    for i in range(images.batch):
        path = write_png(to_pil(images.pixels[i]), stem, counter + i, None, 1)
        if ctx is not None:
            ctx.add_file(path, kind="temp")


@node("ImageBatch", category="image", output="images", display_name="Image Batch")
def image_batch(
    images1: Image,
    images2: Image | None = None,
    images3: Image | None = None,
    images4: Image | None = None,
    images5: Image | None = None,
    images6: Image | None = None,
    images7: Image | None = None,
    images8: Image | None = None,
) -> Image:
    """Join up to eight image batches of one size into one batch, in input order."""
    parts = [im for im in (images1, images2, images3, images4, images5, images6, images7,
                           images8) if im is not None]
    sizes = {tuple(p.pixels.shape[1:]) for p in parts}
    if len(sizes) > 1:
        raise ValueError(f"ImageBatch: images differ in size {sorted(sizes)}")
    return Image(torch.cat([p.pixels for p in parts]))


def _caption_strip(labels: list[str], cols: int, w: int, gap: int, height: int
                   ) -> torch.Tensor:
    """A white strip with one centred caption per column, in the largest font that fits."""
    from PIL import ImageDraw, ImageFont

    strip = PILImage.new("RGB", (cols * w + (cols - 1) * gap, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for k, label in enumerate(labels):
        for size in range(height - 3, 5, -1):
            font = ImageFont.load_default(size=size)
            left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
            if right - left <= w - 2:
                break
        x = k * (w + gap) + (w - (right - left)) / 2 - left
        draw.text((x, (height - (bottom - top)) / 2 - top), label, fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.asarray(strip, dtype=np.float32) / 255.0)


@node("ImageGrid", category="image", output="images", display_name="Image Grid")
def image_grid(
    images: Image,
    rows: int = Int(0, min=0, max=64, tooltip="0: as many as needed"),
    cols: int = Int(0, min=0, max=64, tooltip="0: about square"),
    gap: int = Int(0, min=0, max=64, tooltip="white pixels between cells"),
    labels: str = Text("", multiline=True,
                       tooltip="optional captions, one per line, for the cells in order"),
) -> Image:
    """Lay a batch out as one image, row by row (diffusers' `make_image_grid`); captions,
    when given, go under each cell."""
    n, h, w, c = images.pixels.shape
    if cols == 0:
        cols = math.ceil(n / rows) if rows else math.ceil(math.sqrt(n))
    if rows == 0:
        rows = math.ceil(n / cols)
    if rows * cols < n:
        raise ValueError(f"ImageGrid: {rows} x {cols} cells cannot hold {n} images")
    names = [line.strip() for line in labels.splitlines()]
    names = (names + [""] * n)[:n] if any(names) else []
    cap = max(12, min(24, h // 5)) if names and c == 3 else 0
    cell_h = h + cap
    grid = torch.ones(rows * cell_h + (rows - 1) * gap, cols * w + (cols - 1) * gap, c)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = r * (cell_h + gap), k * (w + gap)
        grid[y: y + h, x: x + w] = images.pixels[i]
    if cap:
        for r in range(rows):
            row = names[r * cols: (r + 1) * cols]
            y = r * (cell_h + gap) + h
            strip = _caption_strip(row, cols, w, gap, cap)
            grid[y: y + cap, : strip.shape[1]] = strip
    return Image(grid[None])


@node("ResizeImage", category="image", output="images", display_name="Resize Image")
def resize_image(
    images: Image,
    width: int = Int(512, min=0, max=8192, step=8, tooltip="0: keep the aspect ratio"),
    height: int = Int(512, min=0, max=8192, step=8, tooltip="0: keep the aspect ratio"),
    method: str = Choice(["lanczos", "bicubic", "bilinear", "nearest"], default="lanczos"),
) -> Image:
    """Resize a batch (e.g. a photo to a multiple of 8 before VAEEncode)."""
    _, h, w, _ = images.pixels.shape
    if width == 0 and height == 0:
        return images
    width = width or max(1, round(w * height / h))
    height = height or max(1, round(h * width / w))
    resample = getattr(PILImage.Resampling, method.upper())
    out = [np.asarray(to_pil(px).resize((width, height), resample), dtype=np.float32) / 255.0
           for px in images.pixels]
    return Image(torch.from_numpy(np.stack(out)).reshape(len(out), height, width, -1))

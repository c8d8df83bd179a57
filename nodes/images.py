"""Image nodes: load, save (with the workflow inside the PNG), preview, batch, grid.

LoadImage, SaveImage and PreviewImage are also ComfyUI's (same names, inputs and outputs),
so they sit in the ComfyUI palette and serve workflows of both kinds.

Saved files are never overwritten: names are `prefix_00001_.png`, `prefix_00002_.png`, ...
(ComfyUI's pattern), written through `NumberedFiles`. Folders come from the run's context:
images are read from its input folder, saved to its output folder, previewed in its temp
folder. A run confined to its folders (every server run) reads images only from the
input folder, the shipped workflows' images and the paths it allows (see `nodes.files`).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from PIL import Image as PILImage
from PIL import ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from graph_runtime import Choice, Folders, Int, Text, current, folders, node
from nodes.files import NumberedFiles, UnavailableFile, may_read, spelled_safely
from nodes.lazy import lazy_module
from nodes.limits import require_pixels
from nodes.types import Image, Mask

np = lazy_module("numpy")
torch = lazy_module("torch")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_IMAGES = REPO_ROOT / "workflows" / "images"  # what the shipped workflows load
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def input_choices(folders: Folders) -> list[str]:
    """The images in the input folder, for LoadImage's list."""
    folder = folders.input
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def image_roots(folders: Folders) -> list[Path] | None:
    """Where LoadImage may read: the input folder, the shipped workflows' images and the
    allowed paths; None when the run sets no limit."""
    if folders.allowed_paths is None:
        return None
    return [folders.input, SHIPPED_IMAGES, *folders.allowed_paths]


def unavailable(path: str) -> UnavailableFile:
    """The one error for an image that is absent, unreadable or not allowed."""
    return UnavailableFile(f"LoadImage: no readable image {path!r} in the input folder")


def resolve_image_path(path: str, folders: Folders) -> Path:
    """A path under the input folder, an absolute path, or one relative to the working
    directory or to the project (shipped workflows refer to `workflows/images/...`) —
    each only where the run may read (`nodes.files.may_read`)."""
    roots = image_roots(folders)
    p = Path(path) if roots is not None else Path(path).expanduser()
    if path and (roots is None or spelled_safely(path)):
        candidates = [p] if p.is_absolute() else [folders.input / p, p, REPO_ROOT / p]
        for candidate in candidates:
            if may_read(candidate, roots) and candidate.is_file():
                return candidate
    raise unavailable(path)


def image_fingerprint(inputs: Mapping[str, Any], folders: Folders) -> str | None:
    path = inputs.get("image")
    if not isinstance(path, str):
        return None
    p = resolve_image_path(path, folders)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[H, W, C] floats in 0..1 -> uint8, rounded (as diffusers' `numpy_to_pil`)."""
    return (pixels.numpy() * 255).round().clip(0, 255).astype(np.uint8)


def to_pil(pixels: torch.Tensor) -> PILImage.Image:
    arr = to_uint8(pixels)
    return PILImage.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_pngs(images: Image, files: NumberedFiles, info: PngInfo | None,
              compress_level: int, kind: str) -> None:
    """Write each image of a batch as the next numbered PNG and show it on the node."""
    ctx = current()
    for pixels in images.pixels:
        picture = to_pil(pixels)
        path = files.write(lambda fh, picture=picture: picture.save(
            fh, format="PNG", pnginfo=info, compress_level=compress_level))
        if ctx is not None:
            ctx.add_file(path, kind=kind)


class Loaded(NamedTuple):
    IMAGE: Image
    MASK: Mask


def _frame_arrays(frame: PILImage.Image) -> tuple[np.ndarray, torch.Tensor | None]:
    """One frame as RGB floats in 0..1, and 1 - alpha where it has transparency."""
    frame = ImageOps.exif_transpose(frame)
    if frame.mode == "I":  # 16-bit grey: scale to 8 bits, as ComfyUI does
        frame = frame.point(lambda v: v * (1 / 255))
    rgb = np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0
    alpha = None
    if "A" in frame.getbands():
        alpha = frame.getchannel("A")
    elif frame.mode == "P" and "transparency" in frame.info:
        alpha = frame.convert("RGBA").getchannel("A")
    if alpha is None:
        return rgb, None
    return rgb, 1.0 - torch.from_numpy(np.asarray(alpha, dtype=np.float32) / 255.0)


@node("LoadImage", category="ComfyUI/image", fingerprint=image_fingerprint,
      display_name="Load Image")
def load_image(
    image: Annotated[str, Choice(input_choices, allow_other=True, upload="image",
                                 tooltip="a file in the input folder, or a path")] = "",
) -> Loaded:
    """Load an image as RGB; its alpha channel becomes the mask (1 where transparent, all
    0 without transparency). The frames of an animation (of the first frame's size) become
    a batch."""
    images, masks = [], []
    try:
        with PILImage.open(resolve_image_path(image, folders())) as raw:
            frames = [raw] if raw.format == "MPO" else ImageSequence.Iterator(raw)
            for frame in frames:
                rgb, mask = _frame_arrays(frame)
                if images and rgb.shape != images[0].shape:
                    continue
                images.append(rgb)
                masks.append(mask if mask is not None else torch.zeros(rgb.shape[:2]))
    except (OSError, ValueError, SyntaxError):
        # Permission, format or decoding trouble reads as a missing file: the same words.
        raise unavailable(image) from None
    return Loaded(Image(torch.from_numpy(np.stack(images))), Mask(torch.stack(masks)))


def _canonical_value(value: Any) -> tuple[str, Any]:
    """An API input value with its spelling ironed out: a link by source id (string) and
    output index, a `{"__value__": ...}` wrapper by the literal it wraps."""
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool)):
        return "link", (str(value[0]), value[1])
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return "value", value["__value__"]
    return "value", value


def canonical_prompt(prompt: Any) -> dict[str, Any] | None:
    """What a ComfyUI API prompt says should run: node ids, class types and inputs (titles
    and other `_meta` are only labels); None for something that is not a prompt."""
    if not isinstance(prompt, dict):
        return None
    out: dict[str, Any] = {}
    for nid, entry in prompt.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("inputs", {}), dict):
            return None
        inputs = {name: _canonical_value(v) for name, v in entry.get("inputs", {}).items()}
        out[str(nid)] = (entry.get("class_type"), inputs)
    return out


def current_record(workflow: Mapping[str, Any],
                   record: Mapping[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """The prompt chunk of a run whose workflow carries a ComfyUI record, and the record's
    extra chunks (its UI document) while they still describe the graph that ran, else None.
    A graph edited on our canvas since its import gets a prompt made from its current
    nodes, and no UI document showing what is no longer there."""
    # The importer lives in the ComfyUI pack, which imports after this module.
    from graph_runtime.registry import REGISTRY
    from nodes.comfyui.importer import api_prompt

    fresh = api_prompt(workflow.get("nodes") or {}, REGISTRY)
    recorded = record.get("prompt")
    if canonical_prompt(recorded) != canonical_prompt(fresh):
        return fresh, None
    extra = record.get("extra_pnginfo")
    return recorded, dict(extra) if isinstance(extra, dict) else {}


def png_info(workflow: Mapping[str, Any] | None) -> PngInfo:
    """The text chunks a saved image carries. A run that came from ComfyUI (its workflow
    holds "comfyui": {"prompt", "extra_pnginfo"}) is saved ComfyUI's way, the API prompt as
    "prompt" and each extra_pnginfo key (usually its UI "workflow") as its own chunk, so
    ComfyUI and its tools read it back; once edited, with our v1 workflow (less the stale
    record) as "workflow" instead. Other runs carry our v1 workflow as "workflow"."""
    info = PngInfo()
    if workflow is None:
        return info
    comfy = workflow.get("comfyui")
    if isinstance(comfy, dict) and "prompt" in comfy:
        prompt, extra = current_record(workflow, comfy)
        info.add_text("prompt", json.dumps(prompt))
        if extra is not None:
            for key, value in extra.items():
                info.add_text(str(key), json.dumps(value))
            return info
        workflow = {k: v for k, v in workflow.items() if k != "comfyui"}
    info.add_text("workflow", json.dumps(workflow, ensure_ascii=False))
    return info


@node("SaveImage", category="ComfyUI/image", output_node=True, display_name="Save Image")
def save_image(images: Image, filename_prefix: Annotated[str, Text()] = "noodle") -> None:
    """Save PNGs into the output folder as `prefix_00001_.png`, ... (the prefix may name a
    subfolder), each carrying the workflow that made it, so dropping it on the canvas
    brings the graph back."""
    ctx = current()
    info = png_info(ctx.workflow if ctx is not None else None)
    save_pngs(images, NumberedFiles(folders().output, filename_prefix, "_.png"), info, 4,
              "output")


@node("PreviewImage", category="ComfyUI/image", output_node=True,
      display_name="Preview Image")
def preview_image(images: Image) -> None:
    """Show images on the canvas without keeping them (written to the temp folder)."""
    files = NumberedFiles(folders().temp, f"preview_{secrets.token_hex(4)}", "_.png")
    save_pngs(images, files, None, 1, "temp")


@node("JoinImages", category="image", output="images", display_name="Join Images")
def join_images(
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
        raise ValueError(f"JoinImages: images differ in size {sorted(sizes)}")
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
    rows: Annotated[int, Int(min=0, max=64, tooltip="0: as many as needed")] = 0,
    cols: Annotated[int, Int(min=0, max=64, tooltip="0: about square")] = 0,
    gap: Annotated[int, Int(min=0, max=64, tooltip="white pixels between cells")] = 0,
    labels: Annotated[str, Text(
        multiline=True, tooltip="optional captions, one per line, for the cells in order")]
    = "",
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
    require_pixels("ImageGrid", cols * w + (cols - 1) * gap, rows * cell_h + (rows - 1) * gap)
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


ResizeSize = Annotated[int, Int(min=0, max=8192, step=8, tooltip="0: keep the aspect ratio")]


@node("ResizeImage", category="image", output="images", display_name="Resize Image")
def resize_image(
    images: Image,
    width: ResizeSize = 512,
    height: ResizeSize = 512,
    method: Annotated[str, Choice(["lanczos", "bicubic", "bilinear", "nearest"])] = "lanczos",
) -> Image:
    """Resize a batch (e.g. a photo to a multiple of 8 before VAEEncode)."""
    _, h, w, _ = images.pixels.shape
    if width == 0 and height == 0:
        return images
    width = width or max(1, round(w * height / h))
    height = height or max(1, round(h * width / w))
    require_pixels("ResizeImage", width, height, len(images.pixels))
    resample = getattr(PILImage.Resampling, method.upper())
    out = [np.asarray(to_pil(px).resize((width, height), resample), dtype=np.float32) / 255.0
           for px in images.pixels]
    return Image(torch.from_numpy(np.stack(out)).reshape(len(out), height, width, -1))

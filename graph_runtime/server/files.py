"""Serving output/input/temp files and accepting image uploads, without trusting names.

`/api/view` resolves the requested name inside one of three folders and refuses anything
that would leave it: `..` parts, absolute paths, backslashes, names that still contain
percent-escapes after the single decoding the query string gets (double encoding), NUL
bytes, and symlinks whose target lies outside (the resolved path is checked, not the
spelled one — ComfyUI #12285). Only raster image types are served inline; everything else
(HTML, SVG, JavaScript, ...) is sent as an attachment with `nosniff`, so a file in the
output folder can never run script in our origin.

The view route also takes ComfyUI's extras, so one handler serves both APIs: a file name
annotated with its folder (`x.png [input]`), `preview=webp;90` / `jpeg;90` (re-encoded)
and `channel=rgb` / `a` (colour only, or the alpha channel as an image).

Uploads must be real raster images: the bytes are size-limited, Pillow must identify and
`verify()` them, and the pixel count is bounded before anything is decoded (decompression
bombs). The stored name is the SHA-256 of the content, so uploading the same image twice
stores it once and a client can never choose a path.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import warnings
from pathlib import Path

from aiohttp import web

from graph_runtime.server.responses import error_response

INLINE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                ".webp": "image/webp", ".gif": "image/gif", ".bmp": "image/bmp"}
UPLOAD_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
MAX_UPLOAD_BYTES = 32 * 2**20
MAX_UPLOAD_PIXELS = 8192 * 8192
_PERCENT_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")
_ANNOTATED = re.compile(r"^(.*) \[(output|input|temp)\]$")
FILE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


class UnsafePath(ValueError):
    """A requested file name that could point outside its folder."""


def check_parts(text: str, what: str, allow_slash: bool) -> list[str]:
    """The path parts of a client-supplied name, or `UnsafePath` if it could escape."""
    return _check_part(text, what, allow_slash)


def _check_part(text: str, what: str, allow_slash: bool) -> list[str]:
    if "\x00" in text or "\\" in text:
        raise UnsafePath(f"{what} contains a forbidden character")
    if _PERCENT_ESCAPE.search(text):
        raise UnsafePath(f"{what} contains percent-encoding")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise UnsafePath(f"{what} must be relative")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePath(f"{what} must not contain '..'")
    if not allow_slash and len(parts) > 1:
        raise UnsafePath(f"{what} must be a plain file name")
    return parts


def safe_join(base: Path, subfolder: str, filename: str) -> Path:
    """`base/subfolder/filename` resolved, guaranteed inside `base`; raises `UnsafePath`
    for a bad name and `FileNotFoundError` when there is no such regular file."""
    if not filename:
        raise UnsafePath("filename is required")
    sub_parts = _check_part(subfolder, "subfolder", allow_slash=True)
    name_parts = _check_part(filename, "filename", allow_slash=False)
    if not name_parts:
        raise UnsafePath("filename is required")
    root = base.resolve()
    target = root.joinpath(*sub_parts, *name_parts)
    resolved = target.resolve()
    if not resolved.is_relative_to(root):
        raise UnsafePath("the path leaves its folder")
    if not resolved.is_file():
        raise FileNotFoundError(str(target))
    return resolved



def view_handler(folders: dict[str, Path]):  # type: ignore[no-untyped-def]
    """`GET /api/view?filename=&type=output|input|temp&subfolder=`."""

    async def view(request: web.Request) -> web.StreamResponse:
        filename, kind = split_annotation(request.query.get("filename", ""),
                                          request.query.get("type", "output"))
        if kind not in folders:
            return error_response(400, "invalid_type", f"type must be one of {sorted(folders)}")
        try:
            path = safe_join(folders[kind], request.query.get("subfolder", ""), filename)
        except UnsafePath as exc:
            return error_response(400, "unsafe_path", str(exc))
        except (FileNotFoundError, OSError):
            return error_response(404, "not_found", "no such file")
        inline = INLINE_TYPES.get(path.suffix.lower())
        preview, channel = request.query.get("preview"), request.query.get("channel", "rgba")
        if inline is not None and (preview or channel in ("rgb", "a")):
            loop = asyncio.get_running_loop()
            try:
                body, ctype = await loop.run_in_executor(None, transcode, path, preview, channel)
            except ValueError as exc:
                return error_response(400, "invalid_image", str(exc))
            response = web.Response(body=body, content_type=ctype)
            response.headers["Content-Disposition"] = f'inline; filename="{path.name}"'
            response.headers["Content-Security-Policy"] = FILE_CSP
            response.headers["Cache-Control"] = "no-cache"
            return response
        response = web.FileResponse(path)
        if inline is not None:
            response.content_type = inline
            response.headers["Content-Disposition"] = f'inline; filename="{path.name}"'
        else:
            response.content_type = "application/octet-stream"
            response.headers["Content-Disposition"] = f'attachment; filename="{path.name}"'
        response.headers["Content-Security-Policy"] = FILE_CSP
        response.headers["Cache-Control"] = "no-cache"
        return response

    return view


def split_annotation(filename: str, kind: str) -> tuple[str, str]:
    """`name.png [input]` -> (`name.png`, `input`): the folder written after the name (as
    ComfyUI's image widgets write it) wins over the `type` parameter."""
    match = _ANNOTATED.match(filename)
    if match is None:
        return filename, kind
    return match.group(1), match.group(2)


def transcode(path: Path, preview: str | None, channel: str) -> tuple[bytes, str]:
    """The image at `path` re-encoded: `preview` is `webp;Q` or `jpeg;Q`; `channel` `rgb`
    drops alpha, `a` keeps only alpha (as a black image with that alpha). Bounded like an
    upload, so a huge file in the output folder cannot exhaust memory here."""
    from PIL import Image

    check_image(path.read_bytes())
    with Image.open(path) as img:
        img.load()
        if channel == "a":
            alpha = img.getchannel("A") if "A" in img.getbands() else Image.new(
                "L", img.size, 255)
            img = Image.new("RGBA", img.size)
            img.putalpha(alpha)
        elif channel == "rgb":
            img = img.convert("RGB")
        fmt, quality = "png", 90
        if preview:
            kind, _, rest = preview.partition(";")
            fmt = kind if kind in ("webp", "jpeg") and channel != "a" else "webp"
            digits = rest.isascii() and rest.isdigit() and len(rest) <= 3  # not "²"
            quality = int(rest) if digits else 90
            if fmt == "jpeg":
                img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format=fmt.upper(), quality=max(1, min(quality, 100)))
    return buf.getvalue(), f"image/{fmt}"


def check_image(data: bytes, max_pixels: int = MAX_UPLOAD_PIXELS) -> str:
    """The file extension for a genuine raster image, else `ValueError` saying why."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                width, height = img.size
                if fmt not in UPLOAD_FORMATS:
                    raise ValueError(f"unsupported image format {fmt or 'unknown'}")
                if width * height > max_pixels:
                    raise ValueError(f"image too large: {width}x{height} pixels")
                img.verify()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(f"image too large: {exc}") from exc
        except (OSError, SyntaxError, Image.UnidentifiedImageError) as exc:
            raise ValueError(f"not a readable image: {exc}") from exc
    return UPLOAD_FORMATS[fmt]


def upload_handler(input_dir: Path, max_bytes: int = MAX_UPLOAD_BYTES,
                   max_pixels: int = MAX_UPLOAD_PIXELS):  # type: ignore[no-untyped-def]
    """`POST /api/upload/image` (multipart, field `image`) -> `{name, subfolder, type}`."""

    async def upload(request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            return error_response(400, "invalid_request", "expected multipart/form-data")
        try:
            reader = await request.multipart()
            data: bytes | None = None
            async for part in reader:
                if getattr(part, "name", None) not in ("image", "file"):
                    continue
                buf = bytearray()
                while chunk := await part.read_chunk(64 * 1024):  # type: ignore[union-attr]
                    buf.extend(chunk)
                    if len(buf) > max_bytes:
                        return error_response(413, "too_large",
                                      f"uploads are limited to {max_bytes} bytes")
                data = bytes(buf)
                break
        except (ValueError, web.HTTPException) as exc:
            return error_response(400, "invalid_request", f"malformed upload: {exc}")
        if not data:
            return error_response(400, "invalid_request", "no 'image' file in the upload")
        try:
            ext = check_image(data, max_pixels)
        except ValueError as exc:
            return error_response(400, "invalid_image", str(exc))
        name = hashlib.sha256(data).hexdigest()[:32] + ext
        input_dir.mkdir(parents=True, exist_ok=True)
        target = input_dir / name
        if not target.exists():
            tmp = input_dir / f".{name}.part"
            tmp.write_bytes(data)
            tmp.replace(target)
        return web.json_response({"name": name, "subfolder": "", "type": "input"})

    return upload

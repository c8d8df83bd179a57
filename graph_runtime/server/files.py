"""Serving output/input/temp files and accepting image uploads, without trusting names.

`/api/view` resolves the requested name inside one of three folders and refuses anything
that would leave it: `..` parts, absolute paths, backslashes, names that still contain
percent-escapes after the single decoding the query string gets (double encoding), NUL
bytes, and symlinks whose target lies outside (the resolved path is checked, not the
spelled one — ComfyUI #12285). Only raster image types are served inline; everything else
(HTML, SVG, JavaScript, ...) is sent as an attachment with `nosniff`, so a file in the
output folder can never run script in our origin.

Uploads must be real raster images: the bytes are size-limited, Pillow must identify and
`verify()` them, and the pixel count is bounded before anything is decoded (decompression
bombs). The stored name is the SHA-256 of the content, so uploading the same image twice
stores it once and a client can never choose a path.
"""

from __future__ import annotations

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
FILE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


class UnsafePath(ValueError):
    """A requested file name that could point outside its folder."""


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
        kind = request.query.get("type", "output")
        if kind not in folders:
            return error_response(400, "invalid_type", f"type must be one of {sorted(folders)}")
        try:
            path = safe_join(folders[kind], request.query.get("subfolder", ""),
                             request.query.get("filename", ""))
        except UnsafePath as exc:
            return error_response(400, "unsafe_path", str(exc))
        except (FileNotFoundError, OSError):
            return error_response(404, "not_found", "no such file")
        response = web.FileResponse(path)
        inline = INLINE_TYPES.get(path.suffix.lower())
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

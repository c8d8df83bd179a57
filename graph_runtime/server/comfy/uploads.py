"""ComfyUI's `POST /upload/image`: the client names the file, and may pick folder and subfolder.

Where our own upload route names a file by its content, ComfyUI's keeps the client's name,
because a client then refers to it by that name in a LoadImage input. Its rules: `type`
chooses the folder (input by default, temp, output), `subfolder` a folder inside it; an
existing file of the same name is replaced only when `overwrite` is "true" or "1",
otherwise identical content reuses the name and different content is stored as
`name (1).ext`, `name (2).ext`, ... Our own safety rules still hold: names that could leave
the folder are refused, the size is limited, and only genuine raster images are accepted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import web

from graph_runtime.server.files import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    UnsafePath,
    check_image,
    check_parts,
)
from graph_runtime.server.responses import error_response

TEXT_FIELDS = ("overwrite", "type", "subfolder")
MAX_FIELD_BYTES = 4096


class UploadError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code = status, code
        super().__init__(message)


async def _read_form(request: web.Request, max_bytes: int
                     ) -> tuple[bytes | None, str, dict[str, str]]:
    """The image part's bytes and file name, and the text fields that matter."""
    if not request.content_type.startswith("multipart/"):
        raise UploadError(400, "invalid_request", "expected multipart/form-data")
    data: bytes | None = None
    filename = ""
    fields: dict[str, str] = {}
    try:
        reader = await request.multipart()
        async for part in reader:
            name = getattr(part, "name", None)
            limit = max_bytes if name == "image" else MAX_FIELD_BYTES
            if name != "image" and name not in TEXT_FIELDS:
                continue
            buf = bytearray()
            while chunk := await part.read_chunk(64 * 1024):  # type: ignore[union-attr]
                buf.extend(chunk)
                if len(buf) > limit:
                    raise UploadError(413, "too_large", f"{name} is limited to {limit} bytes")
            if name == "image":
                data, filename = bytes(buf), getattr(part, "filename", None) or ""
            else:
                fields[name] = buf.decode("utf-8", errors="replace")
    except (ValueError, web.HTTPException) as exc:
        raise UploadError(400, "invalid_request", f"malformed upload: {exc}") from exc
    return data, filename, fields


def _same_content(path: Path, digest: str) -> bool:
    return hashlib.sha256(path.read_bytes()).hexdigest() == digest


def store(data: bytes, filename: str, folder: Path, subfolder: str, overwrite: bool) -> str:
    """Write `data` as `folder/subfolder/filename` under ComfyUI's naming rules; returns
    the name used. Raises `UnsafePath` for names that could leave `folder`."""
    (name,) = check_parts(filename, "filename", allow_slash=False) or [""]
    if not name:
        raise UnsafePath("filename is required")
    root = folder.resolve()
    target_dir = root.joinpath(*check_parts(subfolder, "subfolder", allow_slash=True))
    if not target_dir.resolve().is_relative_to(root):
        raise UnsafePath("the subfolder leaves its folder")
    target_dir.mkdir(parents=True, exist_ok=True)
    stem, dot, ext = name.rpartition(".")
    stem, ext = (stem, dot + ext) if dot and stem else (name, "")
    digest = hashlib.sha256(data).hexdigest()
    target, n = target_dir / name, 0
    while not overwrite and target.exists():
        if target.is_file() and _same_content(target, digest):
            return target.name
        n += 1
        target = target_dir / f"{stem} ({n}){ext}"
    if not target.resolve().is_relative_to(root):
        raise UnsafePath("the file name leaves its folder")
    tmp = target_dir / f".{target.name}.part"
    tmp.write_bytes(data)
    tmp.replace(target)
    return target.name


def upload_handler(folders: dict[str, Path], max_bytes: int = MAX_UPLOAD_BYTES,
                   max_pixels: int = MAX_UPLOAD_PIXELS):  # type: ignore[no-untyped-def]
    """`POST /upload/image` -> `{name, subfolder, type}`."""

    async def upload(request: web.Request) -> web.Response:
        try:
            data, filename, fields = await _read_form(request, max_bytes)
        except UploadError as exc:
            return error_response(exc.status, exc.code, str(exc))
        if not data or not filename:
            return error_response(400, "invalid_request", "no 'image' file in the upload")
        kind = fields.get("type") or "input"
        if kind not in folders:
            return error_response(400, "invalid_type", f"type must be one of {sorted(folders)}")
        try:
            check_image(data, max_pixels)
        except ValueError as exc:
            return error_response(400, "invalid_image", str(exc))
        subfolder = fields.get("subfolder", "")
        overwrite = fields.get("overwrite", "") in ("true", "1")
        try:
            name = store(data, filename, folders[kind], subfolder, overwrite)
        except UnsafePath as exc:
            return error_response(400, "unsafe_path", str(exc))
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    return upload

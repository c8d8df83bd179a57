"""A tiny node library for server and browser tests: numbers, a gradient image with step
progress and previews, a PNG saver that embeds the workflow, a node that fails.

Built into a fresh `Registry` each time, so the tests never touch the global one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

from PIL import Image, PngImagePlugin

from graph_runtime import Choice, Float, Int, Registry, Seed, SocketType, Text, node
from graph_runtime.context import current


class Picture:
    """An IMAGE socket value: one PIL image."""

    __socket__ = "IMAGE"

    def __init__(self, image: Image.Image) -> None:
        self.image = image


def make_registry() -> Registry:
    reg = Registry()
    reg.add_socket_type(SocketType("IMAGE", "#64b5f6"))

    @node("Number", category="test/values", output="value", registry=reg)
    def number(value: Annotated[int, Int(min=0, max=100)] = 3) -> int:
        """A small integer."""
        return value

    @node("Add", category="test/values", output="value", registry=reg)
    def add(a: int, b: Annotated[int, Int(min=-100, max=100)] = 1) -> int:
        """a + b."""
        return a + b

    @node("Gradient", category="test/images", output="image", registry=reg)
    def gradient(size: Annotated[int, Int(min=8, max=256)] = 32,
                 seed: Annotated[int, Seed()] = 0,
                 steps: Annotated[int, Int(min=1, max=200)] = 3,
                 delay: Annotated[float, Float(min=0.0)] = 0.0,
                 colour: Annotated[str, Choice(["red", "green", "blue"])] = "red",
                 label: Annotated[str, Text(multiline=True)] = "hello") -> Picture:
        """A gradient image, drawn in `steps` steps with a preview after each."""
        ctx = current()
        channel = {"red": 0, "green": 1, "blue": 2}[colour]
        img = Image.new("RGB", (size, size))
        for step in range(1, steps + 1):
            px = img.load()
            for y in range(size):
                for x in range(size):
                    rgb = [0, 0, 0]
                    rgb[channel] = (x * 255 // size * step // steps + seed) % 256
                    rgb[(channel + 1) % 3] = y * 255 // size
                    px[x, y] = tuple(rgb)
            if delay:
                time.sleep(delay)
            if ctx is not None:
                ctx.progress(step, steps, img.copy())
        return Picture(img)

    @node("SavePicture", category="test/images", output_node=True, registry=reg)
    def save_picture(image: Picture, filename_prefix: Annotated[str, Text()] = "test") -> None:
        """Save as PNG with the workflow in a tEXt chunk named "workflow"."""
        ctx = current()
        out = ctx.output_dir if ctx is not None else Path("output")
        out.mkdir(parents=True, exist_ok=True)
        n = 1
        while (out / f"{filename_prefix}_{n:05d}.png").exists():
            n += 1
        path = out / f"{filename_prefix}_{n:05d}.png"
        info = PngImagePlugin.PngInfo()
        if ctx is not None and ctx.workflow is not None:
            info.add_text("workflow", json.dumps(ctx.workflow))
        image.image.save(path, pnginfo=info)
        if ctx is not None:
            ctx.add_file(path)

    @node("ShowInt", category="test/values", output_node=True, registry=reg)
    def show_int(value: int) -> None:
        """Show a number."""
        ctx = current()
        if ctx is not None:
            ctx.ui.setdefault("text", []).append(str(value))

    @node("Fail", category="test/values", output_node=True, registry=reg)
    def fail(value: int) -> None:
        """Always raises."""
        raise RuntimeError(f"failing on purpose with {value}")

    return reg


def image_workflow(steps: int = 3, delay: float = 0.0, seed: int = 0) -> dict:
    """Gradient -> SavePicture, in the v1 file format."""
    return {
        "format": "noodle.workflow", "version": 1, "name": "gradient",
        "nodes": {
            "1": {"type": "Gradient", "inputs": {"size": 32, "steps": steps, "delay": delay,
                                                 "seed": seed},
                  "ui": {"pos": [60, 80], "size": [300, 260]}},
            "2": {"type": "SavePicture", "inputs": {"image": {"from": "1", "output": "image"}},
                  "ui": {"pos": [420, 80], "size": [320, 320]}},
        },
    }

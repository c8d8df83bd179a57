"""The toy node library: small nodes that exercise the engine, the server, the canvas and the
`noodle` command without loading the diffusion library.

Every node is defined once, as a plain function, and registered on demand: in-process tests
build a private `Registry` (`toy_registry()`), so they never touch the global one;
subprocesses import `tests.support.toy_global`, which registers the same nodes globally.
Each node belongs to the group of tests it was written for, so a test can ask for exactly
the nodes whose schemas it asserts (the server's node list, for instance).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from PIL import Image, PngImagePlugin

from graph_runtime import Choice, Float, Int, Registry, Seed, SocketType, Text, current, node
from tests.support.workflows import link, workflow_dict

ENGINE = "engine"  # executor, validation and cache tests
CANVAS = "canvas"  # server and browser tests: numbers and pictures with progress
COMMAND = "command"  # what only the `noodle` subprocess tests use
GROUPS = (ENGINE, CANVAS, COMMAND)

PICTURE_TYPE = SocketType("IMAGE", "#64b5f6")
Func = Callable[..., Any]


@dataclass(frozen=True)
class ToyNode:
    """A toy node waiting to be registered: its function and `@node` options."""

    group: str
    name: str
    func: Func
    options: dict[str, Any] = field(default_factory=dict)


TOYS: list[ToyNode] = []


def toy(group: str, name: str, **options: Any) -> Callable[[Func], Func]:
    """Record `func` as toy node `name`; `@node` runs later, once per registry."""

    def wrap(func: Func) -> Func:
        TOYS.append(ToyNode(group, name, func, options))
        return func

    return wrap


def register_toy_nodes(registry: Registry, *groups: str) -> Registry:
    """Register the toy nodes of `groups` (all when none are named) into `registry`."""
    unknown = set(groups) - set(GROUPS)
    assert not unknown, f"unknown toy node groups: {sorted(unknown)}"
    registry.add_socket_type(PICTURE_TYPE)
    for toy_node in TOYS:
        if not groups or toy_node.group in groups:
            node(toy_node.name, registry=registry, **toy_node.options)(toy_node.func)
    return registry


def toy_registry(*groups: str) -> Registry:
    """A fresh registry holding the toy nodes of `groups` (all when none are named)."""
    return register_toy_nodes(Registry(), *groups)


def run_context() -> Any:
    """The current run's context; toy nodes are only ever run by an executor."""
    ctx = current()
    assert ctx is not None
    return ctx


class Pair(NamedTuple):
    low: int
    high: int


class Picture:
    """An IMAGE socket value: one PIL image."""

    __socket__ = "IMAGE"

    def __init__(self, image: Image.Image) -> None:
        self.image = image


# ---------------------------------------------------------------------------- engine
@toy(ENGINE, "Const", output="value")
def const(value: Annotated[int, Int(min=-100, max=100)] = 1) -> int:
    return value


@toy(ENGINE, "Add", output="sum")
def add(a: int, b: Annotated[int, Int()] = 0) -> int:
    return a + b


@toy(ENGINE, "Scale", output="value")
def scale(x: float, factor: Annotated[float, Float(min=0.0, max=10.0)] = 2.0) -> float:
    return x * factor


@toy(ENGINE, "Split")
def split(x: int) -> Pair:
    return Pair(x - 1, x + 1)


@toy(ENGINE, "Label", output="text")
def label(x: int, mode: Annotated[str, Choice(["plain", "loud"])] = "plain",
          suffix: Annotated[str, Text()] = "") -> str:
    text = f"n={x}{suffix}"
    return text.upper() if mode == "loud" else text


@toy(ENGINE, "Sink", output_node=True)
def sink(value: int, note: str | None = None) -> None:
    run_context().ui["value"] = [value]


@toy(ENGINE, "TextSink", output_node=True)
def text_sink(text: str) -> None:
    run_context().ui["text"] = [text]


@toy(ENGINE, "WriteFile", output_node=True)
def write_file(value: int, name: Annotated[str, Text()] = "out") -> None:
    ctx = run_context()
    path = ctx.output_dir / f"{name}.txt"
    path.write_text(str(value))
    ctx.add_file(path)


@toy(ENGINE, "Boom", output="value")
def boom(x: int) -> int:
    raise ValueError(f"boom at {x}")


@toy(ENGINE, "Steps", output="value")
def steps(x: int, total: Annotated[int, Int(min=1, max=100)] = 3) -> int:
    ctx = run_context()
    for i in range(1, total + 1):
        ctx.progress(i, total)
    return x + total


# ---------------------------------------------------------------------------- canvas
@toy(CANVAS, "Number", category="test/values", output="value")
def number(value: Annotated[int, Int(min=0, max=100)] = 3) -> int:
    """A small integer."""
    return value


@toy(CANVAS, "AddInt", category="test/values", output="value")
def add_int(a: int, b: Annotated[int, Int(min=-100, max=100)] = 1) -> int:
    """a + b."""
    return a + b


@toy(CANVAS, "Gradient", category="test/images", output="image")
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


@toy(CANVAS, "SavePicture", category="test/images", output_node=True)
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


@toy(CANVAS, "ShowInt", category="test/values", output_node=True)
def show_int(value: int) -> None:
    """Show a number."""
    ctx = current()
    if ctx is not None:
        ctx.ui.setdefault("text", []).append(str(value))


@toy(CANVAS, "Fail", category="test/values", output_node=True)
def fail(value: int) -> None:
    """Always raises."""
    raise RuntimeError(f"failing on purpose with {value}")


# ---------------------------------------------------------------------------- command
@toy(COMMAND, "TFail", output="value")
def t_fail(x: int) -> int:
    raise RuntimeError(f"cannot handle {x}")


@toy(COMMAND, "TSteps", output="value")
def t_steps(x: int, total: Annotated[int, Int(min=1)] = 3) -> int:
    """Progress with a preview that is no image, which `--json` must print as null."""
    ctx = run_context()
    for i in range(1, total + 1):
        ctx.progress(i, total, preview=object())
    return x


@toy(COMMAND, "Greeting", category="test", output="text")
def greeting(name: Annotated[str, Text()] = "world") -> str:
    """Hello, name."""
    return f"hello {name}"


@toy(COMMAND, "WriteText", category="test", output_node=True)
def write_text(text: str, filename: Annotated[str, Text()] = "out.txt") -> None:
    """Write the text into the output folder."""
    ctx = run_context()
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.output_dir / filename
    path.write_text(text)
    ctx.add_file(path)


def image_workflow(steps: int = 3, delay: float = 0.0, seed: int = 0,
                   **top: Any) -> dict[str, Any]:
    """Gradient -> SavePicture as plain JSON, laid out for the canvas."""
    return workflow_dict({
        "1": ("Gradient", {"size": 32, "steps": steps, "delay": delay, "seed": seed},
              {"ui": {"pos": [60, 80], "size": [300, 260]}}),
        "2": ("SavePicture", {"image": link("1", "image")},
              {"ui": {"pos": [420, 80], "size": [320, 320]}}),
    }, **{"name": "gradient", **top})

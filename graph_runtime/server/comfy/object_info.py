"""`/object_info`: node schemas in ComfyUI's shape, for the nodes of the ComfyUI pack.

ComfyUI describes a node by its input groups (`required`, `optional`, `hidden`), each input
as `[TYPE, {options}]` — or `[[choices], {options}]` for a combo — plus parallel output
lists. Clients build forms and validate values from it, so every option here is the one
our own validation enforces (a seed's maximum is ours, not ComfyUI's). Only nodes whose
category starts with "ComfyUI" are listed: those are the ones that keep ComfyUI's class
names and input names, so what a client learns here it can submit.
"""

from __future__ import annotations

from typing import Any

from graph_runtime.registry import InputSpec, NodeDef, Registry
from graph_runtime.settings import Folders
from graph_runtime.sockets import PRIMITIVES
from graph_runtime.widgets import Bool, Choice, Float, Int, Seed, Text

PACK_CATEGORY = "ComfyUI"
PRIMITIVE_NAMES = frozenset(PRIMITIVES.values())
# Output nodes are given the prompt and its PNG extras (ComfyUI's hidden inputs).
OUTPUT_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def in_pack(definition: NodeDef) -> bool:
    category = definition.category
    return category == PACK_CATEGORY or category.startswith(PACK_CATEGORY + "/")


def comfy_category(category: str) -> str:
    """Our palette's "ComfyUI/sampling" is ComfyUI's "sampling"."""
    if category == PACK_CATEGORY:
        return ""
    return category.removeprefix(PACK_CATEGORY + "/")


def _bounded(options: dict[str, Any], widget: Int | Float) -> None:
    if widget.min is not None:
        options["min"] = widget.min
    if widget.max is not None:
        options["max"] = widget.max
    options["step"] = widget.step


def input_entry(spec: InputSpec, folders: Folders) -> list[Any]:
    """One input as ComfyUI lists it: `["INT", {...}]`, `[[choices], {...}]`, `["MODEL"]`."""
    widget = spec.widget
    if widget is None:
        if spec.type in PRIMITIVE_NAMES:
            return [spec.type, {"forceInput": True}]
        return [spec.type]
    options: dict[str, Any] = {}
    if isinstance(widget, Choice):
        choices = widget.current_options(folders)
        if spec.default in choices:
            options["default"] = spec.default
        if widget.upload == "image":
            options["image_upload"] = True
        if widget.tooltip:
            options["tooltip"] = widget.tooltip
        return [choices, options]
    options["default"] = spec.default
    if isinstance(widget, (Int, Float)):
        _bounded(options, widget)
    if isinstance(widget, Seed):
        options["control_after_generate"] = True
    if isinstance(widget, Text):
        options["multiline"] = widget.multiline
    if isinstance(widget, Bool):
        options["default"] = bool(spec.default)
    if widget.tooltip:
        options["tooltip"] = widget.tooltip
    return [spec.type, options]


def node_info(definition: NodeDef, folders: Folders) -> dict[str, Any]:
    """The `/object_info/{class}` entry of one node."""
    required: dict[str, Any] = {}
    optional: dict[str, Any] = {}
    for spec in definition.inputs.values():
        group = optional if spec.optional and spec.widget is None else required
        group[spec.name] = input_entry(spec, folders)
    inputs: dict[str, Any] = {"required": required}
    if optional:
        inputs["optional"] = optional
    if definition.output_node:
        inputs["hidden"] = dict(OUTPUT_HIDDEN)
    return {
        "input": inputs,
        "input_order": {group: list(values) for group, values in inputs.items()},
        "output": [o.type for o in definition.outputs],
        "output_is_list": [False for _ in definition.outputs],
        "output_name": [o.name for o in definition.outputs],
        "name": definition.name,
        "display_name": definition.display_name or definition.name,
        "description": definition.description,
        "python_module": "nodes",
        "category": comfy_category(definition.category),
        "output_node": definition.output_node,
    }


def object_info(registry: Registry, folders: Folders,
                only: str | None = None) -> dict[str, dict[str, Any]]:
    """Every pack node by class name (or just `only`; `{}` when it is not a pack node)."""
    names = [only] if only is not None else list(registry)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        definition = registry.get(name)
        if definition is not None and in_pack(definition):
            out[name] = node_info(definition, folders)
    return out

"""`widgets_values` -> named inputs, in the widget order our node definitions give.

ComfyUI stores a node's widget values as a bare list in widget creation order, which is
the node's input order restricted to widget inputs, plus values of front-end-only widgets
right after their owner: the "control after generate" choice after a seed, the upload
button's value after an upload-enabled choice. Our ComfyUI node pack keeps ComfyUI's input
names and order, so the registry says which value is which. Saved files sometimes carry
extra trailing values (ignored) or too few (the input's default); some custom nodes save a
dict by name instead of a list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graph_runtime.registry import InputSpec, NodeDef
from graph_runtime.widgets import Choice, Int

CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})
# The settings our canvas offers ("increment-wrap" is for choices, not seeds).
CANVAS_CONTROLS = frozenset({"fixed", "increment", "decrement", "randomize"})
LEGACY_SEED_NAMES = frozenset({"seed", "noise_seed"})


@dataclass
class WidgetValues:
    values: dict[str, Any] = field(default_factory=dict)
    # Seed input name -> its "control after generate" setting, for the canvas.
    controls: dict[str, str] = field(default_factory=dict)


def widget_specs(definition: NodeDef) -> list[InputSpec]:
    return [spec for spec in definition.inputs.values() if spec.widget is not None]


def _has_control(spec: InputSpec) -> bool:
    """Seeds carry a hidden control value; older front ends added one to any integer named
    like a seed, so such integers are checked for one too."""
    widget = spec.widget
    return (widget is not None and widget.kind == "seed") or (
        isinstance(widget, Int) and spec.name in LEGACY_SEED_NAMES)


def _is_control(value: Any) -> bool:
    # The front end's own default graph stores `true` there.
    return isinstance(value, bool) or (isinstance(value, str) and value in CONTROL_VALUES)


def widget_values(definition: NodeDef, saved: Any) -> WidgetValues:
    """Each widget input's value from a node's saved `widgets_values` (list, dict or
    absent); a missing or null value is the input's default."""
    out = WidgetValues()
    specs = widget_specs(definition)
    if isinstance(saved, dict):
        for spec in specs:
            value = saved.get(spec.name)
            out.values[spec.name] = spec.default if value is None else value
        return out
    values = saved if isinstance(saved, list) else []
    i = 0
    for spec in specs:
        value = values[i] if i < len(values) else None
        out.values[spec.name] = spec.default if value is None else value
        i += 1
        if _has_control(spec) and i < len(values) and _is_control(values[i]):
            if values[i] in CANVAS_CONTROLS:
                out.controls[spec.name] = values[i]
            i += 1
        if isinstance(spec.widget, Choice) and spec.widget.upload:
            i += 1  # the upload button's value
    return out

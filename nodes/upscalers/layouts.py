"""RRDBNet checkpoints in their two key layouts, renamed to our module names, with the
network's shape read from the tensors.

The original ESRGAN layout numbers a flat `model` sequence: `model.0` the first convolution,
`model.1.sub.N.RDB1.conv1.0` the trunk's blocks and `model.1.sub.<blocks>` the trunk
convolution; then, per x2 stage, an upsampling layer, a convolution (`model.3`, `model.6`,
...) and an activation; then the high-resolution and output convolutions. BasicSR's layout
(Real-ESRGAN's releases) names them: `conv_first`, `body.N.rdb1.conv1`, `conv_body`,
`conv_up1`..., `conv_hr`, `conv_last`. Training frameworks wrap the weights in `params_ema`,
`params` or `state_dict`, and sometimes prefix `module.`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from nodes.upscalers.rrdbnet import RRDBConfig

WRAPPERS = ("params_ema", "params", "state_dict", "model_state_dict")
_OLD_BODY = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_TOP = re.compile(r"^model\.(\d+)\.(weight|bias)$")
_OLD_TRUNK = re.compile(r"^model\.1\.sub\.(\d+)\.(weight|bias)$")
_NEW_BODY = re.compile(r"^body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)$")
_NEW_UP = re.compile(r"^conv_up(\d+)\.(weight|bias)$")


def unwrap(state: Mapping[str, object]) -> dict[str, Tensor]:
    """The weights themselves: out of a training wrapper, without a `module.` prefix."""
    for key in WRAPPERS:
        inner = state.get(key)
        if isinstance(inner, Mapping):
            state = inner
            break
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()
            if isinstance(v, Tensor)}


def is_original_layout(state: Mapping[str, Tensor]) -> bool:
    return "model.0.weight" in state


def is_rrdbnet(state: Mapping[str, Tensor]) -> bool:
    """Whether the (unwrapped) weights are an RRDBNet in either layout."""
    return is_original_layout(state) and any(_OLD_BODY.match(k) for k in state) or (
        "conv_first.weight" in state and any(_NEW_BODY.match(k) for k in state))


def _original_top_names(state: Mapping[str, Tensor]) -> dict[int, str]:
    """`model.<i>` indices after the trunk -> our names: each x2 stage takes three indices
    (upsample, conv, activation) from 2, then conv_hr, an activation and conv_last."""
    indices = sorted({int(m.group(1)) for k in state if (m := _OLD_TOP.match(k))} - {0})
    *ups, hr, last = indices
    names = {0: "conv_first", hr: "conv_hr", last: "conv_last"}
    names.update({i: f"conv_up.{n}" for n, i in enumerate(ups)})
    return names


def from_original(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original ESRGAN keys -> ours."""
    top = _original_top_names(state)
    blocks = {int(m.group(1)) for k in state if (m := _OLD_BODY.match(k))}
    trunk = max(blocks) + 1
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if m := _OLD_BODY.match(key):
            n, rdb, conv, kind = m.groups()
            out[f"body.{n}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif (m := _OLD_TRUNK.match(key)) and int(m.group(1)) == trunk:
            out[f"conv_body.{m.group(2)}"] = value
        elif m := _OLD_TOP.match(key):
            out[f"{top[int(m.group(1))]}.{m.group(2)}"] = value
        else:
            raise ValueError(f"unexpected key {key!r} in an ESRGAN checkpoint")
    return out


def from_basicsr(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """BasicSR keys -> ours (only the upsampling convolutions are renamed)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = _NEW_UP.match(key)
        out[f"conv_up.{int(m.group(1)) - 1}.{m.group(2)}" if m else key] = value
    return out


def to_ours(state: Mapping[str, object]) -> dict[str, Tensor]:
    """Any supported RRDBNet checkpoint's tensors under our module names."""
    weights = unwrap(state)
    if not is_rrdbnet(weights):
        raise ValueError("not an ESRGAN/Real-ESRGAN (RRDBNet) checkpoint: expected "
                         "'model.0.weight' or 'conv_first.weight' with dense blocks")
    return from_original(weights) if is_original_layout(weights) else from_basicsr(weights)


def config_of(ours: Mapping[str, Tensor]) -> RRDBConfig:
    """The network's shape from renamed weights. The first convolution's input channels
    tell the unshuffle factor (3: none, 12: 2, 48: 4)."""
    first = ours["conv_first.weight"]
    features, in_total = int(first.shape[0]), int(first.shape[1])
    out_channels = int(ours["conv_last.weight"].shape[0])
    in_channels = out_channels if in_total % out_channels == 0 else in_total
    unshuffle = int(round((in_total // in_channels) ** 0.5))
    if unshuffle * unshuffle * in_channels != in_total:
        in_channels, unshuffle = in_total, 1
    blocks = 1 + max(int(m.group(1)) for k in ours if (m := _NEW_BODY.match(k)))
    upsamples = 1 + max((int(k.split(".")[1]) for k in ours if k.startswith("conv_up.")),
                        default=-1)
    growth = int(ours["body.0.rdb1.conv1.weight"].shape[0])
    return RRDBConfig(in_channels, out_channels, features, growth, blocks, upsamples,
                      unshuffle)

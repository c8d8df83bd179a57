"""Reading a LoRA file and turning it into per-parameter deltas for our modules.

``parse_lora`` is told which components the model has ("unet", "text_encoder",
"text_encoder_2"; None for one it lacks). Keys for an absent component are skipped: that is
how a LoRA is applied to the UNet alone (ComfyUI's "model only" loader) or an SDXL LoRA to
the refiner, which has only the second text encoder. Every other key must land on a
parameter of the right size; the rest is an error naming the keys.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .build import BIAS, build_deltas, combine
from .deltas import Delta
from .errors import LoraFormatError, unmatched_error
from .keys import KOHYA, UNET, KeyRef, read_keys
from .ldm_names import is_ldm_name, ldm_to_diffusers_name
from .names import TEXT_MODEL, AmbiguousNameError, ModuleIndex

Deltas = dict[str, dict[str, Delta]]

_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def read_lora(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file: safetensors, or a torch pickle read with
    ``weights_only`` (a top-level ``state_dict`` is unwrapped)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        state: object = load_file(str(path), device="cpu")
    elif suffix in _PICKLE_SUFFIXES:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
    else:
        raise LoraFormatError(f"{path}: not a LoRA file type we read "
                              f"(.safetensors, {', '.join(_PICKLE_SUFFIXES)})")
    if not isinstance(state, Mapping):
        raise LoraFormatError(f"{path}: holds a {type(state).__name__}, not a state dict")
    odd = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise unmatched_error(f"{path}: entries that are not tensors", odd)
    return {str(k): v for k, v in state.items()}


def _index(name: str, module: nn.Module) -> ModuleIndex:
    return ModuleIndex(module, None if name == UNET else TEXT_MODEL)


def _resolve(ref: KeyRef, index: ModuleIndex) -> str | None:
    """The module path ``ref`` names in its component, None if none."""
    try:
        if ref.style != KOHYA:
            return index.dotted(ref.module)
        found = index.underscored(ref.module)
        if found is None and ref.component == UNET and is_ldm_name(ref.module):
            config = getattr(index.module, "config", None)
            converted = ldm_to_diffusers_name(ref.module, config) if config else None
            found = index.underscored(converted) if converted else None
        return found
    except AmbiguousNameError as exc:
        raise LoraFormatError(f"{ref.key}: the name {exc.args[0]!r} fits more than one "
                              "module of the model") from exc


def _fits(delta: torch.Size, target: torch.Size) -> bool:
    """Whether a delta of its natural shape can be reshaped onto the parameter.

    Equal up to trailing 1s (a 1x1 conv LoRA on a linear layer and back), or a flattened
    ``[out, in * kh * kw]`` delta (LoHa / LoKr on a conv) with the same ``out`` and size.
    """
    def strip(s: torch.Size) -> tuple[int, ...]:
        dims = list(s)
        while len(dims) > 2 and dims[-1] == 1:
            dims.pop()
        return tuple(dims)

    if strip(delta) == strip(target):
        return True
    return (len(delta) == 2 and len(target) > 2 and delta[0] == target[0]
            and math.prod(delta) == math.prod(target))


def _check_shape(keys: list[str], component: str, name: str, delta: Delta,
                 param: torch.Tensor) -> None:
    if not _fits(delta.shape, param.shape):
        raise LoraFormatError(
            f"{keys[0]}: the LoRA's delta has shape {tuple(delta.shape)} but {component} "
            f"parameter {name!r} has shape {tuple(param.shape)} (a LoRA for another model?)")


def _component_deltas(component: str, module: nn.Module, refs: list[KeyRef],
                      state: Mapping[str, torch.Tensor], unmatched: list[str]
                      ) -> dict[str, Delta]:
    """The deltas of one present component; keys matching no module go to ``unmatched``."""
    index = _index(component, module)
    # One group per module as the file spells it: two spellings of one module (rare) are
    # two entries whose deltas add.
    groups: dict[tuple[str, str, str], dict[str, torch.Tensor]] = defaultdict(dict)
    group_keys: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for ref in refs:
        path = _resolve(ref, index)
        if path is None:
            unmatched.append(ref.key)
            continue
        group = (path, ref.style, ref.module)
        if ref.role in groups[group]:
            raise LoraFormatError(f"{ref.key}: a second {ref.role!r} tensor for module {path!r}")
        groups[group][ref.role] = state[ref.key]
        group_keys[group].append(ref.key)
    per_param: dict[str, list[Delta]] = defaultdict(list)
    for group, roles in groups.items():
        path, _, file_name = group
        for which, delta in build_deltas(roles, file_name).items():
            name = f"{path}.{which}"
            try:
                param = module.get_parameter(name)
            except AttributeError as exc:
                kind = "bias" if which == BIAS else "weight"
                raise LoraFormatError(f"{group_keys[group][0]}: module {path!r} of the "
                                      f"{component} has no {kind}") from exc
            _check_shape(group_keys[group], component, name, delta, param)
            per_param[name].append(delta)
    return {name: combine(deltas) for name, deltas in per_param.items()}


def parse_lora(state: Mapping[str, torch.Tensor],
               components: Mapping[str, nn.Module | None]) -> Deltas:
    """component -> {parameter name (as ``module.get_parameter`` takes it) -> delta}.

    ``components`` maps "unet", "text_encoder", "text_encoder_2" to the loaded module or
    None when the model has no such component; keys for absent components are skipped.
    Raises ``LoraFormatError`` listing keys in no known layout and keys matching no module.
    """
    refs, unknown = read_keys(state)
    if unknown:
        raise unmatched_error("keys in no LoRA layout we read", unknown)
    by_component: dict[str, list[KeyRef]] = defaultdict(list)
    for ref in refs:
        if components.get(ref.component) is not None:
            by_component[ref.component].append(ref)
    unmatched: list[str] = []
    out: Deltas = {}
    for component, module in components.items():
        if module is None or component not in by_component:
            continue
        found = _component_deltas(component, module, by_component[component], state,
                                  unmatched)
        if found:
            out[component] = found
    if unmatched:
        raise unmatched_error("LoRA keys that match no module of the model", unmatched)
    return out


def lora_nbytes(deltas: Deltas) -> int:
    """Bytes of the tensors all deltas hold (what keeping the parsed LoRA costs)."""
    seen: set[int] = set()
    total = 0
    for per_component in deltas.values():
        for delta in per_component.values():
            for t in delta.tensors():
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
    return total

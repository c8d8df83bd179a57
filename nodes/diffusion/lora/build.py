"""One layer's tensors from a LoRA file (by role) -> the deltas they define.

A layer's group holds the tensors of one module as the file names it: ``down``/``up``
(plus ``mid``, ``alpha``) for LoRA and LoCon, ``hada_*`` for LoHa, ``lokr_*`` for LoKr,
``diff``/``diff_b`` for stored differences. Groups that are incomplete (an up without its
down) or mix tensors no format defines are errors, never ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .deltas import Delta, DiffDelta, LohaDelta, LokrDelta, LoraDelta, SumDelta
from .errors import LoraFormatError

WEIGHT, BIAS = "weight", "bias"

_LORA = {"down", "up", "mid"}
_LOHA = {f"hada_{n}" for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")}
_LOKR = {f"lokr_{n}" for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")}


def _alpha(tensor: torch.Tensor | None, name: str) -> float | None:
    if tensor is None:
        return None
    if tensor.numel() != 1:
        raise LoraFormatError(f"{name}: alpha must be a single number, got shape "
                              f"{tuple(tensor.shape)}")
    return float(tensor.reshape(-1)[0])


def _need(roles: Mapping[str, torch.Tensor], wanted: tuple[str, ...], kind: str,
          name: str) -> None:
    missing = [r for r in wanted if r not in roles]
    if missing:
        raise LoraFormatError(f"{name}: incomplete {kind} layer, missing "
                              f"{', '.join(missing)} (has {', '.join(sorted(roles))})")


def _lora(roles: Mapping[str, torch.Tensor], alpha: float | None, name: str) -> LoraDelta:
    _need(roles, ("down", "up"), "LoRA", name)
    return LoraDelta(up=roles["up"], down=roles["down"], alpha=alpha, mid=roles.get("mid"))


def _loha(roles: Mapping[str, torch.Tensor], alpha: float | None, name: str) -> LohaDelta:
    _need(roles, ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), "LoHa", name)
    try:
        return LohaDelta(roles["hada_w1_a"], roles["hada_w1_b"], roles["hada_w2_a"],
                         roles["hada_w2_b"], alpha, roles.get("hada_t1"), roles.get("hada_t2"))
    except ValueError as exc:
        raise LoraFormatError(f"{name}: {exc}") from exc


def _lokr(roles: Mapping[str, torch.Tensor], alpha: float | None, name: str) -> LokrDelta:
    try:
        return LokrDelta(
            w1=roles.get("lokr_w1"), w1_a=roles.get("lokr_w1_a"), w1_b=roles.get("lokr_w1_b"),
            w2=roles.get("lokr_w2"), w2_a=roles.get("lokr_w2_a"), w2_b=roles.get("lokr_w2_b"),
            t2=roles.get("lokr_t2"), alpha=alpha)
    except ValueError as exc:
        raise LoraFormatError(f"{name}: {exc} (has {', '.join(sorted(roles))})") from exc


def build_deltas(roles: Mapping[str, torch.Tensor], name: str) -> dict[str, Delta]:
    """The deltas one file module defines, keyed by the parameter they patch
    (``"weight"``, ``"bias"``). ``name`` (the file's module name) labels errors."""
    alpha = _alpha(roles.get("alpha"), name)
    weight: list[Delta] = []
    used = {"alpha"}
    for kinds, make in ((_LORA, _lora), (_LOHA, _loha), (_LOKR, _lokr)):
        part = {r: t for r, t in roles.items() if r in kinds}
        if part:
            weight.append(make(part, alpha, name))
            used |= part.keys()
    if "diff" in roles:
        weight.append(DiffDelta(roles["diff"]))
        used.add("diff")
    out: dict[str, Delta] = {}
    if weight:
        out[WEIGHT] = combine(weight)
    if "diff_b" in roles:
        out[BIAS] = DiffDelta(roles["diff_b"])
        used.add("diff_b")
    if not out or set(roles) - used:
        raise LoraFormatError(f"{name}: no delta can be built from "
                              f"{', '.join(sorted(roles))}")
    return out


def combine(deltas: list[Delta]) -> Delta:
    """One delta for one parameter: the sum when several file entries patch it."""
    flat: list[Delta] = []
    for d in deltas:
        flat.extend(d.parts if isinstance(d, SumDelta) else (d,))
    return flat[0] if len(flat) == 1 else SumDelta(tuple(flat))

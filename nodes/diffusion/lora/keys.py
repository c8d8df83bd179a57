"""Splitting a LoRA file's keys into (component, module name as the file spells it, role).

Two families of layouts exist:

- kohya / A1111 / LyCORIS: ``lora_unet_<path with _>.<suffix>``, ``lora_te_`` (the SD 1.x /
  2.x text encoder), ``lora_te1_`` / ``lora_te2_`` (SDXL's two). The path is either
  diffusers' (SD 1.x by kohya) or the original LDM layout (SDXL by kohya).
- diffusers / PEFT: ``unet.<dotted path>.lora_A.weight`` / ``lora_B.weight``, the older
  ``lora.down`` / ``lora.up`` and ``lora_linear_layer`` spellings and the attention
  processor style (``attn1.processor.to_q_lora.down.weight``); ``text_encoder.`` and
  ``text_encoder_2.`` prefixes; and files whose keys are bare UNet paths.

Resolving the module name against the model is left to ``resolve``; this module only reads
key grammar.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

UNET, TEXT_ENCODER, TEXT_ENCODER_2 = "unet", "text_encoder", "text_encoder_2"
COMPONENTS = (UNET, TEXT_ENCODER, TEXT_ENCODER_2)

KOHYA, PEFT = "kohya", "peft"

_KOHYA_PREFIXES = (("lora_unet_", UNET), ("lora_te1_", TEXT_ENCODER),
                   ("lora_te2_", TEXT_ENCODER_2), ("lora_te_", TEXT_ENCODER))
_PEFT_PREFIXES = (("unet.", UNET), ("text_encoder.", TEXT_ENCODER),
                  ("text_encoder_2.", TEXT_ENCODER_2))

# kohya / LyCORIS tensor suffixes -> role. "diff_b" patches the bias, the rest the weight.
_KOHYA_ROLES = {
    "lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid",
    "alpha": "alpha", "diff": "diff", "diff_b": "diff_b",
    **{f"hada_{n}": f"hada_{n}" for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
    **{f"lokr_{n}": f"lokr_{n}" for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")},
}

# diffusers / PEFT suffixes -> role, longest first so "lora.down.weight" wins over
# "down.weight" (the processor style, valid only after a "*_lora" module name).
_PEFT_ROLES = (
    ("lora_linear_layer.down.weight", "down"), ("lora_linear_layer.up.weight", "up"),
    ("lora.down.weight", "down"), ("lora.up.weight", "up"),
    ("lora_A.weight", "down"), ("lora_B.weight", "up"),
    ("down.weight", "down"), ("up.weight", "up"), ("alpha", "alpha"),
)

# Attention-processor LoRA names (diffusers' first LoRA format) -> the projection they patch.
_PROCESSOR_UNET = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v",
                   "to_out_lora": "to_out.0"}
_PROCESSOR_TEXT = {"to_q_lora": "q_proj", "to_k_lora": "k_proj", "to_v_lora": "v_proj",
                   "to_out_lora": "out_proj"}

# First path segments of a UNet2DConditionModel, to recognise files of bare UNet paths.
UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in.", "conv_out.",
              "conv_norm_out.", "time_embedding.", "add_embedding.")


@dataclass(frozen=True)
class KeyRef:
    """One file key read: which component, the module as the file names it, the role of
    the tensor (``down``, ``up``, ``alpha``, ``hada_w1_a``, ``diff_b``, ...)."""

    key: str
    component: str
    style: str
    module: str
    role: str


def _kohya(key: str) -> KeyRef | None:
    for prefix, component in _KOHYA_PREFIXES:
        if key.startswith(prefix):
            name, _, suffix = key[len(prefix):].partition(".")
            role = _KOHYA_ROLES.get(suffix)
            if role is None or not name:
                return None
            return KeyRef(key, component, KOHYA, name, role)
    return None


def _processor_module(module: str, component: str) -> str | None:
    """``...attn1.processor.to_q_lora`` -> ``...attn1.to_q`` (text: ``self_attn.q_proj``)."""
    head, _, last = module.rpartition(".")
    table = _PROCESSOR_UNET if component == UNET else _PROCESSOR_TEXT
    if last not in table:
        return None
    head = head.removesuffix(".processor")
    return f"{head}.{table[last]}" if head else table[last]


def _peft_path(key: str, component: str, path: str) -> KeyRef | None:
    for suffix, role in _PEFT_ROLES:
        if not path.endswith("." + suffix):
            continue
        module = path[: -len(suffix) - 1]
        if suffix in ("down.weight", "up.weight") or module.endswith("_lora"):
            converted = _processor_module(module, component)
            if converted is None:
                return None
            module = converted
        return KeyRef(key, component, PEFT, module, role)
    return None


def _peft(key: str) -> KeyRef | None:
    for prefix, component in _PEFT_PREFIXES:
        if key.startswith(prefix):
            return _peft_path(key, component, key[len(prefix):])
    return None


def has_component_prefix(key: str) -> bool:
    """Whether a key names its component (kohya or diffusers prefix)."""
    prefixes = [p for p, _ in _KOHYA_PREFIXES] + [p for p, _ in _PEFT_PREFIXES]
    return key.startswith(tuple(prefixes))


def read_keys(keys: Iterable[str]) -> tuple[list[KeyRef], list[str]]:
    """Every key read as a ``KeyRef``, and the keys in no known layout.

    Keys without a component prefix are read as bare UNet paths only when no key of the
    file has a prefix and they start like a UNet path (diffusers' UNet-only files).
    """
    keys = list(keys)
    bare = not any(has_component_prefix(k) for k in keys)
    refs: list[KeyRef] = []
    unknown: list[str] = []
    for key in keys:
        ref = _kohya(key) or _peft(key)
        if ref is None and bare and key.startswith(UNET_ROOTS):
            ref = _peft_path(key, UNET, key)
        if ref is None:
            unknown.append(key)
        else:
            refs.append(ref)
    return refs, unknown

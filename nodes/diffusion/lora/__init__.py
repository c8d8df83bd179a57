"""LoRA-family files (LoRA, LoCon, LoHa, LoKr, full diffs) read into per-parameter weight
deltas for our UNet and text encoders. Applying them is ``patching``'s job."""

from .deltas import Delta, DiffDelta, LohaDelta, LokrDelta, LoraDelta, SumDelta
from .errors import LoraFormatError
from .file import lora_nbytes, parse_lora, read_lora

__all__ = [
    "Delta", "DiffDelta", "LohaDelta", "LokrDelta", "LoraDelta", "LoraFormatError",
    "SumDelta", "lora_nbytes", "parse_lora", "read_lora",
]

"""Text to conditioning the way ComfyUI's CLIPTextEncode does it for CLIP-L (SD 1.x).

Why not our own Tokenize/EncodeText: ComfyUI never truncates a prompt. It tokenizes word by
word, fills 77-token windows (start token, up to 75 tokens, end token, padded with the end
token), starts a new window when a word would not fit (a word of 8 tokens or more is split
across windows instead), encodes every window and concatenates them along the sequence, so a
long prompt gives `[1, 77 * n, D]`. Weighted tokens are pulled away from the empty prompt's
encoding: `empty + (z - empty) * weight`. Clip skip reads an earlier layer's hidden state
and passes it through the final layer norm, as ComfyUI does for SD 1.x.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nodes.comfyui.prompt_syntax import prompt_words
from nodes.comfyui.types import Clip

WINDOW = 77
# Words of this many tokens or more may be split across windows.
LONG_WORD = 8


@dataclass(frozen=True)
class Window:
    """One 77-token window: ids and a weight per token."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]


def _special_ids(tokenizer: object) -> tuple[int, int]:
    start = getattr(tokenizer, "bos_token_id", None)
    end = getattr(tokenizer, "eos_token_id", None)
    if start is None or end is None:
        raise ValueError("the CLIP tokenizer has no start or end token")
    return int(start), int(end)


def tokenize(tokenizer: object, text: str) -> list[Window]:
    """The prompt in 77-token windows (see the module docstring)."""
    start, end = _special_ids(tokenizer)
    words: list[list[tuple[int, float]]] = []
    for word, weight in prompt_words(text):
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))  # type: ignore[attr-defined]
        words.append([(int(t), weight) for t in ids])
    windows: list[list[tuple[int, float]]] = [[(start, 1.0)]]
    current = windows[0]
    room = WINDOW - 1  # the end token always takes the last place
    for group in words:
        long_word = len(group) >= LONG_WORD
        while group:
            if len(current) + len(group) <= room:
                current.extend(group)
                break
            free = room - len(current)
            if long_word:
                current.extend(group[:free])
                group = group[free:]
                current.append((end, 1.0))
            else:
                current.append((end, 1.0))
                current.extend([(end, 1.0)] * free)
            current = [(start, 1.0)]
            windows.append(current)
    current.append((end, 1.0))
    current.extend([(end, 1.0)] * (WINDOW - len(current)))
    return [Window(tuple(t for t, _ in w), tuple(x for _, x in w)) for w in windows]


def _hidden(clip: Clip, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token states of the chosen layer (final layer norm applied) and the pooled
    output (the last layer's state at the first end token), both float32."""
    model = clip.text_encoder
    device = next(model.parameters()).device
    layer = clip.layer
    if layer is not None and abs(layer) > int(model.config.num_hidden_layers):
        layer = None  # more layers skipped than the model has: ComfyUI uses the last
    with torch.no_grad():
        out = model(ids.to(device), output_hidden_states=layer is not None)
        if layer is None:
            states = out.last_hidden_state
        else:
            inner = getattr(model, "text_model", model)
            states = inner.final_layer_norm(out.hidden_states[layer])
    return states.float(), out.pooler_output.float()


def encode(clip: Clip, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`(embeds [1, 77 * windows, D], pooled [1, D])` for a prompt."""
    windows = tokenize(clip.tokenizer, text)
    weighted = any(w != 1.0 for win in windows for w in win.weights)
    rows = [list(win.ids) for win in windows]
    if weighted:
        start, end = _special_ids(clip.tokenizer)
        rows.append([start] + [end] * (WINDOW - 1))
    states, pooled = _hidden(clip, torch.tensor(rows, dtype=torch.long))
    parts = []
    for k, win in enumerate(windows):
        z = states[k]
        if weighted:
            weights = torch.tensor(win.weights, dtype=z.dtype, device=z.device)[:, None]
            empty = states[-1]
            z = torch.where(weights != 1.0, (z - empty) * weights + empty, z)
        parts.append(z)
    return torch.cat(parts)[None], pooled[:1]

"""Prompt weighting: how a prompt's text says which words matter more, for each `weighting`
mode of the text nodes, and A1111's maths for applying the weights.

- `none`: the text as written (brackets are literal), diffusers' plain prompt.
- `comfy`: ComfyUI's syntax, read by the ComfyUI pack's parser (`(word:1.2)` sets a weight,
  `(word)` is x1.1, groups nest, `\\(` escapes); the pack also encodes such prompts.
- `a1111`: AUTOMATIC1111's syntax, parsed here: `(x)` multiplies by 1.1 and `[x]` divides
  by 1.1, `(x:w)` multiplies by w, so nested groups multiply; `\\( \\) \\[ \\]` and `\\\\`
  are literal and a lone `\\` is dropped; a `)` or `]` with nothing to close is literal
  text, and a group left open at the end still applies its factor; `BREAK` (a word in
  capitals) closes the current 75-token chunk. Runs of equal weight are merged before
  tokenizing, as A1111 tokenizes them. One difference on purpose: `BREAK` inside brackets
  still breaks (A1111 then tokenizes the word "BREAK" instead).

Weighted encodings in `a1111` mode are A1111's "original" emphasis: each token's hidden
state is multiplied by its weight, then the window is rescaled so its mean is the
unweighted mean again (per prompt and per 77-token window, not over the whole batch as
A1111 does, so a prompt encodes the same whatever else is in the batch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodes.comfyui.prompt_syntax import weighted_segments
from nodes.lazy import lazy_module

torch = lazy_module("torch")

WEIGHTINGS = ("none", "comfy", "a1111")
EMPHASIS = 1.1
BREAK_WORD = "BREAK"


@dataclass(frozen=True)
class Segment:
    """A run of prompt text with one weight; `brk` marks a chunk break (no text)."""

    text: str
    weight: float = 1.0
    brk: bool = False


BREAK = Segment("", 1.0, brk=True)

# Escapes, brackets, `:w)` closing a weighted group, and plain runs, in the order tried.
_A1111_TOKEN = re.compile(r"""
    \\[()\[\]\\]                        # an escaped bracket or backslash
  | :\s*(?P<weight>[+-]?[.\d]+)\s*\)    # ":1.2)" closes a weighted group
  | [()\[\]]                            # a bracket
  | [^\\()\[\]:]+                       # plain text
  | [\\:]                               # a lone backslash or colon
""", re.VERBOSE)
_BREAK_SPLIT = re.compile(rf"\s*\b{BREAK_WORD}\b\s*")


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


class _A1111Parser:
    """Reads the prompt token by token, keeping the open groups' start positions; closing
    a group multiplies every weight from its start."""

    def __init__(self) -> None:
        self.parts: list[list[object]] = []  # [text, weight, is_break]
        self.round: list[int] = []
        self.square: list[int] = []

    def scale(self, start: int, factor: float) -> None:
        for part in self.parts[start:]:
            part[1] = float(part[1]) * factor  # type: ignore[arg-type]

    def text(self, text: str) -> None:
        for i, piece in enumerate(_BREAK_SPLIT.split(text)):
            if i > 0:
                self.parts.append(["", 1.0, True])
            if piece:
                self.parts.append([piece, 1.0, False])

    def token(self, match: re.Match[str]) -> None:
        tok = match.group(0)
        weight = _number(match.group("weight"))
        if tok.startswith("\\") and len(tok) == 2:
            self.parts.append([tok[1], 1.0, False])
        elif tok == "(":
            self.round.append(len(self.parts))
        elif tok == "[":
            self.square.append(len(self.parts))
        elif match.group("weight") is not None and weight is not None and self.round:
            self.scale(self.round.pop(), weight)
        elif match.group("weight") is not None:
            # Not a weight after all (no open group, or no number): the colon is text and
            # the rest is read again.
            self.parts.append([":", 1.0, False])
            self.feed(tok[1:])
        elif tok == ")" and self.round:
            self.scale(self.round.pop(), EMPHASIS)
        elif tok == "]" and self.square:
            self.scale(self.square.pop(), 1 / EMPHASIS)
        elif tok == "\\":
            pass  # a lone backslash escapes nothing and is dropped, as A1111 does
        elif tok in ")]:":
            self.parts.append([tok, 1.0, False])
        else:
            self.text(tok)

    def feed(self, text: str) -> None:
        for match in _A1111_TOKEN.finditer(text):
            self.token(match)

    def finish(self) -> list[Segment]:
        for start in self.round:
            self.scale(start, EMPHASIS)
        for start in self.square:
            self.scale(start, 1 / EMPHASIS)
        merged: list[Segment] = []
        for text, weight, brk in self.parts:
            seg = Segment(str(text), float(weight), bool(brk))  # type: ignore[arg-type]
            if seg.brk:
                merged.append(BREAK)
            elif merged and not merged[-1].brk and merged[-1].weight == seg.weight:
                merged[-1] = Segment(merged[-1].text + seg.text, seg.weight)
            else:
                merged.append(seg)
        return merged


def parse_a1111(text: str) -> list[Segment]:
    """The prompt as A1111 reads it: weighted runs of text and chunk breaks, in order."""
    parser = _A1111Parser()
    parser.feed(text)
    return parser.finish()


def parse_prompt(text: str, weighting: str) -> list[Segment]:
    """Weighted runs of the prompt in any weighting mode (`none`: the whole text at 1)."""
    if weighting == "a1111":
        return parse_a1111(text)
    if weighting == "comfy":
        return [Segment(t, w) for t, w in weighted_segments(text)]
    if weighting == "none":
        return [Segment(text)] if text else []
    raise ValueError(f"unknown weighting {weighting!r}; one of {', '.join(WEIGHTINGS)}")


def apply_a1111_weights(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's emphasis on encoded windows `[B, T, D]` with weights `[B, T]`: scale each
    token, then restore each window's mean (a window whose weighted mean is 0 is left
    scaled only)."""
    weights = weights.to(device=states.device, dtype=torch.float32)
    z = states.float()
    scaled = z * weights[..., None]
    before, after = z.mean(dim=(1, 2)), scaled.mean(dim=(1, 2))
    ratio = torch.where(after != 0, before / torch.where(after != 0, after, 1.0), 1.0)
    return (scaled * ratio[:, None, None]).to(states.dtype)

"""Build the shipped CLIP BPE vocabulary (`vocab.json` + `merges.txt`).

Single-file checkpoints carry no tokenizer, so we ship OpenAI CLIP's byte-level BPE table
(MIT-licensed `bpe_simple_vocab_16e6.txt.gz`, as redistributed inside the open_clip_torch
wheel) in the layout `transformers.CLIPTokenizer` reads. The id order reproduces CLIP's own:
256 byte symbols, the same with `</w>`, the 48,894 merges, then the two special tokens —
49,408 entries in all.

Usage: python tools/make_clip_vocab.py path/to/bpe_simple_vocab_16e6.txt.gz OUT_DIR
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

N_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-unicode table (avoids whitespace/control chars)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build(bpe_gz: Path, out_dir: Path) -> int:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : N_MERGES + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = {tok: i for i, tok in enumerate(vocab)}
    (out_dir / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    merge_text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (out_dir / "merges.txt").write_text(merge_text, encoding="utf-8")
    return len(encoder)


if __name__ == "__main__":
    print(build(Path(sys.argv[1]), Path(sys.argv[2])), "tokens")

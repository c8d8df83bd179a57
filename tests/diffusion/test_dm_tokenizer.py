"""Tokenizer folders (vocab+merges, tokenizer.json, shipped) against reference CLIP BPE.

The reference is a plain-Python re-implementation of OpenAI CLIP's ``SimpleTokenizer``
algorithm over the same vocabulary, independent of transformers' Rust tokenizer.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from functools import lru_cache
from pathlib import Path

import pytest
import regex
import torch
from transformers import CLIPTextModel

from nodes.diffusion.clip import SHIPPED_TOKENIZER, load_text_encoder, load_tokenizer

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "Hello, World!!! (masterpiece:1.2), [best quality]; don't stop -- ok?",
    "Café naïve résumé — Zürich über straße, 東京タワー, Москва",
    "cute cat 🐱🐶 with emoji ✨🚀 and 👩‍🚀",
    "  lots   of\twhitespace\n and UPPER case  ",
    "",
    " ".join(["long prompt words"] * 40),  # > 77 tokens: truncation
]

_PAT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
    r"""[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


class ReferenceCLIP:
    def __init__(self, folder: Path) -> None:
        self.encoder = json.loads((folder / "vocab.json").read_text())
        lines = (folder / "merges.txt").read_text().split("\n")
        merges = [tuple(m.split()) for m in lines if m and not m.startswith("#version")]
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = _bytes_to_unicode()
        self.bpe = lru_cache(maxsize=None)(self._bpe)

    def _bpe(self, token: str) -> str:
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:], strict=False)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return " ".join(word)

    def __call__(self, text: str, max_length: int = 77) -> list[int]:
        text = unicodedata.normalize("NFC", text)
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in _PAT.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids += [self.encoder[t] for t in self.bpe(mapped).split(" ")]
        bos, eos = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        ids = [bos] + ids[: max_length - 2] + [eos]
        return ids + [eos] * (max_length - len(ids))


@pytest.fixture(scope="module")
def json_only_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped vocabulary re-expressed as a single tokenizer.json."""
    folder = tmp_path_factory.mktemp("tok-json")
    load_tokenizer().backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return folder


def test_shipped_vocabulary_size() -> None:
    tok = load_tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok.bos_token_id == 49406 and tok.eos_token_id == 49407


@pytest.fixture(scope="module")
def tokenizers(json_only_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> list:
    """Shipped fallback, a copied vocab.json+merges.txt folder, a tokenizer.json folder."""
    bpe_folder = tmp_path_factory.mktemp("tok") / "bpe"
    shutil.copytree(SHIPPED_TOKENIZER, bpe_folder)
    return [load_tokenizer(), load_tokenizer(bpe_folder), load_tokenizer(json_only_folder)]


@pytest.fixture(scope="module")
def reference() -> ReferenceCLIP:
    return ReferenceCLIP(SHIPPED_TOKENIZER)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_equal_reference(prompt: str, tokenizers: list, reference: ReferenceCLIP) -> None:
    expected = reference(prompt)
    for tok in tokenizers:
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length,
                  truncation=True).input_ids
        assert len(ids) == 77
        assert ids == expected


def test_missing_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_tokenizer(tmp_path)


def test_text_encoder_with_and_without_prefix(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from tests.support.model_configs import tiny_text_config

    torch.manual_seed(0)
    ref = CLIPTextModel(tiny_text_config()).eval()
    ref.save_pretrained(str(tmp_path / "plain"))
    state = load_file(str(tmp_path / "plain" / "model.safetensors"))
    prefixed = tmp_path / "prefixed"
    prefixed.mkdir()
    shutil.copy(tmp_path / "plain" / "config.json", prefixed / "config.json")
    save_file({("text_model." + k.removeprefix("text_model.")): v for k, v in state.items()},
              str(prefixed / "model.safetensors"))
    ids = torch.randint(0, 1000, (2, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids).last_hidden_state
        for folder in (tmp_path / "plain", prefixed):
            got = load_text_encoder(folder)(ids).last_hidden_state
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)

"""CLIP tokenizer and text encoder (transformers' classes) from folders or raw weights.

Accepted layouts: a tokenizer folder with ``vocab.json`` + ``merges.txt`` or only
``tokenizer.json``; text-encoder weights with or without the ``text_model.`` key prefix (both
exist in the wild). Checkpoints without a tokenizer use the CLIP BPE vocabulary shipped in
``tokenizers/clip``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .storage import StateDict, WeightsError, build_from_state, find_weights, read_weights

SHIPPED_TOKENIZER = Path(__file__).parent / "tokenizers" / "clip"

# Token ids of OpenAI CLIP's vocabulary (also in the shipped files).
BOS_ID, EOS_ID = 49406, 49407


def load_tokenizer(folder: str | Path | None = None) -> CLIPTokenizer:
    """A CLIP tokenizer from ``folder``, or the shipped vocabulary when ``folder`` is None.

    ``model_max_length`` defaults to 77 (CLIP's context) when the folder does not say.
    """
    path = Path(folder) if folder is not None else SHIPPED_TOKENIZER
    has_bpe = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    has_json = (path / "tokenizer.json").is_file()
    if not (has_bpe or has_json):
        raise FileNotFoundError(
            f"{path}: no tokenizer files (need vocab.json + merges.txt, or tokenizer.json)"
        )
    if has_bpe:
        tokenizer = CLIPTokenizer.from_pretrained(str(path))
    else:
        tokenizer = CLIPTokenizer(tokenizer_file=str(path / "tokenizer.json"))
        _apply_tokenizer_config(tokenizer, path)
    if not tokenizer.model_max_length or tokenizer.model_max_length > 10_000:
        tokenizer.model_max_length = 77
    return tokenizer


def _apply_tokenizer_config(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """Honour ``model_max_length`` and the padding token (OpenCLIP's tokenizer, SDXL's
    second, pads with "!") from a tokenizer_config.json next to a tokenizer.json."""
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if "model_max_length" in config:
            tokenizer.model_max_length = int(config["model_max_length"])
        if isinstance(config.get("pad_token"), str):
            tokenizer.pad_token = config["pad_token"]


def strip_prefix(state: Mapping[str, torch.Tensor], keep_projection: bool = False
                 ) -> StateDict:
    """Text-encoder weights keyed without the ``text_model.`` prefix.

    Drops ``position_ids`` (a constant rebuilt on load) and ``logit_scale``; drops the
    projection head too unless ``keep_projection`` (SDXL's second encoder uses it).
    """
    out: StateDict = {}
    for key, value in state.items():
        key = key.removeprefix("text_model.")
        if key.endswith("position_ids") or key.startswith("logit_scale"):
            continue
        if key.startswith("text_projection") and not keep_projection:
            continue
        out[key] = value
    return out


def infer_text_config(state: Mapping[str, torch.Tensor]) -> CLIPTextConfig:
    """CLIP-L-style text config read off tensor shapes (for checkpoints with no config)."""
    state = strip_prefix(state)
    emb = state["embeddings.token_embedding.weight"]
    pos = state["embeddings.position_embedding.weight"]
    fc1 = state["encoder.layers.0.mlp.fc1.weight"]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    hidden = emb.shape[1]
    return CLIPTextConfig(
        vocab_size=emb.shape[0], hidden_size=hidden, intermediate_size=fc1.shape[0],
        num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=pos.shape[0], hidden_act="quick_gelu",
        projection_dim=hidden, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
    )


def _embeddings(model: CLIPTextModel) -> torch.nn.Module:
    """transformers < 5 nests the encoder under ``text_model``; 5.x does not."""
    inner = getattr(model, "text_model", model)
    return inner.embeddings


TextModel = CLIPTextModel | CLIPTextModelWithProjection


def text_encoder_from_state(
    state: Mapping[str, torch.Tensor],
    config: CLIPTextConfig | None,
    dtype: torch.dtype | None,
    device: torch.device | str,
    with_projection: bool = False,
) -> TextModel:
    """Build a CLIPTextModel (or, ``with_projection``, SDXL's second encoder
    CLIPTextModelWithProjection) without random init and fill it with ``state``.

    Keys are accepted with or without ``text_model.`` and renamed to what the installed
    transformers version expects.
    """
    plain = strip_prefix(state, keep_projection=with_projection)
    config = config or infer_text_config(plain)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device("meta"):
        probe = cls(config)
    prefix = "text_model." if hasattr(probe, "text_model") else ""
    del probe
    prefixed = {k if k.startswith("text_projection") else f"{prefix}{k}": v
                for k, v in plain.items()}

    def factory() -> TextModel:
        model = cls(config)
        # A constant, not a weight: removed here and rebuilt on the target device below.
        _embeddings(model).register_buffer("position_ids", None, persistent=False)
        return model

    model = build_from_state(factory, prefixed, dtype, device, "text encoder")
    n = model.config.max_position_embeddings
    position_ids = torch.arange(n, device=device).expand((1, -1))
    _embeddings(model).register_buffer("position_ids", position_ids, persistent=False)
    return model


def load_text_encoder(
    folder: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> TextModel:
    """A CLIPTextModel, or a CLIPTextModelWithProjection when the folder's config says so
    (SDXL's ``text_encoder_2``), from a transformers-style folder (config.json + weights)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    config, with_projection = None, False
    if config_path.is_file():
        config = CLIPTextConfig.from_json_file(str(config_path))
        architectures = json.loads(config_path.read_text()).get("architectures") or []
        with_projection = "CLIPTextModelWithProjection" in architectures
    weights = find_weights(folder, ("model", "pytorch_model"))
    try:
        return text_encoder_from_state(read_weights(weights), config, dtype, device,
                                       with_projection)
    except WeightsError as exc:
        raise WeightsError(f"{folder}: {exc}") from exc

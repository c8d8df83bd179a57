"""Applying LoRA patches: both merge strategies equal a model whose weights were merged by
hand, the base module is left exactly as it was (same parameter objects, same bits), even
when the run fails, and merging layer by layer never holds many merged copies at once."""

from __future__ import annotations

import copy

import pytest
import torch

from nodes.diffusion.checkpoints import load_components
from nodes.diffusion.lora.file import parse_lora
from nodes.diffusion.lora.patching import Patch, PatchedModule, patched, with_patch
from tests.support.lora_files import kohya_state
from tests.support.tiny_models import TinyModel


@pytest.fixture(scope="module")
def parts(tiny_sd: TinyModel) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    comp = load_components(tiny_sd.folder)
    state = kohya_state(comp, rank=4, alpha=2.0, seed=5)
    deltas = parse_lora(state, {"unet": comp.unet, "text_encoder": comp.text_encoder})
    return comp.unet, comp.text_encoder, deltas


def _by_hand(base: torch.nn.Module, patches: list[Patch]) -> torch.nn.Module:
    """A deep copy with base + strength * delta written into its weights."""
    merged = copy.deepcopy(base)
    with torch.no_grad():
        for patch in patches:
            for name, delta in patch.deltas.items():
                weight = merged.get_parameter(name)
                weight += patch.strength * delta.weight(weight.shape, weight.dtype,
                                                        weight.device)
    return merged


def _unet_inputs() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([10, 500]),
            torch.randn(2, 77, 32, generator=gen))


def _params(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return dict(module.named_parameters())


@pytest.mark.parametrize("strategy", ["at_once", "per_layer"])
def test_patched_unet_equals_merging_by_hand(parts, strategy: str) -> None:
    unet, _, deltas = parts
    patches = [Patch(deltas["unet"], 0.7), Patch(deltas["unet"], -0.2)]
    before = {k: (p, p.detach().clone()) for k, p in _params(unet).items()}
    x, t, ctx = _unet_inputs()
    with torch.no_grad():
        reference = _by_hand(unet, patches)(x, t, ctx)
        with patched(unet, patches, strategy):
            ours = unet(x, t, ctx)
        plain = unet(x, t, ctx)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3  # the patches did something
    after = _params(unet)
    assert after.keys() == before.keys()
    for name, (param, values) in before.items():
        assert after[name] is param and torch.equal(param, values)


def test_patched_text_encoder_equals_merging_by_hand(parts) -> None:
    _, text, deltas = parts
    patch = Patch(deltas["text_encoder"], 1.3)
    wrapped = with_patch(text, patch)
    assert isinstance(wrapped, PatchedModule) and wrapped.config is text.config
    ids = torch.tensor([[49406, 320, 1215, 49407] + [49407] * 73])
    with torch.no_grad():
        ours = wrapped(ids)[0]
        reference = _by_hand(text, [patch])(ids)[0]
        plain = text(ids)[0]
    assert torch.allclose(ours, reference, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3
    # Stacking flattens: one wrapper over the base with both patches, in order.
    second = Patch(deltas["text_encoder"], -0.5)
    stacked = with_patch(wrapped, second)
    assert isinstance(stacked, PatchedModule)
    assert stacked.base is text and stacked.patches == (patch, second)


def test_per_layer_merging_holds_few_copies_at_a_time(parts) -> None:
    unet, _, deltas = parts
    originals = {id(p) for p in unet.parameters()}
    patched_count = len(deltas["unet"])
    most = 0

    def count(*_: object) -> None:
        nonlocal most
        most = max(most, sum(1 for p in unet.parameters() if id(p) not in originals))

    handles = [m.register_forward_pre_hook(count) for m in unet.modules()]
    try:
        with torch.no_grad(), patched(unet, [Patch(deltas["unet"], 1.0)], "per_layer"):
            unet(*_unet_inputs())
    finally:
        for handle in handles:
            handle.remove()
    assert patched_count > 40
    assert 0 < most <= 8, f"{most} merged copies alive at once of {patched_count}"


def test_a_failing_run_restores_the_base(parts) -> None:
    unet, _, deltas = parts
    before = _params(unet)
    with pytest.raises(RuntimeError, match="boom"), patched(unet, [Patch(deltas["unet"], 1.0)],
                                                            "at_once"):
        raise RuntimeError("boom")
    assert _params(unet) == before
    x, t, _ = _unet_inputs()
    with pytest.raises(RuntimeError), patched(unet, [Patch(deltas["unet"], 1.0)],
                                              "per_layer"):
        unet(x, t, torch.zeros(2, 77, 5))  # wrong context width: fails inside a block
    assert _params(unet) == before
    assert not unet._forward_pre_hooks and all(
        not m._forward_pre_hooks and not m._forward_hooks for m in unet.modules())


def test_other_patches_on_a_running_model_are_refused(parts) -> None:
    unet, _, deltas = parts
    first, second = Patch(deltas["unet"], 1.0), Patch(deltas["unet"], 0.5)
    with patched(unet, [first]):
        with patched(unet, [first]):  # the same patches: re-entrant
            pass
        with pytest.raises(RuntimeError, match="other LoRA patches"), patched(unet, [second]):
            pass


def test_the_merge_strategy_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from nodes.diffusion.lora.patching import STRATEGY_ENV, merge_strategy

    monkeypatch.delenv(STRATEGY_ENV, raising=False)
    assert merge_strategy() == "at_once"
    monkeypatch.setenv(STRATEGY_ENV, "per_layer")
    assert merge_strategy() == "per_layer"
    monkeypatch.setenv(STRATEGY_ENV, "sometimes")
    with pytest.raises(ValueError, match=STRATEGY_ENV):
        merge_strategy()

"""The delta maths of LoRA, LoCon (incl. Tucker), LoHa (incl. Tucker), LoKr and stored
diffs, each checked against the published formula computed a different way here: as the
composed layers' output, element by element, or block by block for Kronecker products.
The last tests read LyCORIS key spellings out of a file for our UNet and text encoder."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPTextModel

from nodes.diffusion.lora import (
    DiffDelta,
    LohaDelta,
    LokrDelta,
    LoraDelta,
    SumDelta,
    parse_lora,
)
from nodes.diffusion.unet import UNet2DConditionModel
from tests.support.model_configs import SD1_UNET, tiny_text_config

CPU = torch.device("cpu")
F32 = torch.float32


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed)) * 0.3


def test_lora_linear_is_the_two_layers_in_sequence() -> None:
    """x W^T equals (alpha / r) * up(down(x)), the LoRA paper's forward pass."""
    out, inn, rank, alpha = 6, 5, 3, 1.5
    up, down = _rand(out, rank, seed=1), _rand(rank, inn, seed=2)
    x = _rand(4, inn, seed=3)
    w = LoraDelta(up, down, alpha).weight(torch.Size((out, inn)), F32, CPU)
    assert torch.allclose(x @ w.T, (alpha / rank) * ((x @ down.T) @ up.T), atol=1e-6)
    w_plain = LoraDelta(up, down, None).weight(torch.Size((out, inn)), F32, CPU)
    assert torch.allclose(x @ w_plain.T, (x @ down.T) @ up.T, atol=1e-6)


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1)])
def test_locon_conv_is_the_two_convs_in_sequence(stride: int, padding: int) -> None:
    out, inn, rank, alpha = 5, 4, 2, 4.0
    down, up = _rand(rank, inn, 3, 3, seed=4), _rand(out, rank, 1, 1, seed=5)
    x = _rand(2, inn, 7, 7, seed=6)
    w = LoraDelta(up, down, alpha).weight(torch.Size((out, inn, 3, 3)), F32, CPU)
    expected = (alpha / rank) * F.conv2d(F.conv2d(x, down, stride=stride, padding=padding), up)
    assert torch.allclose(F.conv2d(x, w, stride=stride, padding=padding), expected, atol=1e-5)


def test_locon_tucker_is_the_three_convs_in_sequence() -> None:
    """LyCORIS' Tucker LoCon: 1x1 down, kxk core, 1x1 up."""
    out, inn, rank, alpha = 6, 5, 3, 1.0
    down = _rand(rank, inn, 1, 1, seed=7)
    mid = _rand(rank, rank, 3, 3, seed=8)
    up = _rand(out, rank, 1, 1, seed=9)
    x = _rand(1, inn, 6, 6, seed=10)
    delta = LoraDelta(up, down, alpha, mid)
    assert delta.shape == torch.Size((out, inn, 3, 3))
    w = delta.weight(torch.Size((out, inn, 3, 3)), F32, CPU)
    expected = (alpha / rank) * F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    assert torch.allclose(F.conv2d(x, w, padding=1), expected, atol=1e-5)


def _elementwise_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b one element at a time."""
    out = torch.zeros(a.shape[0], b.shape[1])
    for i, j in itertools.product(range(a.shape[0]), range(b.shape[1])):
        out[i, j] = sum(float(a[i, k] * b[k, j]) for k in range(a.shape[1]))
    return out


def test_loha_linear_is_the_hadamard_product() -> None:
    out, inn, rank, alpha = 4, 3, 2, 3.0
    w1a, w1b = _rand(out, rank, seed=11), _rand(rank, inn, seed=12)
    w2a, w2b = _rand(out, rank, seed=13), _rand(rank, inn, seed=14)
    w = LohaDelta(w1a, w1b, w2a, w2b, alpha).weight(torch.Size((out, inn)), F32, CPU)
    expected = (alpha / rank) * _elementwise_product(w1a, w1b) * _elementwise_product(w2a, w2b)
    assert torch.allclose(w, expected, atol=1e-6)


def test_loha_conv_flattened_factors() -> None:
    """Conv LoHa stores w*_b as [r, in * kh * kw]; the delta is reshaped onto the kernel."""
    out, inn, rank = 4, 2, 2
    w1a, w1b = _rand(out, rank, seed=15), _rand(rank, inn * 9, seed=16)
    w2a, w2b = _rand(out, rank, seed=17), _rand(rank, inn * 9, seed=18)
    w = LohaDelta(w1a, w1b, w2a, w2b, None).weight(torch.Size((out, inn, 3, 3)), F32, CPU)
    expected = (_elementwise_product(w1a, w1b) * _elementwise_product(w2a, w2b))
    assert torch.allclose(w, expected.reshape(out, inn, 3, 3), atol=1e-6)


def _tucker_by_loops(core: torch.Tensor, mode_out: torch.Tensor, mode_in: torch.Tensor
                     ) -> torch.Tensor:
    """W[p, q, k, l] = sum_ij core[i, j, k, l] * mode_out[i, p] * mode_in[j, q]."""
    r1, r2, kh, kw = core.shape
    out = torch.zeros(mode_out.shape[1], mode_in.shape[1], kh, kw)
    for i, j in itertools.product(range(r1), range(r2)):
        out += (core[i, j][None, None] * mode_out[i][:, None, None, None]
                * mode_in[j][None, :, None, None])
    return out


def test_loha_tucker() -> None:
    out, inn, rank, alpha = 5, 3, 2, 1.0
    t1, t2 = _rand(rank, rank, 3, 3, seed=19), _rand(rank, rank, 3, 3, seed=20)
    w1a, w1b = _rand(rank, out, seed=21), _rand(rank, inn, seed=22)
    w2a, w2b = _rand(rank, out, seed=23), _rand(rank, inn, seed=24)
    delta = LohaDelta(w1a, w1b, w2a, w2b, alpha, t1, t2)
    assert delta.shape == torch.Size((out, inn, 3, 3))
    w = delta.weight(torch.Size((out, inn, 3, 3)), F32, CPU)
    expected = (alpha / rank) * _tucker_by_loops(t1, w1a, w1b) * _tucker_by_loops(t2, w2a, w2b)
    assert torch.allclose(w, expected, atol=1e-6)


def _kron_by_blocks(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Block (i, j) of the Kronecker product is w1[i, j] * w2 (w2 may carry a kernel)."""
    a, c = w1.shape
    b, d = w2.shape[:2]
    out = torch.zeros(a * b, c * d, *w2.shape[2:])
    for i, j in itertools.product(range(a), range(c)):
        out[i * b:(i + 1) * b, j * d:(j + 1) * d] = w1[i, j] * w2
    return out


def test_lokr_whole_factors_ignore_alpha() -> None:
    """Two whole factors are the delta as trained: LyCORIS scales by 1, alpha or not."""
    w1, w2 = _rand(2, 3, seed=25), _rand(4, 5, seed=26)
    w = LokrDelta(w1=w1, w2=w2, alpha=7.0).weight(torch.Size((8, 15)), F32, CPU)
    assert torch.allclose(w, _kron_by_blocks(w1, w2), atol=1e-6)


def test_lokr_decomposed_w2_scales_by_its_rank() -> None:
    w1 = _rand(2, 3, seed=27)
    w2a, w2b = _rand(4, 2, seed=28), _rand(2, 5, seed=29)
    w = LokrDelta(w1=w1, w2_a=w2a, w2_b=w2b, alpha=1.0).weight(torch.Size((8, 15)), F32, CPU)
    assert torch.allclose(w, 0.5 * _kron_by_blocks(w1, _elementwise_product(w2a, w2b)),
                          atol=1e-6)


def test_lokr_decomposed_w1_scales_by_its_rank() -> None:
    w1a, w1b = _rand(2, 3, seed=30), _rand(3, 3, seed=31)
    w2 = _rand(4, 5, seed=32)
    w = LokrDelta(w1_a=w1a, w1_b=w1b, w2=w2, alpha=2.0).weight(torch.Size((8, 15)), F32, CPU)
    assert torch.allclose(w, (2.0 / 3) * _kron_by_blocks(_elementwise_product(w1a, w1b), w2),
                          atol=1e-6)


def test_lokr_conv_whole_kernel_factor() -> None:
    w1, w2 = _rand(2, 2, seed=33), _rand(3, 4, 3, 3, seed=34)
    w = LokrDelta(w1=w1, w2=w2).weight(torch.Size((6, 8, 3, 3)), F32, CPU)
    assert torch.allclose(w, _kron_by_blocks(w1, w2), atol=1e-6)


def test_lokr_conv_flattened_decomposed_w2() -> None:
    """A low-rank conv w2 is stored [b, r] @ [r, d * kh * kw]: the same kernel as the
    4-D factor reshaped."""
    w1 = _rand(2, 2, seed=35)
    w2a, w2b = _rand(3, 2, seed=36), _rand(2, 4 * 9, seed=37)
    w = LokrDelta(w1=w1, w2_a=w2a, w2_b=w2b, alpha=2.0).weight(torch.Size((6, 8, 3, 3)),
                                                              F32, CPU)
    w2 = _elementwise_product(w2a, w2b).reshape(3, 4, 3, 3)
    assert torch.allclose(w, _kron_by_blocks(w1, w2), atol=1e-6)


def test_lokr_tucker_w2() -> None:
    rank = 2
    w1 = _rand(2, 2, seed=38)
    t2 = _rand(rank, rank, 3, 3, seed=39)
    w2a, w2b = _rand(rank, 3, seed=40), _rand(rank, 4, seed=41)
    delta = LokrDelta(w1=w1, w2_a=w2a, w2_b=w2b, t2=t2, alpha=1.0)
    assert delta.shape == torch.Size((6, 8, 3, 3))
    w = delta.weight(torch.Size((6, 8, 3, 3)), F32, CPU)
    expected = 0.5 * _kron_by_blocks(w1, _tucker_by_loops(t2, w2a, w2b))
    assert torch.allclose(w, expected, atol=1e-6)


def test_lokr_rejects_missing_factor() -> None:
    with pytest.raises(ValueError, match="lokr_w2"):
        LokrDelta(w1=torch.ones(2, 2), w2_a=torch.ones(2, 1))


def test_dtype_device_shape_and_bytes() -> None:
    """Computed in float32 from half-precision file tensors, reshaped, cast last."""
    up, down = _rand(4, 2, seed=42).half(), _rand(2, 3, seed=43).half()
    delta = LoraDelta(up, down, 1.0)
    w16 = delta.weight(torch.Size((4, 3, 1, 1)), torch.bfloat16, CPU)
    assert w16.dtype == torch.bfloat16 and w16.shape == (4, 3, 1, 1)
    exact = 0.5 * (up.float() @ down.float())
    assert torch.equal(w16, exact.reshape(4, 3, 1, 1).to(torch.bfloat16))
    assert delta.nbytes() == 2 * (8 + 6) and len(list(delta.tensors())) == 2
    with pytest.raises(ValueError, match="cannot be reshaped"):
        delta.weight(torch.Size((4, 4)), F32, CPU)
    diff = DiffDelta(_rand(4, 3, seed=44))
    both = SumDelta((delta, diff))
    total = both.weight(torch.Size((4, 3)), F32, CPU)
    assert torch.allclose(total, exact + diff.diff, atol=1e-6)
    assert both.nbytes() == delta.nbytes() + 4 * 12


# ------------------------------------------------------------- LyCORIS keys in a file


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(SD1_UNET)


@pytest.fixture(scope="module")
def text_encoder() -> CLIPTextModel:
    torch.manual_seed(0)
    return CLIPTextModel(tiny_text_config())


CONV = "down_blocks.0.resnets.0.conv1"      # [32, 32, 3, 3]
LINEAR = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # [32, 32]


def _key(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def _parsed(unet: torch.nn.Module, state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    deltas = parse_lora(state, {"unet": unet})["unet"]
    param = unet.get_parameter(name)
    return deltas[name].weight(param.shape, F32, CPU)


def test_file_loha_conv_and_linear(unet: UNet2DConditionModel) -> None:
    k = _key(CONV)
    r = 2
    conv = {f"{k}.hada_w1_a": _rand(32, r, seed=50), f"{k}.hada_w1_b": _rand(r, 288, seed=51),
            f"{k}.hada_w2_a": _rand(32, r, seed=52), f"{k}.hada_w2_b": _rand(r, 288, seed=53),
            f"{k}.alpha": torch.tensor(1.0)}
    got = _parsed(unet, conv, f"{CONV}.weight")
    product = (_elementwise_product(conv[f"{k}.hada_w1_a"], conv[f"{k}.hada_w1_b"])
               * _elementwise_product(conv[f"{k}.hada_w2_a"], conv[f"{k}.hada_w2_b"]))
    assert torch.allclose(got, 0.5 * product.reshape(32, 32, 3, 3), atol=1e-5)
    k = _key(LINEAR)
    lin = {f"{k}.hada_w1_a": _rand(32, r, seed=54), f"{k}.hada_w1_b": _rand(r, 32, seed=55),
           f"{k}.hada_w2_a": _rand(32, r, seed=56), f"{k}.hada_w2_b": _rand(r, 32, seed=57)}
    got = _parsed(unet, lin, f"{LINEAR}.weight")
    product = (_elementwise_product(lin[f"{k}.hada_w1_a"], lin[f"{k}.hada_w1_b"])
               * _elementwise_product(lin[f"{k}.hada_w2_a"], lin[f"{k}.hada_w2_b"]))
    assert torch.allclose(got, product, atol=1e-5)


def test_file_loha_tucker(unet: UNet2DConditionModel) -> None:
    k, r = _key(CONV), 2
    state = {f"{k}.hada_t1": _rand(r, r, 3, 3, seed=58), f"{k}.hada_t2": _rand(r, r, 3, 3, seed=59),
             f"{k}.hada_w1_a": _rand(r, 32, seed=60), f"{k}.hada_w1_b": _rand(r, 32, seed=61),
             f"{k}.hada_w2_a": _rand(r, 32, seed=62), f"{k}.hada_w2_b": _rand(r, 32, seed=63),
             f"{k}.alpha": torch.tensor(4.0)}
    got = _parsed(unet, state, f"{CONV}.weight")
    expected = 2.0 * (_tucker_by_loops(state[f"{k}.hada_t1"], state[f"{k}.hada_w1_a"],
                                       state[f"{k}.hada_w1_b"])
                      * _tucker_by_loops(state[f"{k}.hada_t2"], state[f"{k}.hada_w2_a"],
                                         state[f"{k}.hada_w2_b"]))
    assert torch.allclose(got, expected, atol=1e-5)


def test_file_lokr_conv_and_linear(unet: UNet2DConditionModel) -> None:
    k = _key(CONV)
    conv = {f"{k}.lokr_w1": _rand(4, 4, seed=64), f"{k}.lokr_w2_a": _rand(8, 2, seed=65),
            f"{k}.lokr_w2_b": _rand(2, 8 * 9, seed=66), f"{k}.alpha": torch.tensor(1.0)}
    got = _parsed(unet, conv, f"{CONV}.weight")
    w2 = _elementwise_product(conv[f"{k}.lokr_w2_a"], conv[f"{k}.lokr_w2_b"]).reshape(8, 8, 3, 3)
    assert torch.allclose(got, 0.5 * _kron_by_blocks(conv[f"{k}.lokr_w1"], w2), atol=1e-5)
    k = _key(LINEAR)
    lin = {f"{k}.lokr_w1": _rand(2, 4, seed=67), f"{k}.lokr_w2": _rand(16, 8, seed=68),
           f"{k}.alpha": torch.tensor(3.0)}
    got = _parsed(unet, lin, f"{LINEAR}.weight")
    assert torch.allclose(got, _kron_by_blocks(lin[f"{k}.lokr_w1"], lin[f"{k}.lokr_w2"]),
                          atol=1e-5)


def test_file_locon_tucker_diff_and_bias(unet: UNet2DConditionModel) -> None:
    k, r = _key(CONV), 3
    state = {f"{k}.lora_down.weight": _rand(r, 32, 1, 1, seed=69),
             f"{k}.lora_mid.weight": _rand(r, r, 3, 3, seed=70),
             f"{k}.lora_up.weight": _rand(32, r, 1, 1, seed=71),
             f"{k}.alpha": torch.tensor(1.5)}
    x = _rand(1, 32, 5, 5, seed=72)
    got = _parsed(unet, state, f"{CONV}.weight")
    expected = 0.5 * F.conv2d(F.conv2d(F.conv2d(x, state[f"{k}.lora_down.weight"]),
                                       state[f"{k}.lora_mid.weight"], padding=1),
                              state[f"{k}.lora_up.weight"])
    assert torch.allclose(F.conv2d(x, got, padding=1), expected, atol=1e-5)
    k = _key(LINEAR.replace("to_q", "to_out.0"))
    diff, diff_b = _rand(32, 32, seed=73), _rand(32, seed=74)
    deltas = parse_lora({f"{k}.diff": diff, f"{k}.diff_b": diff_b}, {"unet": unet})["unet"]
    name = LINEAR.replace("to_q", "to_out.0")
    assert set(deltas) == {f"{name}.weight", f"{name}.bias"}
    assert torch.equal(deltas[f"{name}.bias"].weight(torch.Size((32,)), F32, CPU), diff_b)
    assert torch.equal(deltas[f"{name}.weight"].weight(torch.Size((32, 32)), F32, CPU), diff)


def test_file_lycoris_text_encoder(text_encoder: CLIPTextModel) -> None:
    k = "lora_te_text_model_encoder_layers_1_mlp_fc2"   # fc2: [64, 96]
    state = {f"{k}.lokr_w1_a": _rand(8, 2, seed=75), f"{k}.lokr_w1_b": _rand(2, 8, seed=76),
             f"{k}.lokr_w2": _rand(8, 12, seed=77), f"{k}.alpha": torch.tensor(1.0)}
    deltas = parse_lora(state, {"text_encoder": text_encoder})["text_encoder"]
    assert list(deltas) == ["encoder.layers.1.mlp.fc2.weight"]
    got = deltas["encoder.layers.1.mlp.fc2.weight"].weight(torch.Size((64, 96)), F32, CPU)
    w1 = _elementwise_product(state[f"{k}.lokr_w1_a"], state[f"{k}.lokr_w1_b"])
    assert torch.allclose(got, 0.5 * _kron_by_blocks(w1, state[f"{k}.lokr_w2"]), atol=1e-5)


def test_file_mixed_families_on_one_layer_is_rejected_when_incomplete(
        unet: UNet2DConditionModel) -> None:
    k = _key(CONV)
    with pytest.raises(ValueError, match="LoHa"):
        parse_lora({f"{k}.hada_w1_a": torch.ones(32, 2)}, {"unet": unet})
    with pytest.raises(ValueError, match="lokr_w1"):
        parse_lora({f"{k}.lokr_w2": torch.ones(8, 8, 3, 3)}, {"unet": unet})

"""Encoder/decoder: parameter names, shapes and counts of the four released configs, and block semantics."""
import json

import pytest
import torch

from taming import build_tokenizer
from taming.modules.autoencoder import AdaptiveGroupNorm, Decoder, Encoder, ResBlock, depth_to_space

FULL_CONFIGS = {
    "128_B": dict(ch=128, ch_mult=[1, 2, 2, 4], num_res_blocks=2, z_channels=18),
    "256_B": dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, z_channels=18),
    "128_L": dict(ch=128, ch_mult=[1, 2, 2, 4], num_res_blocks=4, z_channels=18, adaptive_gn=True),
    "256_L": dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=4, z_channels=18, adaptive_gn=True),
}


@pytest.mark.parametrize("name", sorted(FULL_CONFIGS))
def test_full_configs_match_reference_manifest(name, reference_dir):
    manifest = json.loads((reference_dir / f"imagenet_lfqgan_{name}_state_dict_manifest.json").read_text())
    ref = {k: tuple(v) for k, v in manifest["state_dict"].items()}
    with torch.device("meta"):  # no memory allocated
        model = build_tokenizer(FULL_CONFIGS[name])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref_generator = {k: v for k, v in ref.items() if k.startswith(("encoder.", "decoder.", "quantize."))}
    assert ours == ref_generator
    for prefix in ("encoder.", "decoder.", "quantize."):
        count = sum(v.numel() for k, v in model.state_dict().items() if k.startswith(prefix))
        assert count == manifest["numel_by_prefix"][prefix], prefix
    # EMA shadows are the parameter names without dots.
    ref_ema = {k for k in ref if k.startswith(("model_ema.encoder", "model_ema.decoder"))}
    assert {"model_ema." + k.replace(".", "") for k, _ in model.named_parameters()} == ref_ema


def test_parameter_counts_match_closed_form():
    def rb(i, o):
        return 2 * i + 2 * o + 9 * i * o + 9 * o * o + (i * o if i != o else 0)

    assert sum(p.numel() for p in ResBlock(128, 256).parameters()) == rb(128, 256) == 918_272
    with torch.device("meta"):
        enc = Encoder(**{k: v for k, v in FULL_CONFIGS["256_B"].items()})
        dec = Decoder(**FULL_CONFIGS["256_B"])
    assert sum(p.numel() for p in enc.parameters()) == 24_964_498
    assert sum(p.numel() for p in dec.parameters()) == 40_526_211


def test_depth_to_space_is_dcr_order():
    c, s = 3, 2
    x = torch.arange(2 * 4 * c * 2 * 3, dtype=torch.float32).view(2, 4 * c, 2, 3)
    y = depth_to_space(x, s)
    assert y.shape == (2, c, 4, 6)
    for i in range(s):
        for j in range(s):
            for ch in range(c):
                torch.testing.assert_close(y[:, ch, i::s, j::s], x[:, (i * s + j) * c + ch])
    # PixelShuffle (CRD) gives the same result after permuting the input channels.
    perm = torch.tensor([(k % 4) * c + k // 4 for k in range(4 * c)])
    torch.testing.assert_close(torch.nn.functional.pixel_shuffle(x[:, perm], s), y)


def test_adaptive_group_norm_formula():
    torch.manual_seed(0)
    agn = AdaptiveGroupNorm(z_channels=4, channels=32)
    x, quant = torch.randn(2, 32, 5, 5), torch.randn(2, 4, 3, 3)
    std = torch.sqrt(quant.flatten(2).var(-1, unbiased=True) + 1e-6)
    mean = quant.flatten(2).mean(-1)
    normed = torch.nn.functional.group_norm(x, 32, eps=1e-6)
    expected = normed * agn.gamma(std)[..., None, None] + agn.beta(mean)[..., None, None]
    torch.testing.assert_close(agn(x, quant), expected)


def test_fully_convolutional_token_grid():
    model = build_tokenizer(dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=6)).eval()
    assert model.downsample_factor == 4
    for size in (32, 64):
        quant, indices = model.encode(torch.rand(1, 3, size, size) * 2 - 1)
        assert quant.shape == (1, 6, size // 4, size // 4) and indices.shape == (1, size // 4, size // 4)
        assert model.decode(quant).shape == (1, 3, size, size)


def test_group_norm_width_error_names_the_fix():
    with pytest.raises(ValueError, match="multiple of 32"):
        Encoder(ch=16, ch_mult=[1, 2], num_res_blocks=1, z_channels=8)

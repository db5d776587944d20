"""PatchGAN discriminator: reference parameter names/shapes/count, output size, initialisation."""
import json

import torch

from taming.modules.discriminator import NLayerDiscriminator


def test_matches_reference_manifest(reference_dir):
    manifest = json.loads((reference_dir / "imagenet_lfqgan_128_B_state_dict_manifest.json").read_text())
    prefix = "loss.discriminator."
    expected = {k[len(prefix):]: shape for k, shape in manifest["state_dict"].items() if k.startswith(prefix)}
    d = NLayerDiscriminator()
    assert {k: list(v.shape) for k, v in d.state_dict().items()} == expected
    assert sum(p.numel() for p in d.parameters()) == 2_765_633


def test_patch_logit_map_size():
    d = NLayerDiscriminator(ndf=8).eval()
    # each stride-2 4x4 conv: h -> h/2; the two stride-1 4x4 convs (padding 1): h -> h - 1 each
    assert d(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 6, 6)
    assert d(torch.zeros(2, 3, 128, 128)).shape == (2, 1, 14, 14)


def test_initialisation():
    torch.manual_seed(0)
    d = NLayerDiscriminator()
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    big = convs[2].weight  # 128 -> 256, 524k weights
    assert abs(big.mean().item()) < 1e-3 and abs(big.std().item() - 0.02) < 1e-3
    for bn in (m for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
        assert abs(bn.weight.mean().item() - 1) < 0.01 and 0.01 < bn.weight.std().item() < 0.03

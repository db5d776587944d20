"""GigaTok's DINO discriminator and DiffAug: release-file loading with zeroed key bias, the backbone read-outs
against a hand-written DINO ViT-S/16, head structure, gradients, checkpoint contents, input resizing/cropping,
virtual-batch BatchNorm and the augmentations' closed forms.

The DINO weights are random, in the layout of the release file `dino_deitsmall16_pretrain.pth`.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from taming.modules.diffaug import DiffAug
from taming.modules.dino_discriminator import DINO_VITS16_FILE, BatchNormLocal, DinoDiscriminator, Residual
from helpers import release_state, torch_hub_dir
from test_semantic import MEAN, STD, reference_vit


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A torch hub cache holding a random-weight DINO ViT-S/16 release file (224x224: 14x14 patches)."""
    root = tmp_path_factory.mktemp("hub")
    (root / "checkpoints").mkdir()
    state = release_state(384, 12, patch=16, grid=14, layer_scale=False, seed=4)
    torch.save(state, root / "checkpoints" / DINO_VITS16_FILE)
    with torch_hub_dir(root):
        yield root


@pytest.fixture(scope="module")
def release(hub):
    return torch.load(hub / "checkpoints" / DINO_VITS16_FILE, weights_only=True)


@pytest.fixture(scope="module")
def disc(hub):
    torch.manual_seed(0)
    return DinoDiscriminator()


def test_release_file_loads_with_zeroed_key_bias(disc, release):
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.bias",
            "norm.weight"} <= set(release)
    assert release["pos_embed"].shape == (1, 197, 384)
    loaded = disc.backbone.state_dict()
    assert set(loaded) == set(release)
    for key, value in loaded.items():
        if key.endswith("attn.qkv.bias"):
            assert torch.equal(value[:384], release[key][:384]) and torch.equal(value[768:], release[key][768:])
            assert not value[384:768].any() and release[key][384:768].abs().min() > 0, key
        else:
            assert torch.equal(value, release[key]), key


@pytest.mark.parametrize("gelu", ["tanh", "none"])
def test_readouts_match_hand_written_dino(hub, disc, release, gelu):
    """Read-outs = patch + class token after the position embedding and after blocks 2, 5, 8, 11 of DINO
    (with its own key bias: zeroing it must not change anything); GELU tanh-approximated as GigaTok."""
    model = disc if gelu == "tanh" else DinoDiscriminator(exact_gelu=True)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 224, 224)
    seq, _ = reference_vit(release, x, num_heads=6, gelu=gelu)
    feats = model.features(x)
    assert len(feats) == 5
    for f, depth in zip(feats, [0, 3, 6, 9, 12]):
        expected = (seq[depth][:, 1:] + seq[depth][:, :1]).transpose(1, 2)
        assert f.shape == (1, 384, 196)
        torch.testing.assert_close(f, expected, rtol=1e-4, atol=1e-4)
    if gelu == "none":  # the approximation is visible at this tolerance
        assert not torch.allclose(disc.features(x)[-1], feats[-1], rtol=1e-4, atol=1e-4)


def test_heads_structure_and_logits(disc):
    assert len(disc.heads) == 5 and disc.num_logits == 980
    for head in disc.heads:
        first, residual, last = head
        assert isinstance(residual, Residual)
        for block, k in ((first, 1), (residual.fn, 9)):
            conv, norm, act = block
            assert conv.kernel_size == (k,) and conv.padding == (k // 2,) and conv.padding_mode == "circular"
            assert conv.in_channels == conv.out_channels == 384 and hasattr(conv.parametrizations, "weight")
            assert isinstance(norm, BatchNormLocal) and norm.virtual_batch == 8 and norm.eps == 1e-6
            assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.2
        assert (last.in_channels, last.out_channels, last.kernel_size) == (384, 1, (1,))
        assert hasattr(last.parametrizations, "weight")
    trainable = sum(p.numel() for p in disc.parameters() if p.requires_grad)
    assert trainable == 7_386_245  # GigaTok's 7.39M head parameters
    assert trainable == sum(p.numel() for p in disc.heads.parameters())

    torch.manual_seed(2)
    logits = disc(torch.rand(2, 3, 256, 256) * 2 - 1)
    assert logits.shape == (2, 980) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    # logits are each head's per-token outputs, concatenated head after head
    disc.diffaug, augment = None, disc.diffaug
    disc.eval()  # no spectral-norm power iteration between the two evaluations
    try:
        images = torch.rand(1, 3, 224, 224) * 2 - 1
        feats = disc.features(disc.to_backbone_input(images))
        expected = torch.cat([head(f)[:, 0] for head, f in zip(disc.heads, feats)], 1)
        torch.testing.assert_close(disc(images), expected)
    finally:
        disc.diffaug = augment
        disc.train()


def test_gradient_reaches_input_not_backbone(disc):
    torch.manual_seed(3)
    images = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    disc.zero_grad(set_to_none=True)
    disc(images).mean().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.backbone.parameters())
    assert all(p.grad is not None for p in disc.heads.parameters())
    disc.zero_grad(set_to_none=True)


def test_backbone_frozen_eval_and_left_out_of_checkpoints(disc):
    disc.train()
    assert disc.heads.training and all(not m.training for m in disc.backbone.modules())
    assert not any(p.requires_grad for p in disc.backbone.parameters())
    state = disc.state_dict()
    assert state and all(k.startswith("heads.") for k in state)
    assert sum(v.numel() for k, v in state.items() if not k.endswith(("_u", "_v"))) == 7_386_245

    before = {k: v.clone() for k, v in disc.backbone.state_dict().items()}
    heads = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        disc.heads[0][2].parametrizations.weight.original.add_(1.0)
    disc.load_state_dict(dict(heads, **{"backbone.cls_token": torch.zeros(1, 1, 384)}), strict=True)
    for key, value in disc.state_dict().items():
        assert torch.equal(value, heads[key]), key  # heads restored from the checkpoint
    for key, value in disc.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key  # backbone keeps the release weights


def test_backbone_input_resize_and_crop(disc):
    normalise = lambda x: ((x + 1) / 2 - MEAN) / STD  # noqa: E731
    at_224 = torch.rand(2, 3, 224, 224) * 2 - 1
    torch.testing.assert_close(disc.to_backbone_input(at_224), normalise(at_224))
    small = torch.rand(2, 3, 128, 128) * 2 - 1
    torch.testing.assert_close(disc.to_backbone_input(small),
                               F.interpolate(normalise(small), size=(224, 224), mode="bicubic", align_corners=False))

    # 256x256 images whose channels 0/1 encode the row/column index: a crop reveals its offset
    idx = torch.arange(256.0) / 128 - 1
    big = torch.stack([idx[:, None].expand(256, 256), idx[None, :].expand(256, 256), torch.zeros(256, 256)])
    big = big.expand(8, 3, 256, 256).clone()
    crop_prob = disc.crop_prob
    try:
        disc.crop_prob = 0.0
        resized = F.interpolate(normalise(big), size=(224, 224), mode="area")
        torch.testing.assert_close(disc.to_backbone_input(big), resized)
        disc.crop_prob = 1.0
        out = disc.to_backbone_input(big, torch.Generator().manual_seed(0))
        tops = ((out[:, 0, 0, 0] * 0.229 + 0.485) * 256).round().long()
        lefts = ((out[:, 1, 0, 0] * 0.224 + 0.456) * 256).round().long()
        assert ((tops >= 0) & (tops <= 32) & (lefts >= 0) & (lefts <= 32)).all() and len(set(tops.tolist())) > 1
        for b in range(8):
            t, l = tops[b].item(), lefts[b].item()
            torch.testing.assert_close(out[b], normalise(big)[b, :, t:t + 224, l:l + 224])
        disc.crop_prob = 0.5  # per image: a crop or the area-resized image, reproducible with a generator
        out = disc.to_backbone_input(big, torch.Generator().manual_seed(1))
        assert torch.equal(out, disc.to_backbone_input(big, torch.Generator().manual_seed(1)))
        is_resized = [torch.allclose(out[b], resized[b]) for b in range(8)]
        assert any(is_resized) and not all(is_resized)
    finally:
        disc.crop_prob = crop_prob


def test_discriminator_errors(hub, tmp_path):
    with pytest.raises(ValueError, match="key_depths"):
        DinoDiscriminator(key_depths=(5, 2))
    with pytest.raises(ValueError, match="key_depths"):
        DinoDiscriminator(key_depths=(2, 12))
    with pytest.raises(ValueError, match="crop_prob"):
        DinoDiscriminator(crop_prob=1.5)
    with torch_hub_dir(tmp_path / "empty_hub"):
        with pytest.raises(FileNotFoundError) as err:
            DinoDiscriminator(option="model.dino_disc_path")
    message = str(err.value)
    assert DINO_VITS16_FILE in message and "model.dino_disc_path" in message
    assert str(tmp_path / "empty_hub" / "checkpoints" / DINO_VITS16_FILE) in message
    wrong = tmp_path / "wrong.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 384), "pos_embed": torch.zeros(1, 197, 384),
                "blocks.0.attn.qkv.bias": torch.zeros(1152)}, wrong)
    with pytest.raises(ValueError, match="does not hold DINO ViT-S/16 weights"):
        DinoDiscriminator(weights_path=wrong)
    torch.save({"model": {}}, wrong)
    with pytest.raises(ValueError, match="not the DINO ViT-S/16 release state dict"):
        DinoDiscriminator(weights_path=wrong)


def test_discriminator_rejects_bad_images(disc):
    for bad in (torch.rand(3, 64, 64), torch.rand(2, 4, 64, 64), torch.zeros(2, 3, 64, 64, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="B x 3 x H x W"):
            disc(bad)


def test_batchnorm_local_normalises_virtual_batches():
    torch.manual_seed(4)
    norm = BatchNormLocal(4, virtual_batch=8)
    x = torch.randn(16, 4, 10) * 3 + 1
    y = norm(x)
    for group in (y[:8], y[8:]):  # each group of 8: zero mean, unit (biased) variance per channel
        torch.testing.assert_close(group.mean(dim=(0, 2)), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(group.var(dim=(0, 2), unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    x2 = x.clone()
    x2[8:] = torch.randn(8, 4, 10) * 10  # the other group's samples do not matter
    assert torch.equal(norm(x2)[:8], y[:8])
    assert torch.equal(norm.eval()(x), y)  # no running statistics: same in eval mode
    with torch.no_grad():
        norm.weight.fill_(2.0)
        norm.bias.fill_(-1.0)
    torch.testing.assert_close(norm(x), 2 * y - 1)

    x = torch.randn(9, 4, 10)  # 9 samples -> 2 groups of 5 and 4
    y = norm(x)
    for group, xs in ((y[:5], x[:5]), (y[5:], x[5:])):
        var, mean = torch.var_mean(xs, dim=(0, 2), unbiased=False, keepdim=True)
        torch.testing.assert_close(group, 2 * (xs - mean) / torch.sqrt(var + 1e-6) - 1)
    torch.testing.assert_close(Residual(nn.Identity())(x), math.sqrt(2) * x)


def test_diffaug_is_random_reproducible_and_keeps_shape():
    aug = DiffAug()
    x = torch.rand(4, 3, 32, 40) * 2 - 1
    y = aug(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.equal(y, aug(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(y, aug(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(y[0], y[1])  # drawn per image
    assert torch.equal(DiffAug(prob=0.0)(x), x)
    assert torch.equal(DiffAug(translation=0, color=False, cutout=0)(x), x)

    x.requires_grad_(True)
    aug(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cutout"):
        DiffAug(cutout=1.5)
    with pytest.raises(ValueError, match="B x C x H x W"):
        aug(torch.rand(3, 32, 32))


def test_diffaug_translation_shifts_in_zeros():
    aug = DiffAug(color=False, cutout=0)
    x = torch.rand(16, 3, 32, 32) + 1  # strictly positive: zeros come only from the shift
    y = aug(x, torch.Generator().manual_seed(0))
    shifts = set()
    for b in range(16):
        found = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                 if torch.equal(y[b], F.pad(x[b], (4, 4, 4, 4))[:, 4 + dy:36 + dy, 4 + dx:36 + dx])]
        assert len(found) == 1, b  # a shift of at most round(0.125 * 32) = 4 pixels, zeros shifted in
        shifts.add(found[0])
    assert len(shifts) > 4


def test_diffaug_color_and_cutout_closed_forms():
    # colour only, on grey images: saturation and contrast act around means that equal every pixel,
    # so the output is the image plus the brightness offset in [-0.5, 0.5)
    grey = torch.rand(16, 1, 1, 1).expand(16, 3, 8, 8)
    y = DiffAug(translation=0, cutout=0)(grey, torch.Generator().manual_seed(0))
    offset = y - grey
    torch.testing.assert_close(offset, offset[:, :1, :1, :1].expand_as(offset))
    assert (offset[:, 0, 0, 0] >= -0.5).all() and (offset[:, 0, 0, 0] < 0.5).all() and offset.std() > 0.05
    # contrast around the image mean: an image with a bright and a dark half keeps its mean
    halves = torch.cat([torch.full((16, 3, 4, 8), 0.8), torch.full((16, 3, 4, 8), -0.8)], 2)
    y = DiffAug(translation=0, cutout=0)(halves, torch.Generator().manual_seed(1))
    shifted = DiffAug(translation=0, cutout=0)(torch.zeros_like(halves), torch.Generator().manual_seed(1))
    torch.testing.assert_close(y.mean(dim=(1, 2, 3)), shifted.mean(dim=(1, 2, 3)))

    # cutout only: one zeroed rectangle of at most 0.2 * size per side (clipped at the border), else unchanged
    ones = torch.ones(64, 3, 40, 30)
    y = DiffAug(translation=0, color=False)(ones, torch.Generator().manual_seed(2))
    zero = y[:, 0] == 0
    assert torch.equal(zero[:, None].expand_as(y), y == 0) and torch.equal(y[~(y == 0)], ones[~(y == 0)])
    full = 0
    for mask in zero:
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        assert mask.sum() == len(rows) * len(cols) > 0  # a rectangle
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
        assert len(rows) <= 8 and len(cols) <= 6
        full += len(rows) == 8 and len(cols) == 6
    assert full > 16  # away from the borders the full 8 x 6 rectangle is cut

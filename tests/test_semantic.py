"""DINOv2 teacher of the semantic regularisation: release-file loading, GigaTok's preprocessing, the token
features against a hand-written DINOv2 forward, frozen/eval/out-of-checkpoint behaviour, and the cosine loss.

Weights are random but written in the official release layout (the DINOv2 repository's parameter names and
shapes at 518x518, i.e. a 37x37 position grid) into a temporary torch hub cache.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from taming.modules.semantic import DINOV2_TEACHERS, DinoV2Teacher, semantic_alignment_loss
from helpers import dinov2_release_state, torch_hub_dir

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def reference_vit(state, x, num_heads, pos_embed=None, gelu="none"):
    """Hand-written DINO/DINOv2 ViT forward (eval) from a release state dict. x: normalised B x 3 x H x W.
    -> (token sequences after the position embedding and after every block, final LayerNorm of the last)."""
    dim = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([state["cls_token"].expand(len(x), -1, -1), t], 1)
    t = t + (state["pos_embed"] if pos_embed is None else pos_embed)
    if "register_tokens" in state:  # DINOv2 with registers: inserted after the class token, no position embedding
        t = torch.cat([t[:, :1], state["register_tokens"].expand(len(x), -1, -1), t[:, 1:]], 1)
    seq = [t]
    b, n, _ = t.shape
    for i in range(sum(k.endswith(".norm1.weight") for k in state)):
        w = {k[len(f"blocks.{i}."):]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(t, (dim,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
        qkv = F.linear(h, w["attn.qkv.weight"], w["attn.qkv.bias"])
        q, k, v = qkv.view(b, n, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(dim // num_heads)).softmax(-1)
        h = F.linear((attn @ v).transpose(1, 2).reshape(b, n, dim), w["attn.proj.weight"], w["attn.proj.bias"])
        t = t + h * w.get("ls1.gamma", 1.0)
        h = F.layer_norm(t, (dim,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
        h = F.gelu(F.linear(h, w["mlp.fc1.weight"], w["mlp.fc1.bias"]), approximate=gelu)
        t = t + F.linear(h, w["mlp.fc2.weight"], w["mlp.fc2.bias"]) * w.get("ls2.gamma", 1.0)
        seq.append(t)
    return seq, F.layer_norm(t, (dim,), state["norm.weight"], state["norm.bias"], eps=1e-6)


def resampled_pos_embed(pos_embed, grid):
    """GigaTok's teacher: class entry kept, 37x37 grid -> grid x grid, bicubic with antialiasing."""
    old = int(math.sqrt(pos_embed.shape[1] - 1))
    g = pos_embed[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([pos_embed[:, :1], g.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], 1)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A torch hub cache holding random-weight release files for dinov2_vits14, dinov2_vitb14, dinov2_vits14_reg."""
    root = tmp_path_factory.mktemp("hub")
    (root / "checkpoints").mkdir()
    states = {"dinov2_vits14": dinov2_release_state(384, 12, seed=1),
              "dinov2_vitb14": dinov2_release_state(768, 12, seed=2),
              "dinov2_vits14_reg": dinov2_release_state(384, 12, registers=4, seed=3)}
    for arch, state in states.items():
        torch.save(state, root / "checkpoints" / DINOV2_TEACHERS[arch][1])
    with torch_hub_dir(root):
        yield root


@pytest.fixture(scope="module")
def teacher_s(hub):
    return DinoV2Teacher("dinov2_vits14")


def load_release(hub, arch):
    return torch.load(hub / "checkpoints" / DINOV2_TEACHERS[arch][1], weights_only=True)


def test_vitb14_release_file_loads_with_real_shapes(hub):
    state = load_release(hub, "dinov2_vitb14")
    assert {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
            "blocks.0.ls1.gamma", "blocks.11.mlp.fc2.bias", "norm.weight"} <= set(state)
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 768)
    assert state["patch_embed.proj.weight"].shape == (768, 3, 14, 14)

    teacher = DinoV2Teacher()  # default: dinov2_vitb14 from the hub cache
    assert teacher.embed_dim == 768 and teacher.num_tokens == 256
    loaded = teacher.backbone.state_dict()
    assert set(loaded) == set(state) - {"mask_token"}
    for key, value in loaded.items():
        if key != "pos_embed":
            assert torch.equal(value, state[key]), key
    torch.testing.assert_close(loaded["pos_embed"], resampled_pos_embed(state["pos_embed"], 16), rtol=0, atol=1e-6)

    images = torch.rand(1, 3, 256, 256) * 2 - 1
    tokens = teacher(images)
    assert tokens.shape == (1, 256, 768) and tokens.dtype == torch.float32 and not tokens.requires_grad
    x = F.interpolate(((images + 1) / 2 - MEAN) / STD, size=(224, 224), mode="bicubic", align_corners=False)
    _, final = reference_vit(state, x, num_heads=12, pos_embed=resampled_pos_embed(state["pos_embed"], 16))
    torch.testing.assert_close(tokens, final[:, 1:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["dinov2_vits14", "dinov2_vits14_reg"])
def test_teacher_tokens_match_hand_written_dinov2(hub, arch, teacher_s):
    """x_norm_patchtokens of the hub model with GigaTok's 16x16 position grid, including the preprocessing."""
    state = load_release(hub, arch)
    teacher = teacher_s if arch == "dinov2_vits14" else DinoV2Teacher(arch)
    torch.manual_seed(0)
    images = torch.rand(2, 3, 128, 128) * 2 - 1
    x = F.interpolate(((images + 1) / 2 - MEAN) / STD, size=(224, 224), mode="bicubic", align_corners=False)
    _, final = reference_vit(state, x, num_heads=6, pos_embed=resampled_pos_embed(state["pos_embed"], 16))
    registers = 4 if "register_tokens" in state else 0
    expected = final[:, 1 + registers:]
    tokens = teacher(images)
    assert tokens.shape == (2, 256, 384)
    torch.testing.assert_close(tokens, expected, rtol=1e-4, atol=1e-4)
    assert (tokens - expected).abs().max() < 1e-3 * (expected.abs().max())


def test_preprocess_is_gigatok_pipeline(teacher_s):
    images = torch.linspace(-1, 1, 2 * 3 * 64 * 48).view(2, 3, 64, 48)
    x = teacher_s.preprocess(images)
    unit = (images + 1) / 2
    normalised = torch.stack([(unit[:, c] - m) / s for c, (m, s) in
                              enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))], 1)
    assert x.shape == (2, 3, 224, 224)
    torch.testing.assert_close(x, F.interpolate(normalised, size=(224, 224), mode="bicubic", align_corners=False))
    at_224 = torch.rand(1, 3, 224, 224) * 2 - 1  # already at the teacher's size: normalised only
    torch.testing.assert_close(teacher_s.preprocess(at_224), ((at_224 + 1) / 2 - MEAN) / STD)


def test_teacher_is_frozen_eval_and_left_out_of_checkpoints(teacher_s):
    class Parent(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.teacher = teacher_s

    parent = Parent().train()
    assert all(not m.training for m in teacher_s.backbone.modules())
    assert not any(p.requires_grad for p in teacher_s.parameters())
    state = parent.state_dict()
    assert set(state) == {"proj.weight", "proj.bias"}

    before = {k: v.clone() for k, v in teacher_s.backbone.state_dict().items()}
    parent.load_state_dict(state, strict=True)  # no teacher keys: nothing missing
    stale = dict(state, **{"teacher.backbone.cls_token": torch.zeros(1, 1, 384),
                           "teacher.backbone.extra": torch.zeros(1)})
    parent.load_state_dict(stale, strict=True)  # teacher keys in an old checkpoint are ignored
    for key, value in teacher_s.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key

    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    assert not teacher_s(images).requires_grad


def test_teacher_errors(hub, tmp_path):
    with torch_hub_dir(tmp_path / "empty_hub"):
        with pytest.raises(FileNotFoundError) as err:
            DinoV2Teacher(option="model.semantic_teacher_path")
    message = str(err.value)
    assert "dinov2_vitb14_pretrain.pth" in message
    assert str(tmp_path / "empty_hub" / "checkpoints" / "dinov2_vitb14_pretrain.pth") in message
    assert "model.semantic_teacher_path" in message
    with pytest.raises(FileNotFoundError, match="--teacher"):
        DinoV2Teacher(weights_path=tmp_path / "nope.pth", option="--teacher")
    with pytest.raises(ValueError, match="one of"):
        DinoV2Teacher("dinov2_vitb16")
    not_dinov2 = tmp_path / "not_dinov2.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, not_dinov2)
    with pytest.raises(ValueError, match="not an official DINOv2 release"):
        DinoV2Teacher("dinov2_vits14", weights_path=not_dinov2)
    with pytest.raises(ValueError, match="does not hold dinov2_vits14 weights"):
        DinoV2Teacher("dinov2_vits14", weights_path=hub / "checkpoints" / "dinov2_vitb14_pretrain.pth")


def test_teacher_rejects_bad_images(teacher_s):
    for bad in (torch.rand(3, 32, 32), torch.rand(1, 1, 32, 32), torch.randint(0, 255, (1, 3, 32, 32))):
        with pytest.raises(ValueError, match="B x 3 x H x W"):
            teacher_s(bad)


def test_semantic_alignment_loss_closed_forms():
    torch.manual_seed(0)
    a = torch.randn(2, 5, 8)
    assert torch.allclose(semantic_alignment_loss(a, a), torch.tensor(-1.0))
    assert torch.allclose(semantic_alignment_loss(a, 3 * a), torch.tensor(-1.0))  # scale-free
    assert torch.allclose(semantic_alignment_loss(a, -a), torch.tensor(1.0))
    e = torch.eye(8)
    assert torch.allclose(semantic_alignment_loss(e[None, :4], e[None, 4:]), torch.tensor(0.0))  # orthogonal
    b = torch.randn(2, 5, 8)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    torch.testing.assert_close(semantic_alignment_loss(a, b), -cos.mean())
    # mean over tokens, then over the batch (equal token counts: the plain mean of the per-token cosines)
    torch.testing.assert_close(semantic_alignment_loss(a, b), -cos.mean(1).mean(0))

    student = a.clone().requires_grad_(True)
    teacher = b.clone().requires_grad_(True)
    semantic_alignment_loss(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


def test_semantic_alignment_loss_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        semantic_alignment_loss(torch.randn(2, 256, 768), torch.randn(2, 256, 384))
    with pytest.raises(ValueError, match="B x N x D"):
        semantic_alignment_loss(torch.randn(256, 768), torch.randn(256, 768))

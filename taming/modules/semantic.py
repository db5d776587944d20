"""GigaTok's semantic regularisation: a frozen DINOv2 teacher and the cosine alignment loss.

The teacher is timm's DINOv2 ViT built for 224x224 inputs (a 16x16 patch grid) with the official release
weights, e.g. `dinov2_vitb14_pretrain.pth`, the file torch hub's `facebookresearch/dinov2` entry
`dinov2_vitb14` downloads into `torch.hub.get_dir()/checkpoints/`. timm's own DINOv2 converter maps the
official keys (drops `mask_token`, moves registers) and resamples the 37x37 position embedding to 16x16
(bicubic, antialiased): the same call GigaTok applies to the hub model before training
(`timm.layers.resample_abs_pos_embed(pos_embed, [16, 16])`), so its teacher and this one compute the same
function. (An unmodified hub model fed 224x224 images would interpolate the embedding on the fly instead;
for the models without registers that differs slightly, an 0.1 grid offset and no antialiasing. GigaTok
does not use that path.)
"""
import itertools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..pretrained import resolve_weight_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEACHER_SIZE = 224  # 16x16 patches of 14 pixels

# torch hub entry of facebookresearch/dinov2 -> (timm architecture, official release file)
DINOV2_TEACHERS = {
    "dinov2_vits14": ("vit_small_patch14_dinov2", "dinov2_vits14_pretrain.pth"),
    "dinov2_vitb14": ("vit_base_patch14_dinov2", "dinov2_vitb14_pretrain.pth"),
    "dinov2_vitl14": ("vit_large_patch14_dinov2", "dinov2_vitl14_pretrain.pth"),
    "dinov2_vits14_reg": ("vit_small_patch14_reg4_dinov2", "dinov2_vits14_reg4_pretrain.pth"),
    "dinov2_vitb14_reg": ("vit_base_patch14_reg4_dinov2", "dinov2_vitb14_reg4_pretrain.pth"),
    "dinov2_vitl14_reg": ("vit_large_patch14_reg4_dinov2", "dinov2_vitl14_reg4_pretrain.pth"),
}


def exclude_from_state_dict(owner: nn.Module, name: str) -> None:
    """Leave submodule `owner.<name>` (frozen weights that come from a release file) out of `state_dict()`.

    Loading keeps its current weights: entries for it in a loaded state dict are ignored and their absence
    is not a missing key, so `load_state_dict(..., strict=True)` works with or without them.
    """
    child = name + "."

    def drop(module, state_dict, prefix, local_metadata):
        for key in [k for k in state_dict if k.startswith(prefix + child)]:
            del state_dict[key]

    def keep_current(module, state_dict, prefix, *args):
        for key in [k for k in state_dict if k.startswith(prefix + child)]:
            del state_dict[key]
        for key, value in getattr(module, name).state_dict().items():
            state_dict[prefix + child + key] = value

    owner._register_state_dict_hook(drop)
    owner._register_load_state_dict_pre_hook(keep_current, with_module=True)


def build_timm(name: str, state: dict, convert=None, **kwargs) -> nn.Module:
    """timm model `name` (built with `kwargs`) holding the weights of `state`, frozen, in eval mode.

    Built on the meta device where timm allows it (no random init: every tensor comes from `state`, after
    `convert(state, model)`) and filled with `load_state_dict(strict=True, assign=True)`; RuntimeError on a key or shape mismatch.
    """
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, NotImplementedError):  # timm < 1.0.31 calls .item() while building: initialise on the CPU
        model = timm.create_model(name, pretrained=False, **kwargs)
    if convert is not None:
        state = convert(state, model)
    model.load_state_dict(state, assign=True)
    unset = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if unset:
        raise RuntimeError(f"timm's {name} has tensors that the weight file does not provide: {unset[:4]}")
    return model.eval().requires_grad_(False)


def check_images(images: torch.Tensor, who: str) -> None:
    if not (torch.is_tensor(images) and images.is_floating_point() and images.ndim == 4 and images.shape[1] == 3):
        got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        dtype = f" {images.dtype}" if torch.is_tensor(images) else ""
        raise ValueError(f"{who} expects float RGB images B x 3 x H x W in [-1, 1], got{dtype} {got}")


class DinoV2Teacher(nn.Module):
    """Frozen DINOv2 ViT (default B/14) whose patch tokens are the targets of the semantic loss.

    forward: images B x 3 x H x W in [-1, 1] -> B x 256 x D float32 final-norm patch tokens (DINOv2's
    `x_norm_patchtokens` on the 16x16 grid of a 224x224 input; D = 768 for B/14), without grad.
    Input pipeline (GigaTok's): [-1, 1] -> [0, 1] -> ImageNet mean/std -> bicubic resize to 224.
    Always in eval mode, requires no grad, and is left out of `state_dict()` (its weights come from the file).
    `arch` is a torch hub entry name (see DINOV2_TEACHERS); `weights_path` overrides the hub cache, and
    `option` is the setting named in the missing-file error.
    """

    def __init__(self, arch: str = "dinov2_vitb14", weights_path=None, option: Optional[str] = "weights_path"):
        super().__init__()
        from timm.models.vision_transformer import checkpoint_filter_fn

        if arch not in DINOV2_TEACHERS:
            raise ValueError(f"DINOv2 teacher arch must be one of {sorted(DINOV2_TEACHERS)}, got {arch!r}")
        timm_name, filename = DINOV2_TEACHERS[arch]
        weight_file = resolve_weight_file(filename, weights_path, option)
        self.arch = arch
        state = torch.load(weight_file, map_location="cpu", weights_only=True)
        if not (isinstance(state, dict) and {"cls_token", "pos_embed", "mask_token"} <= set(state)):
            raise ValueError(f"{weight_file} is not an official DINOv2 release state dict (keys `cls_token`, "
                             f"`pos_embed`, `mask_token`, `blocks.<i>.*` expected, as in {filename})")
        try:  # timm's converter: drops mask_token, moves registers, resamples pos_embed 37x37 -> 16x16
            self.backbone = build_timm(timm_name, state, checkpoint_filter_fn, img_size=TEACHER_SIZE, num_classes=0)
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"{weight_file} does not hold {arch} weights (expected the release file "
                             f"{filename}): {err}") from None
        self.embed_dim = self.backbone.embed_dim
        self.num_tokens = self.backbone.patch_embed.num_patches
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        exclude_from_state_dict(self, "backbone")

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W in [-1, 1] -> B x 3 x 224 x 224 float32, ImageNet-normalised."""
        x = (images.float() + 1) / 2
        x = (x - self.mean.float()) / self.std.float()
        if x.shape[-2:] != (TEACHER_SIZE, TEACHER_SIZE):
            x = F.interpolate(x, size=(TEACHER_SIZE, TEACHER_SIZE), mode="bicubic", align_corners=False)
        return x

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, type(self).__name__)
        x = self.preprocess(images).to(self.backbone.cls_token.dtype)
        tokens = self.backbone.forward_features(x)  # final norm over [cls, registers, patches]
        return tokens[:, self.backbone.num_prefix_tokens:].float()


def semantic_alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """-mean cosine similarity of matching tokens: student, teacher B x N x D -> scalar in [-1, 1].

    Each token is l2-normalised (F.normalize), the per-token dot products averaged over tokens, then over
    the batch (GigaTok's `proj_loss`). Computed in float32; the teacher side gets no gradient.
    """
    if student.ndim != 3 or student.shape != teacher.shape:
        raise ValueError(f"student and teacher features must both be B x N x D with the same shape, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}: project the student to the "
                         "teacher's width and token grid first")
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    return -(s * t).sum(-1).mean()

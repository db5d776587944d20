"""The VQGAN objective of Open-MAGVIT2, LlamaGen and GigaTok (`VQLPIPSWithDiscriminator`).

Generator:     reconstruction_weight * mean rec(x, x_hat) + perceptual_weight * mean LPIPS(x, x_hat)
               + d_weight * disc_factor * G(D(x_hat)) + quantizer loss (weighted by the quantizer itself)
Discriminator: disc_factor * (D loss(D(x), D(sg(x_hat))) + lecam_loss_weight * LeCam)
rec = |.| (Open-MAGVIT2, "l1") or (.)^2 (LlamaGen / GigaTok, "l2"); G = non-saturating on per-image mean logits
(Open-MAGVIT2) or hinge -mean D (LlamaGen / GigaTok). d_weight = gen_loss_weight when set (Open-MAGVIT2 0.1,
LlamaGen / GigaTok 0.5), else the VQGAN adaptive weight ||grad nll|| / ||grad G|| at the decoder's last layer,
clamped to [0, 1e4], times disc_weight. disc_factor is 0 before `disc_start` (global step) and `disc_factor` after.
Everything is computed in the dtype of the run, at least float32. Clips (B x C x T x H x W, the video tokenizer) use
the same objective: rec and LPIPS are means over all B*T frames, the discriminator is a 3-D one given as
`discriminator` (its per-sample mean logit feeds the non-saturating G loss).

Logged names follow Open-MAGVIT2 where it logs the same quantity: total_loss, nll_loss, reconstruct_loss,
perceptual_loss, d_weight, disc_factor, g_loss (= d_weight * disc_factor * G in training; disc_factor * G in
validation, as the reference), disc_loss (the whole D objective), non_saturated_d_loss (the D loss term, whatever
`disc_loss` is, the reference's name), logits_real, logits_fake, lecam_loss (unweighted); new quantities have new
names: g_loss_unweighted, lecam_real_ema, lecam_fake_ema. The quantizer's own terms are logged under their names.
"""
import inspect
from contextlib import contextmanager
from typing import Optional, TypedDict

import torch
from torch import nn

from ..component import Component, instantiate
from ..discriminator import NLayerDiscriminator
from ..quantizers import QuantizerOutput
from .gan import D_LOSSES, G_LOSSES, LeCamEMA, at_least_float32

PERCEPTUAL_PREFIX = "perceptual_loss."
RECONSTRUCTION_LOSSES = ("l1", "l2")


@contextmanager
def frozen(module: nn.Module):
    """Parameters of `module` do not require grad inside the block (no grads for them, no wasted compute)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def frames(x: torch.Tensor) -> torch.Tensor:
    """Images as they are; clips B x C x T x H x W as their B*T frames ((b, t) order): LPIPS is a per-frame loss."""
    return (x.transpose(1, 2).flatten(0, 1) if x.dim() == 5 else x).contiguous()


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """A logged constant as a tensor on the device: torch.tensor(v, device=cuda) would wait for the GPU, and a CPU
    tensor cannot be reduced by an NCCL `sync_dist`."""
    return torch.full((), float(value), device=like.device)


class VQLPIPSWithDiscriminator(Component):
    """Loss module holding the discriminator (trainable), the LeCam state and the frozen LPIPS net.

    The discriminator is the PatchGAN (`disc_ndf`, `disc_num_layers`, `disc_in_channels`) unless `discriminator`
    gives another component as class_path/init_args (e.g. taming.modules.dino_discriminator.DinoDiscriminator).
    LPIPS is built only when perceptual_weight > 0, from the `lpips` package's linear weights and the torchvision
    trunk in the torch hub cache (or `perceptual_trunk_path`). It stays in eval mode (dropout off, deterministic)
    even when the module is put in train mode, and it is left out of state_dict().
    """

    needs_features = False  # subclasses that use intermediate tokenizer features (GigaTok) set True

    def __init__(self, disc_start: int = 0, disc_factor: float = 1.0, disc_weight: float = 0.8,
                 gen_loss_weight: Optional[float] = 0.1, gen_adv_loss: str = "non_saturating",
                 reconstruction_loss: str = "l1", reconstruction_weight: float = 1.0, perceptual_weight: float = 1.0,
                 perceptual_net: str = "vgg", perceptual_trunk_path: Optional[str] = None, disc_in_channels: int = 3,
                 disc_num_layers: int = 3, disc_ndf: int = 64, disc_loss: str = "hinge",
                 lecam_loss_weight: Optional[float] = 0.005, lecam_ema_decay: float = 0.999,
                 discriminator: Optional[dict] = None):
        super().__init__()
        if disc_loss not in D_LOSSES:
            raise ValueError(f"disc_loss must be one of {sorted(D_LOSSES)}, got {disc_loss!r}")
        if gen_adv_loss not in G_LOSSES:
            raise ValueError(f"gen_adv_loss must be one of {sorted(G_LOSSES)}, got {gen_adv_loss!r}")
        if reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"reconstruction_loss must be one of {RECONSTRUCTION_LOSSES}, got {reconstruction_loss!r}")
        if perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {perceptual_weight}")
        self.disc_start, self.disc_factor, self.disc_weight = disc_start, disc_factor, disc_weight
        self.gen_loss_weight, self.perceptual_weight = gen_loss_weight, perceptual_weight
        self.reconstruction_loss, self.reconstruction_weight = reconstruction_loss, reconstruction_weight
        self.lecam_loss_weight = lecam_loss_weight or 0.0
        self.disc_loss_fn, self.gen_loss_fn = D_LOSSES[disc_loss], G_LOSSES[gen_adv_loss]
        self.discriminator = (instantiate(discriminator) if discriminator is not None
                              else NLayerDiscriminator(disc_in_channels, disc_ndf, disc_num_layers))
        self.lecam = LeCamEMA(lecam_ema_decay)
        self.perceptual_loss = None
        if perceptual_weight > 0:
            from ...pretrained import build_lpips

            self.perceptual_loss = build_lpips(perceptual_net, perceptual_trunk_path,
                                               option="model.init_args.lossconfig.perceptual_trunk_path")
        self._register_state_dict_hook(_drop_perceptual_keys)
        self._register_load_state_dict_pre_hook(_drop_perceptual_keys_on_load)
        self.register_load_state_dict_post_hook(_ignore_missing_perceptual_keys)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.perceptual_loss is not None:
            self.perceptual_loss.eval()
        return self

    def adversarial_factor(self, global_step: int) -> float:
        return self.disc_factor if global_step >= self.disc_start else 0.0

    def adaptive_weight(self, nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
        nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4)
        return torch.clamp(d_weight, 0.0, 1e4).detach() * self.disc_weight

    def reconstruction_terms(self, inputs: torch.Tensor, reconstructions: torch.Tensor):
        """(reconstruction loss, perceptual loss or None), both means over the batch (over its frames for clips)."""
        diff = at_least_float32(inputs) - at_least_float32(reconstructions)
        rec = diff.abs().mean() if self.reconstruction_loss == "l1" else diff.square().mean()
        perceptual = None
        if self.perceptual_loss is not None:
            perceptual = at_least_float32(self.perceptual_loss(frames(inputs), frames(reconstructions))).mean()
        return rec, perceptual

    def generator_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor, quantizer: QuantizerOutput,
                       global_step: int, last_layer: Optional[torch.Tensor] = None, split: str = "train"):
        """-> (loss, logs). inputs/reconstructions B x 3 x H x W in [-1, 1]; `quantizer` the quantizer's output
        (its weighted loss is added, its terms logged); last_layer (the decoder's output conv weight) is only used
        by the adaptive weight. `split` "train" logs the training quantities, anything else the evaluation ones."""
        training = split == "train"
        rec, perceptual = self.reconstruction_terms(inputs, reconstructions)
        nll = self.reconstruction_weight * rec
        logs = {f"{split}/reconstruct_loss": rec.detach()}
        if perceptual is not None:
            nll = nll + self.perceptual_weight * perceptual
            logs[f"{split}/perceptual_loss"] = perceptual.detach()
        with frozen(self.discriminator):
            g_loss = self.gen_loss_fn(self.discriminator(reconstructions.contiguous()))
        disc_factor = self.adversarial_factor(global_step)
        if self.gen_loss_weight is not None:
            d_weight = float(self.gen_loss_weight)
        elif disc_factor > 0 and torch.is_grad_enabled():
            if last_layer is None:
                raise ValueError("gen_loss_weight: null (adaptive GAN weight) needs the decoder's last layer, and none "
                                 "was given; set gen_loss_weight to a number")
            d_weight = self.adaptive_weight(nll, g_loss, last_layer)
        else:
            d_weight = 0.0
        loss = nll + d_weight * disc_factor * g_loss + quantizer.loss
        logs.update({f"{split}/{name}": value for name, value in quantizer.terms.items()})
        logs.update({f"{split}/nll_loss": nll.detach(),
                     f"{split}/g_loss": ((d_weight if training else 1.0) * disc_factor * g_loss).detach()})
        if training:
            logs.update({
                f"{split}/total_loss": loss.detach(), f"{split}/g_loss_unweighted": g_loss.detach(),
                f"{split}/d_weight": _scalar(d_weight, inputs) if isinstance(d_weight, float) else d_weight.detach(),
                f"{split}/disc_factor": _scalar(disc_factor, inputs),
            })
        return loss, logs

    def discriminator_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor, global_step: int,
                           update_lecam: bool = True, split: str = "train"):
        """-> (loss, logs, lecam_state). Pass reconstructions detached. lecam_state is the (real, fake) EMA pair
        after this batch when update_lecam (commit it with `self.lecam.commit(*lecam_state)` once the step is
        accepted), else None; the penalty uses those updated averages, as the reference."""
        logits_real = self.discriminator(inputs.contiguous())
        logits_fake = self.discriminator(reconstructions.contiguous())
        d_loss = self.disc_loss_fn(logits_real, logits_fake)
        loss = d_loss
        lecam_state = None
        logs = {f"{split}/non_saturated_d_loss": d_loss.detach(),
                f"{split}/logits_real": at_least_float32(logits_real.detach()).mean(),
                f"{split}/logits_fake": at_least_float32(logits_fake.detach()).mean()}
        if self.lecam_loss_weight:
            if update_lecam:
                lecam_state = self.lecam.next_state(logits_real, logits_fake)
                real_ema, fake_ema = lecam_state
            else:
                real_ema, fake_ema = self.lecam.logits_real_ema, self.lecam.logits_fake_ema
            lecam = self.lecam.penalty(logits_real, logits_fake, real_ema, fake_ema)
            loss = loss + self.lecam_loss_weight * lecam
            logs.update({f"{split}/lecam_loss": lecam.detach(), f"{split}/lecam_real_ema": real_ema.detach(),
                         f"{split}/lecam_fake_ema": fake_ema.detach()})
        loss = self.adversarial_factor(global_step) * loss
        logs[f"{split}/disc_loss"] = loss.detach()
        return loss, logs, lecam_state


def _drop_perceptual_keys(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + PERCEPTUAL_PREFIX)]:
        del state_dict[key]


def _drop_perceptual_keys_on_load(state_dict, prefix, *args):
    """Released Open-MAGVIT2 checkpoints carry their LPIPS weights; ours come from the lpips package."""
    for key in [k for k in state_dict if k.startswith(prefix + PERCEPTUAL_PREFIX)]:
        del state_dict[key]


def _ignore_missing_perceptual_keys(module, incompatible_keys):
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if ("." + PERCEPTUAL_PREFIX) not in ("." + k)]


# The YAML `lossconfig` mapping of taming.models.lfqgan.VQModel: the constructor's keyword arguments with their
# types (validated by the CLI), plus Open-MAGVIT2's weights of the LFQ terms (handed to the quantizer).
LossConfig = TypedDict("LossConfig", {**{name: p.annotation for name, p in
                                         inspect.signature(VQLPIPSWithDiscriminator.__init__).parameters.items()
                                         if name != "self"}, "codebook_weight": float, "commit_weight": float},
                       total=False)

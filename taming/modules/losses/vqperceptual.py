"""Generator and discriminator objectives of Open-MAGVIT2 (`VQLPIPSWithDiscriminator`).

Generator:     mean|x - x_hat| + perceptual_weight * mean LPIPS(x, x_hat)
               + d_weight * disc_factor * softplus(-mean_patch D(x_hat))      (non-saturating, per image)
               + codebook_weight * (H_sample - H_codebook) + commit_weight * commitment
Discriminator: disc_factor * (D loss(D(x), D(sg(x_hat))) + lecam_loss_weight * LeCam)
d_weight = gen_loss_weight when set (the released recipes: 0.1), else the VQGAN adaptive weight
||grad nll|| / ||grad g|| at the decoder's last layer, clamped to [0, 1e4], times disc_weight.
disc_factor is 0 before `disc_start` (global step, i.e. batches) and `disc_factor` from then on.
"""
import inspect
from contextlib import contextmanager
from typing import Optional, TypedDict

import torch
from torch import nn

from ..discriminator import NLayerDiscriminator
from .gan import D_LOSSES, LeCamEMA, non_saturating_g_loss

PERCEPTUAL_PREFIX = "perceptual_loss."


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


class VQLPIPSWithDiscriminator(nn.Module):
    """Loss module holding the PatchGAN discriminator (trainable), LeCam state and the frozen LPIPS net.

    LPIPS is built only when perceptual_weight > 0, from the `lpips` package's linear weights and the
    torchvision trunk in the torch hub cache (or `perceptual_trunk_path`). It stays in eval mode (dropout
    off, deterministic) even when the module is put in train mode, and it is left out of state_dict().
    """

    def __init__(self, disc_start: int = 0, disc_factor: float = 1.0, disc_weight: float = 0.8,
                 gen_loss_weight: Optional[float] = 0.1, perceptual_weight: float = 1.0, perceptual_net: str = "vgg",
                 perceptual_trunk_path: Optional[str] = None, codebook_weight: float = 0.1,
                 commit_weight: float = 0.25, disc_in_channels: int = 3, disc_num_layers: int = 3,
                 disc_ndf: int = 64, disc_loss: str = "hinge", lecam_loss_weight: Optional[float] = 0.005,
                 lecam_ema_decay: float = 0.999):
        super().__init__()
        if disc_loss not in D_LOSSES:
            raise ValueError(f"disc_loss must be one of {sorted(D_LOSSES)}, got {disc_loss!r}")
        if perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {perceptual_weight}")
        self.disc_start, self.disc_factor, self.disc_weight = disc_start, disc_factor, disc_weight
        self.gen_loss_weight, self.perceptual_weight = gen_loss_weight, perceptual_weight
        self.codebook_weight, self.commit_weight = codebook_weight, commit_weight
        self.lecam_loss_weight = lecam_loss_weight or 0.0
        self.disc_loss_name = disc_loss
        self.disc_loss_fn = D_LOSSES[disc_loss]
        self.discriminator = NLayerDiscriminator(disc_in_channels, disc_ndf, disc_num_layers)
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

    def generator_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor, entropy_aux_loss: torch.Tensor,
                       commitment: torch.Tensor, global_step: int, last_layer: Optional[torch.Tensor] = None,
                       split: str = "train"):
        """-> (loss, logs). inputs/reconstructions B x 3 x H x W in [-1, 1]; entropy_aux_loss = H_s - H_cb
        (unweighted, from the quantizer); last_layer (decoder.conv_out.weight) only for the adaptive weight."""
        rec_loss = (inputs.float() - reconstructions.float()).abs().mean()
        nll = rec_loss
        logs = {f"{split}/reconstruct_loss": rec_loss.detach()}
        if self.perceptual_loss is not None:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous()).float().mean()
            nll = nll + self.perceptual_weight * p_loss
            logs[f"{split}/perceptual_loss"] = p_loss.detach()
        with frozen(self.discriminator):
            logits_fake = self.discriminator(reconstructions.contiguous())
        g_loss = non_saturating_g_loss(logits_fake)
        disc_factor = self.adversarial_factor(global_step)
        # Constants stay Python floats and are logged as torch.full tensors on the inputs' device: torch.tensor(v,
        # device=cuda) would be a host-to-device copy that waits for the GPU, and a CPU tensor cannot be reduced
        # by an NCCL `sync_dist` (validation).
        if self.gen_loss_weight is not None:
            d_weight = float(self.gen_loss_weight)
        elif disc_factor > 0 and last_layer is not None and torch.is_grad_enabled():
            d_weight = self.adaptive_weight(nll, g_loss, last_layer)
        else:
            d_weight = 0.0
        loss = (nll + d_weight * disc_factor * g_loss + self.codebook_weight * entropy_aux_loss
                + self.commit_weight * commitment)
        logs.update({
            f"{split}/total_loss": loss.detach(), f"{split}/nll_loss": nll.detach(), f"{split}/g_loss": g_loss.detach(),
            f"{split}/d_weight": torch.full((), d_weight, device=inputs.device) if isinstance(d_weight, float)
            else d_weight.detach(),
            f"{split}/disc_factor": torch.full((), float(disc_factor), device=inputs.device),
            f"{split}/entropy_loss": entropy_aux_loss.detach(), f"{split}/commit_loss": commitment.detach(),
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
        disc_factor = self.adversarial_factor(global_step)
        loss = d_loss
        lecam_state = None
        logs = {f"{split}/disc_loss": d_loss.detach(),
                f"{split}/logits_real": logits_real.detach().float().mean(),
                f"{split}/logits_fake": logits_fake.detach().float().mean()}
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
        loss = disc_factor * loss
        logs[f"{split}/d_total_loss"] = loss.detach()
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


# The YAML `lossconfig` mapping: the constructor's keyword arguments with their types (validated by the CLI).
LossConfig = TypedDict("LossConfig", {name: p.annotation for name, p in
                                      inspect.signature(VQLPIPSWithDiscriminator.__init__).parameters.items()
                                      if name != "self"}, total=False)

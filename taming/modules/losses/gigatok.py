"""GigaTok's tokenizer objective: `GigaTokLoss` = the VQGAN objective plus

- semantic regularisation, semantic_weight * -mean cos(student, teacher): the student is the decoder's projection
  features["semantic"] (B x g*g x D), the teacher a frozen DINOv2 (`DinoV2Teacher`) on the input images;
- while global_step < aux_loss_end (GigaTok's warm-up of the hybrid architecture; 0 = never), in training only:
  feature reconstruction, fea_rec_loss_weight * d(sg(features["cnn"]), features["rec_spatial"]) with d = MSE
  ("mse") or mean(1 - cosine over channels) ("cosine"); and, with use_direct_rec_loss, the direct reconstruction
  (the CNN decoder applied to the CNN encoder output) scored like the main one: reconstruction, perceptual and
  adversarial terms, plus the discriminator's loss on it.

Generator objective (bracketed terms during the warm-up only):
    reconstruction_weight * (rec + [rec_direct]) + perceptual_weight * (LPIPS + [LPIPS_direct])
    + gen_loss_weight * disc_factor * (G + [G_direct]) + quantizer loss + [fea_rec] + semantic_weight * semantic
GigaTok's `disc_weight` (0.5) scales both the generator's adversarial term and the discriminator's loss; here
that is disc_factor = 0.5 with gen_loss_weight = 1.0 (the defaults). The discriminator's loss on the direct
reconstruction, disc_factor * D loss(D(x), D(sg(x_direct))), is returned inside the generator loss (on detached
images, so only the discriminator gets its gradient): `VQGAN` hands `discriminator_loss` the main reconstruction
only. It is active only when the discriminator starts before aux_loss_end, which no released recipe does.

Logged (new names; the inherited ones keep theirs): semantic_loss, fea_rec_loss (both unweighted),
direct_rec_loss, direct_perceptual_loss, direct_g_loss (weighted, as g_loss), direct_disc_loss.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from ..quantizers import QuantizerOutput
from ..semantic import DinoV2Teacher, semantic_alignment_loss
from .gan import at_least_float32
from .vqperceptual import VQLPIPSWithDiscriminator, frozen

FEATURE_LOSSES = ("mse", "cosine")


def feature_reconstruction_loss(target: torch.Tensor, prediction: torch.Tensor, kind: str) -> torch.Tensor:
    """target (no gradient) vs prediction, both B x C x g x g: mean squared error, or mean of 1 - cosine similarity
    over the channel dimension."""
    target, prediction = at_least_float32(target.detach()), at_least_float32(prediction)
    if kind == "mse":
        return (target - prediction).square().mean()
    return (1 - F.cosine_similarity(target, prediction, dim=1)).mean()


class GigaTokLoss(VQLPIPSWithDiscriminator):
    """VQLPIPSWithDiscriminator with GigaTok's defaults (L2, hinge, GAN from step 20000 at 0.5, no LeCam) and terms.

    semantic_weight: 0 disables the semantic loss (no teacher is built). teacher: torch hub name of the DINOv2
        teacher (see taming.modules.semantic.DINOV2_TEACHERS; GigaTok: dinov2_vitb14), weights from
        `teacher_weights_path` or the torch hub cache; frozen, eval mode, not in state_dict().
    fea_rec_loss_weight / fea_rec_loss_type ("mse" | "cosine"), use_direct_rec_loss, aux_loss_end: the warm-up.
    Other keyword arguments go to VQLPIPSWithDiscriminator (perceptual_weight, discriminator, disc_ndf, ...).
    """

    needs_features = True

    def __init__(self, disc_start: int = 20000, disc_factor: float = 0.5, gen_loss_weight: float = 1.0,
                 gen_adv_loss: str = "hinge", reconstruction_loss: str = "l2",
                 lecam_loss_weight: Optional[float] = None, semantic_weight: float = 0.5,
                 teacher: str = "dinov2_vitb14", teacher_weights_path: Optional[str] = None,
                 fea_rec_loss_weight: float = 1.0, fea_rec_loss_type: str = "mse", use_direct_rec_loss: bool = True,
                 aux_loss_end: int = 15000, **kwargs):
        if gen_loss_weight is None:
            raise ValueError("GigaTokLoss needs a fixed gen_loss_weight (GigaTok's adaptive GAN weight is off in "
                             "every release); set it to a number, e.g. 1.0 with disc_factor 0.5")
        if fea_rec_loss_type not in FEATURE_LOSSES:
            raise ValueError(f"fea_rec_loss_type must be one of {FEATURE_LOSSES}, got {fea_rec_loss_type!r}")
        if min(semantic_weight, fea_rec_loss_weight, aux_loss_end) < 0:
            raise ValueError(f"need semantic_weight, fea_rec_loss_weight, aux_loss_end >= 0; got {semantic_weight}, "
                             f"{fea_rec_loss_weight}, {aux_loss_end}")
        super().__init__(disc_start=disc_start, disc_factor=disc_factor, gen_loss_weight=gen_loss_weight,
                         gen_adv_loss=gen_adv_loss, reconstruction_loss=reconstruction_loss,
                         lecam_loss_weight=lecam_loss_weight, **kwargs)
        self.semantic_weight = semantic_weight
        self.fea_rec_loss_weight, self.fea_rec_loss_type = fea_rec_loss_weight, fea_rec_loss_type
        self.use_direct_rec_loss, self.aux_loss_end = use_direct_rec_loss, aux_loss_end
        self.teacher = None
        if semantic_weight > 0:
            self.teacher = DinoV2Teacher(teacher, teacher_weights_path,
                                         option="model.init_args.loss.init_args.teacher_weights_path")

    def aux_active(self, global_step: int) -> bool:
        """Whether the warm-up terms apply at this step."""
        return global_step < self.aux_loss_end

    def generator_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor, quantizer: QuantizerOutput,
                       global_step: int, last_layer: Optional[torch.Tensor] = None, split: str = "train",
                       features: Optional[dict] = None, direct_reconstruction: Optional[torch.Tensor] = None):
        """-> (loss, logs). features: the tokenizer's intermediate features ("cnn", "rec_spatial", "semantic");
        direct_reconstruction: B x 3 x H x W, needed in training while the warm-up runs with use_direct_rec_loss."""
        loss, logs = super().generator_loss(inputs, reconstructions, quantizer, global_step, last_layer, split)
        features = features or {}
        if self.teacher is not None:
            semantic = semantic_alignment_loss(_feature(features, "semantic"), self.teacher(inputs))
            loss = loss + self.semantic_weight * semantic
            logs[f"{split}/semantic_loss"] = semantic.detach()
        if split == "train" and self.aux_active(global_step):
            if self.fea_rec_loss_weight > 0:
                fea_rec = feature_reconstruction_loss(_feature(features, "cnn"), _feature(features, "rec_spatial"),
                                                      self.fea_rec_loss_type)
                loss = loss + self.fea_rec_loss_weight * fea_rec
                logs["train/fea_rec_loss"] = fea_rec.detach()
            if self.use_direct_rec_loss:
                if direct_reconstruction is None:
                    raise ValueError("use_direct_rec_loss needs direct_reconstruction (the CNN decoder applied to "
                                     "features['cnn']) while global_step < aux_loss_end; train with "
                                     "taming.models.gigatok.HybridVQGAN, or set use_direct_rec_loss false")
                direct, direct_logs = self.direct_terms(inputs, direct_reconstruction, global_step)
                loss = loss + direct
                logs.update(direct_logs)
        if split == "train":
            logs["train/total_loss"] = loss.detach()
        return loss, logs

    def direct_terms(self, inputs: torch.Tensor, direct: torch.Tensor, global_step: int):
        """Reconstruction, perceptual and (after disc_start) adversarial terms of the direct reconstruction, plus
        the discriminator's loss on it (detached input) -> (sum, logs)."""
        rec, perceptual = self.reconstruction_terms(inputs, direct)
        total = self.reconstruction_weight * rec
        logs = {"train/direct_rec_loss": rec.detach()}
        if perceptual is not None:
            total = total + self.perceptual_weight * perceptual
            logs["train/direct_perceptual_loss"] = perceptual.detach()
        factor = self.adversarial_factor(global_step)
        if factor > 0:
            with frozen(self.discriminator):
                g_direct = self.gen_loss_weight * factor * self.gen_loss_fn(self.discriminator(direct.contiguous()))
            d_direct = factor * self.disc_loss_fn(self.discriminator(inputs.contiguous()),
                                                  self.discriminator(direct.detach().contiguous()))
            total = total + g_direct + d_direct
            logs.update({"train/direct_g_loss": g_direct.detach(), "train/direct_disc_loss": d_direct.detach()})
        return total, logs


def _feature(features: dict, name: str) -> torch.Tensor:
    if name not in features:
        hint = (" (the decoder's semantic projection: build HybridDecoder with distill_depth, GigaTok 3, or set "
                "semantic_weight 0)" if name == "semantic" else " (HybridEncoder / HybridDecoder provide it)")
        raise ValueError(f"GigaTokLoss needs the tokenizer feature {name!r}{hint}; got features {sorted(features)}")
    return features[name]

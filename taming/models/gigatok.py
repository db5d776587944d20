"""`HybridVQGAN`: training of GigaTok's hybrid CNN-Transformer tokenizers.

A `VQGAN` whose generator loss is `GigaTokLoss` and that, while the auxiliary warm-up runs (global_step <
loss.aux_loss_end, training only), also decodes the CNN encoder output with the CNN decoder alone (the "direct"
reconstruction) for the loss. Optimiser, schedules, clipping, EMA, non-finite handling, checkpoints (which
`taming.load_tokenizer` reads without a config) and validation with the EMA weights are VQGAN's; only the
defaults follow GigaTok: AdamW (0.9, 0.95), weight decay 1e-4 on every parameter (GigaTok's DDP path), lr 1e-4,
"cosine" = GigaTok's cosine_v2 (warm-up from lr/100, then half-cosine to min_learning_rate 1e-5), gradient norm
clipped at 10 per network, EMA off (decay 0.9999 when on).

Sharded training (FSDP, the XL-XXL recipe; see `taming.models.protocol`): the encoder and the decoder are sharded,
one FSDP unit per transformer layer (`auto_wrap_policy`); the quantizer and the loss module (discriminator, frozen
LPIPS and teacher) stay whole on every rank, as GigaTok keeps its discriminator data-parallel: the discriminator is
frozen during the generator loss by switching requires_grad, which sharded parameters do not allow, and the
codebook-usage window holds code indices, which FSDP's bf16 buffer cast would corrupt. The direct reconstruction is
refused under FSDP (it calls the CNN decoder outside the decoder's sharded forward; the XL-XXL recipe has
aux_loss_end 0).
"""
from typing import Optional, Sequence

from lightning.pytorch.strategies import DDPStrategy

from ..modules.component import register
from ..modules.losses import GigaTokLoss
from .vqgan import VQGAN


@register
class HybridVQGAN(VQGAN):
    """Training module of a HybridEncoder / VectorQuantizer / HybridDecoder tokenizer (1-D or 2-D tokens).

    encoder, quantizer, decoder: components as class_path/init_args (see configs/gigatok/). loss: a GigaTokLoss as
    class_path/init_args (default: GigaTokLoss(), which needs the LPIPS VGG16 and DINOv2 ViT-B/14 weight files).
    With semantic regularisation the decoder's projection must match the teacher: distill_dim = teacher width and
    the decoder's g x g grid = the teacher's 16 x 16 patch grid. Other keyword arguments: VQGAN's and
    TrainingProtocol's (warmup_steps, use_ema, ...).
    """

    def __init__(self, encoder, quantizer, decoder, loss=None, learning_rate: float = 1e-4, optimizer: str = "adamw",
                 betas: Sequence[float] = (0.9, 0.95), weight_decay: float = 1e-4, lr_schedule: str = "cosine",
                 warmup_start: Optional[float] = 0.01, min_learning_rate: float = 1e-5,
                 gradient_clip_val: Optional[float] = 10.0, ema_decay: float = 0.9999, **kwargs):
        super().__init__(encoder, quantizer, decoder, loss=GigaTokLoss() if loss is None else loss,
                         learning_rate=learning_rate, optimizer=optimizer, betas=betas, weight_decay=weight_decay,
                         lr_schedule=lr_schedule, warmup_start=warmup_start, min_learning_rate=min_learning_rate,
                         gradient_clip_val=gradient_clip_val, ema_decay=ema_decay, **kwargs)
        if not isinstance(self.loss, GigaTokLoss):
            raise TypeError(f"HybridVQGAN needs a taming.modules.losses.GigaTokLoss, got {type(self.loss).__name__}; "
                            "set model.init_args.loss.class_path: taming.modules.losses.GigaTokLoss")
        if self.loss.teacher is not None:
            self._check_student(self.loss.teacher)

    def _check_student(self, teacher) -> None:
        transformer = self.decoder.transformer
        mlp = getattr(transformer, "distill_mlp", None)
        tokens, width = transformer.grid_size ** 2, None if mlp is None else mlp[-1].out_features
        if (tokens, width) != (teacher.num_tokens, teacher.embed_dim):
            side = int(teacher.num_tokens ** 0.5)
            raise ValueError(f"semantic regularisation aligns the decoder's projection ({tokens} grid tokens of width "
                             f"{width or 'none, distill_depth unset'}) with {teacher.arch} patch tokens "
                             f"({teacher.num_tokens} x {teacher.embed_dim}); set the decoder's distill_depth (GigaTok "
                             f"3), distill_dim {teacher.embed_dim} and a {side} x {side} grid (image_size / "
                             "2^(len(ch_mult) - 1)), or semantic_weight 0")

    def setup(self, stage: str) -> None:
        if isinstance(self.trainer.strategy, DDPStrategy) and self.loss.teacher is None and \
                self.decoder.transformer.distill_depth:
            raise ValueError("the decoder's semantic projection (distill_depth) gets no gradient with semantic_weight 0, "
                             "and DDP refuses unused parameters: set the decoder's distill_depth null or the loss's "
                             "semantic_weight > 0")
        if self.sharded and self.loss.use_direct_rec_loss and self.loss.aux_loss_end > 0:
            raise ValueError("the direct reconstruction is not supported with FSDP (it runs the CNN decoder outside the "
                             "decoder's sharded forward); set loss aux_loss_end 0 (as GigaTok's XL-XXL recipe) or "
                             "use_direct_rec_loss false")
        super().setup(stage)

    def generator_loss(self, x, out, split: str = "train"):
        """GigaTokLoss's objective; in training during the warm-up also on the direct reconstruction."""
        direct = None
        if split == "train" and self.loss.use_direct_rec_loss and self.loss.aux_active(self.global_step):
            direct = self.decoder.decode_cnn_features(out.features["cnn"])
        return self.loss.generator_loss(x, out.reconstruction, out.quantizer, self.global_step,
                                        last_layer=self.adaptive_weight_layer(), split=split, features=out.features,
                                        direct_reconstruction=direct)

"""`VQModel`: the Open-MAGVIT2 LFQ-GAN tokenizer with the reference's YAML keys (`ddconfig`, `lossconfig`, ...).

A thin front-end of `taming.models.vqgan.VQGAN`: it builds the MAGVIT-2 encoder/decoder from `ddconfig` and the LFQ
from the quantizer keys, hands Open-MAGVIT2's `lossconfig.codebook_weight` (entropy) and `commit_weight` to the
LFQ (which weighs its own loss terms), and uses the reference's optimiser (Adam, betas (0.5, 0.9), no weight decay)
and schedules (constant; "linear-warmup" / "linear-warmup_cosine-decay" over `warmup_epochs`; `lr_drop_epoch`).
"""
from typing import Optional, Sequence

from ..modules.component import register
from ..modules.losses import LossConfig, VQLPIPSWithDiscriminator
from ..released.open_magvit2 import DDConfig, components
from .vqgan import VQGAN

SCHEDULERS = ("constant", "linear-warmup", "linear-warmup_cosine-decay")


@register
class VQModel(VQGAN):
    """Open-MAGVIT2 LFQ-GAN tokenizer training module.

    ddconfig: encoder/decoder architecture (`ch`, `ch_mult`, `num_res_blocks`, `z_channels`, `adaptive_gn`...).
    lossconfig: keyword arguments of `taming.modules.losses.VQLPIPSWithDiscriminator`, plus `codebook_weight`
        (weight of the LFQ entropy term, 0.1) and `commit_weight` (0.25).
    embed_dim / n_embed: LFQ bits per token and codebook size (= 2**embed_dim). bit_order: "msb" (v1) / "lsb" (v2).
    scheduler_type: "constant", "linear-warmup", "linear-warmup_cosine-decay" (`warmup_epochs`,
        `min_learning_rate`); `lr_drop_epoch`/`lr_drop_rate`: LR x rate from each listed epoch on (v2 recipe).
    gradient_clip_val: max grad norm, applied to the generator and discriminator separately (None = off).
    max_nonfinite_steps: a non-finite loss skips the batch; this many in a row save a checkpoint and stop.
    Speed: channels_last, torch_compile (encoder, decoder, discriminator), tf32, fused_adam.
    """

    architecture_hparams = ("ddconfig", "embed_dim", "n_embed", "bit_order", "lossconfig.discriminator")
    build_components = staticmethod(components)  # ddconfig, embed_dim, bit_order, **LFQ settings -> modules
    discriminator_class = "taming.modules.discriminator.NLayerDiscriminator"  # unless lossconfig names one

    def __init__(self, ddconfig: DDConfig, lossconfig: Optional[LossConfig] = None, embed_dim: int = 18,
                 n_embed: int = 262144, bit_order: str = "msb", sample_minimization_weight: float = 1.0,
                 batch_maximization_weight: float = 1.0, entropy_temperature: float = 0.01,
                 codebook_entropy_mode: str = "exact", entropy_sync: bool = False,
                 learning_rate: float = 1e-4, betas: Sequence[float] = (0.5, 0.9),
                 scheduler_type: str = "constant", warmup_epochs: float = 1.0, min_learning_rate: float = 0.0,
                 lr_drop_epoch: Optional[Sequence[int]] = None, lr_drop_rate: float = 0.1,
                 gradient_clip_val: Optional[float] = None, use_ema: bool = True, ema_decay: float = 0.999,
                 max_nonfinite_steps: int = 20, image_key: str = "image", channels_last: bool = False,
                 torch_compile: bool = False, tf32: bool = False, fused_adam: bool = False):
        if scheduler_type not in SCHEDULERS:
            raise ValueError(f"scheduler_type must be one of {SCHEDULERS}, got {scheduler_type!r}")
        if 2**embed_dim != n_embed:
            raise ValueError(f"n_embed {n_embed} must be 2**embed_dim = {2**embed_dim} for LFQ")
        loss_args = dict(lossconfig or {})  # (a new name: save_hyperparameters reads `lossconfig` from this frame)
        lfq_weights = {"entropy_loss_weight": loss_args.pop("codebook_weight", 0.1),
                       "commitment_weight": loss_args.pop("commit_weight", 0.25)}
        if loss_args.get("discriminator") is None:
            loss_args["discriminator"] = {"class_path": self.discriminator_class, "init_args": {
                "input_nc": loss_args.pop("disc_in_channels", 3), "ndf": loss_args.pop("disc_ndf", 64),
                "n_layers": loss_args.pop("disc_num_layers", 3)}}
        try:
            loss = VQLPIPSWithDiscriminator(**loss_args)
        except TypeError as err:
            raise TypeError(f"bad model.init_args.lossconfig: {err}; see VQLPIPSWithDiscriminator's arguments") from None
        parts = self.build_components(
            ddconfig, embed_dim, bit_order, sample_minimization_weight=sample_minimization_weight,
            batch_maximization_weight=batch_maximization_weight, entropy_temperature=entropy_temperature,
            entropy_sync=entropy_sync, codebook_entropy_mode=codebook_entropy_mode, **lfq_weights)
        super().__init__(**parts, loss=loss, image_key=image_key, channels_last=channels_last,
                         torch_compile=torch_compile, learning_rate=learning_rate, optimizer="adam", betas=betas,
                         fused_optimizer=fused_adam, lr_schedule=scheduler_type,
                         warmup_epochs=warmup_epochs if scheduler_type != "constant" else 0.0,
                         min_learning_rate=min_learning_rate, lr_drop_epoch=lr_drop_epoch, lr_drop_rate=lr_drop_rate,
                         gradient_clip_val=gradient_clip_val, use_ema=use_ema, ema_decay=ema_decay,
                         max_nonfinite_steps=max_nonfinite_steps, tf32=tf32)

from .gan import (D_LOSSES, G_LOSSES, LeCamEMA, hinge_d_loss, hinge_g_loss, non_saturating_d_loss,
                  non_saturating_g_loss, per_image_logits, vanilla_d_loss)
from .vqperceptual import LossConfig, VQLPIPSWithDiscriminator
from .gigatok import GigaTokLoss

__all__ = ["D_LOSSES", "G_LOSSES", "GigaTokLoss", "LeCamEMA", "LossConfig", "VQLPIPSWithDiscriminator", "hinge_d_loss",
           "hinge_g_loss", "non_saturating_d_loss", "non_saturating_g_loss", "per_image_logits", "vanilla_d_loss"]

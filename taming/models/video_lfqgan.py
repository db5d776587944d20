"""`VQModel`: the Open-MAGVIT2 video tokenizer's training module (SEED-Voken `video_lfqgan.VQModel` keys).

The image `taming.models.lfqgan.VQModel` with the causal 3-D encoder/decoder (`taming.modules.video`), the 3-D
PatchGAN (`NLayerDiscriminator3D`) and LSB-first indices; batches hold clips B x 3 x T x H x W in [-1, 1] under the
key `image` (`taming.data.VideoClips`). The objective is the image one applied to clips: L1 and LPIPS averaged over
all B*T frames, the non-saturating G loss on each clip's mean 3-D logit (release weight 0.3), hinge + LeCam for D
(0.05), LFQ entropy (0.1) and commitment (0.25), EMA 0.999.

`image_pretrain_path` initialises a new run from an Open-MAGVIT2 v2 image tokenizer checkpoint (released or ours) by
MAGVIT-2's last-temporal-slice inflation (`taming.released.open_magvit2_video.inflate_image_state`): weights and EMA
shadows (shadows the image checkpoint lacks start from the inflated weights instead of the release's random ones).
It runs when `fit` starts without a checkpoint to resume (after Lightning's restore step, before the first batch), so
a resumed run (and `load_tokenizer`) never needs the image file. `grad_checkpointing` recomputes the ResBlocks' activations in the backward (less memory, more compute).
"""
from pathlib import Path
from typing import Optional

import torch

from ..modules.component import register
from ..modules.ema import EMA_PREFIX, shadow_key
from ..released import open_magvit2_video
from .lfqgan import VQModel as ImageVQModel


@register
class VQModel(ImageVQModel):
    """Video tokenizer training module: every argument of `taming.models.lfqgan.VQModel` (bit_order defaults to
    "lsb", as released), plus image_pretrain_path (see the module docstring) and grad_checkpointing."""

    build_components = staticmethod(open_magvit2_video.components)
    discriminator_class = "taming.modules.discriminator.NLayerDiscriminator3D"

    def __init__(self, image_pretrain_path: Optional[str] = None, grad_checkpointing: bool = False,
                 bit_order: str = "lsb", **kwargs):
        super().__init__(bit_order=bit_order, **kwargs)
        self.image_pretrain_path = image_pretrain_path
        self.encoder.grad_checkpointing = self.decoder.grad_checkpointing = grad_checkpointing

    # A fresh fit inflates after Lightning's restore step (where a resumed fit loads its checkpoint instead), before
    # the first batch; every DDP rank reads the same file, so no broadcast is needed.
    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._inflate_pending = stage == "fit" and bool(self.image_pretrain_path)
        self._inflated = False
        if self._inflate_pending and self.sharded:
            raise ValueError("image_pretrain_path is applied under DDP, not FSDP; start the run with strategy ddp (or "
                             "inflate once with VQModel.inflate_from_image and save a checkpoint to resume from)")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._inflate_pending = False  # resuming: the checkpoint holds the weights

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if getattr(self, "_inflate_pending", False):
            self.inflate_from_image(self.image_pretrain_path)
            self._inflate_pending, self._inflated = False, True

    def on_train_start(self) -> None:
        if not self._inflated:  # the EMA starts from the image model's EMA, not from the weights (the release's rule)
            super().on_train_start()

    @torch.no_grad()
    def inflate_from_image(self, path) -> None:
        """Encoder and decoder weights (and their EMA shadows) from an image tokenizer checkpoint (module docstring)."""
        if not Path(path).expanduser().is_file():
            raise FileNotFoundError(
                f"image_pretrain_path {path} does not exist; it should be an Open-MAGVIT2 v2 image tokenizer checkpoint "
                "with this config's ch, ch_mult, num_res_blocks and z_channels (the release inflates imagenet_128_L.ckpt "
                "from TencentARC/Open-MAGVIT2 on Hugging Face; put it under models/), or null for random weights")
        checkpoint = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
        image_state = checkpoint.get("state_dict", checkpoint)
        inflated = open_magvit2_video.inflate_image_state(image_state, self)
        own = self.state_dict()
        for key in [k for k in inflated if not k.startswith(EMA_PREFIX)]:
            own[key].copy_(inflated[key])
            if shadow_key(key) in own:  # shadows the image file lacks: the inflated weights, not random ones
                own[shadow_key(key)].copy_(inflated.get(shadow_key(key), inflated[key]))

"""The interface of tokenizer encoders and decoders, as `Quantizer` is the quantizers': what the tokenizer, the
losses and the token tools may ask of them. A component that lacks something a caller needs raises an error naming
it, never a silent default.

Token layouts: "sequence" (1-D: latents B x d x N, indices B x N), "grid" (2-D images: B x d x h x w, indices
B x h x w), "volume" (3-D, video: B x d x t x h x w, indices B x t x h x w).
"""
from typing import Tuple

import torch

from .component import Component

TOKEN_LAYOUTS = ("sequence", "grid", "volume")


def check_image_batch(x: torch.Tensor, channels: int, factor: int) -> None:
    """Raise a clear error unless x is a float B x channels x H x W batch with H, W divisible by `factor`."""
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"expected an image batch B x {channels} x H x W, got {shape}; add a batch dimension with x[None]")
    if x.shape[1] != channels:
        raise ValueError(f"expected {channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                         "images must be RGB in channel-first layout")
    if not x.is_floating_point():
        raise ValueError(f"expected a float image batch in [-1, 1], got {x.dtype}; convert with x.float() / 127.5 - 1")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by the downsampling factor {factor}; "
                         f"resize or crop to a multiple of {factor} (e.g. {h // factor * factor or factor}x{w // factor * factor or factor})")


class TokenEncoder(Component):
    """Inputs B x in_channels x *size in [-1, 1] -> latents B x d x *token_shape(*size).

    Declares `check_input(x)`, `in_channels`, `token_layout` (one of TOKEN_LAYOUTS), `downsample_factor` (every input side must be a
    multiple of it; for grids it is also the side of a token's patch) and `provides_features` (then
    `forward(x, return_features=True)` returns (latent, {name: tensor}) for the losses that read them).
    """

    in_channels: int = 3
    token_layout: str = "grid"
    downsample_factor: int
    provides_features: bool = False

    def check_input(self, x: torch.Tensor) -> None:
        """A clear error unless x is what this encoder takes (default: images, `check_image_batch`)."""
        check_image_batch(x, self.in_channels, self.downsample_factor)

    def token_shape(self, *size: int) -> Tuple[int, ...]:
        """Shape of one input's indices at spatial size `size` (H, W): (H / f, W / f) for grids. Sequence and volume
        encoders define their own."""
        if self.token_layout != "grid":
            raise NotImplementedError(f"{type(self).__name__} has {self.token_layout} tokens and must define "
                                      "token_shape()")
        if len(size) != 2:
            raise ValueError(f"{type(self).__name__} encodes images: token_shape takes (height, width), got {size}")
        return tuple(side // self.downsample_factor for side in size)


class TokenDecoder(Component):
    """Quantized latents B x d x *token_shape -> outputs B x out_channels x *size, unclamped (nominally [-1, 1]).

    `last_layer()` is the weight of the output layer (the adaptive GAN weight differentiates through it);
    `provides_features` as for encoders.
    """

    provides_features: bool = False

    def last_layer(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not declare its output layer (last_layer()), which the "
                                  "adaptive GAN weight (gen_loss_weight: null) needs; set gen_loss_weight to a number "
                                  "or define last_layer()")


def check_components(encoder, quantizer, decoder) -> None:
    """The three parts of a tokenizer implement their interfaces (errors name the part and the contract)."""
    from .quantizers import Quantizer

    for part, module, contract in (("encoder", encoder, TokenEncoder), ("quantizer", quantizer, Quantizer),
                                   ("decoder", decoder, TokenDecoder)):
        if not isinstance(module, contract):
            raise TypeError(f"the {part} {type(module).__name__} does not implement {contract.__module__}."
                            f"{contract.__name__}; derive it from that class (it declares what the tokenizer and the "
                            "losses use)")
    if encoder.token_layout not in TOKEN_LAYOUTS:
        raise ValueError(f"{type(encoder).__name__}.token_layout is {encoder.token_layout!r}; expected one of "
                         f"{TOKEN_LAYOUTS}")

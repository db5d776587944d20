r"""Linear probing of a frozen autoregressive generator
(GigaTok's AR probe, the "Acc." of its tables; recipe in taming/probe.py).

    python scripts/linear_probe_ar.py --ckpt_path models/ar/gpt_B/last.ckpt --data_root data/imagenet
    python scripts/linear_probe_ar.py --ckpt_path c2i_B_256.pt --gpt_config GPT-B --tokenizer_ckpt vq_ds16_c2i.pt \
        --tokenizer_config VQ-16 --data_root data/imagenet
    python scripts/linear_probe_ar.py --ckpt_path models/demo_ar/version_0/last.ckpt --demo --image_size 64 --epochs 5

Features: the frozen tokenizer encodes each image; the frozen generator reads its tokens teacher-forced in eval mode
with the null class as the prefix (unconditional), and the hidden states after block --layer (default n_layer // 2:
6 for GPT-B) are mean-pooled over all positions, the class position included (B x dim). Probe, optimisers and data
as scripts/linear_probe_tokenizer.py (taming/probe.py): BatchNorm + linear, LARS 90 epochs (10 warm-up, blr 0.1)
or SGD; training images with GigaTok's augmentation, validation images center-cropped, both at --image_size (which
must give the generator's number of tokens). One process; results to --output (JSON).
"""
import argparse

import torch

from taming.cli.common import HelpFormatter, single_process_device
from taming.cli.linear_probe_tokenizer import add_probe_args, check_probe_args, probe
from taming.cli.sample import add_model_args, load_models


class ARProbeFeatures:
    """images B x 3 x S x S in [-1, 1] -> B x dim: mean over positions of the generator's hidden states after block
    `layer`, null-class prefix, the tokens the tokenizer gives the images."""

    def __init__(self, generator, tokenizer, layer: int):
        self.generator, self.tokenizer, self.layer = generator, tokenizer, layer

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenizer.encode(images)[1]
        null = torch.full((len(images),), self.generator.null_class, dtype=torch.long, device=images.device)
        return self.generator.hidden_states(tokens, null, self.layer).float().mean(dim=1)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(parser)
    parser.add_argument("--layer", type=int, default=None, help="blocks run before pooling; default: n_layer // 2")
    add_probe_args(parser)
    args = parser.parse_args(argv)
    check_probe_args(parser, args)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = single_process_device(args.device, "linear_probe_ar.py")
    try:
        generator, tokenizer = load_models(args, device)
    except (FileNotFoundError, ValueError, TypeError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from None
    generator.eval(), tokenizer.eval()
    n_layer = len(generator.backbone_blocks)
    layer = n_layer // 2 if args.layer is None else args.layer
    if not 1 <= layer <= n_layer:
        raise SystemExit(f"error: --layer must be in 1..{n_layer} (the generator's blocks), got {layer}")
    token_shape = tuple(tokenizer.token_shape(args.image_size, args.image_size))
    if torch.Size(token_shape).numel() != generator.num_tokens:
        raise SystemExit(f"error: at --image_size {args.image_size} the tokenizer gives {token_shape} tokens but the "
                         f"generator reads {generator.num_tokens}; pass the image size it was trained at")
    features = ARProbeFeatures(generator, tokenizer, layer)
    return probe(args, features, generator.dim, args.image_size, device,
                 f"hidden states after block {layer}/{n_layer} of {args.ckpt_path} (null class)", layer=layer,
                 n_layer=n_layer, condition="null class", image_size=args.image_size)


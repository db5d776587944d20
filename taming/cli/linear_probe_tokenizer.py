r"""Linear probing of a frozen GigaTok-style hybrid tokenizer (GigaTok's tokenizer probe; recipe in taming/probe.py).

    python scripts/linear_probe_tokenizer.py --ckpt_path models/gigatok/VQ_BL256/last.ckpt --data_root data/imagenet
    python scripts/linear_probe_tokenizer.py --ckpt_path VQ_BL256.pt --config_file VQ_BL256.yaml --data_root ...
    python scripts/linear_probe_tokenizer.py --ckpt_path models/gigatok/demo_hybrid/last.ckpt --demo --epochs 5

GigaTok's authors find that this probe does not predict a tokenizer's generation quality (their AR probe does); it is
here because it was asked for. Features, mean-pooled over the tokens (B x width):
  decoder (default for 1-D tokenizers): the decoder transformer's residual stream after layer distill_depth (the
      layer the semantic regularisation aligns with DINOv2), decoded from the quantized tokens;
  encoder (default for 2-D tokenizers): the encoder transformer's output after its final LayerNorm (before the 1x1
      convolution to the latent).
Probe, optimisers and data: taming/probe.py (--optimizer "lars", GigaTok's: 90 epochs, 10 of warm-up, blr 0.1;
LARS moves the weight matrix by about lr * 0.001 * |w| per step, which needs ImageNet's batch sizes and step counts;
for small data sets use "sgd"). --data_root: an ImageNet-style folder; --demo: the bundled photographs.
One process; prints the validation top-1 every --eval_every epochs and writes the results to --output (JSON).
"""
from pathlib import Path

import argparse
import json

import torch

from taming.cli.common import (HelpFormatter, add_tokenizer_args, load_tokenizer_from_args,
                               single_process_device)
from taming.probe import probe_datasets, train_linear_probe


class ProbeFeatures:
    """Mean-pooled transformer features of a hybrid tokenizer: images B x 3 x S x S -> B x width (see the top)."""

    def __init__(self, tokenizer, source: str, layer=None):
        encoder, decoder = tokenizer.encoder, tokenizer.decoder
        if not (hasattr(encoder, "transformer") and hasattr(decoder, "transformer")):
            raise SystemExit(f"error: linear probing reads the transformer features of GigaTok-style hybrid tokenizers "
                             f"(taming.modules.hybrid.HybridEncoder / HybridDecoder); this one has a "
                             f"{type(encoder).__name__} / {type(decoder).__name__}")
        self.tokenizer, self.source = tokenizer, source
        if source == "encoder":
            self.width, tap = encoder.transformer.width, encoder.transformer.ln_post
        else:
            layer = layer or decoder.transformer.distill_depth
            if layer is None or not 1 <= layer <= len(decoder.transformer.layers):
                raise SystemExit(f"error: --layer must name a decoder layer in 1..{len(decoder.transformer.layers)} "
                                 "(the default, the decoder's distill_depth, is unset for this tokenizer)")
            self.width, tap = decoder.transformer.width, decoder.transformer.layers[layer - 1]
        self.layer = layer
        tap.register_forward_hook(lambda module, inputs, output: setattr(self, "_tapped", output))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        quant, _ = self.tokenizer.encode(images)
        if self.source == "decoder":  # the decoder's transformer only (not its CNN)
            decoder = self.tokenizer.decoder
            z = decoder.post_quant_conv(quant[:, :, None] if quant.dim() == 3 else quant)
            decoder.transformer(z.flatten(2) if quant.dim() == 3 else z)
        return self._tapped.float().mean(dim=1)


def add_probe_args(parser: argparse.ArgumentParser) -> None:
    """Data and optimisation flags (shared with taming.cli.linear_probe_ar)."""
    parser.add_argument("--data_root", default=None, help="ImageNet-style root with train/ and val/ class folders")
    parser.add_argument("--demo", action="store_true", help="the bundled photographs instead of --data_root")
    parser.add_argument("--demo_length", type=int, default=512, help="training crops with --demo (validation: 1/4)")
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--warmup_epochs", type=float, default=10)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--optimizer", choices=("lars", "sgd"), default="lars")
    parser.add_argument("--blr", type=float, default=0.1, help="base learning rate: lr = blr * batch_size / 256")
    parser.add_argument("--eval_every", type=int, default=10, help="epochs between validations (and after the last)")
    parser.add_argument("--num_workers", type=int, default=8)
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32", help="of the frozen forward passes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file for the results")


def check_probe_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if min(args.epochs, args.batch_size, args.eval_every) < 1 or not 0 <= args.warmup_epochs <= args.epochs:
        parser.error("need epochs, batch_size, eval_every >= 1 and 0 <= warmup_epochs <= epochs")


def probe(args: argparse.Namespace, extract, width: int, size: int, device: torch.device, describe: str,
          **record) -> dict:
    """Train and validate the probe on the features `extract` gives with the flags of add_probe_args; the results dict (with
    `record` added; also written to --output)."""
    train, val, num_classes = probe_datasets(args.data_root, size, args.demo, args.demo_length)
    result = train_linear_probe(extract, width, train, val, num_classes, epochs=args.epochs,
                                warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                                optimizer=args.optimizer, blr=args.blr, eval_every=args.eval_every,
                                num_workers=args.num_workers, device=device, precision=args.precision,
                                seed=args.seed, describe=describe)
    result.update(record, checkpoint=str(args.ckpt_path), data="demo" if args.demo else str(args.data_root))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_tokenizer_args(parser)
    parser.add_argument("--features", choices=("decoder", "encoder"), default=None,
                        help="default: decoder for 1-D tokenizers, encoder for 2-D ones")
    parser.add_argument("--layer", type=int, default=None, help="decoder layer (1-based; default: distill_depth)")
    add_probe_args(parser)
    args = parser.parse_args(argv)
    check_probe_args(parser, args)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = single_process_device(args.device, "linear_probe_tokenizer.py")
    tokenizer = load_tokenizer_from_args(args, device)
    source = args.features or ("decoder" if tokenizer.token_layout == "sequence" else "encoder")
    features = ProbeFeatures(tokenizer, source, args.layer)
    layer = f" layer {features.layer}" if source == "decoder" else ""
    return probe(args, features, features.width, tokenizer.encoder.image_size, device,
                 f"{source}{layer} features of {args.ckpt_path}", features=source, layer=features.layer)


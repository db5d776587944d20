r"""Linear probing of a frozen GigaTok-style hybrid tokenizer (GigaTok's tokenizer probe, spec §3.4).

    python scripts/linear_probe_tokenizer.py --ckpt_path models/gigatok/VQ_BL256/last.ckpt --data_root data/imagenet
    python scripts/linear_probe_tokenizer.py --ckpt_path VQ_BL256.pt --config_file VQ_BL256.yaml --data_root ...
    python scripts/linear_probe_tokenizer.py --ckpt_path models/gigatok/demo_hybrid/last.ckpt --demo --epochs 5

GigaTok's authors find that this probe does not predict a tokenizer's generation quality (their AR probe does); it is
here because it was asked for. Features, mean-pooled over the tokens (B x width):
  decoder (default for 1-D tokenizers): the decoder transformer's residual stream after layer distill_depth (the
      layer the semantic regularisation aligns with DINOv2), decoded from the quantized tokens;
  encoder (default for 2-D tokenizers): the encoder transformer's output after its final LayerNorm (before the 1x1
      convolution to the latent).
Probe: BatchNorm1d(width, affine=False, eps 1e-6) + Linear(width, classes), weight truncated normal std 0.01, bias 0
(MoCo v3). Optimiser (--optimizer): "lars", GigaTok's (MAE's linear-probe recipe: LARS with momentum 0.9, trust
coefficient 0.001, weight decay 0, the trust ratio on the weight matrix only; 90 epochs, 10 of warm-up, blr 0.1), or
"sgd" (momentum 0.9, no weight decay). lr = blr * batch_size / 256, linear warm-up over warmup_epochs then
half-cosine to 0, per iteration. LARS moves the weight matrix by about lr * 0.001 * |w| per step, which needs
ImageNet's batch sizes and step counts; for small data sets use sgd.
Data: --data_root, an ImageNet-style folder (<root>/train/<class>/*, <root>/val/<class>/*): training images with
GigaTok's augmentation (shorter side drawn in [S, 1.25 S], random S x S crop, horizontal flip), validation images
center-cropped; or --demo: the bundled photographs (taming.data.DemoImages), the class of a crop being its photograph.
One process; prints the validation top-1 every --eval_every epochs and writes the results to --output (JSON).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from taming.data import DemoImages, ImageNet, collate_skip_none  # noqa: E402
from taming.models.schedules import lr_factor  # noqa: E402
from taming.tools import HelpFormatter, add_tokenizer_args, load_tokenizer_from_args, setup_device  # noqa: E402


class LARS(torch.optim.Optimizer):
    """SGD with momentum where the update of every weight matrix (ndim > 1) is g' = g + wd * w rescaled by
    trust_coefficient * |w| / |g'| (layer-wise adaptive rate, You et al. 2017); 1-D parameters (biases) keep g."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    weight_norm, update_norm = p.norm(), update.norm()
                    trust = group["trust_coefficient"] * weight_norm / update_norm
                    update = update * torch.where((weight_norm > 0) & (update_norm > 0), trust, torch.ones_like(trust))
                velocity = self.state[p].setdefault("velocity", torch.zeros_like(p))
                velocity.mul_(group["momentum"]).add_(update)
                p.add_(velocity, alpha=-group["lr"])


def make_probe(width: int, num_classes: int) -> nn.Module:
    head = nn.Linear(width, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return nn.Sequential(nn.BatchNorm1d(width, affine=False, eps=1e-6), head)


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


def datasets(args, size: int):
    """(train, val, number of classes) for --data_root or --demo."""
    if args.demo:
        train = DemoImages("train", size=size, length=args.demo_length)
        val = DemoImages("val", size=size, length=max(len(train.names), args.demo_length // 4))
        return train, val, len(train.names)
    if args.data_root is None:
        raise SystemExit("error: give --data_root (ImageNet-style: <root>/train/<class>/*, <root>/val/<class>/*) or "
                         "--demo")
    train = ImageNet(args.data_root, split="train", size=size, random_crop=True, hflip=True,
                     resize_range=(size, math.ceil(size * 1.25)))
    val = ImageNet(args.data_root, split="val", size=size, random_crop=False)
    if train.classes != val.classes:
        raise SystemExit(f"error: the class folders of {args.data_root}/train and /val differ "
                         f"({len(train.classes)} vs {len(val.classes)}); both splits need the same <class> folders")
    return train, val, len(train.classes)


def batches(loader, device):
    for batch in loader:
        images, labels = batch["image"], batch["class_label"]
        if len(images) == 0:
            continue
        if (labels < 0).any():
            raise SystemExit("error: the dataset gives no class labels (class_label -1)")
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def top1(features, probe, loader, device, autocast) -> float:
    probe.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches(loader, device):
            with autocast:
                feats = features(images)
            correct += int((probe(feats).argmax(1) == labels).sum())
            total += len(labels)
    probe.train()
    return correct / max(total, 1)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_tokenizer_args(parser)
    parser.add_argument("--data_root", default=None, help="ImageNet-style root with train/ and val/ class folders")
    parser.add_argument("--demo", action="store_true", help="the bundled photographs instead of --data_root")
    parser.add_argument("--demo_length", type=int, default=512, help="training crops with --demo (validation: 1/4)")
    parser.add_argument("--features", choices=("decoder", "encoder"), default=None,
                        help="default: decoder for 1-D tokenizers, encoder for 2-D ones")
    parser.add_argument("--layer", type=int, default=None, help="decoder layer (1-based; default: distill_depth)")
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--warmup_epochs", type=float, default=10)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--optimizer", choices=("lars", "sgd"), default="lars")
    parser.add_argument("--blr", type=float, default=0.1, help="base learning rate: lr = blr * batch_size / 256")
    parser.add_argument("--eval_every", type=int, default=10, help="epochs between validations (and after the last)")
    parser.add_argument("--num_workers", type=int, default=8)
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32", help="of the tokenizer's forward pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if min(args.epochs, args.batch_size, args.eval_every) < 1 or not 0 <= args.warmup_epochs <= args.epochs:
        parser.error("need epochs, batch_size, eval_every >= 1 and 0 <= warmup_epochs <= epochs")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device, _, world_size = setup_device(args.device)
    if world_size > 1:
        raise SystemExit("error: linear_probe_tokenizer.py runs in one process; start it without torchrun")
    tokenizer = load_tokenizer_from_args(args, device)
    source = args.features or ("decoder" if tokenizer.token_layout == "sequence" else "encoder")
    features = ProbeFeatures(tokenizer, source, args.layer)
    train, val, num_classes = datasets(args, tokenizer.encoder.image_size)
    loader_args = dict(batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate_skip_none,
                       pin_memory=device.type == "cuda")
    train_loader = DataLoader(train, shuffle=True, drop_last=len(train) > args.batch_size,
                              generator=torch.Generator().manual_seed(args.seed), **loader_args)
    val_loader = DataLoader(val, shuffle=False, **loader_args)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    probe = make_probe(features.width, num_classes).to(device)
    lr = args.blr * args.batch_size / 256
    optimizer = (LARS(probe.parameters(), lr=lr) if args.optimizer == "lars"
                 else torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9))
    total = args.epochs * len(train_loader)
    warmup = round(args.warmup_epochs * len(train_loader))
    layer = f", layer {features.layer}" if source == "decoder" else ""
    print(f"probing {source} features (width {features.width}{layer}) "
          f"of {args.ckpt_path}: {len(train)} training / {len(val)} validation images, {num_classes} classes, "
          f"{total} steps, {args.optimizer} lr {lr:g}", flush=True)
    step, history = 0, {}
    for epoch in range(args.epochs):
        for images, labels in batches(train_loader, device):
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor("cosine", step, total, warmup, warmup_start=0.0)
            with autocast:
                feats = features(images)
            loss = F.cross_entropy(probe(feats), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        message = f"epoch {epoch + 1}/{args.epochs}: train loss {loss.item():.4f}"
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            history[epoch + 1] = top1(features, probe, val_loader, device, autocast)
            message += f", val top-1 {history[epoch + 1]:.4f}"
        print(message, flush=True)
    result = {"top1": history[args.epochs], "top1_by_epoch": history, "features": source, "layer": features.layer,
              "checkpoint": str(args.ckpt_path), "data": "demo" if args.demo else str(args.data_root),
              "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": lr,
              "num_classes": num_classes}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

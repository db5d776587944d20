"""Linear probing of frozen features (GigaTok's recipe), shared by
the commands taming.cli.linear_probe_tokenizer and taming.cli.linear_probe_ar.

Probe: BatchNorm1d(width, affine=False, eps 1e-6) + Linear(width, classes), weight truncated normal std 0.01, bias 0
(MoCo v3). Optimiser: "lars" (MAE's linear-probe recipe: LARS with momentum 0.9, trust coefficient 0.001, weight
decay 0, the trust ratio on the weight matrix only) or "sgd" (momentum 0.9, no weight decay). lr = blr * batch_size /
256, linear warm-up from 0 over warmup_epochs then half-cosine to 0, set every iteration.
"""
import math
from typing import Callable, Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from taming.data import DemoImages, ImageNet, collate_skip_none
from taming.models.schedules import lr_factor


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


def probe_datasets(data_root, size: int, demo: bool = False, demo_length: int = 512) -> Tuple[Dataset, Dataset, int]:
    """(train, val, number of classes). data_root: an ImageNet-style folder (<root>/train/<class>/*,
    <root>/val/<class>/*), training images with GigaTok's augmentation (shorter side drawn in [S, 1.25 S], random
    S x S crop, horizontal flip), validation images center-cropped. demo: the bundled photographs, the class of a
    crop being its photograph (validation: a quarter as many crops, at least one per photograph)."""
    if demo:
        train = DemoImages("train", size=size, length=demo_length)
        val = DemoImages("val", size=size, length=max(len(train.names), demo_length // 4))
        return train, val, len(train.names)
    if data_root is None:
        raise SystemExit("error: give --data_root (ImageNet-style: <root>/train/<class>/*, <root>/val/<class>/*) or "
                         "--demo")
    train = ImageNet(data_root, split="train", size=size, random_crop=True, hflip=True,
                     resize_range=(size, math.ceil(size * 1.25)))
    val = ImageNet(data_root, split="val", size=size, random_crop=False)
    if train.classes != val.classes:
        raise SystemExit(f"error: the class folders of {data_root}/train and /val differ "
                         f"({len(train.classes)} vs {len(val.classes)}); both splits need the same <class> folders")
    return train, val, len(train.classes)


def labelled_batches(loader: DataLoader, device: torch.device) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) on `device`; batches emptied by unreadable images are skipped."""
    for batch in loader:
        images, labels = batch["image"], batch["class_label"]
        if len(images) == 0:
            continue
        if (labels < 0).any():
            raise SystemExit("error: the dataset gives no class labels (class_label -1)")
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def top1(features: Callable, probe: nn.Module, loader: DataLoader, device, autocast) -> float:
    probe.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in labelled_batches(loader, device):
            with autocast:
                feats = features(images)
            correct += int((probe(feats.float()).argmax(1) == labels).sum())
            total += len(labels)
    probe.train()
    return correct / max(total, 1)


def train_linear_probe(features: Callable[[torch.Tensor], torch.Tensor], width: int, train: Dataset, val: Dataset,
                       num_classes: int, *, epochs: int = 90, warmup_epochs: float = 10, batch_size: int = 128,
                       optimizer: str = "lars", blr: float = 0.1, eval_every: int = 10, num_workers: int = 8,
                       device: torch.device = torch.device("cpu"), precision: str = "32", seed: int = 0,
                       describe: str = "features") -> dict:
    """Train a probe on `features` (images B x 3 x S x S in [-1, 1] -> B x width, frozen, under no_grad) and return
    {"top1": last validation top-1, "top1_by_epoch": {epoch: top-1}, "lr": peak lr, ...}. Validates every
    `eval_every` epochs and after the last; prints one line per epoch."""
    torch.manual_seed(seed)
    loader_args = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_none,
                       pin_memory=device.type == "cuda")
    train_loader = DataLoader(train, shuffle=True, drop_last=len(train) > batch_size,
                              generator=torch.Generator().manual_seed(seed), **loader_args)
    val_loader = DataLoader(val, shuffle=False, **loader_args)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    probe = make_probe(width, num_classes).to(device)
    lr = blr * batch_size / 256
    opt = (LARS(probe.parameters(), lr=lr) if optimizer == "lars"
           else torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9))
    total = epochs * len(train_loader)
    warmup = round(warmup_epochs * len(train_loader))
    print(f"probing {describe} (width {width}): {len(train)} training / {len(val)} validation images, "
          f"{num_classes} classes, {total} steps, {optimizer} lr {lr:g}", flush=True)
    step, history = 0, {}
    for epoch in range(epochs):
        for images, labels in labelled_batches(train_loader, device):
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor("cosine", step, total, warmup, warmup_start=0.0)
            with torch.no_grad(), autocast:
                feats = features(images)
            loss = F.cross_entropy(probe(feats.float()), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        message = f"epoch {epoch + 1}/{epochs}: train loss {loss.item():.4f}"
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            history[epoch + 1] = top1(features, probe, val_loader, device, autocast)
            message += f", val top-1 {history[epoch + 1]:.4f}"
        print(message, flush=True)
    return {"top1": history[epochs], "top1_by_epoch": history, "epochs": epochs, "batch_size": batch_size,
            "optimizer": optimizer, "lr": lr, "num_classes": num_classes}

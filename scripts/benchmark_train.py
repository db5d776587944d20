"""Training-step throughput of a tokenizer config on the current device: images (clips)/s, peak memory, FLOPs, MFU.

    python scripts/benchmark_train.py --config configs/imagenet_lfqgan_128_B.yaml [--batch_size 8] [--steps 20]
    python scripts/benchmark_train.py --config configs/gigatok/VQ_SS256.yaml --no_pretrained --precision bf16-mixed \\
        --set model.init_args.torch_compile=true model.init_args.decoder.init_args.grad_checkpointing=true

Builds the config's model (any tokenizer LightningModule: taming.models.lfqgan.VQModel, VQGAN, HybridVQGAN),
runs real Lightning training steps (one device, the config's precision unless --precision is given) on
photographs from taming.data.DemoImages at the config's resolution (video configs: DemoVideos clips of the config's
frame count, or --frames), and times them after --warmup steps. FLOPs
(torch.utils.flop_counter: convolutions and matrix products, 2 per multiply-add) are counted on one real training
step, the module's own loss code included: "all nets" = everything that step runs (tokenizer, LPIPS, teacher,
discriminator; forward and backward); "tokenizer" = 3 x the tokenizer's forward (the MFU of the performance spec).
MFU = images/s x FLOPs/image / peak; the peak comes from --peak_tflops, else a built-in table (dense bf16/fp16).
--no_pretrained switches off the terms that need pretrained weights (LPIPS, semantic teacher; said in the output).
"""
import argparse
import inspect
import resource
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from taming.data import DemoImages, DemoVideos, collate_skip_none
from taming.modules.component import instantiate, resolve_class, trusted_class_paths
from taming.runs import user_class_paths
from taming.modules.losses import VQLPIPSWithDiscriminator

PRETRAINED_WEIGHTS = ("perceptual_weight", "semantic_weight")  # loss terms that load downloaded networks


class StepTimer(L.Callback):
    """Wall time of the steps after `warmup`, and the FLOPs of the first training step."""

    def __init__(self, warmup: int):
        self.warmup, self.elapsed, self.step_flops, self._start, self._counter = warmup, None, None, None, None

    def _sync(self, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and self.step_flops is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        if trainer.global_step == self.warmup and self._start is None:
            self._sync(pl_module)
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.step_flops = self._counter.get_total_flops() / len(batch["image"])
            self._counter = None

    def on_train_end(self, trainer, pl_module):
        self._sync(pl_module)
        self.elapsed = time.perf_counter() - self._start


def set_dotted(cfg: dict, key: str, value) -> None:
    node = cfg
    *path, last = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def loss_args(model_cfg: dict) -> tuple:
    """(the loss's keyword arguments in a model config: Open-MAGVIT2's `lossconfig` or `loss.init_args`, the names
    the loss class accepts)."""
    args = model_cfg["init_args"]
    if model_cfg["class_path"].endswith("lfqgan.VQModel"):
        args["lossconfig"] = args.get("lossconfig") or {}
        return args["lossconfig"], init_arguments(VQLPIPSWithDiscriminator)
    loss = args.setdefault("loss", {"class_path": "taming.modules.losses.VQLPIPSWithDiscriminator"})
    loss["init_args"] = loss.get("init_args") or {}
    return loss["init_args"], init_arguments(resolve_class(loss["class_path"]))


def init_arguments(cls) -> set:
    """Keyword arguments `cls` accepts, those its **kwargs pass to base classes included."""
    return {name for c in cls.__mro__ if "__init__" in vars(c) for name in inspect.signature(c.__init__).parameters}


def tokenizer_forward_flops(model, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:  # (with grad enabled: FlopCounterMode's module tracker fails
        model.autoencode(x)                             # under no_grad on parameters passed into submodules)
    return counter.get_total_flops() / len(x)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch_size", type=int, default=None, help="per device (default: the config's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default=None, help="default: the config's trainer.precision (32 on CPU)")
    parser.add_argument("--resolution", type=int, default=None, help="default: the config's training image size")
    parser.add_argument("--frames", type=int, default=None, help="video configs: frames per clip (default: the config's)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU (e.g. 989 for H100)")
    parser.add_argument("--no_pretrained", action="store_true",
                        help="weight 0 for the loss terms that need pretrained weights (LPIPS, semantic teacher)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, dotted paths and YAML values, e.g. model.init_args.torch_compile=true")
    args = parser.parse_args(argv)

    cfg = yaml.safe_load(Path(args.config).read_text())
    for item in args.set:
        key, value = item.split("=", 1)
        set_dotted(cfg, key, yaml.safe_load(value))
    if args.no_pretrained:
        loss, accepted = loss_args(cfg["model"])
        for key in PRETRAINED_WEIGHTS:
            if key in accepted:
                loss[key] = 0.0
        if "discriminator" in loss:
            loss.pop("discriminator")  # the DINO discriminator needs DINO weights: use the PatchGAN
    train = cfg["data"]["init_args"]["train"]["init_args"]
    size = args.resolution or train["size"]
    batch_size = args.batch_size or cfg["data"]["init_args"]["batch_size"]
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    precision = args.precision or (cfg["trainer"].get("precision", "32") if accelerator == "gpu" else "32")

    L.seed_everything(0, verbose=False)
    with trusted_class_paths(user_class_paths(["--config", args.config, *args.set])):  # the user's own config
        model = instantiate(cfg["model"])
    length = batch_size * (args.warmup + args.steps + 1)
    video = "Video" in cfg["data"]["init_args"]["train"]["class_path"]
    frames = args.frames or train.get("sequence_length", train.get("frames", 17))
    images = DemoVideos("train", size=size, frames=frames, length=length) if video else DemoImages("train", size=size,
                                                                                                   length=length)
    unit = "clips" if video else "images"
    sample = torch.stack([images[i]["image"] for i in range(batch_size)])
    forward_flops = tokenizer_forward_flops(model, sample)

    timer = StepTimer(args.warmup)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=args.warmup + args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], limit_val_batches=0)
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, collate_fn=collate_skip_none, num_workers=2,
                        drop_last=True)
    trainer.fit(model, loader)

    img_s = args.steps * batch_size / timer.elapsed
    if accelerator == "gpu":
        peak_mem = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (CUDA, allocated)"
        device = torch.cuda.get_device_name()
    else:
        peak_mem = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process max RSS)"
        device = f"CPU, {torch.get_num_threads()} threads"
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shape = f"{frames}x{size}x{size} clips" if video else f"{size}x{size}"
    print(f"config {args.config}: {shape}, batch {batch_size}, precision {precision}, device {device}, "
          f"{params / 1e6:.1f}M trainable parameters{', pretrained-weight terms off' if args.no_pretrained else ''}")
    print(f"step time {1000 * timer.elapsed / args.steps:.1f} ms, throughput {img_s:.2f} {unit}/s, peak memory {peak_mem}")
    print(f"FLOPs per {unit[:-1]} and step: tokenizer 3 x fwd = {3 * forward_flops / 1e9:.1f} GFLOP, "
          f"all nets (measured step) = {timer.step_flops / 1e9:.1f} GFLOP")
    peak_tflops = args.peak_tflops or (known_peak_tflops(device) if accelerator == "gpu" else None)
    if peak_tflops:
        peak = peak_tflops * 1e12
        print(f"MFU: tokenizer {100 * img_s * 3 * forward_flops / peak:.1f}%, all nets "
              f"{100 * img_s * timer.step_flops / peak:.1f}% of {peak_tflops} TFLOP/s"
              f"{'' if args.peak_tflops else ' (built-in peak for this GPU; --peak_tflops overrides)'}")
    else:
        print(f"achieved: tokenizer {img_s * 3 * forward_flops / 1e12:.3f} TFLOP/s, all nets "
              f"{img_s * timer.step_flops / 1e12:.3f} TFLOP/s (pass --peak_tflops for MFU)")


# Dense bf16/fp16 tensor-core peaks (TFLOP/s) from the vendors' datasheets, most specific name first.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("V100", 125.0))


def known_peak_tflops(device_name: str):
    return next((peak for key, peak in PEAK_TFLOPS if key in device_name), None)


if __name__ == "__main__":
    main()

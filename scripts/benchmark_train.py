"""Training-step throughput on the current device: images/s, peak memory, FLOPs per image and MFU.

    python scripts/benchmark_train.py --config configs/imagenet_lfqgan_128_B.yaml [--batch_size 8] [--steps 20]

Builds the config's VQModel, runs real Lightning training steps (one device, the config's precision unless
--precision is given) on photographs from taming.data.DemoImages at the config's resolution, and times
them after --warmup steps. FLOPs are counted (torch.utils.flop_counter, convs + matmuls, 2 per MAC) on one
step, not taken from a table: "generator" = 3 x encoder+decoder forward (the MFU of
the performance spec), "all nets" = the whole step (generator, LPIPS, discriminator, forward + backward).
MFU = images/s x FLOPs/image / peak; the peak comes from --peak_tflops, else a built-in table for H100/H200/A100/V100
(dense bf16/fp16).
Without the VGG16 weights in the torch hub cache, pass --no_perceptual (LPIPS left out, said in the output).
"""
import argparse
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from taming.data import DemoImages, collate_skip_none  # noqa: E402
from taming.models import VQModel  # noqa: E402


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.times, self._start = warmup, [], None

    def _sync(self, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self._sync(pl_module)
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            self._start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self._sync(pl_module)
        self.elapsed = time.perf_counter() - self._start


def count_flops(model: VQModel, x: torch.Tensor) -> tuple:
    """(generator forward FLOPs, whole training step FLOPs) for the batch x, both per image."""
    with FlopCounterMode(display=False) as gen:
        model.decoder(model.quantize(model.encoder(x))[0])
    with FlopCounterMode(display=False) as step:
        z = model.encoder(x)
        quant, aux, _, breakdown = model.quantize(z, return_loss_breakdown=True)
        xrec = model.decoder(quant)
        g_loss, _ = model.loss.generator_loss(x, xrec, aux, breakdown.commitment, 0)
        d_loss, _, _ = model.loss.discriminator_loss(x, xrec.detach(), 0)
        (g_loss + d_loss).backward()
    model.zero_grad(set_to_none=True)
    return gen.get_total_flops() / len(x), step.get_total_flops() / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch_size", type=int, default=None, help="per device (default: the config's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default=None, help="default: the config's trainer.precision (32 on CPU)")
    parser.add_argument("--resolution", type=int, default=None, help="default: the config's training image size")
    parser.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU (e.g. 989 for H100)")
    parser.add_argument("--no_perceptual", action="store_true", help="perceptual_weight 0 (no VGG16 weights needed)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model init_args overrides, YAML values, e.g. channels_last=true torch_compile=true")
    args = parser.parse_args()

    cfg = yaml.safe_load(Path(args.config).read_text())
    init_args = dict(cfg["model"]["init_args"])
    for item in args.set:
        key, value = item.split("=", 1)
        init_args[key] = yaml.safe_load(value)
    if args.no_perceptual:
        init_args["lossconfig"] = dict(init_args.get("lossconfig") or {}, perceptual_weight=0.0)
    data_args = cfg["data"]["init_args"]
    size = args.resolution or data_args["train"]["init_args"]["size"]
    batch_size = args.batch_size or data_args["batch_size"]
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    precision = args.precision or (cfg["trainer"].get("precision", "32") if accelerator == "gpu" else "32")

    L.seed_everything(0, verbose=False)
    model = VQModel(**init_args)
    images = DemoImages("train", size=size, length=batch_size * (args.warmup + args.steps))
    sample = torch.stack([images[i]["image"] for i in range(batch_size)])
    gen_flops, step_flops = count_flops(model, sample)

    timer = StepTimer(args.warmup)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=args.warmup + args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer])
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
    lossconfig = init_args.get("lossconfig") or {}
    print(f"config {args.config}: {size}x{size}, batch {batch_size}, precision {precision}, device {device}"
          f"{', LPIPS off (--no_perceptual)' if args.no_perceptual or lossconfig.get('perceptual_weight') == 0 else ''}")
    print(f"step time {1000 * timer.elapsed / args.steps:.1f} ms, throughput {img_s:.2f} images/s, peak memory {peak_mem}")
    print(f"FLOPs per image and step: generator 3 x fwd = {3 * gen_flops / 1e9:.1f} GFLOP, "
          f"all nets (measured step) = {step_flops / 1e9:.1f} GFLOP")
    peak_tflops = args.peak_tflops or (known_peak_tflops(device) if accelerator == "gpu" else None)
    if peak_tflops:
        peak = peak_tflops * 1e12
        print(f"MFU: generator {100 * img_s * 3 * gen_flops / peak:.1f}%, all nets {100 * img_s * step_flops / peak:.1f}% "
              f"of {peak_tflops} TFLOP/s{'' if args.peak_tflops else ' (built-in peak for this GPU; --peak_tflops overrides)'}")
    else:
        print(f"achieved: generator {img_s * 3 * gen_flops / 1e12:.3f} TFLOP/s, all nets {img_s * step_flops / 1e12:.3f} "
              "TFLOP/s (pass --peak_tflops for MFU)")


# Dense bf16/fp16 tensor-core peaks (TFLOP/s) from the vendors' datasheets, most specific name first.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("V100", 125.0))


def known_peak_tflops(device_name: str):
    return next((peak for key, peak in PEAK_TFLOPS if key in device_name), None)


if __name__ == "__main__":
    main()

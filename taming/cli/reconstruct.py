r"""Reconstruct images with a tokenizer: individual PNGs and a side-by-side grid (original | reconstruction).

    python scripts/reconstruct.py --ckpt_path models/imagenet_128_B.ckpt --config_file configs/imagenet_lfqgan_128_B.yaml \
        --data_root my_photos/ --image_size 256 --output_dir recon/        # 128 model at 256 px: 32 x 32 tokens
    python scripts/reconstruct.py ... --data_root /data/imagenet --split val --num_images 50 --output_dir recon/
    python scripts/reconstruct.py ... --data_root my_photos/ --image_size 0 --output_dir recon/   # native sizes

Sizes: --image_size N resizes the shorter side to N and center-crops N x N; --image_size 0 keeps each image's
own size (one image per batch). A height or width that is not a multiple of the downsampling factor f is
handled by --size_policy:
  pad  (default) reflect-pad the bottom/right edge up to the next multiple of f, reconstruct, and crop the
       result back to the original size (every pixel kept; the padded border is reconstructed then dropped);
  crop center-crop down to the previous multiple of f (the original is cropped the same way).
Memory: an image whose reconstruction would need more than --max_memory_gb (default: half the free memory, 80 %
of a GPU's) is not attempted: it is reported with the largest square size that fits, or with --oversize tile
reconstructed as overlapping --tile x --tile squares blended together (each tile has its own GroupNorm statistics,
so this is a preview of the model at that size, not its exact output). An image that fails anyway (out of memory)
is reported and the others are still done.
Writes <output_dir>/original/<name>.png, <output_dir>/reconstruction/<name>.png (clamped, rounded to
uint8) and <output_dir>/grid.png with the first --grid_images pairs (0: no grid), each row scaled to --grid_height px.
Unreadable images, images too small for the size policy and images too large for the budget are skipped and counted.
A video tokenizer reconstructs clips (the centre --num_frames of every video under --data_root / --split, or --demo
clips; shorter side to --image_size, centre crop): <output_dir>/<name>.gif shows original | reconstruction side by
side, grid.png evenly spaced frames of the first --grid_images clips (originals above reconstructions).
"""
from pathlib import Path

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from taming.cli.common import (HelpFormatter, PngNames, add_data_args, add_tokenizer_args,
                               load_tokenizer_from_args, make_loader, open_clips, open_dataset, save_png, save_video,
                               setup_device)
from taming.data.loading import to_tensor
from taming.inference import default_budget, largest_square, peak_memory_bytes, reconstruct_tiled
from taming.metrics.image import psnr, to_uint8


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_tokenizer_args(parser)
    add_data_args(parser)
    parser.add_argument("--image_size", type=int, default=256, help="square resolution; 0 = each image's own size")
    parser.add_argument("--size_policy", choices=("pad", "crop"), default="pad",
                        help="sizes not divisible by the downsampling factor: pad and crop back, or crop down")
    parser.add_argument("--batch_size", type=int, default=16, help="(1 with --image_size 0)")
    parser.add_argument("--num_frames", type=int, default=17, help="video tokenizers: frames per clip")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--grid_images", type=int, default=16, help="pairs shown in grid.png")
    parser.add_argument("--grid_height", type=int, default=256, help="row height of grid.png in pixels")
    parser.add_argument("--max_memory_gb", type=float, default=None,
                        help="memory budget per image (default: half the free host memory, 80%% of a GPU's free memory)")
    parser.add_argument("--oversize", choices=("skip", "tile"), default="skip",
                        help="images over the budget: skip them (reported), or reconstruct them in tiles")
    parser.add_argument("--tile", type=int, default=512, help="tile side for --oversize tile")
    parser.add_argument("--tile_overlap", type=int, default=64, help="overlap of neighbouring tiles")
    return parser.parse_args(argv)



def fit_to_factor(x: torch.Tensor, factor: int, policy: str) -> tuple:
    """(input for the tokenizer, original to compare with, (h, w) to crop the reconstruction to)."""
    h, w = x.shape[-2:]
    if policy == "pad":
        pad_h, pad_w = -h % factor, -w % factor
        if pad_h >= h or pad_w >= w:
            raise ValueError(f"image of {h}x{w} px is too small to pad to a multiple of {factor}")
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x
        return padded, x, (h, w)
    fit_h, fit_w = h // factor * factor, w // factor * factor
    if not fit_h or not fit_w:
        raise ValueError(f"image of {h}x{w} px is smaller than the downsampling factor {factor}")
    top, left = (h - fit_h) // 2, (w - fit_w) // 2
    cropped = x[..., top:top + fit_h, left:left + fit_w]
    return cropped, cropped, (fit_h, fit_w)


def side_by_side_grid(pairs: list, height: int) -> Image.Image:
    """Rows original | reconstruction, each image scaled to `height` px (aspect kept), 4 px white gaps."""
    gap = 4
    rows = []
    for original, recon in pairs:
        scaled = [Image.fromarray(a).resize((max(1, round(a.shape[1] * height / a.shape[0])), height), Image.BICUBIC)
                  for a in (original, recon)]
        row = Image.new("RGB", (scaled[0].width * 2 + gap, height), "white")
        row.paste(scaled[0], (0, 0))
        row.paste(scaled[1], (scaled[0].width + gap, 0))
        rows.append(row)
    grid = Image.new("RGB", (max(r.width for r in rows), len(rows) * (height + gap) - gap), "white")
    for i, row in enumerate(rows):
        grid.paste(row, (0, i * (height + gap)))
    return grid


def main(argv=None) -> dict:
    args = parse_args(argv)
    native = args.image_size == 0
    if args.image_size < 0:
        raise SystemExit("error: --image_size must be positive, or 0 for each image's own size")
    if native and args.demo:
        raise SystemExit("error: --image_size 0 (native sizes) needs --data_root; the demo images are fixed-size crops")
    device, _, _ = setup_device(args.device)
    try:
        tokenizer = load_tokenizer_from_args(args, device)
        if tokenizer.token_layout != "volume":
            dataset, _ = open_dataset(args, None if native else args.image_size, transform=to_tensor if native else None)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if tokenizer.token_layout == "volume":
        return reconstruct_clips(args, tokenizer, device)
    factor = tokenizer.downsample_factor
    if native and (args.tile % factor or args.tile_overlap % factor):
        raise SystemExit(f"error: --tile and --tile_overlap must be multiples of the downsampling factor {factor}")
    budget = default_budget(device, args.max_memory_gb)
    out_dir = Path(args.output_dir)
    loader = make_loader(dataset, 1 if native else args.batch_size, args.num_workers, device)
    pairs, psnrs, png_name = [], [], PngNames()
    skipped = {"unreadable": 0, "too small": 0, "over the memory budget": 0, "failed": 0}
    for batch in loader:
        skipped["unreadable"] += batch["num_skipped"]
        if not batch["relpath"]:
            continue
        name = batch["relpath"][0]
        try:
            x, original, (h, w) = fit_to_factor(batch["image"].to(device), factor, args.size_policy)
        except ValueError as err:
            print(f"skipping {name}: {err}")
            skipped["too small"] += len(batch["relpath"])
            continue
        tiled = False
        if native:
            need = peak_memory_bytes(tokenizer, *x.shape[-2:])
            if need > budget:
                if args.oversize == "skip" or min(x.shape[-2:]) < args.tile:
                    side = largest_square(tokenizer, budget)
                    print(f"skipping {name}: {x.shape[-2]}x{x.shape[-1]} px needs ~{need / 2**30:.1f} GiB, over the "
                          f"{budget / 2**30:.1f} GiB budget (the largest square that fits is {side}x{side}); pass "
                          "--max_memory_gb, a fixed --image_size, or --oversize tile")
                    skipped["over the memory budget"] += 1
                    continue
                tiled = True
        try:
            with torch.no_grad():
                recon = reconstruct_tiled(tokenizer, x, args.tile, args.tile_overlap, progress=True) if tiled else tokenizer(x)
        except (MemoryError, torch.cuda.OutOfMemoryError, RuntimeError) as err:
            if not isinstance(err, MemoryError) and "out of memory" not in str(err).lower():
                raise
            print(f"failed {name}: out of memory ({type(err).__name__}); continuing with the next image")
            skipped["failed"] += len(batch["relpath"])
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        recon = recon[..., :h, :w]
        original8, recon8 = to_uint8(original), to_uint8(recon)
        psnrs.extend(psnr(original8, recon8).tolist())
        for o, r, relpath in zip(original8.permute(0, 2, 3, 1).cpu().numpy(), recon8.permute(0, 2, 3, 1).cpu().numpy(),
                                 batch["relpath"]):
            out_name = png_name(relpath)
            save_png(o, out_dir / "original" / out_name)
            save_png(r, out_dir / "reconstruction" / out_name)
            if len(pairs) < args.grid_images:
                pairs.append((o, r))
    summary = ", ".join(f"{n} {why}" for why, n in skipped.items() if n) or "none"
    if not psnrs:
        raise SystemExit(f"error: no image could be reconstructed (skipped: {summary})")
    if pairs:
        side_by_side_grid(pairs, args.grid_height).save(out_dir / "grid.png")
    print(f"{len(psnrs)} image(s) written to {out_dir} (mean PSNR {np.mean(psnrs):.2f} dB on uint8"
          f"{'; grid.png' if pairs else ''}); skipped: {summary}")
    return {"written": len(psnrs), "skipped": skipped}

def reconstruct_clips(args, tokenizer, device) -> dict:
    """The video branch of `main` (module docstring)."""
    if args.image_size < 1 or args.image_size % tokenizer.downsample_factor:
        raise SystemExit(f"error: --image_size must be a positive multiple of {tokenizer.downsample_factor} for clips")
    args.num_clips = args.num_images
    try:
        dataset, _, _ = open_clips(args, args.image_size, args.num_frames, args.split)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    out_dir, names = Path(args.output_dir), PngNames()
    rows, psnrs, skipped = [], [], 0
    picks = np.linspace(0, args.num_frames - 1, min(8, args.num_frames)).round().astype(int)
    for batch in make_loader(dataset, args.batch_size, args.num_workers, device):
        skipped += batch["num_skipped"]
        if not batch["relpath"]:
            continue
        clips = batch["image"].to(device)
        with torch.no_grad():
            recon = tokenizer(clips)
        original8, recon8 = to_uint8(clips).permute(0, 2, 3, 4, 1), to_uint8(recon).permute(0, 2, 3, 4, 1)
        psnrs += psnr(original8.flatten(0, 1).permute(0, 3, 1, 2), recon8.flatten(0, 1).permute(0, 3, 1, 2)).tolist()
        gap = np.full((*original8.shape[2:3], 4, 3), 255, np.uint8)
        for o, r, relpath in zip(original8.cpu().numpy(), recon8.cpu().numpy(), batch["relpath"]):
            save_video(np.stack([np.concatenate([a, gap, b], axis=1) for a, b in zip(o, r)]),
                       (out_dir / names(relpath)).with_suffix(".gif"))
            if len(rows) < 2 * args.grid_images:
                rows += [np.concatenate(list(o[picks]), axis=1), np.concatenate(list(r[picks]), axis=1)]
    if not psnrs:
        raise SystemExit(f"error: no clip could be reconstructed ({skipped} unreadable or too short)")
    if rows:
        save_png(np.concatenate(rows, axis=0), out_dir / "grid.png")
    print(f"{len(psnrs) // args.num_frames} clip(s) written to {out_dir} as GIFs (original | reconstruction; mean "
          f"per-frame PSNR {np.mean(psnrs):.2f} dB on uint8; grid.png); skipped: {skipped}")
    return {"written": len(psnrs) // args.num_frames, "skipped": {"unreadable": skipped}}


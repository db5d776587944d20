r"""Class-conditional samples of an AR generator: a grid of a few classes (PNGs), or N images for FID as an ADM-style
.npz, on several GPUs with torchrun and resumable.

    python scripts/sample.py --ckpt_path models/ar_llamagen_B/last.ckpt --output_dir samples/B --class_labels 207 360 \
        --samples_per_class 4 --cfg_scale 4.0 --top_k 2000
    torchrun --nproc_per_node 8 scripts/sample.py --ckpt_path models/ar_llamagen_B/last.ckpt --num_samples 50000 \
        --cfg_scale 2.0 --batch_size 64 --precision bf16 --compile --output_dir samples/B_50k
    released LlamaGen: --ckpt_path c2i_B_256.pt --gpt_config GPT-B --tokenizer_ckpt vq_ds16_c2i.pt \
        --tokenizer_config VQ-16
    released Open-MAGVIT2: --ckpt_path AR_256_B.ckpt --config_file imagenet_conditional_llama_B.yaml --cfg_scale 1.9 2.0
    released IBQ: --ckpt_path AR_256_B.ckpt --config_file configs/IBQ/gpu/imagenet_conditional_llama_B.yaml \
        --cfg_scale 2.25 --temperature 1.1
Checkpoints of this project (taming.models.ar.ClassConditionalAR) find their tokenizer in their hyper-parameters;
Open-MAGVIT2 and IBQ AR checkpoints hold their own (first_stage_model.*).

Grid mode (no --num_samples): <output_dir>/class<label>_<j>.png and grid.png (a column per label).
FID mode (--num_samples N) writes into --output_dir: protocol.json (every setting; a rerun into the same folder must
match it), shards samples_NNNNN.npz (arr_0: uint8 n x H x W x 3, labels: n) each followed by samples_NNNNN.done.json
(its seed, rank, size and SHA-256; written last, atomically), then samples.npz with all N images in order (arr_0 for
the ADM evaluator, labels). Shard k draws from the seed SeedSequence([--seed, k]), so its images do not depend on the
number of GPUs, and a rerun skips every shard whose file matches its record.
Labels: --labels balanced (default; N / num_classes of each class, sample i has class i mod num_classes, as
Open-MAGVIT2's 50 per class) or uniform (drawn uniformly at random from --seed, as LlamaGen and GigaTok).
Pixels: clamped to [-1, 1], then round((x + 1) * 127.5) (LlamaGen truncates 127.5 x + 128 instead).
"""
from pathlib import Path

import argparse
import json
import math
import zipfile

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from taming.cli.common import HelpFormatter, add_trust_arg, save_png, save_video, setup_device
from taming.checkpoints import atomic_path, file_sha256, read_hparams
from taming.data.tokens import TokenDataset, check_shard, read_json, write_json_atomic
from taming.generator import load_generator
from taming.metrics.image import to_uint8
from taming.provenance import check_tokens_match, decode_tokens, load_recorded_tokenizer
from taming.released import generator_family
from taming.modules.transformer import FactorizedGPT
from taming.tokenizer import load_tokenizer

FORMAT = "taming-samples-v1"
PROTOCOL = "protocol.json"
MERGED = "samples.npz"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BAD_INPUT = (FileNotFoundError, ValueError, TypeError)  # reported in one line, without a traceback


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Generator and tokenizer flags (shared with taming.cli.ar_val_loss and linear_probe_ar)."""
    group = parser.add_argument_group("generator and tokenizer")
    group.add_argument("--ckpt_path", required=True,
                       help="AR checkpoint: this project's, Open-MAGVIT2's, IBQ's, LlamaGen's or GigaTok's")
    group.add_argument("--config_file", default=None, help="released Open-MAGVIT2 or IBQ AR YAML (its architecture)")
    group.add_argument("--gpt_config", default=None,
                       help="released LlamaGen / GigaTok GPT: a size name (GPT-B, ...; block size from --image_size "
                            "and the tokenizer) or a JSON dict of ModelArgs fields")
    group.add_argument("--image_size", type=int, default=256, help="with a --gpt_config size name: image resolution")
    group.add_argument("--tokenizer_ckpt", default=None,
                       help="tokenizer checkpoint; unset: the one recorded in this project's checkpoints, or the one "
                            "inside an Open-MAGVIT2 / IBQ AR checkpoint")
    group.add_argument("--tokenizer_config", default=None,
                       help="tokenizer architecture: a YAML path, a LlamaGen preset (VQ-16) or a JSON dict")
    group.add_argument("--no_ema", action="store_true", help="raw generator weights even when EMA weights are present")
    group.add_argument("--allow_unsafe_pickle", action="store_true",
                       help="load checkpoints that torch.load(weights_only=True) refuses (only files you trust)")
    group.add_argument("--allow_other_checkpoint", action="store_true",
                       help="decode with a tokenizer checkpoint whose SHA-256 differs from the recorded one")
    add_trust_arg(group)


def parse_config(value):
    """A command-line config: a JSON object when it starts with '{', else the string (a path or a name)."""
    if value is None or not value.lstrip().startswith("{"):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"config {value!r} is not valid JSON: {err}") from None


def gpt_config(args, tokenizer):
    """--gpt_config as load_generator's config: a size name gets the block size of --image_size."""
    config = parse_config(args.gpt_config)
    if not isinstance(config, str):
        return config
    if tokenizer is None:
        raise ValueError(f"--gpt_config {config} needs --tokenizer_ckpt (the number of tokens comes from it), or give "
                         "a JSON dict with block_size")
    return {"size": config, "block_size": math.prod(tokenizer.token_shape(args.image_size, args.image_size))}


def load_models(args, device, need_tokenizer: bool = True) -> tuple:
    """(generator, tokenizer or None) in eval mode on `device`, from the model flags."""
    unsafe, trust = args.allow_unsafe_pickle, args.trust_class_path
    tokenizer = None
    if args.tokenizer_ckpt:
        tokenizer = load_tokenizer(args.tokenizer_ckpt, config=parse_config(args.tokenizer_config),
                                   allow_unsafe_pickle=unsafe, trust_class_paths=trust)
    model = load_generator(args.ckpt_path, config=args.config_file or gpt_config(args, tokenizer),
                           ema=False if args.no_ema else None, allow_unsafe_pickle=unsafe, trust_class_paths=trust)
    family = generator_family(model.checkpoint_info["format"])
    if tokenizer is None and need_tokenizer:
        if family.tokenizer == "record":
            record = read_hparams(args.ckpt_path).get("tokenizer_source")
            if not record:
                raise ValueError(f"{args.ckpt_path} records no tokenizer; pass --tokenizer_ckpt (and "
                                 "--tokenizer_config)")
            tokenizer = load_recorded_tokenizer(record, config=parse_config(args.tokenizer_config),
                                                allow_unsafe_pickle=unsafe, trust_class_paths=trust,
                                                allow_other_checkpoint=args.allow_other_checkpoint)
        elif family.tokenizer == "inside":
            tokenizer = load_tokenizer(args.ckpt_path, config=args.config_file, allow_unsafe_pickle=unsafe,
                                       trust_class_paths=trust)
        else:
            raise ValueError(f"{args.ckpt_path} is a {family.name} generator, which holds no tokenizer: pass "
                             "--tokenizer_ckpt and --tokenizer_config (e.g. VQ-16)")
    if tokenizer is not None and tokenizer.quantize.codebook_size != model.codebook_size:
        raise ValueError(f"the tokenizer has {tokenizer.quantize.codebook_size} codes but the generator predicts "
                         f"{model.codebook_size}; pass the tokenizer the generator was trained with")
    return model.to(device), None if tokenizer is None else tokenizer.to(device)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(parser)
    group = parser.add_argument_group("sampling (pairs: pre, post sub-token of factorized models)")
    group.add_argument("--cfg_scale", type=float, nargs="+", default=[1.0], help="classifier-free guidance; 1 = off")
    group.add_argument("--cfg_schedule", default="constant", choices=("constant", "linear", "step"))
    group.add_argument("--cfg_start_ratio", type=float, default=0.18, help="with --cfg_schedule step")
    group.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    group.add_argument("--top_k", type=int, nargs="+", default=[0], help="0 = off")
    group.add_argument("--top_p", type=float, nargs="+", default=[1.0], help="1 = off")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--batch_size", type=int, default=32, help="images per generate call and process")
    group.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS), help="generator weights")
    group.add_argument("--compile", action="store_true", help="torch.compile the per-token decode steps")
    group.add_argument("--resize", type=int, default=None,
                       help="resize the decoded images to this size (bicubic; LlamaGen: 384 -> 256 for FID)")
    group.add_argument("--device", default=None,
                       help="cuda, cpu; unset: cuda when available (torchrun: cuda:LOCAL_RANK)")
    group = parser.add_argument_group("output")
    group.add_argument("--output_dir", required=True)
    group.add_argument("--class_labels", type=int, nargs="+", default=None,
                       help="grid mode: the classes; unset: 8 spread over all classes")
    group.add_argument("--samples_per_class", type=int, default=4, help="grid mode")
    group.add_argument("--prefix_tokens", default=None,
                       help="grid mode, video generators: frame prediction. Continue the first --prefix_frames latent "
                            "frames of the first --samples_per_class clips of this token folder (their own labels)")
    group.add_argument("--prefix_frames", type=int, default=1, help="with --prefix_tokens: latent frames given")
    group.add_argument("--num_samples", type=int, default=None, help="FID mode: number of images (e.g. 50000)")
    group.add_argument("--labels", default="balanced", choices=("balanced", "uniform"), help="FID mode")
    group.add_argument("--shard_size", type=int, default=1000,
                       help="FID mode: images per shard (the unit of resumption)")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.samples_per_class, args.shard_size) < 1 or (args.num_samples is not None
                                                                             and args.num_samples < 1):
        parser.error("--batch_size, --samples_per_class, --shard_size and --num_samples must be positive")
    values = {"--cfg_scale": args.cfg_scale, "--temperature": args.temperature, "--top_p": args.top_p}
    for flag, given in values.items():
        if not all(math.isfinite(v) for v in given):
            parser.error(f"{flag} must be finite, got {given}")
    if args.prefix_tokens and (args.num_samples is not None or args.class_labels):
        parser.error("--prefix_tokens takes its labels from the token folder, in grid mode: no --class_labels or "
                     "--num_samples")
    if args.prefix_frames < 1:
        parser.error("--prefix_frames must be positive")
    if min(args.cfg_scale) < 0 or min(args.temperature) <= 0 or not all(0 < p <= 1 for p in args.top_p) \
            or min(args.top_k) < 0:
        parser.error("need --cfg_scale >= 0, --temperature > 0, --top_p in (0, 1] and --top_k >= 0")
    return args


def sampling_settings(args) -> dict:
    """generate() keyword arguments; a pair stays a list (factorized models), a single value a number."""
    def one_or_pair(values):
        return values[0] if len(values) == 1 else list(values)

    return dict(cfg_scale=one_or_pair(args.cfg_scale), temperature=one_or_pair(args.temperature),
                top_k=one_or_pair(args.top_k), top_p=one_or_pair(args.top_p), cfg_schedule=args.cfg_schedule,
                cfg_start_ratio=args.cfg_start_ratio)


def prepare_model(model, args) -> None:
    model.to(PRECISIONS[args.precision])
    if args.compile:
        mode = "reduce-overhead" if model.device.type == "cuda" else "default"
        model.decode_step = torch.compile(model.decode_step, mode=mode, fullgraph=True)
        if isinstance(model, FactorizedGPT):
            model.intra_logits = torch.compile(model.intra_logits, mode=mode, dynamic=False)


def sample_uint8(model, tokenizer, labels: torch.Tensor, rng: torch.Generator, args, prefix=None) -> np.ndarray:
    """Images of `labels` as uint8 B x H x W x 3 (video tokenizers: clips B x T x H x W x 3); `prefix`: given first
    tokens (frame prediction)."""
    tokens = model.generate(labels, generator=rng, prefix=prefix, **sampling_settings(args))
    images = decode_tokens(tokenizer, tokens, model.token_grid).float()
    if images.dim() == 5:  # clips: frames last but the channels
        images = images.transpose(1, 2)
        frames = images.flatten(0, 1)
        if args.resize:
            frames = F.interpolate(frames, size=(args.resize, args.resize), mode="bicubic")
        return to_uint8(frames).permute(0, 2, 3, 1).reshape(*images.shape[:2], *frames.shape[2:], 3).cpu().numpy()
    if args.resize:
        images = F.interpolate(images, size=(args.resize, args.resize), mode="bicubic")
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


def shard_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------ grid mode


def frame_prefixes(model, args, device) -> tuple:
    """(labels, B x P prefix tokens): the first --prefix_frames latent frames of the first --samples_per_class clips
    of --prefix_tokens, checked against the generator at start."""
    grid = model.token_grid
    if grid is None or len(grid) != 3:
        raise ValueError("--prefix_tokens (frame prediction) needs a video generator (a 3-D token_grid)")
    folder = TokenDataset(args.prefix_tokens)
    check_tokens_match(model, folder.folder.codebook_size, folder.folder.bit_order, f"token folder {args.prefix_tokens}",
                       folder.folder.token_shape)
    if not 0 < args.prefix_frames < grid[0]:
        raise ValueError(f"--prefix_frames must leave frames to generate: 1 .. {grid[0] - 1}, got {args.prefix_frames}")
    items = [folder[i] for i in range(min(args.samples_per_class, len(folder)))]
    prefixes = torch.stack([item["tokens"][:args.prefix_frames] for item in items]).flatten(1).to(device)
    return [int(item["class_label"]) for item in items], prefixes


def sample_grid(model, tokenizer, args, device) -> Path:
    import torchvision

    spread = np.linspace(0, model.num_classes - 1, min(8, model.num_classes)).round().astype(int).tolist()
    labels = args.class_labels or spread
    wanted = [label for label in labels for _ in range(args.samples_per_class)]
    prefixes = None
    if args.prefix_tokens:
        wanted, prefixes = frame_prefixes(model, args, device)
        labels = wanted
    rng = torch.Generator(device).manual_seed(args.seed)
    images = np.concatenate([sample_uint8(model, tokenizer, torch.tensor(wanted[i:i + args.batch_size], device=device),
                                          rng, args, None if prefixes is None else prefixes[i:i + args.batch_size])
                             for i in range(0, len(wanted), args.batch_size)])
    out = Path(args.output_dir)
    if images.ndim == 5:  # clips: a GIF each, and a grid of evenly spaced frames (a row per clip)
        for j, (label, clip) in enumerate(zip(wanted, images)):
            save_video(clip, out / f"class{label}_{j % args.samples_per_class}.gif")
        picks = np.linspace(0, images.shape[1] - 1, min(8, images.shape[1])).round().astype(int)
        grid = torchvision.utils.make_grid(torch.from_numpy(images[:, picks]).flatten(0, 1).permute(0, 3, 1, 2),
                                           nrow=len(picks), padding=2, pad_value=255)
        save_png(grid.permute(1, 2, 0).numpy(), out / "grid.png")
        print(f"{len(images)} clips of classes {labels} in {out} (GIFs; grid.png: a row per clip)")
        return out / "grid.png"
    for j, (label, image) in enumerate(zip(wanted, images)):
        save_png(image, out / f"class{label}_{j % args.samples_per_class}.png")
    by_column = torch.from_numpy(images).view(len(labels), args.samples_per_class, *images.shape[1:]).transpose(0, 1)
    grid = torchvision.utils.make_grid(by_column.flatten(0, 1).permute(0, 3, 1, 2), nrow=len(labels), padding=2,
                                       pad_value=255)
    save_png(grid.permute(1, 2, 0).numpy(), out / "grid.png")
    print(f"{len(images)} samples of classes {labels} in {out} (grid.png: a column per class)")
    return out / "grid.png"


# ------------------------------------------------------------------------------------------ FID mode


def make_labels(mode: str, num_classes: int, num_samples: int, seed: int) -> np.ndarray:
    if mode == "uniform":
        return np.random.default_rng(seed).integers(0, num_classes, num_samples)
    if num_samples % num_classes:
        raise ValueError(f"--labels balanced needs --num_samples a multiple of the {num_classes} classes, got "
                         f"{num_samples}; use e.g. {num_samples // num_classes * num_classes or num_classes}, or "
                         "--labels uniform")
    return np.arange(num_samples) % num_classes


def describe_run(args, model, tokenizer) -> dict:
    """protocol.json without progress: what a rerun into the same folder must match."""
    info = model.checkpoint_info
    tok_info = tokenizer.checkpoint_info
    label_rule = ("sample i has class i mod num_classes" if args.labels == "balanced" else
                  "numpy.random.default_rng(seed).integers(0, num_classes, num_samples)")
    return {
        "format": FORMAT,
        "generator": {"checkpoint": str(Path(args.ckpt_path).resolve()), "format": info["format"], "ema": info["ema"],
                      "global_step": info["global_step"], "config": args.config_file or args.gpt_config},
        "tokenizer": {"checkpoint": str(Path(tok_info["path"]).resolve()), "ema": tok_info["ema"],
                      "config": args.tokenizer_config},
        "num_samples": args.num_samples, "num_classes": model.num_classes, "labels": args.labels,
        "label_rule": label_rule, "sampling": sampling_settings(args), "seed": args.seed,
        "seed_rule": "shard k: torch.Generator(device).manual_seed(numpy SeedSequence([seed, k]).generate_state(1)[0])",
        "batch_size": args.batch_size, "shard_size": args.shard_size, "precision": args.precision,
        "compile": args.compile, "resize": args.resize,
        "pixels": "clamp to [-1, 1], round((x + 1) * 127.5) to uint8", "torch": torch.__version__,
    }


def prepare_output(out_dir: Path, run: dict, rank: int, world_size: int) -> None:
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not (out_dir / PROTOCOL).is_file():
            write_json_atomic(out_dir / PROTOCOL, run)
    if world_size > 1:
        dist.barrier()
    existing = read_json(out_dir / PROTOCOL, "sample protocol")
    differing = sorted(k for k in set(existing) | set(run) if k != "merged" and existing.get(k) != run.get(k))
    if differing:
        raise ValueError(f"{out_dir / PROTOCOL} describes other samples (differs in {differing}); use a new "
                         "--output_dir or delete the old one")


def finished(out_dir: Path, stem: str) -> bool:
    done = out_dir / f"{stem}.done.json"
    try:
        return done.is_file() and check_shard(out_dir, read_json(done, "shard record"), verify="size") is None
    except ValueError:  # a corrupt record: redo the shard
        return False


def write_sample_shard(out_dir: Path, stem: str, images: np.ndarray, labels: np.ndarray, seed: int, rank: int) -> None:
    """samples file under a temporary name, renamed into place, then its completion record."""
    name = f"{stem}.npz"
    with atomic_path(out_dir / name) as tmp, open(tmp, "wb") as f:
        np.savez(f, arr_0=images, labels=labels)
    record = {"name": stem, "num_images": len(images), "seed": seed, "rank": rank,
              "files": {name: {"bytes": (out_dir / name).stat().st_size, "sha256": file_sha256(out_dir / name)}}}
    write_json_atomic(out_dir / f"{stem}.done.json", record)


def merge_shards(out_dir: Path, stems: list, num_samples: int) -> dict:
    """samples.npz = the shards' arr_0 and labels concatenated in order, streamed (never all in memory)."""
    with np.load(out_dir / f"{stems[0]}.npz") as first:
        image_shape = first["arr_0"].shape[1:]
    with atomic_path(out_dir / MERGED) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        arrays = (("arr_0", np.uint8, (num_samples, *image_shape)), ("labels", np.int64, (num_samples,)))
        for key, dtype, shape in arrays:
            with archive.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
                for stem in stems:
                    with np.load(out_dir / f"{stem}.npz") as shard:
                        f.write(np.ascontiguousarray(shard[key], dtype=dtype).tobytes())
    return {"file": MERGED, "shape": [num_samples, *image_shape],
            "files": {MERGED: {"bytes": (out_dir / MERGED).stat().st_size, "sha256": file_sha256(out_dir / MERGED)}}}


def sample_for_fid(model, tokenizer, args, device, rank: int, world_size: int) -> Path:
    out_dir = Path(args.output_dir)
    labels = make_labels(args.labels, model.num_classes, args.num_samples, args.seed)
    prepare_output(out_dir, describe_run(args, model, tokenizer), rank, world_size)
    stems = [f"samples_{k:05d}" for k in range(-(-args.num_samples // args.shard_size))]
    todo = [k for k in range(rank, len(stems), world_size) if not finished(out_dir, stems[k])]
    if rank == 0 and len(todo) < len(range(rank, len(stems), world_size)):
        print(f"resuming: {len(range(rank, len(stems), world_size)) - len(todo)} of this rank's shards already written")
    progress = tqdm(total=sum(len(range(k * args.shard_size, min((k + 1) * args.shard_size, args.num_samples)))
                              for k in todo), desc="sampling", unit="img", disable=rank != 0, dynamic_ncols=True)
    for k in todo:
        shard_labels = labels[k * args.shard_size:(k + 1) * args.shard_size]
        rng = torch.Generator(device).manual_seed(shard_seed(args.seed, k))
        images = []
        for i in range(0, len(shard_labels), args.batch_size):
            batch = torch.from_numpy(shard_labels[i:i + args.batch_size]).to(device)
            images.append(sample_uint8(model, tokenizer, batch, rng, args))
            progress.update(len(batch))
        write_sample_shard(out_dir, stems[k], np.concatenate(images), shard_labels, shard_seed(args.seed, k), rank)
    progress.close()
    if world_size > 1:
        dist.barrier()
    path = out_dir / MERGED
    if rank == 0:
        missing = [s for s in stems if not finished(out_dir, s)]
        if missing:
            raise RuntimeError(f"shard(s) {missing[:4]} did not finish; rerun the same command to complete them")
        protocol = read_json(out_dir / PROTOCOL, "sample protocol")
        merged = protocol.get("merged")
        if not merged or check_shard(out_dir, merged, verify="size") is not None:
            protocol["merged"] = merge_shards(out_dir, stems, args.num_samples)
            write_json_atomic(out_dir / PROTOCOL, protocol)
        counts = np.bincount(labels, minlength=model.num_classes)
        print(f"{args.num_samples} samples ({args.labels} labels: {counts.min()} to {counts.max()} per class) in "
              f"{path}")
    return path


def main(argv=None) -> Path:
    args = parse_args(argv)
    device, rank, world_size = setup_device(args.device)
    if args.num_samples is None and world_size > 1:
        raise SystemExit("error: grid mode runs in one process; use torchrun with --num_samples")
    try:
        try:
            model, tokenizer = load_models(args, device)
        except RuntimeError as err:  # unreadable or mismatched checkpoints
            raise ValueError(err) from None
        prepare_model(model, args)
        if args.num_samples is None:
            return sample_grid(model, tokenizer, args, device)
        return sample_for_fid(model, tokenizer, args, device, rank, world_size)
    except BAD_INPUT as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


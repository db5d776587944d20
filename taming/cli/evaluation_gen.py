r"""Generation metrics of class-conditional samples against an ADM reference batch: FID, sFID, Inception Score,
precision and recall, as ADM's evaluator (guided-diffusion) computes them, with torch-fidelity's port of its
TF Inception. One GPU or CPU.

    python evaluation_gen.py --samples samples/GPT-B_cfg2.0.npz --ref_batch VIRTUAL_imagenet256_labeled.npz \
        --ref_cache fid_stats/ --output results/GPT-B_cfg2.0_gen.json
    python evaluation_gen.py --samples samples/shards/ --ref_batch VIRTUAL_imagenet256_labeled.npz   # *.npz shards
    python evaluation_gen.py --samples samples.npz --metrics is                              # no reference needed

Batches are .npz files with arr_0 = uint8 N x H x W x 3 (np.savez(path, images)); the protocol is 50,000 samples
at the reference's resolution. FID/sFID use the reference batch's stored statistics (ADM's TF graph over the whole
dataset) when it has them, as ADM does (--ref_stats). Precision/recall use the reference's arr_0 images (10,000
in ADM's batches). The Inception weight file comes from the torch hub cache (`torch.hub.get_dir()/checkpoints`)
or --inception_weights; nothing is downloaded.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from taming.cli.common import HelpFormatter
from taming.metrics.fid import INCEPTION_INPUT, frechet_distance
from taming.metrics.generation import (ADM_IS_SPLIT_SIZE, EXTRACTOR, INCEPTION_FILE, PR_DISTANCES, SPATIAL_DIM,
                                       GenerationInception, NpzImages, extract, file_fingerprint, inception_score, load_reference, npz_statistics,
                                       open_batches, precision_recall, read_batches, reference_cache_file,
                                       reference_cache_key, save_reference)
from taming.pretrained import resolve_weight_file

METRICS = ("fid", "sfid", "is", "precision", "recall")
PROTOCOL_SAMPLES = 50000
FEATURES = {
    "fid": "pool3, 2048-d",
    "sfid": f"mixed_6/conv (Mixed_6d.branch1x1 after ReLU), first 7 channels, 17 x 17 x 7 = {SPATIAL_DIM}-d, H W C order",
    "is": "softmax of the unbiased logits (pool3 @ W^T, 1008 classes)",
    "precision_recall": "pool3, 2048-d, squared Euclidean distances",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--samples", nargs="+", required=True,
                        help=".npz sample batch(es): files, folders (every *.npz inside, natural name order) or glob "
                             "patterns, read in the given order")
    parser.add_argument("--ref_batch", default=None,
                        help="ADM reference batch .npz (e.g. VIRTUAL_imagenet256_labeled.npz); needed by all metrics but is")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS), help="subset to compute")
    parser.add_argument("--ref_stats", choices=("auto", "npz", "recompute"), default="auto",
                        help="FID/sFID reference statistics: npz = the mu/sigma (mu_s/sigma_s) stored in --ref_batch (ADM's "
                             "TF Inception over the whole dataset, what ADM uses); recompute = from its arr_0 images with "
                             "our extractor; auto = npz when stored, else recompute")
    parser.add_argument("--num_samples", type=int, default=None, help="evaluate the first N samples (default: all)")
    parser.add_argument("--batch_size", type=int, default=200, help="images per Inception batch")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--inception_weights", default=None,
                        help=f"torch-fidelity Inception weight file {INCEPTION_FILE} (default: torch hub cache)")
    parser.add_argument("--ref_cache", default=None,
                        help="folder for the reference batch's features and statistics, reused when the reference file "
                             "(size + SHA-256), extractor weights and image count match (default: no cache)")
    parser.add_argument("--is_split_size", type=int, default=ADM_IS_SPLIT_SIZE,
                        help="Inception Score over consecutive chunks of this many samples, the last one shorter (ADM's "
                             "convention, what published tables report)")
    parser.add_argument("--is_splits", type=int, default=None,
                        help="instead of --is_split_size: this many equal parts (torch-fidelity's / the original IS "
                             "convention; equal to ADM's only at 50,000 samples with 10)")
    parser.add_argument("--pr_k", type=int, default=3, help="k-th nearest neighbour radius of precision/recall")
    parser.add_argument("--pr_batch_size", type=int, default=10000, help="rows and columns per distance block")
    parser.add_argument("--pr_distances", choices=PR_DISTANCES, default="float16",
                        help="precision/recall distance arithmetic: float16 with a float32 fallback for blocks holding a "
                             "non-finite value (ADM's evaluator, what published tables report) or float32")
    parser.add_argument("--tf32", action="store_true",
                        help="let cuDNN and matmuls use TF32 on Ampere+ GPUs (faster, less exact: 10-bit mantissas)")
    parser.add_argument("--output", default=None, help="JSON file (default: evaluation_gen_<first sample file>.json)")
    args = parser.parse_args(argv)
    for name in ("batch_size", "is_split_size", "is_splits", "pr_k", "pr_batch_size", "num_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be positive, got {value}")
    if args.ref_batch is None and set(args.metrics) != {"is"}:
        parser.error(f"--ref_batch is needed for {sorted(set(args.metrics) - {'is'})} (only --metrics is works without it)")
    return args


def resolution(images) -> str:
    return f"{images.height}x{images.width}"


def check_inputs(args):
    """(weights, sample files, number of samples, reference or None, {metric: (mu, sigma) from the npz}, warnings).
    Every input problem raises here, before any Inception pass."""
    weights = resolve_weight_file(INCEPTION_FILE, args.inception_weights, "--inception_weights")
    files = open_batches(args.samples)
    available = sum(f.count for f in files)
    n = args.num_samples or available
    if n > available:
        raise ValueError(f"--num_samples {n} but the sample files hold {available} images")
    metrics, warnings = set(args.metrics), []
    if "is" in metrics and args.is_splits is not None and n < args.is_splits:
        raise ValueError(f"Inception Score with --is_splits {args.is_splits} needs at least {args.is_splits} samples, got {n}")
    if metrics & {"precision", "recall"} and n <= args.pr_k:
        raise ValueError(f"precision/recall with --pr_k {args.pr_k} need more than {args.pr_k} samples, got {n}")
    if metrics & {"fid", "sfid"}:
        if n < 2:
            raise ValueError(f"FID needs at least 2 samples (covariance), got {n}")
        if n <= 2048:
            warnings.append(f"FID from {n} samples (<= 2048 feature dimensions: rank-deficient covariance) is strongly "
                            "biased; compare it only with FIDs over as many samples")
        elif n < PROTOCOL_SAMPLES:
            warnings.append(f"FID from {n} samples is biased upwards against the protocol's {PROTOCOL_SAMPLES}; compare "
                            "it only with FIDs over as many samples")
    ref, stored = None, {}
    if metrics - {"is"}:
        ref = NpzImages(args.ref_batch)
        if (ref.height, ref.width) != (files[0].height, files[0].width):
            raise ValueError(
                f"samples are {resolution(files[0])} px but the reference batch {ref.path.name} is {resolution(ref)} px: "
                f"ADM's protocol compares at the reference's resolution. Resize the samples to {resolution(ref)} before "
                "saving them (LlamaGen resizes 384 px samples to 256 px bicubically), or use the reference batch of the "
                f"samples' resolution")
        stored = npz_statistics(ref.path) if args.ref_stats != "recompute" else {}
        for metric in sorted(metrics & {"fid", "sfid"}):
            if args.ref_stats == "npz" and metric not in stored:
                raise ValueError(f"--ref_stats npz but {ref.path.name} stores no {metric} statistics; use --ref_stats recompute")
            if metric not in stored and ref.count < 2:
                raise ValueError(f"recomputing {metric} reference statistics needs at least 2 reference images, got {ref.count}")
        if metrics & {"precision", "recall"} and ref.count <= args.pr_k:
            raise ValueError(f"precision/recall with --pr_k {args.pr_k} need more than {args.pr_k} reference images, "
                             f"{ref.path.name} holds {ref.count}")
    return weights, files, n, ref, stored, warnings


def progress_bar(total: int, desc: str):
    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
    return bar, bar.update


def print_table(results: dict) -> None:
    width = max(len(k) for k in results)
    print("-" * (width + 16))
    for name, value in results.items():
        print(f"{name:<{width}}  {value:>12.6g}" if isinstance(value, float) else f"{name:<{width}}  {value:>12}")
    print("-" * (width + 16))


def main(argv=None) -> dict:
    """Parse `argv` (default sys.argv), evaluate, write the JSON; returns the metrics. TF32 is off unless --tf32
    (convolutions and matmuls); the backend flags are restored afterwards."""
    args = parse_args(argv)
    backends = torch.backends
    saved = backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32, backends.cudnn.benchmark
    backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = args.tf32
    backends.cudnn.benchmark = True
    try:
        return evaluate(args)
    finally:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32, backends.cudnn.benchmark = saved


def evaluate(args) -> dict:
    """Check every input, extract the reference (or read its cache) and the samples, compute, report."""
    start = time.perf_counter()
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise SystemExit(f"error: --device {args.device}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device} but CUDA is not available; use --device cpu")
    try:
        weights, files, n, ref, stored, warnings = check_inputs(args)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    metrics = [m for m in METRICS if m in args.metrics]
    stats_source = {m: "npz" if m in stored else "recomputed" for m in metrics if m in ("fid", "sfid")}
    need_ref_pass = bool(set(metrics) & {"precision", "recall"}) or "recomputed" in stats_source.values()

    hashing = time.perf_counter()
    sample_files = [{"path": str(f.path), **file_fingerprint(f.path), "num_images": f.count} for f in files]
    weights_fingerprint = file_fingerprint(weights)
    ref_fingerprint = file_fingerprint(ref.path) if ref is not None else None
    seconds = {"hashing": time.perf_counter() - hashing}
    try:
        model = GenerationInception(weights).to(device)
    except Exception as err:  # truncated or foreign file: RuntimeError, EOFError, UnpicklingError, KeyError, ...
        raise SystemExit(f"error: cannot load the Inception weights {weights} ({type(err).__name__}: {err}); replace "
                         f"the damaged file with torch-fidelity's {INCEPTION_FILE}") from None

    ref_acts, reference_features = None, {"source": "not needed", "cache": None}
    tick = time.perf_counter()
    if need_ref_pass:
        key = reference_cache_key(ref, ref_fingerprint, weights_fingerprint)
        path = reference_cache_file(args.ref_cache, key) if args.ref_cache else None
        reused = path is not None and path.is_file()
        if reused:
            try:
                ref_acts = load_reference(path, key, device)
            except ValueError as err:
                raise SystemExit(f"error: {err}") from None
        else:
            bar, update = progress_bar(ref.count, "reference")
            ref_acts = extract(model, ref.batches(args.batch_size), device, keep=("pool3",), progress=update)
            bar.close()
            if path is not None:
                save_reference(path, key, ref_acts)
        reference_features = {"source": "cache" if reused else "computed", "cache": None if path is None else str(path)}
    seconds["reference"] = time.perf_counter() - tick

    tick = time.perf_counter()
    keep = [name for name, wanted in (("pool3", {"precision", "recall"}), ("logits", {"is"})) if wanted & set(metrics)]
    bar, update = progress_bar(n, "samples")
    acts = extract(model, read_batches(files, args.batch_size, n), device, keep=keep, progress=update)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds["samples"] = time.perf_counter() - tick

    tick = time.perf_counter()
    results = {"num_samples": acts.count}
    for metric, stats_name in (("fid", "pool_stats"), ("sfid", "spatial_stats")):
        if metric in metrics:
            reference = stored[metric] if stats_source[metric] == "npz" else getattr(ref_acts, stats_name).mean_cov()
            results[metric] = frechet_distance(*reference, *getattr(acts, stats_name).mean_cov())
    if "is" in metrics:
        results["inception_score"], results["inception_score_std"] = inception_score(acts.logits, args.is_split_size,
                                                                                      args.is_splits)
    if {"precision", "recall"} & set(metrics):
        precision, recall = precision_recall(ref_acts.pool3.to(device), acts.pool3.to(device), args.pr_k, args.pr_batch_size,
                                             args.pr_distances)
        results.update({m: v for m, v in (("precision", precision), ("recall", recall)) if m in metrics})
    seconds["metrics"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - start

    protocol = {
        "metrics": metrics,
        "samples": sample_files, "num_samples": acts.count, "resolution": [files[0].height, files[0].width],
        "reference": None if ref is None else {"path": str(ref.path), **ref_fingerprint, "num_images": ref.count,
                                               "resolution": [ref.height, ref.width]},
        "reference_statistics": {m: (f"npz: {'mu/sigma' if m == 'fid' else 'mu_s/sigma_s'} stored in the reference batch "
                                     "(ADM's TF Inception over the whole dataset, as ADM's evaluator)" if s == "npz" else
                                     f"recomputed: torch-fidelity features of the reference's arr_0 ({ref.count} images)")
                                 for m, s in stats_source.items()},
        "reference_features": reference_features,
        "extractor": EXTRACTOR, "extractor_input": INCEPTION_INPUT["torch-fidelity"], "features": FEATURES,
        "inception_weights": str(weights), "inception_weights_sha256": weights_fingerprint["sha256"],
        "is_splits": (f"{args.is_splits} equal parts" if args.is_splits else
                      f"consecutive chunks of {args.is_split_size} (ADM)") if "is" in metrics else None,
        "pr_k": args.pr_k if {"precision", "recall"} & set(metrics) else None, "pr_batch_size": args.pr_batch_size,
        "pr_distance_dtype": ("float16, float32 for blocks with a non-finite value (ADM)" if args.pr_distances == "float16"
                              else "float32"),
        "batch_size": args.batch_size, "device": str(device), "tf32_convolutions": args.tf32 and device.type == "cuda",
        "seconds": seconds, "samples_per_second": acts.count / seconds["samples"],
        "torch": torch.__version__, "torch_fidelity": _version("torch_fidelity"), "numpy": np.__version__,
        "warnings": warnings,
    }
    print_table(results)
    for name, source in protocol["reference_statistics"].items():
        print(f"{name} reference statistics: {source}")
    print(f"{acts.count} samples at {resolution(files[0])} px on {device}: Inception {seconds['samples']:.1f} s "
          f"({protocol['samples_per_second']:.1f} images/s), total {seconds['total']:.1f} s")
    for warning in warnings:
        print(f"note: {warning}")
    bad = [k for k, v in results.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        print(f"warning: non-finite {bad}")
    output = Path(args.output or f"evaluation_gen_{files[0].path.stem}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"metrics": results, "protocol": protocol}, indent=2) + "\n")
    print(f"wrote {output}")
    return results


def _version(module: str) -> str:
    import importlib

    return getattr(importlib.import_module(module), "__version__", "unknown")


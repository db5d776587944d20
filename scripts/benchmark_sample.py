"""Sampling speed of the AR generators: generated tokens per second with the static KV cache, with torch.compile
(--compile) and without the cache (the whole prefix recomputed each step). Random weights; prints numbers.

    python scripts/benchmark_sample.py                                    # tiny GPT, CPU
    python scripts/benchmark_sample.py --size tiny-factorized --cfg 1.0
    python scripts/benchmark_sample.py --size GPT-B --batch 32 --cfg 2.0 --dtype bfloat16 --compile
    python scripts/benchmark_sample.py --size OM2-AR-B --batch 16 --cfg 1.9 --skip-recompute

Tokens/s counts the image tokens produced (batch x num_tokens per call); guidance doubles the work per token.
"""
import argparse
import time

import torch

from taming.generator import build_generator
from taming.modules.transformer import GENERATORS, GPT, FactorizedGPT

TINY = {  # small enough for a laptop CPU
    "tiny": lambda: GPT(vocab_size=4096, num_tokens=64, dim=128, n_layer=4, n_head=4, num_classes=10),
    "tiny-factorized": lambda: FactorizedGPT(num_tokens=64, dim=128, n_layer=4, n_intra_layer=2, n_head=4,
                                             num_classes=10),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", choices=sorted(TINY) + sorted(n for cls in GENERATORS for n in cls.sizes))
    p.add_argument("--num-tokens", type=int, default=None,
                   help="image tokens (default: the preset's, 256 for the full sizes)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cfg", type=float, default=2.0, help="guidance scale; 1.0 = off (no doubled batch)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd decode steps")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: reduce-overhead on CUDA, "
                                                        "default on CPU)")
    p.add_argument("--skip-recompute", action="store_true", help="skip the slow run without the KV cache")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per setting (after one warm-up call)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    return p.parse_args()


def time_generate(model, labels, cfg, use_cache, repeats, device) -> float:
    """Seconds per generate call (median of `repeats`, after a warm-up call)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)
    model.generate(labels, cfg_scale=cfg, generator=gen, use_cache=use_cache)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        model.generate(labels, cfg_scale=cfg, generator=gen, use_cache=use_cache)
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(0)
    overrides = {"num_tokens": args.num_tokens} if args.num_tokens else {}
    if args.size in TINY:
        model = TINY[args.size]()
        if overrides:
            raise SystemExit("--num-tokens applies to the named full sizes only")
    else:
        model = build_generator(args.size, **overrides)
    model = model.to(device=device, dtype=getattr(torch, args.dtype)).eval()
    labels = torch.randint(0, model.num_classes, (args.batch,), device=device)
    n = model.num_tokens
    params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.size}: {params / 1e6:.1f}M parameters, {n} tokens/image, batch {args.batch}, cfg {args.cfg}, "
          f"{args.dtype}, {name}, torch {torch.__version__}")

    settings = [("KV cache", True)] + ([] if args.skip_recompute else [("no cache (recompute prefix)", False)])
    results = [(label, time_generate(model, labels, args.cfg, cache, args.repeats, device))
               for label, cache in settings]
    if args.compile:
        mode = args.compile_mode or ("reduce-overhead" if device.type == "cuda" else "default")
        model.decode_step = torch.compile(model.decode_step, mode=mode, fullgraph=True)
        if isinstance(model, FactorizedGPT):
            model.intra_logits = torch.compile(model.intra_logits, mode=mode, dynamic=False)
        start = time.perf_counter()
        model.generate(labels, cfg_scale=args.cfg, use_cache=True)  # compiles
        print(f"  torch.compile (mode {mode}): first call incl. compilation {time.perf_counter() - start:.1f} s")
        results.append((f"KV cache + torch.compile ({mode})",
                        time_generate(model, labels, args.cfg, True, args.repeats, device)))
    for label, seconds in results:
        print(f"  {label:<42} {seconds:8.3f} s/batch  {args.batch * n / seconds:10.1f} tokens/s  "
              f"{args.batch / seconds:8.2f} images/s")


if __name__ == "__main__":
    main()

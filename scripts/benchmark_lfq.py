"""Forward+backward time and peak memory of the LFQ entropy terms: exact factorised form vs the naive one.

The naive form materialises the N x 2^d code distribution, as Open-MAGVIT2 does; it lives here and serves
the tests as their oracle. Each case runs in a fresh subprocess so that CPU peak RSS is per case.

    python scripts/benchmark_lfq.py                 # d = 18, N = 2048 and 8192, CPU (+ CUDA when present)
    python scripts/benchmark_lfq.py --tokens 2048 --device cpu
"""
import argparse
import json
import subprocess
import sys

import torch

from taming.cli.timing import time_steps
from taming.modules.quantizers.entropy import codebook_entropy, per_sample_entropy


def all_codes(d: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """2^d x d matrix of every {-1, +1} code (row k: channel i is bit i of k; order is irrelevant to entropies)."""
    k = torch.arange(2**d, device=device)
    return (((k[:, None] >> torch.arange(d, device=device)) & 1) * 2 - 1).to(dtype)


def naive_entropy_terms(z: torch.Tensor, temperature: float = 0.01, eps: float = 1e-5):
    """(per-sample entropy, codebook entropy) from the explicit N x 2^d softmax; z: N x d."""
    logits = 2 * z @ all_codes(z.shape[1], z.dtype, z.device).T / temperature
    log_p = logits.log_softmax(dim=-1)
    p = log_p.exp()
    per_sample = -(p * log_p).sum(dim=-1).mean()
    avg = p.mean(dim=0)
    return per_sample, -(avg * torch.log(avg + eps)).sum()


def exact_entropy_terms(z: torch.Tensor, temperature: float = 0.01, eps: float = 1e-5):
    return per_sample_entropy(z, temperature), codebook_entropy(z, temperature, eps)


def run_case(method: str, tokens: int, dim: int, device: str, repeats: int) -> dict:
    fn = {"naive": naive_entropy_terms, "exact": exact_entropy_terms}[method]
    gen = torch.Generator().manual_seed(0)
    z = (0.3 * torch.randn(tokens, dim, generator=gen) + 0.2 * torch.randn(1, dim, generator=gen)).to(device)
    z.requires_grad_(True)

    def step():
        z.grad = None
        h_s, h_cb = fn(z)
        (h_s - h_cb).backward()
        return h_s.item(), h_cb.item()

    values, ms, peak_mib = time_steps(step, device, repeats)
    return {"method": method, "tokens": tokens, "dim": dim, "device": device, "ms": ms, "peak_mib": peak_mib,
            "per_sample_entropy": values[0], "codebook_entropy": values[1]}


def naive_bytes(tokens: int, dim: int) -> int:
    return 6 * tokens * 2**dim * 4  # ~6 live N x 2^d fp32 tensors (logits, log_softmax, p, products, grads)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=18)
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--device", nargs="+", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_naive_gib", type=float, default=16.0, help="skip naive cases estimated above this")
    parser.add_argument("--_case", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._case:
        method, tokens, dim, device = args._case
        print(json.dumps(run_case(method, int(tokens), int(dim), device, args.repeats)))
        return

    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"LFQ entropy terms, d = {args.dim}, forward+backward, mean of {args.repeats} runs")
    print(f"{'device':7} {'tokens':>7} {'method':7} {'ms':>10} {'peak MiB':>10} {'H_s':>9} {'H_cb':>9}")
    for device in devices:
        for tokens in args.tokens:
            for method in ("exact", "naive"):
                if method == "naive" and naive_bytes(tokens, args.dim) > args.max_naive_gib * 2**30:
                    print(f"{device:7} {tokens:7d} {method:7} skipped: needs ~{naive_bytes(tokens, args.dim) / 2**30:.0f} GiB "
                          f"(> --max_naive_gib {args.max_naive_gib:g})")
                    continue
                cmd = [sys.executable, __file__, "--repeats", str(args.repeats), "--_case", method, str(tokens), str(args.dim), device]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    print(f"{device:7} {tokens:7d} {method:7} failed: {proc.stderr.strip().splitlines()[-1]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{device:7} {tokens:7d} {method:7} {r['ms']:10.1f} {r['peak_mib']:10.0f} "
                      f"{r['per_sample_entropy']:9.5f} {r['codebook_entropy']:9.5f}")
    print("CPU peak is the process's max RSS (includes ~300 MiB of PyTorch itself); CUDA peak is max_memory_allocated.")


if __name__ == "__main__":
    main()

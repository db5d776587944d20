"""Forward+backward time and peak memory of the VQ lookup + entropy loss: chunked vs the materialised form.

The materialised form (LlamaGen / GigaTok) keeps several N x K tensors for autograd; the chunked one
(`taming.modules.quantizers.vq_entropy`) holds one block of rows at a time. Each case runs in a fresh subprocess
so that the CPU peak RSS is per case.

    python scripts/benchmark_vq.py                            # K = 16384, d = 8, N = 2048 and 8192 (32 x 256)
    python scripts/benchmark_vq.py --tokens 8192 --device cuda
"""
import argparse
import json
import subprocess
import sys

import torch
import torch.nn.functional as F

from taming.cli.timing import time_steps
from taming.modules.quantizers.vq_entropy import lookup_with_entropy, plain_lookup_with_entropy

METHODS = {"chunked": lookup_with_entropy, "plain": plain_lookup_with_entropy}


def run_case(method: str, tokens: int, codes: int, dim: int, device: str, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(tokens, dim, generator=gen), dim=1).to(device).requires_grad_(True)
    e = F.normalize(torch.randn(codes, dim, generator=gen), dim=1).to(device).requires_grad_(True)

    def step():
        z.grad = e.grad = None
        _, sample, codebook = METHODS[method](z, e, 0.01)
        (sample - codebook).backward()
        return sample.item(), codebook.item()

    values, ms, peak_mib = time_steps(step, device, repeats)
    return {"ms": ms, "peak_mib": peak_mib, "sample_entropy": values[0], "codebook_entropy": values[1]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--device", nargs="+", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--_case", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._case:
        method, tokens, codes, dim, device = args._case
        print(json.dumps(run_case(method, int(tokens), int(codes), int(dim), device, args.repeats)))
        return

    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"VQ lookup + entropy loss, K = {args.codes}, d = {args.dim}, forward+backward, mean of {args.repeats} runs; "
          f"one N x K float32 matrix is {args.tokens[-1] * args.codes * 4 / 2**20:.0f} MiB at N = {args.tokens[-1]}")
    print(f"{'device':7} {'tokens':>7} {'method':8} {'ms':>10} {'peak MiB':>10} {'H_sample':>9} {'H_codebook':>10}")
    for device in devices:
        for tokens in args.tokens:
            for method in METHODS:
                cmd = [sys.executable, __file__, "--repeats", str(args.repeats), "--_case", method, str(tokens),
                       str(args.codes), str(args.dim), device]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    print(f"{device:7} {tokens:7d} {method:8} failed: {proc.stderr.strip().splitlines()[-1]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{device:7} {tokens:7d} {method:8} {r['ms']:10.1f} {r['peak_mib']:10.0f} "
                      f"{r['sample_entropy']:9.5f} {r['codebook_entropy']:10.5f}")
    print("CPU peak is the process's max RSS (includes ~300 MiB of PyTorch itself); CUDA peak is max_memory_allocated.")


if __name__ == "__main__":
    main()

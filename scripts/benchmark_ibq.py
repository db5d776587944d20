"""IBQ quantizer: time and peak memory of forward + backward (with the entropy loss), chunked (ours) against the
materialised form of the release, at several token counts N and codebook sizes K (dim 256 by default).

    python scripts/benchmark_ibq.py                       # CPU table
    python scripts/benchmark_ibq.py --device cuda --n 256 1024 4096 --k 16384 262144

Peak memory: CUDA's max_memory_allocated above the inputs; on CPU the resident-set high-water mark above the
inputs, each setting in a fresh process (Linux /proc). "oom" marks a setting that ran out of memory.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from taming.modules.quantizers import IBQ
from taming.modules.quantizers.ibq import plain_ibq


def _rss(key: str) -> int:
    import re

    return int(re.search(key + r":\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024


def run_one(n: int, k: int, dim: int, impl: str, device: str, repeats: int) -> dict:
    """Median seconds and peak extra bytes of one forward + backward."""
    torch.manual_seed(0)
    dev = torch.device(device)
    quantizer = IBQ(k, dim).to(dev)
    side = int(n ** 0.5)
    z = torch.randn(n // (side * side), dim, side, side, device=dev, requires_grad=True)
    probe = torch.randn_like(z)

    def step():
        quantizer.embedding.weight.grad, z.grad = None, None
        if impl == "chunked":
            out = quantizer(z)
            quantized, loss = out.quantized, out.loss
        else:
            quantized, _, quant, sample, batch = plain_ibq(z, quantizer.embedding.weight)
            loss = quant + 0.05 * (sample - batch)
        ((quantized * probe).sum() + loss).backward()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")
        base = _rss("VmRSS")
    step()
    sync()
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else _rss("VmHWM")) - base
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return {"seconds": sorted(times)[len(times) // 2], "peak_bytes": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[256, 1024], help="tokens (256 = one 256 px image)")
    p.add_argument("--k", type=int, nargs="+", default=[16384, 65536, 262144], help="codebook sizes")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", nargs=3, metavar=("N", "K", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        n, k, impl = int(args.one[0]), int(args.one[1]), args.one[2]
        print(json.dumps(run_one(n, k, args.dim, impl, args.device, args.repeats)))
        return
    print(f"IBQ forward + backward with the entropy loss, dim {args.dim}, {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'N':>6} {'K':>8} | {'chunked s':>9} {'peak MiB':>9} | {'materialised s':>14} {'peak MiB':>9}")
    for n in args.n:
        for k in args.k:
            row = []
            for impl in ("chunked", "materialised"):
                cmd = [sys.executable, __file__, "--one", str(n), str(k), impl, "--dim", str(args.dim),
                       "--device", args.device, "--repeats", str(args.repeats)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    row.append(("oom" if "memory" in res.stderr.lower() or res.returncode < 0 else "error", ""))
                    continue
                out = json.loads(res.stdout)
                row.append((f"{out['seconds']:.3f}", f"{out['peak_bytes'] / 2 ** 20:.0f}"))
            print(f"{n:>6} {k:>8} | {row[0][0]:>9} {row[0][1]:>9} | {row[1][0]:>14} {row[1][1]:>9}")


if __name__ == "__main__":
    main()

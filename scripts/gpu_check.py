r"""One command for the GPU figures: mixed-precision fit steps of the demo configs, training throughput / MFU / peak
memory at batch 8 and at the largest batch that fits, sampling speed with and without torch.compile, and the
evaluation metrics' speed. Writes <out>/gpu_check.json and <out>/gpu_check.md (a table for the README).

    python scripts/gpu_check.py --out gpu_check/                  # on a machine with one CUDA GPU, ~8 minutes
    python scripts/gpu_check.py --wheels /path/to/wheels --out ... # install missing packages from local wheels first
    python scripts/gpu_check.py --dry_run                          # print the steps only

Every step runs in its own process with a time limit (a failure or an out-of-memory is recorded, the rest goes on);
the whole run stops starting new steps when --budget_s is spent. Without CUDA it says so and exits 0.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("lightning", "jsonargparse", "omegaconf", "einops", "timm", "lpips", "pytorch_fid", "torch_fidelity",
          "yaml", "skimage", "tensorboard", "matplotlib", "tqdm")
PIP_NAMES = {"yaml": "pyyaml", "skimage": "scikit-image", "pytorch_fid": "pytorch-fid", "torch_fidelity": "torch-fidelity",
             "jsonargparse": "jsonargparse[signatures]"}
FIT_CONFIGS = ("demo.yaml", "demo_vq.yaml", "gigatok/demo_hybrid.yaml")
TRAIN_CONFIGS = ("imagenet_lfqgan_128_B.yaml", "imagenet_lfqgan_256_B.yaml", "llamagen_vq16.yaml",
                 "gigatok/VQ_SS256.yaml")
GPU_PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "V100": 125.0}  # dense bf16/fp16 TFLOP/s


def steps(python: str) -> list:
    """(name, argv, timeout_s) of every measurement, in order of importance."""
    fit = [python, str(REPO / "main.py"), "fit", "--trainer.accelerator", "gpu", "--trainer.devices", "1",
           "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"]
    out = []
    for config in FIT_CONFIGS:
        for precision in ("bf16-mixed", "16-mixed"):
            out.append((f"fit {config} {precision}", [*fit, "--config", str(REPO / "configs" / config),
                                                      "--trainer.precision", precision], 180))
    demo = [*fit, "--config", str(REPO / "configs" / "demo.yaml"), "--trainer.precision", "bf16-mixed"]
    for option in ("torch_compile", "fused_adam", "channels_last"):
        out.append((f"fit demo.yaml bf16-mixed {option}", [*demo, f"--model.init_args.{option}", "true"], 240))
    train = [python, str(REPO / "scripts" / "benchmark_train.py"), "--no_pretrained", "--precision", "bf16-mixed",
             "--steps", "10", "--warmup", "3"]
    for config in TRAIN_CONFIGS:
        out.append((f"train {config} batch 8", [*train, "--config", str(REPO / "configs" / config), "--batch_size",
                                               "8"], 240))
        out.append((f"train {config} largest batch", [*train, "--config", str(REPO / "configs" / config)], 0))
    sample = [python, str(REPO / "scripts" / "benchmark_sample.py"), "--size", "GPT-B", "--num-tokens", "256",
              "--batch", "8", "--dtype", "bfloat16", "--skip-recompute"]
    out.append(("sample GPT-B bf16", sample, 180))
    out.append(("sample GPT-B bf16 compiled", [*sample, "--compile"], 300))
    out.append(("evaluation metrics 256 px", [python, str(REPO / "scripts" / "benchmark_eval.py"), "--random_weights",
                                              "--batch_size", "32", "--steps", "5"], 240))
    return out


def missing_packages() -> list:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def install(wheels: str, names: list) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels,
                    *[PIP_NAMES.get(n, n) for n in names]], check=True)


def run_step(argv: list, timeout: float) -> dict:
    start = time.perf_counter()
    try:
        # this clone's package first: the GPU machine may hold no (or another clone's) editable install
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        ok, tail = proc.returncode == 0, (proc.stdout + proc.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        ok, tail = False, f"timed out after {timeout:.0f} s"
    lines = [line for line in tail.splitlines() if line.strip()]
    oom = "out of memory" in tail.lower()
    return {"ok": ok, "oom": oom, "seconds": round(time.perf_counter() - start, 1), "output": lines[-6:]}


def largest_batch(argv: list, deadline: float) -> dict:
    """Double the batch from 8 while the step succeeds (and time is left): the largest that fits, with its output."""
    best, batch = None, 8
    while time.time() < deadline:
        result = run_step([*argv, "--batch_size", str(batch)], min(240.0, max(10.0, deadline - time.time())))
        if not result["ok"]:
            break
        best, batch = {**result, "batch_size": batch}, batch * 2
    return best or {"ok": False, "batch_size": None, "output": ["batch 8 did not fit"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--wheels", default=None, help="folder of wheels to install missing packages from (no index)")
    parser.add_argument("--budget_s", type=float, default=480.0, help="start no step after this many seconds")
    parser.add_argument("--dry_run", action="store_true", help="print the steps, run nothing")
    args = parser.parse_args(argv)
    plan = steps(sys.executable)
    if args.dry_run:
        for name, command, timeout in plan:
            print(f"{name}: {' '.join(command)} (limit {timeout or 'search'} s)")
        return {"steps": [name for name, _, _ in plan]}
    missing = missing_packages()
    if missing and args.wheels:
        install(args.wheels, missing)
        missing = missing_packages()
    if missing:
        raise SystemExit(f"error: missing packages {missing}; pass --wheels DIR with their wheels (pip install "
                         "--no-index --find-links DIR) or install requirements.txt")
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        report = {"cuda": False, "message": "no CUDA: this check needs one CUDA GPU; nothing was measured"}
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
        print(report["message"])
        return report
    gpu = torch.cuda.get_device_name(0)
    peak = next((v for k, v in GPU_PEAKS.items() if k in gpu), None)
    report = {"cuda": True, "gpu": gpu, "torch": torch.__version__, "steps": {}}
    start = time.time()
    for name, command, timeout in plan:
        if time.time() - start > args.budget_s:
            report["steps"][name] = {"ok": False, "output": ["not run: time budget spent"]}
            continue
        if peak and "benchmark_train" in command[1]:
            command = [*command, "--peak_tflops", str(peak)]
        result = largest_batch(command, start + args.budget_s) if timeout == 0 else run_step(command, timeout)
        report["steps"][name] = result
        print(f"{name}: {'ok' if result['ok'] else 'FAILED'} {result.get('output', [''])[-1] if result.get('output') else ''}",
              flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [f"| {name} | {'ok' if r['ok'] else 'failed'} | {r.get('batch_size', '')} | "
            f"{'; '.join(r.get('output', [])[-3:]).replace('|', '/')} |" for name, r in report["steps"].items()]
    (out / "gpu_check.md").write_text(f"GPU: {gpu}, torch {torch.__version__}\n\n| step | status | largest batch | "
                                      "output (last lines) |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return report


if __name__ == "__main__":
    main()

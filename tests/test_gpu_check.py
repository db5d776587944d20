"""scripts/gpu_check.py on a machine without CUDA: the plan covers the asked-for measurements, every command it
would run exists and parses its options, and a real run reports "no CUDA" cleanly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts import gpu_check

REPO = Path(__file__).resolve().parents[1]


def test_plan_covers_the_measurements_and_every_command_parses():
    plan = gpu_check.steps(sys.executable)
    names = [name for name, _, _ in plan]
    for wanted in ("bf16-mixed", "16-mixed", "torch_compile", "fused_adam", "channels_last", "largest batch",
                   "compiled", "evaluation"):
        assert any(wanted in name for name in names), wanted
    for config in gpu_check.FIT_CONFIGS + gpu_check.TRAIN_CONFIGS:
        assert (REPO / "configs" / config).is_file()
    for script in {command[1] for _, command, _ in plan if command[1].endswith(".py") and "main.py" not in command[1]}:
        proc = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-1000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the check would run for minutes")
def test_without_cuda_it_says_so_and_exits_cleanly(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "no CUDA" in proc.stdout
    assert json.loads((tmp_path / "gpu_check.json").read_text())["cuda"] is False


def test_steps_import_this_clones_package(monkeypatch):
    """The benchmark scripts import `taming`; a GPU machine may hold no editable install (or another clone's):
    every step runs with this clone first on PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    step = gpu_check.run_step([sys.executable, "-c", "import os; print(os.environ['PYTHONPATH'])"], 60)
    assert step["ok"] and step["output"] == [f"{REPO}{os.pathsep}/elsewhere"]

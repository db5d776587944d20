"""Every ```python block of README.md runs, so the examples cannot rot.

The examples refer to released checkpoints; the test writes each with its architecture and random weights in the
released format: `models/imagenet_256_B.ckpt` (Open-MAGVIT2: a Lightning dict with `state_dict` and `model_ema.*`
shadows), `models/c2i_B_256.pt` (LlamaGen GPT-B: {"model": state dict}) and `models/vq_ds16_c2i.pt` (LlamaGen VQ-16).
"""
import os
import re
from pathlib import Path

import torch

from taming import Tokenizer, build_generator, build_tokenizer
from taming.released.llamagen import llamagen_config, ours_to_llamagen

REPO = Path(__file__).resolve().parents[1]
CONFIG_256_B = dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, z_channels=18)


def python_blocks():
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert blocks, "README.md has no python examples"
    (tmp_path / "models").mkdir()  # no configs/ here: shipped configs are found by name from any folder
    torch.manual_seed(0)
    state = build_tokenizer(CONFIG_256_B).state_dict()
    ema = {"model_ema." + k.replace(".", ""): v for k, v in state.items()}
    torch.save({"state_dict": {**state, **ema}, "global_step": 0}, tmp_path / "models" / "imagenet_256_B.ckpt")
    vq16 = Tokenizer(**llamagen_config("VQ-16"))
    torch.save({"model": ours_to_llamagen(vq16.state_dict())}, tmp_path / "models" / "vq_ds16_c2i.pt")
    torch.save({"model": build_generator("GPT-B", num_tokens=256).state_dict()}, tmp_path / "models" / "c2i_B_256.pt")
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})


def test_ci_requires_the_reference_fixtures(tmp_path):
    """With CI=true a missing reference folder stops the run with a clear message instead of skipping tests."""
    import subprocess
    import sys

    env = {**os.environ, "CI": "true", "TAMING_REFERENCE_DIR": str(tmp_path / "missing")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_discriminator.py"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "CI run without the reference fixtures" in proc.stdout + proc.stderr

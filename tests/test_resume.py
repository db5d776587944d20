"""No lost work: a real training run killed with SIGKILL mid-epoch resumes from the checkpoint it left and ends
exactly where the uninterrupted run ends (same data order, same random crops and flips, DataLoader workers on)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo_crops(folder: Path, n: int = 32) -> None:
    """n small PNGs (48 x 40 px regions of real photographs): random 32 px crops of them differ."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        photo = getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()
        top, left = rng.integers(0, photo.shape[0] - 160), rng.integers(0, photo.shape[1] - 192)
        region = Image.fromarray(photo[top:top + 160, left:left + 192]).resize((48, 40), Image.BICUBIC)
        region.save(folder / f"{i:02d}.png")


def fit(tmp_path: Path, run: str, *extra: str, kill_at: int = None, every_n_train_steps: int = 5
        ) -> subprocess.CompletedProcess:
    callbacks = [{"class_path": "taming.callbacks.PeriodicCheckpoint",
                  "init_args": {"dirpath": str(tmp_path / run), "every_n_train_steps": every_n_train_steps}}]
    if kill_at is not None:
        callbacks.append({"class_path": "callbacks_for_tests.KillAtStep", "init_args": {"step": kill_at}})
    overlay = {
        "trainer": {"max_steps": 12, "limit_val_batches": 0, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "callbacks": callbacks},
        "data": {"init_args": {"batch_size": 4, "num_workers": 2, "validation": None, "train": {
            "class_path": "taming.data.ImageFolder",
            "init_args": {"root": str(tmp_path / "photos"), "size": 32, "random_crop": True, "hflip": True,
                          "index_cache_dir": str(tmp_path / "index")}}}},
    }
    (tmp_path / f"{run}.yaml").write_text(yaml.safe_dump(overlay))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config", str(REPO / "configs" / "demo.yaml"),
                           "--config", str(tmp_path / f"{run}.yaml"), *extra], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run: 12 steps, 32 images at batch 4 = 8 steps per epoch."""
    root = tmp_path_factory.mktemp("resume")
    photo_crops(root / "photos")
    proc = fit(root, "straight")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.mark.parametrize("every_n_train_steps, kill_at, saved_at, position",
                         [(5, 7, 5, (0, 5)), (0, 9, 8, (0, 8)), (5, 11, 10, (1, 2))],
                         ids=["mid-epoch", "epoch-end", "second-epoch"])
def test_sigkill_then_resume_equals_uninterrupted_run(straight, every_n_train_steps, kill_at, saved_at, position):
    """Killed with SIGKILL after a checkpoint inside the first epoch (step 5 of 8), at its end (step 8: the epoch-end
    save of a step-limited run), or inside the second (step 10), the resumed run ends like the straight one."""
    run = f"killed_{saved_at}"
    killed = fit(straight, run, kill_at=kill_at, every_n_train_steps=every_n_train_steps)
    assert killed.returncode == -9  # SIGKILL: nothing could run on the way out
    saved = torch.load(straight / run / "last.ckpt", weights_only=True)
    assert saved["global_step"] == saved_at and saved["ImageDataModule"] == dict(zip(("epoch", "batches"), position))
    assert not list((straight / run).glob(".*partial"))  # no half-written file left behind

    resumed = fit(straight, run, "--ckpt_path", str(straight / run / "last.ckpt"),
                  every_n_train_steps=every_n_train_steps)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(straight / "straight" / "last.ckpt", weights_only=True)
    b = torch.load(straight / run / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12 and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:  # weights, EMA shadows, BatchNorm statistics, LeCam averages
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0, msg=key)
    for state_a, state_b in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0)

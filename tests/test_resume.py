"""No lost work: a real training run killed with SIGKILL mid-epoch resumes from the checkpoint it left and ends
exactly where the uninterrupted run ends (same data order, same random crops and flips, DataLoader workers on)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def fit(tmp_path: Path, run: str, *extra: str, kill_at: int = None) -> subprocess.CompletedProcess:
    callbacks = [{"class_path": "taming.callbacks.PeriodicCheckpoint",
                  "init_args": {"dirpath": str(tmp_path / run), "every_n_train_steps": 5}}]
    if kill_at is not None:
        callbacks.append({"class_path": "callbacks_for_tests.KillAtStep", "init_args": {"step": kill_at}})
    overlay = {
        "trainer": {"max_steps": 10, "limit_val_batches": 0, "logger": False, "enable_progress_bar": False,
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


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    photo_crops(tmp_path / "photos")  # 32 images, batch 4: 8 batches per epoch; step 5 is inside epoch 0
    straight = fit(tmp_path, "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = fit(tmp_path, "killed", kill_at=7)
    assert killed.returncode == -9  # SIGKILL: nothing could run on the way out
    saved = torch.load(tmp_path / "killed" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5 and saved["ImageDataModule"] == {"epoch": 0, "batches": 5}
    assert not list((tmp_path / "killed").glob(".*partial"))  # no half-written file left behind

    resumed = fit(tmp_path, "killed", "--ckpt_path", str(tmp_path / "killed" / "last.ckpt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "straight" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 10 and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:  # weights, EMA shadows, BatchNorm statistics, LeCam averages
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0, msg=key)
    for state_a, state_b in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0)

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


def fit(tmp_path: Path, run: str, *extra: str, kill_at: int = None, every_n_train_steps: int = 5,
        max_steps: int = 12) -> subprocess.CompletedProcess:
    callbacks = [{"class_path": "taming.callbacks.PeriodicCheckpoint",
                  "init_args": {"dirpath": str(tmp_path / run), "every_n_train_steps": every_n_train_steps}}]
    if kill_at is not None:
        callbacks.append({"class_path": "callbacks_for_tests.KillAtStep", "init_args": {"step": kill_at}})
    overlay = {
        "trainer": {"max_steps": max_steps, "limit_val_batches": 0, "logger": False, "enable_progress_bar": False,
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
    assert_same_run(straight / "straight" / "last.ckpt", straight / run / "last.ckpt")


def test_extending_a_finished_run_equals_the_longer_run(straight):
    """A run that ended by max_steps mid-epoch (step 6 of 8), resumed with a larger max_steps, ends like the straight
    12-step run: its final checkpoint is taken at the last batch, with the loop and sampler where they stopped."""
    first = fit(straight, "extended", max_steps=6)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = torch.load(straight / "extended" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6 and saved["ImageDataModule"] == {"epoch": 0, "batches": 6}
    longer = fit(straight, "extended", "--ckpt_path", str(straight / "extended" / "last.ckpt"), max_steps=12)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert_same_run(straight / "straight" / "last.ckpt", straight / "extended" / "last.ckpt")


def test_resume_config_wins_and_architecture_changes_are_refused(straight, tmp_path):
    """At resume the command line beats the checkpoint's stored hyper-parameters (printed as a note); a different
    architecture is refused at start with the list of differences, in one line per difference and no traceback."""
    ckpt = tmp_path / "start.ckpt"
    ckpt.write_bytes((straight / "straight" / "last.ckpt").read_bytes())
    run = fit(straight, "lr_override", "--ckpt_path", str(ckpt), "--model.init_args.learning_rate", "0.25",
              max_steps=13)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "learning_rate: 0.001 -> 0.25" in run.stderr
    out = torch.load(straight / "lr_override" / "last.ckpt", weights_only=True)
    assert out["global_step"] == 13 and out["hyper_parameters"]["learning_rate"] == 0.25
    assert {g["lr"] for g in out["optimizer_states"][0]["param_groups"]} == {0.25}

    refused = fit(straight, "arch_change", "--ckpt_path", str(ckpt), "--model.init_args.ddconfig.ch", "64",
                  max_steps=13)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "ddconfig.ch: 32 -> 64" in refused.stderr
    assert not (straight / "arch_change" / "last.ckpt").exists()


def test_checkpoint_hyperparameters_never_choose_code(straight, tmp_path):
    """A checkpoint whose stored hyper-parameters name a shell command as the discriminator (it passes
    torch.load(weights_only=True)) runs nothing at `main.py fit/validate --ckpt_path`; the error names the class path."""
    marker = tmp_path / "pwned"
    ckpt = torch.load(straight / "straight" / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["lossconfig"]["discriminator"] = {
        "class_path": "subprocess.run", "init_args": {"args": ["touch", str(marker)]}}
    torch.save(ckpt, tmp_path / "evil.ckpt")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    for command in ("fit", "validate"):
        proc = subprocess.run([sys.executable, str(REPO / "main.py"), command, "--config",
                               str(REPO / "configs" / "demo.yaml"), "--config", str(straight / "straight.yaml"),
                               "--ckpt_path", str(tmp_path / "evil.ckpt")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert not marker.exists(), command
        assert proc.returncode != 0 and "subprocess.run" in proc.stderr, proc.stderr[-2000:]


def test_stale_partial_checkpoints_are_removed_at_start(straight):
    """A save killed mid-write leaves `.last.ckpt.partial`; the next fit into that folder removes it first."""
    folder = straight / "partial"
    folder.mkdir()
    (folder / ".last.ckpt.partial").write_bytes(b"\0" * 1024)
    proc = fit(straight, "partial", max_steps=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (folder / ".last.ckpt.partial").exists() and (folder / "last.ckpt").is_file()


def test_unwritable_checkpoint_folder_fails_before_training(straight, tmp_path):
    """A checkpoint folder that cannot be written stops the run at start with one line, not at the first save."""
    blocker = tmp_path / "file"
    blocker.write_text("a file where the checkpoint folder should be")
    callbacks = [{"class_path": "taming.callbacks.PeriodicCheckpoint", "init_args": {"dirpath": str(blocker / "run")}}]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks, "logger": False}}))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "fit", "--config", str(REPO / "configs" / "demo.yaml"),
                           "--config", str(tmp_path / "bad.yaml")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"checkpoint folder of PeriodicCheckpoint {blocker / 'run'} is not writable" in proc.stderr


def assert_same_run(path_a: Path, path_b: Path) -> None:
    a = torch.load(path_a, weights_only=True)
    b = torch.load(path_b, weights_only=True)
    assert a["global_step"] == b["global_step"] == 12 and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:  # weights, EMA shadows, BatchNorm statistics, LeCam averages
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0, msg=key)
    for state_a, state_b in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0)


def test_architecture_options_added_since_the_run_started_are_notes_not_refusals():
    """A checkpoint written before a component gained a new argument resumes (the new key is reported); a value that
    differs from the checkpoint's is refused."""
    from types import SimpleNamespace

    from taming.runs import architecture_differences

    model = SimpleNamespace(architecture_hparams=("generator",), derived_hparams=(), hparams={
        "generator": {"class_path": "taming.modules.transformer.GPT", "init_args": {"dim": 64, "new_option": None}},
        "learning_rate": 0.5})
    stored = {"generator": {"class_path": "taming.modules.transformer.GPT", "init_args": {"dim": 64}},
              "learning_rate": 0.1}
    fixed, changed = architecture_differences(model, stored)
    assert fixed == [] and changed == ["generator.init_args.new_option: (unset) -> None", "learning_rate: 0.1 -> 0.5"]
    stored["generator"]["init_args"]["dim"] = 32
    fixed, _ = architecture_differences(model, stored)
    assert fixed == ["  generator.init_args.dim: 32 -> 64"]

"""LightningCLI entry point: every shipped config parses; a 2-step `fit` on the demo config works end to end."""
import contextlib
import io
from pathlib import Path

import pytest
import torch

from taming.cli.main import cli_main
from taming import load_tokenizer

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_parses(config):
    """Every shipped config is valid for LightningCLI (types checked, interpolations resolved)."""
    import yaml

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(out.getvalue())
    assert resolved["model"]["class_path"].startswith("taming.models.")
    assert resolved["data"]["class_path"] == "taming.data.ImageDataModule"
    assert "${" not in out.getvalue()  # every interpolation resolved


def test_shipped_recipes():
    import yaml

    for name, epochs, lecam in (("128_B", 150, 0.005), ("256_B", 150, 0.005), ("128_L", 350, 0.01), ("256_L", 270, 0.05)):
        cfg = yaml.safe_load((CONFIG_DIR / f"imagenet_lfqgan_{name}.yaml").read_text())
        trainer, model, data = cfg["trainer"], cfg["model"]["init_args"], cfg["data"]["init_args"]
        assert (trainer["num_nodes"], trainer["devices"], data["batch_size"]) == (4, 8, 8)
        assert trainer["max_epochs"] == epochs and trainer["precision"] == "16-mixed"
        assert model["learning_rate"] == 1e-4 and model["ema_decay"] == 0.999
        assert model["lossconfig"]["lecam_loss_weight"] == lecam
        assert model["bit_order"] == ("lsb" if name.endswith("L") else "msb")
        assert model["ddconfig"].get("adaptive_gn", False) == name.endswith("L")
        assert data["train"]["init_args"]["root"] == "data/imagenet"


def test_fit_two_steps_on_demo_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config writes logs/ and models/ relative to the working directory
    config = CONFIG_DIR / "demo.yaml"
    cli = cli_main(["fit", "--config", str(config), "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                    "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
                    "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.global_step == 2
    ckpt = tmp_path / "models" / "demo" / "version_0" / "last.ckpt"  # a folder per run, named like its logs
    assert ckpt.is_file() and Path(cli.trainer.logger.log_dir).name == "version_0"
    tokenizer = load_tokenizer(ckpt)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert tokenizer(x).shape == x.shape
    log_dir = Path(cli.trainer.logger.log_dir)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    assert "val/reconstructions" in events.Tags()["images"]
    assert {"train/reconstruct_loss", "train/batch_distinct_codes", "train/bit_balance/00", "val_ema/psnr",
            "img_s"} <= set(events.Tags()["scalars"])
    before = ckpt.read_bytes()
    cli_main(["fit", "--config", str(config), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
              "--trainer.enable_progress_bar", "false"])  # a rerun leaves the first run's checkpoint alone
    assert (tmp_path / "models" / "demo" / "version_1" / "last.ckpt").is_file() and ckpt.read_bytes() == before


@pytest.mark.parametrize("size", ["128", "256"])
def test_node_launcher_forwards_arguments(size):
    import os
    import subprocess
    import sys

    repo = CONFIG_DIR.parent
    proc = subprocess.run([str(repo / f"run_{size}_B.sh"), "node0", "12345", "2", "4", "--data.init_args.batch_size", "16",
                           "--print_config"], env={**os.environ, "PYTHON": sys.executable}, cwd="/",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import yaml

    cfg = yaml.safe_load(proc.stdout)
    assert cfg["trainer"]["num_nodes"] == 4 and cfg["data"]["init_args"]["batch_size"] == 16
    assert cfg["model"]["init_args"]["ddconfig"]["ch_mult"] == ([1, 2, 2, 4] if size == "128" else [1, 1, 2, 2, 4])


def launcher_config(*args):
    import os
    import subprocess
    import sys

    import yaml

    repo = CONFIG_DIR.parent
    proc = subprocess.run([str(repo / "run_256_B.sh"), *args, "--print_config"],
                          env={**os.environ, "PYTHON": sys.executable}, cwd="/", capture_output=True, text=True,
                          timeout=120)
    return proc, (yaml.safe_load(proc.stdout) if proc.returncode == 0 else None)


def test_node_launcher_keeps_the_config_node_count_without_num_nodes():
    """`./run_256_B.sh node0 10055 2` on node 2 of the recipe's 4 nodes must not ask for 1 node."""
    proc, cfg = launcher_config("node0", "10055", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert cfg["trainer"]["num_nodes"] == 4
    proc, _ = launcher_config("node0", "10055")
    assert proc.returncode == 2 and "NODE_RANK" in proc.stderr


def test_node_launcher_defaults_when_only_options_are_given():
    """`./run_256_B.sh --ckpt_path ...` must not take the option for MASTER_ADDR: defaults, one node."""
    import os
    import subprocess
    import sys

    repo = CONFIG_DIR.parent
    proc = subprocess.run([str(repo / "run_256_B.sh"), "--data.init_args.batch_size", "4", "--print_config"],
                          env={**os.environ, "PYTHON": sys.executable}, cwd="/", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import yaml

    cfg = yaml.safe_load(proc.stdout)
    assert cfg["trainer"]["num_nodes"] == 1 and cfg["data"]["init_args"]["batch_size"] == 4


@pytest.mark.parametrize("config, code_bits", [("demo.yaml", 16), ("video/demo_video.yaml", 12)])
def test_ddp_fit_with_two_processes(tmp_path, config, code_bits):
    """Two CPU processes (gloo), DDP without find_unused_parameters, for the image and the video tokenizer. Rank 1's
    third batch is all NaN: both ranks skip it (the non-finite consensus), so 5 batches give 4 steps and the ranks end
    with identical, finite weights; the EMA shadows are left out of DDP's per-step buffer broadcast."""
    import os
    import subprocess
    import sys

    import yaml

    repo = CONFIG_DIR.parent
    overlay = {"trainer": {"callbacks": [
        {"class_path": "taming.callbacks.PeriodicCheckpoint", "init_args": {"dirpath": str(tmp_path / "models")}},
        {"class_path": "callbacks_for_tests.PoisonBatch",
         "init_args": {"batch_idx": 2, "rank": 1, "out_dir": str(tmp_path)}}]}}
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    proc = subprocess.run([sys.executable, str(repo / "main.py"), "fit", "--config", str(repo / "configs" / config),
                           "--config", str(tmp_path / "overlay.yaml"),
                           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_steps", "4",
                           "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
                           "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "2"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{repo / 'tests'}"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "non-finite loss at step 2: batch skipped" in proc.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for rank in ranks:
        assert rank["batches"] == 5 and rank["global_step"] == 4
        assert rank["ema_broadcast"] == 0 and rank["broadcast_buffers"] > 0  # BatchNorm statistics still are
        assert {n for n in rank["ignored"] if n.startswith("model_ema.")} == {
            "model_ema." + k[len("model_ema."):] for k in rank["state_dict"] if k.startswith("model_ema.")}
    for key, value in ranks[0]["state_dict"].items():
        assert torch.isfinite(value.float()).all(), key
        if "running_" in key or "num_batches_tracked" in key:
            continue  # per-GPU BatchNorm statistics: DDP re-broadcasts rank 0's at the start of every step
        torch.testing.assert_close(value, ranks[1]["state_dict"][key], rtol=0, atol=0, msg=key)
    ckpt = torch.load(tmp_path / "models" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and int(ckpt["state_dict"]["model_ema.num_updates"]) == 4
    assert load_tokenizer(tmp_path / "models" / "last.ckpt").quantize.dim == code_bits


def test_config_instantiation_errors_are_reported_without_parser_noise(tmp_path):
    import os
    import subprocess
    import sys

    repo = CONFIG_DIR.parent
    proc = subprocess.run([sys.executable, str(repo / "main.py"), "fit", "--config",
                           str(repo / "configs" / "imagenet_lfqgan_128_B.yaml"), "--trainer.accelerator", "cpu",
                           "--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.precision", "32",
                           "--model.init_args.lossconfig.perceptual_weight", "0"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert "FileNotFoundError: ImageNet root data/imagenet does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) < 5


def test_fit_under_bf16_autocast_keeps_quantizer_in_float32(tmp_path, monkeypatch):
    """CPU autocast exercises the mixed-precision paths: the networks run in bfloat16, the quantizer computes its
    entropy and loss in float32 (seen inside the forward pass, before Lightning logs anything), training is finite."""
    from taming.modules.quantizers import LFQ

    seen = []
    forward = LFQ.forward

    def recording_forward(self, z):
        out = forward(self, z)
        seen.append((z.dtype, out.loss.dtype, {k: v.dtype for k, v in out.terms.items()}))
        return out

    monkeypatch.setattr(LFQ, "forward", recording_forward)
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", "--config", str(CONFIG_DIR / "demo.yaml"), "--trainer.precision", "bf16-mixed",
                    "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar",
                    "false", "--trainer.logger", "false"])
    assert cli.trainer.global_step == 3  # no step skipped as non-finite
    assert len(seen) == 3
    for latent_dtype, loss_dtype, term_dtypes in seen:
        assert latent_dtype == torch.bfloat16  # autocast was on for the encoder
        assert loss_dtype == torch.float32 and set(term_dtypes.values()) == {torch.float32}
        assert {"per_sample_entropy", "codebook_entropy"} <= set(term_dtypes)
    assert all(torch.isfinite(v) for v in cli.trainer.callback_metrics.values())


def test_gpu_config_on_a_cpu_machine_says_which_options_to_change(tmp_path):
    """Without a GPU, a GPU config ends with one line naming the options to change (not "No supported gpu
    backend found!" and a traceback)."""
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "main.py"), "fit", "--config", str(repo / "configs" / "demo.yaml"),
                           "--trainer.accelerator", "gpu", "--trainer.logger", "false"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--trainer.accelerator cpu --trainer.devices 1 --trainer.precision 32-true" in proc.stderr


def test_demo_help_describes_the_demo_and_trains_nothing(capsys, monkeypatch):
    from taming.cli import demo

    monkeypatch.setattr(demo, "cli_main", lambda *a, **k: pytest.fail("--help started training"))
    demo.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("CPU demo (`make demo`)") and "main.py fit --config configs/demo.yaml --help" in out

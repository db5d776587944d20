"""What several test modules share (not tests): a torch hub directory and release-format weight files with random
values for it, gloo process launchers, CPU FSDP, the CPU trainer, and the small image datasets the training tests
use."""
import math
import os
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import DataLoader, Dataset

from conftest import photo_batch
from taming.modules.quantizers import QuantizerOutput

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def torch_hub_dir(path):
    """torch.hub's directory set to `path` inside the block (where the loaders look for pretrained weights, in
    `<path>/checkpoints`), the previous one restored after."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(path))
    try:
        yield Path(path)
    finally:
        torch.hub.set_dir(previous)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gloo_rank(rank: int, world: int, port: int, worker, args) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        worker(rank, world, *args)
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def spawn_gloo(worker, *args, world: int = 2) -> None:
    """Run worker(rank, world, *args) in `world` spawned processes of one gloo group (a module-level function)."""
    import torch.multiprocessing as mp

    mp.spawn(_gloo_rank, args=(world, free_port(), worker, args), nprocs=world, join=True)


def torchrun_two_ranks(command: str, argv: list, **env) -> None:
    """`torchrun --standalone --nproc_per_node 2 <command> <argv>` from the repository root (one thread per rank)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           command, *argv], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def run_two_ranks(code: str, cwd: Path, timeout: int = 540) -> None:
    """Run `code` (Python) as ranks 0 and 1 of a gloo job, as torchrun would; fail with both outputs on an error."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "WORLD_SIZE": "2",
           "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env={**env, "LOCAL_RANK": str(rank)}, cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]


class CPUFSDP(FSDPStrategy):
    """Lightning's FSDPStrategy on CPU (gloo), for tests only: Lightning refuses FSDP without a GPU unless the
    strategy's type is not exactly FSDPStrategy, and torch's FSDP needs device_id=cpu, which Lightning does not pass
    on CPU."""

    @contextmanager
    def model_sharded_context(self):
        import torch.distributed.fsdp.fully_sharded_data_parallel as fsdp

        class OnCPU(fsdp.FullyShardedDataParallel):
            def __init__(self, *args, device_id=None, **kwargs):
                super().__init__(*args, device_id=torch.device("cpu"), **kwargs)

        with mock.patch.object(fsdp, "FullyShardedDataParallel", OnCPU), super().model_sharded_context():
            yield


def trainer(tmp_path, **kw):
    """A deterministic single-process CPU Trainer without logger, checkpoints or progress output."""
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, deterministic=True, default_root_dir=tmp_path)
    return L.Trainer(**{**args, **kw})


def quantizer_output(loss: float, **terms) -> QuantizerOutput:
    """What a quantizer hands the loss: its weighted loss and the terms to log."""
    return QuantizerOutput(None, None, torch.tensor(loss), {k: torch.tensor(v) for k, v in terms.items()})


class Images(Dataset):
    """Fixed image tensors as taming.data-style items; optionally NaN from item `nan_from` on."""

    def __init__(self, images: torch.Tensor, nan_from: int = None):
        self.images, self.nan_from = images, nan_from

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        if self.nan_from is not None and i >= self.nan_from:
            x = torch.full_like(x, float("nan"))
        return {"image": x, "class_label": -1, "relpath": f"{i}.png"}


def images32(n=8):
    return photo_batch(32, names=("astronaut", "coffee", "chelsea", "rocket") * (n // 4))


def loader(images, batch_size=4, **kw):
    return DataLoader(Images(images, **kw), batch_size=batch_size, shuffle=False)


def stub_trainer(model, **state):
    """Attach the few trainer attributes lr_factor / configure_optimizers read (no fit needed)."""
    from types import SimpleNamespace

    model._trainer = SimpleNamespace(**{"global_step": 0, "current_epoch": 0, "num_training_batches": 10,
                                        "estimated_stepping_batches": 110, "precision": "32", **state})
    return model


def write_fake_vgg16(hub_dir):
    """A torchvision-format VGG16 `features.*` state dict with random weights (real format, random values)."""
    import torchvision

    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features
    (hub_dir / "checkpoints").mkdir(parents=True)
    path = hub_dir / "checkpoints" / "vgg16-397923af.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def release_state(dim, depth, patch, grid, layer_scale, extra=(), seed=0):
    """Random weights with an official DINO / DINOv2 release file's keys and shapes (MLP ratio 4)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, mean=0.0, std=None):
        std = 1 / math.sqrt(shape[-1]) if std is None else std  # linear weights: 1/sqrt(fan_in)
        return torch.randn(*shape, generator=g) * std + mean

    state = {"cls_token": rand(1, 1, dim, std=1.0), "pos_embed": rand(1, 1 + grid * grid, dim, std=0.5),
             "patch_embed.proj.weight": rand(dim, 3, patch, patch, std=1 / math.sqrt(3 * patch * patch)),
             "patch_embed.proj.bias": rand(dim, std=0.1)}
    for key, shape in extra:
        state[key] = rand(*shape, std=1.0)
    for i in range(depth):
        p = f"blocks.{i}."
        state.update({
            p + "norm1.weight": rand(dim, mean=1.0, std=0.1), p + "norm1.bias": rand(dim, std=0.1),
            p + "attn.qkv.weight": rand(3 * dim, dim), p + "attn.qkv.bias": rand(3 * dim, std=0.5),
            p + "attn.proj.weight": rand(dim, dim), p + "attn.proj.bias": rand(dim, std=0.1),
            p + "norm2.weight": rand(dim, mean=1.0, std=0.1), p + "norm2.bias": rand(dim, std=0.1),
            p + "mlp.fc1.weight": rand(4 * dim, dim), p + "mlp.fc1.bias": rand(4 * dim, std=0.1),
            p + "mlp.fc2.weight": rand(dim, 4 * dim), p + "mlp.fc2.bias": rand(dim, std=0.1),
        })
        if layer_scale:
            state[p + "ls1.gamma"] = rand(dim, mean=0.5, std=0.1)
            state[p + "ls2.gamma"] = rand(dim, mean=0.5, std=0.1)
    state["norm.weight"], state["norm.bias"] = rand(dim, mean=1.0, std=0.1), rand(dim, std=0.1)
    return state


def dinov2_release_state(dim, depth, registers=0, seed=0):
    """`dinov2_vit*14[_reg4]_pretrain.pth` layout: trained at 518x518 (37x37 patches), mask token, layer scale."""
    extra = [("mask_token", (1, dim))] + ([("register_tokens", (1, registers, dim))] if registers else [])
    return release_state(dim, depth, patch=14, grid=37, layer_scale=True, extra=extra, seed=seed)


def fixture_config(expected: dict) -> dict:
    """The fixture's released-style config with its added transformer preset and CNN width written out."""
    init_args = dict(expected["config"]["model"]["init_args"])
    presets = expected["architecture"]["transformer_presets_added"]
    for key in ("encoder_size", "decoder_size"):
        init_args[key] = presets[init_args[key]]
    init_args["ch"] = expected["architecture"]["cnn_ch"]
    return {**expected["config"], "model": {**expected["config"]["model"], "init_args": init_args}}

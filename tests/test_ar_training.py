"""Stage II training (taming.models.ar) on CPU at tiny size: token-folder checks, learning, exact resume, online
tokenization, optimizer groups, global clipping, checkpoints for load_generator, the AR recipes."""
import contextlib
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from taming.cli import encode_tokens
from taming.callbacks import ClassSampleGrid, GeneratorExport, PeriodicCheckpoint, TokensPerSecond
from taming.checkpoints import file_sha256
from taming.data import DemoImages, ImageDataModule
from taming.data.tokens import TokenDataset
from taming.generator import load_generator
from taming.generator import export_weights
from taming.models.ar import ClassConditionalAR
from taming.provenance import load_recorded_tokenizer
from taming.modules.component import component_config
from taming.modules.ema import shadow_name
from taming.modules.transformer import GPT, AdaLNGPT, FactorizedGPT
from taming.tokenizer import build_tokenizer
from helpers import trainer

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "ar"  # every config parses: tests/test_cli.py
SIZE = 16  # demo crops of 16 px -> 8 x 8 tokens of 6 bits (64 codes) with the tiny tokenizer


def gpt(**kw):
    args = dict(vocab_size=64, num_tokens=64, dim=32, n_layer=2, n_head=4, num_classes=16, multiple_of=32)
    return GPT(**{**args, **kw})


def factorized(**kw):
    return FactorizedGPT(**{**dict(num_tokens=64, dim=32, n_layer=2, n_intra_layer=1, n_head=4, factorized_bits=(2, 4),
                                   num_classes=16, multiple_of=32), **kw})


def save_tiny_tokenizer(path: Path) -> Path:
    """A random LFQ tokenizer (2x down, 6 bits, LSB-first) saved as this project's checkpoint layout."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=6), 6, "lsb")
    torch.save({"state_dict": tokenizer.state_dict(), "hyper_parameters": tokenizer.config}, path)
    return path


def encode(tokenizer_ckpt: Path, out: Path, split: str, num_images: int, *extra) -> Path:
    encode_tokens.main(["--ckpt_path", str(tokenizer_ckpt), "--demo", "--split", split, "--num_images", str(num_images),
                        "--image_size", str(SIZE), "--output_dir", str(out), "--batch_size", "16", "--shard_size", "16",
                        "--num_workers", "0", "--device", "cpu", *extra])
    return out


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """(tokenizer checkpoint, ten-crop train folder of 32 crops, single-view val folder of 8 crops)."""
    root = tmp_path_factory.mktemp("ar")
    ckpt = save_tiny_tokenizer(root / "tokenizer.ckpt")
    with contextlib.redirect_stdout(io.StringIO()):
        train = encode(ckpt, root / "train", "train", 32, "--ten_crop")
        val = encode(ckpt, root / "val", "val", 8)
    return SimpleNamespace(ckpt=ckpt, train=train, val=val)


def data(tokens, train=None, batch_size=8, **kw):
    return ImageDataModule(train=TokenDataset(train or tokens.train), validation=TokenDataset(tokens.val),
                           batch_size=batch_size, num_workers=0, **kw)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ data checks


def test_token_folders_are_checked_against_the_generator(tokens, tmp_path):
    def fit(generator, folder=None, **kw):
        model = ClassConditionalAR(component_config(generator), **kw)
        trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, data(tokens, folder))
        return model

    with pytest.raises(ValueError, match="has a 64-code tokenizer but the generator predicts 128 codes"):
        fit(gpt(vocab_size=128))
    with pytest.raises(ValueError, match=r"has 8x8 = 64 tokens per image but the generator models num_tokens=16"):
        fit(gpt(num_tokens=16))
    msb = shutil.copytree(tokens.train, tmp_path / "msb")
    manifest = json.loads((msb / "manifest.json").read_text())
    manifest["quantizer"]["bit_order"] = "msb"
    (msb / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="MSB-first LFQ indices .* FactorizedGPT splits indices LSB-first"):
        fit(factorized(), msb)
    with pytest.raises(ValueError, match="tokens come from tokenizer .* but tokenizer_source names other.ckpt"):
        fit(gpt(), tokenizer_source={"checkpoint": "other.ckpt", "checkpoint_sha256": "0" * 64})
    # caught at setup from the shards' recorded ranges, before any batch
    with pytest.raises(ValueError, match=r"holds class labels in \[0, 15\] but the generator has num_classes=2"):
        fit(gpt(num_classes=2))
    wild = shutil.copytree(tokens.train, tmp_path / "wild")
    manifest = json.loads((wild / "manifest.json").read_text())
    assert all(s["index_range"][1] < 64 for s in manifest["shards"])
    manifest["shards"][-1]["index_range"] = [0, 64]
    (wild / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"holds indices in \[0, 64\], outside the generator's 64 codes"):
        fit(gpt(), wild)

    model = fit(gpt())  # a GPT takes either bit order; the source is the train folder's manifest entry
    source = model.hparams["tokenizer_source"]
    assert source["checkpoint_sha256"] == file_sha256(tokens.ckpt) and source["bit_order"] == "lsb"
    assert source["tokens"] == str(tokens.train)
    with pytest.raises(ValueError, match="batches of images need online tokenization"):
        model.get_input({"image": torch.zeros(2, 3, SIZE, SIZE), "class_label": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="-1 marks an unlabelled image"):
        model.get_input({"tokens": torch.zeros(2, 64, dtype=torch.long), "class_label": torch.tensor([-1, 1])})


# ------------------------------------------------------------------------------------------ learning, checkpoints


def test_token_folder_default_check_catches_replaced_shards_and_empty_folders(tokens, tmp_path):
    """A shard replaced by a same-size file (e.g. another tokenizer's) is caught by the default verification, which
    hashes only files modified since they were written; a folder without any token sequence is refused."""
    folder = shutil.copytree(tokens.train, tmp_path / "swapped", copy_function=shutil.copy2)  # mtimes kept
    TokenDataset(folder)
    shard = folder / "tokens_00000.npy"
    data = np.load(shard)
    np.save(shard, (data + 1) % 64)  # same dtype and shape: same size
    with pytest.raises(ValueError, match="tokens_00000.npy does not match its SHA-256"):
        TokenDataset(folder)
    TokenDataset(folder, verify="size")  # the size-only check cannot see it
    empty = shutil.copytree(tokens.train, tmp_path / "empty")
    manifest = json.loads((empty / "manifest.json").read_text())
    manifest["shards"] = []
    (empty / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="holds no token sequences"):
        TokenDataset(empty)


def test_fit_lowers_the_validation_loss_and_checkpoints_load_as_generators(tokens, tmp_path):
    L.seed_everything(0)
    model = ClassConditionalAR(gpt(), learning_rate=3e-3, use_ema=True, ema_decay=0.8)
    dm = data(tokens)
    callbacks = [GeneratorExport(tmp_path, weights="ema"), TokensPerSecond(window=2),
                 ClassSampleGrid(class_labels=[0, 5, 9], cfg_scale=2.0)]  # decoded by the recorded tokenizer
    t = trainer(tmp_path, max_steps=24, val_check_interval=1.0, callbacks=callbacks, log_every_n_steps=1,
                logger=TensorBoardLogger(tmp_path, name="run"))
    before = t.validate(model, dm, verbose=False)[0]["val_ema/loss"]
    assert before == pytest.approx(torch.log(torch.tensor(64.0)).item(), abs=1e-6)  # zero-initialised head
    t.fit(model, dm)
    after = t.callback_metrics["val_ema/loss"].item()
    assert after < before - 0.3, (before, after)
    events = EventAccumulator(t.logger.log_dir)
    events.Reload()
    assert {"train/loss", "train/accuracy", "train/lr", "train/grad_norm", "tokens_s", "val_ema/loss"} <= \
        set(events.Tags()["scalars"])
    grid = events.Images("val/samples")[-1]
    assert (grid.width, grid.height) == (3 * SIZE + 4 * 2, SIZE + 2 * 2)  # a column per label, 2 px padding

    path = tmp_path / "run.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["generator"] == component_config(model.generator)
    assert not any(k.startswith("tokenizer") for k in ckpt["state_dict"])
    ema, raw = load_generator(path), load_generator(path, ema=False)  # no config needed
    assert isinstance(ema, GPT) and ema.checkpoint_info["ema"] and not raw.checkpoint_info["ema"]
    for name, p in model.generator.named_parameters():
        torch.testing.assert_close(raw.get_parameter(name), p, rtol=0, atol=0)
        shadow = ckpt["state_dict"]["model_ema." + shadow_name("generator." + name)]
        torch.testing.assert_close(ema.get_parameter(name), shadow, rtol=0, atol=0)
    batch = next(iter(dm.val_dataloader()))
    with model.model_ema.average_parameters(model):
        expected = model.generator.logits(batch["tokens"], batch["class_label"])
    torch.testing.assert_close(ema.logits(batch["tokens"], batch["class_label"]), expected, rtol=0, atol=0)

    exported = export_weights(path, tmp_path / "small.ckpt", weights="raw")
    small = torch.load(exported, weights_only=True)
    assert "optimizer_states" not in small and exported.stat().st_size < path.stat().st_size / 2
    reloaded = load_generator(exported).state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(reloaded, raw.state_dict().values()))
    by_callback = load_generator(tmp_path / "generator.ckpt")  # GeneratorExport at the end of training: EMA shadows
    assert by_callback.checkpoint_info["ema"] and by_callback.checkpoint_info["global_step"] == 24
    assert all(torch.equal(a, b) for a, b in zip(by_callback.state_dict().values(), ema.state_dict().values()))


def test_adaln_generator_trains_and_reloads(tokens, tmp_path):
    """The IBQ AR generator (AdaLNGPT) through the same training module: the validation loss falls from log(64) (zero
    head), and the checkpoint loads as an AdaLNGPT without a config."""
    L.seed_everything(0)
    generator = AdaLNGPT(vocab_size=64, num_tokens=64, dim=32, n_layer=2, n_head=4, num_classes=16, multiple_of=32,
                         gamma_init=0.1)
    model = ClassConditionalAR(generator, learning_rate=3e-3)
    dm = data(tokens)
    t = trainer(tmp_path, max_steps=16, val_check_interval=1.0)
    before = t.validate(model, dm, verbose=False)[0]["val/loss"]
    assert before == pytest.approx(torch.log(torch.tensor(64.0)).item(), abs=1e-6)
    t.fit(model, dm)
    assert t.callback_metrics["val/loss"].item() < before - 0.3
    t.save_checkpoint(tmp_path / "adaln.ckpt")
    loaded = load_generator(tmp_path / "adaln.ckpt")
    assert isinstance(loaded, AdaLNGPT) and loaded.init_args["gamma_init"] == 0.1
    batch = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(loaded.logits(batch["tokens"], batch["class_label"]),
                               model.generator.logits(batch["tokens"], batch["class_label"]), rtol=0, atol=0)


def test_exact_resume(tokens, tmp_path):
    """2 epochs (8 steps) straight == 4 steps (end of epoch 0) or 6 steps (mid epoch 1), checkpoint, resume: weights,
    EMA, AdamW state; with every dropout on, a cosine schedule and ten-crop views drawn per (epoch, index)."""
    kw = dict(generator=component_config(factorized(token_dropout_p=0.1, resid_dropout_p=0.1, ffn_dropout_p=0.1,
                                                    class_dropout_prob=0.3)),
              learning_rate=3e-3, use_ema=True, ema_decay=0.9, lr_schedule="cosine", warmup_steps=2)
    L.seed_everything(0)
    straight = ClassConditionalAR(**kw)
    saver = PeriodicCheckpoint(tmp_path, every_n_train_steps=0, every_n_epochs=0, keep_every_n_epochs=1,
                               keep_every_n_train_steps=6)
    trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[saver]).fit(straight, data(tokens))
    for name in ("epoch001.ckpt", "step00000006.ckpt"):
        L.seed_everything(1)  # another seed: everything must come from the checkpoint
        resumed = ClassConditionalAR(**kw)
        t = trainer(tmp_path, max_epochs=2, limit_val_batches=0)
        t.fit(resumed, data(tokens), ckpt_path=tmp_path / name)
        assert t.global_step == 8
        a, b = straight.state_dict(), resumed.state_dict()
        assert a.keys() == b.keys() and int(b["model_ema.num_updates"]) == 8
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}: {k}")
        opt_a, opt_b = straight.optimizers().optimizer, resumed.optimizers().optimizer
        for group_a, group_b in zip(opt_a.param_groups, opt_b.param_groups):
            for p_a, p_b in zip(group_a["params"], group_b["params"]):
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    torch.testing.assert_close(opt_a.state[p_a][key], opt_b.state[p_b][key], rtol=0, atol=0)


def test_online_tokenization(tokens, tmp_path):
    """Images tokenized in the step give the token folder's indices; the tokenizer is frozen and stays out of the
    optimizer and checkpoint; the checkpoint records where it came from."""
    L.seed_everything(0)
    model = ClassConditionalAR(gpt(), tokenizer={"ckpt_path": str(tokens.ckpt)})
    assert not model.tokenizer.training and not any(p.requires_grad for p in model.tokenizer.parameters())
    val = DemoImages("val", size=SIZE)
    items = [val[i] for i in range(8)]
    assert [item["class_label"] for item in items] == list(range(8))  # the photograph's position among those loaded
    assert all(item["relpath"].startswith(val.names[item["class_label"]] + "/") for item in items)
    batch = {"image": torch.stack([item["image"] for item in items]), "class_label": torch.arange(8)}
    folder = TokenDataset(tokens.val)
    expected = torch.stack([folder[i]["tokens"] for i in range(8)])
    assert torch.equal(model.get_input(batch)[0], expected)

    dm = ImageDataModule(train=DemoImages("train", size=SIZE, length=8), batch_size=4, num_workers=0)
    t = trainer(tmp_path, max_steps=2)
    t.fit(model, dm)
    assert t.global_step == 2
    optimized = {id(p) for g in model.optimizers().param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.generator.parameters()}
    t.save_checkpoint(tmp_path / "online.ckpt")
    ckpt = torch.load(tmp_path / "online.ckpt", weights_only=True)
    assert all(k.startswith("generator.") for k in ckpt["state_dict"])
    record = ckpt["hyper_parameters"]["tokenizer_source"]
    assert record["checkpoint"] == str(tokens.ckpt.resolve())
    assert record["checkpoint_sha256"] == file_sha256(tokens.ckpt)
    decoder = load_recorded_tokenizer(record)
    torch.testing.assert_close(decoder.decode_indices(expected.view(8, 8, 8)),
                               model.tokenizer.decode_indices(expected.view(8, 8, 8)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="tokenizer must be a mapping with ckpt_path"):
        ClassConditionalAR(gpt(), tokenizer={"path": str(tokens.ckpt)})
    with pytest.raises(ValueError, match="has a 64-code tokenizer but the generator predicts 128"):
        ClassConditionalAR(gpt(vocab_size=128), tokenizer={"ckpt_path": str(tokens.ckpt)})


# ------------------------------------------------------------------------------------------ optimisation


def stub_trainer(model):
    model._trainer = SimpleNamespace(global_step=0, current_epoch=0, precision="32",
                                     strategy=SimpleNamespace(model=model))
    model.log = lambda *args, **kwargs: None
    return model


@pytest.mark.parametrize("make", [lambda: gpt(positions="learned"), factorized], ids=["gpt", "factorized"])
def test_weight_decay_only_on_matrices(make):
    model = stub_trainer(ClassConditionalAR(make(), learning_rate=0.1, weight_decay=0.5))
    opt = model.configure_optimizers()
    named = dict(model.generator.named_parameters())
    matrices = {n for n, p in named.items() if p.dim() >= 2}
    assert {n for n in named if n.endswith("norm.weight")} == set(named) - matrices  # only norm scales are 1-D
    assert [(g["name"], g["weight_decay"]) for g in opt.param_groups] == [("decay", 0.5), ("no_decay", 0.0)]
    before = {n: p.detach().clone() for n, p in named.items()}
    for p in named.values():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: AdamW moves only by its decoupled decay, p (1 - lr wd)
    for n, p in named.items():
        torch.testing.assert_close(p, before[n] * (0.95 if n in matrices else 1.0), rtol=0, atol=1e-7, msg=n)


def test_gradient_norm_is_clipped_over_all_parameters():
    model = stub_trainer(ClassConditionalAR(gpt(), gradient_clip_val=0.01))
    opt = model.configure_optimizers()
    gen = torch.Generator().manual_seed(0)
    for p in model.generator.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    norm = lambda params: torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))  # noqa: E731
    model.on_before_optimizer_step(opt)
    assert norm(model.generator.parameters()).item() == pytest.approx(0.01, rel=1e-5)
    assert norm(opt.param_groups[1]["params"]).item() < 0.001  # scaled with the rest, not clipped to 0.01 alone


def ar_fsdp_worker(out: str) -> None:
    """One rank (of 2, gloo): DDP for 3 steps; FSDP (one unit per Block) for 2 steps with a sharded checkpoint after
    each, then resumed from it for the 3rd."""
    from lightning.pytorch.strategies import DDPStrategy
    from torch.utils.data import DataLoader

    from helpers import CPUFSDP
    from taming.modules.transformer.llama import Block

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    # 8 items, 2 per rank and step: an epoch is 2 steps, so the resume at step 2 starts at an epoch boundary
    items = [{"tokens": torch.randint(0, 64, (8, 8), generator=gen), "class_label": i % 16} for i in range(8)]

    def fit(strategy, steps, ckpt_path=None, callbacks=()):
        L.seed_everything(0)
        model = ClassConditionalAR(gpt(), learning_rate=3e-3, gradient_clip_val=0.05)  # (a schedule would span max_steps)
        t = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=list(callbacks))
        t.fit(model, DataLoader(items, batch_size=2), ckpt_path=ckpt_path)
        return t

    def fsdp():
        return CPUFSDP(auto_wrap_policy={Block}, state_dict_type="sharded", process_group_backend="gloo")

    fit(DDPStrategy(process_group_backend="gloo"), 3).save_checkpoint(f"{out}/ddp.ckpt")
    fit(fsdp(), 2, callbacks=[PeriodicCheckpoint(f"{out}/fsdp", every_n_train_steps=1)])
    fit(fsdp(), 3, ckpt_path=f"{out}/fsdp/last.ckpt").save_checkpoint(f"{out}/fsdp_resumed.ckpt")


def test_fsdp_matches_ddp_and_resumes(tmp_path):
    """FSDP through Lightning's strategy (CPU, gloo; the generator sharded one Block per unit, the gradient norm clipped
    over all shards, decay only on matrices, sharded checkpoints) gives DDP's weights after 3 steps, also resumed from a
    sharded checkpoint; the consolidated checkpoint loads with load_generator."""
    import subprocess
    import sys

    from helpers import run_two_ranks

    run_two_ranks(f"import test_ar_training as t; t.ar_fsdp_worker({str(tmp_path)!r})", tmp_path)
    consolidated = tmp_path / "consolidated.ckpt"
    proc = subprocess.run([sys.executable, "-m", "lightning.pytorch.utilities.consolidate_checkpoint",
                           str(tmp_path / "fsdp_resumed.ckpt"), "--output_file", str(consolidated)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, fsdp = (torch.load(p, weights_only=True) for p in (tmp_path / "ddp.ckpt", consolidated))
    assert ddp["global_step"] == fsdp["global_step"] == 3 and ddp["state_dict"].keys() == fsdp["state_dict"].keys()
    for key, value in ddp["state_dict"].items():  # float32 reduction order, magnified by Adam's first steps
        torch.testing.assert_close(fsdp["state_dict"][key], value, atol=1e-5, rtol=0, msg=lambda m: f"{key}: {m}")
    tokens = torch.randint(0, 64, (2, 8, 8))
    torch.testing.assert_close(load_generator(consolidated).logits(tokens, torch.tensor([1, 2])),
                               load_generator(tmp_path / "ddp.ckpt").logits(tokens, torch.tensor([1, 2])), atol=1e-4,
                               rtol=0)


# ------------------------------------------------------------------------------------------ configs


def test_ar_recipes():
    def load(name):
        cfg = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
        return cfg["trainer"], cfg["model"]["init_args"], cfg["data"]["init_args"]

    for size, lr, nodes, batch in (("B", 1e-4, 1, 32), ("L", 1e-4, 1, 32), ("XL", 2e-4, 2, 16), ("XXL", 2e-4, 4, 16)):
        trainer_cfg, model, data_cfg = load(f"llamagen_c2i_GPT-{size}")
        assert trainer_cfg["max_epochs"] == 300 and trainer_cfg["precision"] == "bf16-mixed"
        global_batch = trainer_cfg["devices"] * trainer_cfg["num_nodes"] * data_cfg["batch_size"]
        assert global_batch == (512 if size == "XXL" else 256)
        assert (model["learning_rate"], model["lr_schedule"], model["betas"], model["weight_decay"]) == \
            (lr, "constant", [0.9, 0.95], 0.05)
        assert model["gradient_clip_val"] == 1.0 and not model["use_ema"]
        generator = model["generator"]["init_args"]
        assert (generator["vocab_size"], generator["num_tokens"]) == (16384, 256)
        strategy = trainer_cfg["strategy"]
        assert (strategy["class_path"].endswith("FSDPStrategy") if size == "XXL" else strategy == "ddp")
    for size, lr, warmup, epochs in (("B", 3e-4, 6, 300), ("L", 3e-4, 6, 300), ("XL", 2.4e-4, 7, 350)):
        trainer_cfg, model, data_cfg = load(f"open_magvit2_AR-{size}")
        assert trainer_cfg["devices"] * trainer_cfg["num_nodes"] * data_cfg["batch_size"] == 768
        assert trainer_cfg["max_epochs"] == epochs and model["learning_rate"] == lr
        assert (model["lr_schedule"], model["warmup_epochs"], model["warmup_start"], model["hold_fraction"]) == \
            ("hold-linear", warmup, 0.005, 0.05)
        assert model["min_learning_rate"] == pytest.approx(0.1 * lr) and model["weight_decay"] == 0.05
        assert model["generator"]["init_args"]["factorized_bits"] == [6, 12] and "ckpt_path" in model["tokenizer"]
    for size, warmup, epochs, end in (("B", 6, 300, 0.1), ("L", 7, 350, 0.1), ("XL", 8, 400, 0.01), ("XXL", 9, 450, 0.01)):
        trainer_cfg, model, data_cfg = load(f"ibq_AR-{size}")  # SEED-Voken's IBQ AR recipes
        assert trainer_cfg["devices"] * trainer_cfg["num_nodes"] * data_cfg["batch_size"] == 768
        assert trainer_cfg["max_epochs"] == epochs and model["learning_rate"] == 3e-4
        assert (model["lr_schedule"], model["warmup_epochs"], model["warmup_start"], model["hold_fraction"]) == \
            ("hold-linear", warmup, 0.005, 0.05)
        assert model["min_learning_rate"] == pytest.approx(end * 3e-4) and model["gradient_clip_val"] == 1.0
        generator = model["generator"]
        assert generator["class_path"].endswith("AdaLNGPT") and generator["init_args"]["size"] == f"IBQ-AR-{size}"
        assert model["tokenizer"]["config"]["n_embed"] == 16384

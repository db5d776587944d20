"""GigaTok tokenizer training: the train-mode reference fixture, the objective against hand-computed terms, a tiny
HybridVQGAN fit, checkpoints, FSDP against DDP (CPU, gloo), the configs and the tokenizer linear probe.

Pretrained files are random weights in the real formats, written into a temporary torch hub cache: the DINOv2
ViT-S/14 release layout (teacher) and torchvision's VGG16 (LPIPS trunk).
"""
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.strategies import FSDPStrategy

from taming import load_tokenizer
from taming.data.loading import ImageTransform
from taming.models.gigatok import HybridVQGAN
from taming.modules.component import component_config, instantiate
from taming.modules.losses import GigaTokLoss, VQLPIPSWithDiscriminator
from taming.modules.losses.gigatok import feature_reconstruction_loss
from taming.modules.semantic import DINOV2_TEACHERS
from taming.released.gigatok import gigatok_config
from conftest import REPO, photo_batch, reconstruction_psnr
from helpers import (CPUFSDP, dinov2_release_state, fixture_config, images32, loader, quantizer_output, run_two_ranks,
                     stub_trainer, torch_hub_dir, trainer, write_fake_vgg16)

CONFIG_DIR = REPO / "configs" / "gigatok"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
LOSS_RTOL, GRAD_ATOL = 1e-5, 2e-4  # the reference README's tolerances


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A torch hub cache with random-weight VGG16 (LPIPS trunk) and DINOv2 ViT-S/14 release files."""
    root = tmp_path_factory.mktemp("hub")
    write_fake_vgg16(root)
    torch.save(dinov2_release_state(384, 12, seed=5), root / "checkpoints" / DINOV2_TEACHERS["dinov2_vits14"][1])
    with torch_hub_dir(root):
        yield root


def tiny_parts(layout="1d", size=32, ch_mult=(1, 2, 2), num_tokens=16, distill_depth=None, distill_dim=384):
    """Component configs of a tiny hybrid tokenizer (grid = size / 2^(len(ch_mult) - 1))."""
    shared = dict(layout=layout, num_tokens=num_tokens if layout == "1d" else None, image_size=size, ch=32,
                  ch_mult=list(ch_mult), num_res_blocks=1, z_channels=32, embed_dim=8, width=32, num_layers=2,
                  num_heads=2)
    return dict(encoder={"class_path": "taming.modules.hybrid.HybridEncoder", "init_args": shared},
                quantizer={"class_path": "taming.modules.quantizers.VectorQuantizer",
                           "init_args": dict(codebook_size=256, dim=8, rotation_trick=True, usage_window=1024)},
                decoder={"class_path": "taming.modules.hybrid.HybridDecoder",
                         "init_args": dict(shared, distill_depth=distill_depth, distill_dim=distill_dim)})


def tiny_loss(**kw):
    args = dict(perceptual_weight=0.0, semantic_weight=0.0, disc_ndf=8, disc_num_layers=2)
    return {"class_path": "taming.modules.losses.GigaTokLoss", "init_args": {**args, **kw}}


# ----------------------------------------------------------------------------------------------- reference fixture


def test_train_mode_matches_reference_fixture(reference_dir):
    """tiny_gigatok_1d in train mode: VQ / commitment / entropy / feature-reconstruction losses, codebook usage after
    one step, the quantized output and the gradients of sum(quantized * probe) through the rotation trick."""
    expected = torch.load(reference_dir / "tiny_gigatok_1d_expected.pt", weights_only=True)
    train = expected["train"]
    tokenizer = load_tokenizer(reference_dir / "tiny_gigatok_1d.pt", config=fixture_config(expected))
    tokenizer.train().requires_grad_(True)  # the buffer codebook_used is a plain tensor here (fixture quirk 11)
    taps = {}
    for name, module in (("cnn", tokenizer.encoder.cnn), ("transformer", tokenizer.encoder.transformer),
                         ("quantizer_input", tokenizer.encoder.quant_conv)):
        module.register_forward_hook(lambda m, i, o, name=name: taps.__setitem__(name, o))
    out = tokenizer.autoencode(expected["input"], return_features=True)
    loss = GigaTokLoss(**tiny_loss(use_direct_rec_loss=False)["init_args"])
    _, logs = loss.generator_loss(expected["input"], out.reconstruction, out.quantizer, 0, features=out.features)

    terms = out.quantizer.terms
    for key in ("vq_loss", "commit_loss", "entropy_loss"):
        torch.testing.assert_close(terms[key], train[key], rtol=LOSS_RTOL, atol=0, msg=key)
    torch.testing.assert_close(logs["train/fea_rec_loss"], train["fea_rec_loss"], rtol=LOSS_RTOL, atol=0)
    assert terms["codebook_usage"].item() == pytest.approx(train["codebook_usage_after_one_step"], abs=1e-7)
    quantized = out.quantizer.quantized
    torch.testing.assert_close(quantized.reshape(train["quantized_train"].shape), train["quantized_train"],
                               atol=1e-5, rtol=0)
    objective = (quantized * train["grad_probe"].flatten(2)).sum()
    grads = torch.autograd.grad(objective, [taps["quantizer_input"], taps["transformer"], taps["cnn"]])
    for grad, key in zip(grads, ("grad_wrt_quantizer_input", "grad_wrt_transformer_encoder_out",
                                 "grad_wrt_cnn_encoder_out")):
        torch.testing.assert_close(grad.reshape(train[key].shape), train[key], atol=GRAD_ATOL, rtol=0, msg=key)


# ----------------------------------------------------------------------------------------------- objective


def test_objective_against_hand_computed_terms(hub):
    """Every generator term by hand (L2, LPIPS, hinge G at 0.5, quantizer, 0.5 x semantic, feature and direct
    reconstruction, the discriminator's hinge on the direct reconstruction) and where each gradient goes."""
    torch.manual_seed(0)
    loss = GigaTokLoss(disc_start=2, aux_loss_end=5, teacher="dinov2_vits14", disc_ndf=8, disc_num_layers=2).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    rec, direct = ((torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_() for _ in range(2))
    cnn, rec_spatial = torch.randn(2, 16, 4, 4, requires_grad=True), torch.randn(2, 16, 4, 4, requires_grad=True)
    student = torch.randn(2, 256, 384, requires_grad=True)
    features = {"cnn": cnn, "rec_spatial": rec_spatial, "semantic": student}
    total, logs = loss.generator_loss(x, rec, quantizer_output(0.3), 3, features=features, direct_reconstruction=direct)

    D, lpips, teacher = loss.discriminator, loss.perceptual_loss, loss.teacher(x)
    cos = (student * teacher).sum(-1) / (student.norm(dim=-1) * teacher.norm(dim=-1))
    main = (x - rec).square().mean() + lpips(x, rec).mean() - 0.5 * D(rec).mean() + 0.3 - 0.5 * cos.mean()
    fea_rec = (cnn - rec_spatial).square().mean()
    direct_g = (x - direct).square().mean() + lpips(x, direct).mean() - 0.5 * D(direct).mean()
    direct_d = 0.5 * 0.5 * (F.relu(1 - D(x)).mean() + F.relu(1 + D(direct.detach())).mean())
    torch.testing.assert_close(total, main + fea_rec + direct_g + direct_d)
    torch.testing.assert_close(logs["train/semantic_loss"], -cos.mean().detach())
    torch.testing.assert_close(logs["train/fea_rec_loss"], fea_rec.detach())
    torch.testing.assert_close(logs["train/direct_disc_loss"], direct_d.detach())
    torch.testing.assert_close(logs["train/total_loss"], total.detach())

    expected_d_grads = torch.autograd.grad(direct_d, list(D.parameters()))
    expected_direct_grad = torch.autograd.grad(direct_g, direct)[0]
    total.backward()
    assert cnn.grad is None and teacher.grad is None  # sg(CNN features), frozen teacher
    torch.testing.assert_close(direct.grad, expected_direct_grad)  # the D term is on the detached image
    for p, g in zip(D.parameters(), expected_d_grads):  # D only gets its own loss's gradient
        torch.testing.assert_close(p.grad, g)
    assert not any(k.startswith(("teacher.", "perceptual_loss.")) for k in loss.state_dict())


def test_warm_up_and_adversarial_terms_switch_by_step():
    torch.manual_seed(0)
    loss = GigaTokLoss(**tiny_loss(disc_start=2, aux_loss_end=5)["init_args"]).train()
    D = loss.discriminator
    x, rec, direct = (torch.rand(2, 3, 16, 16) * 2 - 1 for _ in range(3))
    features = {"cnn": torch.randn(2, 16, 4, 4), "rec_spatial": torch.randn(2, 16, 4, 4)}
    fea_rec = (features["cnn"] - features["rec_spatial"]).square().mean()
    main = (x - rec).square().mean() + 0.3
    expected = {1: main + fea_rec + (x - direct).square().mean(),  # before disc_start: no GAN terms
                3: main - 0.5 * D(rec).mean() + fea_rec + (x - direct).square().mean() - 0.5 * D(direct).mean()
                + 0.25 * (F.relu(1 - D(x)).mean() + F.relu(1 + D(direct)).mean()),
                5: main - 0.5 * D(rec).mean()}  # aux_loss_end: the warm-up is over
    for step, value in expected.items():
        total, logs = loss.generator_loss(x, rec, quantizer_output(0.3), step, features=features,
                                          direct_reconstruction=direct if step < 5 else None)
        torch.testing.assert_close(total, value, msg=str(step))
        assert ("train/fea_rec_loss" in logs) == (step < 5) and ("train/direct_g_loss" in logs) == (step == 3)
    _, val_logs = loss.generator_loss(x, rec, quantizer_output(0.3), 3, split="val", features=features)
    assert not any("fea_rec" in k or "direct" in k for k in val_logs)  # training-only terms


def test_feature_reconstruction_cosine_closed_forms():
    a = torch.randn(2, 8, 3, 3)
    assert feature_reconstruction_loss(a, 2 * a, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert feature_reconstruction_loss(a, -a, "cosine").item() == pytest.approx(2.0, abs=1e-6)
    e = torch.eye(8)[:, :, None, None]
    assert feature_reconstruction_loss(e[:4], e[4:], "cosine").item() == pytest.approx(1.0, abs=1e-6)
    b = torch.randn(2, 8, 3, 3)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    torch.testing.assert_close(feature_reconstruction_loss(a, b, "cosine"), (1 - cos).mean())


def test_loss_and_model_errors(hub):
    for kwargs, match in (({"fea_rec_loss_type": "l1"}, "fea_rec_loss_type"), ({"gen_loss_weight": None}, "fixed"),
                          ({"aux_loss_end": -1}, "aux_loss_end >= 0")):
        with pytest.raises(ValueError, match=match):
            GigaTokLoss(**tiny_loss(**kwargs)["init_args"])
    loss = GigaTokLoss(**tiny_loss(aux_loss_end=5)["init_args"])
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with pytest.raises(ValueError, match="tokenizer feature 'cnn'"):
        loss.generator_loss(x, x, quantizer_output(0.0), 0, features={}, direct_reconstruction=x)
    features = {"cnn": torch.zeros(1, 4, 2, 2), "rec_spatial": torch.zeros(1, 4, 2, 2)}
    with pytest.raises(ValueError, match="needs direct_reconstruction"):
        loss.generator_loss(x, x, quantizer_output(0.0), 0, features=features)
    with pytest.raises(TypeError, match="needs a taming.modules.losses.GigaTokLoss"):
        HybridVQGAN(**tiny_parts(), loss=VQLPIPSWithDiscriminator(perceptual_weight=0.0))
    with pytest.raises(ValueError, match=r"\(64 grid tokens of width 384\) with dinov2_vits14 patch tokens \(256 x"):
        HybridVQGAN(**tiny_parts(distill_depth=1), loss=tiny_loss(semantic_weight=0.5, teacher="dinov2_vits14"))


def test_direct_reconstruction_only_during_the_warm_up(monkeypatch):
    """HybridVQGAN decodes the CNN features with the CNN decoder alone only in training before aux_loss_end."""
    torch.manual_seed(0)
    model = HybridVQGAN(**tiny_parts(), loss=tiny_loss(aux_loss_end=3, disc_start=100))
    calls = []
    decode = model.decoder.decode_cnn_features
    monkeypatch.setattr(model.decoder, "decode_cnn_features", lambda s: calls.append(s) or decode(s))
    x = photo_batch(32, names=("astronaut", "coffee"))
    out = model.autoencode(x, return_features=True)
    for step, split, called in ((2, "train", True), (3, "train", False), (0, "val", False)):
        stub_trainer(model, global_step=step)
        calls.clear()
        _, logs = model.generator_loss(x, out, split=split)
        assert bool(calls) == called and ("train/direct_rec_loss" in logs) == called, (step, split)
        assert ("train/fea_rec_loss" in logs) == called
    expected = model.decoder.cnn(out.features["cnn"])
    stub_trainer(model, global_step=0)
    _, logs = model.generator_loss(x, out)
    torch.testing.assert_close(logs["train/direct_rec_loss"], (x - expected).square().mean().detach())


# ----------------------------------------------------------------------------------------------- training


def test_training_raises_psnr(tmp_path):
    """A tiny 1-D HybridVQGAN (GigaTok's defaults: AdamW (0.9, 0.95), cosine, clipping) fitted on 4 photographs
    (16 x 16) improves their reconstruction PSNR; the warm-up ends half-way."""
    images = photo_batch(16)
    L.seed_everything(0)
    model = HybridVQGAN(**tiny_parts(size=16, ch_mult=(1, 2)), loss=tiny_loss(aux_loss_end=12, disc_start=1000),
                        learning_rate=4e-3)

    before = reconstruction_psnr(model, images)
    trainer(tmp_path, max_steps=25).fit(model, loader(images))
    after = reconstruction_psnr(model, images)
    assert after >= before + 2.0, (before, after)


def test_checkpoint_loads_as_tokenizer(tmp_path, hub):
    """With the semantic regularisation (teacher out of the checkpoint) and EMA: load_tokenizer(ckpt) without a
    config reproduces the module's EMA reconstruction."""
    images = photo_batch(64, names=("astronaut", "coffee"))
    L.seed_everything(0)
    parts = tiny_parts(size=64, ch_mult=(1, 1, 1), distill_depth=1)  # 16 x 16 grid = the teacher's patch grid
    model = HybridVQGAN(**parts, loss=tiny_loss(semantic_weight=0.5, teacher="dinov2_vits14"), use_ema=True,
                        ema_decay=0.5)
    t = trainer(tmp_path, max_steps=2)
    t.fit(model, loader(images, batch_size=2))
    assert "train/semantic_loss" in t.logged_metrics and "train/fea_rec_loss" in t.logged_metrics
    t.save_checkpoint(tmp_path / "hybrid.ckpt")
    state = torch.load(tmp_path / "hybrid.ckpt", weights_only=True)["state_dict"]
    assert "decoder.transformer.distill_mlp.0.weight" in state
    assert not any(k.startswith(("loss.teacher.", "loss.perceptual_loss.")) for k in state)
    tokenizer = load_tokenizer(tmp_path / "hybrid.ckpt")
    assert tokenizer.checkpoint_info["ema"] and tokenizer.token_layout == "sequence"
    with model.model_ema.average_parameters(model), torch.no_grad():
        model.eval()
        torch.testing.assert_close(tokenizer(images), model(images))


def test_demo_config_fits_two_steps(tmp_path, monkeypatch):
    from taming.cli.main import cli_main

    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", "--config", str(CONFIG_DIR / "demo_hybrid.yaml"), "--trainer.max_steps", "2",
                    "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
                    "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"])
    assert cli.trainer.global_step == 2 and "train/direct_rec_loss" in cli.trainer.logged_metrics
    tokenizer = load_tokenizer(tmp_path / "models" / "gigatok" / "demo_hybrid" / "last.ckpt")
    assert tokenizer.encode(torch.zeros(1, 3, 32, 32))[1].shape == (1, 32)


# ----------------------------------------------------------------------------------------------- FSDP


def fsdp_worker(out: str) -> None:
    """One rank (of 2, gloo): DDP for 3 steps; FSDP for 2 steps with a sharded PeriodicCheckpoint after each, then
    resumed from it for the 3rd. Run with LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set (as torchrun)."""
    from lightning.pytorch.strategies import DDPStrategy

    from taming.callbacks import PeriodicCheckpoint
    from taming.modules.hybrid import DETRLayer

    torch.set_num_threads(1)
    images = images32(8)  # 2 steps per epoch at 2 images per rank: the resume starts at an epoch boundary

    def fit(strategy, steps, ckpt_path=None, callbacks=()):
        L.seed_everything(0)
        model = HybridVQGAN(**tiny_parts(), loss=tiny_loss(aux_loss_end=0, disc_start=1), learning_rate=2e-3,
                            gradient_clip_val=0.05, warmup_steps=1)
        t = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=list(callbacks))
        t.fit(model, loader(images, batch_size=2), ckpt_path=ckpt_path)
        return t

    def fsdp():
        return CPUFSDP(auto_wrap_policy={DETRLayer}, activation_checkpointing_policy={DETRLayer},
                       state_dict_type="sharded", process_group_backend="gloo")

    fit(DDPStrategy(process_group_backend="gloo"), 3).save_checkpoint(f"{out}/ddp.ckpt")
    fit(fsdp(), 2, callbacks=[PeriodicCheckpoint(f"{out}/fsdp", every_n_train_steps=1)])
    fit(fsdp(), 3, ckpt_path=f"{out}/fsdp/last.ckpt").save_checkpoint(f"{out}/fsdp_resumed.ckpt")


def test_fsdp_matches_ddp_and_resumes_from_sharded_checkpoints(tmp_path):
    """FSDP (CPU, gloo; one unit per DETR layer, activation checkpointing, sharded checkpoints, per-network clipping
    with the norm over the shards, whole quantizer and discriminator) gives DDP's weights after 3 steps, also when
    resumed from a sharded checkpoint; the consolidated checkpoint loads with load_tokenizer."""
    run_two_ranks(f"import test_gigatok_training as t; t.fsdp_worker({str(tmp_path)!r})", tmp_path)
    sharded = tmp_path / "fsdp" / "last.ckpt"
    assert sorted(f.name for f in sharded.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert sorted(f.name for f in (tmp_path / "fsdp").iterdir()) == ["last.ckpt"]  # replaced in place twice
    consolidated = tmp_path / "consolidated.ckpt"
    proc = subprocess.run([sys.executable, "-m", "lightning.pytorch.utilities.consolidate_checkpoint",
                           str(tmp_path / "fsdp_resumed.ckpt"), "--output_file", str(consolidated)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, fsdp = (torch.load(p, weights_only=True) for p in (tmp_path / "ddp.ckpt", consolidated))
    assert ddp["global_step"] == fsdp["global_step"] == 3
    assert ddp["state_dict"].keys() == fsdp["state_dict"].keys()
    # Float32 reduction order differs between the two; Adam divides each gradient by its own running RMS, so where a
    # gradient is near zero that noise moves the weight by a visible fraction of a step (lr 2e-3, 3 steps). A missed,
    # doubled or unclipped gradient moves weights by whole steps: bound every element by a tenth of a step, and
    # nearly all of them far tighter.
    diffs = torch.cat([(fsdp["state_dict"][k].float() - v.float()).abs().flatten()
                       for k, v in ddp["state_dict"].items()])
    assert (diffs > 1e-5).float().mean() < 1e-4  # measured: 0 with torch 2.14, 23 of 1.1M elements with torch 2.4.1
    for key, value in ddp["state_dict"].items():
        torch.testing.assert_close(fsdp["state_dict"][key], value, atol=2e-4, rtol=0, msg=lambda m: f"{key}: {m}")
    x = photo_batch(32, names=("astronaut", "coffee"))
    torch.testing.assert_close(load_tokenizer(consolidated)(x), load_tokenizer(tmp_path / "ddp.ckpt")(x), atol=1e-3,
                               rtol=0)


def test_strategy_refusals():
    from lightning.pytorch.strategies import DDPStrategy

    from taming.modules.hybrid import DETRLayer

    model = HybridVQGAN(**tiny_parts(distill_depth=1), loss=tiny_loss())
    stub_trainer(model, strategy=DDPStrategy())
    with pytest.raises(ValueError, match="semantic projection .* gets no gradient"):
        model.setup("fit")

    hybrid = {"sharding_strategy": "HYBRID_SHARD", "auto_wrap_policy": {DETRLayer}}
    for model_kw, strategy_kw, match in (({"use_ema": True}, {}, "use_ema is not supported with FSDP"),
                                         ({}, hybrid, "HYBRID_SHARD is not supported"),
                                         ({"loss": tiny_loss(aux_loss_end=10)}, {}, "direct reconstruction")):
        model = HybridVQGAN(**tiny_parts(), **{"loss": tiny_loss(aux_loss_end=0), **model_kw})
        stub_trainer(model, strategy=FSDPStrategy(**strategy_kw))
        with pytest.raises(ValueError, match=match):
            model.setup("fit")


# ----------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config):
    from taming.cli.main import cli_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path: taming.models.gigatok.HybridVQGAN" in out.getvalue()


def released_init_args(reference_dir, name: str) -> tuple:
    """(model_cls, init_args) of the released YAML `name`, from the reference manifests (the 2-D S-S / S-B ones
    from their 1-D siblings, as test_hybrid does)."""
    source = {"VQ_BL256_dino_disc": "VQ_BL256", "VQ_SS256_2d": "VQ_SS256", "VQ_SB256_2d": "VQ_SB256"}.get(name, name)
    manifest = json.loads((reference_dir / f"gigatok_{source}_state_dict_manifest.json").read_text())
    args = manifest["init_args"]
    if source == name:
        return manifest["model_cls"], args
    if name == "VQ_BL256_dino_disc":
        return "VQVitModelPlus", args
    one_d_only = ("multi_level_query_init", "last_level_2d_query_init", "multi_level_2d_query_init")
    args = {k: v for k, v in args.items() if k not in one_d_only}
    if name == "VQ_SB256_2d":
        args["transformer_layer_type"] = "TransformerLayer"
    return "VQVitModel2DPlus", args


# name: global batch, max_steps, disc_start, aux_loss_end, warmup_steps, strategy
RECIPES = {"VQ_SS256": (128, 1_000_000, 20000, 15000, 0, "ddp"),
           "VQ_SB256": (128, 2_000_000, 20000, 15000, 0, "ddp"),
           "VQ_BL256": (256, 1_000_000, 20000, 15000, 0, "ddp"),
           "VQ_BL256_dino_disc": (256, 1_000_000, 80000, 15000, 0, "ddp"),
           "VQ_XLXXL256": (256, 1_500_000, 20000, 0, 5000, "fsdp"),
           "VQ_SS256_2d": (128, 1_000_000, 20000, 15000, 0, "ddp"),
           "VQ_SB256_2d": (128, 2_000_000, 20000, 15000, 0, "ddp"),
           "VQ_BL256_2d": (256, 1_000_000, 20000, 15000, 0, "ddp")}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_config_reproduces_released_recipe(name, reference_dir):
    cfg = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    model, trainer_cfg, data = cfg["model"]["init_args"], cfg["trainer"], cfg["data"]["init_args"]
    model_cls, args = released_init_args(reference_dir, name)
    released = gigatok_config({"model": {"model_cls": model_cls, "init_args": args}})
    with torch.device("meta"):
        for part in ("encoder", "quantizer", "decoder"):  # as recorded after construction (defaults filled in)
            assert component_config(instantiate(model[part])) == component_config(instantiate(released[part])), part
    batch, steps, disc_start, aux_loss_end, warmup, strategy = RECIPES[name]
    assert trainer_cfg["devices"] * trainer_cfg["num_nodes"] * data["batch_size"] == batch
    assert trainer_cfg["max_steps"] == steps and trainer_cfg["precision"] == "bf16-mixed"
    loss = model["loss"]["init_args"]
    assert (loss["disc_start"], loss["aux_loss_end"], model["warmup_steps"]) == (disc_start, aux_loss_end, warmup)
    assert (loss["disc_factor"], loss["gen_loss_weight"], loss["semantic_weight"]) == (0.5, 1.0, 0.5)
    assert (model["learning_rate"], model["betas"], model["weight_decay"], model["min_learning_rate"],
            model["gradient_clip_val"], model["lr_schedule"]) == (1e-4, [0.9, 0.95], 1e-4, 1e-5, 10.0, "cosine")
    assert data["train"]["init_args"]["resize_range"] == [256, 320] and data["train"]["init_args"]["hflip"]
    assert ("discriminator" in loss) == (name == "VQ_BL256_dino_disc")
    if strategy == "fsdp":
        fsdp = trainer_cfg["strategy"]["init_args"]
        assert trainer_cfg["strategy"]["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
        layers = ["taming.modules.hybrid.DETRLayer"]
        assert fsdp["auto_wrap_policy"] == fsdp["activation_checkpointing_policy"] == layers
        assert fsdp["state_dict_type"] == "sharded" and not model["use_ema"]
    else:
        assert trainer_cfg["strategy"] == "ddp"


def test_resize_range_draws_the_shorter_side_first():
    """ImageTransform(resize_range): side ~ U{lo..hi}, then the crop offsets and the flip, from the same generator."""
    import numpy as np
    import torchvision.transforms.functional as TF
    from PIL import Image

    from taming.data.loading import to_tensor

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    transform = ImageTransform(16, random_crop=True, hflip=True, resize_range=(16, 20))
    assert transform.random
    sides = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        side = int(rng.integers(16, 21))
        resized = TF.resize(img, side, antialias=True)
        top, left = int(rng.integers(0, resized.height - 15)), int(rng.integers(0, resized.width - 15))
        expected = TF.crop(resized, top, left, 16, 16)
        expected = to_tensor(TF.hflip(expected) if rng.random() < 0.5 else expected)
        torch.testing.assert_close(transform(img, np.random.default_rng(seed)), expected, rtol=0, atol=0)
        sides.add(side)
    assert sides == set(range(16, 21))
    with pytest.raises(ValueError, match="size <= lo <= hi"):
        ImageTransform(16, random_crop=True, resize_range=(12, 20))


# ----------------------------------------------------------------------------------------------- linear probe


def tokenizer_checkpoint(path: Path, layout: str) -> Path:
    from taming.tokenizer import Tokenizer

    torch.manual_seed(0)
    parts = tiny_parts(layout=layout, num_tokens=16, distill_depth=1, distill_dim=16)
    tokenizer = Tokenizer(parts["encoder"], parts["quantizer"], parts["decoder"])
    torch.save({"state_dict": tokenizer.state_dict(), "hyper_parameters": tokenizer.config}, path)
    return path


def test_linear_probe_smoke_on_demo_photographs(tmp_path):
    """The demo run (class = photograph): 16 classes, one top-1 per epoch, the JSON written."""
    from taming.cli.linear_probe_tokenizer import main

    ckpt = tokenizer_checkpoint(tmp_path / "tok.ckpt", "1d")
    result = main(["--ckpt_path", str(ckpt), "--demo", "--demo_length", "64", "--epochs", "2", "--warmup_epochs", "1",
                   "--eval_every", "1", "--batch_size", "32", "--num_workers", "0", "--device", "cpu",
                   "--output", str(tmp_path / "r.json")])
    assert result["features"] == "decoder" and result["layer"] == 1 and result["num_classes"] == 16
    assert list(result["top1_by_epoch"]) == [1, 2] and 0 <= result["top1"] <= 1
    assert json.loads((tmp_path / "r.json").read_text())["top1"] == result["top1"]


def test_linear_probe_smoke_on_an_imagenet_style_folder(tmp_path):
    """<root>/train/<class>/*, <root>/val/<class>/* (2 classes: photographs, noise); encoder features, the 2-D
    default; SGD."""
    from PIL import Image

    from taming.cli.linear_probe_tokenizer import main

    torch.manual_seed(0)
    for split in ("train", "val"):
        for label, images in enumerate((photo_batch(40), torch.rand(4, 3, 40, 40) * 2 - 1)):
            folder = tmp_path / "data" / split / f"n{label:08d}"
            folder.mkdir(parents=True)
            for i, image in enumerate(images):
                pixels = ((image + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    ckpt = tokenizer_checkpoint(tmp_path / "tok.ckpt", "2d")
    result = main(["--ckpt_path", str(ckpt), "--data_root", str(tmp_path / "data"), "--epochs", "2",
                   "--warmup_epochs", "1", "--batch_size", "4", "--optimizer", "sgd", "--num_workers", "0",
                   "--device", "cpu"])
    assert result["features"] == "encoder" and result["num_classes"] == 2 and result["optimizer"] == "sgd"
    assert list(result["top1_by_epoch"]) == [2] and result["top1"] in {k / 8 for k in range(9)}
    (tmp_path / "data" / "val" / "n00000001" / "0.png").rename(tmp_path / "data" / "val" / "n00000001" / "0.txt")
    (tmp_path / "data" / "val" / "n00000001").rename(tmp_path / "data" / "val" / "other")
    with pytest.raises(SystemExit, match="class folders of .* differ"):
        main(["--ckpt_path", str(ckpt), "--data_root", str(tmp_path / "data"), "--epochs", "1", "--warmup_epochs", "0",
              "--device", "cpu"])


def test_probe_features_lars_and_init():
    """Decoder features = the residual stream the semantic projection reads (distill_mlp of it = the decoder's
    "semantic" output), mean-pooled; MoCo v3 init; LARS moves a matrix by lr * trust_coefficient * |w| per step."""
    from taming.cli.linear_probe_tokenizer import ProbeFeatures
    from taming.probe import LARS, make_probe
    from taming.tokenizer import Tokenizer

    torch.manual_seed(0)
    parts = tiny_parts(num_tokens=16, distill_depth=1, distill_dim=16)
    tokenizer = Tokenizer(parts["encoder"], parts["quantizer"], parts["decoder"]).eval()
    features = ProbeFeatures(tokenizer, "decoder")
    x = photo_batch(32, names=("astronaut", "coffee"))
    pooled = features(x)
    with torch.no_grad():
        _, found = tokenizer.decoder(tokenizer.encode(x)[0], return_features=True)
        torch.testing.assert_close(tokenizer.decoder.transformer.distill_mlp(features._tapped), found["semantic"])
    torch.testing.assert_close(pooled, features._tapped.mean(1))
    assert pooled.shape == (2, 32)
    with pytest.raises(SystemExit, match="--layer must name a decoder layer in 1..2"):
        ProbeFeatures(tokenizer, "decoder", layer=3)

    probe = make_probe(64, 100)
    assert probe[1].bias.abs().max() == 0 and 0.008 < probe[1].weight.std() < 0.012 and not probe[0].affine
    w = torch.nn.Parameter(torch.randn(3, 4))
    before = w.detach().clone()
    w.grad = torch.randn(3, 4) * 100
    LARS([w], lr=1.0).step()
    assert (w.detach() - before).norm().item() == pytest.approx(0.001 * before.norm().item(), rel=1e-4)

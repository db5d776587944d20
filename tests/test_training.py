"""VQModel training on CPU at tiny size: exact resume, learning, non-finite handling, checkpoint contents."""
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from taming import load_tokenizer
from taming.metrics.image import psnr, to_uint8
from taming.models import VQModel
from conftest import reconstruction_psnr
from helpers import Images, images32, loader, stub_trainer, trainer

TINY = dict(ddconfig=dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=8), embed_dim=8, n_embed=256,
            lossconfig=dict(perceptual_weight=0.0, disc_ndf=8, disc_num_layers=2))


def test_exact_resume(tmp_path):
    """2 epochs in one go == 1 epoch, checkpoint, resume, 1 epoch: weights, EMA, Adam, LeCam, LR drop, step."""
    images = images32(8)
    kw = dict(TINY, learning_rate=1e-3, ema_decay=0.9, lr_drop_epoch=[1], lr_drop_rate=0.5)
    L.seed_everything(0)
    straight = VQModel(**kw)
    trainer(tmp_path, max_epochs=2).fit(straight, loader(images))

    L.seed_everything(0)
    first = VQModel(**kw)
    t1 = trainer(tmp_path, max_epochs=1)
    t1.fit(first, loader(images))
    t1.save_checkpoint(tmp_path / "half.ckpt")
    L.seed_everything(1)  # a different seed: everything must come from the checkpoint
    resumed = VQModel(**kw)
    t2 = trainer(tmp_path, max_epochs=2)
    t2.fit(resumed, loader(images), ckpt_path=tmp_path / "half.ckpt")

    assert t2.global_step == 4  # batches, not optimizer steps
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert int(b["model_ema.num_updates"]) == 4
    assert float(b["loss.lecam.logits_real_ema"]) != 0.0
    opt_a, opt_b = straight.optimizers().optimizer, resumed.optimizers().optimizer
    assert [g["lr"] for g in opt_b.param_groups] == [5e-4, 5e-4]  # the epoch-1 drop
    for p_a, p_b in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt_a.state[p_a][key], opt_b.state[p_b][key], rtol=0, atol=0)


def test_training_raises_psnr(tmp_path):
    """A tiny model trained on 4 photographs improves their reconstruction PSNR by >= 3 dB."""
    images = images32(4)
    L.seed_everything(0)
    model = VQModel(**TINY, learning_rate=2e-3, use_ema=False)

    before = reconstruction_psnr(model, images)
    trainer(tmp_path, max_steps=60).fit(model, loader(images))
    after = reconstruction_psnr(model, images)
    assert after >= before + 3.0, (before, after)


def test_checkpoint_loads_as_tokenizer(tmp_path):
    images = images32(4)
    L.seed_everything(0)
    model = VQModel(**TINY, ema_decay=0.5, bit_order="lsb", gradient_clip_val=1e-3)
    t = trainer(tmp_path, max_steps=2)
    t.fit(model, loader(images))
    assert t.logged_metrics["train/grad_norm_generator"] > 1e-3  # norm before clipping, logged per network
    assert "train/grad_norm_discriminator" in t.logged_metrics
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["ddconfig"] == TINY["ddconfig"] and hp["embed_dim"] == 8 and hp["n_embed"] == 256
    assert hp["bit_order"] == "lsb"
    sd = ckpt["state_dict"]
    assert "model_ema.encoderconv_inweight" in sd and "model_ema.lossdiscriminatormain0weight" in sd
    assert not any("perceptual" in k for k in sd)

    tok = load_tokenizer(path)  # no config needed; EMA weights by default
    assert tok.checkpoint_info["ema"] and tok.quantize.bit_order == "lsb"
    torch.testing.assert_close(tok.encoder.conv_in.weight, sd["model_ema.encoderconv_inweight"])
    assert not torch.equal(sd["model_ema.encoderconv_inweight"], sd["encoder.conv_in.weight"])
    with model.model_ema.average_parameters(model):  # same reconstruction as the EMA weights inside the module
        model.eval()
        torch.testing.assert_close(tok(images), model(images))


def test_nonfinite_steps_are_skipped_then_stop(tmp_path):
    images = images32(8)
    L.seed_everything(0)
    model = VQModel(**TINY, max_nonfinite_steps=2)
    t = trainer(tmp_path, max_epochs=1)
    # batch 0 fine, batches 1 and 2 all-NaN (the second one stops the run)
    data = loader(torch.cat([images, images[:4]]), nan_from=4)
    with pytest.warns(UserWarning, match="non-finite loss"):
        with pytest.raises(RuntimeError, match="2 consecutive non-finite losses"):
            t.fit(model, data)
    assert t.global_step == 1  # only the good batch was an optimizer step
    saved = list(tmp_path.glob("nonfinite-stop-step1.ckpt"))
    assert saved, list(tmp_path.iterdir())
    state = torch.load(saved[0], weights_only=True)["state_dict"]
    for k, v in model.state_dict().items():
        assert torch.isfinite(state[k].float()).all(), k
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)


def test_lr_schedule_warmup_cosine_and_epoch_drops():
    model = VQModel(**TINY, learning_rate=1e-3, scheduler_type="linear-warmup_cosine-decay", warmup_epochs=1.0,
                    min_learning_rate=1e-4, lr_drop_epoch=[2, 3], lr_drop_rate=0.5)
    f = 0.1  # min_learning_rate / learning_rate; W = 10 warm-up steps, 110 steps in all
    expected = {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 60: f + (1 - f) * 0.5, 110: f, 500: f}
    for step, value in expected.items():
        stub_trainer(model, global_step=step)
        assert model.lr_factor() == pytest.approx(value), step
    # the drop listed as epoch e applies from epoch e on ("at the end of epoch e - 1" in the reference)
    for epoch, drop in ((1, 1.0), (2, 0.5), (3, 0.25), (7, 0.25)):
        stub_trainer(model, global_step=10, current_epoch=epoch)
        assert model.lr_factor() == pytest.approx(drop), epoch
    warmup_only = stub_trainer(VQModel(**TINY, scheduler_type="linear-warmup", warmup_epochs=0.5), global_step=80)
    assert warmup_only.lr_factor() == 1.0 and stub_trainer(warmup_only, global_step=2).lr_factor() == pytest.approx(0.6)


def test_lr_drops_at_steps_and_epochs():
    """lr_drop_step (the pretraining recipes' lr_drop_iter) multiplies by the rate from each listed optimizer step on,
    together with the epoch drops."""
    from taming.models import VQGAN

    model = VQGAN(**VQ_TINY, lr_drop_step=[800, 1000], lr_drop_epoch=[3], lr_drop_rate=0.1)
    for step, epoch, factor in ((0, 0, 1.0), (799, 0, 1.0), (800, 0, 0.1), (999, 2, 0.1), (1000, 2, 0.01),
                                (1000, 3, 0.001)):
        stub_trainer(model, global_step=step, current_epoch=epoch)
        assert model.lr_factor() == pytest.approx(factor), (step, epoch)


def test_optimization_settings_are_checked_and_frozen():
    """The flat YAML keys become one typed object: bad values fail at construction, YAML lists become tuples, and the
    LR factor is a pure function of (step, epoch, run length, batches per epoch)."""
    import dataclasses

    from taming.models.optimization import Optimization

    for bad, match in ((dict(optimizer="sgd"), "optimizer"), (dict(learning_rate=0.0), "learning_rate"),
                       (dict(clip=-1.0), "gradient_clip_val"), (dict(schedule="cos"), "schedule"),
                       (dict(betas=[0.9]), "betas")):
        with pytest.raises(ValueError, match=match):
            Optimization(**bad)
    o = Optimization(schedule="cosine", warmup_epochs=0.5, min_learning_rate=1e-5, lr_drop_step=[90], betas=[0.5, 0.9])
    assert o.betas == (0.5, 0.9) and o.lr_drop_step == (90,) and o.decays
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.learning_rate = 1.0
    assert o.warmup_total(batches_per_epoch=20) == 10
    assert o.lr_factor(step=4, epoch=0, total_steps=100, batches_per_epoch=20) == pytest.approx(0.5)
    assert o.lr_factor(step=99, epoch=4, total_steps=100, batches_per_epoch=20) == pytest.approx(0.1 * 0.1, rel=1e-2)


def test_fused_adam_with_clipping_refused_under_fp16_loss_scaling():
    model = stub_trainer(VQModel(**TINY, fused_adam=True, gradient_clip_val=1.0), precision="16-mixed")
    with pytest.raises(ValueError, match="fused_adam"):
        model.configure_optimizers()
    stub_trainer(model, precision="bf16-mixed")
    assert model.configure_optimizers().defaults["fused"] is True


def test_unreadable_images_are_counted_per_epoch(tmp_path):
    """Items the dataset returns as None are dropped by collate_skip_none and summed in train/skipped_images."""
    from taming.data import collate_skip_none

    class WithUnreadable(Images):
        def __getitem__(self, i):
            return None if i in (1, 5, 6) else super().__getitem__(i)

    L.seed_everything(0)
    model = VQModel(**TINY, use_ema=False)
    t = trainer(tmp_path, max_epochs=1)
    t.fit(model, DataLoader(WithUnreadable(images32(8)), batch_size=4, collate_fn=collate_skip_none))
    assert t.global_step == 2 and t.logged_metrics["train/skipped_images"].item() == 3.0


def test_float64_step_equals_the_reference_step(tmp_path, monkeypatch):
    """precision 64-true: one training step equals Open-MAGVIT2's G step then D step, written out independently here
    (float64 throughout, the entropy by brute force over all 2^8 codes): losses and the gradients the optimizer
    receives to 1e-12; the updated weights to 1e-10, because Adam's first step g / (|g| + eps) amplifies the
    rounding of near-zero gradients by up to lr / eps = 1e5."""
    import copy

    import torch.nn.functional as F

    from scripts.benchmark_lfq import naive_entropy_terms

    grads = {}
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        for group in self.param_groups:
            grads.update({id(p): p.grad.clone() for p in group["params"]})
        return step(self, *args, **kwargs)

    x = images32(4)
    L.seed_everything(0)
    model = VQModel(**TINY, learning_rate=1e-3, ema_decay=0.9)
    ref = copy.deepcopy(model).double()
    t = trainer(tmp_path, max_steps=1, precision="64-true")
    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    t.fit(model, loader(x))
    monkeypatch.setattr(torch.optim.Adam, "step", step)

    # the reference: G step (L1 + 0.1 g + 0.1 (H_s - H_cb) + 0.25 commitment), then D step (hinge + 0.005 LeCam)
    x = x.double()
    gen = [p for m in (ref.encoder, ref.decoder) for p in m.parameters()]
    disc = list(ref.loss.discriminator.parameters())
    opt_g = torch.optim.Adam(gen, lr=1e-3, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc, lr=1e-3, betas=(0.5, 0.9))
    z = ref.encoder(x)
    codes = torch.where(z > 0, 1.0, -1.0).double()
    quant = z + (codes - z).detach()
    xrec = ref.decoder(quant)
    h_sample, h_codebook = naive_entropy_terms(z.permute(0, 2, 3, 1).reshape(-1, 8), 0.01, 1e-5)
    g = F.softplus(-ref.loss.discriminator(xrec).flatten(1).mean(1)).mean()
    g_total = (x - xrec).abs().mean() + 0.1 * g + 0.1 * (h_sample - h_codebook) + 0.25 * (z - codes).square().mean()
    opt_g.zero_grad()
    g_total.backward()
    ref_grads = {name: p.grad.clone() for name, p in ref.named_parameters() if name.startswith(("encoder", "decoder"))}
    opt_g.step()
    real, fake = ref.loss.discriminator(x), ref.loss.discriminator(xrec.detach())
    real_ema, fake_ema = 0.001 * real.mean().item(), 0.001 * fake.mean().item()  # floats, as the reference
    lecam = F.relu(real - fake_ema).pow(2).mean() + F.relu(real_ema - fake).pow(2).mean()
    d_total = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean()) + 0.005 * lecam
    opt_d.zero_grad()
    d_total.backward()
    ref_grads.update({name: p.grad.clone() for name, p in ref.named_parameters() if name.startswith("loss.")})
    opt_d.step()

    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[id(p)], ref_grads[name], rtol=0, atol=1e-12, msg=lambda m: f"{name}: {m}")
    ours = model.state_dict()
    for name, value in ref.state_dict().items():  # weights and BatchNorm statistics
        if name.startswith(("model_ema.", "loss.lecam.")):  # (the reference's LeCam averages are Python floats)
            continue
        assert ours[name].dtype == value.dtype, name
        torch.testing.assert_close(ours[name], value, rtol=0, atol=1e-10, msg=lambda m: f"{name}: {m}")
    assert abs(ours["loss.lecam.logits_real_ema"].item() - real_ema) < 1e-12
    shadow = ours["model_ema.encoderconv_inweight"]  # EMA in float64 too: 0.9 * initial + 0.1 * updated
    assert shadow.dtype == torch.float64
    torch.testing.assert_close(shadow, 0.9 * ref.model_ema.encoderconv_inweight + 0.1 * ours["encoder.conv_in.weight"],
                               rtol=0, atol=1e-12)
    logged = t.logged_metrics
    assert abs(logged["train/total_loss"].item() - g_total.item()) < 1e-12
    assert abs(logged["train/disc_loss"].item() - d_total.item()) < 1e-12


def test_validation_and_test_use_the_ema_weights(tmp_path):
    """Logged validation PSNR is the EMA weights' (and differs from the raw weights'); the raw weights are back after."""
    images = images32(4)
    L.seed_everything(0)
    model = VQModel(**TINY, learning_rate=2e-3, ema_decay=0.5)
    t = trainer(tmp_path, max_steps=5)
    t.fit(model, loader(images))
    raw = {k: v.clone() for k, v in model.state_dict().items()}

    def psnr_with(weights: str) -> float:
        model.eval()
        with torch.no_grad():
            if weights == "ema":
                with model.model_ema.average_parameters(model):
                    recon = model(images).clamp(-1, 1)
            else:
                recon = model(images).clamp(-1, 1)
        return psnr(to_uint8(images), to_uint8(recon)).mean().item()

    expected_ema, expected_raw = psnr_with("ema"), psnr_with("raw")
    assert abs(expected_ema - expected_raw) > 0.01
    logged = t.validate(model, loader(images), verbose=False)[0]["val_ema/psnr"]
    assert logged == pytest.approx(expected_ema, abs=1e-4)
    logged = t.test(model, loader(images), verbose=False)[0]["test/psnr"]
    assert logged == pytest.approx(expected_ema, abs=1e-4)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, raw[k], rtol=0, atol=0, msg=k)


def test_gradient_clipping_bounds_each_group_at_the_optimizer_step(tmp_path, monkeypatch):
    """The gradients Adam receives have norm <= gradient_clip_val per group (generator, discriminator)."""
    norms = []
    step = torch.optim.Adam.step

    def recording_step(self, closure=None):
        if closure is not None:  # Lightning's closure: backward, unscaling, on_before_optimizer_step (the clipping)
            with torch.enable_grad():
                closure()
        norms.append({g["name"]: torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in g["params"]
                                                                        if p.grad is not None])).item()
                      for g in self.param_groups})
        return step(self)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    L.seed_everything(0)
    model = VQModel(**TINY, gradient_clip_val=1e-3)
    t = trainer(tmp_path, max_steps=2)
    t.fit(model, loader(images32(4)))
    assert len(norms) == 2
    for step_norms in norms:
        assert set(step_norms) == {"generator", "discriminator"}
        assert all(v <= 1e-3 * (1 + 1e-5) for v in step_norms.values())
    assert t.logged_metrics["train/grad_norm_generator"] > 1e-2  # they were larger before clipping


VQ_TINY = dict(
    encoder={"class_path": "taming.modules.vqgan.Encoder",
             "init_args": dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=32, use_attn=False, embed_dim=8)},
    quantizer={"class_path": "taming.modules.quantizers.VectorQuantizer",
               "init_args": dict(codebook_size=256, dim=8, entropy_loss_weight=0.005, usage_window=1024)},
    decoder={"class_path": "taming.modules.vqgan.Decoder",
             "init_args": dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=32, use_attn=False, embed_dim=8)},
    loss={"class_path": "taming.modules.losses.VQLPIPSWithDiscriminator",
          "init_args": dict(perceptual_weight=0.0, disc_ndf=8, disc_num_layers=2, reconstruction_loss="l2", disc_start=1000,
                            gen_adv_loss="hinge", gen_loss_weight=0.5, lecam_loss_weight=None)})


def test_vq_tokenizer_training_raises_psnr_and_reloads(tmp_path):
    """The generic VQGAN module with a VQ quantizer (LlamaGen's layout): PSNR rises by >= 3 dB in 60 steps; the
    checkpoint reloads with load_tokenizer and no config (EMA weights)."""
    from taming.models import VQGAN

    images = images32(4)
    L.seed_everything(0)
    model = VQGAN(**VQ_TINY, learning_rate=2e-3, betas=(0.9, 0.95), use_ema=True, ema_decay=0.5)

    before = reconstruction_psnr(model, images)
    t = trainer(tmp_path, max_steps=60)
    t.fit(model, loader(images))
    after = reconstruction_psnr(model, images)
    assert after >= before + 3.0, (before, after)
    assert 0 < t.logged_metrics["train/codebook_usage"] <= 1 and "train/vq_loss" in t.logged_metrics
    t.save_checkpoint(tmp_path / "vq.ckpt")
    tokenizer = load_tokenizer(tmp_path / "vq.ckpt")
    assert tokenizer.checkpoint_info["ema"] and type(tokenizer.quantize).__name__ == "VectorQuantizer"
    with model.model_ema.average_parameters(model), torch.no_grad():
        model.eval()
        torch.testing.assert_close(tokenizer(images), model(images))


def test_every_schedule_name_has_its_own_rule():
    """Each accepted name maps to a rule (no name falls through to another's); Open-MAGVIT2's names are aliases."""
    from taming.models.schedules import AFTER_WARMUP, ALIASES, SCHEDULES, lr_factor

    assert set(SCHEDULES) == set(AFTER_WARMUP) | set(ALIASES) and set(ALIASES.values()) <= set(AFTER_WARMUP)
    for alias, name in ALIASES.items():
        assert [lr_factor(alias, s, 100, 10, end_factor=0.1) for s in range(100)] == \
            [lr_factor(name, s, 100, 10, end_factor=0.1) for s in range(100)]
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'cosine_v2'"):
        lr_factor("cosine_v2", 0, 10)


def test_tf32_option_restores_the_process_flags():
    """`tf32: true` switches TF32 on for the run (process-wide flags) and teardown puts the previous values back."""
    from taming.models.ar import ClassConditionalAR
    from taming.modules.component import component_config
    from taming.modules.transformer import GPT

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    model = ClassConditionalAR(component_config(GPT(vocab_size=16, num_tokens=4, dim=16, n_layer=1, n_head=2,
                                                    num_classes=2)), tf32=True)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        model.configure_model()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        model.teardown("fit")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before

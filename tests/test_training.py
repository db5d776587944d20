"""VQModel training on CPU at tiny size: exact resume, learning, non-finite handling, checkpoint contents."""
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from taming import load_tokenizer
from taming.metrics.image import psnr, to_uint8
from taming.models import VQModel
from conftest import photo_batch

TINY = dict(ddconfig=dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=8), embed_dim=8, n_embed=256,
            lossconfig=dict(perceptual_weight=0.0, disc_ndf=8, disc_num_layers=2))


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


def trainer(tmp_path, **kw):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, deterministic=True, default_root_dir=tmp_path)
    args.update(kw)
    return L.Trainer(**args)


def loader(images, batch_size=4, **kw):
    return DataLoader(Images(images, **kw), batch_size=batch_size, shuffle=False)


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

    def batch_psnr():
        model.eval()
        with torch.no_grad():
            value = psnr(to_uint8(images), to_uint8(model(images))).mean().item()
        model.train()
        return value

    before = batch_psnr()
    trainer(tmp_path, max_steps=60).fit(model, loader(images))
    after = batch_psnr()
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

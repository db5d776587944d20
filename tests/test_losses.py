"""Loss terms against hand-written formulas on small tensors; LeCam state; LPIPS handling."""
import math

import pytest
import torch
import torch.nn.functional as F

from taming.modules.losses import (LeCamEMA, VQLPIPSWithDiscriminator, hinge_d_loss, hinge_g_loss,
                                   non_saturating_d_loss, non_saturating_g_loss, vanilla_d_loss)
from taming.modules.quantizers import QuantizerOutput
from helpers import quantizer_output, write_fake_vgg16


REAL = torch.tensor([[[[0.5, -2.0], [1.5, 0.0]]], [[[3.0, 1.0], [-1.0, 0.2]]]])  # B=2 x 1 x 2 x 2
FAKE = torch.tensor([[[[-0.5, 2.0], [0.1, -3.0]]], [[[1.0, 1.0], [-0.7, 0.4]]]])


def softplus(v):
    return math.log1p(math.exp(v))


def test_hinge_d_loss():
    r, f = REAL.flatten().tolist(), FAKE.flatten().tolist()
    expected = 0.5 * (sum(max(0.0, 1 - v) for v in r) / len(r) + sum(max(0.0, 1 + v) for v in f) / len(f))
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(expected, rel=1e-6)


def test_vanilla_d_loss():
    r, f = REAL.flatten().tolist(), FAKE.flatten().tolist()
    expected = 0.5 * (sum(softplus(-v) for v in r) / len(r) + sum(softplus(v) for v in f) / len(f))
    assert vanilla_d_loss(REAL, FAKE).item() == pytest.approx(expected, rel=1e-6)


def test_non_saturating_losses_use_per_image_mean_logits():
    real_means = [sum(REAL[b].flatten().tolist()) / 4 for b in range(2)]
    fake_means = [sum(FAKE[b].flatten().tolist()) / 4 for b in range(2)]
    # -log sigmoid(m) for the generator; real labelled 1, fake 0 for the discriminator (real as real: v1's bug fixed)
    g = sum(-math.log(1 / (1 + math.exp(-m))) for m in fake_means) / 2
    d = sum(softplus(-m) for m in real_means) / 2 + sum(softplus(m) for m in fake_means) / 2
    assert non_saturating_g_loss(FAKE).item() == pytest.approx(g, rel=1e-6)
    assert non_saturating_d_loss(REAL, FAKE).item() == pytest.approx(d, rel=1e-6)
    # a perfect discriminator has ~0 loss, a fooled one a large loss
    assert non_saturating_d_loss(torch.full((2, 1, 3, 3), 20.0), torch.full((2, 1, 3, 3), -20.0)) < 1e-6
    assert non_saturating_d_loss(torch.full((2, 1, 3, 3), -20.0), torch.full((2, 1, 3, 3), 20.0)) > 39


def test_hinge_generator_loss():
    assert hinge_g_loss(FAKE).item() == pytest.approx(-sum(FAKE.flatten().tolist()) / 8, rel=1e-6)


def test_losses_are_float32_under_half_inputs_and_keep_float64():
    assert hinge_d_loss(REAL.half(), FAKE.half()).dtype == torch.float32
    assert non_saturating_g_loss(FAKE.bfloat16()).dtype == torch.float32
    for fn in (hinge_d_loss, vanilla_d_loss, non_saturating_d_loss):
        assert fn(REAL.double(), FAKE.double()).dtype == torch.float64
    lecam = LeCamEMA().double()
    real, fake = lecam.next_state(REAL.double(), FAKE.double())
    assert real.dtype == torch.float64 and LeCamEMA.penalty(REAL.double(), FAKE.double(), real, fake).dtype == torch.float64


def test_lecam_state_and_penalty():
    lecam = LeCamEMA(decay=0.9)
    real_ema, fake_ema = lecam.next_state(REAL, FAKE)
    assert real_ema.item() == pytest.approx(0.1 * REAL.mean().item(), rel=1e-6)
    assert fake_ema.item() == pytest.approx(0.1 * FAKE.mean().item(), rel=1e-6)
    assert lecam.logits_real_ema.item() == 0.0  # next_state is pure
    lecam.commit(real_ema, fake_ema)
    real2, _ = lecam.next_state(REAL, FAKE)
    assert real2.item() == pytest.approx(0.9 * real_ema.item() + 0.1 * REAL.mean().item(), rel=1e-6)
    r, f = REAL.flatten().tolist(), FAKE.flatten().tolist()
    expected = (sum(max(0.0, v - fake_ema.item()) ** 2 for v in r) / len(r)
                + sum(max(0.0, real_ema.item() - v) ** 2 for v in f) / len(f))
    assert LeCamEMA.penalty(REAL, FAKE, real_ema, fake_ema).item() == pytest.approx(expected, rel=1e-5)
    assert set(lecam.state_dict()) == {"logits_real_ema", "logits_fake_ema"}


def loss_module(**kw):
    torch.manual_seed(0)
    args = dict(perceptual_weight=0.0, disc_ndf=8, disc_num_layers=2)
    args.update(kw)
    return VQLPIPSWithDiscriminator(**args)


def test_generator_loss_composition_and_frozen_discriminator():
    loss = loss_module(gen_loss_weight=0.1, disc_start=5)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    xrec = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_()
    quant = quantizer_output(-0.7, entropy_loss=-3.0, commit_loss=0.4)
    total, logs = loss.generator_loss(x, xrec, quant, global_step=5)
    g = F.softplus(-loss.discriminator(xrec).flatten(1).mean(1)).mean()
    expected = (x - xrec).abs().mean() + 0.1 * g + quant.loss
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(p.grad is None for p in loss.discriminator.parameters())  # no wasted D gradients
    assert all(p.requires_grad for p in loss.discriminator.parameters())  # unfrozen afterwards
    before_start, before_logs = loss.generator_loss(x, xrec, quant, global_step=4)
    torch.testing.assert_close(before_start, (x - xrec).abs().mean() + quant.loss)
    assert logs["train/reconstruct_loss"].item() == pytest.approx((x - xrec).abs().mean().item())
    assert logs["train/d_weight"].item() == pytest.approx(0.1) and logs["train/disc_factor"].item() == 1.0
    assert before_logs["train/disc_factor"].item() == 0.0
    # Open-MAGVIT2's meaning of the names: g_loss is weighted, the quantizer's terms are logged as they come
    torch.testing.assert_close(logs["train/g_loss"], 0.1 * g.detach())
    torch.testing.assert_close(logs["train/g_loss_unweighted"], g.detach())
    assert before_logs["train/g_loss"].item() == 0.0
    assert logs["train/entropy_loss"].item() == -3.0 and logs["train/commit_loss"].item() == pytest.approx(0.4)
    torch.testing.assert_close(logs["train/total_loss"], total.detach())
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in logs.values())  # reducible by sync_dist
    # validation: g_loss is disc_factor * G, not weighted (as the reference logs it); no training-only names
    _, val_logs = loss.generator_loss(x, xrec.detach(), quant, global_step=5, split="val_ema")
    torch.testing.assert_close(val_logs["val_ema/g_loss"], g.detach())
    assert "val_ema/total_loss" not in val_logs and "val_ema/d_weight" not in val_logs


def test_llamagen_gigatok_objective_l2_and_hinge():
    loss = loss_module(gen_loss_weight=0.5, gen_adv_loss="hinge", reconstruction_loss="l2", disc_start=0)
    x, xrec = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    total, logs = loss.generator_loss(x, xrec, quantizer_output(0.3), global_step=0)
    expected = (x - xrec).square().mean() - 0.5 * loss.discriminator(xrec).mean() + 0.3
    torch.testing.assert_close(total, expected)
    with pytest.raises(ValueError, match="reconstruction_loss"):
        loss_module(reconstruction_loss="l3")
    with pytest.raises(ValueError, match="gen_adv_loss"):
        loss_module(gen_adv_loss="wasserstein")


def test_float64_inputs_keep_float64():
    loss = loss_module().double()
    x, xrec = torch.rand(2, 3, 16, 16, dtype=torch.float64), torch.rand(2, 3, 16, 16, dtype=torch.float64)
    total, logs = loss.generator_loss(x, xrec, QuantizerOutput(None, None, torch.tensor(0.1, dtype=torch.float64), {}), 0)
    d_total, d_logs, state = loss.discriminator_loss(x, xrec, 0)
    assert total.dtype == d_total.dtype == state[0].dtype == torch.float64
    assert logs["train/reconstruct_loss"].dtype == d_logs["train/lecam_loss"].dtype == torch.float64


def test_adaptive_weight():
    loss = loss_module(gen_loss_weight=None, disc_weight=0.8)
    last = torch.nn.Parameter(torch.randn(3, 3, 1, 1))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    xrec = F.conv2d(torch.randn(2, 3, 16, 16), last)
    _, logs = loss.generator_loss(x, xrec, quantizer_output(0.0), 0, last_layer=last)
    nll_grad = torch.autograd.grad((x - xrec).abs().mean(), last, retain_graph=True)[0]
    g_grad = torch.autograd.grad(F.softplus(-loss.discriminator(xrec).flatten(1).mean(1)).mean(), last)[0]
    expected = 0.8 * nll_grad.norm() / (g_grad.norm() + 1e-4)
    assert logs["train/d_weight"].item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("kind", ["hinge", "vanilla", "non_saturating"])
def test_discriminator_loss_with_lecam(kind):
    loss = loss_module(disc_loss=kind, lecam_loss_weight=0.005, lecam_ema_decay=0.999)
    x, xrec = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    total, logs, state = loss.discriminator_loss(x, xrec, global_step=0)
    real, fake = loss.discriminator(x), loss.discriminator(xrec)
    real_ema, fake_ema = 0.001 * real.mean(), 0.001 * fake.mean()
    expected = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss, "non_saturating": non_saturating_d_loss}[kind](real, fake)
    expected = expected + 0.005 * LeCamEMA.penalty(real, fake, real_ema, fake_ema)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(state[0], real_ema)
    # names as Open-MAGVIT2 logs them: disc_loss is the whole objective, non_saturated_d_loss its D-loss term
    torch.testing.assert_close(logs["train/disc_loss"], expected.detach())
    assert logs["train/non_saturated_d_loss"].item() == pytest.approx(
        {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss, "non_saturating": non_saturating_d_loss}[kind](real, fake).item())
    # validation: state not updated, penalty from the stored averages
    _, _, none_state = loss.discriminator_loss(x, xrec, global_step=0, update_lecam=False, split="val")
    assert none_state is None and loss.lecam.logits_real_ema.item() == 0.0


def test_bad_loss_names_fail_clearly():
    with pytest.raises(ValueError, match="disc_loss must be one of"):
        loss_module(disc_loss="wgan")


def test_lpips_is_frozen_eval_and_not_checkpointed(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        loss_module(perceptual_weight=1.0)
    write_fake_vgg16(tmp_path / "hub")
    loss = loss_module(perceptual_weight=1.0)
    loss.train()
    assert not loss.perceptual_loss.training and loss.discriminator.training
    assert not any(p.requires_grad for p in loss.perceptual_loss.parameters())
    sd = loss.state_dict()
    assert not any(k.startswith("perceptual_loss.") for k in sd)
    # strict loading works without LPIPS keys and drops the reference's LPIPS weights
    reference_style = dict(sd, **{"perceptual_loss.net.slice1.0.weight": torch.zeros(1)})
    loss.load_state_dict(reference_style, strict=True)
    x, xrec = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    a, logs = loss.generator_loss(x, xrec, quantizer_output(0.0), 0)
    b, _ = loss.generator_loss(x, xrec, quantizer_output(0.0), 0)
    torch.testing.assert_close(a, b)  # deterministic: LPIPS dropout stays off
    p = loss.perceptual_loss(x, xrec).mean()
    assert logs["train/perceptual_loss"].item() == pytest.approx(p.item(), rel=1e-5)


# --------------------------------------------------------------------- LeCam across DDP processes


def _lecam_worker(rank, world, result_path):
    lecam = LeCamEMA(decay=0.9)
    real, fake = (REAL[:1], FAKE[:1]) if rank == 0 else (REAL[1:], FAKE[1:])  # each rank sees one image
    state = lecam.next_state(real, fake)
    torch.save([t.detach() for t in state], f"{result_path}.{rank}")


def test_lecam_averages_are_global_under_ddp(tmp_path):
    """Two gloo processes, one image each: both end with the EMA of the mean logit over both images."""
    from helpers import spawn_gloo

    spawn_gloo(_lecam_worker, str(tmp_path / "r"))
    states = [torch.load(f"{tmp_path / 'r'}.{r}", weights_only=True) for r in range(2)]
    for real_ema, fake_ema in states:
        assert real_ema.item() == pytest.approx(0.1 * REAL.mean().item(), rel=1e-6)
        assert fake_ema.item() == pytest.approx(0.1 * FAKE.mean().item(), rel=1e-6)

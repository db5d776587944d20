"""EMA arithmetic, reference naming, swap/restore, DDP exclusion."""
import pytest
import torch
from torch import nn

from taming.models import VQModel
from taming.modules.ema import LitEma


def test_update_arithmetic_matches_closed_form():
    net = nn.Linear(3, 2)
    start = {k: v.clone() for k, v in net.named_parameters()}
    ema = LitEma(net, decay=0.9)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # constant new weights theta = start + 1
    for _ in range(5):
        ema.update(net)
    # s_n = theta + decay^n (s_0 - theta), s_0 - theta = -1
    torch.testing.assert_close(ema.weight, start["weight"] + 1 - 0.9**5)
    torch.testing.assert_close(ema.bias, start["bias"] + 1 - 0.9**5)
    assert int(ema.num_updates) == 5 and ema.num_updates.dtype == torch.int32
    assert ema.decay.item() == pytest.approx(0.9)


def test_swap_is_exact_and_reversible():
    net = nn.Linear(4, 4)
    ema = LitEma(net, decay=0.5)
    live = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.mul_(3)
    ema.update(net)
    shadow = ema.weight.clone()
    with ema.average_parameters(net):
        assert torch.equal(net.weight, shadow)
    assert torch.equal(net.weight, live * 3) and torch.equal(ema.weight, shadow)


def test_frozen_parameters_are_not_tracked():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    net[0].requires_grad_(False)
    assert set(LitEma(net).state_dict()) == {"decay", "num_updates", "1weight", "1bias"}


def test_vqmodel_ema_names_match_reference_layout():
    model = VQModel(ddconfig=dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=8), embed_dim=8, n_embed=256,
                    lossconfig=dict(perceptual_weight=0.0, disc_ndf=8))
    keys = {k for k in model.state_dict() if k.startswith("model_ema.")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert keys == {"model_ema." + n.replace(".", "") for n in trainable} | {"model_ema.decay", "model_ema.num_updates"}
    assert "model_ema.encoderconv_inweight" in keys and "model_ema.lossdiscriminatormain0weight" in keys
    # shadows are persistent (checkpointed) but excluded from DDP's per-step buffer broadcast
    assert set(model._ddp_params_and_buffers_to_ignore) == keys


def test_decay_from_config_wins_after_loading():
    net = nn.Linear(2, 2)
    state = LitEma(net, decay=0.5).state_dict()
    ema = LitEma(net, decay=0.999)
    ema.load_state_dict(state)
    assert ema.decay.item() == pytest.approx(0.999)

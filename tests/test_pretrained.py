"""Weight files are found in the torch hub cache or at explicit paths, never downloaded, and land where they belong."""
import inspect
from pathlib import Path

import pytest
import torch

from taming.pretrained import LPIPS_TRUNK_FILES, build_lpips, resolve_weight_file
from helpers import torch_hub_dir


@pytest.fixture
def hub_dir(tmp_path):
    """A fresh, empty torch hub directory for the test (restored afterwards)."""
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    with torch_hub_dir(tmp_path / "hub") as hub:
        yield hub


def test_resolve_weight_file_finds_cache_and_explicit_paths(hub_dir, tmp_path):
    cached = hub_dir / "checkpoints" / "some-weights.pth"
    cached.write_bytes(b"x")
    assert resolve_weight_file("some-weights.pth") == cached
    explicit = tmp_path / "elsewhere.pth"
    explicit.write_bytes(b"x")
    assert resolve_weight_file("some-weights.pth", explicit, "--weights") == explicit


def test_resolve_weight_file_missing_names_file_location_and_option(hub_dir, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        resolve_weight_file("vgg16-397923af.pth", option="--lpips_vgg_weights")
    message = str(err.value)
    assert "vgg16-397923af.pth" in message
    assert str(hub_dir / "checkpoints" / "vgg16-397923af.pth") in message
    assert "--lpips_vgg_weights" in message
    with pytest.raises(FileNotFoundError, match="--lpips_vgg_weights"):
        resolve_weight_file("vgg16-397923af.pth", tmp_path / "nope.pth", "--lpips_vgg_weights")


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_build_lpips_loads_torchvision_trunk_into_slices(hub_dir, net):
    import lpips
    import torchvision

    torch.manual_seed(0)
    trunk = (torchvision.models.alexnet if net == "alex" else torchvision.models.vgg16)().state_dict()
    torch.save(trunk, hub_dir / "checkpoints" / LPIPS_TRUNK_FILES[net])
    model = build_lpips(net)

    loaded = model.net.state_dict()  # keys slice{k}.{i}.weight / .bias
    assert len(loaded) == len([k for k in trunk if k.startswith("features.")])
    for key, value in loaded.items():
        _, layer, param = key.split(".")
        assert torch.equal(value, trunk[f"features.{layer}.{param}"]), key

    bundled = Path(inspect.getfile(lpips.LPIPS)).parent / "weights" / "v0.1" / f"{net}.pth"
    for key, value in torch.load(bundled, map_location="cpu", weights_only=True).items():
        assert torch.equal(model.state_dict()[key], value), key

    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    d = model(x, y)
    assert d.shape == (2, 1, 1, 1) and (d > 0).all()
    assert torch.allclose(model(x, x), torch.zeros(2, 1, 1, 1))


def test_build_lpips_errors(hub_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        build_lpips("alex")
    wrong = tmp_path / "not_alexnet.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="not a torchvision alex state dict"):
        build_lpips("alex", wrong)
    with pytest.raises(ValueError, match="one of"):
        build_lpips("squeeze")


def test_missing_weight_errors_name_the_upstream_source_and_the_command_line_form(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        resolve_weight_file("vgg16-397923af.pth", option="model.init_args.lossconfig.perceptual_trunk_path")
    message = str(err.value)
    assert "--model.init_args.lossconfig.perceptual_trunk_path /path/to/vgg16-397923af.pth" in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    with pytest.raises(FileNotFoundError, match="pass --inception_weights /path/to/.*pytorch-fid/releases"):
        resolve_weight_file("pt_inception-2015-12-05-6726825d.pth", option="--inception_weights")
    with pytest.raises(FileNotFoundError, match="dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth"):
        resolve_weight_file("dinov2_vitb14_reg4_pretrain.pth")

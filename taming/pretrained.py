"""Pretrained weight files (Inception for FID, VGG16/AlexNet trunks for LPIPS, I3D for FVD, DINO and DINOv2 for the
semantic regularisation and discriminator), found offline.

Every file is looked up in the torch hub cache, `torch.hub.get_dir()/checkpoints/<file>` (move it with
`TORCH_HOME` or `torch.hub.set_dir`), or taken from an explicit path. Nothing here downloads: a missing
file is an error that says where to put it.
"""

from pathlib import Path
from typing import Optional

import torch
from torch import nn

# torchvision ImageNet weights of the LPIPS trunks (the files torchvision's own URLs download to).
LPIPS_TRUNK_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}


def upstream_source(filename: str) -> str:
    """Where a weight file this project reads is published (for error messages)."""
    if filename in LPIPS_TRUNK_FILES.values():
        return f"torchvision's ImageNet weights, https://download.pytorch.org/models/{filename}"
    if filename.startswith("pt_inception-"):
        return f"pytorch-fid's release assets, https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{filename}"
    if filename.startswith("weights-inception-"):
        return ("torch-fidelity's release assets, "
                f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{filename}")
    if filename.startswith("dinov2_"):
        arch = filename.split("_pretrain")[0].replace("_reg4", "")
        return f"the DINOv2 release (torch hub facebookresearch/dinov2), https://dl.fbaipublicfiles.com/dinov2/{arch}/{filename}"
    if filename.startswith("dino_"):
        return f"the DINO release, https://dl.fbaipublicfiles.com/dino/{filename.rsplit('_pretrain', 1)[0]}_pretrain/{filename}"
    if filename == "i3d_pretrained_400.pt":
        return ("the PyTorch conversion of the Kinetics-400 I3D used for FVD, shipped as i3d_pretrained_400.pt with "
                "VideoGPT, TATS and StyleGAN-V (a bare state dict of about 50 MB)")
    return "its upstream project"


def _how_to_point_at(option: Optional[str], filename: str) -> str:
    """How to give the file explicitly: a command-line flag as such, a config key also as its command-line form."""
    if not option:
        return ""
    if option.startswith("-"):
        return f", or pass {option} /path/to/{filename}"
    return f", or set {option} in the config (main.py command line: --{option} /path/to/{filename})"


def resolve_weight_file(filename: str, path=None, option: Optional[str] = None) -> Path:
    """`path` when given (it must exist), else `torch.hub.get_dir()/checkpoints/<filename>`.

    Raises FileNotFoundError naming the file, where it was expected and `option` (the CLI flag or YAML
    key that points at an explicit file). Never downloads.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Pretrained weight file {filename!r} not found at {path} (given by {option or 'path'}). "
                f"Fix the path or leave the option out to use the torch hub cache. It is published by "
                f"{upstream_source(filename)}."
            )
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        raise FileNotFoundError(
            f"Pretrained weight file {filename!r} is missing: expected at {cached} (torch hub cache; "
            f"set TORCH_HOME to use another cache){_how_to_point_at(option, filename)}. Nothing is downloaded "
            f"automatically: get it from {upstream_source(filename)} on a machine with internet access and copy it "
            "there."
        )
    return cached


def build_lpips(net: str = "vgg", trunk_path=None, option: Optional[str] = None) -> nn.Module:
    """LPIPS v0.1 (`lpips` package, bundled linear weights) with the torchvision ImageNet trunk.

    Input: two image batches B x 3 x H x W in [-1, 1]; output B x 1 x 1 x 1. Frozen, eval mode.
    The trunk file is a torchvision state dict (`features.{i}.*`); LPIPS keeps torchvision's child
    indices inside its slices, so `features.{i}.w` is loaded into `net.slice{k}.{i}.w`.
    """
    import warnings

    import lpips

    if net not in LPIPS_TRUNK_FILES:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_TRUNK_FILES)}, got {net!r}")
    trunk_file = resolve_weight_file(LPIPS_TRUNK_FILES[net], trunk_path, option)
    # pnet_rand=True: build the trunk without torchvision's download; its weights are loaded below.
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` flag
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    state = torch.load(trunk_file, map_location="cpu", weights_only=True)
    slice_of_layer = {
        name.split(".")[1]: slice_name
        for slice_name, module in model.net.named_children()
        for name, _ in module.named_modules(prefix=slice_name)
        if name.count(".") == 1
    }
    trunk_state = {}
    for key, value in state.items():
        if key.startswith("features."):
            layer, rest = key[len("features."):].split(".", 1)
            if layer in slice_of_layer:
                trunk_state[f"{slice_of_layer[layer]}.{layer}.{rest}"] = value
    expected = set(model.net.state_dict())
    if set(trunk_state) != expected:
        missing = sorted(expected - set(trunk_state))
        raise ValueError(
            f"{trunk_file} is not a torchvision {net} state dict: missing {missing[:4]}"
            f"{' ...' if len(missing) > 4 else ''} (keys `features.<i>.weight`/`.bias` expected)"
        )
    model.net.load_state_dict(trunk_state)
    return model.eval().requires_grad_(False)

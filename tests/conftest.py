"""Shared fixtures: the reference test vectors in ../shared/reference and small real photographs."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("TAMING_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


def pytest_sessionstart(session) -> None:
    """In CI (CI=true) the reference fixtures are required: their absence is an error, not dozens of skips."""
    if os.environ.get("CI", "").lower() in ("1", "true") and not REFERENCE_DIR.is_dir():
        raise pytest.UsageError(f"CI run without the reference fixtures: {REFERENCE_DIR} does not exist "
                                "(../shared/reference next to the repository)")


MISSING_REFERENCE = "reference fixtures not found"


def pytest_terminal_summary(terminalreporter) -> None:
    """One line saying how many tests the missing reference fixtures skipped (instead of skips scattered in -ra)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if MISSING_REFERENCE in str(r.longrepr)]
    if skipped:
        files = sorted({r.nodeid.split("::")[0] for r in skipped})
        terminalreporter.write_line(f"{len(skipped)} tests in {len(files)} files skipped: {MISSING_REFERENCE} at "
                                    f"{REFERENCE_DIR} (../shared/reference next to the repository, or set "
                                    "TAMING_REFERENCE_DIR); CI requires them", yellow=True, bold=True)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"{MISSING_REFERENCE} at {REFERENCE_DIR} (expected ../shared/reference next to the repo)")
    return REFERENCE_DIR


def photo_batch(size: int = 64, names=("astronaut", "coffee", "chelsea", "rocket")) -> torch.Tensor:
    """Center crops of scikit-image's bundled photographs, resized to size x size, B x 3 x H x W in [-1, 1]."""
    import skimage.data
    from PIL import Image

    images = []
    for name in names:
        arr = getattr(skimage.data, name)()
        h, w = arr.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        img = Image.fromarray(arr[top:top + s, left:left + s]).resize((size, size), Image.BICUBIC)
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    return torch.stack(images).float() / 127.5 - 1


@pytest.fixture(scope="session")
def sample_images() -> torch.Tensor:
    return photo_batch()


def reconstruction_psnr(model, images: torch.Tensor) -> float:
    """Mean per-image PSNR (dB, uint8-rounded) of `model(images)` in eval mode; the model is left in train mode."""
    from taming.metrics.image import psnr, to_uint8

    model.eval()
    with torch.no_grad():
        value = psnr(to_uint8(images), to_uint8(model(images))).mean().item()
    model.train()
    return value


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and the references were computed on one); modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build_encoder_decoder(config: dict, state_dict=None):
    """Encoder and decoder components of a translated config (the quantizer is not needed), loaded strictly from
    `state_dict` (keys `encoder.*` / `decoder.*`) when given, in eval mode."""
    from taming.checkpoints import load_state_dict_strict, strip_prefix
    from taming.modules.component import instantiate

    encoder, decoder = instantiate(config["encoder"]), instantiate(config["decoder"])
    if state_dict is not None:
        load_state_dict_strict(encoder, strip_prefix(state_dict, "encoder."), "encoder")
        load_state_dict_strict(decoder, strip_prefix(state_dict, "decoder."), "decoder")
    return encoder.eval(), decoder.eval()

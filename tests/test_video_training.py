"""Training the video tokenizer: the release's objective on one step (fixture), its 3-D discriminator, inflation when a
fit starts (and a resume that needs no image file), activation checkpointing, the UCF-101 data pipeline (fixture),
video folders with bad files, the demo videos, and a short CPU fit that learns."""
import json
import math

import numpy as np
import pytest
import torch

from taming.data import VideoClips, collate_skip_none
from taming.data.demo import DemoVideos, write_demo_videos
from taming.data.video import clip_to_tensor, resize_linear_uint8
from taming.modules.discriminator import NLayerDiscriminator3D
from taming.modules.losses.vqperceptual import frames
from helpers import torch_hub_dir, trainer


@pytest.fixture(scope="module")
def expected(reference_dir):
    return torch.load(reference_dir / "om2_video_tiny_expected.pt", weights_only=False)


def release_model(expected, **overrides):
    """Our video VQModel from the fixture's release init_args (the release's dead keys dropped)."""
    from taming.models.video_lfqgan import VQModel

    config = expected["config"]
    lossconfig = {k: v for k, v in config["lossconfig"]["params"].items()
                  if k not in ("disc_conditional", "codebook_enlarge_ratio", "codebook_enlarge_steps")}
    lossconfig.update(overrides.pop("lossconfig", {}))
    return VQModel(ddconfig=config["ddconfig"], lossconfig=lossconfig, n_embed=config["n_embed"],
                   embed_dim=config["embed_dim"], **overrides)


def write_rule_vgg16(hub_dir, seed):
    """The fixture's random VGG16 trunk (README `lpips_vgg_rule`) in torchvision's file layout."""
    import torchvision

    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in torchvision.models.vgg16(weights=None).state_dict().items():
        if key.startswith("features."):
            state[key] = (torch.randn(value.shape, generator=g) * math.sqrt(2 / (value.shape[1] * 9))
                          if key.endswith("weight") else 0.01 * torch.randn(value.shape, generator=g))
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(state, hub_dir / "checkpoints" / "vgg16-397923af.pth")


def test_video_objective_reproduces_release(reference_dir, expected, tmp_path):
    """One training step's G and D terms (every logged value), the 3-D discriminator's logit maps, the LeCam averages
    and BatchNorm statistics after it, per-frame LPIPS, and the EMA validation terms of the release."""
    write_rule_vgg16(tmp_path / "hub", expected["vgg_seed"])
    with torch_hub_dir(tmp_path / "hub"):
        model = release_model(expected)
    state = torch.load(reference_dir / "om2_video_tiny.ckpt", weights_only=False)["state_dict"]
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == {"loss.lecam.logits_real_ema",
                                                                       "loss.lecam.logits_fake_ema"}
    model.train()
    x = expected["loss_input"]
    logits = []
    handle = model.loss.discriminator.register_forward_hook(lambda m, i, o: logits.append(o.detach()))
    out = model.autoencode(x)
    torch.testing.assert_close(out.reconstruction, expected["loss_reconstruction"], rtol=0, atol=1e-4)
    g_total, g_logs = model.loss.generator_loss(x, out.reconstruction, out.quantizer, 0, split="train")
    d_total, d_logs, lecam = model.loss.discriminator_loss(x, out.reconstruction.detach(), 0)
    handle.remove()
    logs = {**g_logs, **d_logs}
    for key, value in {**expected["loss_train_g_logs"], **expected["loss_train_d_logs"]}.items():
        if key != "train/disc_factor" or key in logs:
            assert float(logs[key]) == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert float(g_total.detach()) == pytest.approx(float(expected["loss_train_g_total"]), rel=1e-4)
    assert float(d_total) == pytest.approx(float(expected["loss_train_d_total"]), rel=1e-4)
    for ours, key in zip(logits, ("g_step_fake", "real", "fake")):
        torch.testing.assert_close(ours, expected[f"loss_train_disc_logits_{key}"], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack(lecam), torch.tensor(expected["loss_train_lecam_ema_after"]),
                               rtol=1e-5, atol=1e-9)
    ours_bn = model.loss.discriminator.state_dict()
    for key, value in expected["loss_train_disc_bn_buffers_after"].items():  # main.{i}.running_* / num_batches_tracked
        torch.testing.assert_close(ours_bn[key], value, rtol=0, atol=1e-6, msg=key)
    with torch.no_grad():
        per_frame = model.loss.perceptual_loss(frames(x), frames(out.reconstruction)).flatten()
    torch.testing.assert_close(per_frame, torch.as_tensor(expected["loss_lpips_per_frame"]).flatten(), rtol=0, atol=1e-6)

    # validation of the checkpoint as stored: EMA weights (generator and discriminator), eval mode, clamped reconstruction
    model.load_state_dict(state, strict=False)
    model.eval()
    model.use_ema_weights(True)
    with torch.no_grad():
        out = model.autoencode(x)
        rec = out.reconstruction.clamp(-1, 1)
        _, v_logs = model.loss.generator_loss(x, rec, out.quantizer, 0, split="val_ema")
        _, vd_logs, _ = model.loss.discriminator_loss(x, rec, 0, update_lecam=False, split="val_ema")
        real, fake = model.loss.discriminator(x), model.loss.discriminator(rec)
    logs = {**v_logs, **vd_logs}
    for key, value in expected["loss_val_ema_g_logs"].items():
        assert float(logs[key]) == pytest.approx(value, rel=1e-4), key
    for key in ("logits_real", "logits_fake", "non_saturated_d_loss"):
        assert float(logs[f"val_ema/{key}"]) == pytest.approx(expected["loss_val_ema_d_logs"][f"val_ema/{key}"], rel=1e-4)
    # the release moves its LeCam averages with validation batches first; ours leaves them alone. The penalty with the
    # release's averages equals its value:
    ema_real, ema_fake = (torch.tensor(v) for v in expected["loss_val_lecam_ema_after"])
    assert float(model.loss.lecam.penalty(real, fake, ema_real, ema_fake)) == pytest.approx(
        expected["loss_val_ema_d_logs"]["val_ema/lecam_loss"], rel=1e-4)


def test_3d_discriminator_matches_manifest(reference_dir):
    manifest = json.loads((reference_dir / "om2_video_128_L_state_dict_manifest.json").read_text())
    with torch.device("meta"):
        disc = NLayerDiscriminator3D(3, 64, 3)
        logits = disc(torch.empty(1, 3, 17, 128, 128))
    theirs = {k[len("loss.discriminator."):]: v for k, v in manifest["state_dict"].items()
              if k.startswith("loss.discriminator.")}
    assert {k: list(v.shape) for k, v in disc.state_dict().items()} == theirs
    assert sum(p.numel() for p in disc.parameters()) == 4_665_729
    assert logits.shape == (1, 1, 5, 16, 16)
    with pytest.raises(ValueError, match="clips"):
        NLayerDiscriminator3D(3, 8, 3)(torch.zeros(1, 3, 32, 32))


def _clips(n=4, frames=9, size=32):
    return torch.stack([DemoVideos(size=size, frames=frames, length=n)[i]["image"] for i in range(n)])


class Clips(torch.utils.data.Dataset):
    def __init__(self, clips):
        self.clips = clips

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        return {"image": self.clips[i], "class_label": 0, "relpath": str(i)}


def test_inflation_when_fit_starts_and_resume_needs_no_image_file(reference_dir, expected, tmp_path):
    """A fresh fit inflates the image checkpoint (weights and EMA shadows equal the release's inflation); a resumed
    fit restores the checkpoint and never opens the image file (here deleted); a missing file fails at fit start."""
    import shutil

    from taming.released.open_magvit2_video import inflate_image_state

    image_ckpt = tmp_path / "image.ckpt"
    shutil.copy(reference_dir / "om2_video_inflate_tiny_image.ckpt", image_ckpt)
    data = torch.utils.data.DataLoader(Clips(_clips(2)), batch_size=2)
    model = release_model(expected, image_pretrain_path=str(image_ckpt), lossconfig={"perceptual_weight": 0.0})
    t = trainer(tmp_path, max_steps=0)
    t.fit(model, data)
    inflated = inflate_image_state(torch.load(image_ckpt, weights_only=True)["state_dict"], model)
    own = model.state_dict()
    for key, value in inflated.items():
        assert torch.equal(own[key], value), key
    t = trainer(tmp_path, max_steps=1)
    t.fit(model, data)
    t.save_checkpoint(tmp_path / "step1.ckpt")
    image_ckpt.unlink()
    resumed = release_model(expected, image_pretrain_path=str(image_ckpt), lossconfig={"perceptual_weight": 0.0})
    t = trainer(tmp_path, max_steps=2)
    t.fit(resumed, data, ckpt_path=tmp_path / "step1.ckpt")
    assert t.global_step == 2
    fresh = release_model(expected, image_pretrain_path=str(image_ckpt), lossconfig={"perceptual_weight": 0.0})
    with pytest.raises(FileNotFoundError, match="image_pretrain_path"):
        trainer(tmp_path, max_steps=1).fit(fresh, data)


def test_activation_checkpointing_recomputes_blocks_and_keeps_gradients(expected):
    """Same loss and gradients with and without; with it, every ResBlock runs a second time in the backward."""
    from taming.released.open_magvit2_video import components
    from taming.tokenizer import Tokenizer

    torch.manual_seed(0)
    tokenizer = Tokenizer(**components(expected["ddconfig"]))
    x = _clips(1, frames=5)
    grads, calls = [], []
    blocks = [b for stage in tokenizer.encoder.down for b in stage.block] + list(tokenizer.decoder.mid_block)
    for b in blocks:
        b.register_forward_pre_hook(lambda *a: calls.append(1))  # (a recomputation may stop early)
    for on in (False, True):
        tokenizer.encoder.grad_checkpointing = tokenizer.decoder.grad_checkpointing = on
        tokenizer.zero_grad()
        calls.clear()
        z = tokenizer.encoder(x)
        tokenizer.decoder(z + (z.sign() - z).detach()).square().mean().backward()
        grads.append([p.grad.clone() for p in tokenizer.parameters() if p.grad is not None])
        assert len(calls) == len(blocks) * (2 if on else 1)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------ data


def test_ucf_pipeline_reproduces_release(expected):
    """The release's frame choice (train: consecutive from a start, validation: centre), cv2 INTER_LINEAR resize of
    the shorter side (bit-exact) and crop at the release's offsets give its clips exactly."""
    video = torch.as_tensor(expected["data_video_uint8"])
    for mode in ("train", "val"):
        idx = expected[f"data_{mode}_frame_indices"]
        h, w = expected[f"data_{mode}_resized_hw"]
        top, left = expected[f"data_{mode}_crop_y1_x1"]
        resized = resize_linear_uint8(video[idx], h, w)
        clip = clip_to_tensor(resized[:, top:top + 32, left:left + 32])
        assert torch.equal(clip, expected[f"data_{mode}_video"]), mode
    assert expected["data_val_frame_indices"][0] == len(video) // 2 - 8  # the centre window VideoClips uses


def _write_lossless(path, frames, fps=25):
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_video_clips_from_files(expected, tmp_path):
    """Centre clip and crop from a losslessly stored video equal the pipeline on its frames; random clips follow
    (seed, epoch, index); labels from class folders; short and corrupt videos are skipped and counted (strict: error)."""
    video = np.asarray(expected["data_video_uint8"])
    _write_lossless(tmp_path / "ucf" / "train" / "ApplyEyeMakeup" / "v_a.mkv", video)
    _write_lossless(tmp_path / "ucf" / "train" / "Basketball" / "v_short.mkv", video[:10])
    (tmp_path / "ucf" / "train" / "Basketball" / "v_bad.avi").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    data = VideoClips(str(tmp_path / "ucf"), split="train", size=32, clip="center", crop="center")
    assert data.classes == ["ApplyEyeMakeup", "Basketball"] and len(data) == 3
    item = data[0]
    centre = resize_linear_uint8(torch.as_tensor(video[4:21]), 32, 42)[:, :, 5:37]
    assert torch.equal(item["image"], clip_to_tensor(centre)) and item["class_label"] == 0
    batch = collate_skip_none([data[i] for i in range(3)])
    assert batch["image"].shape == (1, 3, 17, 32, 32) and batch["num_skipped"] == 2
    with pytest.raises(RuntimeError, match="fewer than"):
        VideoClips(str(tmp_path / "ucf"), split="train", size=32, strict=True)[2]
    random_clips = VideoClips(str(tmp_path / "ucf"), split="train", size=32, sequence_length=9, frame_stride=2, seed=3)
    a, b, c = random_clips[(0, 0)], random_clips[(0, 0)], random_clips[(0, 1)]
    assert torch.equal(a["image"], b["image"]) and a["image"].shape == (3, 9, 32, 32)
    assert not torch.equal(a["image"], c["image"])  # another epoch, another window/crop
    with pytest.raises(FileNotFoundError, match="UCF-101"):
        VideoClips(str(tmp_path / "ucf"), split="test")


def test_demo_videos_have_structure_and_motion(tmp_path):
    """Camera motion over photographs: frames change (mean |frame difference| well above codec noise), neighbouring
    pixels correlate like a photograph (noise would not), and the .avi files decode back to the same clips."""
    data = DemoVideos(size=32, frames=17, length=8)
    correlations = []
    for i in range(8):
        clip, _, motion = data.clip(i)
        c = clip.astype(np.float64)
        motion_level = np.abs(np.diff(c, axis=0)).mean()
        assert motion_level > 2.0, (i, motion, motion_level)
        correlations.append(np.corrcoef(c[:, :, 1:].ravel(), c[:, :, :-1].ravel())[0, 1])
        assert correlations[-1] > 0.3, (i, motion, correlations[-1])  # gravel is the least smooth; noise gives ~0
    assert np.mean(correlations) > 0.7
    paths = write_demo_videos(tmp_path / "videos", length=3, size=32, frames=17)
    clips = VideoClips(str(tmp_path / "videos"), split="train", size=32, clip="center", crop="center")
    assert len(clips) == 3 and sorted(clips.classes) == clips.classes
    decoded = clips[0]["image"]
    original = DemoVideos(size=32, frames=17, length=3)[0]["image"]
    assert (decoded - original).abs().mean() < 0.15  # MPEG-4, 4:2:0 chroma: lossy at 32 px
    assert np.corrcoef(decoded.flatten().numpy(), original.flatten().numpy())[0, 1] > 0.95
    assert len(paths) == 3


def test_demo_video_config_learns_and_reloads(tmp_path):
    """configs/video/demo_video.yaml's model raises the 5-frame clips' PSNR by >= 3 dB in 40 steps, and its checkpoint
    reloads as a video tokenizer without a config."""
    import lightning as L
    import yaml

    from conftest import REPO
    from taming import load_tokenizer
    from taming.metrics.image import psnr, to_uint8
    from taming.modules.component import instantiate

    config = yaml.safe_load((REPO / "configs" / "video" / "demo_video.yaml").read_text())["model"]
    config["init_args"].update(ema_decay=0.5)
    clips = _clips(4, frames=5)

    def clip_psnr(model):
        model.eval()
        with torch.no_grad():
            value = psnr(to_uint8(frames(clips)), to_uint8(frames(model(clips)))).mean().item()
        model.train()
        return value

    L.seed_everything(0)
    model = instantiate(config)
    before = clip_psnr(model)
    t = trainer(tmp_path, max_steps=40)
    t.fit(model, torch.utils.data.DataLoader(Clips(clips), batch_size=4))
    after = clip_psnr(model)
    assert after >= before + 3.0, (before, after)
    t.save_checkpoint(tmp_path / "video.ckpt")
    tokenizer = load_tokenizer(tmp_path / "video.ckpt")
    assert tokenizer.token_layout == "volume" and tokenizer.token_shape(9, 32, 32) == (5, 16, 16)


def test_exact_resume_of_a_video_run(expected, tmp_path):
    """4 steps straight == 2 steps, checkpoint, resume for 2: weights, EMA (incl. the 3-D discriminator's), BatchNorm
    statistics, LeCam averages, Adam state; clips from DemoVideos through the resumable sampler."""
    import lightning as L

    from taming.callbacks import PeriodicCheckpoint
    from taming.data import ImageDataModule

    def data():
        return ImageDataModule(train=DemoVideos(size=32, frames=9, length=8), batch_size=2, num_workers=0)

    kw = dict(lossconfig={"perceptual_weight": 0.0, "disc_ndf": 8}, learning_rate=1e-3, ema_decay=0.9)
    L.seed_everything(0)
    straight = release_model(expected, **kw)
    saver = PeriodicCheckpoint(tmp_path, every_n_train_steps=0, every_n_epochs=0, keep_every_n_train_steps=2)
    trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[saver]).fit(straight, data())
    L.seed_everything(1)  # everything must come from the checkpoint
    resumed = release_model(expected, **kw)
    t = trainer(tmp_path, max_steps=4, limit_val_batches=0)
    t.fit(resumed, data(), ckpt_path=tmp_path / "step00000002.ckpt")
    assert t.global_step == 4
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert any(k.startswith("model_ema.lossdiscriminator") for k in a) and "loss.lecam.logits_real_ema" in a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    for p_a, p_b in zip(straight.optimizers().optimizer.state.values(), resumed.optimizers().optimizer.state.values()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(p_a[key], p_b[key], rtol=0, atol=0)

"""The causal 3-D video tokenizer: the release's tiny checkpoint (raw and EMA, clips and single frames), the full-size
manifest, the causal convolution, the temporal up/downsampling arithmetic and the 3-D depth-to-space order."""
import json

import pytest
import torch

from taming import load_tokenizer
from taming.modules.video import CausalConv3d, VideoDecoder, VideoEncoder, depth_to_space_3d
from taming.released import open_magvit2_video
from taming.tokenizer import Tokenizer

VIDEO_MODEL = "src.Open_MAGVIT2.models.video_lfqgan.VQModel"


@pytest.fixture(scope="module")
def expected(reference_dir):
    return torch.load(reference_dir / "om2_video_tiny_expected.pt", weights_only=False)


@pytest.mark.parametrize("ema", [False, True])
def test_tiny_video_tokenizer_reproduces_release(reference_dir, expected, ema):
    config = {"model": {"class_path": VIDEO_MODEL, "init_args": expected["config"]}}
    tokenizer = load_tokenizer(reference_dir / "om2_video_tiny.ckpt", config=config, ema=ema)
    assert tokenizer.checkpoint_info["ema"] is ema and tokenizer.token_layout == "volume"
    p = "ema_" if ema else ""
    for clip, key in ((expected["input"], p), (expected["single_frame_input"], f"single_frame_{p}")):
        with torch.no_grad():
            latent = tokenizer.encoder(clip)
            quant, indices = tokenizer.encode(clip)
            reconstruction, from_indices = tokenizer.decode(quant), tokenizer.decode_indices(indices)
        torch.testing.assert_close(latent, expected[f"{key}encoder_out"], rtol=0, atol=2e-4)
        assert indices.shape == (2, *tokenizer.token_shape(*clip.shape[2:]))
        assert torch.equal(indices.flatten(), expected[f"{key}indices"].flatten())  # LSB-first, (b, t, h, w)
        torch.testing.assert_close(reconstruction, expected[f"{key}reconstruction"], rtol=0, atol=1e-4)
        torch.testing.assert_close(from_indices, reconstruction, rtol=0, atol=0)
    # the init_args alone are recognised too (image_pretrain_path is the video model's own key)
    assert isinstance(load_tokenizer(reference_dir / "om2_video_tiny.ckpt", config=expected["config"]).encoder,
                      VideoEncoder)


def test_full_size_matches_manifest(reference_dir):
    manifest = json.loads((reference_dir / "om2_video_128_L_state_dict_manifest.json").read_text())
    with torch.device("meta"):
        tokenizer = Tokenizer(**open_magvit2_video.components(manifest["ddconfig"]))
        out = tokenizer.encoder(torch.empty(1, 3, 17, 128, 128))
        recon = tokenizer.decoder(out)
    ours = {k: list(v.shape) for k, v in tokenizer.state_dict().items()}
    theirs = {k: v for k, v in manifest["state_dict"].items() if k.startswith(("encoder.", "decoder."))}
    assert ours == theirs
    for part in ("encoder", "decoder"):
        assert sum(p.numel() for p in getattr(tokenizer, part).parameters()) == manifest["parameter_count"][part]
    assert list(out.shape) == manifest["latent_shape_for_1x3x17x128x128"]
    assert tokenizer.token_shape(17, 128, 128) == tuple(out.shape[2:])
    assert list(recon.shape) == manifest["decoder_output_shape"]


def test_causal_convolution_sees_no_future_frame():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, 3, stride=(2, 2, 2))
    x = torch.randn(1, 2, 9, 8, 8)
    y = conv(x)
    assert y.shape == (1, 3, 5, 4, 4)  # T -> floor((T - 1) / 2) + 1
    changed = x.clone()
    changed[:, :, 5:] = torch.randn_like(changed[:, :, 5:])  # frames 5.. only
    z = conv(changed)
    torch.testing.assert_close(z[:, :, :3], y[:, :, :3], rtol=0, atol=0)  # output 2 reads input frames 2..4
    assert not torch.allclose(z[:, :, 3:], y[:, :, 3:])


def test_temporal_lengths_and_depth_to_space_order():
    """One temporal level: 1, 2, 3, 5, 9, 16, 17 frames come back as 1, 1, 3, 5, 9, 15, 17 (the release's rule); the
    3-D depth-to-space reads channel ((i_t * 2 + i_h) * 2 + i_w) * C + c."""
    torch.manual_seed(0)
    args = dict(ch=32, ch_mult=[2, 1], num_res_blocks=1, z_channels=4)
    encoder, decoder = VideoEncoder(**args), VideoDecoder(**args)
    with torch.no_grad():
        for frames, back in ((1, 1), (2, 1), (3, 3), (5, 5), (9, 9), (16, 15), (17, 17)):
            latent = encoder(torch.randn(1, 3, frames, 8, 8))
            assert latent.shape[2] == encoder.token_shape(frames, 8, 8)[0] == (frames - 1) // 2 + 1
            assert decoder(latent).shape[2] == back
    c, t, h, w = 3, 2, 2, 2
    x = torch.arange(2 * 2 * 2 * c * t * h * w, dtype=torch.float32).view(1, 8 * c, t, h, w)
    y = depth_to_space_3d(x, 2)
    assert y.shape == (1, c, 3, 4, 4)  # 2 frames -> 4 sub-frames, the second dropped
    for (out_t, src_t, i_t) in ((0, 0, 0), (1, 1, 0), (2, 1, 1)):  # kept sub-frames: (0, 0), (1, 0), (1, 1)
        for i_h in range(2):
            for i_w in range(2):
                k = ((i_t * 2 + i_h) * 2 + i_w) * c + 1
                assert y[0, 1, out_t, 2 * 1 + i_h, 2 * 0 + i_w] == x[0, k, src_t, 1, 0]


def test_bad_inputs_name_the_expected_shape(reference_dir, expected):
    tokenizer = load_tokenizer(reference_dir / "om2_video_tiny.ckpt", config=expected["config"])
    with pytest.raises(ValueError, match="one-frame clip"):
        tokenizer.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible by the downsampling factor 4"):
        tokenizer.encode(torch.zeros(1, 3, 5, 30, 32))
    with pytest.raises(ValueError, match="token_shape takes"):
        tokenizer.token_shape(32, 32)


def test_project_checkpoint_round_trip(tmp_path, expected):
    """A video tokenizer saved in this project's layout reloads without a config (components are registered)."""
    torch.manual_seed(0)
    tokenizer = Tokenizer(**open_magvit2_video.components(expected["ddconfig"]))
    torch.save({"state_dict": tokenizer.state_dict(), "tokenizer": tokenizer.config}, tmp_path / "video.ckpt")
    loaded = load_tokenizer(tmp_path / "video.ckpt")
    clip = expected["input"][:1]
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip), tokenizer.eval()(clip), rtol=0, atol=0)


def test_inflation_from_an_image_checkpoint_reproduces_release(reference_dir, expected):
    """Every inflated tensor and EMA shadow equals the release's (checksums, representative tensors exactly), the
    inflated model's latents, indices and reconstructions too; a static clip gives the image model's latent."""
    from taming.tokenizer import _weights

    image_ckpt = reference_dir / "om2_video_inflate_tiny_image.ckpt"
    image_state = torch.load(image_ckpt, weights_only=True)["state_dict"]
    video = Tokenizer(**open_magvit2_video.components(expected["ddconfig"]))
    inflated = open_magvit2_video.inflate_image_state(image_state, video)
    assert set(inflated) == set(expected["inflate_checksums"])
    for key, checksum in expected["inflate_checksums"].items():
        t = inflated[key].double()
        torch.testing.assert_close(torch.stack([t.sum(), t.square().sum(), t.abs().max()]), checksum.double(),
                                   rtol=1e-12, atol=1e-12, msg=key)
    for key, tensor in expected["inflate_tensors"].items():
        assert torch.equal(inflated[key], tensor), key
    for ema, p in ((False, ""), (True, "ema_")):
        video.load_state_dict(_weights(video, inflated, "", ema))
        video.eval()
        with torch.no_grad():
            latent = video.encoder(expected["input"])
            quant, indices = video.encode(expected["input"])
            reconstruction = video.decode(quant)
        torch.testing.assert_close(latent, expected[f"inflate_{p}encoder_out"], rtol=0, atol=2e-4)
        assert torch.equal(indices.flatten(), expected[f"inflate_{p}indices"].flatten())
        torch.testing.assert_close(reconstruction, expected[f"inflate_{p}reconstruction"], rtol=0, atol=1e-4)
    image = load_tokenizer(image_ckpt, config={"ddconfig": expected["inflate_image_config"]["ddconfig"]}, ema=True)
    frame = expected["input"][:, :, 0]
    with torch.no_grad():
        static = video.encoder(frame[:, :, None].expand(-1, -1, 17, -1, -1).contiguous())
        torch.testing.assert_close(static[:, :, 0], image.encoder(frame), rtol=0, atol=1e-4)
    wrong = Tokenizer(**open_magvit2_video.components(dict(expected["ddconfig"], ch_mult=[1, 2, 2])))
    with pytest.raises(ValueError, match="lacks|cannot inflate"):
        open_magvit2_video.inflate_image_state(image_state, wrong)


# ------------------------------------------------------------------------------------------------ rFVD pieces


@pytest.fixture(scope="module")
def fvd_expected(reference_dir):
    return torch.load(reference_dir / "om2_video_fvd_expected.pt", weights_only=False)


def test_i3d_reproduces_the_release_logits(fvd_expected, expected, tmp_path):
    """Random I3D weights by the fixture's rule (checksums of all 344 entries), the evaluation's uint8 truncation and
    224 px preprocessing, and the 400 logits averaged over time, from a weight file in the hub cache layout."""
    from helpers import torch_hub_dir
    from taming.metrics.i3d import I3D_FILE, clips_to_uint8, load_i3d, preprocess, random_i3d_state

    state = random_i3d_state(fvd_expected["i3d_seed"])
    assert list(state) == list(fvd_expected["i3d_checksums"])  # the release's key order (logits first)
    for key, checksum in fvd_expected["i3d_checksums"].items():
        t = state[key].double()
        torch.testing.assert_close(torch.stack([t.sum(), t.square().sum(), t.abs().max()]), checksum.double(),
                                   rtol=1e-9, atol=1e-9, msg=key)
    real = clips_to_uint8(expected["input"])
    assert torch.equal(real, fvd_expected["eval_real_uint8"])  # truncation, as released
    rounded = clips_to_uint8(expected["input"], truncate=False)
    assert int((rounded != real).sum()) == fvd_expected["eval_real_uint8_num_changed"]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / I3D_FILE)
    with torch_hub_dir(tmp_path / "hub"):
        i3d = load_i3d()
    with torch.no_grad():
        for name in ("real", "rec"):
            logits = i3d(preprocess(fvd_expected[f"eval_{name}_uint8"]))
            torch.testing.assert_close(logits, fvd_expected[f"i3d_logits_{name}"], rtol=0, atol=1e-3)
    with torch_hub_dir(tmp_path / "empty"), pytest.raises(FileNotFoundError, match="i3d_pretrained_400.pt.*Kinetics"):
        load_i3d()


def test_frechet_distance_matches_the_fvd_cases(fvd_expected):
    """The project's one Fréchet distance (float64) on the release's FVD cases: equal to its float64 value."""
    import numpy as np

    from taming.metrics.fid import frechet_distance

    for case in fvd_expected["fd_cases"]:
        x1, x2 = case["x1"].double().numpy(), case["x2"].double().numpy()
        fd = frechet_distance(x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0), np.cov(x2, rowvar=False))
        assert fd == pytest.approx(float(case["fd_float64"]), rel=1e-6, abs=1e-9)

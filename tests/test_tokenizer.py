"""load_tokenizer against the reference checkpoints, EMA selection, strict loading and input errors."""
import pytest
import torch
import yaml

from taming import build_tokenizer, load_tokenizer

TINY = dict(ch=32, ch_mult=[1, 2, 2, 4], num_res_blocks=1, z_channels=18)


def check_against_expected(tokenizer, expected, prefix=""):
    x = expected["input"]
    with torch.no_grad():
        latent = tokenizer.encoder(x)
        quant, indices = tokenizer.encode(x)
        recon = tokenizer.decode(quant)
    torch.testing.assert_close(latent, expected[prefix + "encoder_out"], atol=1e-4, rtol=0)
    # Indices may differ only where the reference latent is within 1e-4 of zero (sign decided by rounding).
    ref_latent = expected[prefix + "encoder_out"]
    bits_differ = (latent > 0) != (ref_latent > 0)
    assert (ref_latent[bits_differ].abs() < 1e-4).all()
    differ = indices != expected[prefix + "indices"]
    assert torch.equal(differ, bits_differ.any(dim=1))
    if not differ.any():
        torch.testing.assert_close(recon, expected[prefix + "reconstruction"], atol=1e-4, rtol=0)
    else:  # decode the reference's own codes to compare the decoder alone
        codes = tokenizer.quantize.indices_to_codes(expected[prefix + "indices"])
        with torch.no_grad():
            torch.testing.assert_close(tokenizer.decode(codes), expected[prefix + "reconstruction"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("ema", [False, True])
def test_v1_checkpoint_reproduces_reference(reference_dir, ema):
    expected = torch.load(reference_dir / "tiny_128style_expected.pt", weights_only=True)
    tokenizer = load_tokenizer(reference_dir / "tiny_128style.ckpt", config=expected["ddconfig"], ema=ema)
    assert tokenizer.quantize.bit_order == "msb" and not tokenizer.training
    check_against_expected(tokenizer, expected, "ema_" if ema else "")


def test_v1_default_uses_ema(reference_dir):
    expected = torch.load(reference_dir / "tiny_128style_expected.pt", weights_only=True)
    tokenizer = load_tokenizer(reference_dir / "tiny_128style.ckpt", config=expected["ddconfig"])
    assert tokenizer.checkpoint_info["ema"] is True
    check_against_expected(tokenizer, expected, "ema_")


def test_v2_adaptive_gn_checkpoint_reproduces_reference(reference_dir):
    expected = torch.load(reference_dir / "tiny_v2_agn_expected.pt", weights_only=True)
    tokenizer = load_tokenizer(reference_dir / "tiny_v2_agn.ckpt", config=expected["ddconfig"])
    assert tokenizer.decoder.adaptive_gn and tokenizer.quantize.bit_order == "lsb"
    check_against_expected(tokenizer, expected)
    with pytest.raises(ValueError, match="no model_ema"):
        load_tokenizer(reference_dir / "tiny_v2_agn.ckpt", config=expected["ddconfig"], ema=True)


def test_decode_indices_inverts_encode(reference_dir):
    """The codes rebuilt from the indices by the bit-order rule, written out here (lsb: channel j is bit j; msb:
    channel j is bit d-1-j), are exactly the quantized latent, and decoding the indices decodes that latent."""
    expected = torch.load(reference_dir / "tiny_v2_agn_expected.pt", weights_only=True)
    for bit_order in ("lsb", "msb"):
        tokenizer = load_tokenizer(reference_dir / "tiny_v2_agn.ckpt", config=expected["ddconfig"], bit_order=bit_order)
        with torch.no_grad():
            quant, indices = tokenizer.encode(expected["input"])
            d = quant.shape[1]
            shifts = torch.arange(d) if bit_order == "lsb" else d - 1 - torch.arange(d)
            codes = ((indices[:, None] >> shifts[None, :, None, None]) & 1) * 2 - 1
            assert torch.equal(codes.to(quant.dtype), quant)
            torch.testing.assert_close(tokenizer.decode_indices(indices), tokenizer.decode(quant))


def test_released_style_yaml_config(reference_dir, tmp_path):
    expected = torch.load(reference_dir / "tiny_128style_expected.pt", weights_only=True)
    released = {"model": {"class_path": "taming.models.lfqgan.VQModel", "init_args": {
        "ddconfig": expected["ddconfig"], "n_embed": 2**18, "embed_dim": 18, "use_ema": True,
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator", "params": {}}}}}
    path = tmp_path / "imagenet_lfqgan_tiny.yaml"
    path.write_text(yaml.safe_dump(released))
    check_against_expected(load_tokenizer(reference_dir / "tiny_128style.ckpt", config=path), expected, "ema_")


def test_own_checkpoint_needs_no_config(tmp_path, sample_images):
    model = build_tokenizer(dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=8), bit_order="lsb")
    state = {k: v + 0.01 for k, v in model.state_dict().items()}
    ema = {"model_ema." + k.replace(".", ""): v for k, v in model.state_dict().items()}
    ckpt = {"state_dict": {**state, **ema, "model_ema.decay": torch.tensor(0.999), "loss.discriminator.main.0.weight": torch.zeros(1)},
            "hyper_parameters": {**model.config, "n_embed": 256}}
    torch.save(ckpt, tmp_path / "own.ckpt")
    loaded = load_tokenizer(tmp_path / "own.ckpt")
    assert loaded.quantize.bit_order == "lsb"
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample_images), model.eval()(sample_images))  # EMA = the original weights
        raw = load_tokenizer(tmp_path / "own.ckpt", ema=False)
        torch.testing.assert_close(raw.encoder.conv_in.weight, model.encoder.conv_in.weight + 0.01)


def test_released_checkpoint_without_config_asks_for_one(reference_dir):
    with pytest.raises(ValueError, match="pass config="):
        load_tokenizer(reference_dir / "tiny_128style.ckpt")


def test_architecture_mismatch_lists_keys(reference_dir):
    expected = torch.load(reference_dir / "tiny_v2_agn_expected.pt", weights_only=True)
    with pytest.raises(RuntimeError, match=r"unexpected: decoder\.adaptive\.0\.gamma\.weight.*\(16 in all\)"):
        load_tokenizer(reference_dir / "tiny_v2_agn.ckpt", config={**expected["ddconfig"], "adaptive_gn": False})
    with pytest.raises(RuntimeError, match=r"wrong shape: encoder\.conv_in\.weight \(32, 3, 3, 3\) vs \(64, 3, 3, 3\)"):
        load_tokenizer(reference_dir / "tiny_v2_agn.ckpt", config={**expected["ddconfig"], "ch": 64})
    with pytest.raises(RuntimeError, match=r"missing: encoder\.down\.0\.block\.1\.norm1\.weight"):
        load_tokenizer(reference_dir / "tiny_v2_agn.ckpt", config={**expected["ddconfig"], "num_res_blocks": 2})


def test_missing_and_unreadable_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.ckpt"):
        load_tokenizer(tmp_path / "nothere.ckpt", config=TINY)
    (tmp_path / "broken.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="could not read checkpoint .*broken.ckpt"):
        load_tokenizer(tmp_path / "broken.ckpt", config=TINY)
    torch.save({"state_dict": {}}, tmp_path / "whole.ckpt")
    (tmp_path / "truncated.ckpt").write_bytes((tmp_path / "whole.ckpt").read_bytes()[:100])
    with pytest.raises(RuntimeError, match="could not read checkpoint .*truncated.ckpt"):
        load_tokenizer(tmp_path / "truncated.ckpt", config=TINY)


class Opaque:  # a class the safe unpickler refuses
    pass


def test_unsafe_pickle_needs_explicit_opt_in(tmp_path):
    model = build_tokenizer(dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=8))
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {**model.config, "extra": Opaque()}},
               tmp_path / "pickled.ckpt")
    with pytest.raises(RuntimeError, match="allow_unsafe_pickle=True"):
        load_tokenizer(tmp_path / "pickled.ckpt")
    assert load_tokenizer(tmp_path / "pickled.ckpt", allow_unsafe_pickle=True).quantize.dim == 8


def test_input_errors_name_the_problem():
    model = build_tokenizer(dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=8)).eval()
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        model.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 4"):
        model.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="add a batch dimension"):
        model.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="float image batch"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown ddconfig keys"):
        build_tokenizer(dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=8, attn_resolutions=[16]))
    with pytest.raises(ValueError, match="embed_dim=10 must equal z_channels=8"):
        build_tokenizer(dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=8), embed_dim=10)


def test_malformed_yaml_config_names_the_file(reference_dir, tmp_path):
    (tmp_path / "bad.yaml").write_text("model: {init_args: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml is not valid YAML"):
        load_tokenizer(reference_dir / "tiny_128style.ckpt", config=tmp_path / "bad.yaml")

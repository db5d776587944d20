"""GigaTok hybrid tokenizer parts (taming.modules.hybrid): reference fixtures stage by stage, released key names
and parameter counts, config / checkpoint translation and input errors."""
import json

import pytest
import torch
import yaml

from taming.checkpoints import load_state_dict_strict
from taming.modules.component import component_config, instantiate
from taming.modules.hybrid import HybridDecoder, HybridEncoder, init_weights, pyramid_tokens
from taming.released.gigatok import (OPTIONAL_PREFIXES, gigatok_config, gigatok_to_ours, gigatok_weights,
                                     ours_to_gigatok)

from conftest import build_encoder_decoder
from helpers import fixture_config

FEATURE_ATOL, IMAGE_ATOL = 1e-4, 1e-3  # the reference README's suggestions
MANIFESTS = {"SS256": "136M", "SB256": "232M", "BL256": "622M", "XLXXL256": "2.9B", "BL256_2d": "491M"}
CODEBOOK_PARAMS = 16384 * 8  # the quantizer, built elsewhere


def run_fixture(reference_dir, name: str):
    """Expected values and ours (same keys), captured with forward hooks; the decoder runs on the stored
    `quantized` so that nothing depends on the quantizer."""
    expected = torch.load(reference_dir / f"{name}_expected.pt", weights_only=True)
    state_dict, _ = gigatok_weights(torch.load(reference_dir / f"{name}.pt", weights_only=True))
    encoder, decoder = build_encoder_decoder(gigatok_config(fixture_config(expected)), gigatok_to_ours(state_dict))
    one_d = encoder.layout == "1d"
    ours, hooks = {}, []

    def capture(module, key, take=lambda inputs, output: output):
        hooks.append(module.register_forward_hook(lambda m, i, o: ours.__setitem__(key, take(i, o))))

    enc, dec = encoder.transformer, decoder.transformer
    if one_d:
        capture(enc.encoder_embed, "encoder_1d_memory")
        capture(enc.global_proj, "encoder_1d_pyramid_tokens", lambda i, o: i[0])
        capture(enc.global_proj, "encoder_1d_query_init")
        capture(dec.decoder_embed, "decoder_memory")
    else:
        capture(enc.encoder_embed, "encoder_2d_embed")
        capture(dec.decoder_embed, "decoder_2d_embed")
    for i, layer in enumerate(enc.layers):
        capture(layer, f"encoder_{encoder.layout}_layer{i}_out")
    for i, layer in enumerate(dec.layers):
        capture(layer, f"decoder_layer{i}_out")
    capture(enc, f"encoder_{encoder.layout}_out")
    capture(decoder.post_quant_conv, "post_quant_conv_out")
    quantized = expected["quantized"].flatten(2) if one_d else expected["quantized"]  # B x 8 x 1 x N -> B x 8 x N
    with torch.no_grad():
        ours["quantizer_input"], features = encoder(expected["input"], return_features=True)
        ours["cnn_encoder_out"] = features["cnn"]
        ours["reconstruction"], features = decoder(quantized, return_features=True)
        ours["rec_spatial"], ours["distill_proj_out"] = features["rec_spatial"], features["semantic"]
        ours["direct"] = decoder.decode_cnn_features(expected["rec_spatial"][:1])
    for hook in hooks:
        hook.remove()
    expected = {**expected, "direct": expected["reconstruction"][:1]}  # reconstruction = CNN decoder(rec_spatial)
    return expected, ours


@pytest.fixture(scope="module")
def fixture_1d(reference_dir):
    return run_fixture(reference_dir, "tiny_gigatok_1d")


@pytest.fixture(scope="module")
def fixture_2d(reference_dir):
    return run_fixture(reference_dir, "tiny_gigatok_2d")


def compare(expected, ours, key):
    atol = IMAGE_ATOL if key in ("reconstruction", "direct") else FEATURE_ATOL
    torch.testing.assert_close(ours[key].reshape(expected[key].shape), expected[key], atol=atol, rtol=0)


FEATURES = ["cnn_encoder_out", "encoder_{}_out", "quantizer_input", "post_quant_conv_out",
            "decoder_layer0_out", "decoder_layer1_out", "rec_spatial", "distill_proj_out", "reconstruction", "direct"]


@pytest.mark.parametrize("key", FEATURES[:1] + ["encoder_1d_memory", "encoder_1d_pyramid_tokens",
                                                "encoder_1d_query_init", "encoder_1d_layer0_out",
                                                "encoder_1d_layer1_out", "decoder_memory"] + FEATURES[1:])
def test_1d_fixture(fixture_1d, key):
    compare(*fixture_1d, key.format("1d"))


@pytest.mark.parametrize("key", FEATURES[:1] + ["encoder_2d_embed", "encoder_2d_layer0_out", "encoder_2d_layer1_out",
                                                "decoder_2d_embed"] + FEATURES[1:])
def test_2d_fixture(fixture_2d, key):
    compare(*fixture_2d, key.format("2d"))


def test_1d_latent_is_a_token_sequence(fixture_1d):
    _, ours = fixture_1d
    assert ours["quantizer_input"].shape == (2, 8, 256) and ours["reconstruction"].shape == (2, 3, 256, 256)


def test_pyramid_order():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)  # value = 4 * row + column
    tokens = pyramid_tokens(x, 8)[0, :, 0]  # groups: mean, mean, 1 x 2 (columns split first), 2 x 2
    assert tokens.tolist() == [7.5, 7.5, 6.5, 8.5, 2.5, 4.5, 10.5, 12.5]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_full_size_keys_shapes_and_counts_match_manifest(name, reference_dir):
    manifest = json.loads((reference_dir / f"gigatok_VQ_{name}_state_dict_manifest.json").read_text())
    config = gigatok_config({"model": {"model_cls": manifest["model_cls"], "init_args": manifest["init_args"]}})
    with torch.device("meta"):
        encoder, decoder = build_encoder_decoder(config)
    ours = {**{"encoder." + k: v for k, v in encoder.state_dict().items()},
            **{"decoder." + k: v for k, v in decoder.state_dict().items()}}
    released = {k: list(v.shape) for k, v in ours_to_gigatok(ours, encoder.layout).items()}
    assert released == {k: v for k, v in manifest["state_dict"].items() if not k.startswith("quantize.")}
    counts = manifest["numel_by_prefix"]
    transformer = [k for k in counts if k.startswith("s")]
    assert sum(p.numel() for p in encoder.cnn.parameters()) == counts["encoder."]
    assert sum(p.numel() for p in encoder.transformer.parameters()) == counts[transformer[0]]
    assert sum(p.numel() for p in decoder.transformer.parameters()) == counts[transformer[1]]
    assert sum(p.numel() for p in decoder.cnn.parameters()) == counts["decoder."]
    assert sum(p.numel() for p in decoder.transformer.distill_mlp.parameters()) == manifest["num_params_distill_mlp"]
    total = sum(p.numel() for m in (encoder, decoder) for p in m.parameters()) + CODEBOOK_PARAMS
    assert total == manifest["num_params_total"]
    published = f"{total / 1e9:.1f}B" if total > 1e9 else f"{round(total / 1e6)}M"
    assert published == MANIFESTS[name]


def test_ss256_2d_default_layer_type(reference_dir):
    # VQ_SS256_2d.yaml leaves transformer_layer_type at the reference default, the DETR layer. Its count follows
    # from the 1-D S-S manifest (same DETR layers): no 1-D token positions (encoder and decoder) and no global_proj.
    manifest = json.loads((reference_dir / "gigatok_VQ_SS256_state_dict_manifest.json").read_text())
    init_args = {k: v for k, v in manifest["init_args"].items()
                 if k not in ("multi_level_query_init", "last_level_2d_query_init", "multi_level_2d_query_init")}
    config = gigatok_config({"model": {"model_cls": "VQVitModel2DPlus", "init_args": init_args}})
    assert config["encoder"]["init_args"]["layer_type"] == "detr"
    with torch.device("meta"):
        encoder, decoder = build_encoder_decoder(config)
    total = sum(p.numel() for m in (encoder, decoder) for p in m.parameters()) + CODEBOOK_PARAMS
    width = 512
    assert total == manifest["num_params_total"] - 2 * 256 * width - (width * width + width)
    assert "layers.5.multihead_attn.in_proj_weight" in encoder.transformer.state_dict()


def test_config_translation(tmp_path):
    released = {"model": {"model_cls": "VQVitModelPlus", "init_args": {
        "codebook_size": 16384, "model_size": None, "encoder_size": "base", "decoder_size": "large",
        "multi_level_query_init": True, "adaptive_gn": True, "d2s_up": True, "rot": True, "use_attn": False,
        "distill_depth": 3, "entropy_loss_ratio": 0.005, "fea_rec_loss_type": "mse", "use_qk_norm": False},
        "causal_settings": {"causal_type": None, "dynamic_length_train": False, "dynamic_level_range": None,
                            "min_level": 0}},
        "trainer": {"distill_loss": True, "distill_model": "dinov2-vit-l"}, "loss": {"disc_start": 20000}}
    path = tmp_path / "VQ_BL256.yaml"
    path.write_text(yaml.safe_dump(released))
    config = gigatok_config(path)
    encoder, decoder = config["encoder"]["init_args"], config["decoder"]["init_args"]
    assert config["encoder"]["class_path"] == "taming.modules.hybrid.HybridEncoder"
    assert (encoder["width"], encoder["num_layers"], encoder["num_heads"]) == (768, 12, 12)
    assert (decoder["width"], decoder["num_layers"], decoder["num_heads"]) == (1024, 24, 16)
    assert encoder["ch"] == 128 and encoder["num_tokens"] == 256 and encoder["num_res_blocks"] == 2
    assert decoder["num_res_blocks"] == 3 and decoder["distill_depth"] == 3 and decoder["distill_dim"] == 1024
    assert config["quantizer"]["init_args"] == dict(codebook_size=16384, dim=8, beta=0.25, entropy_loss_weight=0.005,
                                                    entropy_temperature=0.01, l2_norm=True, rotation_trick=True,
                                                    usage_window=65536)
    small = gigatok_config({"model": {"model_cls": "VQVitModelPlus", "init_args": {"multi_level_query_init": True}}})
    assert small["decoder"]["init_args"]["width"] == 512 and small["decoder"]["init_args"]["distill_dim"] == 768


@pytest.mark.parametrize("init_args, match", [
    ({"use_lfq": True}, "use_lfq=True is a deprecated GigaTok option"),
    ({"stochastic": True}, "stochastic=True is a deprecated"),
    ({"with_prior_model": True}, "with_prior_model=True is a deprecated"),
    ({"rope_1d": True}, "rope_1d=True is a deprecated"),
    ({"multi_level_query_init": False}, "multi_level_query_init: False"),
    ({"codebook_sizes": 8}, r"unknown VQVitModelPlus options \['codebook_sizes'\]"),
    ({"model_size": "base", "encoder_size": "base"}, "either model_size or encoder_size"),
    ({"model_size": None, "encoder_size": "huge", "decoder_size": "base"}, "encoder_size='huge'"),
])
def test_config_rejects_unsupported_options(init_args, match):
    with pytest.raises(ValueError, match=match):
        gigatok_config({"model": {"model_cls": "VQVitModelPlus",
                                  "init_args": {"multi_level_query_init": True, **init_args}}})


def test_config_rejects_unsupported_models():
    with pytest.raises(ValueError, match="causal_settings.causal_type='per-token'"):
        gigatok_config({"model": {"model_cls": "VQVitModelPlus", "init_args": {"multi_level_query_init": True},
                                  "causal_settings": {"causal_type": "per-token"}}})
    with pytest.raises(ValueError, match="transformer_layer_type 'QformerLayerVar'"):
        gigatok_config({"model": {"model_cls": "VQVitModel2DPlus",
                                  "init_args": {"transformer_layer_type": "QformerLayerVar"}}})
    with pytest.raises(ValueError, match="'VAEVitModel' is not a released GigaTok VQ tokenizer"):
        gigatok_config({"model": {"model_cls": "VAEVitModel", "init_args": {}}})
    with pytest.raises(ValueError, match=r"unknown VQVitModel2DPlus options \['multi_level_query_init'\]"):
        gigatok_config({"model": {"model_cls": "VQVitModel2DPlus", "init_args": {"multi_level_query_init": True}}})


def test_key_translation_and_checkpoint_selection(reference_dir):
    released = torch.load(reference_dir / "tiny_gigatok_1d.pt", weights_only=True)["model"]
    ours = gigatok_to_ours(released)
    assert ours["encoder.transformer.layers.1.norm3.bias"] is released["s2to1encoder.transformer.1.norm3.bias"]
    assert ours["encoder.transformer.global_proj.weight"] is released["s2to1encoder.global_proj.weight"]
    assert ours["encoder.cnn.conv_in.weight"] is released["encoder.conv_in.weight"]
    assert ours["encoder.quant_conv.weight"] is released["quant_conv.weight"]
    assert ours["decoder.post_quant_conv.weight"] is released["post_quant_conv.weight"]
    assert ours["decoder.transformer.distill_mlp.4.bias"] is released["s1to2decoder.distill_mlp.4.bias"]
    assert ours["decoder.cnn.adaptive.0.gamma.weight"] is released["decoder.adaptive.0.gamma.weight"]
    assert ours["quantize.codebook_used"] is released["quantize.codebook_used"]
    assert ours_to_gigatok(ours, "1d") == released
    with pytest.raises(ValueError, match="not part of a GigaTok 1D tokenizer"):
        gigatok_to_ours({**released, "distill_mlp.0.weight": torch.zeros(1)})

    ema = {k: v + 1 for k, v in released.items()}
    weights, note = gigatok_weights({"model": released, "ema": ema, "optimizer": {}, "discriminator": {}, "args": None})
    assert weights == ema and note == "weights from 'ema'; skipped args, discriminator, model, optimizer"
    inference = {k: v for k, v in released.items() if ".distill_mlp." not in k}
    weights, note = gigatok_weights({"state_dict": inference})
    assert "no distill_mlp weights" in note
    expected = torch.load(reference_dir / "tiny_gigatok_1d_expected.pt", weights_only=True)
    parts = build_encoder_decoder(gigatok_config(fixture_config(expected)))
    model = torch.nn.ModuleDict(dict(zip(("encoder", "decoder"), parts)))
    state = {k: v for k, v in gigatok_to_ours(weights).items() if not k.startswith("quantize.")}
    load_state_dict_strict(model, state, "tokenizer", optional_prefixes=OPTIONAL_PREFIXES)


def tiny_pair(layout="1d", **overrides):
    args = dict(layout=layout, num_tokens=16 if layout == "1d" else None, image_size=16, ch=32, ch_mult=[1, 2],
                num_res_blocks=1, z_channels=32, embed_dim=4, width=32, num_layers=2, num_heads=2)
    args.update(overrides)
    return HybridEncoder(**args), HybridDecoder(**args, distill_depth=1, distill_dim=8)


def test_input_size_errors():
    encoder, decoder = tiny_pair()
    with pytest.raises(ValueError, match=r"takes B x 3 x 16 x 16 images .* got \(1, 3, 32, 32\)"):
        encoder(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"HybridDecoder expects B x 4 x 16, got \(1, 4, 1, 16\)"):
        decoder(torch.zeros(1, 4, 1, 16))
    encoder_2d, decoder_2d = tiny_pair("2d")
    with pytest.raises(ValueError, match=r"expects B x 4 x 8 x 8, got \(1, 4, 4, 4\)"):
        decoder_2d(torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="num_tokens must be a power of two"):
        tiny_pair(num_tokens=24)
    with pytest.raises(ValueError, match="does not divide the 16 x 16 grid"):
        HybridEncoder(image_size=32, ch_mult=[1, 2], num_tokens=2 ** 10)
    with pytest.raises(ValueError, match="image_size=200 must be a multiple of the CNN downsampling factor 16"):
        HybridEncoder(image_size=200)
    with pytest.raises(ValueError, match="layout '2d' has one token per grid cell"):
        HybridEncoder(layout="2d", num_tokens=64)
    with pytest.raises(ValueError, match="layout must be one of"):
        HybridEncoder(layout="3d")
    with pytest.raises(ValueError, match="distill_depth=7 must name a layer in 1..6"):
        HybridDecoder(distill_depth=7)


@pytest.mark.parametrize("layout", ["1d", "2d"])
def test_grad_checkpointing_changes_nothing(layout, monkeypatch):
    """Same outputs and gradients with activation checkpointing, which must really be used: every transformer layer
    of the checkpointed pair runs under torch.utils.checkpoint (counted), none of the plain pair does."""
    import taming.modules.hybrid as hybrid

    calls = []
    real_checkpoint = hybrid.checkpoint

    def counting_checkpoint(function, *args, **kwargs):
        calls.append(function)
        return real_checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(hybrid, "checkpoint", counting_checkpoint)
    torch.manual_seed(0)
    encoder, decoder = tiny_pair(layout)
    encoder_ckpt, decoder_ckpt = (instantiate(dict(component_config(m), init_args={
        **component_config(m)["init_args"], "grad_checkpointing": True})) for m in (encoder, decoder))
    encoder_ckpt.load_state_dict(encoder.state_dict())
    decoder_ckpt.load_state_dict(decoder.state_dict())
    x = torch.randn(2, 3, 16, 16)
    results, counts = [], []
    for enc, dec in ((encoder, decoder), (encoder_ckpt, decoder_ckpt)):
        calls.clear()
        image, features = dec(enc(x), return_features=True)
        (image.square().mean() + features["semantic"].square().mean()).backward()
        counts.append(len(calls))
        results.append([image, features["semantic"]] + [p.grad for m in (enc, dec) for p in m.parameters()])
    layers = len(encoder.transformer.layers) + len(decoder.transformer.layers)
    assert counts == [0, layers]
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_from_scratch_init():
    encoder, decoder = tiny_pair()
    linear = decoder.transformer.layers[0].linear1
    assert linear.bias.abs().max() == 0 and 0.015 < linear.weight.std() < 0.025 and linear.weight.abs().max() < 0.1
    conv = encoder.cnn.conv_blocks[0].res[0].conv1
    assert conv.bias.abs().max() == 0 and 0.015 < conv.weight.std() < 0.025
    norm = encoder.transformer.ln_pre
    assert norm.weight.eq(1).all() and norm.bias.eq(0).all()
    torch.nn.init.normal_(norm.weight)
    init_weights(encoder.transformer)
    assert norm.weight.eq(1).all()

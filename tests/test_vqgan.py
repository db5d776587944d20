"""LlamaGen VQ encoder/decoder (taming.modules.vqgan): the reference fixture, released key names and counts."""
import json

import pytest
import torch

from taming.modules.vqgan import Decoder, Encoder
from taming.released.llamagen import llamagen_config, llamagen_to_ours, llamagen_weights, ours_to_llamagen

from conftest import build_encoder_decoder




@pytest.fixture(scope="module")
def tiny(reference_dir):
    expected = torch.load(reference_dir / "llamagen_vq16_tiny_expected.pt", weights_only=True)
    checkpoint = torch.load(reference_dir / "llamagen_vq16_tiny.pt", weights_only=True)
    state_dict, note = llamagen_weights(checkpoint)
    assert note == "weights from 'model'"
    config = llamagen_config({**expected["model_args"], "ch": expected["ch"]})
    return expected, build_encoder_decoder(config, llamagen_to_ours(state_dict))


def test_tiny_vq16_reproduces_reference(tiny):
    expected, (encoder, decoder) = tiny
    captured = {}
    encoder.conv_out.register_forward_hook(lambda m, i, o: captured.update(encoder_out=o))
    with torch.no_grad():
        pre_quant = encoder(expected["input"])
        reconstruction = decoder(expected["quant"])
    torch.testing.assert_close(captured["encoder_out"], expected["encoder_out"], atol=1e-5, rtol=0)
    torch.testing.assert_close(pre_quant, expected["pre_quant"], atol=1e-5, rtol=0)
    torch.testing.assert_close(reconstruction, expected["reconstruction"], atol=1e-4, rtol=0)


def test_channels_last_input_is_decoded_accurately():
    # CPU GroupNorm on channels-last tensors loses precision on channels with a large mean and a small spread;
    # the decoder must not inherit that layout from its input (e.g. a quantizer output permuted from B x h x w x C).
    torch.manual_seed(0)
    decoder = Decoder(ch=32, ch_mult=[1], num_res_blocks=1, z_channels=32, use_attn=False).eval()
    with torch.no_grad():
        decoder.conv_in.weight.zero_()
        decoder.conv_in.bias.zero_()
        decoder.conv_in.weight[:, :, 1, 1] = torch.eye(32)  # the first GroupNorm sees z itself
        z = 5 + 0.02 * torch.randn(1, 32, 8, 8)
        exact = decoder.double()(z.double()).float()
        decoder.float()
        torch.testing.assert_close(decoder(z.contiguous(memory_format=torch.channels_last)), exact, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["VQ-16", "VQ-8"])
def test_full_size_keys_shapes_and_counts_match_manifest(name, reference_dir):
    manifest = json.loads((reference_dir / f"llamagen_{name.replace('-', '')}_state_dict_manifest.json").read_text())
    with torch.device("meta"):
        encoder, decoder = build_encoder_decoder(llamagen_config(name))
    ours = {**{"encoder." + k: v for k, v in encoder.state_dict().items()},
            **{"decoder." + k: v for k, v in decoder.state_dict().items()}}
    released = {k: list(v.shape) for k, v in ours_to_llamagen(ours).items()}
    assert released == {k: v for k, v in manifest["state_dict"].items() if not k.startswith("quantize.")}
    counts = manifest["numel_by_prefix"]
    assert sum(p.numel() for p in encoder.parameters()) == counts["encoder."] + counts["quant_conv."]
    assert sum(p.numel() for p in decoder.parameters()) == counts["decoder."] + counts["post_quant_conv."]
    codebook = 16384 * 8
    total = sum(p.numel() for m in (encoder, decoder) for p in m.parameters()) + codebook
    assert total == manifest["parameter_numel"]



def test_key_translation():
    released = {"encoder.conv_in.weight": 1, "quant_conv.bias": 2, "quantize.embedding.weight": 3,
                "post_quant_conv.weight": 4, "decoder.conv_out.bias": 5}
    ours = llamagen_to_ours(released)
    assert ours == {"encoder.conv_in.weight": 1, "encoder.quant_conv.bias": 2, "quantize.embedding.weight": 3,
                    "decoder.post_quant_conv.weight": 4, "decoder.conv_out.bias": 5}
    assert ours_to_llamagen(ours) == released
    with pytest.raises(ValueError, match="not part of a LlamaGen VQ model"):
        llamagen_to_ours({"discriminator.conv.weight": 0})


def test_checkpoint_selection():
    state, note = llamagen_weights({"model": {"a": torch.zeros(1)}, "ema": {}, "optimizer": {}, "steps": 3})
    assert list(state) == ["a"] and note == "weights from 'model'; skipped ema, optimizer, steps"
    assert llamagen_weights({"encoder.conv_in.weight": torch.zeros(1)})[1] == "bare state dict"
    with pytest.raises(ValueError, match="no weights"):
        llamagen_weights({"optimizer": {}})


def test_config_translation():
    config = llamagen_config("VQ-8")
    assert config["encoder"] == {"class_path": "taming.modules.vqgan.Encoder", "init_args": dict(
        ch=128, z_channels=256, use_attn=True, dropout=0.0, embed_dim=8, ch_mult=[1, 2, 2, 4], num_res_blocks=2)}
    assert config["decoder"]["init_args"]["num_res_blocks"] == 3
    assert config["quantizer"] == {"class_path": "taming.modules.quantizers.VectorQuantizer", "init_args": dict(
        codebook_size=16384, dim=8, beta=0.25, entropy_loss_weight=0.0, entropy_temperature=0.01, l2_norm=True,
        rotation_trick=False, usage_window=65536)}
    assert llamagen_config({"codebook_show_usage": False})["quantizer"]["init_args"]["usage_window"] == 0
    with pytest.raises(ValueError, match="unknown LlamaGen tokenizer"):
        llamagen_config("VQ-32")
    with pytest.raises(ValueError, match=r"unknown LlamaGen VQ options \['codebook_dim'\]"):
        llamagen_config({"codebook_dim": 8})


def test_attention_only_at_the_lowest_resolution():
    encoder = Encoder(ch=32, ch_mult=[1, 2, 2], z_channels=8)
    decoder = Decoder(ch=32, ch_mult=[1, 2, 2], z_channels=8)
    assert [hasattr(level, "attn") for level in encoder.conv_blocks] == [False, False, True]
    assert [hasattr(level, "attn") for level in decoder.conv_blocks] == [True, False, False]  # coarsest first
    assert len(encoder.conv_blocks[2].attn) == 2 and len(decoder.conv_blocks[0].attn) == 3
    assert len(encoder.mid) == len(decoder.mid) == 3
    plain = Decoder(ch=32, ch_mult=[1, 2], z_channels=8, use_attn=False, adaptive_gn=True, d2s_up=True)
    assert len(plain.mid) == 2 and len(plain.adaptive) == 2 and plain.conv_blocks[0].upsample.conv1.out_channels == 256
    assert encoder.downsample_factor == 4


def test_bad_inputs_are_explained():
    encoder = Encoder(ch=32, ch_mult=[1, 1], z_channels=8)
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 2"):
        encoder(torch.zeros(1, 3, 5, 6))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        encoder(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="B x 8 x H x W"):
        Decoder(ch=32, ch_mult=[1, 1], z_channels=4, embed_dim=8)(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="ch_mult must be a non-empty list of positive integers"):
        Encoder(ch_mult=[1, 0])
    with pytest.raises(ValueError, match="cannot be split into 32 GroupNorm groups"):
        Encoder(ch=48, ch_mult=[1])


def test_adaptive_gan_weight_needs_the_decoders_last_layer():
    """gen_loss_weight: null (VQGAN's adaptive weight) with a decoder that declares no output layer is an error at
    construction (it used to make the GAN weight silently 0); with a fixed weight the layer is not needed."""
    from taming.models.vqgan import VQGAN
    from taming.modules.codec import TokenDecoder
    from taming.modules.quantizers import VectorQuantizer

    class NoOutputLayer(Decoder):
        last_layer = TokenDecoder.last_layer  # the contract's default: not declared

    args = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=8)
    loss = {"class_path": "taming.modules.losses.VQLPIPSWithDiscriminator",
            "init_args": {"gen_loss_weight": None, "perceptual_weight": 0.0, "disc_ndf": 8}}
    parts = dict(encoder=Encoder(**args), quantizer=VectorQuantizer(codebook_size=16, dim=8))
    with pytest.raises(NotImplementedError, match="NoOutputLayer does not declare its output layer"):
        VQGAN(decoder=NoOutputLayer(**args), loss=loss, **parts)
    fixed = {**loss, "init_args": {**loss["init_args"], "gen_loss_weight": 0.1}}
    assert VQGAN(decoder=NoOutputLayer(**args), loss=fixed, **parts).adaptive_weight_layer() is None
    model = VQGAN(decoder=Decoder(**args), loss=loss, **parts)
    assert model.adaptive_weight_layer() is model.decoder.conv_out.weight


def test_tokenizer_parts_must_implement_their_contracts():
    """Encoders, quantizers and decoders are checked against their declared interfaces when a tokenizer is built;
    a 1-D or 3-D encoder must say its token shape."""
    from torch import nn

    from taming.modules.codec import TokenEncoder
    from taming.modules.quantizers import VectorQuantizer
    from taming.tokenizer import Tokenizer

    args = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=8)
    with pytest.raises(TypeError, match="the encoder Conv2d does not implement taming.modules.codec.TokenEncoder"):
        Tokenizer(nn.Conv2d(3, 8, 2, 2), VectorQuantizer(codebook_size=16, dim=8), Decoder(**args))
    tokenizer = Tokenizer(Encoder(**args), VectorQuantizer(codebook_size=16, dim=8), Decoder(**args))
    assert tokenizer.token_shape(64, 48) == (32, 24) and tokenizer.token_layout == "grid"

    class Sequence(Encoder):
        token_layout = "sequence"
        token_shape = TokenEncoder.token_shape

    with pytest.raises(NotImplementedError, match="Sequence has sequence tokens and must define token_shape"):
        Tokenizer(Sequence(**args), VectorQuantizer(codebook_size=16, dim=8), Decoder(**args)).token_shape(64, 64)

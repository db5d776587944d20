"""IBQ: the chunked quantizer against the release's float64 fixture and a materialised oracle, its memory bound,
the released tokenizers (ibq_tiny*, full-size manifests) and AR models (ibq_ar_tiny*, manifests)."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from taming.generator import build_generator, load_generator
from taming.modules.quantizers import IBQ
from taming.modules.quantizers.ibq import plain_ibq
from taming.released import ibq as ibq_family
from taming.tokenizer import Tokenizer, load_tokenizer

OBJECTIVES = {"quant_loss": (1.0, 0.0, False), "entropy_loss": (0.0, 1.0, False), "probe": (0.0, 0.0, True),
              "total": (1.0, 0.05, True)}  # quant / entropy loss weight, probe term


def _grads(quantizer, z, probe, objective):
    quant_w, entropy_w, with_probe = OBJECTIVES[objective]
    quantizer.quant_loss_weight, quantizer.entropy_loss_weight = quant_w, entropy_w
    quantizer.embedding.weight.grad = None
    z = z.clone().requires_grad_(True)
    out = quantizer(z)
    (out.loss + ((out.quantized * probe).sum() if with_probe else 0)).backward()
    return out, z.grad, quantizer.embedding.weight.grad


@pytest.mark.parametrize("chunk_elements", [1 << 23, 3 * 64, 1])
def test_quantizer_matches_release_fixture(reference_dir, chunk_elements):
    e = torch.load(reference_dir / "ibq_quantizer_expected.pt", weights_only=False)
    q = IBQ(64, 16, beta=0.25, entropy_temperature=0.01, chunk_elements=chunk_elements).double().train()
    with torch.no_grad():
        q.embedding.weight.copy_(e["codebook"])
    for objective in OBJECTIVES:
        out, grad_z, grad_e = _grads(q, e["z"], e["probe"], objective)
        torch.testing.assert_close(grad_z, e[f"grad_z_{objective}"], rtol=0, atol=1e-12)
        torch.testing.assert_close(grad_e, e[f"grad_codebook_{objective}"], rtol=0, atol=1e-12)
    assert torch.equal(out.indices, e["indices"])
    assert torch.equal(out.quantized, e["z_q"])
    for ours, theirs in (("codebook_quant_loss", "quant_loss"), ("codebook_sample_entropy_loss", "sample_entropy"),
                         ("codebook_avg_entropy_loss", "avg_entropy"), ("codebook_entropy_loss", "entropy_loss")):
        torch.testing.assert_close(out.terms[ours], e[theirs], rtol=1e-10, atol=0)
    # no identity path: the decoder's gradient reaches z only through the softmax (a VQ straight-through gives P)
    assert (e["grad_z_probe"] - e["probe"]).abs().max() > 0.5


@pytest.mark.parametrize("shape,k,chunk", [((3, 8, 5, 7), 37, 50), ((2, 4, 9), 300, 1000), ((1, 6, 4, 4), 5, 1)])
def test_chunked_equals_materialised(shape, k, chunk):
    """Values and gradients of every objective against the N x K form, several chunkings, 1-D and 2-D layouts."""
    gen = torch.Generator().manual_seed(k)
    z = torch.randn(*shape, generator=gen, dtype=torch.float64)
    codebook = torch.randn(k, shape[1], generator=gen, dtype=torch.float64)
    probe = torch.randn(*shape, generator=gen, dtype=torch.float64)
    q = IBQ(k, shape[1], beta=0.3, entropy_temperature=0.05, sample_minimization_weight=0.7,
            batch_maximization_weight=1.3, quant_loss_weight=0.9, entropy_loss_weight=0.2, chunk_elements=chunk).double()
    with torch.no_grad():
        q.embedding.weight.copy_(codebook)
    zz = z.clone().requires_grad_(True)
    out = q(zz)
    ((out.quantized * probe).sum() + out.loss).backward()

    ee = codebook.clone().requires_grad_(True)
    zr = z.clone().requires_grad_(True)
    z_q, idx, quant, sample, batch = plain_ibq(zr, ee, beta=0.3, temperature=0.05)
    loss = 0.9 * quant + 0.2 * (0.7 * sample - 1.3 * batch)
    ((z_q * probe).sum() + loss).backward()
    assert torch.equal(out.indices.flatten(), idx)
    torch.testing.assert_close(out.quantized, z_q, rtol=0, atol=1e-13)
    torch.testing.assert_close(out.loss, loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(zz.grad, zr.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(q.embedding.weight.grad, ee.grad, rtol=1e-9, atol=1e-12)
    assert (q.embedding.weight.grad.abs().sum(1) > 0).all()  # every row learns


def test_lookup_helpers_and_errors():
    q = IBQ(50, 4, chunk_elements=60).eval()
    z = torch.randn(2, 4, 3, 5)
    out = q(z)
    assert torch.equal(q.codes_to_indices(z), out.indices)
    torch.testing.assert_close(q.indices_to_codes(out.indices), out.quantized, rtol=0, atol=0)
    with pytest.raises(ValueError, match="entropy_temperature"):
        IBQ(8, 4, entropy_temperature=0)
    with pytest.raises(ValueError, match="loss weights"):
        IBQ(8, 4, entropy_loss_weight=-1)
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        q.indices_to_codes(torch.full((1, 2, 2), 50))


def test_peak_memory_at_release_size():
    """One 256-token image at K = 2^18, dim 256, forward + backward with the entropy loss: the extra peak is at
    most the codebook's gradient (256 MiB) + 192 MiB (the release keeps ~2.2 GB). Measured in a fresh process by
    the resident-set high-water mark (reset through /proc/self/clear_refs)."""
    script = textwrap.dedent("""
        import re, torch
        from taming.modules.quantizers import IBQ
        torch.manual_seed(0)
        q = IBQ(2 ** 18, 256)
        z = torch.randn(1, 256, 16, 16, requires_grad=True)
        def status(key):
            return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read())[1]) * 1024
        open("/proc/self/clear_refs", "w").write("5")
        base = status("VmRSS")
        out = q(z)
        (out.quantized.sum() + out.loss).backward()
        print(status("VmHWM") - base, q.embedding.weight.grad.numel() * 4)
    """)
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak resident set")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    peak, grad_bytes = map(int, res.stdout.split())
    assert peak <= grad_bytes + 192 * 2 ** 20, f"extra peak {peak / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------------------------ tokenizers


@pytest.mark.parametrize("ema", [False, True])
def test_tiny_tokenizer_reproduces_release(reference_dir, ema):
    e = torch.load(reference_dir / "ibq_tiny_expected.pt", weights_only=False)
    tok = load_tokenizer(reference_dir / "ibq_tiny.ckpt", config=e["config"], ema=ema)
    p = "ema_" if ema else ""
    with torch.no_grad():
        z = tok.encoder(e["input"])
        quant, indices = tok.encode(e["input"])
        reconstruction, from_indices = tok.decode(quant), tok.decode_indices(indices)
        terms = tok.quantize(z).terms
    torch.testing.assert_close(z, e[f"{p}quantizer_input"], rtol=0, atol=1e-4)
    assert torch.equal(indices, e[f"{p}indices"])
    torch.testing.assert_close(quant, e[f"{p}quantized"], rtol=0, atol=0)
    torch.testing.assert_close(reconstruction, e[f"{p}reconstruction"], rtol=0, atol=1e-4)
    torch.testing.assert_close(from_indices, e[f"{p}reconstruction_from_indices"], rtol=0, atol=1e-4)
    if not ema:
        for ours, theirs in (("codebook_quant_loss", "eval_quant_loss"), ("codebook_entropy_loss", "eval_entropy_loss"),
                             ("codebook_sample_entropy_loss", "eval_sample_entropy")):
            assert abs(float(terms[ours]) - e[theirs]) < 1e-4 * max(1.0, abs(e[theirs]))
    assert tok.checkpoint_info["ema"] is ema


@pytest.mark.parametrize("k", [1024, 8192, 16384, 262144])
def test_full_size_tokenizers_match_manifests(reference_dir, k):
    """Every released IBQ tokenizer (and the pretrained ones, whose manifests are identical) from its init_args:
    parameter counts per part, and a random checkpoint in the release's layout loads strictly."""
    for name in [f"ibq_{k}"] + ([f"ibq_pretrain_{k}"] if k in (16384, 262144) else []):
        manifest = json.loads((reference_dir / f"{name}_state_dict_manifest.json").read_text())
        with torch.device("meta"):
            tok = Tokenizer(**ibq_family.components(manifest["init_args"]))
        counts = {part: sum(p.numel() for p in getattr(tok, attr).parameters())
                  for part, attr in (("encoder", "encoder"), ("decoder", "decoder"), ("quantize", "quantize"))}
        by_prefix = manifest["numel_by_prefix"]
        convs = by_prefix["quant_conv."]
        assert counts["encoder"] == by_prefix["encoder."] + convs
        assert counts["decoder"] == by_prefix["decoder."] + by_prefix["post_quant_conv."]
        assert counts["quantize"] == by_prefix["quantize."] == k * 256
        assert sum(counts.values()) == manifest["generator_parameter_count"]
        released = {key for key in manifest["state_dict"] if not key.startswith(("loss.", "model_ema."))}
        ours = {ibq_family.our_name(key, 5) for key in released}
        assert ours == set(tok.state_dict()), name


def test_tokenizer_loads_from_released_yaml_layouts(reference_dir, tmp_path):
    """The tokenizer YAML (LightningCLI), the AR YAML (first_stage_config, prefix first_stage_model.) and a config
    naming another family's class are told apart from data alone."""
    e = torch.load(reference_dir / "ibq_tiny_expected.pt", weights_only=False)
    ckpt = torch.load(reference_dir / "ibq_tiny.ckpt", weights_only=True)
    yaml_form = {"model": {"class_path": "src.IBQ.models.ibqgan.IBQ", "init_args": e["config"]}}
    tok = load_tokenizer(reference_dir / "ibq_tiny.ckpt", config=yaml_form, ema=False)
    ar = {"state_dict": {"first_stage_model." + k: v for k, v in ckpt["state_dict"].items()
                         if not k.startswith("model_ema.")}}
    torch.save(ar, tmp_path / "ar.ckpt")
    ar_config = {"model": {"target": "x", "params": {"first_stage_config": {
        "target": "src.IBQ.models.ibqgan.IBQ", "params": dict(e["config"], stage="transformer")}}}}
    tok_ar = load_tokenizer(tmp_path / "ar.ckpt", config=ar_config)
    for a, b in zip(tok.state_dict().values(), tok_ar.state_dict().values()):
        assert torch.equal(a, b)
    bad = dict(e["config"], ddconfig=dict(e["config"]["ddconfig"], attn_resolutions=[32, 16]))
    with pytest.raises(ValueError, match="attention"):
        load_tokenizer(reference_dir / "ibq_tiny.ckpt", config=bad)
    with pytest.raises(ValueError, match="unknown IBQ config keys"):
        load_tokenizer(reference_dir / "ibq_tiny.ckpt", config=dict(e["config"], n_codes=3))


# ------------------------------------------------------------------------------------------------ AR


def test_tiny_ar_reproduces_release(reference_dir):
    e = torch.load(reference_dir / "ibq_ar_tiny_expected.pt", weights_only=False)
    path = reference_dir / "ibq_ar_tiny.ckpt"
    model = load_generator(path, config=e["config"])
    assert model.checkpoint_info["format"] == "ibq"
    torch.testing.assert_close(model.logits(e["tf_tokens"], e["tf_labels"]), e["tf_logits"], rtol=0, atol=2e-5)
    hidden = model.hidden_states(e["tf_tokens"], e["tf_labels"], len(model.blocks))
    torch.testing.assert_close(hidden, e["tf_last_block_out"], rtol=0, atol=2e-5)
    loss, _ = model.loss(e["tf_tokens"], e["tf_labels"])
    assert abs(float(loss) - e["tf_loss"]) < 1e-4
    tokenizer = load_tokenizer(path, config=e["config"])
    with torch.no_grad():
        _, indices = tokenizer.encode(e["e2e_input"])
        assert torch.equal(indices.flatten(1), e["e2e_indices"])
        torch.testing.assert_close(model.logits(indices, e["e2e_labels"]), e["e2e_logits"], rtol=0, atol=2e-5)
        for i, scale in enumerate(e["gen_cfg_scales"]):
            for use_cache in (True, False):
                tokens, logits = model.generate(e["gen_labels"], cfg_scale=scale, top_k=1, use_cache=use_cache,
                                                return_logits=True)
                assert torch.equal(tokens, e["gen_tokens"][i])
                torch.testing.assert_close(logits, e["gen_logits"][i], rtol=0, atol=5e-5)
            images = tokenizer.decode_indices(tokens.view(-1, 4, 4))
            torch.testing.assert_close(images, e["gen_images"][i], rtol=0, atol=1e-4)


@pytest.mark.parametrize("size", ["B", "L", "XL", "XXL"])
def test_ar_sizes_match_manifests(reference_dir, size):
    manifest = json.loads((reference_dir / f"ibq_ar_{size}_state_dict_manifest.json").read_text())
    with torch.device("meta"):
        model = build_generator(f"IBQ-AR-{size}")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k[len("transformer."):]: v for k, v in manifest["state_dict"].items() if k.startswith("transformer.")}
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == manifest["transformer_numel"]
    params = manifest["transformer_params"]
    with torch.device("meta"):
        from_fields = ibq_family.AdaLNGPT(**ibq_family.init_args(params, ibq_family.GPT_FIELDS))
    assert from_fields.init_args["gamma_init"] == params["alng"]
    assert {k: list(v.shape) for k, v in from_fields.state_dict().items()} == theirs


def test_ar_initialisation_follows_release():
    model = build_generator("IBQ-AR-B", num_tokens=16, vocab_size=64, n_layer=2, dim=64, n_head=4)
    assert model.init_args["gamma_init"] == 1e-3
    assert torch.count_nonzero(model.head.weight) == 0
    ada = model.blocks[0].ada_lin[1]
    assert torch.count_nonzero(ada.bias) == 0
    ratio = ada.weight[:128].std() / ada.weight[128:].std()
    assert 1e-3 / 0.5 * 0.8 < ratio < 1e-3 / 0.5 * 1.2


def test_sample_script_samples_released_ibq_ar(reference_dir, tmp_path):
    """scripts/sample.py with the released AR YAML: the tokenizer inside the AR checkpoint decodes the greedy guided
    samples to the reference's images."""
    import numpy as np
    import yaml
    from PIL import Image

    from taming.cli import sample
    from taming.metrics.image import to_uint8

    e = torch.load(reference_dir / "ibq_ar_tiny_expected.pt", weights_only=False)
    config = tmp_path / "imagenet_conditional_llama_tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {"class_path": "src.IBQ.models.cond_transformer_llama.Net2NetTransformer",
                                                "init_args": e["config"]}}))
    labels = [str(int(v)) for v in e["gen_labels"]]
    sample.main(["--ckpt_path", str(reference_dir / "ibq_ar_tiny.ckpt"), "--config_file", str(config),
                 "--cfg_scale", "1.5", "--top_k", "1", "--class_labels", *labels, "--samples_per_class", "1",
                 "--device", "cpu", "--output_dir", str(tmp_path / "out")])
    want = to_uint8(e["gen_images"][0]).permute(0, 2, 3, 1).numpy().astype(int)
    for label, image in zip(labels, want):
        got = np.asarray(Image.open(tmp_path / "out" / f"class{label}_0.png").convert("RGB")).astype(int)
        assert np.abs(got - image).max() <= 1


def test_demo_config_learns_and_reloads(tmp_path):
    """The model of configs/ibq/demo_ibq.yaml (the release's loss weights) raises PSNR on the bundled photographs
    by >= 3 dB in 60 steps, every codebook row receives gradient, and the checkpoint reloads without a config."""
    import lightning as L
    import yaml

    from conftest import REPO, reconstruction_psnr
    from taming.modules.component import instantiate
    from helpers import images32, loader, trainer

    config = yaml.safe_load((REPO / "configs" / "ibq" / "demo_ibq.yaml").read_text())["model"]
    config["init_args"].update(learning_rate=2e-3, ema_decay=0.5)
    images = images32(4)
    L.seed_everything(0)
    model = instantiate(config)
    before = reconstruction_psnr(model, images)
    t = trainer(tmp_path, max_steps=60)
    t.fit(model, loader(images))
    after = reconstruction_psnr(model, images)
    assert after >= before + 3.0, (before, after)
    assert "train/codebook_avg_entropy_loss" in t.logged_metrics
    t.save_checkpoint(tmp_path / "ibq.ckpt")
    tokenizer = load_tokenizer(tmp_path / "ibq.ckpt")
    assert type(tokenizer.quantize).__name__ == "IBQ" and tokenizer.checkpoint_info["ema"]
    with model.model_ema.average_parameters(model), torch.no_grad():
        model.eval()
        torch.testing.assert_close(tokenizer(images), model(images))


# ------------------------------------------------------------------------------------------------ training configs


@pytest.mark.parametrize("config,manifest", [
    ("ibq/imagenet_ibqgan_1024.yaml", "ibq_1024"), ("ibq/imagenet_ibqgan_8192.yaml", "ibq_8192"),
    ("ibq/imagenet_ibqgan_16384.yaml", "ibq_16384"), ("ibq/imagenet_ibqgan_262144.yaml", "ibq_262144"),
    ("ibq/pretrain_ibqgan_16384.yaml", "ibq_pretrain_16384"), ("ibq/pretrain_ibqgan_262144.yaml", "ibq_pretrain_262144"),
    ("pretrain_lfqgan_256_16384.yaml", "om2_pretrain_16384"), ("pretrain_lfqgan_256_262144.yaml", "om2_pretrain_262144"),
])
def test_recipe_configs_build_the_released_architectures(reference_dir, config, manifest):
    """Our training YAMLs build tokenizers whose weights have the released names and shapes (IBQ: after the taming
    layout renaming), and released checkpoints of them load with their own YAML through the family registry."""
    import yaml

    from conftest import REPO
    from taming.modules.component import instantiate
    from taming.tokenizer import _resolve

    data = json.loads((reference_dir / f"{manifest}_state_dict_manifest.json").read_text())
    model_config = yaml.safe_load((REPO / "configs" / config).read_text())["model"]
    model_config["init_args"]["loss"]["init_args"]["perceptual_weight"] = 0.0  # LPIPS weights are not needed here
    with torch.device("meta"):
        model = instantiate(model_config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(("encoder.", "quantize.", "decoder."))}
    released = {k: tuple(v) for k, v in data["state_dict"].items() if not k.startswith(("loss.", "model_ema."))}
    if manifest.startswith("ibq"):  # Open-MAGVIT2's names are ours already
        released = {ibq_family.our_name(k, 5): v for k, v in released.items()}
    assert ours == released
    release_yaml = {"model": {"class_path": data["class_path_in_config"], "init_args": data["init_args"]}}
    checkpoint = {"state_dict": {k: torch.empty(v, device="meta") for k, v in data["state_dict"].items()}}
    with torch.device("meta"):
        resolved = _resolve(release_yaml, checkpoint, None)
    tokenizer_keys = {k for k in resolved.state_dict if k.startswith(("encoder.", "quantize.", "decoder."))}
    assert tokenizer_keys == set(resolved.tokenizer.state_dict())

"""VectorQuantizer: GigaTok's unit fixture, and brute force for the lookup, the losses, the chunked entropy and its
gradients, the usage window."""
from collections import deque

import pytest
import torch
import torch.nn.functional as F

from taming.modules.quantizers import VectorQuantizer
from taming.modules.quantizers.vq_entropy import lookup_with_entropy, plain_lookup_with_entropy


def quantizer(k=32, d=4, **kw) -> VectorQuantizer:
    torch.manual_seed(0)
    vq = VectorQuantizer(k, d, **kw).double()
    with torch.no_grad():  # a spread-out codebook (the reference init is nearly degenerate: uniform(-1/K, 1/K))
        vq.embedding.weight.copy_(torch.randn(k, d, dtype=torch.float64))
    return vq


@pytest.mark.parametrize("rotation_trick", [True, False])
def test_gigatok_quantizer_unit_fixture(reference_dir, rotation_trick):
    ref = torch.load(reference_dir / "tiny_gigatok_1d_expected.pt", weights_only=True)["quantizer_unit"]
    vq = VectorQuantizer(256, 8, beta=ref["beta"], entropy_loss_weight=ref["entropy_loss_ratio"],
                         entropy_temperature=ref["entropy_temperature"], rotation_trick=rotation_trick).double()
    with torch.no_grad():
        vq.embedding.weight.copy_(ref["codebook"])
    z = ref["z"].clone().requires_grad_()
    out = vq.train()(z)
    assert torch.equal(out.indices.flatten(1), ref["indices"])
    for name in ("vq_loss", "commit_loss", "entropy_loss"):
        torch.testing.assert_close(out.terms[name], ref[name], rtol=1e-10, atol=1e-15)
    objective = (out.quantized * ref["probe"]).sum()
    (grad,) = torch.autograd.grad(objective, z)
    # the rotation trick's gradient differs from straight-through: a silent fallback would fail here
    torch.testing.assert_close(grad, ref["grad_z" if rotation_trick else "grad_z_straight_through"], rtol=0, atol=1e-12)
    if rotation_trick:  # applied in eval mode too, as released
        torch.testing.assert_close(out.quantized, ref["z_q"], rtol=0, atol=1e-12)
        with torch.no_grad():
            torch.testing.assert_close(vq.eval()(ref["z"]).quantized, ref["z_q_eval"], rtol=0, atol=1e-12)


def test_lookup_and_losses_against_brute_force():
    vq = quantizer(beta=0.3).train()
    z = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    out = vq(z)
    tokens = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=1)
    codebook = F.normalize(vq.embedding.weight, dim=1)
    expected = torch.tensor([min(range(32), key=lambda k: (t - codebook[k]).square().sum().item()) for t in tokens])
    assert torch.equal(out.indices.flatten(), expected) and out.indices.shape == (2, 3, 5)
    chosen = codebook[expected]
    torch.testing.assert_close(out.terms["vq_loss"], (chosen - tokens).square().mean())
    torch.testing.assert_close(out.terms["commit_loss"], 0.3 * (chosen - tokens).square().mean())
    torch.testing.assert_close(out.loss, out.terms["vq_loss"] + out.terms["commit_loss"])
    torch.testing.assert_close(out.quantized, chosen.view(2, 3, 5, 4).permute(0, 3, 1, 2))
    assert torch.equal(vq.codes_to_indices(vq.indices_to_codes(out.indices)), out.indices)


def per_token_entropies(z, codebook, temperature, eps=1e-5):
    """The entropy terms token by token in Python: the definition, no shared code with the implementation."""
    probs = [torch.softmax(-((t - codebook) ** 2).sum(1) / temperature, dim=0) for t in z]
    sample = sum(-(p * p.log()).sum() for p in probs) / len(probs)
    mean = sum(probs) / len(probs)
    return sample, -(mean * torch.log(mean + eps)).sum()


@pytest.mark.parametrize("chunk_elements", [32 * 7, 32 * 1000])  # several chunks (7 rows each), one chunk
@pytest.mark.parametrize("temperature", [0.01, 0.5])
def test_chunked_entropy_values_and_gradients(chunk_elements, temperature):
    gen = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(45, 4, generator=gen, dtype=torch.float64), dim=1).requires_grad_()
    e = F.normalize(torch.randn(32, 4, generator=gen, dtype=torch.float64), dim=1).requires_grad_()
    indices, sample, codebook = lookup_with_entropy(z, e, temperature, chunk_elements=chunk_elements)
    ref_sample, ref_codebook = per_token_entropies(z, e, temperature)
    torch.testing.assert_close(sample, ref_sample, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(codebook, ref_codebook, rtol=1e-12, atol=1e-14)
    assert torch.equal(indices, plain_lookup_with_entropy(z, e, temperature)[0])
    for a, b in ((1.0, -1.0), (0.7, 0.0), (0.0, 2.5)):  # gradients of any combination, w.r.t. tokens and codebook
        ours = torch.autograd.grad(a * sample + b * codebook, (z, e), retain_graph=True)
        theirs = torch.autograd.grad(a * ref_sample + b * ref_codebook, (z, e), retain_graph=True)
        for g, h in zip(ours, theirs):
            torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)


def test_entropy_loss_weight_and_training_only():
    vq = quantizer(entropy_loss_weight=0.005, entropy_temperature=0.1)
    z = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    out = vq.train()(z)
    tokens = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=1)
    sample, codebook = per_token_entropies(tokens, F.normalize(vq.embedding.weight, dim=1), 0.1)
    torch.testing.assert_close(out.terms["entropy_loss"], 0.005 * (sample - codebook))
    torch.testing.assert_close(out.loss, out.terms["vq_loss"] + out.terms["commit_loss"] + out.terms["entropy_loss"])
    assert vq.eval()(z).terms["entropy_loss"] == 0  # training only, as the references


def test_usage_window_rolls_like_the_references():
    vq = quantizer(k=8, d=2, usage_window=10).train()
    window = deque([0] * 10, maxlen=10)  # starts as zeros: index 0 counts as used, as released
    gen = torch.Generator().manual_seed(2)
    for n in (3, 4, 12, 2):
        out = vq(torch.randn(1, 2, 1, n, generator=gen, dtype=torch.float64))
        window.extend(out.indices.flatten().tolist())
        assert vq.codebook_used.long().tolist() == list(window)
        assert out.terms["codebook_usage"].item() == len(set(window)) / 8
    assert "codebook_usage" not in vq.eval()(torch.randn(1, 2, 2, 2, dtype=torch.float64)).terms
    assert not hasattr(VectorQuantizer(8, 2, usage_window=0), "codebook_used")


def test_sequences_and_autocast():
    vq = VectorQuantizer(16, 4).train()
    z = torch.randn(2, 4, 7)  # B x d x N: a 1-D token sequence
    out = vq(z)
    assert out.indices.shape == (2, 7) and out.quantized.shape == z.shape
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = vq(z.bfloat16())
    assert half.quantized.dtype == torch.bfloat16 and half.loss.dtype == torch.float32
    assert torch.equal(half.indices, vq(z.bfloat16().float()).indices)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="codebook_size >= 2"):
        VectorQuantizer(1, 4)
    with pytest.raises(ValueError, match="B x 4 x h x w"):
        VectorQuantizer(16, 4)(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        VectorQuantizer(16, 4).indices_to_codes(torch.tensor([[16]]))

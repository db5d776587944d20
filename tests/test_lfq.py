"""LFQ: sign quantization, bit orders, and the exact entropy terms against the fixture and brute force."""
import pytest
import torch

from scripts.benchmark_lfq import all_codes, naive_entropy_terms
from taming.modules.quantizers import LFQ
from taming.modules.quantizers.entropy import codebook_entropy, group_marginal_entropy, per_sample_entropy


def latent_tokens(n, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (0.3 * torch.randn(n, d, generator=g) + 0.2 * torch.randn(1, d, generator=g)).to(dtype)


def test_matches_reference_fixture(reference_dir):
    ref = torch.load(reference_dir / "entropy_a.pt", weights_only=True)
    lfq = LFQ(dim=18, codebook_size=2**18, entropy_loss_weight=1.0, commitment_weight=1.0).train()
    out = lfq(ref["latent"])
    for name, key in (("per_sample_entropy", "per_sample_entropy"), ("codebook_entropy", "codebook_entropy"),
                      ("commit_loss", "commitment"), ("entropy_loss", "entropy_aux_loss")):
        torch.testing.assert_close(out.terms[name], ref[key], rtol=1e-6, atol=0)
    torch.testing.assert_close(out.loss, ref["entropy_aux_loss"] + ref["commitment"], rtol=1e-6, atol=0)
    indices = out.indices
    assert indices.shape == (2, 6, 8) and indices.dtype == torch.int64
    assert torch.equal(indices.flatten(), ref["indices"])  # v1: channel 0 is the most significant bit


def test_matches_reference_fixture_in_float32(reference_dir):
    ref = torch.load(reference_dir / "entropy_a.pt", weights_only=True)
    terms = LFQ(dim=18).train()(ref["latent"].float()).terms
    torch.testing.assert_close(terms["codebook_entropy"].double(), ref["codebook_entropy"], rtol=1e-6, atol=0)
    torch.testing.assert_close(terms["entropy_loss"].double(), ref["entropy_aux_loss"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("d", [2, 6, 7, 8, 10])
@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
def test_entropy_values_and_gradients_match_brute_force(d, temperature):
    z = latent_tokens(48, d, seed=d).requires_grad_(True)
    naive = naive_entropy_terms(z, temperature)
    grads_naive = [torch.autograd.grad(t, z, retain_graph=True)[0] for t in naive]
    exact = (per_sample_entropy(z, temperature), codebook_entropy(z, temperature, 1e-5))
    grads_exact = [torch.autograd.grad(t, z, retain_graph=True)[0] for t in exact]
    for a, b in zip(exact, naive):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(grads_exact, grads_naive):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_codebook_entropy_matches_closed_form_for_uniform_tokens():
    # T huge -> every token's distribution is uniform over 2^d codes, so H(Q) = log(2^d) (eps = 0).
    z = latent_tokens(16, 8)
    h = codebook_entropy(z, temperature=1e6, eps=0.0)
    torch.testing.assert_close(h, torch.tensor(8 * torch.log(torch.tensor(2.0)).item(), dtype=h.dtype))


def test_group_marginals_is_an_upper_bound_and_exact_for_one_group():
    z = latent_tokens(64, 10)
    exact = codebook_entropy(z, 0.1, 1e-5)
    assert group_marginal_entropy(z, 0.1, 1e-5, group_bits=5) > exact
    torch.testing.assert_close(group_marginal_entropy(z, 0.1, 1e-5, group_bits=12), exact)
    # The LFQ in that mode: its codebook entropy is the sum of the exact entropies of groups of <= 12 channels.
    latent = latent_tokens(4, 30, seed=3).view(1, 2, 2, 30).permute(0, 3, 1, 2)
    terms = LFQ(dim=30, codebook_entropy_mode="group_marginals").double().train()(latent).terms
    tokens = latent.permute(0, 2, 3, 1).reshape(-1, 30)
    by_group = sum(codebook_entropy(tokens[:, g:g + 12], 0.01, 1e-5) for g in range(0, 30, 12))
    torch.testing.assert_close(terms["codebook_entropy"], by_group, rtol=1e-12, atol=0)


def test_too_many_bits_for_exact_entropy_is_a_clear_error():
    with pytest.raises(ValueError, match="group_marginals"):
        LFQ(dim=26)
    # The largest exact size works and equals the entropy of the full 2^24 distribution, built by brute force
    # (one token's distribution as a Kronecker product of 24 per-bit distributions).
    z = latent_tokens(3, 24, seed=4)
    h = LFQ(dim=24).double().train()(z.T.reshape(1, 24, 1, 3)).terms["codebook_entropy"]
    q = torch.zeros(2**24, dtype=torch.float64)
    for token in z:
        p1 = torch.sigmoid(4 * token / 0.01)  # P(bit = +1), channel 0 first
        dist = torch.ones(1, dtype=torch.float64)
        for p in p1:
            dist = torch.kron(dist, torch.stack([1 - p, p]))
        q += dist / len(z)
    torch.testing.assert_close(h, -(q * torch.log(q + 1e-5)).sum(), rtol=1e-10, atol=0)


def test_sign_quantization_and_straight_through():
    lfq = LFQ(dim=4).train()
    z = torch.tensor([0.5, -0.2, 0.0, 3.0]).view(1, 4, 1, 1).requires_grad_(True)
    quant, indices = lfq(z)[:2]
    assert quant.flatten().tolist() == [1.0, -1.0, -1.0, 1.0]  # 0 maps to -1
    quant.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    assert indices.item() == 0b1001  # msb: channel 0 is bit 3


@pytest.mark.parametrize("bit_order", ["msb", "lsb"])
def test_bit_order_round_trip(bit_order):
    lfq = LFQ(dim=10, bit_order=bit_order)
    indices = torch.randint(0, 2**10, (3, 4, 5))
    codes = lfq.indices_to_codes(indices)
    assert codes.shape == (3, 10, 4, 5) and set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(lfq.codes_to_indices(codes), indices)
    quant, again = lfq.eval()(codes)[:2]
    assert torch.equal(again, indices) and torch.equal(quant, codes)


def test_bit_orders_are_reversed_channels():
    codes = torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0, -1.0]).view(1, 6, 1, 1)
    assert LFQ(dim=6, bit_order="msb").codes_to_indices(codes).item() == 32
    assert LFQ(dim=6, bit_order="lsb").codes_to_indices(codes).item() == 1


def test_eval_mode_has_zero_entropy_terms():
    z = torch.randn(2, 8, 3, 3)
    out = LFQ(dim=8).eval()(z)
    assert set(out.terms) == {"commit_loss"}  # no entropy in eval mode, as the reference
    torch.testing.assert_close(out.loss, 0.25 * out.terms["commit_loss"])
    terms = LFQ(dim=8).train()(z).terms
    assert terms["per_sample_entropy"] > 0 and terms["codebook_entropy"] > 0 and terms["entropy_loss"] != 0


def test_weights_combine_the_terms():
    z = torch.randn(2, 8, 3, 3)
    out = LFQ(dim=8, sample_minimization_weight=0.5, batch_maximization_weight=2.0, entropy_loss_weight=0.1,
              commitment_weight=0.25).train()(z)
    t = out.terms
    torch.testing.assert_close(t["entropy_loss"], 0.5 * t["per_sample_entropy"] - 2.0 * t["codebook_entropy"])
    torch.testing.assert_close(out.loss, 0.1 * t["entropy_loss"] + 0.25 * t["commit_loss"])
    torch.testing.assert_close(t["commit_loss"], (z - z.sign()).square().mean())


def test_quantizer_runs_in_float32_under_autocast():
    z = torch.randn(2, 8, 4, 4)
    ref = LFQ(dim=8).train()(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LFQ(dim=8).train()(z.bfloat16())
    assert out.quantized.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and all(t.dtype == torch.float32 for t in out.terms.values())
    torch.testing.assert_close(out.terms["codebook_entropy"], ref.terms["codebook_entropy"], rtol=2e-2, atol=0)


def test_one_dimensional_token_sequences():
    z = torch.randn(2, 6, 5)  # B x d x N
    out = LFQ(dim=6, bit_order="lsb").train()(z)
    assert out.indices.shape == (2, 5)
    torch.testing.assert_close(LFQ(dim=6, bit_order="lsb").indices_to_codes(out.indices), z.sign())


def test_constructor_errors():
    with pytest.raises(ValueError, match="power of two"):
        LFQ(codebook_size=1000)
    with pytest.raises(ValueError, match="does not match dim"):
        LFQ(dim=10, codebook_size=2**12)
    with pytest.raises(ValueError, match="bit_order"):
        LFQ(dim=4, bit_order="big")
    with pytest.raises(ValueError, match="B x 4 x h x w"):
        LFQ(dim=4)(torch.randn(1, 5, 2, 2))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        LFQ(dim=4).indices_to_codes(torch.tensor([[[16]]]))


def test_all_codes_oracle_is_the_full_codebook():
    codes = all_codes(5)
    assert codes.shape == (32, 5) and len({tuple(c) for c in codes.tolist()}) == 32


# --------------------------------------------------------------------- entropy_sync across processes


def _sync_worker(rank, world, d, result_path):
    z = latent_tokens(40, d, seed=1)  # same global tokens on every rank; each takes its shard
    sizes = [15, 25]  # unequal shards: the sync must weight by token count
    shard = z[sum(sizes[:rank]):sum(sizes[:rank + 1])].clone().requires_grad_(True)
    h = codebook_entropy(shard, 0.1, 1e-5, sync=True)
    h.backward()
    torch.save({"h": h.detach(), "grad": shard.grad}, f"{result_path}.{rank}")


def test_entropy_sync_equals_entropy_of_all_tokens(tmp_path):
    from helpers import spawn_gloo

    d = 6
    spawn_gloo(_sync_worker, d, str(tmp_path / "r"))
    results = [torch.load(f"{tmp_path / 'r'}.{r}", weights_only=True) for r in range(2)]
    z = latent_tokens(40, d, seed=1).requires_grad_(True)
    h = codebook_entropy(z, 0.1, 1e-5)
    (grad,) = torch.autograd.grad(h, z)
    for r in results:
        torch.testing.assert_close(r["h"], h.detach())
    # Each rank's gradient is the world-size multiple of its share, so DDP's gradient averaging yields
    # the gradient of the global entropy.
    torch.testing.assert_close(torch.cat([r["grad"] for r in results]) / 2, grad)


def test_index_range_check_does_not_synchronise_on_accelerators():
    """Off the CPU the range check is an asynchronous device assertion: on the meta device any read of a value
    back to the host would raise, so these calls prove the hot path (one call per generated token) never syncs."""
    from taming.modules.quantizers import VectorQuantizer

    indices = torch.zeros(2, 4, 4, dtype=torch.long, device="meta")
    assert LFQ(dim=6).to("meta").indices_to_codes(indices).shape == (2, 6, 4, 4)
    assert VectorQuantizer(16, 4).to("meta").indices_to_codes(indices).shape == (2, 4, 4, 4)
    with pytest.raises(ValueError, match=r"\[0, 16\).*\[-1, 3\]"):  # the CPU keeps the eager, explicit error
        VectorQuantizer(16, 4).indices_to_codes(torch.tensor([[-1, 3]]))

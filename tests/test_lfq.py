"""LFQ: sign quantization, bit orders, and the exact entropy terms against the fixture and brute force."""
import os

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
    lfq = LFQ(dim=18, codebook_size=2**18).train()
    quant, aux, indices, parts = lfq(ref["latent"], return_loss_breakdown=True)
    for name in ("per_sample_entropy", "codebook_entropy", "commitment"):
        torch.testing.assert_close(getattr(parts, name), ref[name], rtol=1e-6, atol=0)
    torch.testing.assert_close(aux, ref["entropy_aux_loss"], rtol=1e-6, atol=0)
    assert indices.shape == (2, 6, 8) and indices.dtype == torch.int64
    assert torch.equal(indices.flatten(), ref["indices"])  # v1: channel 0 is the most significant bit


def test_matches_reference_fixture_in_float32(reference_dir):
    ref = torch.load(reference_dir / "entropy_a.pt", weights_only=True)
    _, aux, _, parts = LFQ(dim=18).train()(ref["latent"].float(), return_loss_breakdown=True)
    torch.testing.assert_close(parts.codebook_entropy.double(), ref["codebook_entropy"], rtol=1e-6, atol=0)
    torch.testing.assert_close(aux.double(), ref["entropy_aux_loss"], rtol=1e-6, atol=0)


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
    LFQ(dim=30, codebook_entropy_mode="group_marginals").train()(torch.randn(1, 30, 2, 2))


def test_too_many_bits_for_exact_entropy_is_a_clear_error():
    with pytest.raises(ValueError, match="group_marginals"):
        LFQ(dim=26)
    LFQ(dim=24).train()(torch.randn(1, 24, 2, 2))  # largest exact size works


def test_sign_quantization_and_straight_through():
    lfq = LFQ(dim=4).train()
    z = torch.tensor([0.5, -0.2, 0.0, 3.0]).view(1, 4, 1, 1).requires_grad_(True)
    quant, _, indices = lfq(z)
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
    quant, _, again = lfq.eval()(codes)
    assert torch.equal(again, indices) and torch.equal(quant, codes)


def test_bit_orders_are_reversed_channels():
    codes = torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0, -1.0]).view(1, 6, 1, 1)
    assert LFQ(dim=6, bit_order="msb").codes_to_indices(codes).item() == 32
    assert LFQ(dim=6, bit_order="lsb").codes_to_indices(codes).item() == 1


def test_eval_mode_has_zero_entropy_terms():
    z = torch.randn(2, 8, 3, 3)
    _, aux, _, parts = LFQ(dim=8).eval()(z, return_loss_breakdown=True)
    assert aux == 0 and parts.per_sample_entropy == 0 and parts.codebook_entropy == 0
    _, aux, _, parts = LFQ(dim=8).train()(z, return_loss_breakdown=True)
    assert parts.per_sample_entropy > 0 and parts.codebook_entropy > 0 and aux != 0


def test_weights_combine_the_terms():
    z = torch.randn(2, 8, 3, 3)
    _, aux, _, p = LFQ(dim=8, sample_minimization_weight=0.5, batch_maximization_weight=2.0).train()(z, True)
    torch.testing.assert_close(aux, 0.5 * p.per_sample_entropy - 2.0 * p.codebook_entropy)


def test_quantizer_runs_in_float32_under_autocast():
    z = torch.randn(2, 8, 4, 4)
    ref = LFQ(dim=8).train()(z, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LFQ(dim=8).train()(z.bfloat16(), True)
    assert out[0].dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in out[3])
    torch.testing.assert_close(out[3].codebook_entropy, ref[3].codebook_entropy, rtol=2e-2, atol=0)


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


def _sync_worker(rank, world, port, d, result_path):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    z = latent_tokens(40, d, seed=1)  # same global tokens on every rank; each takes its shard
    sizes = [15, 25]  # unequal shards: the sync must weight by token count
    shard = z[sum(sizes[:rank]):sum(sizes[:rank + 1])].clone().requires_grad_(True)
    h = codebook_entropy(shard, 0.1, 1e-5, sync=True)
    h.backward()
    torch.save({"h": h.detach(), "grad": shard.grad}, f"{result_path}.{rank}")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_entropy_sync_equals_entropy_of_all_tokens(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = 6
    mp.spawn(_sync_worker, args=(2, port, d, str(tmp_path / "r")), nprocs=2, join=True)
    results = [torch.load(f"{tmp_path / 'r'}.{r}", weights_only=True) for r in range(2)]
    z = latent_tokens(40, d, seed=1).requires_grad_(True)
    h = codebook_entropy(z, 0.1, 1e-5)
    (grad,) = torch.autograd.grad(h, z)
    for r in results:
        torch.testing.assert_close(r["h"], h.detach())
    # Each rank's gradient is the world-size multiple of its share, so DDP's gradient averaging yields
    # the gradient of the global entropy.
    torch.testing.assert_close(torch.cat([r["grad"] for r in results]) / 2, grad)

"""Sampling functions against brute-force definitions at small sizes."""
import math

import pytest
import torch

from taming.modules.transformer.sampling import (cfg_combine, cfg_scale_at, check_sampling, sample_logits,
                                                 top_k_filter, top_p_filter)


def brute_top_k(row, k):
    """Keep token i when fewer than k tokens have a strictly larger logit."""
    return [sum(other > value for other in row) < k for value in row]


def brute_top_p(row, p):
    """Walk tokens from most to least probable, keeping each while the mass already kept is <= p (first kept)."""
    probs = torch.tensor(row, dtype=torch.float64).softmax(0).tolist()
    keep, mass = [False] * len(row), 0.0
    for i in sorted(range(len(row)), key=lambda i: -row[i]):
        if mass > p:
            break
        keep[i], mass = True, mass + probs[i]
    return keep


def test_top_k_matches_brute_force_with_ties():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(-3, 4, (20, 9), generator=gen).float()  # many ties
    for k in range(1, 10):
        kept = top_k_filter(logits, k) > float("-inf")
        assert kept.tolist() == [brute_top_k(row, k) for row in logits.tolist()], k
        assert (kept.sum(-1) >= k).all()
    assert torch.equal(top_k_filter(logits, 0), logits)
    assert torch.equal(top_k_filter(logits, 50), logits)
    kept_logits = top_k_filter(logits, 3)
    assert torch.equal(kept_logits[kept_logits > float("-inf")], logits[kept_logits > float("-inf")])


@pytest.mark.parametrize("p", [1e-6, 0.1, 0.5, 0.8, 0.95, 0.999])
def test_top_p_matches_brute_force(p):
    gen = torch.Generator().manual_seed(1)
    logits = 2 * torch.randn(50, 12, generator=gen)
    kept = top_p_filter(logits, p) > float("-inf")
    for row, got in zip(logits.tolist(), kept.tolist()):
        probs = sorted(torch.tensor(row, dtype=torch.float64).softmax(0).tolist(), reverse=True)
        cumulative = torch.tensor(probs).cumsum(0)
        if (cumulative - p).abs().min() < 1e-6:  # float32 vs float64 may disagree at the boundary
            continue
        assert got == brute_top_p(row, p)
    assert (kept.sum(-1) >= 1).all()
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_top_p_known_probabilities():
    logits = torch.tensor([[0.5, 0.25, 0.15, 0.1]]).log()
    assert (top_p_filter(logits, 0.7) > float("-inf")).tolist() == [[True, True, False, False]]
    assert (top_p_filter(logits, 0.45) > float("-inf")).tolist() == [[True, False, False, False]]
    assert (top_p_filter(logits, 0.85) > float("-inf")).tolist() == [[True, True, True, False]]


def test_cfg_combine_closed_form():
    cond, uncond = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(cfg_combine(cond, uncond, 3.0), torch.tensor([[4.0, -5.0, 1.5]]), atol=0, rtol=0)
    assert torch.equal(cfg_combine(cond, uncond, 1.0), cond)
    assert torch.equal(cfg_combine(cond, uncond, 0.0), uncond)


def test_cfg_schedules_follow_gigatok():
    n, s = 11, 3.0  # decode steps 1..10 have ratios 0.1 .. 1.0
    assert [cfg_scale_at(t, n, s) for t in range(n)] == [s] * n
    linear = [cfg_scale_at(t, n, s, "linear") for t in range(n)]
    assert linear[0] == s
    assert linear[1:] == pytest.approx([1 + 2 * t / 10 + 1e-4 for t in range(1, n)], abs=1e-12)
    step = [cfg_scale_at(t, n, s, "step", start_ratio=0.35) for t in range(n)]
    assert step == [s] + [1 + 1e-4] * 3 + [s] * 7
    assert [cfg_scale_at(t, n, 1.0, "step", start_ratio=0.35) for t in range(n)] == [1.0] * n
    with pytest.raises(ValueError, match="cfg_schedule must be one of"):
        cfg_scale_at(1, n, s, "cosine")


def reference_distribution(logits, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The sampling distribution from its definition, with plain Python over the sorted tokens: softmax at the
    temperature over the k most likely tokens (all for k = 0), then the most likely of those, in order, while the
    renormalised mass of the tokens ranked above stays <= p (the most likely is always kept)."""
    scaled = [v / temperature for v in logits.tolist()]
    order = sorted(range(len(scaled)), key=lambda i: -scaled[i])
    kept = order[:top_k] if top_k else order
    weights = {i: math.exp(scaled[i]) for i in kept}
    total = sum(weights.values())
    nucleus, mass_above = [], 0.0
    for i in kept:
        if nucleus and mass_above > top_p:
            break
        nucleus.append(i)
        mass_above += weights[i] / total
    norm = sum(weights[i] for i in nucleus)
    return torch.tensor([weights[i] / norm if i in nucleus else 0.0 for i in range(len(scaled))])


def test_sample_logits_distribution_and_generator():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 3.0])
    rows = logits.expand(40000, -1)
    cases = ((1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 3, 1.0), (1.0, 0, 0.8), (1.5, 4, 0.7), (0.7, 2, 0.95))
    for temperature, top_k, top_p in cases:  # the last two: top-k and top-p together
        draws = sample_logits(rows, temperature, top_k, top_p, torch.Generator().manual_seed(3))
        expected = reference_distribution(logits, temperature, top_k, top_p)
        freq = torch.bincount(draws, minlength=6).float() / len(draws)
        torch.testing.assert_close(freq, expected, atol=0.012, rtol=0)  # > 4 standard errors
        assert (freq[expected == 0] == 0).all()
    a = sample_logits(rows[:50], generator=torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # the global RNG is not used when a generator is given
    assert torch.equal(a, sample_logits(rows[:50], generator=torch.Generator().manual_seed(5)))
    assert torch.equal(sample_logits(rows[:4], top_k=1), torch.full((4,), 5))
    assert torch.equal(sample_logits(rows[:4], temperature=0.0), torch.full((4,), 5))  # near-greedy
    assert a.dtype == torch.int64


def test_check_sampling_errors():
    check_sampling(0.0, 0, 1.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        check_sampling(float("nan"), 0, 1.0)
    with pytest.raises(ValueError, match="top_k must be an integer >= 0"):
        check_sampling(1.0, -1, 1.0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        check_sampling(1.0, 0, 1.5)

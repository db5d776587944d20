"""AR generators: reference fixtures (LlamaGen c2i, Open-MAGVIT2 AR), full-size manifests, an independent float64
re-computation, the KV cache against full recomputation, and checkpoint loading."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from taming.generator import build_generator, load_generator
from taming.modules.component import component_config, instantiate
from taming.modules.ema import shadow_name
from taming.modules.transformer import FactorizedGPT, GPT
from taming.modules.transformer.rope import rope_2d

LLAMAGEN_SIZES = {"B": "GPT-B", "L": "GPT-L", "XL": "GPT-XL", "XXL": "GPT-XXL", "3B": "GPT-3B"}
OM2_SIZES = {"B": "OM2-AR-B", "L": "OM2-AR-L", "XL": "OM2-AR-XL"}


def randomize(model, seed=0):
    """Random weights like the fixtures' (heads are zero after init, which would make every test trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            scale = 0.3 if "emb" in name or name.startswith(("output", "head")) else 0.1
            p.copy_(1 + 0.1 * noise if name.endswith("norm.weight") else scale * noise)
    return model.eval()


def tiny_gpt(**kw):
    args = dict(vocab_size=64, num_tokens=16, dim=32, n_layer=2, n_head=4, num_classes=5)
    return randomize(GPT(**{**args, **kw}))


def tiny_factorized(**kw):
    args = dict(num_tokens=16, dim=32, n_layer=2, n_intra_layer=2, n_head=4, factorized_bits=(3, 5), num_classes=5)
    return randomize(FactorizedGPT(**{**args, **kw}))


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def random_tokens(model, batch=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, model.codebook_size, (batch, model.num_tokens), generator=gen),
            torch.randint(0, model.num_classes + 1, (batch,), generator=gen))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llamagen(reference_dir):
    expected = torch.load(reference_dir / "llamagen_gpt_tiny_expected.pt", weights_only=True)
    return load_generator(reference_dir / "llamagen_gpt_tiny.pt", config=expected["model_args"]), expected


@pytest.fixture(scope="module")
def om2(reference_dir):
    expected = torch.load(reference_dir / "om2_ar_tiny_expected.pt", weights_only=True)
    return load_generator(reference_dir / "om2_ar_tiny.ckpt", config=expected["config"]), expected


# ------------------------------------------------------------------------------------------ reference fixtures


def test_llamagen_teacher_forcing_matches_reference(llamagen):
    model, e = llamagen
    assert isinstance(model, GPT) and not model.training
    logits = model.logits(e["tf_tokens"], e["tf_labels"])
    assert logits.shape == e["tf_logits"].shape and logits.dtype == torch.float32
    torch.testing.assert_close(logits, e["tf_logits"], atol=1e-5, rtol=0)
    last = model.hidden_states(e["tf_tokens"], e["tf_labels"], layer=2)
    torch.testing.assert_close(last, e["tf_last_layer_out"], atol=1e-5, rtol=0)
    loss, terms = model.loss(e["tf_tokens"], e["tf_labels"])  # eval mode: no dropout, as the reference run
    assert loss.item() == pytest.approx(e["tf_loss"], rel=1e-5)
    assert terms["accuracy"] == (e["tf_logits"].argmax(-1) == e["tf_tokens"]).float().mean()
    grid = e["tf_tokens"].view(3, 8, 8)  # a B x h x w raster is read row-major
    torch.testing.assert_close(model.logits(grid, e["tf_labels"]), logits, atol=0, rtol=0)


def test_llamagen_greedy_generation_matches_reference(llamagen):
    model, e = llamagen
    tokens, logits = model.generate(e["gen_labels"], cfg_scale=e["gen_cfg_scale"], temperature=e["gen_temperature"],
                                    top_k=e["gen_top_k"], top_p=e["gen_top_p"], return_logits=True)
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 64)
    assert torch.equal(tokens, e["gen_tokens"])
    torch.testing.assert_close(logits, e["gen_logits"], atol=5e-5, rtol=0)


def test_om2_teacher_forcing_matches_reference(om2):
    model, e = om2
    assert isinstance(model, FactorizedGPT) and model.codebook_size == 2**18 and model.null_class == 10
    # v2 LSB-first codes: index = sum_c bit_c 2^c with bit_c = channel c > 0; pre = channels 0-5, post = 6-17
    weights = 2 ** torch.arange(18)
    index = ((e["tf_codes_pm1"] > 0).long() * weights[None, :, None, None]).sum(1).flatten(1)
    assert torch.equal(index, e["tf_indices"])
    pre, post = model.split(e["tf_indices"])
    assert torch.equal(pre, e["tf_pre"]) and torch.equal(post, e["tf_post"])

    logits_pre, logits_post = model.logits(e["tf_indices"], e["tf_labels"])
    torch.testing.assert_close(logits_pre, e["tf_logits_pre"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits_post, e["tf_logits_post"], atol=1e-5, rtol=0)
    spatial = model.hidden_states(e["tf_indices"], e["tf_labels"], layer=2)
    torch.testing.assert_close(spatial, e["tf_spatial_out"], atol=1e-5, rtol=0)
    with torch.no_grad():
        intra = model._intra(spatial, model.pre_emb(e["tf_pre"]))
    torch.testing.assert_close(intra.reshape(-1, 2, 64), e["tf_intra_out"], atol=1e-5, rtol=0)
    loss, terms = model.loss(e["tf_indices"], e["tf_labels"])
    assert terms["loss_pre"].item() == pytest.approx(e["tf_loss_pre"], rel=1e-5)
    assert terms["loss_post"].item() == pytest.approx(e["tf_loss_post"], rel=1e-5)
    assert loss.item() == pytest.approx(e["tf_loss_pre"] + e["tf_loss_post"], rel=1e-5)


def test_om2_greedy_generation_matches_reference(om2):
    model, e = om2
    tokens, (logits_pre, logits_post) = model.generate(
        e["gen_labels"], cfg_scale=e["gen_cfg_scale"], temperature=e["gen_temperature"], top_k=e["gen_top_k"],
        top_p=e["gen_top_p"], return_logits=True)
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, e["gen_indices"])
    assert torch.equal(tokens, e["gen_pre"] + 64 * e["gen_post"])
    torch.testing.assert_close(logits_pre, e["gen_logits_pre"], atol=5e-5, rtol=0)
    values, indices = logits_post.topk(8, dim=-1)
    assert torch.equal(indices, e["gen_logits_post_top8_indices"])
    torch.testing.assert_close(values, e["gen_logits_post_top8_values"], atol=5e-5, rtol=0)


# ------------------------------------------------------------------------------------------ full-size presets


def _manifest(reference_dir, name):
    with open(reference_dir / f"{name}_state_dict_manifest.json") as f:
        return json.load(f)


@pytest.mark.parametrize("size", sorted(LLAMAGEN_SIZES))
def test_llamagen_presets_match_manifests(reference_dir, size):
    manifest = _manifest(reference_dir, f"llamagen_GPT_{size}_c2i")
    args = manifest["model_args"]
    with torch.device("meta"):
        model = build_generator(LLAMAGEN_SIZES[size], vocab_size=args["vocab_size"], num_tokens=args["block_size"],
                                num_classes=args["num_classes"])
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_numel"]
    assert model.layers[0].feed_forward.w1.out_features == args["ffn_hidden"]


@pytest.mark.parametrize("size", sorted(OM2_SIZES))
def test_om2_presets_match_manifests(reference_dir, size):
    manifest = _manifest(reference_dir, f"om2_ar_{size}")
    with torch.device("meta"):
        model = build_generator(OM2_SIZES[size], num_tokens=manifest["transformer_params"]["block_size"])
    expected = {k[len("transformer."):]: v for k, v in manifest["state_dict"].items() if k.startswith("transformer.")}
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected
    assert sum(p.numel() for p in model.parameters()) == manifest["transformer_numel"]


def test_build_generator_rejects_unknown_size():
    with pytest.raises(ValueError, match="unknown generator size 'GPT-Q'.*GPT-B"):
        build_generator("GPT-Q")


def test_init_zeroes_heads_and_draws_weights_at_std():
    torch.manual_seed(0)
    model = GPT(vocab_size=64, num_tokens=16, dim=128, n_layer=2, n_head=4, num_classes=5,
                positions="learned", initializer_range=0.05)
    assert torch.count_nonzero(model.output.weight) == 0
    assert model.layers[0].attention.wqkv.weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert model.tok_embeddings.weight.std().item() == pytest.approx(0.05, rel=0.1)
    assert model.positional_embedding.std().item() == pytest.approx(128**-0.5, rel=0.1)
    assert torch.equal(model.norm.weight, torch.ones(128))
    factorized = FactorizedGPT(num_tokens=16, dim=32, n_layer=1, n_intra_layer=1, n_head=4, factorized_bits=(2, 3))
    assert all(torch.count_nonzero(h.weight) == 0 for h in factorized.head)


# ------------------------------------------------------------------------------------------ independent oracle


def naive_logits(model: GPT, tokens, labels):
    """Float64 teacher-forced logits from the weights with explicit formulas: RoPE as complex rotations of
    channel pairs, attention with an explicit causal mask, SwiGLU; no code shared with the model."""
    w = {k: v.double() for k, v in model.state_dict().items()}
    n_head, dim = model.layers[0].attention.n_head, model.tok_embeddings.embedding_dim
    hd, (batch, n) = dim // n_head, tokens.shape
    x = torch.cat([w["cls_embedding.embedding_table.weight"][labels][:, None],
                   w["tok_embeddings.weight"][tokens[:, :-1]]], 1)
    if model.positional_embedding is not None:
        x = x + w["positional_embedding"][:n]  # rows 0 .. N-1; the last row is never used (as in GigaTok)
    rotation = None
    if model.grid is not None:
        rotation = torch.ones(n, hd // 2, dtype=torch.complex128)
        for t in range(n):
            if t == 0:
                rotation[t] = 0 if model.class_rope == "zero" else 1
                continue
            i, j = divmod(t - 1, model.grid)
            for k in range(hd // 2):
                coord, m = (i, k) if k < hd // 4 else (j, k - hd // 4)
                angle = coord * 10000 ** (-4 * m / hd)
                rotation[t, k] = complex(math.cos(angle), math.sin(angle))

    def rms(v, weight):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + 1e-5) * weight

    def rotate(v):  # batch x n x heads x hd
        c = torch.view_as_complex(v.reshape(*v.shape[:-1], hd // 2, 2).contiguous()) * rotation[None, :, None]
        return torch.view_as_real(c).reshape(v.shape)

    future = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    for layer in range(len(model.layers)):
        p = f"layers.{layer}."
        q, k, v = (rms(x, w[p + "attention_norm.weight"]) @ w[p + "attention.wqkv.weight"].T).split(dim, -1)
        q, k, v = (t.reshape(batch, n, n_head, hd) for t in (q, k, v))
        if rotation is not None:
            q, k = rotate(q), rotate(k)
        scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(hd)
        attn = scores.masked_fill(future, float("-inf")).softmax(-1)
        x = x + torch.einsum("bhts,bshd->bthd", attn, v).reshape(batch, n, dim) @ w[p + "attention.wo.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        gated = F.silu(h @ w[p + "feed_forward.w1.weight"].T) * (h @ w[p + "feed_forward.w3.weight"].T)
        x = x + gated @ w[p + "feed_forward.w2.weight"].T
    return rms(x, w["norm.weight"]) @ w["output.weight"].T


@pytest.mark.parametrize("kw", [dict(), dict(class_rope="identity"), dict(positions="learned"),
                                dict(positions="learned", num_tokens=7)])
def test_gpt_matches_independent_float64_computation(kw):
    model = tiny_gpt(**kw)
    tokens, labels = random_tokens(model)
    torch.testing.assert_close(model.logits(tokens, labels).double(), naive_logits(model, tokens, labels),
                               atol=2e-5, rtol=1e-5)


def test_class_rope_identity_differs_from_zero_only_where_it_should():
    positions = torch.arange(17)
    zero, identity = rope_2d(positions, 4, 8, class_rope="zero"), rope_2d(positions, 4, 8, class_rope="identity")
    assert torch.equal(zero[1:], identity[1:])
    assert torch.equal(zero[0], torch.zeros(4, 2)) and torch.equal(identity[0], torch.tensor([[1.0, 0.0]] * 4))
    assert torch.equal(identity[1], identity[0])  # cell (0, 0) is the identity rotation too

    # The class position attends only to itself, so its output does not depend on the class rotation; every
    # later position's attention score to the class key does.
    gpt_zero, gpt_identity = tiny_gpt(), tiny_gpt(class_rope="identity")
    tokens, labels = random_tokens(gpt_zero)
    a, b = gpt_zero.logits(tokens, labels), gpt_identity.logits(tokens, labels)
    assert torch.equal(a[:, 0], b[:, 0])
    assert (a[:, 1:] - b[:, 1:]).abs().amax(-1).min() > 1e-4

    # Intra transformer: element 0 (pre head) sees only itself; element 1 (post head) also sees element 0.
    fac_zero, fac_identity = tiny_factorized(), tiny_factorized(class_rope="identity")
    tokens, labels = random_tokens(fac_zero)
    (pre_a, post_a), (pre_b, post_b) = fac_zero.logits(tokens, labels), fac_identity.logits(tokens, labels)
    assert torch.equal(pre_a[:, 0], pre_b[:, 0])
    assert (post_a[:, 0] - post_b[:, 0]).abs().amax(-1).min() > 1e-4
    assert (pre_a[:, 1:] - pre_b[:, 1:]).abs().amax(-1).min() > 1e-4


def test_learned_positions_use_gigatok_names_and_class_row():
    model = tiny_gpt(positions="learned", num_tokens=10)
    assert model.state_dict()["positional_embedding"].shape == (11, 32)
    assert model.grid is None
    tokens, labels = random_tokens(model)
    emb = model.hidden_states(tokens, labels, layer=0)
    expected = torch.cat([model.cls_embedding.embedding_table.weight[labels][:, None],
                          model.tok_embeddings.weight[tokens[:, :-1]]], 1) + model.positional_embedding[:10]
    torch.testing.assert_close(emb, expected, atol=0, rtol=0)


def test_hidden_states_layers():
    model = tiny_gpt()
    tokens, labels = random_tokens(model)
    null = torch.full_like(labels, model.null_class)
    emb = model.hidden_states(tokens, null, layer=0)
    assert torch.equal(emb[:, 0], model.cls_embedding.embedding_table.weight[model.null_class].expand(3, -1))
    assert torch.equal(emb[:, 1:], model.tok_embeddings.weight[tokens[:, :-1]])
    with torch.no_grad():
        first = model.layers[0](emb, rope_2d(torch.arange(16), 4, 8))
    torch.testing.assert_close(model.hidden_states(tokens, null, layer=1), first, atol=0, rtol=0)
    last = model.hidden_states(tokens, null, layer=2)
    with torch.no_grad():
        torch.testing.assert_close(model.output(model.norm(last)), model.logits(tokens, null), atol=1e-6, rtol=0)
    for bad in (-1, 3, 1.0):
        with pytest.raises(ValueError, match=r"layer must be an integer in \[0, 2\]"):
            model.hidden_states(tokens, null, layer=bad)


# ------------------------------------------------------------------------------------------ training mode, loss


def test_class_dropout_replaces_labels_by_null_in_train_mode_only():
    kw = dict(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
    for always in (tiny_gpt(class_dropout_prob=1.0, **kw), tiny_factorized(class_dropout_prob=1.0, **kw)):
        tokens, labels = random_tokens(always)
        null = torch.full_like(labels, always.null_class)
        train_out = always.train()(tokens, labels)
        eval_null, eval_labels = always.logits(tokens, null), always.logits(tokens, labels)
        assert always.training  # logits() restored the mode
        for a, b, c in zip(*map(as_tuple, (train_out, eval_null, eval_labels))):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
            assert not torch.allclose(a, c, atol=1e-4)
    never = tiny_gpt(class_dropout_prob=0.0, **kw)
    tokens, labels = random_tokens(never)
    torch.testing.assert_close(never.train()(tokens, labels), never.logits(tokens, labels), atol=1e-6, rtol=0)


def test_dropout_active_in_train_mode_and_loss_has_gradients():
    model = tiny_gpt(class_dropout_prob=0.0).train()
    tokens, labels = random_tokens(model)
    assert not torch.allclose(model(tokens, labels), model(tokens, labels))
    loss, terms = model.loss(tokens, labels)
    loss.backward()
    assert model.output.weight.grad is not None and not terms["loss"].requires_grad


def test_losses_equal_cross_entropy_by_hand():
    gpt = tiny_gpt()
    tokens, labels = random_tokens(gpt)
    logits = gpt.logits(tokens, labels)
    loss, terms = gpt.eval().loss(tokens, labels)
    log_p = logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    assert loss.item() == pytest.approx(-log_p.mean().item(), rel=1e-6)
    assert terms["accuracy"] == (logits.argmax(-1) == tokens).float().mean()

    fac = tiny_factorized()
    tokens, labels = random_tokens(fac)
    pre, post = tokens & 7, tokens >> 3
    logits_pre, logits_post = fac.logits(tokens, labels)
    loss, terms = fac.eval().loss(tokens, labels)
    ce_pre = -logits_pre.log_softmax(-1).gather(-1, pre[..., None]).mean()
    ce_post = -logits_post.log_softmax(-1).gather(-1, post[..., None]).mean()
    assert terms["loss_pre"].item() == pytest.approx(ce_pre.item(), rel=1e-6)
    assert terms["loss_post"].item() == pytest.approx(ce_post.item(), rel=1e-6)
    assert loss.item() == pytest.approx((ce_pre + ce_post).item(), rel=1e-6)
    right_pre, right_post = logits_pre.argmax(-1) == pre, logits_post.argmax(-1) == post
    assert terms["accuracy_pre"] == right_pre.float().mean()
    assert terms["accuracy"] == (right_pre & right_post).float().mean()


# ------------------------------------------------------------------------------------------ KV cache


@pytest.mark.parametrize("make", [tiny_gpt, lambda: tiny_gpt(num_tokens=9), lambda: tiny_gpt(positions="learned"),
                                  tiny_factorized], ids=["rope2d", "rope2d-3x3", "learned", "factorized"])
@pytest.mark.parametrize("settings", [
    dict(cfg_scale=1.0),
    dict(cfg_scale=3.0, temperature=0.8, top_k=5),
    dict(cfg_scale=2.0, top_p=0.9, cfg_schedule="linear"),
    dict(cfg_scale=4.0, temperature=1.3, cfg_schedule="step", cfg_start_ratio=0.5),
], ids=["plain", "cfg-topk", "cfg-topp-linear", "cfg-step"])
def test_kv_cache_generation_equals_full_recomputation(make, settings):
    model = make()
    labels = torch.tensor([0, 3, model.null_class])
    runs = [model.generate(labels, generator=torch.Generator().manual_seed(7), use_cache=cache, return_logits=True,
                           **settings) for cache in (True, False)]
    (tokens, logits), (tokens_ref, logits_ref) = runs
    assert torch.equal(tokens, tokens_ref)
    for a, b in zip(as_tuple(logits), as_tuple(logits_ref)):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=0)  # guidance at scale s magnifies rounding by 2s - 1
    assert 0 <= tokens.min() and tokens.max() < model.codebook_size


@pytest.mark.parametrize("schedule", ["constant", "linear", "step"])
def test_generate_guides_each_step_with_the_scheduled_scale(schedule):
    """Oracle: teacher-forced logits of the generated tokens with the labels and with the null class."""
    model, n, s = tiny_gpt(), 16, 3.0
    labels = torch.tensor([1, 4])
    tokens, guided = model.generate(labels, cfg_scale=s, cfg_schedule=schedule, cfg_start_ratio=0.4,
                                    generator=torch.Generator().manual_seed(0), return_logits=True)
    cond, uncond = model.logits(tokens, labels), model.logits(tokens, torch.full_like(labels, model.null_class))
    ratio = torch.arange(n) / (n - 1)
    scale = {"constant": torch.full((n,), s), "linear": 1 + (s - 1) * ratio + 1e-4,
             "step": torch.where(ratio >= 0.4, s, 1 + 1e-4)}[schedule]
    scale[0] = s  # the prefill always uses the full scale
    torch.testing.assert_close(guided, uncond + scale[None, :, None] * (cond - uncond), atol=5e-5, rtol=0)


def test_factorized_generate_applies_settings_per_subtoken():
    model = tiny_factorized()
    labels, null = torch.tensor([0, 2, 4]), torch.full((3,), 5)
    tokens, (guided_pre, guided_post) = model.generate(labels, cfg_scale=(2.0, 1.5), return_logits=True,
                                                       generator=torch.Generator().manual_seed(1))
    (cond_pre, cond_post), (unc_pre, unc_post) = model.logits(tokens, labels), model.logits(tokens, null)
    torch.testing.assert_close(guided_pre, unc_pre + 2.0 * (cond_pre - unc_pre), atol=5e-5, rtol=0)
    torch.testing.assert_close(guided_post, unc_post + 1.5 * (cond_post - unc_post), atol=5e-5, rtol=0)

    # A setting that makes one sub-token greedy must act on that sub-token only.
    for settings, greedy in ((dict(top_k=(1, 0)), 0), (dict(top_k=(0, 1)), 1), (dict(top_p=(1e-6, 1.0)), 0),
                             (dict(temperature=(5.0, 0.0)), 1)):
        tokens, guided = model.generate(labels, cfg_scale=(2.0, 1.5), return_logits=True,
                                        generator=torch.Generator().manual_seed(1), **settings)
        subtokens = model.split(tokens)
        assert torch.equal(subtokens[greedy], guided[greedy].argmax(-1)), settings
        assert not torch.equal(subtokens[1 - greedy], guided[1 - greedy].argmax(-1)), settings


@pytest.mark.parametrize("make", [tiny_gpt, tiny_factorized], ids=["gpt", "factorized"])
def test_guidance_scale_zero_samples_the_unconditional_model(make):
    model = make()
    labels = torch.tensor([0, 3])
    unconditional = model.generate(labels, cfg_scale=0.0, top_k=1)
    assert model.backbone_blocks[0].attention.kv_cache.k.shape[0] == 4  # [cond; null]
    null = model.generate(torch.full_like(labels, model.null_class), top_k=1)
    assert model.backbone_blocks[0].attention.kv_cache.k.shape[0] == 2  # scale 1: no doubled batch
    assert torch.equal(unconditional, null)
    assert not torch.equal(model.generate(labels, top_k=1), null)


def test_cache_is_kept_outside_the_state_dict_and_can_be_freed():
    model = tiny_gpt()
    keys = set(model.state_dict())
    model.generate([1, 2], cfg_scale=2.0)
    cache = model.layers[0].attention.kv_cache
    assert cache.k.shape == (4, 4, 16, 8) and set(model.state_dict()) == keys
    model.generate([3, 4], cfg_scale=1.5)
    assert model.layers[0].attention.kv_cache is cache  # same shape: reused
    model.free_cache()
    assert all(block.attention.kv_cache is None for block in model.layers)


# ------------------------------------------------------------------------------------------ input errors


def test_bad_inputs_have_clear_errors():
    model = tiny_gpt()
    tokens, labels = random_tokens(model)
    with pytest.raises(ValueError, match="expected 16 tokens per image"):
        model.logits(tokens[:, :15], labels)
    with pytest.raises(ValueError, match=r"token indices must be in \[0, 64\)"):
        model.logits(tokens + 64, labels)
    with pytest.raises(TypeError, match="integer tensor"):
        model.logits(tokens.float(), labels)
    with pytest.raises(ValueError, match="B x N, B x h x w or B x t x h x w.*tokens\\[None\\]"):
        model.logits(tokens[0], labels)
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 5\]"):
        model.logits(tokens, labels + 6)
    with pytest.raises(ValueError, match="got 2 class labels for a batch of 3"):
        model.logits(tokens, labels[:2])
    with pytest.raises(TypeError, match="class labels must be integers"):
        model.generate(["cat"])
    with pytest.raises(ValueError, match="class labels must be integers, shape"):
        model.generate(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="got no class labels"):
        model.generate([])
    with pytest.raises(ValueError, match="top_p must be in"):
        model.generate([1], top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        model.generate([1], temperature=-1)
    with pytest.raises(ValueError, match="top_k must be an integer"):
        model.generate([1], top_k=2.5)
    with pytest.raises(ValueError, match="cfg_schedule must be one of"):
        model.generate([1], cfg_scale=2.0, cfg_schedule="cosine")
    with pytest.raises(ValueError, match="cfg_scale must be a single number for this model"):
        model.generate([1], cfg_scale=(2.0, 1.5))
    with pytest.raises(ValueError, match="cfg_scale must be a number or 2 numbers"):
        tiny_factorized().generate([1], cfg_scale=(2.0, 1.5, 1.0))


def test_bad_constructor_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="square token grid"):
        GPT(num_tokens=10, dim=32, n_layer=1, n_head=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        GPT(num_tokens=16, dim=24, n_layer=1, n_head=4)
    with pytest.raises(ValueError, match="not divisible by n_head"):
        GPT(num_tokens=16, dim=30, n_layer=1, n_head=4)
    with pytest.raises(ValueError, match="class_rope must be one of"):
        GPT(num_tokens=16, dim=32, n_layer=1, n_head=4, class_rope="none")
    with pytest.raises(ValueError, match="positions must be one of"):
        GPT(num_tokens=16, dim=32, n_layer=1, n_head=4, positions="rope1d")
    with pytest.raises(ValueError, match="factorized_bits must be two positive integers"):
        FactorizedGPT(num_tokens=16, dim=32, n_layer=1, n_head=4, factorized_bits=(6, 6, 6))


# ------------------------------------------------------------------------------------------ loading


def test_component_config_round_trip():
    for model in (tiny_gpt(positions="learned", num_tokens=12), tiny_factorized(class_rope="identity")):
        rebuilt = instantiate(component_config(model))
        assert type(rebuilt) is type(model) and component_config(rebuilt) == component_config(model)
        shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in (rebuilt, model)]
        assert shapes[0] == shapes[1]


def test_om2_config_forms_load_the_same_model(om2, reference_dir, tmp_path):
    import yaml

    model, e = om2
    params = e["config"]["transformer_config"]["params"]
    yaml_path = tmp_path / "ar.yaml"
    yaml_path.write_text(yaml.safe_dump({"model": {"class_path": "src.Open_MAGVIT2.models.cond_transformer_gpt."
                                                                 "Net2NetTransformer", "init_args": e["config"]}}))
    expected = model.logits(e["tf_indices"], e["tf_labels"])[1]
    for config in (str(yaml_path), {"model": {"target": "x", "params": e["config"]}}, e["config"]["transformer_config"],
                   params, {**{k: v for k, v in params.items() if k != "dim"}, "size": "OM2-AR-B", "dim": 64}):
        loaded = load_generator(reference_dir / "om2_ar_tiny.ckpt", config=config)
        assert loaded.checkpoint_info["format"] == "open-magvit2"
        torch.testing.assert_close(loaded.logits(e["tf_indices"], e["tf_labels"])[1], expected, atol=0, rtol=0)


def test_llamagen_layouts_and_ema(llamagen, reference_dir, tmp_path):
    model, e = llamagen
    weights = torch.load(reference_dir / "llamagen_gpt_tiny.pt", weights_only=True)["model"]
    torch.save(weights, tmp_path / "bare.pt")  # FSDP-consolidated XXL / 3B layout
    bare = load_generator(tmp_path / "bare.pt", config={**e["config"], "size": "GPT-B"})  # config fields beat the size
    torch.testing.assert_close(bare.logits(e["tf_tokens"], e["tf_labels"]), e["tf_logits"], atol=1e-5, rtol=0)

    shadow = {k: v + 0.01 for k, v in weights.items()}
    torch.save({"model": weights, "ema": shadow, "steps": 3}, tmp_path / "with_ema.pt")
    used = load_generator(tmp_path / "with_ema.pt", config=e["config"])
    assert used.checkpoint_info["ema"] and torch.equal(used.norm.weight, shadow["norm.weight"])
    raw = load_generator(tmp_path / "with_ema.pt", config=e["config"], ema=False)
    assert not raw.checkpoint_info["ema"] and torch.equal(raw.norm.weight, weights["norm.weight"])
    with pytest.raises(ValueError, match="ema=True but .* has no 'ema' weights"):
        load_generator(reference_dir / "llamagen_gpt_tiny.pt", config=e["config"], ema=True)


def _project_checkpoint(model, path, ema_offset=None, class_path=None):
    state = {"generator." + k: v for k, v in model.state_dict().items()}
    state["tokenizer.encoder.conv_in.weight"] = torch.zeros(1)  # other modules of the LightningModule
    if ema_offset is not None:
        state.update({"model_ema." + shadow_name("generator." + k): v + ema_offset
                      for k, v in model.state_dict().items()})
        state["model_ema.decay"], state["model_ema.num_updates"] = torch.tensor(0.999), torch.tensor(5)
    spec = component_config(model)
    if class_path:
        spec["class_path"] = class_path
    torch.save({"state_dict": state, "hyper_parameters": {"generator": spec}, "global_step": 5}, path)


def test_project_checkpoints_load_with_and_without_ema(tmp_path):
    model = tiny_factorized()
    _project_checkpoint(model, tmp_path / "run.ckpt", ema_offset=0.5)
    loaded = load_generator(tmp_path / "run.ckpt")
    assert isinstance(loaded, FactorizedGPT) and loaded.checkpoint_info == {
        "path": str(tmp_path / "run.ckpt"), "format": "project", "ema": True, "global_step": 5}
    assert torch.equal(loaded.head[1].weight, model.head[1].weight + 0.5)
    raw = load_generator(tmp_path / "run.ckpt", ema=False)
    assert all(torch.equal(a, b) for a, b in zip(raw.state_dict().values(), model.state_dict().values()))

    _project_checkpoint(model, tmp_path / "plain.ckpt")
    assert not load_generator(tmp_path / "plain.ckpt").checkpoint_info["ema"]
    with pytest.raises(ValueError, match="ema=True but .* no model_ema.generator"):
        load_generator(tmp_path / "plain.ckpt", ema=True)
    wider = component_config(model)
    wider["init_args"]["dim"] = 64
    with pytest.raises(RuntimeError, match=r"wrong shape: pre_emb.weight \(8, 32\) vs \(8, 64\)"):
        load_generator(tmp_path / "plain.ckpt", config=wider)


def test_project_checkpoint_class_path_is_restricted(tmp_path):
    model = tiny_gpt()
    _project_checkpoint(model, tmp_path / "evil.ckpt", class_path="subprocess.Popen")
    with pytest.raises(ValueError, match="refusing class_path .subprocess.Popen."):
        load_generator(tmp_path / "evil.ckpt")
    _project_checkpoint(model, tmp_path / "other.ckpt", class_path="taming.modules.transformer.llama.RMSNorm")
    with pytest.raises(ValueError, match="refusing class_path .taming.modules.transformer.llama.RMSNorm."):
        load_generator(tmp_path / "other.ckpt")  # a class of this package, but not a registered component
    _project_checkpoint(model, tmp_path / "lfq.ckpt", class_path="taming.modules.quantizers.LFQ")
    with pytest.raises(ValueError, match="not a generator class"):
        load_generator(tmp_path / "lfq.ckpt")  # a registered component, but not a generator


def test_loading_errors(reference_dir, llamagen, tmp_path):
    _, e = llamagen
    ckpt = reference_dir / "llamagen_gpt_tiny.pt"
    with pytest.raises(ValueError, match="GigaTok checkpoint, which stores no architecture; pass config="):
        load_generator(ckpt)
    with pytest.raises(ValueError, match="released Open-MAGVIT2 AR checkpoint.*config="):
        load_generator(reference_dir / "om2_ar_tiny.ckpt")
    with pytest.raises(RuntimeError, match=r"wrong shape: tok_embeddings.weight \(256, 64\) vs \(512, 64\)"):
        load_generator(ckpt, config={**e["config"], "vocab_size": 512})
    with pytest.raises(RuntimeError, match="missing: layers.2.attention.wqkv.weight"):
        load_generator(ckpt, config={**e["config"], "n_layer": 3})
    with pytest.raises(ValueError, match=r"unknown config keys \['layers'\]"):
        load_generator(ckpt, config={**e["config"], "layers": 2})
    with pytest.raises(ValueError, match=r"missing \['block_size'\]"):
        load_generator(ckpt, config={k: v for k, v in e["config"].items() if k != "block_size"})
    with pytest.raises(ValueError, match=r"missing \['n_head'\]"):
        load_generator(ckpt, config={k: v for k, v in e["config"].items() if k != "n_head"})
    with pytest.raises(ValueError, match="cls_token_num=2 is not supported"):
        load_generator(ckpt, config={**e["config"], "cls_token_num": 2})
    with pytest.raises(ValueError, match="not the Open-MAGVIT2 GPT"):
        load_generator(reference_dir / "om2_ar_tiny.ckpt",
                       config={"target": "src.IBQ.modules.transformer.llama.GPT", "params": {"block_size": 16}})
    with pytest.raises(ValueError, match="no EMA weights"):
        load_generator(reference_dir / "om2_ar_tiny.ckpt", config={"block_size": 16}, ema=True)
    torch.save({"weights": {}}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"unrecognised checkpoint layout .*\['weights'\]"):
        load_generator(tmp_path / "odd.pt", config=e["config"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_generator(tmp_path / "absent.pt")

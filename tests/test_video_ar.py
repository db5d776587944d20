"""Class-conditional video generation: 3-D rotary positions (relative in t, h and w), video token folders, a GPT over
a clip's t x h x w tokens that trains, samples with the KV cache as without it, decodes to clips, and writes GIFs
through sample.py."""
import contextlib
import io
import math
from types import SimpleNamespace

import pytest
import torch

from taming.cli import encode_tokens
from taming.data import ImageDataModule
from taming.data.tokens import TokenDataset, TokenFolder
from taming.models.ar import ClassConditionalAR
from taming.modules.transformer import GPT
from taming.modules.transformer.rope import apply_rope, rope_2d, rope_grid
from taming.provenance import decode_tokens, load_recorded_tokenizer
from taming.released.open_magvit2_video import components
from taming.tokenizer import Tokenizer
from helpers import trainer

pytestmark = pytest.mark.usefixtures("one_thread")
GRID = (5, 8, 8)  # 9 frames of 16 x 16 with a (2, 2, 2) downsampling


def test_rope_3d_scores_depend_only_on_offsets():
    """<R(a) q, R(b) k> depends on the cell offset b - a per axis only; the 2-D table is the 3-D rule on two axes."""
    torch.manual_seed(0)
    shape, head_dim = (3, 4, 5), 12
    table = rope_grid(torch.arange(1 + math.prod(shape)), shape, head_dim)
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(a, b):  # cells as (t, i, j)
        pa, pb = 1 + (a[0] * 4 + a[1]) * 5 + a[2], 1 + (b[0] * 4 + b[1]) * 5 + b[2]
        rq = apply_rope(q.view(1, 1, 1, -1), table[pa:pa + 1])
        rk = apply_rope(k.view(1, 1, 1, -1), table[pb:pb + 1])
        return (rq * rk).sum().item()

    assert score((0, 0, 0), (1, 2, 3)) == pytest.approx(score((1, 1, 1), (2, 3, 4)), abs=1e-5)
    assert score((2, 3, 0), (0, 1, 2)) == pytest.approx(score((2, 2, 1), (0, 0, 3)), abs=1e-5)
    assert score((0, 0, 0), (1, 0, 0)) != pytest.approx(score((0, 0, 0), (0, 1, 0)), abs=1e-3)  # axes differ
    assert torch.equal(rope_2d(torch.arange(17), 4, 8), rope_grid(torch.arange(17), (4, 4), 8))
    with pytest.raises(ValueError, match="token_grid"):
        GPT(vocab_size=64, num_tokens=320, dim=32, n_layer=1, n_head=2, positions="rope3d")
    with pytest.raises(ValueError, match="product"):
        GPT(vocab_size=64, num_tokens=320, dim=32, n_layer=1, n_head=2, positions="rope3d", token_grid=[5, 8, 7])


@pytest.fixture(scope="module")
def video_tokens(tmp_path_factory):
    """A random video tokenizer (6 bits, 2x in time and space) and token folders of DemoVideos clips (9 x 16 x 16)."""
    root = tmp_path_factory.mktemp("video_ar")
    torch.manual_seed(0)
    tokenizer = Tokenizer(**components({"ch": 32, "ch_mult": [2, 2], "num_res_blocks": 1, "z_channels": 6}))
    ckpt = root / "video_tokenizer.ckpt"
    torch.save({"state_dict": tokenizer.state_dict(), "tokenizer": tokenizer.config}, ckpt)
    folders = {}
    for split, count in (("train", 16), ("val", 8)):
        with contextlib.redirect_stdout(io.StringIO()):
            encode_tokens.main(["--ckpt_path", str(ckpt), "--demo", "--split", split, "--num_images", str(count),
                                "--image_size", "16", "--num_frames", "9", "--output_dir", str(root / split),
                                "--batch_size", "8", "--shard_size", "8", "--num_workers", "0", "--device", "cpu"])
        folders[split] = root / split
    return SimpleNamespace(ckpt=ckpt, **folders)


def video_gpt(**kw):
    return GPT(**{**dict(vocab_size=64, num_tokens=math.prod(GRID), dim=32, n_layer=2, n_head=2, num_classes=16,
                         multiple_of=32, positions="rope3d", token_grid=list(GRID)), **kw})


def test_video_token_folder_records_the_volume(video_tokens):
    folder = TokenFolder(video_tokens.train)
    assert folder.token_shape == GRID and folder.manifest["token_layout"] == "volume"
    assert folder.manifest["num_frames"] == 9 and folder.manifest["num_images"] == 16
    item = TokenDataset(video_tokens.train)[0]
    assert item["tokens"].shape == GRID


def test_video_gpt_trains_samples_with_cache_and_decodes(video_tokens, tmp_path):
    import lightning as L

    L.seed_everything(0)
    model = ClassConditionalAR(video_gpt(), learning_rate=3e-3)
    dm = ImageDataModule(train=TokenDataset(video_tokens.train), validation=TokenDataset(video_tokens.val),
                         batch_size=8, num_workers=0)
    t = trainer(tmp_path, max_steps=20, val_check_interval=1.0)
    before = t.validate(model, dm, verbose=False)[0]["val/loss"]
    t.fit(model, dm)
    after = t.callback_metrics["val/loss"].item()
    assert after < before - 0.3, (before, after)
    with pytest.raises(ValueError, match="5x8x8 token grid .* 5x4x16"):  # same count, another grid: refused
        trainer(tmp_path).validate(ClassConditionalAR(video_gpt(token_grid=[5, 4, 16])), dm, verbose=False)

    generator = model.generator
    labels = torch.tensor([0, 3])
    cached = generator.generate(labels, cfg_scale=2.0, top_k=1)
    assert torch.equal(cached, generator.generate(labels, cfg_scale=2.0, top_k=1, use_cache=False))
    t.save_checkpoint(tmp_path / "video_ar.ckpt")
    tokenizer = load_recorded_tokenizer(model.hparams["tokenizer_source"])
    clips = decode_tokens(tokenizer, cached, generator.token_grid)
    assert clips.shape == (2, 3, 9, 16, 16)
    with pytest.raises(ValueError, match="token_shape"):
        decode_tokens(tokenizer, cached)

    from taming.cli import sample

    out = tmp_path / "samples"
    sample.main(["--ckpt_path", str(tmp_path / "video_ar.ckpt"), "--class_labels", "0", "3", "--samples_per_class",
                 "1", "--cfg_scale", "2.0", "--top_k", "1", "--device", "cpu", "--output_dir", str(out)])
    from PIL import Image

    with Image.open(out / "class0_0.gif") as gif:
        assert gif.n_frames == 9 and gif.size == (16, 16)
    assert (out / "grid.png").is_file()
    # frame prediction from the tool: the first latent frame of real clips, their own labels
    base = ["--ckpt_path", str(tmp_path / "video_ar.ckpt"), "--prefix_tokens", str(video_tokens.val),
            "--samples_per_class", "2", "--top_k", "1", "--device", "cpu", "--output_dir", str(tmp_path / "pred")]
    sample.main(base)
    labels = [TokenDataset(video_tokens.val)[i]["class_label"] for i in range(2)]
    assert all((tmp_path / "pred" / f"class{label}_{j}.gif").is_file() for j, label in enumerate(labels))
    with pytest.raises(SystemExit, match="prefix_frames must leave frames"):
        sample.main([*base, "--prefix_frames", "5"])


@pytest.mark.parametrize("factorized", [False, True])
def test_frame_prediction_continues_the_first_frame(video_tokens, factorized):
    """generate(prefix=first latent frame's tokens) keeps them and samples the rest; the KV cache (which feeds the
    given tokens) equals recomputation; the guided logits cover the sampled positions only."""
    from taming.modules.transformer import FactorizedGPT

    torch.manual_seed(0)
    model = (FactorizedGPT(num_tokens=math.prod(GRID), token_grid=list(GRID), dim=32, n_layer=2, n_intra_layer=1,
                           n_head=2, factorized_bits=(2, 4), num_classes=16, multiple_of=32)
             if factorized else video_gpt())
    for p in model.parameters():  # (a zero-initialised head would make every sample the same)
        torch.nn.init.normal_(p, std=0.2)
    item = TokenDataset(video_tokens.val)
    first = torch.stack([item[i]["tokens"][0] for i in range(2)])  # 2 x 8 x 8: latent frame 0 of two real clips
    labels = torch.tensor([item[0]["class_label"], item[1]["class_label"]])
    kw = dict(cfg_scale=1.5, top_k=1, prefix=first)
    cached, logits = model.generate(labels, return_logits=True, **kw)
    assert torch.equal(cached[:, :64], first.flatten(1))
    assert torch.equal(cached, model.generate(labels, use_cache=False, **kw))
    assert (logits[0] if factorized else logits).shape[1] == math.prod(GRID) - 64
    with pytest.raises(ValueError, match="prefix must hold"):
        model.generate(labels, prefix=torch.zeros(2, math.prod(GRID), dtype=torch.long))

"""scripts/sample.py and scripts/ar_val_loss.py: the reference generations decoded, released checkpoints sampled
end to end, FID shards (seeds, balanced / uniform labels, resume, merge, several ranks), the validation loss."""
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from taming.cli import ar_val_loss, sample
from taming import load_tokenizer
from taming.data import DemoImages
from taming.data.tokens import TokenDataset
from taming.metrics.image import to_uint8
from taming.provenance import decode_tokens, tokenizer_record
from taming.modules.component import component_config
from taming.modules.transformer import GPT
from test_ar_training import SIZE, encode, save_tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
OM2_AR = "src.Open_MAGVIT2.models.cond_transformer_gpt.Net2NetTransformer"


def quiet(fn, argv):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(argv)


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ------------------------------------------------------------------------------------------ reference generations


@pytest.fixture(scope="module")
def llamagen(reference_dir):
    expected = torch.load(reference_dir / "llamagen_gpt_tiny_expected.pt", weights_only=True)
    vq = torch.load(reference_dir / "llamagen_vq16_tiny_expected.pt", weights_only=True)
    return expected, {**vq["config"], "ch": vq["ch"]}


@pytest.fixture(scope="module")
def om2(reference_dir, tmp_path_factory):
    """(expected, the released-style YAML: the Net2NetTransformer arguments under model.init_args)."""
    expected = torch.load(reference_dir / "om2_ar_tiny_expected.pt", weights_only=True)
    config = {"model": {"class_path": OM2_AR, "init_args": expected["config"]}}
    path = tmp_path_factory.mktemp("om2") / "imagenet_conditional_llama_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return expected, config, path


def test_reference_generations_decode_to_the_stored_images(reference_dir, llamagen, om2):
    expected, vq_config = llamagen
    vq = load_tokenizer(reference_dir / "llamagen_vq16_tiny.pt", config=vq_config)
    images = decode_tokens(vq, expected["gen_tokens"])  # B x 64 raster -> 8 x 8 grid
    assert images.shape == expected["gen_images"].shape == (2, 3, 128, 128)
    torch.testing.assert_close(images, expected["gen_images"], atol=1e-4, rtol=0)

    expected, config, _ = om2
    tokenizer = load_tokenizer(reference_dir / "om2_ar_tiny.ckpt", config=config)  # its first_stage_model.*
    images = decode_tokens(tokenizer, expected["gen_indices"])
    assert images.shape == expected["gen_images"].shape
    torch.testing.assert_close(images, expected["gen_images"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llamagen", "open-magvit2"])
def test_sample_script_reproduces_released_generations(reference_dir, llamagen, om2, tmp_path, family):
    """Greedy (top-k 1) guided samples of the released checkpoints, loaded as a user would, are the reference's."""
    if family == "llamagen":
        expected, vq_config = llamagen
        model_args = ["--ckpt_path", str(reference_dir / "llamagen_gpt_tiny.pt"),
                      "--gpt_config", json.dumps(expected["model_args"]),
                      "--tokenizer_ckpt", str(reference_dir / "llamagen_vq16_tiny.pt"),
                      "--tokenizer_config", json.dumps(vq_config), "--cfg_scale", "2.0", "--top_k", "1"]
    else:
        expected, _, yaml_path = om2
        model_args = ["--ckpt_path", str(reference_dir / "om2_ar_tiny.ckpt"), "--config_file", str(yaml_path),
                      "--cfg_scale", "2.0", "1.5", "--top_k", "1", "1"]
    labels = [str(int(v)) for v in expected["gen_labels"]]
    grid = quiet(sample.main, [*model_args, "--class_labels", *labels, "--samples_per_class", "1", "--device", "cpu",
                               "--output_dir", str(tmp_path)])
    want = to_uint8(expected["gen_images"]).permute(0, 2, 3, 1).numpy().astype(int)
    for label, image in zip(labels, want):
        diff = np.abs(read_png(tmp_path / f"class{label}_0.png").astype(int) - image)
        assert diff.max() <= 1 and diff.mean() < 0.01  # the floats agree to 1e-4: only roundings at .5 may flip
    assert read_png(grid).shape == (want.shape[1] + 4, 2 * want.shape[2] + 6, 3)  # one row, a column per label


def test_sample_script_errors(reference_dir, llamagen, tmp_path):
    expected, _ = llamagen
    with pytest.raises(SystemExit, match="holds no tokenizer: pass --tokenizer_ckpt"):
        quiet(sample.main, ["--ckpt_path", str(reference_dir / "llamagen_gpt_tiny.pt"), "--gpt_config",
                            json.dumps(expected["model_args"]), "--output_dir", str(tmp_path), "--device", "cpu"])
    with pytest.raises(SystemExit, match="--gpt_config GPT-B needs --tokenizer_ckpt"):
        quiet(sample.main, ["--ckpt_path", str(reference_dir / "llamagen_gpt_tiny.pt"), "--gpt_config", "GPT-B",
                            "--output_dir", str(tmp_path), "--device", "cpu"])


# ------------------------------------------------------------------------------------------ FID mode


def project_checkpoint(path: Path, tokenizer_path: Path, num_classes: int) -> tuple:
    """A checkpoint in ClassConditionalAR's layout: a random GPT on the tiny tokenizer's 8 x 8 tokens."""
    torch.manual_seed(1)
    model = GPT(vocab_size=64, num_tokens=64, dim=32, n_layer=2, n_head=4, num_classes=num_classes, multiple_of=32)
    torch.nn.init.normal_(model.output.weight, std=0.5)  # a non-uniform next-token distribution
    hparams = {"generator": component_config(model),
               "tokenizer_source": tokenizer_record(load_tokenizer(tokenizer_path), tokenizer_path)}
    torch.save({"state_dict": {f"generator.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hparams,
                "global_step": 7}, path)
    return path, model.eval(), load_tokenizer(tokenizer_path)


@pytest.fixture(scope="module")
def project_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    return project_checkpoint(root / "ar.ckpt", save_tiny_tokenizer(root / "tokenizer.ckpt"), num_classes=3)


def fid_args(ckpt, out, *extra):
    return ["--ckpt_path", str(ckpt), "--output_dir", str(out), "--num_samples", "12", "--shard_size", "5",
            "--batch_size", "4", "--cfg_scale", "1.5", "--device", "cpu", *extra]


def test_fid_shards_seeds_labels_resume_and_merge(project_ckpt, tmp_path):
    ckpt, model, tokenizer = project_ckpt
    out = tmp_path / "fid"
    merged = quiet(sample.main, fid_args(ckpt, out))
    with np.load(merged) as z:
        images, labels = z["arr_0"], z["labels"]
    assert images.shape == (12, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2] * 4  # balanced: 4 of each class
    protocol = json.loads((out / "protocol.json").read_text())
    assert (protocol["labels"], protocol["num_samples"]) == ("balanced", 12)
    assert protocol["merged"]["shape"] == [12, SIZE, SIZE, 3]
    assert protocol["generator"]["format"] == "project" and protocol["sampling"]["cfg_scale"] == 1.5

    for k, (start, stop) in enumerate(((0, 5), (5, 10), (10, 12))):  # independent oracle: generate + decode by hand
        record = json.loads((out / f"samples_{k:05d}.done.json").read_text())
        seed = int(np.random.SeedSequence([0, k]).generate_state(1)[0])
        assert record["seed"] == seed and record["rank"] == 0 and record["num_images"] == stop - start
        rng = torch.Generator().manual_seed(seed)
        want = []
        for i in range(start, stop, 4):
            tokens = model.generate(torch.arange(i, min(i + 4, stop)) % 3, cfg_scale=1.5, generator=rng)
            want.append(to_uint8(tokenizer.decode_indices(tokens.view(-1, 8, 8))).permute(0, 2, 3, 1).numpy())
        assert np.array_equal(images[start:stop], np.concatenate(want)), k

    # an interrupted run: shard 1 without its completion record, no merged file -> only those are redone
    shard_files = [out / f"samples_{k:05d}.npz" for k in range(3)]
    stamps = [p.stat().st_mtime_ns for p in shard_files]
    sha = protocol["merged"]["files"]["samples.npz"]["sha256"]
    (out / "samples_00001.done.json").unlink()
    merged.unlink()
    quiet(sample.main, fid_args(ckpt, out))
    after = [p.stat().st_mtime_ns for p in shard_files]
    assert after[::2] == stamps[::2] and after[1] != stamps[1]
    assert json.loads((out / "protocol.json").read_text())["merged"]["files"]["samples.npz"]["sha256"] == sha
    with pytest.raises(SystemExit, match=r"describes other samples \(differs in \['sampling'\]\)"):
        quiet(sample.main, fid_args(ckpt, out, "--cfg_scale", "3.0"))
    with pytest.raises(SystemExit, match="--labels balanced needs --num_samples a multiple of the 3 classes"):
        quiet(sample.main, fid_args(ckpt, tmp_path / "odd", "--num_samples", "13"))

    uniform = tmp_path / "uniform"
    merged = quiet(sample.main, fid_args(ckpt, uniform, "--num_samples", "7", "--labels", "uniform", "--seed", "3"))
    with np.load(merged) as z:
        assert z["labels"].tolist() == np.random.default_rng(3).integers(0, 3, 7).tolist()
    assert json.loads((uniform / "protocol.json").read_text())["labels"] == "uniform"


def test_fid_samples_do_not_depend_on_the_number_of_ranks(project_ckpt, tmp_path):
    """torchrun with 2 CPU ranks (gloo) writes the shards 0 and 2 on rank 0, 1 on rank 1: the same images."""
    ckpt, _, _ = project_ckpt
    one = quiet(sample.main, fid_args(ckpt, tmp_path / "one"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    proc = subprocess.run([*launch, "scripts/sample.py", *fid_args(ckpt, tmp_path / "two")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "two" / f"samples_{k:05d}.done.json").read_text())["rank"] for k in range(3)]
    assert ranks == [0, 1, 0]
    with np.load(one) as a, np.load(tmp_path / "two" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["labels"], b["labels"])


# ------------------------------------------------------------------------------------------ validation loss


def test_ar_val_loss_on_tokens_and_images(project_ckpt, tmp_path):
    """The mean per-token cross-entropy over the images (uneven batches of 3), with the true and the null class, equals
    a computation image by image; images tokenized by the script give the token folder's numbers."""
    tokenizer_path = project_ckpt[0].parent / "tokenizer.ckpt"
    ckpt, model, _ = project_checkpoint(tmp_path / "ar16.ckpt", tokenizer_path, num_classes=16)  # the demo's classes
    with contextlib.redirect_stdout(io.StringIO()):
        tokens = encode(tokenizer_path, tmp_path / "val", "val", 8)
    args = ["--ckpt_path", str(ckpt), "--condition", "both", "--batch_size", "3", "--device", "cpu",
            "--num_workers", "0"]
    report = quiet(ar_val_loss.main, [*args, "--tokens", str(tokens), "--output_json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["results"] == report["results"]
    assert report["num_images"] == 8 and report["data"]["view"] == 0
    data = TokenDataset(tokens)
    x = torch.stack([data[i]["tokens"] for i in range(8)]).flatten(1)
    labels = torch.tensor([data[i]["class_label"] for i in range(8)])
    for condition, cond in (("class", labels), ("null", torch.full_like(labels, 16))):
        per_image = [F.cross_entropy(model.logits(x[i:i + 1], cond[i:i + 1])[0], x[i]) for i in range(8)]
        assert report["results"][condition]["loss"] == pytest.approx(torch.stack(per_image).mean().item(), rel=1e-6)
    online = quiet(ar_val_loss.main, [*args, "--demo", "--num_images", "8", "--image_size", str(SIZE)])
    for condition, terms in report["results"].items():
        assert online["results"][condition] == pytest.approx(terms, rel=1e-6)
    with pytest.raises(SystemExit, match=r"class labels must be in \[0, 3\]"):  # a 3-class GPT on the 16 classes
        quiet(ar_val_loss.main, [*args, "--ckpt_path", str(project_ckpt[0]), "--tokens", str(tokens)])


def test_linear_probe_ar_features_and_demo_run(project_ckpt, tmp_path):
    """The probe reads the residual stream: after the last block, the generator's own final norm and head turn it
    into its null-class logits; the features are its mean over positions. A demo run (16 classes) writes its JSON."""
    from taming.cli import linear_probe_ar

    tokenizer_path = project_ckpt[0].parent / "tokenizer.ckpt"
    ckpt, model, tokenizer = project_checkpoint(tmp_path / "ar16.ckpt", tokenizer_path, num_classes=16)
    images = torch.stack([DemoImages("val", size=SIZE, length=16)[i]["image"] for i in range(2)])
    tokens = tokenizer.encode(images)[1].flatten(1)
    null = torch.full((2,), model.null_class)
    hidden = model.hidden_states(tokens, null, 2)
    with torch.no_grad():
        torch.testing.assert_close(model.output(model.norm(hidden)), model.logits(tokens, null))
    features = linear_probe_ar.ARProbeFeatures(model, tokenizer, 2)(images)
    torch.testing.assert_close(features, hidden.mean(1))

    args = ["--ckpt_path", str(ckpt), "--demo", "--demo_length", "32", "--image_size", str(SIZE), "--epochs", "2",
            "--warmup_epochs", "1", "--eval_every", "1", "--batch_size", "16", "--optimizer", "sgd",
            "--num_workers", "0", "--device", "cpu"]
    result = quiet(linear_probe_ar.main, [*args, "--output", str(tmp_path / "probe.json")])
    assert (result["layer"], result["n_layer"], result["num_classes"]) == (1, 2, 16)  # n_layer // 2 by default
    assert list(result["top1_by_epoch"]) == [1, 2] and result["top1"] in {k / 16 for k in range(17)}
    assert json.loads((tmp_path / "probe.json").read_text())["top1"] == result["top1"]
    with pytest.raises(SystemExit, match=f"at --image_size {2 * SIZE} the tokenizer gives"):
        quiet(linear_probe_ar.main, [*args, "--image_size", str(2 * SIZE)])
    with pytest.raises(SystemExit, match=r"--layer must be in 1..2"):
        quiet(linear_probe_ar.main, [*args, "--layer", "3"])


@pytest.mark.parametrize("bad", [["--cfg_scale", "nan"], ["--cfg_scale", "inf"], ["--num_samples", "0"],
                                 ["--temperature", "0"], ["--top_p", "1.5"]])
def test_bad_sampling_settings_are_one_line_errors(bad, capsys):
    from taming.cli import sample

    with pytest.raises(SystemExit) as err:
        sample.parse_args(["--ckpt_path", "x.ckpt", "--output_dir", "out", *bad])
    assert err.value.code == 2 and bad[0] in capsys.readouterr().err


def test_ctrl_c_ends_a_tool_with_one_line():
    from taming.cli.common import run_cli

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit, match="^interrupted: rerun the same command: finished shards are kept"):
        run_cli(interrupted, "rerun the same command: finished shards are kept")

"""A file is data, never code: a class path read from a checkpoint, a token manifest or a config file builds only
this package's registered components. Each entry point gets a payload that would create a marker file (it passes
torch.load(weights_only=True) and is valid JSON): the marker must not appear and the error must name the class path."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from taming.cli import decode_tokens, encode_tokens, reconstruct, sample
from taming import load_generator, load_tokenizer, trusted_class_paths
from taming.modules.component import UntrustedClassError, component_config, instantiate, resolve_class
from taming.modules.transformer import GPT
from taming.tokenizer import build_tokenizer

DDCONFIG = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 16}  # configs/demo.yaml's tokenizer


def payload(marker: Path) -> dict:
    return {"class_path": "subprocess.run", "init_args": {"args": ["touch", str(marker)]}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real tiny tokenizer checkpoint (random weights, this project's format), its token folder (16 px demo
    images) and poisoned copies of each."""
    root = tmp_path_factory.mktemp("untrusted")
    marker = root / "pwned"
    torch.manual_seed(0)
    tokenizer = build_tokenizer(DDCONFIG, embed_dim=16, bit_order="lsb")
    good = root / "tokenizer.ckpt"
    torch.save({"tokenizer": tokenizer.config, "state_dict": tokenizer.state_dict()}, good)
    encode_tokens.main(["--ckpt_path", str(good), "--demo", "--split", "val", "--image_size", "16", "--num_workers",
                        "0", "--device", "cpu", "--output_dir", str(root / "tokens")])
    evil = {}
    for part in ("encoder", "quantizer"):  # the stored tokenizer config
        config = tokenizer.config
        config[part] = payload(marker)
        evil[part] = root / f"evil_{part}.ckpt"
        torch.save({"tokenizer": config, "state_dict": tokenizer.state_dict()}, evil[part])
    hparams = {**tokenizer.config, "decoder": payload(marker)}  # a Lightning checkpoint's hyper_parameters
    evil["hparams"] = root / "evil_hparams.ckpt"
    torch.save({"hyper_parameters": hparams, "state_dict": tokenizer.state_dict()}, evil["hparams"])
    tokens = root / "evil_tokens"
    shutil.copytree(root / "tokens", tokens)
    manifest = json.loads((tokens / "manifest.json").read_text())
    manifest["tokenizer"]["config"]["quantizer"] = payload(marker)
    (tokens / "manifest.json").write_text(json.dumps(manifest))
    return {"root": root, "marker": marker, "good": good, "evil": evil, "tokens": root / "tokens",
            "evil_tokens": tokens, "record": manifest["tokenizer"]}


def assert_refused(err, marker: Path) -> None:
    assert "subprocess.run" in str(err)
    assert not marker.exists()


@pytest.mark.parametrize("which", ["encoder", "quantizer", "hparams"])
def test_load_tokenizer_refuses_classes_named_by_the_checkpoint(files, which):
    with pytest.raises(UntrustedClassError) as err:
        load_tokenizer(files["evil"][which])
    assert_refused(err.value, files["marker"])
    assert str(files["evil"][which]) in str(err.value) and "--trust_class_path" in str(err.value)


def test_load_tokenizer_refuses_classes_named_by_a_config(files, tmp_path):
    config = dict(load_tokenizer(files["good"]).config, encoder=payload(files["marker"]))
    with pytest.raises(UntrustedClassError) as err:
        load_tokenizer(files["good"], config=config)
    assert_refused(err.value, files["marker"])
    yaml_file = tmp_path / "released.yaml"
    yaml_file.write_text(json.dumps({"model": {"class_path": "taming.models.vqgan.VQGAN", "init_args": config}}))
    with pytest.raises(UntrustedClassError, match=f"read from config {yaml_file}"):
        load_tokenizer(files["good"], config=str(yaml_file))
    assert not files["marker"].exists()


@pytest.mark.parametrize("script", ["evaluation", "reconstruct", "encode_tokens"])
def test_tools_refuse_classes_named_by_the_checkpoint(files, script, tmp_path):
    from taming.cli import evaluation

    main = {"evaluation": evaluation.main, "reconstruct": reconstruct.main, "encode_tokens": encode_tokens.main}[script]
    args = ["--ckpt_path", str(files["evil"]["quantizer"]), "--demo", "--num_images", "2", "--num_workers", "0",
            "--device", "cpu", "--image_size", "16"]
    args += ["--metrics", "psnr"] if script == "evaluation" else []
    args += ["--output" if script == "evaluation" else "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as err:
        main(args)
    assert_refused(err.value, files["marker"])


def test_decode_tokens_refuses_classes_named_by_the_manifest(files, tmp_path):
    with pytest.raises(SystemExit) as err:
        decode_tokens.main(["--tokens", str(files["evil_tokens"]), "--output_dir", str(tmp_path / "out"),
                            "--device", "cpu"])
    assert_refused(err.value, files["marker"])


def tiny_ar_checkpoint(path: Path, tokenizer_source: dict) -> Path:
    torch.manual_seed(0)
    model = GPT(vocab_size=65536, num_tokens=64, dim=32, n_layer=1, n_head=4, num_classes=16)
    torch.save({"state_dict": {"generator." + k: v for k, v in model.state_dict().items()},
                "hyper_parameters": {"generator": component_config(model), "tokenizer_source": tokenizer_source}},
               path)
    return path


def test_sample_refuses_classes_named_by_the_recorded_or_given_tokenizer(files, tmp_path):
    ckpt = tiny_ar_checkpoint(tmp_path / "ar.ckpt", files["record"])
    common = ["--output_dir", str(tmp_path / "out"), "--class_labels", "0", "--device", "cpu"]
    with pytest.raises(SystemExit) as err:
        sample.main(["--ckpt_path", str(ckpt), *common])
    assert_refused(err.value, files["marker"])
    with pytest.raises(SystemExit) as err:
        sample.main(["--ckpt_path", str(ckpt), "--tokenizer_ckpt", str(files["evil"]["encoder"]), *common])
    assert_refused(err.value, files["marker"])
    # the untouched record samples (the payload was the only problem)
    good = tiny_ar_checkpoint(tmp_path / "good.ckpt", json.loads((files["tokens"] / "manifest.json").read_text())[
        "tokenizer"])
    sample.main(["--ckpt_path", str(good), *common])
    assert (tmp_path / "out" / "grid.png").is_file()


def test_fit_on_a_token_folder_refuses_the_manifest_class(files, tmp_path, monkeypatch):
    """The sample-grid callback loads the manifest's tokenizer when fit starts: the run stops with the error
    (it used to log a warning and exit 0)."""
    from taming.cli.main import cli_main

    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "ar" / "demo_ar.yaml"),
            "--data.init_args.train.init_args.path", str(files["evil_tokens"]),
            "--data.init_args.validation.init_args.path", str(files["evil_tokens"]), "--trainer.max_steps", "1",
            "--model.init_args.generator.init_args.num_classes", "16"]
    with pytest.raises(UntrustedClassError) as err:
        cli_main(args)
    assert_refused(err.value, files["marker"])


def test_user_classes_are_built_only_when_the_user_names_them():
    config = {"class_path": "callbacks_for_tests.UserQuantizer", "init_args": {"dim": 4}}
    with pytest.raises(UntrustedClassError, match="callbacks_for_tests.UserQuantizer"):
        instantiate(config)
    with trusted_class_paths(["callbacks_for_tests.UserQuantizer"]):
        assert type(instantiate(config)).__name__ == "UserQuantizer"
    with pytest.raises(UntrustedClassError):  # the trust ends with the context
        instantiate(config)
    # registered components by any of their public paths; a module or a function of this package is not a class
    assert resolve_class("taming.modules.quantizers.LFQ") is resolve_class("taming.modules.quantizers.lfq.LFQ")
    for path in ("taming.modules.component.importlib", "taming.checkpoints.torch", "taming_evil.X", "os.system"):
        with pytest.raises(UntrustedClassError):
            resolve_class(path)


def test_load_generator_trusts_only_what_the_user_names(tmp_path):
    ckpt = tiny_ar_checkpoint(tmp_path / "ar.ckpt", {})
    spec = torch.load(ckpt, weights_only=True)
    spec["hyper_parameters"]["generator"]["class_path"] = "callbacks_for_tests.UserGPT"
    torch.save(spec, tmp_path / "user.ckpt")
    with pytest.raises(UntrustedClassError, match="callbacks_for_tests.UserGPT"):
        load_generator(tmp_path / "user.ckpt")
    model = load_generator(tmp_path / "user.ckpt", trust_class_paths=["callbacks_for_tests.UserGPT"])
    assert type(model).__name__ == "UserGPT"


def test_decode_tokens_refuses_a_checkpoint_that_did_not_make_the_tokens(files, tmp_path):
    """The recorded SHA-256 is always checked: new weights at the recorded path (a rerun) decode other images."""
    folder = shutil.copytree(files["tokens"], tmp_path / "tokens")
    ckpt = tmp_path / "tokenizer.ckpt"
    shutil.copy(files["good"], ckpt)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tokenizer"]["checkpoint"] = str(ckpt)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    retrained = torch.load(ckpt, weights_only=True)
    retrained["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in retrained["state_dict"].items()}
    torch.save(retrained, ckpt)
    args = ["--tokens", str(folder), "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--num_images", "1"]
    with pytest.raises(SystemExit, match="is not the one that made these tokens"):
        decode_tokens.main(args)
    assert decode_tokens.main([*args, "--allow_other_checkpoint"]) == 1


def test_fit_on_unreadable_images_stops_instead_of_looping(tmp_path, monkeypatch):
    """Every image unreadable: the first epoch yields no usable batch and the run ends with a clear error."""
    from taming.cli.main import cli_main
    from taming.runs import CheckError

    (tmp_path / "bad").mkdir()
    for i in range(4):
        (tmp_path / "bad" / f"{i}.png").write_bytes(b"not an image")
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"),
            "--data.init_args.train", "taming.data.ImageFolder", "--data.init_args.train.root", str(tmp_path / "bad"),
            "--data.init_args.train.size", "32", "--data.init_args.validation", "null", "--trainer.max_steps", "50"]
    with pytest.raises(CheckError, match="training epoch 0 yielded no usable batch"):
        cli_main(args)

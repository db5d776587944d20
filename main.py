"""Training entry point (LightningCLI): `python main.py fit --config configs/imagenet_lfqgan_256_B.yaml`.

Subcommands `fit`, `validate`, `test`; `--ckpt_path models/<run>/last.ckpt` resumes (or evaluates) a
checkpoint; `--print_config` shows the full resolved config. Any YAML key can be overridden on the command
line, e.g. `--trainer.devices 1 --data.init_args.batch_size 4`. YAML values may interpolate others (OmegaConf).
"""
from lightning.pytorch.cli import LightningCLI


def cli_main(args=None) -> LightningCLI:
    """Model and data are given by class_path/init_args (e.g. taming.models.lfqgan.VQModel, taming.data.ImageDataModule).
    YAMLs are read in OmegaConf mode, so a value can refer to another: `dirpath: models/${trainer.logger.init_args.name}`."""
    return LightningCLI(save_config_kwargs={"overwrite": True}, parser_kwargs={"parser_mode": "omegaconf"}, args=args)


def root_cause_of_config_error(err: BaseException):
    """The error behind jsonargparse's "Does not validate" wrappers when instantiating a class from the config
    (e.g. a missing dataset root or weight file), else None."""
    chain = [err]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    wrapped = any("Does not validate against any of the" in str(e) for e in chain[:-1])
    return chain[-1] if wrapped else None


if __name__ == "__main__":
    try:
        cli_main()
    except ValueError as err:
        cause = root_cause_of_config_error(err)
        if cause is None:
            raise
        raise SystemExit(f"error while building the model or data from the config:\n{type(cause).__name__}: {cause}") from err

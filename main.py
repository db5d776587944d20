"""Training entry point (LightningCLI): `python main.py fit --config configs/imagenet_lfqgan_256_B.yaml`.

Subcommands `fit`, `validate`, `test`; `--ckpt_path models/<run>/last.ckpt` resumes (or evaluates) a
checkpoint; `--print_config` shows the full resolved config. Any YAML key can be overridden on the command
line, e.g. `--trainer.devices 1 --data.init_args.batch_size 4`.
"""
from lightning.pytorch.cli import LightningCLI


def cli_main(args=None) -> LightningCLI:
    """Model and data are given by class_path/init_args (taming.models.lfqgan.VQModel, taming.data.ImageDataModule)."""
    return LightningCLI(save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    cli_main()

"""Training entry point (LightningCLI): `python main.py fit --config configs/imagenet_lfqgan_256_B.yaml`.

Subcommands `fit`, `validate`, `test`; `--ckpt_path models/<run>/last.ckpt` resumes (or evaluates) a
checkpoint; `--print_config` shows the full resolved config. Any YAML key can be overridden on the command
line, e.g. `--trainer.devices 1 --data.init_args.batch_size 4`. YAML values may interpolate others (OmegaConf).

Resuming: the config and the command line are the run's settings; the checkpoint gives weights and loop state only.
Its stored hyper-parameters are compared with the config's: a different architecture is refused with the list of
differences, other changes (learning rate, loss weights, ...) are printed and take effect. A checkpoint never
chooses a class to build: only the class paths in your own config files and command line are trusted.
"""
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from taming.checkpoints import read_hparams
from taming.modules.component import trusted_class_paths
from taming.runs import CheckError, architecture_differences, check_output_dirs, user_class_paths


class TamingCLI(LightningCLI):
    def _parse_ckpt_path(self) -> None:
        """LightningCLI's hook (private; no public switch exists) merges the checkpoint's hyper-parameters over the
        parsed config: the file would then choose the classes to build and silently override the command line.
        The comparison happens after the model is built instead (`after_instantiate_classes`)."""

    def after_instantiate_classes(self) -> None:
        ckpt_path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        if ckpt_path:
            if not Path(ckpt_path).is_file():
                raise CheckError(f"--ckpt_path {ckpt_path} does not exist")
            stored = read_hparams(ckpt_path)
            fixed, changed = architecture_differences(self.model, stored)
            if fixed:
                raise CheckError(f"the config describes another architecture than checkpoint {ckpt_path}:\n"
                                 + "\n".join(fixed) + "\nUse the run's own config (its config.yaml next to the "
                                 "checkpoints), or start a new run without --ckpt_path")
            for line in changed:
                print(f"note: the config overrides the checkpoint's setting {line}", file=sys.stderr)
        if self.subcommand == "fit":
            check_output_dirs(self.trainer)


def cli_main(args=None) -> LightningCLI:
    """Model and data are given by class_path/init_args (e.g. taming.models.lfqgan.VQModel, taming.data.ImageDataModule).
    YAMLs are read in OmegaConf mode, so a value can refer to another: `dirpath: models/${trainer.logger.init_args.name}`."""
    with trusted_class_paths(user_class_paths(sys.argv[1:] if args is None else args)):
        return TamingCLI(save_config_kwargs={"overwrite": True}, parser_kwargs={"parser_mode": "omegaconf"}, args=args,
                         load_from_checkpoint_support=False)


def root_cause_of_config_error(err: BaseException):
    """The error behind jsonargparse's "Does not validate" wrappers when instantiating a class from the config
    (e.g. a missing dataset root or weight file), else None."""
    chain = [err]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    wrapped = any("Does not validate against any of the" in str(e) for e in chain[:-1])
    return chain[-1] if wrapped else None


def main() -> None:
    try:
        cli_main()
    except CheckError as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit("interrupted: resume with --ckpt_path <checkpoint dir>/last.ckpt (written every "
                         "PeriodicCheckpoint interval)") from None
    except ValueError as err:
        cause = root_cause_of_config_error(err)
        if cause is None:
            raise
        raise SystemExit(f"error while building the model or data from the config:\n{type(cause).__name__}: {cause}") from err
    except Exception as err:  # noqa: BLE001 - only the accelerator message is rewritten, the rest re-raised
        if "No supported gpu backend found" in str(err) or "CUDAAccelerator` can not run on your system" in str(err):
            raise SystemExit("error: this config trains on GPUs but none is available. On a CPU-only machine add: "
                             "--trainer.accelerator cpu --trainer.devices 1 --trainer.precision 32-true "
                             "(and --trainer.strategy auto if the config sets one)") from None
        raise


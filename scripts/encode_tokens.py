"""Encode a dataset to a token folder for autoregressive training; multi-GPU (torchrun), resumable.

The command lives in taming/cli/encode_tokens.py (`python scripts/encode_tokens.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.encode_tokens import main

if __name__ == "__main__":
    run_cli(main, "rerun the same command: finished shards are kept, the rest are written")

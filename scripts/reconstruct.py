"""Reconstruct images with a tokenizer.

The command lives in taming/cli/reconstruct.py (`python scripts/reconstruct.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.reconstruct import main

if __name__ == "__main__":
    run_cli(main)

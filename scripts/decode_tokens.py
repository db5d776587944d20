"""Decode a token folder written by scripts/encode_tokens.py back into PNG images.

The command lives in taming/cli/decode_tokens.py (`python scripts/decode_tokens.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.decode_tokens import main

if __name__ == "__main__":
    run_cli(main)

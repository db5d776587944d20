"""Evaluate a tokenizer's reconstructions in one pass.

The command lives in taming/cli/evaluation.py (`python evaluation.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.evaluation import main

if __name__ == "__main__":
    run_cli(main)

"""Evaluate a video tokenizer's reconstructions in one pass.

The command lives in taming/cli/evaluation_video.py (`python evaluation_video.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.evaluation_video import main

if __name__ == "__main__":
    run_cli(main)

"""Generation metrics of class-conditional samples against an ADM reference batch.

The command lives in taming/cli/evaluation_gen.py (`python evaluation_gen.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.evaluation_gen import main

if __name__ == "__main__":
    run_cli(main)

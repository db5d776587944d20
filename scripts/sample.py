"""Class-conditional samples of an AR generator.

The command lives in taming/cli/sample.py (`python scripts/sample.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.sample import main

if __name__ == "__main__":
    run_cli(main, "rerun the same command: in FID mode finished shards are kept")

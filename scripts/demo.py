"""CPU demo (`make demo`).

The command lives in taming/cli/demo.py (`python scripts/demo.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.demo import main

if __name__ == "__main__":
    run_cli(main)

"""CPU demo, Stage II.

The command lives in taming/cli/demo_ar.py (`python scripts/demo_ar.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.demo_ar import main

if __name__ == "__main__":
    run_cli(main)

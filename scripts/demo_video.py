"""CPU demo, video stage.

The command lives in taming/cli/demo_video.py (`python scripts/demo_video.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.demo_video import main

if __name__ == "__main__":
    run_cli(main)

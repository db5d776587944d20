"""Convert images into WebDataset-style tar shards (read back by taming.data.ImageShards); rerun to resume.

The command lives in taming/cli/write_shards.py (`python scripts/write_shards.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.write_shards import main

if __name__ == "__main__":
    run_cli(main)

"""Linear probing of a frozen GigaTok-style hybrid tokenizer (GigaTok's tokenizer probe; recipe in taming/probe.py).

The command lives in taming/cli/linear_probe_tokenizer.py (`python scripts/linear_probe_tokenizer.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.linear_probe_tokenizer import main

if __name__ == "__main__":
    run_cli(main)

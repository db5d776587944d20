"""Linear probing of a frozen autoregressive generator
(GigaTok's AR probe, the "Acc." of its tables; recipe in taming/probe.py).

The command lives in taming/cli/linear_probe_ar.py (`python scripts/linear_probe_ar.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.linear_probe_ar import main

if __name__ == "__main__":
    run_cli(main)

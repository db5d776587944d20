"""AR probing validation loss (GigaTok's `val_loss_cal.py`).

The command lives in taming/cli/ar_val_loss.py (`python scripts/ar_val_loss.py --help`)."""
from taming.cli.common import run_cli
from taming.cli.ar_val_loss import main

if __name__ == "__main__":
    run_cli(main)

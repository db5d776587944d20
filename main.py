"""Training entry point (LightningCLI).

The command lives in taming/cli/main.py (`python main.py --help`)."""
from taming.cli.main import main

if __name__ == "__main__":
    main()

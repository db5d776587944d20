"""The commands: one module per command the user runs (`main.py`, `evaluation*.py` and the tools in `scripts/` are
entry points that call `main` here), and `common` for the plumbing they share (tokenizer and data flags, device and
torchrun setup, sharding across ranks, image and GIF output). Importing this package imports nothing else."""

#!/usr/bin/env bash
# Start training on this node: scripts/launch_node.sh CONFIG [MASTER_ADDR MASTER_PORT NODE_RANK NUM_NODES] [CLI args...]
# Defaults: localhost 10055 0 1 (a single node). Lightning starts one process per GPU of the node
# (trainer.devices in the config). For N nodes run it on each with NODE_RANK 0..N-1, NUM_NODES N and
# MASTER_ADDR = the address of node 0. Extra arguments go to LightningCLI (e.g. --ckpt_path .../last.ckpt).
# PYTHON selects the interpreter (default: python on PATH, e.g. the activated .venv).
set -euo pipefail
config="$1"; shift
positional=()  # up to 4, ending at the first option, so `run_256_B.sh --ckpt_path ...` keeps the defaults
while [[ $# -gt 0 && ${#positional[@]} -lt 4 && "$1" != -* ]]; do positional+=("$1"); shift; done
export MASTER_ADDR="${positional[0]:-localhost}"
export MASTER_PORT="${positional[1]:-10055}"
export NODE_RANK="${positional[2]:-0}"
num_nodes="${positional[3]:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-6}"
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" main.py fit --config "$config" --trainer.num_nodes "$num_nodes" "$@"

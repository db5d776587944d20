#!/usr/bin/env bash
# Train the Open-MAGVIT2 128_B tokenizer (configs/imagenet_lfqgan_128_B.yaml). One launch per node:
#   ./run_128_B.sh MASTER_ADDR MASTER_PORT NODE_RANK [NUM_NODES] [extra LightningCLI arguments...]
# Defaults: localhost 10055 0 1 (a single node). Lightning starts one process per GPU of the node
# (trainer.devices, 8 in the config). The reference recipe is 4 nodes: run this on each with NODE_RANK 0..3
# and NUM_NODES 4, MASTER_ADDR = the address of node 0. Resume: add --ckpt_path models/imagenet_lfqgan_128_B/last.ckpt
set -euo pipefail
cd "$(dirname "$0")"
export MASTER_ADDR="${1:-localhost}"
export MASTER_PORT="${2:-10055}"
export NODE_RANK="${3:-0}"
NUM_NODES="${4:-1}"
shift $(( $# < 4 ? $# : 4 ))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-6}"
exec python main.py fit --config configs/imagenet_lfqgan_128_B.yaml --trainer.num_nodes "$NUM_NODES" "$@"

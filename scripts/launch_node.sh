#!/usr/bin/env bash
# Start training on this node: scripts/launch_node.sh CONFIG [MASTER_ADDR MASTER_PORT NODE_RANK [NUM_NODES]] [CLI args...]
#   no positional arguments      this machine alone: one node (--trainer.num_nodes 1), MASTER_ADDR localhost;
#   MASTER_ADDR PORT NODE_RANK   one node of a multi-node run; the node count is the config's trainer.num_nodes;
#   ... NUM_NODES                the node count is NUM_NODES.
# Lightning starts one process per GPU of the node (trainer.devices). For N nodes run it on each node with
# NODE_RANK 0..N-1 and MASTER_ADDR = the address of node 0. Extra arguments go to LightningCLI
# (e.g. --ckpt_path models/<run>/last.ckpt). PYTHON selects the interpreter (default: python on PATH).
set -euo pipefail
config="$1"; shift
positional=()  # up to 4, ending at the first option, so `run_256_B.sh --ckpt_path ...` means this machine
while [[ $# -gt 0 && ${#positional[@]} -lt 4 && "$1" != -* ]]; do positional+=("$1"); shift; done
node_args=()
case ${#positional[@]} in
  0) export MASTER_ADDR=localhost MASTER_PORT="${MASTER_PORT:-10055}" NODE_RANK=0
     node_args=(--trainer.num_nodes 1) ;;
  3|4) export MASTER_ADDR="${positional[0]}" MASTER_PORT="${positional[1]}" NODE_RANK="${positional[2]}"
     if [[ ${#positional[@]} -eq 4 ]]; then node_args=(--trainer.num_nodes "${positional[3]}"); fi ;;
  *) echo "error: give MASTER_ADDR MASTER_PORT NODE_RANK [NUM_NODES] (got: ${positional[*]}), or none for this machine alone" >&2
     exit 2 ;;
esac
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-6}"
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" main.py fit --config "$config" "${node_args[@]}" "$@"

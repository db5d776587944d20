#!/usr/bin/env bash
# Train the Open-MAGVIT2 128_B tokenizer; one launch per node (the reference recipe: 4 nodes x 8 GPUs):
#   ./run_128_B.sh                                      this machine alone (one node)
#   ./run_128_B.sh MASTER_ADDR MASTER_PORT NODE_RANK    one of the config's trainer.num_nodes (4) nodes
#   ./run_128_B.sh MASTER_ADDR MASTER_PORT NODE_RANK NUM_NODES
# followed by any LightningCLI arguments. Resume: add --ckpt_path models/imagenet_lfqgan_128_B/last.ckpt
exec "$(dirname "$0")/scripts/launch_node.sh" configs/imagenet_lfqgan_128_B.yaml "$@"

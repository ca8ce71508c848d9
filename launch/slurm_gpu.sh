#!/usr/bin/env bash
# Train jml-jax on GPU nodes with SLURM: one process per GPU, all nodes in one JAX job.
#
# Usage (from the repository root, with .venv set up on shared storage):
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 launch/slurm_gpu.sh \
#       --config=configs/twitter2015.py --workdir=/shared/workdirs/t15
#   sbatch launch/slurm_gpu.sh --config=configs/twitter2015.py:bf16 --workdir=/shared/workdirs/t15_bf16
#   MODULE=launch.evaluate sbatch --nodes=1 launch/slurm_gpu.sh --config=... --workdir=... --split=test
#
# The arguments are passed to `python -m $MODULE` (default launch.train).
# srun starts one task per GPU; in each, jax.distributed.initialize() (called by
# launch/common.py because SLURM_NTASKS > 1) reads SLURM_PROCID, SLURM_NTASKS and
# the node list, picks the first node as coordinator, and binds the task to GPU
# number SLURM_LOCALID. So --ntasks-per-node must equal --gpus-per-node, and the
# tasks must see all of the node's GPUs: do not use --gpus-per-task (it would
# give every task a single GPU numbered 0).
#
# Requirements: --workdir on a file system every node sees (Orbax writes each
# checkpoint from all processes); the data and pretrained weights at the same
# path on every node; config.batch_size divisible by the number of GPUs.
#
#SBATCH --job-name=jml-jax
#SBATCH --nodes=1
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [[ $# -eq 0 ]]; then
  sed -n '2,20p' "$0"
  exit 2
fi

cd "${SLURM_SUBMIT_DIR:-.}"
if [[ -f .venv/bin/activate ]]; then . .venv/bin/activate; fi
MODULE="${MODULE:-launch.train}"

# One process per GPU, so JAX's default preallocation (75% of that one GPU) is
# right; TensorFlow only decodes images and is kept off the GPUs by
# data_pipeline/images.py.
echo "nodes: ${SLURM_JOB_NODELIST}  tasks: ${SLURM_NTASKS}  module: ${MODULE}"
srun --kill-on-bad-exit=1 python -m "$MODULE" "$@"

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
# Preemption and requeue: --signal=TERM@180 makes SLURM send SIGTERM to every
# task 3 minutes before the time limit (scancel and SLURM's own preemption
# send SIGTERM too). launch.train then saves the current step on every process
# (JAX's preemption sync point picks one step for all), writes
# WORKDIR/preempted.json and exits with status 75; this script then requeues
# the job (--requeue), and the requeued job resumes from that step with
# nothing lost. Leave enough time for one evaluation plus one save. The
# workdir is locked by one live run (WORKDIR/lock.json); a requeued job on
# the same node takes over the lock of a killed one at once, on another node
# after 10 minutes without a heartbeat.
#
#SBATCH --job-name=jml-jax
#SBATCH --nodes=1
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --signal=TERM@180
#SBATCH --requeue
#SBATCH --open-mode=append
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
echo "nodes: ${SLURM_JOB_NODELIST}  tasks: ${SLURM_NTASKS}  module: ${MODULE}  restarts: ${SLURM_RESTART_COUNT:-0}"
WORKDIR="" prev=""
for arg in "$@"; do
  case "$arg" in --workdir=*) WORKDIR="${arg#--workdir=}" ;; esac
  if [[ "$prev" == --workdir ]]; then WORKDIR="$arg"; fi
  prev="$arg"
done
status=0
srun --kill-on-bad-exit=1 python -m "$MODULE" "$@" || status=$?
# 75: saved after SIGTERM (srun may report 137 instead when it killed the other
# tasks of the step after the first one exited; preempted.json tells).
if [[ "$MODULE" == launch.train && ( $status -eq 75 || ( -n "$WORKDIR" && -f "$WORKDIR/preempted.json" ) ) ]]; then
  echo "preempted after saving (status $status): requeueing job ${SLURM_JOB_ID}"
  scontrol requeue "${SLURM_JOB_ID}"
fi
exit "$status"

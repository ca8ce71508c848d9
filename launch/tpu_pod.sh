#!/usr/bin/env bash
# Run a jml-jax command on every host of a Cloud TPU VM pod slice (v4-32, v5e-64, ...).
#
# Usage (from the repository root on your workstation):
#   export TPU=my-v4-32 ZONE=us-central2-b [PROJECT=my-project] [REMOTE_DIR=jml-jax]
#   launch/tpu_pod.sh sync                      # copy this working tree to every host
#   launch/tpu_pod.sh install                   # venv + jax[tpu] + requirements on every host
#   launch/tpu_pod.sh train --config=configs/twitter2015.py --workdir=gs://BUCKET/t15 \
#       --config.data.train_file=/data/twitter2015/train.json ...
#   launch/tpu_pod.sh evaluate --config=configs/twitter2015.py --workdir=gs://BUCKET/t15 --split=test
#   launch/tpu_pod.sh run 'python -c "import jax; print(jax.device_count())"'
#
# Every host runs the same command (gcloud ... ssh --worker=all). JML_MULTIHOST=1
# makes launch/common.py call jax.distributed.initialize() with no arguments;
# JAX then finds the other hosts through the TPU metadata server (these VMs do
# not set TPU_WORKER_HOSTNAMES, so nothing else would tell our launcher that it
# is one process of many). Each host feeds its own slice of every global batch.
#
# Requirements:
#   * --workdir must be storage every host sees (a gs:// bucket): Orbax writes
#     each checkpoint from all hosts together and every host restores it.
#   * the annotations, images (or the TFDS build in data.prepared_dir) and
#     pretrained weights must exist at the same path on every host (copy them,
#     or mount a bucket with gcsfuse).
#   * config.batch_size must be divisible by the number of chips.
# Logs of all hosts are interleaved in this terminal; host 0 prints progress.
set -euo pipefail

: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to its zone, e.g. us-central2-b}"
REMOTE_DIR="${REMOTE_DIR:-jml-jax}"
GCLOUD=(gcloud compute tpus tpu-vm)
SCOPE=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then SCOPE+=(--project="$PROJECT"); fi

on_all_hosts() {
  "${GCLOUD[@]}" ssh "$TPU" "${SCOPE[@]}" --worker=all --command="$1"
}

quoted() {  # the arguments, each shell-quoted, as one string
  local out="" arg
  for arg in "$@"; do out+=" $(printf '%q' "$arg")"; done
  printf '%s' "$out"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  sync)
    # Only tracked and untracked-but-not-ignored files (no .venv, workdirs, caches).
    archive="$(mktemp -t jml-jax-XXXX.tar.gz)"
    git ls-files -z --cached --others --exclude-standard | tar -czf "$archive" --null -T -
    "${GCLOUD[@]}" scp "$archive" "$TPU:/tmp/jml-jax.tar.gz" "${SCOPE[@]}" --worker=all
    on_all_hosts "mkdir -p ~/$REMOTE_DIR && tar -xzf /tmp/jml-jax.tar.gz -C ~/$REMOTE_DIR"
    rm -f "$archive"
    ;;
  install)
    on_all_hosts "cd ~/$REMOTE_DIR && python3 -m venv .venv && . .venv/bin/activate && \
pip install -q 'jax[tpu]' -r requirements-data.txt && pip install -q --no-deps -e ."
    ;;
  train|evaluate|predict)
    on_all_hosts "cd ~/$REMOTE_DIR && . .venv/bin/activate && \
JML_MULTIHOST=1 python -m launch.$cmd$(quoted "$@")"
    ;;
  run)
    on_all_hosts "cd ~/$REMOTE_DIR && . .venv/bin/activate && JML_MULTIHOST=1 $*"
    ;;
  *)
    sed -n '2,28p' "$0"
    exit 2
    ;;
esac

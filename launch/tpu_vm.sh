#!/usr/bin/env bash
# Runs one experiment on every worker of a Cloud TPU VM: one JAX process per worker,
# joined by jax.distributed (encoders/training/sharding.py) with worker 0 as the coordinator.
#
#   launch/tpu_vm.sh TPU_NAME ZONE experiments.pretrain --config configs/bert.py:base --workdir gs://BUCKET/bert_base
#   DRY_RUN=1 launch/tpu_vm.sh ...   # print the gcloud commands instead of running them
#   launch/tpu_vm.sh --help          # this text
#
# Environment: PROJECT (gcloud project; default: gcloud's), REPO_DIR (the checkout on the
# workers; default ~/encoders), SETUP=1 (first copy this checkout's HEAD to every worker
# and install requirements-tpu.txt, with jax[tpu], into REPO_DIR/.venv).
# Every worker runs with JAX_PLATFORMS=tpu: a worker whose JAX cannot reach its TPU stops at
# start with a config error naming what to install, instead of training on the CPU.
# The workdir must be shared by all workers (a gs:// bucket). Re-running resumes.
set -euo pipefail

usage() {  # The comment block above, without its '#'.
  awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"
}
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  usage
  exit 0
fi
if [[ $# -lt 3 ]]; then
  usage >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 MODULE=$3
shift 3
REPO_DIR=${REPO_DIR:-'~/encoders'}
GCLOUD=(gcloud compute tpus tpu-vm)
TARGET=("$TPU_NAME" --zone "$ZONE" --worker=all ${PROJECT:+--project "$PROJECT"})

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

if [[ "${SETUP:-0}" == 1 ]]; then  # Ship the committed tree (not .venv) and install.
  ROOT=$(cd "$(dirname "$0")/.." && pwd)
  run git -C "$ROOT" archive --format=tar.gz -o /tmp/encoders.tar.gz HEAD
  run "${GCLOUD[@]}" scp /tmp/encoders.tar.gz "${TARGET[0]}:/tmp/encoders.tar.gz" "${TARGET[@]:1}"
  run "${GCLOUD[@]}" ssh "${TARGET[@]}" --command \
    "mkdir -p $REPO_DIR && tar -xzf /tmp/encoders.tar.gz -C $REPO_DIR && cd $REPO_DIR && python3 -m venv .venv && . .venv/bin/activate && pip install -q -r requirements-tpu.txt"
fi

# jax.distributed.initialize() reads the coordinator (worker 0) from JAX_COORDINATOR_ADDRESS
# and the process ids from the TPU metadata; unbuffered output streams every worker's log.
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  run "${GCLOUD[@]}" describe "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} \
    --format='value(networkEndpoints[0].ipAddress)'
  COORDINATOR='WORKER0_IP'
else
  COORDINATOR=$("${GCLOUD[@]}" describe "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} \
    --format='value(networkEndpoints[0].ipAddress)')
fi
ARGS=$(printf ' %q' "$@")
run "${GCLOUD[@]}" ssh "${TARGET[@]}" --command \
  "cd $REPO_DIR && . .venv/bin/activate && JAX_PLATFORMS=tpu JAX_COORDINATOR_ADDRESS=$COORDINATOR:8476 PYTHONUNBUFFERED=1 python -m $MODULE$ARGS"

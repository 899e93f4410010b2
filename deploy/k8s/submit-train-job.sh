#!/bin/sh
# Start a Kubernetes GPU Job for one queued Cadenza training job.
#
#   deploy/k8s/submit-train-job.sh [--gpus N] [--namespace NS] [--image IMAGE] [--dry-run] JOB_ID
#
# --gpus N     GPUs on one node (default 1); N > 1 runs torchrun with one process per GPU.
# --namespace  where Cadenza runs (default cadenza).
# --image      the worker-gpu image (default cadenza/worker-gpu:0.1.0), e.g. your registry's.
# --dry-run    print the manifest instead of creating the Job.
set -eu

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
}

gpus=1
namespace=cadenza
image=
dry_run=0
while [ $# -gt 0 ]; do
    case "$1" in
        --gpus) [ $# -ge 2 ] || usage; gpus="$2"; shift 2 ;;
        --namespace) [ $# -ge 2 ] || usage; namespace="$2"; shift 2 ;;
        --image) [ $# -ge 2 ] || usage; image="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage ;;
        -*) echo "unknown option: $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || usage
job_id="$1"

# The id goes into a label value and an env value: keep it to what both accept.
case "$job_id" in
    "" | *[!A-Za-z0-9._-]*) echo "JOB_ID may only hold A-Z a-z 0-9 . _ -" >&2; exit 64 ;;
esac
if [ "${#job_id}" -gt 63 ]; then
    echo "JOB_ID is longer than 63 characters" >&2
    exit 64
fi
case "$gpus" in
    "" | *[!0-9]* | 0) echo "--gpus needs a whole number of at least 1" >&2; exit 64 ;;
esac
case "$image" in
    *[!A-Za-z0-9./:@_-]*) echo "--image is not an image reference: $image" >&2; exit 64 ;;
esac

jobs_dir="$(cd "$(dirname "$0")/../../k8s/jobs" && pwd)"
if [ "$gpus" -eq 1 ]; then
    template="$jobs_dir/train-job.yaml"
else
    template="$jobs_dir/train-job-multigpu.yaml"
fi

render() {
    sed -e "/^#/d" -e "s/__JOB_ID__/$job_id/g" -e "s/__GPUS__/$gpus/g" \
        ${image:+-e "s|image: cadenza/worker-gpu:[^[:space:]]*|image: $image|"} "$template"
}

if [ "$dry_run" -eq 1 ]; then
    render
else
    render | kubectl --namespace "$namespace" create -f -
fi

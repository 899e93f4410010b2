#!/bin/sh
# Liveness of a Cadenza worker: its heartbeat file (CADENZA_WORKER_HEARTBEAT_FILE, set by the
# worker images) was touched within HEALTHCHECK_MAX_AGE seconds (default 90). The worker
# touches it while idle and, from the job's lease keeper, while a job runs, so a long
# training job stays alive and a frozen or stopped process does not. A Celery ping would
# not do: with the solo pool nothing answers it while a job runs.
# Used by the Docker HEALTHCHECK, docker compose and the Kubernetes liveness probes.
set -eu
exec cadenza worker-alive --max-age "${HEALTHCHECK_MAX_AGE:-90}"

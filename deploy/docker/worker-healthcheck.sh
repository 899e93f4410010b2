#!/bin/sh
# Health of a Cadenza Celery worker: it must answer a ping over the broker under its own
# node name (Celery names nodes NAME@HOSTNAME). Used by the Docker HEALTHCHECK and by the
# Kubernetes liveness probe of the worker Deployments.
#
# Environment: CADENZA_BROKER_URL (required), CELERY_APP (optional: the Celery app module,
# when the app uses broker options that a bare client would not know), HEALTHCHECK_TIMEOUT
# (seconds to wait for replies, default 10).
set -eu

if [ -z "${CADENZA_BROKER_URL:-}" ]; then
    echo "CADENZA_BROKER_URL is not set" >&2
    exit 1
fi
host="$(hostname)"
if ! replies="$(celery --broker "$CADENZA_BROKER_URL" inspect ping \
        --timeout "${HEALTHCHECK_TIMEOUT:-10}" --json 2>/dev/null)"; then
    echo "no Celery worker answered a ping on the broker" >&2
    exit 1
fi
case "$replies" in
    *"@$host\""*) exit 0 ;;
esac
echo "the worker on $host did not answer (replies: $replies)" >&2
exit 1

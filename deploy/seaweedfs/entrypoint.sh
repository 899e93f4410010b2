#!/bin/sh
# Start SeaweedFS with an S3 identity taken from the environment, then exec `weed "$@"`.
#
# SeaweedFS reads S3 credentials only from a JSON file; this writes that file at start-up so
# that no secret is baked into an image or committed. The identity may only read, write,
# list and tag objects of the one bucket.
#
# Environment: S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3_BUCKET (all required),
# SEAWEEDFS_S3_CONFIG (where to write the file, default /tmp/s3.json; pass the same path to
# `weed ... -s3.config=`).
set -eu

fail() {
    echo "seaweedfs entrypoint: $*" >&2
    exit 64
}

key="${S3_ACCESS_KEY_ID:-}"
secret="${S3_SECRET_ACCESS_KEY:-}"
bucket="${S3_BUCKET:-}"
config="${SEAWEEDFS_S3_CONFIG:-/tmp/s3.json}"

# Only characters that need no escaping in JSON; `openssl rand -hex 32` makes good ones.
case "$key" in
    "" | *[!A-Za-z0-9._~+/=-]*) fail "S3_ACCESS_KEY_ID must be set, using only A-Z a-z 0-9 . _ ~ + / = -" ;;
esac
case "$secret" in
    "" | *[!A-Za-z0-9._~+/=-]*) fail "S3_SECRET_ACCESS_KEY must be set, using only A-Z a-z 0-9 . _ ~ + / = -" ;;
esac
if [ "${#secret}" -lt 16 ]; then
    fail "S3_SECRET_ACCESS_KEY must be at least 16 characters (try: openssl rand -hex 32)"
fi
case "$bucket" in
    "" | *[!a-z0-9.-]*) fail "S3_BUCKET must be set, using only a-z 0-9 . -" ;;
esac

umask 077
printf '{"identities": [{"name": "cadenza", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Read:%s", "Write:%s", "List:%s", "Tagging:%s"]}]}\n' \
    "$key" "$secret" "$bucket" "$bucket" "$bucket" "$bucket" > "$config"

exec weed "$@"

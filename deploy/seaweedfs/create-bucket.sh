#!/bin/sh
# Create the S3 bucket in SeaweedFS if it does not exist yet (a one-shot; safe to rerun).
#
# Environment: S3_BUCKET (required), SEAWEEDFS_MASTER (default seaweedfs:9333),
# SEAWEEDFS_FILER (default seaweedfs:8888).
set -eu

bucket="${S3_BUCKET:-}"
master="${SEAWEEDFS_MASTER:-seaweedfs:9333}"
filer="${SEAWEEDFS_FILER:-seaweedfs:8888}"
case "$bucket" in
    "" | *[!a-z0-9.-]*)
        echo "create-bucket: S3_BUCKET must be set, using only a-z 0-9 . -" >&2
        exit 64
        ;;
esac

wshell() {
    echo "$1" | weed shell -master="$master" -filer="$filer"
}

has_bucket() {
    wshell "s3.bucket.list" | awk '{print $1}' | grep -qx "$bucket"
}

if has_bucket; then
    echo "bucket $bucket already exists"
    exit 0
fi
wshell "s3.bucket.create -name $bucket"
if has_bucket; then
    echo "created bucket $bucket"
    exit 0
fi
echo "create-bucket: bucket $bucket is still missing after s3.bucket.create" >&2
exit 1

#!/bin/sh
# The bucket, and one MinIO user per use, each allowed what that use needs and nothing more:
#   downloads-api     the API: read sources and archives (stat), see that the bucket is there
#   downloads-worker  the worker: read sources, write, list and delete archives (and checkpoints)
#   downloads-reader  signs presigned download links: read sources and archives
# The root user stays with MinIO itself, this script and the seed job. Safe to run again.
set -eu
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$S3_BUCKET_NAME"

grant() { # policy-name policy-file user password
    sed "s/BUCKET/$S3_BUCKET_NAME/g" "/setup/$2" > "/tmp/$2"
    mc admin policy create local "$1" "/tmp/$2"
    mc admin user add local "$3" "$4"
    mc admin policy attach local "$1" --user "$3" || true  # already attached
    echo "user $3 ready ($1)"
}

grant downloads-api api-policy.json "$MINIO_API_USER" "$MINIO_API_PASSWORD"
grant downloads-worker worker-policy.json "$MINIO_WORKER_USER" "$MINIO_WORKER_PASSWORD"
grant downloads-read reader-policy.json "$MINIO_READER_USER" "$MINIO_READER_PASSWORD"

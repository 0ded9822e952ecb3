#!/bin/sh
# The bucket, and the read-only user that presigned download links are signed with.
set -eu
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$S3_BUCKET_NAME"
sed "s/BUCKET/$S3_BUCKET_NAME/g" /setup/reader-policy.json > /tmp/reader-policy.json
mc admin policy create local downloads-read /tmp/reader-policy.json
mc admin user add local "$MINIO_READER_USER" "$MINIO_READER_PASSWORD"
mc admin policy attach local downloads-read --user "$MINIO_READER_USER" || true
echo "read-only user $MINIO_READER_USER ready"

#!/bin/sh
# Prints a compose environment file with a fresh random value for every secret compose.yaml requires:
#   deploy/compose-env.sh > deploy/.env && chmod 0600 deploy/.env
# Keep it: the MinIO and application keys must stay the same across restarts (they are stored in MinIO's volume).
set -eu
umask 077
random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
cat <<ENV
REDIS_PASSWORD=$(random)
MINIO_ROOT_USER=minio-admin
MINIO_ROOT_PASSWORD=$(random)
STRONGROOM_S3_ACCESS_KEY=strongroom
STRONGROOM_S3_SECRET_KEY=$(random)
ENV

#!/usr/bin/env bash
# Stand-in for the Dockerfile's base image where no container registry can be reached (CI here): a Debian bookworm
# root filesystem with Debian's Python 3.11 (the slim image's minor version), made by debootstrap and imported into
# podman under NAME. Everything after FROM then runs exactly as written.
#
#   deploy/base-image.sh localhost/strongroom-base:bookworm
#
# The root filesystem is cached as a tarball under $STRONGROOM_CACHE_DIR (default ~/.cache/strongroom), keyed by
# the package list below: the first run takes 1-3 minutes, later runs only import it (or nothing, when podman
# already holds an image of that key). Needs root, debootstrap and podman.
#
# The host's CA bundle (CA_BUNDLE, default /etc/ssl/certs/ca-certificates.crt) replaces the base's, and pip is told
# to use it: where package downloads pass through a TLS-inspecting proxy, the build trusts what the host trusts.
set -euo pipefail

name=${1:?usage: deploy/base-image.sh IMAGE-NAME}
suite=bookworm
packages=python3,python3-venv,python-is-python3,ca-certificates,passwd
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
ca_sum=$( [ -r "$ca_bundle" ] && sha256sum <"$ca_bundle" | cut -c1-16 || echo none)
key=$(printf '%s %s %s %s v1' "$suite" "$packages" "$mirror" "$ca_sum" | sha256sum | cut -c1-16)
cache=${STRONGROOM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/strongroom}/rootfs
tarball=$cache/$suite-$key.tar

podman_() { podman --storage-driver vfs "$@"; }

if [ "$(podman_ image inspect --format '{{index .Config.Labels "org.strongroom.base"}}' "$name" 2>/dev/null)" = "$key" ]; then
  echo "base image $name is current (debootstrap $suite, key $key)"
  exit 0
fi

if [ ! -s "$tarball" ]; then
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "building a $suite root filesystem with debootstrap (cached in $tarball)"
  if ! debootstrap --variant=minbase --include="$packages" "$suite" "$work/root" "$mirror" >"$work/log" 2>&1; then
    tail -n 40 "$work/log" >&2
    exit 1
  fi
  if [ -r "$ca_bundle" ]; then
    cp "$ca_bundle" "$work/root/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$work/root/etc/pip.conf"
  fi
  rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/"*.bin "$work/root/var/cache/apt/archives/"*.deb
  tar -C "$work/root" --numeric-owner -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
fi

echo "importing $tarball as $name (stands in for the Dockerfile's FROM, which no registry here can serve)"
podman_ import --quiet --change "LABEL org.strongroom.base=$key" --change 'CMD ["python3"]' "$tarball" "$name" >/dev/null

#!/bin/sh
# Installs every Debian 12 package that building, testing, the demo and the benchmarks
# need. Idempotent: packages already present are skipped, so re-running costs one dpkg
# query per package. Must run as root (or through sudo) on a fresh machine.
set -eu

PKGS="build-essential cmake pkg-config git
libmbedtls-dev libpq-dev libcurl4-openssl-dev libinih-dev libjansson-dev
libpg-query-dev libcmocka-dev libmicrohttpd-dev libhiredis-dev redis-server
postgresql postgresql-client pgbouncer python3 openssl procps iproute2 prometheus curl
clang libclang-rt-14-dev"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "deps.sh: missing packages:$missing; run as root (or: sudo $0)" >&2
    exit 1
fi

echo "deps.sh: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
# Debian's postgresql package creates and starts a "main" cluster; the tests make their
# own throwaway clusters and do not need it.
if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
fi

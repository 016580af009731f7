#!/usr/bin/env bash
# System packages the test suite drives for real (no mocks). Idempotent; CI runs as root.
set -euo pipefail
PACKAGES=(openssh-server openssh-client strace postgresql-15 postgresql-client-15 redis-server redis-tools curl passwd gcc libc6-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

#!/usr/bin/env bash
# Installs Debian's CPU libtorch and OpenBLAS (libtorch-dev does not pull OpenBLAS in, and without it
# matrix products fall back to the reference BLAS, ~30x slower). Needs root on Debian/Ubuntu.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "install-libtorch-apt.sh must run as root (try: sudo bash $0)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends libtorch-dev libgloo-dev libopenblas0 cmake g++ make

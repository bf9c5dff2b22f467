#!/usr/bin/env bash
# Installs the Debian packages ironbark needs to build, run and test, if any
# is missing. Sourced by scripts/up.sh and scripts/test.sh so the list lives
# in one place.
set -euo pipefail

IRONBARK_PACKAGES=(
  pkg-config libssl-dev openssl   # the openssl crate: key pairs, sealed secrets
  openssh-client                  # ssh-keygen: key-pair tests cross-check fingerprints
  python3 python3-venv            # the real AWS CLI and boto3 run from a venv in tests
  ca-certificates curl procps
  rclone                          # S3 tool the Walrus tests drive
)

install_host_packages() {
  local missing=()
  for p in "${IRONBARK_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing host packages: ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

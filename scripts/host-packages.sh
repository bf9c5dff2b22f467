#!/usr/bin/env bash
# Installs the Debian packages ironbark needs to build, run and test, if any
# is missing. Sourced by scripts/up.sh and scripts/test.sh so the list lives
# in one place.
set -euo pipefail

IRONBARK_PACKAGES=(
  pkg-config libssl-dev openssl   # the openssl crate: key pairs, sealed secrets
  openssh-client                  # ssh-keygen: fingerprints; ssh into test instances
  python3 python3-venv            # the real AWS CLI and boto3 run from a venv in tests
  ca-certificates curl procps
  rclone                          # S3 tool the Walrus tests drive
  iproute2 nftables dnsmasq-base  # the CC: bridges, taps, filtering, DHCP
  busybox                         # udhcpc and ping: the CC's netns tests
  conntrack                       # the CC deletes NAT flows of a moved public address
  socat                           # tcp clients and servers in the CC's netns tests
  iptables                        # the linear ruleset benches/network.sh compares against
  dpkg apt                        # the test image is built from Debian packages
  zstd gzip bc                    # the SC's zstd snapshots; benches/ebs.sh
)

# QEMU's system emulator must match qemu-utils, which comes from backports
# on these machines; both are installed in one command from there.
QEMU_PACKAGES=(qemu-system-x86 qemu-utils)

_missing() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

install_host_packages() {
  local sudo="" missing
  [ "$(id -u)" = 0 ] || sudo=sudo
  missing=$(_missing "${IRONBARK_PACKAGES[@]}")
  local qemu_missing
  qemu_missing=$(_missing qemu-system-x86)
  if [ -n "$missing" ] || [ -n "$qemu_missing" ]; then
    if [ -n "$qemu_missing" ] && ! apt-cache policy 2>/dev/null | grep -q bookworm-backports; then
      . /etc/os-release
      if [ "${VERSION_CODENAME:-}" = bookworm ]; then
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
          | $sudo tee /etc/apt/sources.list.d/bookworm-backports.sources > /dev/null
      fi
    fi
    echo "installing host packages: $missing $qemu_missing"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    if [ -n "$missing" ]; then
      # shellcheck disable=SC2086
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
    fi
    if [ -n "$qemu_missing" ]; then
      if apt-cache policy 2>/dev/null | grep -q bookworm-backports; then
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports "${QEMU_PACKAGES[@]}"
      else
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${QEMU_PACKAGES[@]}"
      fi
    fi
  fi
  # The test image is assembled from packages fetched with apt-get download,
  # which needs package lists even when nothing had to be installed.
  if ! ls /var/lib/apt/lists/*_Packages* > /dev/null 2>&1; then
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  fi
}

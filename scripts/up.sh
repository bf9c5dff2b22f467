#!/usr/bin/env bash
# Installs what ironbark needs on this host, builds it, installs the binary
# as /usr/local/bin/ironbark and starts the whole cloud: `ironbark up`.
# Arguments go to `ironbark up` (e.g. --data-dir, --listen, --config).
# IRONBARK_UP_PROFILE=dev builds without optimisation (the test suite uses
# it to run this very script without a second, release, build).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/host-packages.sh
install_host_packages
profile="${IRONBARK_UP_PROFILE:-release}"
cargo build --profile "$profile" -p ironbark
dir=release
[ "$profile" = dev ] && dir=debug
install -m 0755 "target/$dir/ironbark" /usr/local/bin/ironbark
exec /usr/local/bin/ironbark up "$@"

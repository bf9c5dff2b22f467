#!/usr/bin/env bash
# Installs what ironbark needs on this host, builds it, installs the binary
# as /usr/local/bin/ironbark and starts the whole cloud: `ironbark up`.
# Arguments go to `ironbark up` (e.g. --data-dir, --listen, --config).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/host-packages.sh
install_host_packages
cargo build --release -p ironbark
install -m 0755 target/release/ironbark /usr/local/bin/ironbark
exec /usr/local/bin/ironbark up "$@"

#!/usr/bin/env bash
# Instance life-cycle bench (root): RunInstances -> running / guest init /
# readiness next to a bare QEMU boot of the same image, and
# TerminateInstances -> terminated. See benches/instances.py.
# Knobs: ROUNDS (3), SKIP_BUILD (1: use target/release as is), VENV (.venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/host-packages.sh
install_host_packages
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release -q -p ironbark
fi
VENV=${VENV:-.venv}
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/blackbox/requirements.txt
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); TCG guests"
IRONBARK_BIN="$(realpath "$TARGET_DIR/release/ironbark")" "$VENV/bin/python" benches/instances.py

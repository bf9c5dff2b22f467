#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, builds,
# lints, runs the Rust tests, then the black-box suite that drives a real
# `ironbark up` with the real AWS CLI and boto3 from a venv.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/host-packages.sh
install_host_packages

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== build"
cargo build --workspace

echo "== Rust tests"
# Root-only tests of real QEMU guests and real host networking run too
# (CI runs as root; elsewhere they report themselves skipped).
if [ "$(id -u)" = 0 ]; then
  export IRONBARK_QEMU_TESTS=1 IRONBARK_NET_TESTS=1
fi
cargo test --workspace

echo "== black-box tests (AWS CLI, boto3)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/blackbox/requirements.txt
IRONBARK_BIN="$PWD/target/debug/ironbark" .venv/bin/python -m pytest -q tests/blackbox
echo "== all tests passed"

#!/usr/bin/env bash
# The CC's data path at 1,000 security groups and 10,000 rules: time from
# a rule change to enforcement, and the per-packet cost of the forward path
# with ironbark's nftables sets next to an equivalent linear iptables
# ruleset, in the same run. Needs root (it makes network namespaces, all
# named ibnb<pid>-*, removed on exit), ip, nft and iptables.
#
# Knobs (environment): NET_GROUPS (1000), NET_RULES (10000), PACKETS
# (200000 per run), RUNS (5, the best is kept), CHANGES (5 authorizes and
# 5 revokes), NFT_VIA_IP_NETNS (1: run nft through `ip netns exec`, as the
# CC's tests do, instead of directly), SKIP_BUILD (1 to use the release
# binary as is).
#
# Usage: sudo bash benches/network.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-target}

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p ironbark-cc --bin ironbark-netbench >&2
fi
exec "$TARGET_DIR/release/ironbark-netbench"

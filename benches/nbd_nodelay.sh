#!/usr/bin/env bash
# The NBD write stall of QEMU 7.2 (Debian 12's own QEMU) and what the SC
# does about it. QEMU 7.2's NBD server leaves Nagle on: its small write
# replies wait for the client's delayed ACK, and 64 KiB writes over TCP
# crawl. The SC makes each export's TCP listener itself, with TCP_NODELAY
# (which accepted sockets inherit), and hands it to qemu-storage-daemon as
# `addr.type=fd` (crates/sc/src/listen.rs, daemon.rs). This script
# fetches QEMU 7.2's qemu-storage-daemon from Debian 12 (apt-get download,
# unpacked under a scratch directory, nothing installed) and times
# `qemu-img bench` writing MIB MiB in 64 KiB requests (queue depth 64)
# over loopback TCP to:
#   1. the 7.2 daemon listening by itself (`addr.type=inet`), as before;
#   2. the 7.2 daemon on a listener made the SC's way (TCP_NODELAY, fd 3);
#   3. the same listener without TCP_NODELAY (the control);
#   4. the host's own daemon listening by itself, for reference.
# Needs apt with Debian 12 (bookworm) sources, python3 (to hand the
# listener over as the SC does), qemu-img. Knobs: MIB (256), PORT (21950).
set -euo pipefail
MIB=${MIB:-256}
PORT=${PORT:-21950}
WORK=$(mktemp -d /var/tmp/ironbark-nbd72.XXXXXX)
trap 'pkill -f "$WORK/" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK"
ver=$(apt-cache madison qemu-system-common | awk -F'|' '$2 ~ /^ *1:7\.2/ {gsub(/ /, "", $2); print $2; exit}')
[[ -n $ver ]] || { echo "no QEMU 7.2 in the apt sources (Debian 12 needed)"; exit 1; }
apt-get download -q "qemu-system-common=$ver" > /dev/null 2>&1
dpkg -x qemu-system-common_*.deb root
QSD72="$WORK/root/usr/bin/qemu-storage-daemon"
truncate -s 1G vol.raw

# The SC's way, in a few lines: bind, set the options, listen, exec the
# daemon with the socket as fd 3.
cat > launch.py <<'EOF'
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if sys.argv[1] == "nodelay":
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.bind(("127.0.0.1", int(sys.argv[2])))
s.listen(16)
fd = os.dup(s.fileno()) if s.fileno() == 3 else s.fileno()
os.dup2(fd, 3, inheritable=True)
os.execv(sys.argv[3], sys.argv[3:])
EOF

disk_args=(--blockdev "driver=file,node-name=f,filename=$WORK/vol.raw"
  --blockdev driver=raw,node-name=d,file=f)
# After --nbd-server: the export needs the server.
export_arg=(--export type=nbd,id=e,node-name=d,name=v,writable=on)
count=$((MIB * 16))

# run LABEL COMMAND...: start the daemon, bench, stop it.
run() {
  local label=$1; shift
  "$@" & local pid=$!
  for _ in $(seq 1 50); do
    ss -Hltn "sport = :$PORT" | grep -q . && break
    sleep 0.1
  done
  local out
  out=$(timeout 600 qemu-img bench -w -t none -f raw -s 65536 -c "$count" -d 64 "nbd://127.0.0.1:$PORT/v" 2>&1 | tail -1)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local secs
  secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' <<<"$out")
  [[ -n $secs ]] || { echo "$label: $out"; exit 1; }
  printf '%-58s %8.2f s  %8.1f s/GiB\n' "$label" "$secs" "$(echo "$secs * 1024 / $MIB" | bc -l)"
}

echo "64 KiB writes, queue depth 64, $MIB MiB over loopback TCP; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "QEMU 7.2: $("$QSD72" --version | head -1)"
echo "host:     $(qemu-storage-daemon --version | head -1)"
run "7.2 daemon, its own listener (addr.type=inet)" \
  "$QSD72" "${disk_args[@]}" --nbd-server "addr.type=inet,addr.host=127.0.0.1,addr.port=$PORT" "${export_arg[@]}"
run "7.2 daemon, the SC's listener (TCP_NODELAY, addr.type=fd)" \
  python3 launch.py nodelay "$PORT" "$QSD72" "${disk_args[@]}" --nbd-server addr.type=fd,addr.str=3 "${export_arg[@]}"
run "7.2 daemon, the same listener without TCP_NODELAY" \
  python3 launch.py delay "$PORT" "$QSD72" "${disk_args[@]}" --nbd-server addr.type=fd,addr.str=3 "${export_arg[@]}"
run "host daemon, its own listener (addr.type=inet)" \
  qemu-storage-daemon "${disk_args[@]}" --nbd-server "addr.type=inet,addr.host=127.0.0.1,addr.port=$PORT" "${export_arg[@]}"

#!/usr/bin/env bash
# EBS snapshot bench: a 10 GiB volume holding 1 GiB of data (random, in
# 64 MiB runs spread over the volume), snapshotted three ways:
#   1. the original's method: full copy of the volume file (cp) then gzip of
#      the whole copy;
#   2. the SC (crates/sc, example `snapbench`), gzip and zstd, timed from the
#      CreateSnapshot (desired state applied) to `completed`: point-in-time
#      copy by the volume's qemu-storage-daemon straight into the sparse raw
#      copy kept on the SC, compression and hashing of the data segments
#      with each 16 MiB multipart part uploaded as soon as it is made to an
#      in-process Walrus stand-in that, like Walrus, computes each part's
#      MD5 (ETag) and checks its CRC-32 on one thread, completion (the
#      object's CRC-32 checked against the parts'), record written. Also its CPU seconds (SC, stand-in and zstd; not QEMU's),
#      which say more than the wall time on a busy machine;
#   3. the floor: reading the 1 GiB of data from disk (O_DIRECT).
# Then NBD throughput of SC exports through QEMU's client against the
# local file (example `nbdbench`, see its header for the method): the
# same-host export a single-host install's VMs use (Unix socket, measured
# directly) and the remote one (TCP + TLS-PSK, through a measuring relay).
# Needs root-free tools only: qemu-utils (qemu-storage-daemon, qemu-img),
# zstd, gzip, dd. BENCH_DIR (default /var/tmp/ironbark-ebs-bench) must have
# ~13 GiB free for the original's copy. Knobs: SIZE_GIB, DATA_MIB, NBD_MIB,
# ONLY_NBD=1, BENCH_PROFILE, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${BENCH_DIR:-/var/tmp/ironbark-ebs-bench}
SIZE_GIB=${SIZE_GIB:-10}
DATA_MIB=${DATA_MIB:-1024}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build -q ${BENCH_PROFILE:+--profile $BENCH_PROFILE} -p ironbark-sc --example snapbench --example nbdbench
BIN="$CARGO_TARGET_DIR/${BENCH_PROFILE:-debug}/examples/snapbench"
NBD_BIN="$CARGO_TARGET_DIR/${BENCH_PROFILE:-debug}/examples/nbdbench"
rm -rf "$DIR"; mkdir -p "$DIR"
trap 'rm -rf "$DIR"' EXIT

# 4. (printed last) NBD throughput through QEMU's client (qemu-img bench,
#    depth 64) to real SC exports against the local file, with the page
#    cache and O_DIRECT: the same-host export (Unix socket, no TLS, what
#    `ironbark up`'s VMs use) directly, and the remote export (TCP +
#    TLS-PSK) through a relay, next to the relay alone; NBD_MIB per run.
#    Then the ceiling three copies per byte put on NBD reads on this
#    machine's cores, beside 70 % of the local read.
#    ONLY_NBD=1 runs just this part.
nbd() {
  printf '\nNBD: qemu-img bench, queue depth 64, %s MiB per run (4 KiB: a quarter), load %s\n' "${NBD_MIB:-1024}" "$(cut -d' ' -f1-3 /proc/loadavg)"
  "$NBD_BIN" "$DIR/nbd" "${NBD_MIB:-1024}"
}
if [[ ${ONLY_NBD:-0} == 1 ]]; then nbd; exit; fi

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
# CPU seconds (user + system) of this shell's finished children, into CPU
# (`times` must run in this shell, not in a pipeline or $(...)).
cpu_children() { times > "$DIR/times"; CPU=$(tail -1 "$DIR/times" | sed 's/[ms]/ /g' | awk '{print $1*60 + $2 + $3*60 + $4}'); }

# The same layout snapbench makes, for the original's method.
vol="$DIR/orig.raw"
truncate -s "${SIZE_GIB}G" "$vol"
runs=$(( (DATA_MIB + 63) / 64 ))
stride=$(( SIZE_GIB * 1024 / runs ))
for i in $(seq 0 $((runs - 1))); do
  dd if=/dev/urandom of="$vol" bs=1M count=64 seek=$((i * stride)) conv=notrunc status=none
done
sync

# 3. the floor: 1 GiB read straight from the disk.
dd if=/dev/urandom of="$DIR/data.bin" bs=1M count="$DATA_MIB" status=none; sync
t0=$(now); dd if="$DIR/data.bin" of=/dev/null bs=16M iflag=direct status=none; t1=$(now)
read_s=$(secs "$t0" "$t1")
rate=$(echo "$DATA_MIB / ($t1 - $t0)" | bc -l | xargs printf '%.0f')
rm -f "$DIR/data.bin"

# 1. the original's method.
t0=$(now); cpu_children; c0=$CPU
cp "$vol" "$DIR/orig.copy" && gzip -c "$DIR/orig.copy" > "$DIR/orig.copy.gz"
t1=$(now); cpu_children; c1=$CPU
orig_s=$(secs "$t0" "$t1")
orig_cpu=$(echo "$c1 - $c0" | bc -l | xargs printf '%.2f')
rm -f "$DIR/orig.copy" "$DIR/orig.copy.gz" "$vol"

# 2. the SC, SC_RUNS times per codec (codecs alternating), each run from a
#    synced disk (the original's copy, just deleted, or the previous run's
#    files would otherwise still be written back under it); the median run
#    is printed, with the range.
sc() { rm -rf "$DIR/sc"; sync; "$BIN" "$DIR/sc" "$SIZE_GIB" "$DATA_MIB" "$1" 2>"$DIR/$1.progress.$2" | awk '{print $3, $4, $5}'; }
sync
declare -A runs_of
for r in $(seq 1 "${SC_RUNS:-3}"); do
  for k in zstd gzip; do runs_of[$k]+="$(sc "$k" "$r") $r"$'\n'; done
done
# median KIND -> "seconds bytes cpu run", and the range into RANGE_<KIND>
median() {
  local sorted n
  sorted=$(printf '%s' "${runs_of[$1]}" | sed '/^$/d' | sort -n)
  n=$(printf '%s\n' "$sorted" | wc -l)
  printf -v "RANGE_$1" '%s-%s' "$(printf '%s\n' "$sorted" | head -1 | cut -d' ' -f1)" "$(printf '%s\n' "$sorted" | tail -1 | cut -d' ' -f1)"
  printf '%s\n' "$sorted" | sed -n "$(( (n + 1) / 2 ))p"
}
read -r zstd_s zstd_b zstd_cpu zstd_run < <(median zstd); median zstd > /dev/null
read -r gzip_s gzip_b gzip_cpu gzip_run < <(median gzip); median gzip > /dev/null

printf '\n%s GiB volume, %s MiB of data, %s cores, load %s\n' "$SIZE_GIB" "$DATA_MIB" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-52s %8s %10s %8s\n' method seconds 'vs orig' 'CPU s'
printf '%-52s %8s %10s %8s\n' "original: cp + gzip of the whole file" "$orig_s" "1.0x" "$orig_cpu"
printf '%-52s %8s %10s %8s   median of %s, range %s s\n' "SC snapshot, gzip (${gzip_b} B), through completed" "$gzip_s" "$(echo "$orig_s / $gzip_s" | bc -l | xargs printf '%.1fx')" "$gzip_cpu" "${SC_RUNS:-3}" "$RANGE_gzip"
printf '%-52s %8s %10s %8s   median of %s, range %s s\n' "SC snapshot, zstd (${zstd_b} B), through completed" "$zstd_s" "$(echo "$orig_s / $zstd_s" | bc -l | xargs printf '%.1fx')" "$zstd_cpu" "${SC_RUNS:-3}" "$RANGE_zstd"
printf '%-52s %8s %10s\n' "floor: read the data from disk (${rate} MiB/s)" "$read_s" "$(echo "$orig_s / $read_s" | bc -l | xargs printf '%.1fx')"
# Where the SC's time went: progress timestamps (copy 0-50 %, compression
# with the parts' upload 50-95 %, the last part and completion 95-100 %),
# and when the upload's first and last parts and its completion arrived.
for k in zstd gzip; do r=${k}_run; printf '%s progress (median run):' "$k"; tr -s ' \n' ' ' < "$DIR/$k.progress.${!r}"; echo; done

nbd

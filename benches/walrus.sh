#!/usr/bin/env bash
# Walrus (S3) throughput bench: PUT and GET of 1 MiB, 64 MiB and 1 GiB
# objects by 1 and by 4 concurrent clients, next to a plain file copy on the
# same disk and to moto's S3 in server mode, all in this one script.
#
# The client is ironbark-s3xfer (crates/loadgen) on presigned URLs, the same
# against every server: one process per measurement running CLIENTS
# transfers at a time, each on its own keep-alive connection, with 1 MiB
# file reads (PUT) and 1 MiB file writes (GET), as dd bs=1M. Both
# directions move bytes between a file and the store on the same disk: PUT
# reads a file and the server writes (and fsyncs) it, and the client checks
# for 200 and that the ETag is the file's MD5; GET reads from the store and
# the client writes each object to its own file, checks 200 and the byte
# count, and fsyncs that file before it counts as done. Any failed transfer
# stops the bench with an error rather than giving a rate. The baseline is
# the same move without a server: `dd conv=fsync` of the file to a new file
# on that disk, with the same concurrency, timed the same way (from before
# the process(es) start to after the last has exited). Each cell is
# measured REPEAT times, the servers running one after the other within a
# repeat (taking turns at going first) so they see the same load; the table
# gives the median MiB/s with the range (min-max) under it, and the median
# of the per-repeat ratios to the file copy (the target), with its range.
# Ends with the load average and the peak RSS of each ironbark process.
#
# Until 2026-11-26 the clients were curl processes (one per object); curl
# writes a download in 4-12 KiB pieces and copied a local file through
# file:// at only 380-494 MB/s where dd reached 931-1042, so GET rates were
# mostly curl's. benches/README.md keeps those runs' tables.
#
# Knobs (environment): SIZES ("1 64 1024", MiB), CLIENTS ("1 4"), REPEAT
# (3), ROUNDS (objects per client per measurement, default: 16 for 1 MiB,
# 4 for 64 MiB, 1 for 1 GiB), VENV (.venv-bench, shared with ec2_api.sh;
# created, or completed with pip, only when moto or boto3 is missing),
# MOTO_VERSION (5.2.5), SKIP_MOTO (1 to skip), SKIP_BUILD (1 to use the
# release build as is), IRONBARK_BIN (the binary to bench; default the
# release build), XFER_BIN (the client; default the release build of
# ironbark-s3xfer), OTHER_BIN (a second ironbark binary benched beside it in
# an "other" column, to compare two builds in the same run), GET_SHM (1:
# also time each cell's GETs into /dev/shm, printed on stderr, to tell the
# disk's share of the GET rate).
#
# moto keeps each object in memory (a 1 GiB PUT peaks at about 2.2 GB of
# RSS), so four 1 GiB clients need about 9 GB of free RAM.
#
# Usage: bash benches/walrus.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SIZES=${SIZES:-"1 64 1024"}
CLIENTS=${CLIENTS:-"1 4"}
REPEAT=${REPEAT:-3}
VENV=${VENV:-.venv-bench}
MOTO_VERSION=${MOTO_VERSION:-5.2.5}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
IRONBARK_BIN=${IRONBARK_BIN:-$TARGET_DIR/release/ironbark}
XFER_BIN=${XFER_BIN:-$TARGET_DIR/release/ironbark-s3xfer}
OTHER_BIN=${OTHER_BIN:-}

log() { printf '== %s\n' "$*" >&2; }

WORK=$(mktemp -d -p "${BENCH_TMP:-/var/tmp}" ironbark-walrus-bench.XXXXXX)
IB_PID=""
OB_PID=""
MOTO_PID=""
# GET_SHM=1's downloads into memory.
SHM_DIR="/dev/shm/ironbark-walrus-bench-$$"
cleanup() {
    for pid in "$IB_PID" "$OB_PID" "$MOTO_PID"; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK" "$SHM_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() {
    local url=$1 pid=$2 i
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { log "server exited during startup"; exit 1; }
        curl -s -o /dev/null --max-time 2 "$url" && return 0
        sleep 0.2
    done
    log "timed out waiting for $url"; exit 1
}

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building ironbark and ironbark-s3xfer (release)"
    cargo build --release -q -p ironbark -p ironbark-loadgen
fi
[[ -x $XFER_BIN ]] || { log "no client at $XFER_BIN (cargo build --release -p ironbark-loadgen)"; exit 1; }
# boto3 presigns for every server; moto (its s3 and server extras) runs one.
# The pins match ec2_api.sh's, which shares the venv. pip runs only when
# something is missing, so a ready venv needs no network.
PINS=(
    "moto[s3,server]==$MOTO_VERSION"
    "Werkzeug==3.1.9"
    "Flask==3.1.3"
    "botocore==1.44.8"
    "boto3==1.44.8"
)
if ! "$VENV/bin/python" -c "
import sys, boto3, moto, flask, flask_cors, yaml, py_partiql_parser
sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    log "installing moto $MOTO_VERSION and boto3 into $VENV"
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}" >&2
fi

# --- servers -----------------------------------------------------------
# start_ironbark BIN DIR: starts it; sets STARTED_PID, STARTED_PORT, STARTED_KEY, STARTED_SECRET.
start_ironbark() {
    local bin=$1 dir=$2 port wport
    port=$(free_port); wport=$(free_port)
    "$bin" up --data-dir "$dir" --listen "127.0.0.1:$port" \
        --walrus-listen "127.0.0.1:$wport" > "$dir.log" 2>&1 &
    STARTED_PID=$!
    STARTED_PORT=$wport
    wait_http "http://127.0.0.1:$wport/" "$STARTED_PID"
    while [[ ! -s $dir/admin/credentials ]]; do sleep 0.1; done
    STARTED_KEY=$(awk -F' = ' '/aws_access_key_id/{print $2}' "$dir/admin/credentials")
    STARTED_SECRET=$(awk -F' = ' '/aws_secret_access_key/{print $2}' "$dir/admin/credentials")
}
start_ironbark "$IRONBARK_BIN" "$WORK/ib"
IB_PID=$STARTED_PID; W_PORT=$STARTED_PORT; IB_KEY=$STARTED_KEY; IB_SECRET=$STARTED_SECRET
if [[ -n $OTHER_BIN ]]; then
    start_ironbark "$OTHER_BIN" "$WORK/ob"
    OB_PID=$STARTED_PID; OB_PORT=$STARTED_PORT; OB_KEY=$STARTED_KEY; OB_SECRET=$STARTED_SECRET
fi

if [[ ${SKIP_MOTO:-0} != 1 ]]; then
    MOTO_PORT=$(free_port)
    "$VENV/bin/python" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" > "$WORK/moto.log" 2>&1 &
    MOTO_PID=$!
    wait_http "http://127.0.0.1:$MOTO_PORT/" "$MOTO_PID"
fi

# presign ENDPOINT KEY SECRET REGION METHOD BUCKET KEYNAME...: one URL per line.
presign() {
    "$VENV/bin/python" - "$@" <<'PY'
import sys, boto3
from botocore.config import Config
ep, key, secret, region, method, bucket, *names = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key, aws_secret_access_key=secret,
                  region_name=region, config=Config(s3={"addressing_style": "path"}))
op = "put_object" if method == "PUT" else "get_object"
for n in names:
    print(s3.generate_presigned_url(op, Params={"Bucket": bucket, "Key": n}, ExpiresIn=3600))
PY
}

make_bucket() { # ENDPOINT KEY SECRET REGION BUCKET
    "$VENV/bin/python" - "$@" <<'PY'
import sys, boto3
ep, key, secret, region, bucket = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key, aws_secret_access_key=secret, region_name=region)
s3.create_bucket(Bucket=bucket)
PY
}

empty_bucket() { # ENDPOINT KEY SECRET REGION BUCKET: keeps the disk from filling up
    "$VENV/bin/python" - "$@" <<'PY'
import sys, boto3
ep, key, secret, region, bucket = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key, aws_secret_access_key=secret, region_name=region)
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
    for o in page.get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=o["Key"])
s3.delete_bucket(Bucket=bucket)
PY
}

now() { date +%s.%N; }
mbps() { python3 -c "import sys; b,t0,t1=map(float,sys.argv[1:]); print(f'{b/1048576/(t1-t0):.0f}')" "$1" "$2" "$3"; }

rounds_for() {
    if [[ -n ${ROUNDS:-} ]]; then echo "$ROUNDS"; return; fi
    case $1 in 1) echo 16 ;; 64) echo 4 ;; *) echo 1 ;; esac
}

# run_s3 ENDPOINT KEY SECRET REGION SIZE_MIB FILE MD5 CLIENTS -> "put_MBps get_MBps"
run_s3() {
    local ep=$1 key=$2 secret=$3 region=$4 size=$5 file=$6 md5=$7 clients=$8
    local rounds n bucket names=() t0 t1 put get bytes
    rounds=$(rounds_for "$size"); n=$((clients * rounds))
    bucket="bench-$size-$RANDOM"
    make_bucket "$ep" "$key" "$secret" "$region" "$bucket"
    for i in $(seq 1 "$n"); do names+=("obj-$i"); done
    presign "$ep" "$key" "$secret" "$region" PUT "$bucket" "${names[@]}" > "$WORK/put.urls"
    presign "$ep" "$key" "$secret" "$region" GET "$bucket" "${names[@]}" > "$WORK/get.urls"
    bytes=$((n * size * 1048576))
    t0=$(now)
    "$XFER_BIN" put --file "$file" --etag "$md5" --concurrency "$clients" \
        < "$WORK/put.urls" > "$WORK/xfer.log" \
        || { log "PUT failed: $ep, $size MiB, $clients clients"; exit 1; }
    t1=$(now); put=$(mbps "$bytes" "$t0" "$t1")
    mkdir -p "$WORK/dl"
    # Each object goes to its own file, fsynced by the client, as each dd of
    # the baseline does (conv=fsync): the same bytes made durable, and no
    # one else's. (A syncfs of the whole disk at the end would also wait
    # for whatever other processes had left dirty on it.)
    t0=$(now)
    "$XFER_BIN" get --out-dir "$WORK/dl" --size $((size * 1048576)) --concurrency "$clients" \
        < "$WORK/get.urls" > "$WORK/xfer.log" \
        || { log "GET failed: $ep, $size MiB, $clients clients"; exit 1; }
    t1=$(now); get=$(mbps "$bytes" "$t0" "$t1")
    rm -rf "$WORK/dl"
    if [[ ${GET_SHM:-0} == 1 ]]; then
        # The same GETs into memory: how much of the GET rate is the disk's.
        local shm="$SHM_DIR"
        mkdir -p "$shm"
        t0=$(now)
        "$XFER_BIN" get --out-dir "$shm" --size $((size * 1048576)) --concurrency "$clients" \
            < "$WORK/get.urls" > "$WORK/xfer.log" || { rm -rf "$shm"; log "GET to $shm failed"; exit 1; }
        t1=$(now)
        rm -rf "$shm"
        log "$ep ${size} MiB x$clients: GET to disk $get MiB/s, to /dev/shm $(mbps "$bytes" "$t0" "$t1") MiB/s"
    fi
    empty_bucket "$ep" "$key" "$secret" "$region" "$bucket"
    echo "$put $get"
}

# file_copy SIZE FILE CLIENTS -> MiB/s of `dd conv=fsync` copies, same concurrency.
file_copy() {
    local size=$1 file=$2 clients=$3 rounds n t0 t1 bytes
    rounds=$(rounds_for "$size"); n=$((clients * rounds)); bytes=$((n * size * 1048576))
    mkdir -p "$WORK/copy"
    t0=$(now)
    seq 1 "$n" | xargs -P "$clients" -I{} dd if="$file" of="$WORK/copy/{}" bs=1M conv=fsync status=none
    t1=$(now); mbps "$bytes" "$t0" "$t1"
    rm -rf "$WORK/copy"
}

# stats V1 V2 ... -> "median min-max"
stats() { python3 -c 'import sys, statistics as st; v=[float(x) for x in sys.argv[1:]]; print(f"{st.median(v):.0f} {min(v):.0f}-{max(v):.0f}")' "$@"; }
# ratios NUMS... / DENOMS... (same count) -> "median% min-max%"
ratios() {
    python3 -c '
import sys, statistics as st
a = sys.argv[1:]; h = len(a) // 2
r = [100 * float(x) / max(float(y), 1) for x, y in zip(a[:h], a[h:])]
print(f"{st.median(r):.0f}% {min(r):.0f}-{max(r):.0f}%")' "$@"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(df -h "$WORK" | awk 'NR==2{print $1}'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "clients: ironbark-s3xfer on presigned URLs, 1 MiB file reads/writes, GETs fsynced; servers and clients share the cores"
echo "each cell: median MiB/s of $REPEAT runs, range below; ib/file: median of per-run ratios"
other_col=""; [[ -n $OTHER_BIN ]] && other_col="other"
md5sum_rates=(); large_copies=()
printf '\n%-8s %-3s %-4s %10s %10s %10s %10s %10s\n' size cl dir "file" ironbark "$other_col" moto "ib/file"
for size in $SIZES; do
    file="$WORK/data-$size"
    head -c $((size * 1048576)) /dev/urandom > "$file"
    t0=$(date +%s.%N)
    md5=$(md5sum "$file" | cut -d' ' -f1)
    t1=$(date +%s.%N)
    [[ $size -ge 64 ]] && md5sum_rates+=("$(mbps $((size * 1048576)) "$t0" "$t1")")
    for clients in $CLIENTS; do
        fc=(); iw=(); ir=(); ow=(); or=(); mw=(); mr=()
        servers=(ib)
        [[ -n $OTHER_BIN ]] && servers+=(ob)
        [[ -n $MOTO_PID ]] && servers+=(mo)
        for rep in $(seq 1 "$REPEAT"); do
            fc+=("$(file_copy "$size" "$file" "$clients")")
            # Whoever runs first after the file copy meets its write-back
            # and file deletions: take turns at going first.
            for k in $(seq 0 $((${#servers[@]} - 1))); do
                case ${servers[$(((k + rep) % ${#servers[@]}))]} in
                    ib) read -r w r < <(run_s3 "http://127.0.0.1:$W_PORT" "$IB_KEY" "$IB_SECRET" eucalyptus "$size" "$file" "$md5" "$clients")
                        iw+=("$w"); ir+=("$r") ;;
                    ob) read -r w r < <(run_s3 "http://127.0.0.1:$OB_PORT" "$OB_KEY" "$OB_SECRET" eucalyptus "$size" "$file" "$md5" "$clients")
                        ow+=("$w"); or+=("$r") ;;
                    mo) read -r w r < <(run_s3 "http://127.0.0.1:$MOTO_PORT" testing testing us-east-1 "$size" "$file" "$md5" "$clients")
                        mw+=("$w"); mr+=("$r") ;;
                esac
            done
        done
        for dir in PUT GET; do
            if [[ $dir == PUT ]]; then ib=("${iw[@]}"); ob=("${ow[@]}"); mo=("${mw[@]}"); else ib=("${ir[@]}"); ob=("${or[@]}"); mo=("${mr[@]}"); fi
            read -r fm fs < <(stats "${fc[@]}")
            read -r im is < <(stats "${ib[@]}")
            om=""; os=""; mm=-; ms=""
            if [[ -n $OTHER_BIN ]]; then read -r om os < <(stats "${ob[@]}"); fi
            if [[ -n $MOTO_PID ]]; then read -r mm ms < <(stats "${mo[@]}"); fi
            read -r rm rs < <(ratios "${ib[@]}" "${fc[@]}")
            if [[ $dir == PUT && $clients == 1 && $size -ge 64 ]]; then
                large_copies+=("${size}MiB: $(python3 -c "print(f'{0.7 * float(\"$fm\"):.0f}')")")
            fi
            printf '%-8s %-3s %-4s %10s %10s %10s %10s %10s\n' "${size}MiB" "$clients" "$dir" "$fm" "$im" "$om" "$mm" "$rm"
            printf '%-8s %-3s %-4s %10s %10s %10s %10s %10s\n' "" "" "" "$fs" "$is" "$os" "$ms" "$rs"
        done
    done
    rm -f "$file"
done
echo
# A single PUT's ETag is the MD5 of the whole object, one serial chain of
# 64-byte blocks: no server can return it faster than one core computes
# MD5, whatever else it overlaps. Printed beside 70 % of the one-client
# file copy (the target) so the run shows whether the target is reachable
# on this CPU at all.
# OpenSSL counts in 1000-byte k; the table's rates are MiB/s.
openssl_md5=$(openssl speed -evp md5 -bytes 1048576 -seconds 2 2>/dev/null | awk '$1 == "md5" {sub(/k$/, "", $2); printf "%.0f", $2 * 1000 / 1048576}')
echo "MD5 on one core, the ceiling of one PUT stream: OpenSSL (Walrus' MD5) ${openssl_md5:-?} MiB/s, md5sum ${md5sum_rates[*]:-?} MiB/s"
echo "70 % of the one-client file copy (the PUT target): ${large_copies[*]:-?} MiB/s"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ironbark peak RSS: $(awk '/VmHWM/{print $2, $3}' /proc/$IB_PID/status)"
if [[ -n $OTHER_BIN ]]; then
    echo "other peak RSS: $(awk '/VmHWM/{print $2, $3}' /proc/$OB_PID/status)"
fi

#!/usr/bin/env bash
# Walrus (S3) throughput bench: PUT and GET of 1 MiB, 64 MiB and 1 GiB
# objects by several concurrent clients, next to a plain file copy on the
# same disk and to moto's S3 in server mode, all in this one script.
#
# Clients are curl processes on presigned URLs (so the client side costs
# the same against every server). Both directions move bytes between a
# file and the store on the same disk: PUT reads a file and the server
# writes (and fsyncs) it; GET reads from the store and curl writes a file.
# The baseline is the same move without a server: `dd conv=fsync` of the
# file to a new file on that disk, with the same concurrency. Prints MB/s
# per size and direction, the ratio to the file copy, and the peak RSS of
# the ironbark process.
#
# Knobs (environment): SIZES ("1 64 1024", MiB), CLIENTS (4), ROUNDS (per
# client, default: 16 for 1 MiB, 4 for 64 MiB, 1 for 1 GiB), VENV
# (.venv-bench), MOTO_VERSION (5.2.5), SKIP_MOTO (1 to skip),
# SKIP_BUILD (1 to use target/release as is).
#
# Usage: bash benches/walrus.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SIZES=${SIZES:-"1 64 1024"}
CLIENTS=${CLIENTS:-4}
VENV=${VENV:-.venv-bench}
MOTO_VERSION=${MOTO_VERSION:-5.2.5}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

log() { printf '== %s\n' "$*" >&2; }

WORK=$(mktemp -d -p "${BENCH_TMP:-/var/tmp}" ironbark-walrus-bench.XXXXXX)
IB_PID=""
MOTO_PID=""
cleanup() {
    for pid in "$IB_PID" "$MOTO_PID"; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
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
    log "building ironbark (release)"
    cargo build --release -q -p ironbark
fi
if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "moto[s3,server]==$MOTO_VERSION" boto3

# --- servers -----------------------------------------------------------
IB_PORT=$(free_port); W_PORT=$(free_port)
"$TARGET_DIR/release/ironbark" up --data-dir "$WORK/ib" --listen "127.0.0.1:$IB_PORT" \
    --walrus-listen "127.0.0.1:$W_PORT" > "$WORK/ironbark.log" 2>&1 &
IB_PID=$!
wait_http "http://127.0.0.1:$W_PORT/" "$IB_PID"
while [[ ! -s $WORK/ib/admin/credentials ]]; do sleep 0.1; done
IB_KEY=$(awk -F' = ' '/aws_access_key_id/{print $2}' "$WORK/ib/admin/credentials")
IB_SECRET=$(awk -F' = ' '/aws_secret_access_key/{print $2}' "$WORK/ib/admin/credentials")

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

now() { date +%s.%N; }
mbps() { python3 -c "import sys; b,t0,t1=map(float,sys.argv[1:]); print(f'{b/1048576/(t1-t0):.0f}')" "$1" "$2" "$3"; }

rounds_for() {
    if [[ -n ${ROUNDS:-} ]]; then echo "$ROUNDS"; return; fi
    case $1 in 1) echo 16 ;; 64) echo 4 ;; *) echo 1 ;; esac
}

# run_s3 NAME ENDPOINT KEY SECRET REGION SIZE_MIB FILE -> "put_MBps get_MBps"
run_s3() {
    local name=$1 ep=$2 key=$3 secret=$4 region=$5 size=$6 file=$7
    local rounds n bucket names=() t0 t1 put get bytes
    rounds=$(rounds_for "$size"); n=$((CLIENTS * rounds))
    bucket="bench-$size-$RANDOM"
    make_bucket "$ep" "$key" "$secret" "$region" "$bucket"
    for i in $(seq 1 "$n"); do names+=("obj-$i"); done
    presign "$ep" "$key" "$secret" "$region" PUT "$bucket" "${names[@]}" > "$WORK/put.urls"
    presign "$ep" "$key" "$secret" "$region" GET "$bucket" "${names[@]}" > "$WORK/get.urls"
    bytes=$((n * size * 1048576))
    t0=$(now)
    xargs -P "$CLIENTS" -I{} curl -sf -o /dev/null -T "$file" "{}" < "$WORK/put.urls"
    t1=$(now); put=$(mbps "$bytes" "$t0" "$t1")
    mkdir -p "$WORK/dl"
    t0=$(now)
    xargs -P "$CLIENTS" -I{} curl -sf --output-dir "$WORK/dl" -O "{}" < "$WORK/get.urls"
    sync -f "$WORK/dl"
    t1=$(now); get=$(mbps "$bytes" "$t0" "$t1")
    rm -rf "$WORK/dl"
    echo "$put $get"
}

# file_copy SIZE FILE -> MB/s of `dd conv=fsync` copies, same concurrency.
file_copy() {
    local size=$1 file=$2 rounds n t0 t1 bytes
    rounds=$(rounds_for "$size"); n=$((CLIENTS * rounds)); bytes=$((n * size * 1048576))
    mkdir -p "$WORK/copy"
    t0=$(now)
    seq 1 "$n" | xargs -P "$CLIENTS" -I{} dd if="$file" of="$WORK/copy/{}" bs=1M conv=fsync status=none
    t1=$(now); mbps "$bytes" "$t0" "$t1"
    rm -rf "$WORK/copy"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(df -h "$WORK" | awk 'NR==2{print $1}')"
echo "clients: $CLIENTS concurrent curl processes on presigned URLs; servers and clients share the cores"
printf '\n%-8s %-5s %12s %12s %12s %10s\n' size dir "file MB/s" "ironbark" "moto" "ib/file"
for size in $SIZES; do
    file="$WORK/data-$size"
    head -c $((size * 1048576)) /dev/urandom > "$file"
    fw=$(file_copy "$size" "$file"); fr=$fw
    read -r iw ir < <(run_s3 ironbark "http://127.0.0.1:$W_PORT" "$IB_KEY" "$IB_SECRET" eucalyptus "$size" "$file")
    if [[ -n $MOTO_PID ]]; then
        read -r mw mr < <(run_s3 moto "http://127.0.0.1:$MOTO_PORT" testing testing us-east-1 "$size" "$file")
    else
        mw=-; mr=-
    fi
    printf '%-8s %-5s %12s %12s %12s %9s%%\n' "${size}MiB" PUT "$fw" "$iw" "$mw" "$((iw * 100 / (fw > 0 ? fw : 1)))"
    printf '%-8s %-5s %12s %12s %12s %9s%%\n' "${size}MiB" GET "$fr" "$ir" "$mr" "$((ir * 100 / (fr > 0 ? fr : 1)))"
    rm -f "$file"
done
echo
echo "ironbark peak RSS: $(awk '/VmHWM/{print $2, $3}' /proc/$IB_PID/status)"

#!/usr/bin/env bash
# EC2 API throughput bench: ironbark next to moto (server mode).
#
# Builds ironbark and ironbark-loadgen (release), installs a pinned moto in
# a venv, starts both servers on loopback ports, and drives
# DescribeSecurityGroups and CreateKeyPair against each with the same
# closed-loop, SigV4-signing load generator at each concurrency level.
# Prints requests/second and p99 latency side by side, the ratio, the
# per-key RSA-2048 generation cost of each side's crypto library, and the
# peak RSS of both servers. See benches/README.md.
#
# Knobs (environment): DURATION (s, default 10), WARMUP (s, 2),
# CONCURRENCY ("16 64"), ACTIONS ("describe-security-groups create-key-pair"),
# VENV (.venv-bench), MOTO_VERSION (5.2.5), KEYGEN_SAMPLES (20, 0 to skip),
# CARGO_TARGET_DIR (as for cargo), SKIP_BUILD (1: use the binaries already
# in $CARGO_TARGET_DIR/release as they are).
#
# Usage: bash benches/ec2_api.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONCURRENCY=${CONCURRENCY:-"16 64"}
ACTIONS=${ACTIONS:-"describe-security-groups create-key-pair"}
VENV=${VENV:-.venv-bench}
MOTO_VERSION=${MOTO_VERSION:-5.2.5}
KEYGEN_SAMPLES=${KEYGEN_SAMPLES:-20}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release

# moto and the runtime packages whose speed matters, pinned so runs compare.
MOTO_PINS=(
    "moto[ec2,server]==$MOTO_VERSION"
    "Werkzeug==3.1.9"
    "Flask==3.1.3"
    "cryptography==50.0.2"
    "botocore==1.44.8"
    "boto3==1.44.8"
    "xmltodict==1.0.4"
    "Jinja2==3.1.6"
)

log() { printf '== %s\n' "$*" >&2; }

WORK=$(mktemp -d -t ironbark-bench.XXXXXX)
IB_PID=""
MOTO_PID=""
cleanup() {
    local pid
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

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http URL PID NAME: until URL answers anything over HTTP.
wait_http() {
    local url=$1 pid=$2 name=$3 i
    for i in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; its log:"
            cat "$WORK/$name.log" >&2 || true
            exit 1
        fi
        if curl -s -o /dev/null --max-time 2 "$url"; then
            return 0
        fi
        sleep 0.2
    done
    log "$name did not answer at $url within 60 s"
    exit 1
}

# field LINE NAME: the value of NAME=… in a loadgen output line.
field() {
    grep -o "\b$2=[^ ]*" <<<"$1" | head -n1 | cut -d= -f2
}

peak_rss_mib() {
    awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"
}

# ---- build ---------------------------------------------------------------
if [[ ${SKIP_BUILD:-0} == 1 ]]; then
    log "SKIP_BUILD=1: using the binaries in $BIN as they are"
    for b in ironbark ironbark-loadgen; do
        [[ -x $BIN/$b ]] || { log "$BIN/$b is missing"; exit 1; }
    done
else
    log "building release binaries (cargo build --release -p ironbark -p ironbark-loadgen)"
    cargo build --release -p ironbark -p ironbark-loadgen >&2
fi

# ---- moto venv -------------------------------------------------------------
if ! "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    log "installing moto $MOTO_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${MOTO_PINS[@]}" >&2
fi
# Keep the venv out of git without touching the repository's .gitignore
# (Python 3.13+ venvs write this file themselves).
[[ -f $VENV/.gitignore ]] || echo '*' >"$VENV/.gitignore"

# ---- start both servers ----------------------------------------------------
IB_DATA=$WORK/ironbark-data
IB_PORT=$(free_port)
log "starting ironbark on 127.0.0.1:$IB_PORT"
IB_ARGS=(up --data-dir "$IB_DATA" --listen "127.0.0.1:$IB_PORT")
# Builds that serve S3 (Walrus) on a second port take it from --walrus-listen;
# give it a free one rather than the default API port + 7.
if "$BIN/ironbark" up --help 2>/dev/null | grep -q -- --walrus-listen; then
    IB_ARGS+=(--walrus-listen "127.0.0.1:$(free_port)")
fi
"$BIN/ironbark" "${IB_ARGS[@]}" >"$WORK/ironbark.log" 2>&1 &
IB_PID=$!
wait_http "http://127.0.0.1:$IB_PORT/" "$IB_PID" ironbark
for _ in $(seq 1 50); do
    [[ -s $IB_DATA/admin/credentials ]] && break
    sleep 0.1
done
# ini_value FILE KEY: the first `KEY = value` in FILE (values may hold '=').
ini_value() {
    awk -v k="$2" '{ name = $0; sub(/ *=.*/, "", name) } name == k { sub(/^[^=]*= */, ""); print; exit }' "$1"
}
IB_KEY=$(ini_value "$IB_DATA/admin/credentials" aws_access_key_id)
IB_SECRET=$(ini_value "$IB_DATA/admin/credentials" aws_secret_access_key)
IB_REGION=$(ini_value "$IB_DATA/admin/config" region)
if [[ -z $IB_KEY || -z $IB_SECRET || -z $IB_REGION ]]; then
    log "could not read the admin key and region from $IB_DATA/admin/"
    exit 1
fi

MOTO_PORT=$(free_port)
log "starting moto_server on 127.0.0.1:$MOTO_PORT"
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
wait_http "http://127.0.0.1:$MOTO_PORT/moto-api/" "$MOTO_PID" moto

# load TARGET ACTION CONCURRENCY DURATION WARMUP: one loadgen run.
load() {
    local target=$1 action=$2 conc=$3 dur=$4 warm=$5
    local -a auth
    if [[ $target == ironbark ]]; then
        auth=(--endpoint "http://127.0.0.1:$IB_PORT/" --access-key "$IB_KEY" --secret "$IB_SECRET" --region "$IB_REGION")
    else
        auth=(--endpoint "http://127.0.0.1:$MOTO_PORT/" --access-key testing --secret testing --region us-east-1)
    fi
    "$BIN/ironbark-loadgen" "${auth[@]}" --action "$action" --concurrency "$conc" \
        --duration "$dur" --warmup "$warm" 2>"$WORK/loadgen.err" || true
    if [[ -s $WORK/loadgen.err ]]; then
        sed "s/^/[$target $action c=$conc] /" "$WORK/loadgen.err" >>"$WORK/loadgen-errors.log"
    fi
}

# The first EC2 call is slow on both (moto builds its backends; ironbark
# creates the account's default group): prime each outside the measurement.
log "priming both servers"
for target in ironbark moto; do
    load "$target" describe-security-groups 1 2 0 >/dev/null
done
rm -f "$WORK/loadgen-errors.log"

# ---- what we run on --------------------------------------------------------
CPU_MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "# ironbark vs moto: EC2 Query API throughput"
echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine:     $(nproc) cores, ${CPU_MODEL:-unknown CPU}, $(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
BUILT=""
[[ ${SKIP_BUILD:-0} == 1 ]] && BUILT=", binary built $(date -u -r "$BIN/ironbark" +%Y-%m-%dT%H:%M:%SZ)"
echo "ironbark:    $("$BIN/ironbark" --version 2>/dev/null | head -n1) (checkout $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ', dirty tree')$BUILT), $(rustc --version 2>/dev/null)"
echo "moto:        $("$VENV/bin/python" - <<'PY'
import sys
from importlib.metadata import version
print(f"moto {version('moto')}, Werkzeug {version('werkzeug')}, "
      f"cryptography {version('cryptography')}, Python {sys.version.split()[0]}")
PY
)"
echo "load:        loadavg before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "method:      closed loop, each request freshly SigV4-signed, keep-alive; ${WARMUP}s warm-up then ${DURATION}s measured per cell"
echo "note:        the load generator and the server under test share these $(nproc) cores"
echo

# ---- the runs ----------------------------------------------------------------
declare -a ROWS=()
for action in $ACTIONS; do
    for conc in $CONCURRENCY; do
        log "$action, concurrency $conc: ironbark"
        ib=$(load ironbark "$action" "$conc" "$DURATION" "$WARMUP")
        log "$action, concurrency $conc: moto"
        mo=$(load moto "$action" "$conc" "$DURATION" "$WARMUP")
        echo "ironbark $ib"
        echo "moto     $mo"
        ROWS+=("$action|$conc|$(field "$ib" rps)|$(field "$ib" p99_ms)|$(field "$ib" errors)|$(field "$mo" rps)|$(field "$mo" p99_ms)|$(field "$mo" errors)")
    done
done
echo

printf '%-26s %5s | %12s %10s | %10s %10s | %8s\n' \
    action conc "ironbark rps" "p99 ms" "moto rps" "p99 ms" ratio
printf '%s\n' "-------------------------------------------------------------------------------------------"
for row in "${ROWS[@]}"; do
    IFS='|' read -r action conc ib_rps ib_p99 ib_err mo_rps mo_p99 mo_err <<<"$row"
    ratio=$(awk -v a="${ib_rps:-0}" -v b="${mo_rps:-0}" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "n/a" }')
    note=""
    [[ ${ib_err:-0} != 0 ]] && note+=" ironbark errors=$ib_err"
    [[ ${mo_err:-0} != 0 ]] && note+=" moto errors=$mo_err"
    printf '%-26s %5s | %12s %10s | %10s %10s | %8s%s\n' \
        "$action" "$conc" "${ib_rps:-?}" "${ib_p99:-?}" "${mo_rps:-?}" "${mo_p99:-?}" "$ratio" "$note"
done
echo
echo "peak RSS (VmHWM): ironbark $(peak_rss_mib "$IB_PID") MiB, moto $(peak_rss_mib "$MOTO_PID") MiB"

if [[ -s $WORK/loadgen-errors.log ]]; then
    echo
    echo "load generator errors (first lines):"
    head -n 20 "$WORK/loadgen-errors.log"
fi

# ---- what bounds CreateKeyPair -------------------------------------------------
# Both sides generate an RSA-2048 key per CreateKeyPair: ironbark through
# the system libcrypto it links (openssl crate), moto through the OpenSSL
# built into the cryptography wheel. Time both in-process.
if [[ $KEYGEN_SAMPLES -gt 0 && $ACTIONS == *create-key-pair* ]]; then
    LIBCRYPTO=$(ldd "$BIN/ironbark" | awk '/libcrypto/ { print $3; exit }')
    echo
    echo "RSA-2048 key generation, $KEYGEN_SAMPLES keys on one core (bounds CreateKeyPair on both sides):"
    "$VENV/bin/python" - "$KEYGEN_SAMPLES" "${LIBCRYPTO:-}" <<'PY'
import ctypes, statistics, sys, time
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives.asymmetric import rsa

n, libpath = int(sys.argv[1]), sys.argv[2]

def report(name, times):
    ms = [t * 1000 for t in times]
    print(f"  {name:52s} mean {statistics.mean(ms):6.1f} ms  median {statistics.median(ms):6.1f} ms"
          f"  (~{1000 / statistics.mean(ms):5.1f} keys/s/core)")

if libpath:
    lib = ctypes.CDLL(libpath)
    lib.OpenSSL_version.restype = ctypes.c_char_p
    lib.RSA_new.restype = ctypes.c_void_p
    lib.BN_new.restype = ctypes.c_void_p
    lib.BN_set_word.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
    lib.RSA_generate_key_ex.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.RSA_free.argtypes = [ctypes.c_void_p]
    e = lib.BN_new()
    lib.BN_set_word(e, 65537)
    times = []
    for _ in range(n):
        r = lib.RSA_new()
        t = time.perf_counter()
        if lib.RSA_generate_key_ex(r, 2048, e, None) != 1:
            sys.exit("RSA_generate_key_ex failed")
        times.append(time.perf_counter() - t)
        lib.RSA_free(r)
    report(f"ironbark: {lib.OpenSSL_version(0).decode()} ({libpath})", times)
else:
    print("  ironbark: libcrypto not found with ldd; skipped")

times = []
for _ in range(n):
    t = time.perf_counter()
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    times.append(time.perf_counter() - t)
report(f"moto: {backend.openssl_version_text()} (python cryptography)", times)
PY
fi

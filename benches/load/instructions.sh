#!/usr/bin/env bash
# User-space instructions per redirect request, counted by callgrind: image-url-server
# (memory cache) beside the constant-302 actix-web handler, same client: the handler
# asked for /a.jpg with a short Location, and asked for our request path answering with
# a Location as long as our signed URL (the like-for-like row).
# Instruction counts do not depend on what else the machine is doing, so this number
# moves only when the code does — unlike req/s on a shared machine.
# Usage: bash benches/load/instructions.sh   (needs valgrind; N=3000 requests by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-3000}
# KEEP=dir keeps the callgrind profiles there (for callgrind_annotate).
work=${KEEP:-$(mktemp -d)}
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
cargo build --release -q -p image-url-server
cargo build --release -q -p image-url-benches --example const302

count() { # label path command...
  local label=$1 path=$2 port vp
  shift 2
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # The constant handler takes its address as an argument, `serve` from the environment.
  case $label in const302*) set -- "$@" "127.0.0.1:$port" ;; esac
  IMAGE_URL_SERVER__LISTEN="127.0.0.1:$port" \
    valgrind --tool=callgrind --callgrind-out-file="$work/$label.out" "$@" 2>/dev/null &
  vp=$!
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  # Warm up, zero the counters, send N keep-alive requests, dump.
  python3 - "$port" "$N" "$path" <<'PY'
import http.client, subprocess, sys
port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port)
def send(k):
    for _ in range(k):
        conn.request("GET", path)
        res = conn.getresponse()
        res.read()
        assert res.status == 302, res.status
send(500)
subprocess.run(["callgrind_control", "-z"], capture_output=True, check=True)
send(n)
subprocess.run(["callgrind_control", "-d"], capture_output=True, check=True)
PY
  kill "$vp"; wait "$vp" 2>/dev/null || true
  local total memset
  total=$(callgrind_annotate "$work/$label.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  # libc's memset, by itself: callgrind counts each byte a `rep stosb` stores as an
  # instruction, and actix-http's request decoder zeroes a 3 KiB header index twice a
  # request (6 176 "instructions", the same in every server here, a few dozen cycles).
  memset=$(callgrind_annotate --auto=no --threshold=100 "$work/$label.out.1" 2>/dev/null |
    awk '/:__memset_/ && !/=>/ {gsub(",", "", $1); m += $1} END {print m + 0}')
  echo "$((total / N)) $((memset / N))"
}

const=$(count const302 /a.jpg target/release/examples/const302)
# The same handler asked for our path and answering with a Location as long as our
# signed URL: how much of the difference is only the longer request and response.
long_location="http://127.0.0.1:9/a.jpg?q-sign-algorithm=sha1&q-ak=AKIDload&q-sign-time=1700000000%3B1700003600&q-key-time=1700000000%3B1700003600&q-header-list=host&q-url-param-list=&q-signature=$(printf '0%.0s' $(seq 40))"
const_long=$(export CONST302_LOCATION="$long_location"
  count const302_long /api/v1/images/a.jpg/proxy target/release/examples/const302)
# Each `count` runs in a subshell, so what it exports stays there.
export IMAGE_URL_SERVER__WORKERS=1 IMAGE_URL_COS__DOMAIN=127.0.0.1:9 IMAGE_URL_COS__SCHEME=http \
  COS_SECRET_ID=AKIDload COS_SECRET_KEY=load-secret
server=(target/release/image-url-server serve)
quiet=$(export RUST_LOG=warn; count quiet /api/v1/images/a.jpg/proxy "${server[@]}")
logged=$(export RUST_LOG=info IMAGE_URL_SERVER__ACCESS_LOG="$work/access.log"
  count logged /api/v1/images/a.jpg/proxy "${server[@]}")
echo
echo "User-space instructions per redirect request, all threads (callgrind, $N keep-alive requests, one connection)"
echo
echo "| server | instructions/request | vs constant 302 | vs like-for-like constant 302 | of them memset | vs like-for-like, memset left out |"
echo "|---|---|---|---|---|---|"
ratio() { python3 -c "print(f'{$1 / $2:.3f} ×')"; }
# Each count is "instructions memset".
row() { # label count baseline-count like-for-like-count
  local n=${2% *} m=${2#* } ln=${4% *} lm=${4#* }
  echo "| $1 | $n | $(ratio "$n" "${3% *}") | $(ratio "$n" "$ln") | $m | $(ratio "$((n - m))" "$((ln - lm))") |"
}
row "actix-web constant 302" "$const" "$const" "$const_long"
row "actix-web constant 302, our request path, a Location as long as ours" "$const_long" "$const" "$const_long"
row "image-url-server, memory cache, logs off (RUST_LOG=warn)" "$quiet" "$const" "$const_long"
row "image-url-server, memory cache, default logging, access log to a file" "$logged" "$const" "$const_long"
echo
echo "memset: libc's, counted by callgrind one instruction per byte a \`rep stosb\` stores;"
echo "nearly all of it is actix-http's request decoder zeroing a 3 KiB header index, twice a request."

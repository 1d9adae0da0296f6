#!/usr/bin/env bash
# User-space instructions per redirect on the Zipf trace, counted by callgrind: the memory
# cache beside Redis with an L1 that holds every key, with the access flush held off (an
# L1 hit's own cost) and every second (the flush's cost, also per key it wrote), and
# beside Redis without an L1 (a round trip per request: the client's own cost, with
# nothing to share it, since one request at a time sends one command per write).
# Instruction counts do not depend on what else the machine is doing; the flush's share
# does depend on how many flushes fall in the run, which is why it is also given per key.
# Usage: bash benches/load/l1-instructions.sh   (needs valgrind, redis-server, redis-cli;
#        N=3000 requests over K=2000 keys by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-3000}
K=${K:-2000}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release -q -p image-url-server
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
wait_port "$REDIS_PORT"

count() { # label env...   prints "instructions/request keys-flushed"
  local label=$1 port vp
  shift
  port=$(free_port)
  env IMAGE_URL_SERVER__WORKERS=1 RUST_LOG=warn IMAGE_URL_SERVER__LISTEN="127.0.0.1:$port" \
    COS_SECRET_ID=AKIDload COS_SECRET_KEY=load-secret IMAGE_URL_CACHE__NAMESPACE="$label" \
    IMAGE_URL_CACHE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT" IMAGE_URL_CACHE__MAX_ENTRIES=200000 "$@" \
    valgrind --tool=callgrind --callgrind-out-file="$work/$label.out" \
    target/release/image-url-server serve 2>/dev/null &
  vp=$!
  wait_port "$port"
  # Every key once, 500 lookups on the trace, then N measured (counters zeroed before,
  # dumped after). Redis's HSET calls during the measurement: one per key a flush wrote.
  local flushed
  flushed=$(python3 - "$port" "$N" "$K" "$REDIS_PORT" <<'PY'
import http.client, random, subprocess, sys
port, n, k, redis = (int(a) for a in sys.argv[1:5])
conn = http.client.HTTPConnection("127.0.0.1", port)
random.seed(1)
weights = [1 / i ** 1.1 for i in range(1, k + 1)]
def send(keys):
    for key in keys:
        conn.request("GET", f"/api/v1/images/zipf/{key}.jpg/proxy")
        res = conn.getresponse()
        res.read()
        assert res.status == 302, res.status
def hsets():
    out = subprocess.run(["redis-cli", "-p", str(redis), "info", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("cmdstat_hset:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0
send(range(1, k + 1))
send(random.choices(range(1, k + 1), weights, k=500))
before = hsets()
subprocess.run(["callgrind_control", "-z"], capture_output=True, check=True)
send(random.choices(range(1, k + 1), weights, k=n))
subprocess.run(["callgrind_control", "-d"], capture_output=True, check=True)
print(hsets() - before)
PY
)
  kill "$vp"; wait "$vp" 2>/dev/null || true
  local total
  total=$(callgrind_annotate "$work/$label.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  echo "$((total / N)) $flushed"
}

read -r memory _ < <(count memory IMAGE_URL_CACHE__BACKEND=memory)
l1=(IMAGE_URL_CACHE__BACKEND=redis IMAGE_URL_CACHE__L1_MAX_ENTRIES=100000 IMAGE_URL_CACHE__L1_TTL_SECS=3600)
read -r held _ < <(count held "${l1[@]}" IMAGE_URL_CACHE__ACCESS_FLUSH_MS=3600000)
read -r flushed keys < <(count flushed "${l1[@]}" IMAGE_URL_CACHE__ACCESS_FLUSH_MS=1000)
read -r remote _ < <(count remote IMAGE_URL_CACHE__BACKEND=redis IMAGE_URL_CACHE__ACCESS_FLUSH_MS=3600000)
echo
echo "User-space instructions per redirect, Zipf (s = 1.1) over $K keys, $N keep-alive requests (callgrind)"
echo
echo "| server | instructions/request | vs memory |"
echo "|---|---|---|"
ratio() { python3 -c "print(f'{$1 / $memory:.2f} ×')"; }
echo "| memory cache | $memory | 1.00 × |"
echo "| Redis + L1 (every key held), access flush held off | $held | $(ratio "$held") |"
echo "| Redis + L1 (every key held), access flush every second | $flushed | $(ratio "$flushed") |"
echo "| Redis, no L1, access flush held off (one HMGET per request) | $remote | $(ratio "$remote") |"
echo
if [ "$keys" -gt 0 ]; then
  echo "The flush wrote $keys keys during the measurement: $(( (flushed - held) * N / keys )) instructions per key written."
fi

#!/usr/bin/env bash
# The redirect on Redis, side by side with nginx's `return 302`, in one run (issue 15).
# Usage: bash benches/load/redis.sh   (needs wrk, nginx, redis-server, redis-cli:
#        apt-get install wrk nginx-light redis-server)
#        DURATION, ROUNDS, L1_ENTRIES (each replica's L1, default 20 000: a fifth of the
#        trace's keys; a second replica's L1 holds them all) and L1_TTL
#        (seconds an L1 entry lives, default 600, see below) may be set, and WARM_ALL
#        (how long the pass over every key lasts, default 10s: enough for 100 000 keys
#        at 10 k misses/s).
#
# Rows, wrk -t1 -c64, every server on one worker, ROUNDS interleaved rounds, medians:
#   nginx return 302                                  the baseline
#   image-url, memory cache, one key                  the ceiling
#   image-url, Redis, no L1, one key                  one HMGET per hit
#   image-url, Redis, no L1, Zipf keys                (s = 1.1 over 100 000 keys)
#   image-url, Redis + L1, Zipf keys                  hot keys without a round trip
#   image-url, Redis + L1 holding every key, Zipf     the L1's own cost
#   2 replicas on a 3-master Cluster, Zipf keys       (wrk -t2 -c64, one thread per replica)
# Afterwards: the L1 hit rate and the Redis commands per request, from the servers' own
# statistics and Redis's INFO commandstats.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-3}
# Entries each replica's L1 holds (the Zipf trace has 100 000 keys).
L1_ENTRIES=${L1_ENTRIES:-20000}
# Seconds an L1 entry is served (the server's default is 60). The rows take turns, so
# a server comes back to its row about once a minute: with 60 s, the entries a round
# filled expire during the next round, and up to 7 % of its lookups went back to Redis
# (seen in the row whose L1 holds every key). A replica under steady load re-reads each
# key it serves once per ttl instead: with 60 s, about 1.8 % of lookups at these rates
# (at 90 000 req/s, 97 600 of the trace's keys are read within a minute), which the
# default of 600 here leaves out.
L1_TTL=${L1_TTL:-600}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
# Eleven distinct free ports, all held while they are chosen (one at a time could repeat),
# each below 55536: a Cluster node also listens on its port + 10000 (its bus).
mapfile -t FREE < <(python3 -c '
import socket
held, ports = [], []
while len(ports) < 11:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); held.append(s)
    port = s.getsockname()[1]
    if port + 10000 <= 65535:
        ports.append(port)
for port in ports: print(port)')
next_port=0
port() { echo "${FREE[$next_port]}"; }
take_port() { next_port=$((next_port + 1)); }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
pid_of_port() { ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12+$13}'))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)

cargo build --release -q -p image-url-server
bin=target/release/image-url-server
export COS_SECRET_ID=AKIDload COS_SECRET_KEY=load-secret
TOKEN=load-admin-token-0123456789

measure() { # url-or-base connections threads script pids...
  local url=$1 conns=$2 threads=$3 script=$4; shift 4
  local t0 t1 out args=(-t"$threads" -c"$conns" -d"$DURATION" --latency)
  [ -n "$script" ] && args+=(-s "$script")
  t0=$(ticks "$@")
  out=$(wrk "${args[@]}" "$url")
  t1=$(ticks "$@")
  python3 - "$t0" "$t1" "$HZ" "$DURATION" "$out" <<'PY'
import re, sys
t0, t1, hz, dur, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
m = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", out)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
secs = float(dur[:-1]) * {"s": 1, "m": 60}[dur[-1]]
cpu_us = (t1 - t0) / hz * 1e6 / max(rps * secs, 1)
print(f"{rps:.1f} {p99:.2f} {cpu_us:.2f} {int(non2xx.group(1)) if non2xx else 0}")
PY
}

# nginx
NGINX_PORT=$(port); take_port; mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log /dev/null;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server { listen 127.0.0.1:$NGINX_PORT; location / { add_header Cache-Control "private, max-age=2700"; return 302 https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/a.jpg; } }
}
CONF
nginx -c "$work/nginx/nginx.conf" & pids+=($!)

# A standalone Redis and a 3-master Cluster.
REDIS_PORT=$(port); take_port
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
cluster_ports=()
for i in 1 2 3; do
  p=$(port); take_port; cluster_ports+=("$p"); mkdir -p "$work/c$p"
  redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --cluster-enabled yes \
    --cluster-config-file "$work/c$p/nodes.conf" --dir "$work/c$p" >/dev/null & pids+=($!)
done
for p in "$REDIS_PORT" "${cluster_ports[@]}"; do wait_port "$p"; done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${cluster_ports[@]}") --cluster-replicas 0 --cluster-yes >/dev/null
until redis-cli -p "${cluster_ports[0]}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
CLUSTER_URL="redis-cluster://127.0.0.1:${cluster_ports[0]}?node=127.0.0.1:${cluster_ports[1]}&node=127.0.0.1:${cluster_ports[2]}"

serve() { # port env...
  local p=$1; shift
  env IMAGE_URL_SERVER__WORKERS=1 IMAGE_URL_SERVER__ADMIN_TOKEN=$TOKEN RUST_LOG=warn \
    IMAGE_URL_CACHE__MAX_ENTRIES=200000 IMAGE_URL_SERVER__LISTEN="127.0.0.1:$p" "$@" \
    $bin serve 2>/dev/null & pids+=($!)
}
MEM=$(port); take_port; REDIS_SRV=$(port); take_port; L1_SRV=$(port); take_port
L1_ALL=$(port); take_port
C1=$(port); take_port; C2=$(port); take_port
serve "$MEM"
serve "$REDIS_SRV" IMAGE_URL_CACHE__BACKEND=redis IMAGE_URL_CACHE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT" IMAGE_URL_CACHE__NAMESPACE=plain
serve "$L1_SRV" IMAGE_URL_CACHE__BACKEND=redis IMAGE_URL_CACHE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT" IMAGE_URL_CACHE__NAMESPACE=l1 IMAGE_URL_CACHE__L1_MAX_ENTRIES=$L1_ENTRIES IMAGE_URL_CACHE__L1_TTL_SECS=$L1_TTL
serve "$L1_ALL" IMAGE_URL_CACHE__BACKEND=redis IMAGE_URL_CACHE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT" IMAGE_URL_CACHE__NAMESPACE=l1all IMAGE_URL_CACHE__L1_MAX_ENTRIES=100000 IMAGE_URL_CACHE__L1_TTL_SECS=$L1_TTL
for p in "$C1" "$C2"; do
  serve "$p" IMAGE_URL_CACHE__BACKEND=redis IMAGE_URL_CACHE__REDIS_URL="$CLUSTER_URL" IMAGE_URL_CACHE__L1_MAX_ENTRIES=$L1_ENTRIES IMAGE_URL_CACHE__L1_TTL_SECS=$L1_TTL
done
for p in "$NGINX_PORT" "$MEM" "$REDIS_SRV" "$L1_SRV" "$L1_ALL" "$C1" "$C2"; do wait_port "$p"; done
NGINX_PIDS="$(cat "$work/nginx/nginx.pid") $(pgrep -P "$(cat "$work/nginx/nginx.pid")" | tr '\n' ' ')"
pid() { pid_of_port "$1"; }

# Warm every cache: every key of the trace once (misses sign and write; the rounds then
# measure the steady state, every key cached, not the first misses of the long tail),
# then the Zipf trace (the L1s fill with the hot keys).
for p in "$MEM" "$REDIS_SRV" "$L1_SRV" "$L1_ALL" "$C1" "$C2"; do
  ZIPF_SEQUENTIAL=1 wrk -t1 -c64 -d"${WARM_ALL:-10s}" -s benches/load/zipf.lua "http://127.0.0.1:$p" >/dev/null
  wrk -t1 -c64 -d4s -s benches/load/zipf.lua "http://127.0.0.1:$p" >/dev/null
  curl -s -o /dev/null "http://127.0.0.1:$p/api/v1/images/a.jpg/proxy"
done
curl -s -o /dev/null "http://127.0.0.1:$MEM/api/v1/images/a.jpg/proxy"
redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
# The warm-up is a storm of misses (sign, then write): on this machine, where wrk, the
# servers and every Redis share two cores, it can time cache calls out and open a
# server's breaker. Wait for the breakers to close (their cool-down is 10 s), and count
# only the degraded answers of the measured rounds below.
stat() { curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1/api/v1/images/stats"; }
for p in "$REDIS_SRV" "$L1_SRV" "$L1_ALL" "$C1" "$C2"; do
  for _ in $(seq 150); do
    [ "$(stat "$p" | python3 -c 'import json, sys; print(json.load(sys.stdin)["circuit"])')" = closed ] && break
    sleep 0.1
  done
done
for p in "$REDIS_SRV" "$L1_SRV" "$L1_ALL" "$C1" "$C2"; do
  stat "$p" > "$work/before-$p.json"
done

rows=(
  "nginx return 302|http://127.0.0.1:$NGINX_PORT/a.jpg|64|1||$NGINX_PIDS"
  "nginx return 302, Zipf paths|http://127.0.0.1:$NGINX_PORT|64|1|benches/load/zipf.lua|$NGINX_PIDS"
  "image-url, memory, one key|http://127.0.0.1:$MEM/api/v1/images/a.jpg/proxy|64|1||$(pid "$MEM")"
  "image-url, memory, Zipf|http://127.0.0.1:$MEM|64|1|benches/load/zipf.lua|$(pid "$MEM")"
  "image-url, Redis, no L1, one key|http://127.0.0.1:$REDIS_SRV/api/v1/images/a.jpg/proxy|64|1||$(pid "$REDIS_SRV")"
  "image-url, Redis, no L1, Zipf|http://127.0.0.1:$REDIS_SRV|64|1|benches/load/zipf.lua|$(pid "$REDIS_SRV")"
  "image-url, Redis + L1, Zipf|http://127.0.0.1:$L1_SRV|64|1|benches/load/zipf.lua|$(pid "$L1_SRV")"
  "image-url, Redis + L1 holding every key, Zipf|http://127.0.0.1:$L1_ALL|64|1|benches/load/zipf.lua|$(pid "$L1_ALL")"
)
results="$work/results"; : > "$results"
for round in $(seq "$ROUNDS"); do
  for row in "${rows[@]}"; do
    IFS='|' read -r label url conns threads script tpids <<<"$row"
    # shellcheck disable=SC2086
    echo "$label|$(measure "$url" "$conns" "$threads" "$script" $tpids)" >> "$results"
  done
done
# Two replicas on the Cluster, one wrk each at once, beside one replica on standalone
# Redis (with L1) measured alone.
for round in $(seq "$ROUNDS"); do
  a=$(mktemp); b=$(mktemp)
  measure "http://127.0.0.1:$C1" 32 1 benches/load/zipf.lua "$(pid "$C1")" > "$a" &
  other=$!
  measure "http://127.0.0.1:$C2" 32 1 benches/load/zipf.lua "$(pid "$C2")" > "$b"
  wait "$other"   # (a bare `wait` would wait for the servers too)
  python3 - "$a" "$b" >> "$results" <<'PY'
import sys
a, b = ([float(x) for x in open(p).read().split()] for p in sys.argv[1:3])
print(f"2 replicas + L1 on a 3-master Cluster, Zipf (sum)|{a[0]+b[0]:.1f} {max(a[1],b[1]):.2f} {(a[2]+b[2])/2:.2f} {int(a[3]+b[3])}")
PY
done

echo
echo "Redirect, wrk -c64 -d$DURATION, one server worker each, $ROUNDS interleaved rounds, medians (CPU/req: the server's)"
echo
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, values = line.rstrip("\n").split("|")
    rows.setdefault(label, []).append([float(v) for v in values.split()])
# One key is compared with nginx on one path; Zipf rows with nginx on the Zipf paths
# (wrk's Lua script costs the client the same either way).
base = statistics.median(r[0] for r in rows["nginx return 302"])
zipf = statistics.median(r[0] for r in rows["nginx return 302, Zipf paths"])
print("| target | req/s (median) | p99 | CPU/req | vs nginx (same paths) | non-3xx | rounds, req/s |")
print("|---|---|---|---|---|---|---|")
for label, runs in rows.items():
    rps, p99, cpu, bad = (statistics.median(c) for c in zip(*runs))
    each = " / ".join(f"{r[0]:.0f}" for r in runs)
    ref = zipf if "Zipf" in label else base
    print(f"| {label} | {rps:,.0f} | {p99:.2f} ms | {cpu:.2f} µs | {rps / ref:.2f} × | {bad:.0f} | {each} |")
PY

echo
declare -A NAME=([$L1_SRV]="Redis + L1" [$L1_ALL]="Redis + L1 holding every key"
  [$REDIS_SRV]="Redis, no L1" [$C1]="Cluster replica 1" [$C2]="Cluster replica 2")
for p in "$L1_SRV" "$L1_ALL" "$REDIS_SRV" "$C1" "$C2"; do
  stat "$p" | BEFORE="$work/before-$p.json" python3 -c '
import json, os, sys
s = json.load(sys.stdin); c = s["cache"]
b = json.load(open(os.environ["BEFORE"])); bc = b["cache"]
# During the measured rounds only (the misses of the warm-up are not the steady state).
hits = c["hits"] - bc["hits"]; l1 = c.get("l1_hits", 0) - bc.get("l1_hits", 0)
lookups = hits + c["misses"] - bc["misses"] + c["expired"] - bc["expired"]
print(f"'"${NAME[$p]}"': during the rounds {lookups} lookups, hit rate {hits / max(lookups, 1):.3f}, L1 hits {l1} ({l1 / max(lookups, 1):.1%} of lookups served without a round trip)")
# Degraded answers skipped the cache (its breaker was open): rows that had them during
# the measured rounds did not measure the cache, and say so.
degraded = s["degraded"] - b["degraded"]
circuit, errors = s["circuit"], s["cache_errors"]
if degraded:
    print(f"'"${NAME[$p]}"': WARNING {degraded} requests answered degraded during the rounds (cache breaker {circuit}, {errors} cache errors since start): its rows are not valid")
elif s["degraded"]:
    print(f"'"${NAME[$p]}"': {s['"'"'degraded'"'"']} requests answered degraded during the warm-up, none during the rounds")'
done
redis-cli -p "$REDIS_PORT" info commandstats | grep -E "cmdstat_(hmget|evalsha|zadd|hset|publish|zcard)" | cut -d, -f1

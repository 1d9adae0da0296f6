#!/usr/bin/env bash
# Load test of the redirect and proxy endpoints, side by side with baselines, in one run.
# Usage: bash benches/load/run.sh   (needs wrk and nginx: apt-get install wrk nginx-light;
#        the link section needs root and iproute2, and is skipped without them)
#
# Redirect: wrk -t1 -c64 against (a) nginx `return 302`, without and with its access log
# (to a file, buffer=64k), (b) a minimal actix-web handler returning a constant 302 (also on two workers),
# (c) image-url-server with the memory cache: access log off, access log to a file, two
# workers, and a rate limit plus an allowed-prefix rule, one key each; one and two workers
# on 1000 keys in turn (zipf.lua's sequential mode), which the shards serve; (d) with Redis; every server on
# one worker unless said. SKIP_PROXY=1 stops after the redirect table. Proxy: a 10 MiB object through `?mode=proxy` versus fetched
# directly from the origin with a presigned URL, (e) over loopback, where client, proxy
# and origin share this machine's cores, and (f) with the origin in a network namespace
# behind a veth link shaped with tbf, as a COS bucket is reached over a network.
#
# This machine is shared and noisy, so every table is ROUNDS interleaved rounds (a round
# runs each target once) and reports medians, and each ratio also round by round (its
# median and range: drift between rounds cancels out of a ratio taken within one).
# "CPU/req" is the server process's CPU time (user + system, from /proc) divided by the
# requests it answered. A server that wrk keeps busy spends about one core whatever its
# rate, so its CPU/req is close to the inverse of its req/s and drifts with it; it tells
# apart servers that are not saturated (nginx, at about 0.9 of a core).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-8s}
ROUNDS=${ROUNDS:-3}
LINK_RATES=${LINK_RATES:-1gbit 4gbit 8gbit}
work=$(mktemp -d)
pids=()
NS=iu-load-$$
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  ip link del iu-h$$ 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# Twenty distinct free ports, all held while they are chosen (one at a time could repeat).
mapfile -t FREE < <(python3 -c '
import socket
held = [socket.socket() for _ in range(20)]
for s in held: s.bind(("127.0.0.1", 0))
for s in held: print(s.getsockname()[1])')
next_port=0
# Sets the variable named $1 to the next free port (not in a subshell, so it advances).
port() { printf -v "$1" '%s' "${FREE[$next_port]}"; next_port=$((next_port + 1)); }
wait_port() { # host port
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1:$2 never opened" >&2; return 1
}
pid_of_port() { ss -ltnpH "sport = :$1" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2; }
# CPU ticks (user + system) of the given processes; the comm field may hold spaces.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12+$13}'))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)

cargo build --release -q -p image-url-server
cargo build --release -q -p image-url-benches --example const302
bin=target/release/image-url-server
export COS_SECRET_ID=AKIDload COS_SECRET_KEY=load-secret

# One measurement: prints "req_per_s p99_ms cpu_us_per_request bytes_per_s".
measure() { # url connections pids-to-charge...
  local url=$1 conns=$2; shift 2
  local t0 t1 out
  t0=$(ticks "$@")
  out=$(wrk -t1 -c"$conns" -d"$DURATION" --latency ${SCRIPT:+-s "$SCRIPT"} "$url")
  t1=$(ticks "$@")
  python3 - "$t0" "$t1" "$HZ" "$DURATION" "$out" <<'PY'
import re, sys
t0, t1, hz, dur = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
out = sys.argv[5]
# A server that answers with errors (say a 503 for missing credentials) is fast for
# the wrong reason: such a round stops the run. Socket errors (a timeout on a shaped
# link) are reported beside the figures.
bad = re.search(r"Non-2xx or 3xx responses: \d+", out)
if bad:
    sys.exit(f"wrk: {bad.group(0)}\n{out}")
errors = re.search(r"Socket errors: .*", out)
if errors:
    print(f"wrk: {errors.group(0)}", file=sys.stderr)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
m = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", out)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
t = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", out)
bps = float(t.group(1)) * {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[t.group(2)]
secs = float(dur[:-1]) * {"s": 1, "m": 60}[dur[-1]]
cpu_us = (t1 - t0) / hz * 1e6 / max(rps * secs, 1)
print(f"{rps:.1f} {p99:.2f} {cpu_us:.2f} {bps:.0f}")
PY
}

# Runs ROUNDS interleaved rounds over the targets and prints a markdown table of medians.
# Targets are given as "label|url|connections|pids|baseline-label[|wrk script]" lines on
# stdin; the ratio column compares each target with the target named as its baseline.
table() { # kind (rps|bytes)
  local kind=$1 targets=() results="$work/results.$RANDOM"
  mapfile -t targets
  : >"$results"
  for round in $(seq "$ROUNDS"); do
    for t in "${targets[@]}"; do
      IFS='|' read -r label url conns tpids _ script <<<"$t"
      # shellcheck disable=SC2086
      # An assignment, so that a failed measurement stops the run (set -e).
      figures=$(SCRIPT=$script measure "$url" "$conns" $tpids)
      echo "$label|$figures" >>"$results"
    done
  done
  python3 - "$kind" "$results" "${targets[@]}" <<'PY'
import statistics, sys
kind, path, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = {}
for line in open(path):
    label, values = line.rstrip("\n").split("|")
    rows.setdefault(label, []).append([float(v) for v in values.split()])
med = {l: [statistics.median(col) for col in zip(*v)] for l, v in rows.items()}
if kind == "rps":
    print("| target | req/s (median) | p99 | CPU/req | vs baseline | rounds, req/s |")
else:
    print("| target | req/s × object (median) | throughput | p99 | proxy CPU/req | vs baseline | rounds, req/s |")
print("|---|---|---|---|---|---|" + ("" if kind == "rps" else "---|"))
for t in targets:
    label, _, _, _, base = t.split("|")[:5]
    rps, p99, cpu, bps = med[label]
    ratio = "—"
    if base and base in med:
        # Beside the ratio of the medians, the ratio within each round (target and
        # baseline measured a minute apart): the machine's drift between rounds cancels
        # out of these, and their spread says how far one run's ratio can be trusted.
        paired = sorted(r[0] / b[0] for r, b in zip(rows[label], rows[base]))
        ratio = (f"{100 * rps / med[base][0]:.0f} % of {base} (by round: "
                 f"median {100 * statistics.median(paired):.0f} %, "
                 f"{100 * paired[0]:.0f}–{100 * paired[-1]:.0f} %)")
    each = " / ".join(f"{r[0]:.0f}" if r[0] >= 1000 else f"{r[0]:.1f}" for r in rows[label])
    if kind == "rps":
        print(f"| {label} | {rps:,.0f} | {p99:.2f} ms | {cpu:.2f} µs | {ratio} | {each} |")
    else:
        cpu_ms = f"{cpu / 1000:.2f} ms" if cpu > 0 else "—"
        print(f"| {label} | {rps:.1f} | {bps / 2**30:.2f} GiB/s | {p99:.0f} ms | {cpu_ms} | {ratio} | {each} |")
PY
}

# (a) nginx, without and with an access log
nginx_conf() { # name port access_log-directive
  mkdir -p "$work/$1"
  cat > "$work/$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/$1/nginx.pid;
error_log /dev/null;
events { worker_connections 1024; }
http {
  $3
  client_body_temp_path $work/$1; proxy_temp_path $work/$1; fastcgi_temp_path $work/$1;
  uwsgi_temp_path $work/$1; scgi_temp_path $work/$1;
  server { listen 127.0.0.1:$2; location / { add_header Cache-Control "private, max-age=2700"; return 302 https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/a.jpg; } }
}
CONF
  nginx -c "$work/$1/nginx.conf" & pids+=($!)
}
port NGINX_PORT; port NGINX_LOG_PORT
nginx_conf nginx "$NGINX_PORT" "access_log off;"
nginx_conf nginx-log "$NGINX_LOG_PORT" "access_log $work/nginx-log/access.log combined buffer=64k;"
# (b) constant actix 302
port CONST_PORT; port CONST_TWO_PORT
target/release/examples/const302 "127.0.0.1:$CONST_PORT" & pids+=($!)
# Two workers of the constant handler: what a second worker costs on this machine (wrk
# shares its cores), the reference for our own 2-worker row.
target/release/examples/const302 "127.0.0.1:$CONST_TWO_PORT" 2 & pids+=($!)
# the origin and the servers
port ORIGIN_PORT; port MEM_PORT; port LOG_PORT; port TWO_PORT; port RULES_PORT
port REDIS_SRV_PORT; port REDIS_PORT
mkdir -p "$work/images"
head -c 10485760 /dev/urandom > "$work/images/big.bin"
printf 'jpeg' > "$work/images/a.jpg"
$bin dev-origin --dir "$work/images" --listen "127.0.0.1:$ORIGIN_PORT" 2>/dev/null & pids+=($!)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
common=(IMAGE_URL_SERVER__WORKERS=1 IMAGE_URL_COS__SCHEME=http RUST_LOG=info
  IMAGE_URL_COS__DOMAIN="127.0.0.1:$ORIGIN_PORT" IMAGE_URL_SERVER__ACCESS_LOG=off)
serve() { # port env...
  local p=$1; shift
  env "${common[@]}" IMAGE_URL_SERVER__LISTEN="127.0.0.1:$p" "$@" $bin serve 2>/dev/null & pids+=($!)
}
serve "$MEM_PORT"
serve "$LOG_PORT" IMAGE_URL_SERVER__ACCESS_LOG="$work/access.log"
serve "$TWO_PORT" IMAGE_URL_SERVER__WORKERS=2
serve "$RULES_PORT" IMAGE_URL_LIMITS__REQUESTS_PER_SECOND=100000000 IMAGE_URL_LIMITS__BURST=100000000 \
  IMAGE_URL_ACCESS__ALLOWED_PREFIXES='["a"]'
serve "$REDIS_SRV_PORT" IMAGE_URL_CACHE__BACKEND=redis IMAGE_URL_CACHE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
for p in $NGINX_PORT $NGINX_LOG_PORT $CONST_PORT $CONST_TWO_PORT $ORIGIN_PORT $MEM_PORT $LOG_PORT $TWO_PORT $RULES_PORT \
  $REDIS_SRV_PORT $REDIS_PORT; do wait_port 127.0.0.1 "$p"; done
for p in $MEM_PORT $LOG_PORT $TWO_PORT $RULES_PORT $REDIS_SRV_PORT; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/api/v1/images/a.jpg/proxy")
  [ "$code" = 302 ] || { echo "server on $p answers $code, not 302" >&2; exit 1; }
done
# nginx: the master and its worker; the others: the process holding the port.
nginx_pids() { echo "$(cat "$work/$1/nginx.pid") $(pgrep -P "$(cat "$work/$1/nginx.pid")" | tr '\n' ' ')"; }
NGINX_PIDS=$(nginx_pids nginx); NGINX_LOG_PIDS=$(nginx_pids nginx-log)
CONST_PID=$(pid_of_port "$CONST_PORT"); CONST_TWO_PID=$(pid_of_port "$CONST_TWO_PORT")
MEM_PID=$(pid_of_port "$MEM_PORT")
LOG_PID=$(pid_of_port "$LOG_PORT"); TWO_PID=$(pid_of_port "$TWO_PORT")
RULES_PID=$(pid_of_port "$RULES_PORT"); REDIS_SRV_PID=$(pid_of_port "$REDIS_SRV_PORT")
KEY=/api/v1/images/a.jpg/proxy
# 1000 keys asked for in turn (1, 2, … 1000, 1, …): no worker meets a key twice at one
# place of its copies, so every hit goes to a shard. Cached before the rounds.
export ZIPF_SEQUENTIAL=1 ZIPF_KEYS=1000
CYCLE=benches/load/zipf.lua
for p in $MEM_PORT $TWO_PORT; do
  wrk -t1 -c1 -d1s -s "$CYCLE" "http://127.0.0.1:$p" >/dev/null
done

echo
echo "Redirect, wrk -t1 -c64 -d$DURATION, one server worker each unless said, $ROUNDS rounds (CPU/req: the server's)"
echo
table rps <<EOF
nginx return 302|http://127.0.0.1:$NGINX_PORT/a.jpg|64|$NGINX_PIDS|
nginx return 302, access log to a file|http://127.0.0.1:$NGINX_LOG_PORT/a.jpg|64|$NGINX_LOG_PIDS|nginx return 302
actix-web constant 302|http://127.0.0.1:$CONST_PORT/a.jpg|64|$CONST_PID|nginx return 302
actix-web constant 302, 2 workers|http://127.0.0.1:$CONST_TWO_PORT/a.jpg|64|$CONST_TWO_PID|actix-web constant 302
image-url-server, memory cache, access log off|http://127.0.0.1:$MEM_PORT$KEY|64|$MEM_PID|nginx return 302
image-url-server, memory cache, access log to a file|http://127.0.0.1:$LOG_PORT$KEY|64|$LOG_PID|nginx return 302, access log to a file
image-url-server, memory cache, 2 workers, access log off|http://127.0.0.1:$TWO_PORT$KEY|64|$TWO_PID|image-url-server, memory cache, access log off
image-url-server, memory cache, 1000 keys in turn, access log off|http://127.0.0.1:$MEM_PORT|64|$MEM_PID|image-url-server, memory cache, access log off|$CYCLE
image-url-server, memory cache, 1000 keys in turn, 2 workers, access log off|http://127.0.0.1:$TWO_PORT|64|$TWO_PID|image-url-server, memory cache, 1000 keys in turn, access log off|$CYCLE
image-url-server, rate limit + allowed prefix, access log off|http://127.0.0.1:$RULES_PORT$KEY|64|$RULES_PID|nginx return 302
image-url-server, Redis cache, access log off|http://127.0.0.1:$REDIS_SRV_PORT$KEY|64|$REDIS_SRV_PID|nginx return 302
EOF
echo
echo "access log lines: image-url-server $(wc -l < "$work/access.log"), nginx $(wc -l < "$work/nginx-log/access.log");" \
  "dropped by image-url-server: $(curl -s "http://127.0.0.1:$LOG_PORT/metrics" | awk '/^image_url_access_log_dropped_total/ {print $2}')"
[ -z "${SKIP_PROXY:-}" ] || exit 0

echo
echo "Proxy over loopback, 10 MiB object, wrk -t1 -c8 -d$DURATION, $ROUNDS rounds (CPU/req: the proxy's)"
echo
direct=$($bin presign big.bin --bucket local-1250000000 --domain "127.0.0.1:$ORIGIN_PORT" --scheme http)
rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$MEM_PID/status")
table bytes <<EOF
origin directly (presigned URL)|$direct|8||
image-url-server ?mode=proxy|http://127.0.0.1:$MEM_PORT/api/v1/images/big.bin/proxy?mode=proxy|8|$MEM_PID|origin directly (presigned URL)
EOF
rss_after=$(awk '/VmRSS/ {print $2}' "/proc/$MEM_PID/status")
echo
echo "server resident memory: ${rss_before} KiB before the proxy runs, ${rss_after} KiB after"

# (f) the origin across a shaped link
if ! { ip netns add "$NS" && ip link add "iu-h$$" type veth peer name "iu-o$$"; } 2>/dev/null; then
  echo
  echo "Proxy across a link: skipped (needs root and iproute2 to make a network namespace)"
  exit 0
fi
ip link set "iu-o$$" netns "$NS"
ip addr add 10.231.77.1/24 dev "iu-h$$"; ip link set "iu-h$$" up
ip netns exec "$NS" ip addr add 10.231.77.2/24 dev "iu-o$$"
ip netns exec "$NS" ip link set "iu-o$$" up; ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" $bin dev-origin --dir "$work/images" --listen 10.231.77.2:9000 2>/dev/null & pids+=($!)
port LINK_SRV_PORT
serve "$LINK_SRV_PORT" IMAGE_URL_COS__DOMAIN=10.231.77.2:9000
wait_port 10.231.77.2 9000; wait_port 127.0.0.1 "$LINK_SRV_PORT"
LINK_SRV_PID=$(pid_of_port "$LINK_SRV_PORT")
direct=$($bin presign big.bin --bucket local-1250000000 --domain 10.231.77.2:9000 --scheme http)
for rate in $LINK_RATES; do
  # Shape both directions: tbf on each end of the veth pair.
  tc qdisc replace dev "iu-h$$" root tbf rate "$rate" burst 1mb latency 5ms
  ip netns exec "$NS" tc qdisc replace dev "iu-o$$" root tbf rate "$rate" burst 1mb latency 5ms
  echo
  echo "Proxy across a $rate link (origin in a network namespace), 10 MiB object, wrk -t1 -c8 -d$DURATION, $ROUNDS rounds"
  echo
  table bytes <<EOF
origin directly (presigned URL)|$direct|8||
image-url-server ?mode=proxy|http://127.0.0.1:$LINK_SRV_PORT/api/v1/images/big.bin/proxy?mode=proxy|8|$LINK_SRV_PID|origin directly (presigned URL)
EOF
done

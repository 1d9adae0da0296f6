#!/usr/bin/env bash
# Load test of the redirect and proxy endpoints, side by side with baselines, in one run.
# Usage: bash benches/load/run.sh   (needs wrk and nginx: apt-get install wrk nginx-light)
#
# Redirect: wrk -t1 -c64 against (a) nginx `return 302`, (b) a minimal actix-web handler
# returning a constant 302, (c) image-url-server with the memory cache, (d) with Redis;
# every server on one worker. Proxy: a 10 MiB object through `?mode=proxy` versus fetched
# directly from the origin with a presigned URL.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10s}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

cargo build --release -q -p image-url-server
cargo build --release -q -p image-url-benches --example const302
bin=target/release/image-url-server

# (a) nginx
NGINX_PORT=$(port)
mkdir -p "$work/nginx"
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
# (b) constant actix 302
CONST_PORT=$(port)
target/release/examples/const302 "127.0.0.1:$CONST_PORT" & pids+=($!)
# the origin and the servers
ORIGIN_PORT=$(port); MEM_PORT=$(port); REDIS_SRV_PORT=$(port); REDIS_PORT=$(port)
mkdir -p "$work/images"
head -c 10485760 /dev/urandom > "$work/images/big.bin"
printf 'jpeg' > "$work/images/a.jpg"
export COS_SECRET_ID=AKIDload COS_SECRET_KEY=load-secret
$bin dev-origin --dir "$work/images" --listen "127.0.0.1:$ORIGIN_PORT" 2>/dev/null & pids+=($!)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids+=($!)
common=(IMAGE_URL_SERVER__WORKERS=1 IMAGE_URL_COS__DOMAIN="127.0.0.1:$ORIGIN_PORT" IMAGE_URL_COS__SCHEME=http RUST_LOG=warn)
env "${common[@]}" IMAGE_URL_SERVER__LISTEN="127.0.0.1:$MEM_PORT" $bin serve 2>/dev/null & pids+=($!); MEM_PID=$!
env "${common[@]}" IMAGE_URL_SERVER__LISTEN="127.0.0.1:$REDIS_SRV_PORT" IMAGE_URL_CACHE__BACKEND=redis \
  IMAGE_URL_CACHE__REDIS_URL="redis://127.0.0.1:$REDIS_PORT" $bin serve 2>/dev/null & pids+=($!)
for p in $NGINX_PORT $CONST_PORT $ORIGIN_PORT $MEM_PORT $REDIS_SRV_PORT $REDIS_PORT; do wait_port "$p"; done
curl -s -o /dev/null "http://127.0.0.1:$MEM_PORT/api/v1/images/a.jpg/proxy"
curl -s -o /dev/null "http://127.0.0.1:$REDIS_SRV_PORT/api/v1/images/a.jpg/proxy"

run() { # name url connections
  local out rps p99
  out=$(wrk -t1 -c"$3" -d"$DURATION" --latency "$2")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  printf '| %s | %s | %s |\n' "$1" "$rps" "$p99"
}
echo
echo "Redirect, wrk -t1 -c64 -d$DURATION, one server worker each"
echo "| target | req/s | p99 |"
echo "|---|---|---|"
run "nginx return 302" "http://127.0.0.1:$NGINX_PORT/a.jpg" 64
run "actix-web constant 302" "http://127.0.0.1:$CONST_PORT/a.jpg" 64
run "image-url-server, memory cache" "http://127.0.0.1:$MEM_PORT/api/v1/images/a.jpg/proxy" 64
run "image-url-server, Redis cache" "http://127.0.0.1:$REDIS_SRV_PORT/api/v1/images/a.jpg/proxy" 64

echo
echo "Proxy, 10 MiB object, wrk -t1 -c8 -d$DURATION"
echo "| target | req/s | p99 |"
echo "|---|---|---|"
direct=$($bin presign big.bin --bucket local-1250000000 --domain "127.0.0.1:$ORIGIN_PORT" --scheme http)
rss_before=$(awk '/VmRSS/ {print $2}' /proc/$MEM_PID/status)
run "origin directly (presigned URL)" "$direct" 8
run "image-url-server ?mode=proxy" "http://127.0.0.1:$MEM_PORT/api/v1/images/big.bin/proxy?mode=proxy" 8
rss_after=$(awk '/VmRSS/ {print $2}' /proc/$MEM_PID/status)
echo
echo "server resident memory: ${rss_before} KiB before the proxy run, ${rss_after} KiB after"

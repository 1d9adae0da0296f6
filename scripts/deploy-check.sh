#!/usr/bin/env bash
# Exercises the deployment files as far as this machine allows (run by the test command):
#
# 1. the binary is built with the Dockerfile's own build command (its `RUN cargo build`
#    line, run as written);
# 2. it is started as deploy/systemd/image-url.service starts it: the unit's ExecStart
#    with the binary and the config file at their paths here (deploy/systemd/config.toml),
#    secrets from an environment file as EnvironmentFile gives them, on a Redis of its
#    own; /livez, /readyz and a redirect answer; SIGTERM (the unit's KillSignal) stops it
#    cleanly within TimeoutStopSec.
#
# Not exercised here: `docker build`/`docker run` (no Docker engine on this machine) and
# the unit's sandboxing under a real systemd (no systemd as PID 1); `systemd-analyze
# verify` checks the unit's syntax when it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

build=$(sed -n 's/^RUN \(cargo build .*\)$/\1/p' Dockerfile)
if [ -z "$build" ]; then
  echo "deploy-check: no 'RUN cargo build' line in the Dockerfile" >&2
  exit 1
fi
echo "== $build (the Dockerfile's build step)"
eval "$build"
bin="$PWD/target/release/image-url-server"

unit=deploy/systemd/image-url.service
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify "$unit" 2>&1 | grep -v "Command /usr/local/bin/image-url-server is not executable" || true
fi
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
stop_timeout=$(sed -n 's/^TimeoutStopSec=//p' "$unit")
kill_signal=$(sed -n 's/^KillSignal=//p' "$unit")
args=${exec_start/\/usr\/local\/bin\/image-url-server/$bin}
args=${args/\/etc\/image-url\/config.toml/$PWD/deploy/systemd/config.toml}

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
# The unit's EnvironmentFile: secrets, plus addresses free on this machine.
cat > "$work/env" <<ENV
COS_SECRET_ID=AKIDdeploycheck
COS_SECRET_KEY=deploy-check-secret
IMAGE_URL_SERVER__ADMIN_TOKEN=deploy-check-admin-token
IMAGE_URL_SERVER__LISTEN=127.0.0.1:0
IMAGE_URL_SERVER__ADMIN_LISTEN=127.0.0.1:0
IMAGE_URL_CACHE__REDIS_URL=redis://127.0.0.1:$redis_port
ENV
for _ in $(seq 100); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
echo "== $args (the unit's ExecStart, EnvironmentFile=$work/env)"
(set -a; . "$work/env"; set +a; exec $args) 2> "$work/log" &
server=$!
for _ in $(seq 300); do
  grep -q "image-url server listening" "$work/log" && break
  if ! kill -0 "$server" 2>/dev/null; then cat "$work/log" >&2; exit 1; fi
  sleep 0.1
done
# The example config logs JSON lines: the listening line names both addresses.
read -r addr admin < <(grep -m1 "image-url server listening" "$work/log" | python3 -c '
import json, sys
fields = json.loads(sys.stdin.read())["fields"]
print(fields["addr"], fields["admin_addr"])')
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/livez")" = 200 ]
ready=$(curl -s -w ' %{http_code}' "http://$addr/readyz")
case "$ready" in *'"status":"ready"'*' 200') ;; *) echo "readyz: $ready" >&2; exit 1 ;; esac
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/api/v1/images/a.jpg/proxy")" = 302 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$admin/metrics")" = 200 ]
kill -s "${kill_signal#SIG}" "$server"
stopped=1
for _ in $(seq $((${stop_timeout:-40} * 10))); do
  if ! kill -0 "$server" 2>/dev/null; then stopped=0; break; fi
  sleep 0.1
done
if [ "$stopped" != 0 ]; then echo "deploy-check: still running after TimeoutStopSec" >&2; exit 1; fi
wait "$server"
echo "deploy check: ok (built as the Dockerfile builds it, started and stopped as the unit does)"

#!/usr/bin/env bash
# The whole test suite: the README's test command, also run by .ci/run.
#
# Tests that need Redis start their own redis-server on a free loopback port; this script
# only makes sure the binary exists (installing Debian's package if it does not) and never
# relies on a Redis someone else started.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found; installing Debian's redis-server package" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
export REDIS_SERVER_BIN="${REDIS_SERVER_BIN:-$(command -v redis-server)}"

# The Prometheus alert rules are unit-tested with promtool (Debian's prometheus package).
if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found; installing Debian's prometheus package" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  echo "cargo-nextest not found; using cargo test" >&2
  cargo test --workspace --lib --bins --tests --no-fail-fast
fi
# nextest does not run doctests; the examples in the docs are tests too.
cargo test --workspace --doc --no-fail-fast

# The examples embedders copy from are run too: a backend written outside url-cache passes
# the exported conformance suite, and the batch presigner signs what it reads.
cargo run -q -p url-cache --example instrumented_backend
signed=$(printf 'images/a.jpg\nimages/b c.jpg\n' \
  | COS_SECRET_ID=AKIDexample COS_SECRET_KEY=example-secret \
    cargo run -q -p image-url-service --example presign_stdin -- examplebucket-1250000000 ap-guangzhou \
  | grep -c '^https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/images/.*q-signature=')
if [ "$signed" != 2 ]; then
  echo "presign_stdin example: expected 2 signed URLs, got $signed" >&2
  exit 1
fi
# The service in an axum app, with credentials from the environment: one request, a 302
# to a presigned URL.
answer=$(TENCENTCLOUD_SECRET_ID=AKIDexample TENCENTCLOUD_SECRET_KEY=example-secret \
  cargo run -q -p image-url-service --example axum_app -- examplebucket-1250000000 ap-guangzhou --once)
if ! printf '%s\n' "$answer" | grep -q '^location: https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/a.jpg?q-sign-algorithm=sha1&q-ak=AKIDexample&'; then
  echo "axum_app example: expected a 302 to a presigned URL, got: $answer" >&2
  exit 1
fi
echo "examples: ok"

# The front end (web/): the <smart-image> element with Node's own tools. The Rust tests
# above do not need Node: the server embeds web/dist/smart-image.js, which is committed;
# here it is rebuilt from the sources and must come out the same.
install_debian() {
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
if ! command -v npm >/dev/null 2>&1; then
  echo "npm not found; installing Debian's nodejs and npm packages" >&2
  install_debian nodejs npm
fi
# npm cannot download a browser here: the end-to-end tests drive Debian's Chromium.
export CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM_BIN" ]; then
  echo "$CHROMIUM_BIN not found; installing Debian's chromium package" >&2
  install_debian chromium
fi
(
  cd web
  npm ci --no-audit --no-fund --loglevel=error
  npm run -s typecheck
  committed=$(mktemp)
  cp dist/smart-image.js "$committed"
  npm run -s build
  if ! cmp -s "$committed" dist/smart-image.js; then
    echo "web/dist/smart-image.js is not what web/src builds to: run 'npm run build' in web/ and commit it" >&2
    exit 1
  fi
  rm -f "$committed"
  npm run -s size
  npm test
)
cargo build -q -p image-url-server
E2E_SERVER_BIN="$PWD/target/debug/image-url-server" npm --prefix web run -s test:e2e
echo "front end: ok"


# The deployment files: the binary built by the Dockerfile's own build command, started
# and stopped as the systemd unit does (what this machine cannot run is listed in the
# script).
bash scripts/deploy-check.sh

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

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  echo "cargo-nextest not found; using cargo test" >&2
  cargo test --workspace --lib --bins --tests --no-fail-fast
fi
# nextest does not run doctests; the examples in the docs are tests too.
cargo test --workspace --doc --no-fail-fast

#!/usr/bin/env bash
# The official Python SDK's presign speed, for docs/performance.md.
# Usage: bash benches/presign-python.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py-bench
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet cos-python-sdk-v5==1.9.44
fi
"$venv/bin/python" benches/python/presign_sdk.py

#!/usr/bin/env bash
# Prefetch helm and a current kubectl into .kubequant-cache/tools/ (what the chart tests use),
# so CI downloads them once before the tests run. See tests/fixtures/tools.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m tests.fixtures.tools

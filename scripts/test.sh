#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the whole test suite against real data and a real broker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -rs "$@"  # -rs: why each skipped test was skipped

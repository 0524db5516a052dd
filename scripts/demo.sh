#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the live demo: embedded broker + worker, the real test day replayed
# (trains a quick model first when NEXTCLICK_SERVING_ARTIFACT_DIR holds no valid artifact). Extra arguments
# go to `python -m devtools.demo` (see --help); Ctrl-C stops it and prints the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m devtools.demo "$@"

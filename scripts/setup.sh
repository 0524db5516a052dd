#!/usr/bin/env bash
# Creates .venv and installs nextclick with its training and test extras. torch is pinned (==2.13.0,
# in pyproject.toml): an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[train,dev]"

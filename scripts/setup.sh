#!/usr/bin/env bash
# Creates .venv and installs nextclick with its training and test extras. torch is pinned (==2.13.0,
# in pyproject.toml): an unpinned torch would pull several GB of CUDA packages. Installs again only when
# pyproject.toml changed since the last install (its hash is kept in .venv/.nextclick-installed).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.nextclick-installed
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[train,dev]"
    echo "$wanted" > "$stamp"
fi

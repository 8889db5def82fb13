#!/usr/bin/env bash
# Create .venv when missing and install the pinned requirements and the package into it.
# It reinstalls only when requirements*.txt or pyproject.toml changed since the last install.
# Called by scripts/test.sh and scripts/demo.sh; run it alone to set up without running anything.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

if [[ ! -x .venv/bin/python ]]; then
    echo "Creating .venv with $(python3 --version)"
    python3 -m venv .venv
fi

stamp=.venv/.requirements.sha256
wanted="$(cat requirements.txt requirements-test.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
    echo "Installing the pinned requirements into .venv (a few minutes the first time)"
    # torch==2.13.0 must be resolved together with monai: a separate torch request
    # would pull a CUDA build of several GB.
    .venv/bin/pip install --quiet -r requirements.txt -r requirements-test.txt
    .venv/bin/pip install --quiet --no-deps -e .
    echo "$wanted" > "$stamp"
fi

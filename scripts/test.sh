#!/usr/bin/env bash
# Create .venv when missing, install the pinned requirements and the package, run pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/selection -x`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

if [[ ! -x .venv/bin/python ]]; then
    echo "Creating .venv with $(python3 --version)"
    python3 -m venv .venv
fi

# Reinstall only when a requirements file or pyproject.toml changed since the last install.
stamp=.venv/.requirements.sha256
wanted="$(cat requirements.txt requirements-test.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
    # torch==2.13.0 must be resolved together with monai: a separate torch request
    # would pull a CUDA build of several GB.
    .venv/bin/pip install --quiet -r requirements.txt -r requirements-test.txt
    .venv/bin/pip install --quiet --no-deps -e .
    echo "$wanted" > "$stamp"
fi

set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
    echo "pytest collected no tests; treating this as a failure" >&2
    exit 1
fi
exit $status

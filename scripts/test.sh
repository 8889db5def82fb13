#!/usr/bin/env bash
# Set up .venv (scripts/install.sh), then run pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/selection -x`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bash scripts/install.sh

set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
    echo "pytest collected no tests; treating this as a failure" >&2
    exit 1
fi
exit $status

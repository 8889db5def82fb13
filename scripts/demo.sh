#!/usr/bin/env bash
# Set up .venv (scripts/install.sh), then run the CAD bundle's DyMo inference on the default
# cohort: it builds cohorts/cad_demo on the first run, evaluates every method at each
# missing-table rate, prints the AUC table and logs one MLflow run to bundles/cad/eval/mlruns.db.
# Extra arguments go to the bundle, e.g. `bash scripts/demo.sh --gammas "[0,0.5,1]"`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
bash scripts/install.sh

exec .venv/bin/python -m monai.bundle run --config_file bundles/cad/inference.json "$@"

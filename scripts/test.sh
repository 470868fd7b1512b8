#!/usr/bin/env bash
# The test suite: set up, check the import layering, run pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export MPLBACKEND=Agg
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"

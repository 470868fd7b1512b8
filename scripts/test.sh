#!/usr/bin/env bash
# The test suite: set up, run pytest (tests/test_layers.py checks the import layering). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export MPLBACKEND=Agg
exec .venv/bin/python -m pytest "$@"

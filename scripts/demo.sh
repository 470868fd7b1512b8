#!/usr/bin/env bash
# Main job end to end on the built-in simulator: set up, simulate a scan, process it,
# write results/sxdm_results.h5 and results/sxdm_overview.png. Extra arguments go to
# `sxdm-stream demo` (e.g. --shape 60 60 --out /tmp/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/sxdm-stream demo "$@"

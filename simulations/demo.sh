#!/usr/bin/env bash
# Quick start: set up .venv (as tests/run.sh does), then run a local mesh of
# 4 real workmesh nodes through simulations/demo.py. Exits non-zero when any
# job did not end as expected.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
case "${1:-}" in  # the sample uses: --workload images|tx|enrich|wordcount|blob|all
  --workload|--workload=*) exec "$VENV_PY" simulations/demo_workloads.py "$@" ;;
esac
exec "$VENV_PY" simulations/demo.py "$@"

#!/usr/bin/env bash
# The test command: works on a fresh machine with only python3 (3.11+).
# Creates .venv if missing, installs the project with its test extras (only
# when pyproject.toml changed), then runs pytest with any arguments given:
#   ./tests/run.sh                      # the whole suite
#   ./tests/run.sh tests/unit -q        # a part of it
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../simulations/_venv.sh"
exec "$VENV_PY" -m pytest "$@"

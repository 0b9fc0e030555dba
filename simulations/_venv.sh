# Shared by tests/run.sh and simulations/demo.sh (source it, do not run it).
#
# Makes sure the repository's .venv exists and holds the project with its
# test extras. The install is skipped while pyproject.toml has the hash
# recorded in .venv/.workmesh-installed by the last successful install.
# After sourcing: REPO_ROOT is the repository root (and the cwd), and
# VENV_PY the venv's python.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

VENV_DIR="$REPO_ROOT/.venv"
VENV_PY="$VENV_DIR/bin/python"
_WM_STAMP="$VENV_DIR/.workmesh-installed"

_wm_python="${PYTHON:-python3}"
if ! command -v "$_wm_python" >/dev/null 2>&1; then
    echo "workmesh: $_wm_python not found; install Python 3.11 or newer" >&2
    exit 1
fi
if ! "$_wm_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "workmesh: needs Python 3.11 or newer ($("$_wm_python" --version 2>&1) found)" >&2
    exit 1
fi

if [ ! -x "$VENV_PY" ]; then
    echo "workmesh: creating $VENV_DIR" >&2
    "$_wm_python" -m venv "$VENV_DIR"
fi

_wm_hash="$("$VENV_PY" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' pyproject.toml)"
if [ ! -f "$_WM_STAMP" ] || [ "$(cat "$_WM_STAMP")" != "$_wm_hash" ]; then
    echo "workmesh: installing the project and its test dependencies into .venv (once)" >&2
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check -e '.[test]'
    echo "$_wm_hash" > "$_WM_STAMP"
fi
unset _wm_python _wm_hash

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

# The dashboard's browser tests (tests/integration/test_dashboard.py) drive
# Debian's chromium; Playwright's own browser download is not used. When no
# Chromium is on the PATH and we are root with apt, try to install it: once
# per .venv (a stamp file remembers the try), quietly, and never failing the
# run; without it those tests are skipped with the reason.
# WORKMESH_NO_CHROMIUM_INSTALL=1 skips the attempt.
_WM_CHROMIUM_STAMP="$VENV_DIR/.workmesh-chromium-tried"
if [ -z "${WORKMESH_NO_CHROMIUM_INSTALL:-}" ] && [ ! -f "$_WM_CHROMIUM_STAMP" ] \
    && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "workmesh: installing Debian's chromium for the dashboard's browser tests (once)" >&2
    if (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq chromium) \
        >"$VENV_DIR/.workmesh-chromium.log" 2>&1; then
        echo "workmesh: chromium installed" >&2
    else
        echo "workmesh: could not install chromium (see $VENV_DIR/.workmesh-chromium.log); the browser tests will be skipped" >&2
    fi
    touch "$_WM_CHROMIUM_STAMP"
fi
unset _WM_CHROMIUM_STAMP

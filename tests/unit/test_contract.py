"""The contract module is the one place statuses, the job view and the limits live."""

import ast
import asyncio
import pathlib
import subprocess
import sys

from workmesh import contract
from workmesh.api import validation
from workmesh.app import loop_name, loop_runner
from workmesh.node import facts, lifecycle

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_node_module_imports_the_api_or_the_entry_point():
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n.startswith(("workmesh.api", "api", "workmesh.app")))
        for path in (ROOT / "node").glob("*.py")
    }
    assert {p: n for p, n in offenders.items() if n and p != "node/cli.py"} == {}
    # The command line starts the program through workmesh.app, lazily, and never the API itself.
    assert not [n for n in _imports(ROOT / "node" / "cli.py") if n.startswith(("workmesh.api", "api"))]


def test_the_contract_imports_nothing_of_workmesh():
    assert not [n for n in _imports(ROOT / "workmesh" / "contract.py") if n.startswith(("workmesh", "node", "api"))]


def test_importing_the_node_loads_no_api_module():
    code = "import sys, workmesh.node.node, workmesh.node.jobs; print(sorted(m for m in sys.modules if m.startswith('workmesh.api')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_statuses_and_limits_are_defined_once():
    assert lifecycle.STATUSES is contract.STATUSES
    assert lifecycle.TERMINAL is contract.TERMINAL_STATUSES
    assert set(contract.TERMINAL_STATUSES) < set(contract.STATUSES)
    assert facts.PAYLOAD_BYTES_MAX == validation.PAYLOAD_BYTES_MAX == contract.PAYLOAD_BYTES_MAX
    assert facts.ATTEMPTS_MAX == validation.ATTEMPTS_MAX == contract.ATTEMPTS_MAX
    assert validation.LEASE_S_MAX * 1000 == facts.LEASE_MS_MAX == contract.LEASE_MS_MAX


def test_uvloop_runs_by_default_where_it_installs_and_asyncio_on_request():
    async def which() -> str:
        return loop_name(asyncio.get_running_loop())

    try:
        import uvloop  # noqa: F401

        expected = "uvloop"
    except ImportError:
        expected = "asyncio"
    assert loop_runner({})(which()) == expected
    assert loop_runner({"WORKMESH_LOOP": "asyncio"})(which()) == "asyncio"

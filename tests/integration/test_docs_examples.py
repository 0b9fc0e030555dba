"""Docs that cannot drift: their shell examples run against a real mesh, their flag tables match the parser.

Every ```sh block of README.md and docs/*.md carries a marker on the line
before it: `<!-- example: run -->` (run here, in bash with `set -e`, against a
3-node mesh; `curl` fails on an HTTP error) or `<!-- example: illustrative -->`
(hosts, containers, long benchmarks: not runnable here). Every `--flag` in a
table whose first column is `flag` is a flag of `workmesh`, and the table of
`workmesh start` flags in docs/operations.md names every one of them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

import pytest
from procmesh import ProcMesh, http, workmesh_command

from workmesh.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- example: (run|illustrative) -->$")
FLAG = re.compile(r"`(--[a-z][a-z0-9-]*)")


def sh_blocks(path: Path) -> list[tuple[int, str | None, str]]:
    """(line number, marker or None, code) of each ```sh block."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.strip() == "```sh":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            m = MARKER.match(lines[i - 1].strip()) if i else None
            out.append((i + 1, m.group(1) if m else None, "\n".join(lines[i + 1:end])))
    return out


def test_every_shell_example_is_marked_run_or_illustrative():
    unmarked = [f"{p.relative_to(ROOT)}:{n}" for p in PAGES for n, kind, _ in sh_blocks(p) if kind is None]
    assert not unmarked, f"mark these blocks <!-- example: run --> or <!-- example: illustrative -->: {unmarked}"


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def flag_tables(path: Path) -> list[list[str]]:
    """The first-column flags of each markdown table whose header starts with `flag`."""
    tables, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith("| flag |"):
            current = []
            tables.append(current)
        elif current is not None and line.startswith("|"):
            cell = line.split("|")[1]
            current.extend(FLAG.findall(cell))
        else:
            current = None
    return tables


def test_flag_tables_name_only_real_flags_and_the_start_table_names_all():
    known = set()
    for name in ("start", "submit", "job", "cancel", "list", "peers", "types", "status", "watch"):
        known |= flags_of(subparser(name))
    for page in PAGES:
        for table in flag_tables(page):
            unknown = set(table) - known
            assert not unknown, f"{page.relative_to(ROOT)}: {sorted(unknown)} are not flags of workmesh"
    start_tables = [t for t in flag_tables(ROOT / "docs" / "operations.md") if "--data-dir" in t]
    assert start_tables, "docs/operations.md has no table of the start flags"
    missing = flags_of(subparser("start")) - set(start_tables[0]) - {"--help"}
    assert not missing, f"docs/operations.md's start flags table lacks {sorted(missing)}"
    client = [t for t in flag_tables(ROOT / "docs" / "operations.md") if "--api" in t]
    assert client and {"--api", "--token", "--output", "--http-timeout"} <= set(client[0])


@pytest.mark.slow
def test_runnable_examples_run_against_a_real_mesh(tmp_path):
    blocks = [(p, n, code) for p in PAGES for n, kind, code in sh_blocks(p) if kind == "run"]
    assert blocks
    with ProcMesh(3, tmp_path / "mesh") as mesh:
        a, b, c = mesh.nodes
        ids = []
        for _ in range(2):
            code, doc = http("POST", f"{a.url}/jobs", {"type": "sleep", "payload": {"seconds": 60}})
            assert code == 202, doc
            ids.append(doc["id"])
        bindir = Path(workmesh_command()[0]).parent if len(workmesh_command()) == 1 else None
        env = {
            **os.environ, "B": b.url, "T": "Authorization: Bearer s3cret", "ID": ids[0], "ID2": ids[1],
            "WORKMESH_API": f"{a.url},{c.url}",
            "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}" if bindir else os.environ["PATH"],
        }
        prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body --max-time 70 "$@"; }\n'
        for page, line, code in blocks:
            proc = subprocess.run(["bash", "-c", prelude + code], capture_output=True, text=True, env=env,
                                  timeout=180, cwd=tmp_path)
            where = f"{page.relative_to(ROOT)}:{line}"
            assert proc.returncode == 0, f"{where} failed ({proc.returncode}):\n{code}\n--- stdout\n" \
                f"{proc.stdout[-1500:]}\n--- stderr\n{proc.stderr[-1500:]}"

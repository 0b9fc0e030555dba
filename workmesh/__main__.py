"""``workmesh`` and ``python -m workmesh``: the program's entry point.

It sits above both halves: ``start``, ``mesh-key``, ``upload`` and
``download`` come from ``workmesh.node.cli`` (and ``node/cli_blobs.py``),
the client commands from ``workmesh.commands`` (REST calls to any node).
Usage errors are one line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys

from workmesh import commands
from workmesh.node import cli as node_cli
from workmesh.node import cli_blobs


def build_parser() -> argparse.ArgumentParser:
    parser = node_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands.add_commands(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; a usage error prints one line (argparse's last) and exits 2."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return cli_blobs.parse_args(parser, argv)  # also a submit's payload after --blob
    except SystemExit as exc:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        if lines:
            print(lines[-1] if exc.code else "\n".join(lines), file=sys.stderr)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse(parser, argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.command in node_cli.NODE_COMMANDS:
        return node_cli.run_node_command(args)
    try:
        return commands.run(parser, args)
    except Exception as exc:  # a bug: still one line, never a traceback
        print(f"workmesh: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Structured logs: one event per line, JSON unless on a terminal.

The standard library's ``logging`` goes through the same renderer: a
handler's ``logging.getLogger(__name__).warning(...)`` and the libraries'
own logs (aiohttp, asyncio) come out as the same lines as the node's
structlog events, with ``logger`` naming their source.
"""

from __future__ import annotations

import logging
import sys

import structlog

_HANDLER_NAME = "workmesh-structlog"


def _drop_message(_logger: object, _name: str, event: dict) -> dict:
    """A formatted record's ``message`` repeats its ``event``."""
    event.pop("message", None)
    return event


def configure(fmt: str = "auto", level: str = "info") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write (and one syscall) per event: PrintLogger writes the line
        # and its newline apart.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # The standard library's records: rendered by the same renderer, one line each.
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder(),
                           _drop_message, structlog.processors.format_exc_info],
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(numeric)

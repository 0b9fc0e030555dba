"""Stdlib logging goes through the node's structlog renderer."""

import json
import logging

import structlog

from workmesh.node.logs import configure


def test_stdlib_records_and_structlog_events_come_out_as_the_same_json_lines(capsys):
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        configure("json", "info")
        configure("json", "info")  # configuring twice adds no second handler
        logging.getLogger("a.library").warning("disk %s is slow", "sda", extra={"ms": 12})
        logging.getLogger("a.library").debug("below the level")
        structlog.get_logger().info("node_event", n=1)
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        structlog.reset_defaults()
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    assert lines[0] == {"event": "disk sda is slow", "level": "warning", "logger": "a.library", "ms": 12,
                        "timestamp": lines[0]["timestamp"]}
    assert lines[1]["event"] == "node_event" and lines[1]["n"] == 1 and len(lines) == 2

"""The client commands' pure parts: table output (a snapshot), payload sources, waits, exit codes."""

from __future__ import annotations

import io
import math

import pytest

from workmesh import commands as C
from workmesh.__main__ import build_parser, main

JOB = {
    "id": "b776a081ebcd8b47ce68b7a7bb665cd7534a8c24", "type": "sleep", "status": "done", "attempts": 2,
    "max_attempts": 3, "result": {"slept": 0.5}, "error": None,
    "worker": "e8cfa73f181185bde185b00c266dd9ed7f58d8bd", "submitted_by": "dc80292dcb483f6315437a1944587df25b3090e0",
    "created_ms": 1796620734277, "last_error": "worker lost",
    "history": [
        {"kind": "submit", "author": "dc80292dcb483f6315437a1944587df25b3090e0", "attempt": 0, "ts_ms": 1796620734277,
         "fact_id": "61c42fabd525d829aa"},
        {"kind": "grant", "action": "lease", "author": "e8cfa73f181185bde185b00c266dd9ed7f58d8bd", "attempt": 2,
         "ts_ms": 1796620735001, "fact_id": "bb92a25bf1326f9caa"},
        {"kind": "result", "outcome": "ok", "author": "e8cfa73f181185bde185b00c266dd9ed7f58d8bd", "attempt": 2,
         "ts_ms": 1796620735512, "fact_id": "3179f06938e65153aa"},
    ],
}

SNAPSHOT = """\
FIELD          VALUE
───────────────────────────────────────────────────────
id             b776a081ebcd8b47ce68b7a7bb665cd7534a8c24
type           sleep
status         done
attempts       2/3
worker         e8cfa73f181185bde185b00c266dd9ed7f58d8bd
submitted_by   dc80292dcb483f6315437a1944587df25b3090e0
created        2026-12-07T05:18:54.277Z
result         {"slept": 0.5}
error          -
last_error     worker lost
signed facts
KIND          SIGNER             ATTEMPT   TIME                       FACT
──────────────────────────────────────────────────────────────────────────────────────
submit        dc80292dcb483f63   0         2026-12-07T05:18:54.277Z   61c42fabd525d829
grant/lease   e8cfa73f181185bd   2         2026-12-07T05:18:55.001Z   bb92a25bf1326f9c
result/ok     e8cfa73f181185bd   2         2026-12-07T05:18:55.512Z   3179f06938e65153
"""

LIST_SNAPSHOT = """\
1 jobs
ID                                         TYPE    STATUS   ATTEMPTS   WORKER         CREATED
──────────────────────────────────────────────────────────────────────────────────────────────────────────────
b776a081ebcd8b47ce68b7a7bb665cd7534a8c24   sleep   done     2/3        e8cfa73f1811   2026-12-07T05:18:54.277Z
"""


def test_job_table_with_history_matches_the_snapshot():
    out = C.Out("table", io.StringIO())
    assert C._show_job(JOB, out, history=True) == 0
    assert out.stream.getvalue() == SNAPSHOT


def test_list_table_matches_the_snapshot():
    out = C.Out("table", io.StringIO())
    out.table(C.JOB_COLUMNS, [C.job_row(JOB)], title="1 jobs")
    assert out.stream.getvalue() == LIST_SNAPSHOT


def test_output_is_json_off_a_terminal_and_a_table_on_one():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert C.Out(None, io.StringIO()).mode == "json"
    assert C.Out(None, Tty()).mode == "table"
    assert C.Out("json", Tty()).mode == "json"


def test_payload_from_text_file_and_stdin(tmp_path):
    (tmp_path / "p.json").write_text('{"a": [1, 2]}')
    assert C.read_payload('{"a": 1}') == {"a": 1}
    assert C.read_payload(f"@{tmp_path / 'p.json'}") == {"a": [1, 2]}
    assert C.read_payload("-", io.StringIO('"text"')) == "text"
    with pytest.raises(C.UsageError, match="not JSON"):
        C.read_payload("{oops")
    with pytest.raises(C.UsageError, match="missing.json"):
        C.read_payload(f"@{tmp_path / 'missing.json'}")


def test_wait_without_a_number_has_no_limit():
    args = build_parser().parse_args(["submit", "echo", "{}", "--wait"])
    assert args.wait == math.inf
    assert build_parser().parse_args(["job", "x", "--wait", "7.5"]).wait == 7.5
    assert build_parser().parse_args(["submit", "echo"]).wait == 0.0


def test_exit_status_follows_the_job():
    assert C.exit_for({"status": "done"}) == 0
    assert C.exit_for({"status": "running"}) == 0
    assert C.exit_for({"status": "failed"}) == 1
    assert C.exit_for({"status": "cancelled"}) == 1


def test_usage_errors_are_one_line_and_exit_2(capsys):
    assert main(["submit"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "required" in err
    assert main(["list", "--output", "yaml"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_old_submit_job_status_flags_still_parse():
    args = build_parser().parse_args(["submit", "--api", "http://n:1", "--token", "t", "sha256", "{}",
                                      "--max-attempts", "2", "--wait", "10"])
    assert (args.api, args.token, args.max_attempts, args.wait) == (["http://n:1"], "t", 2, 10.0)
    assert build_parser().parse_args(["job", "--api", "http://n:1", "abc", "--wait", "3"]).id == "abc"
    assert build_parser().parse_args(["status", "--api", "http://n:1"]).command == "status"


def test_completion_script_names_every_command(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    for name in ("submit", "job", "cancel", "list", "peers", "types", "status", "watch", "start"):
        assert name in script
    assert "--api" in script and "--output" in script

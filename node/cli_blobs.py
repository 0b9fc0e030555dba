"""The blob commands of ``workmesh``: ``upload``, ``download`` and ``submit --blob``.

    workmesh upload photo.jpg                          # prints the hash
    workmesh download <hash> -o copy.jpg [--range 0-1023]
    workmesh submit image.resize --blob image=photo.jpg '{"sizes": [[64, 64]], "format": "png"}'
    workmesh submit wordcount --blob 'blobs[]=a.txt' --blob 'blobs[]=b.txt'

``--blob NAME=FILE`` uploads FILE and sets ``payload[NAME] = {"blob": hash}``;
``--blob NAME[]=FILE`` appends the bare hash to the list ``payload[NAME]``.
Transfers show a progress bar on a terminal (stderr), nothing otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from workmesh.blobs_client import BlobError, ProgressBar, get_blob, put_blob


def add_commands(sub: Any) -> None:
    up = sub.add_parser("upload", help="upload a file as a blob; prints its hash")
    up.add_argument("file")
    down = sub.add_parser("download", help="download a blob to a file")
    down.add_argument("hash")
    down.add_argument("-o", "--output", required=True, help="file to write (- for stdout)")
    down.add_argument("--range", help="bytes START-END (inclusive) only")
    for p in (up, down):
        p.add_argument("--api", default="http://127.0.0.1:8000", help="base URL of any node")
        p.add_argument("--token", default=os.environ.get("WORKMESH_API_TOKEN"))


def add_submit_options(submit: argparse.ArgumentParser) -> None:
    submit.add_argument("--blob", action="append", default=[], metavar="NAME=FILE",
                        help='upload FILE and set payload[NAME] = {"blob": hash} (NAME[]=FILE: append the hash)')


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, also taking a submit's JSON payload after its
    options (``submit image.resize --blob image=a.jpg '{...}'``): argparse
    alone fills an optional positional only before the options."""
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "submit" and len(extra) == 1 and args.payload == "{}" and not extra[0].startswith("-"):
        args.payload = extra[0]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def attach_blobs(payload: Any, specs: list[str], api: str, token: str | None) -> Any:
    """Upload each ``--blob`` file and refer to it in ``payload``."""
    if not specs:
        return payload
    if not isinstance(payload, dict):
        raise SystemExit("workmesh: --blob needs a JSON object payload")
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"workmesh: --blob expects NAME=FILE, got {spec!r}")
        bar = ProgressBar(f"upload {path}")
        digest = put_blob(api, path, token=token, progress=bar)["hash"]
        bar.close()
        if name.endswith("[]"):
            payload.setdefault(name[:-2], []).append(digest)
        else:
            payload[name] = {"blob": digest}
    return payload


def run(args: argparse.Namespace) -> int:
    token = args.token
    try:
        if args.command == "upload":
            bar = ProgressBar(f"upload {args.file}")
            doc = put_blob(args.api, args.file, token=token, progress=bar)
            bar.close()
            print(doc["hash"])
            return 0
        byte_range = None
        if args.range:
            start, _, end = args.range.partition("-")
            byte_range = (int(start), int(end))
        bar = ProgressBar(f"download {args.hash[:12]}")
        dest = sys.stdout.buffer if args.output == "-" else args.output
        get_blob(args.api, args.hash, dest, byte_range=byte_range, progress=bar)
        bar.close()
        return 0
    except BlobError as exc:
        print(f"workmesh: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"workmesh: {exc}", file=sys.stderr)
        return 1

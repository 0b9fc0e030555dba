"""Take the README's dashboard screenshot (docs/dashboard.png) from a real mesh.

Starts 3 local nodes, submits a bounded trickle of jobs (sleep, echo, a few
failures) for ``--seconds``, then photographs node 0's dashboard in headless
Chromium (Debian's ``chromium``; Playwright drives it).

    .venv/bin/python simulations/instruments/dashboard_screenshot.py --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from headless import CHROMIUM_ARGS, find_chromium
from procmesh import ProcMesh, http


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/dashboard.png")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to submit jobs (at most 120)")
    parser.add_argument("--rate", type=float, default=4.0, help="jobs per second (at most 20)")
    args = parser.parse_args()
    seconds, rate = min(args.seconds, 120.0), min(args.rate, 20.0)
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no Chromium found: apt-get install chromium")
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp, ProcMesh(3, tmp, node_args=["--replicas", "3"]) as mesh:
        urls = [n.url for n in mesh.nodes]
        end = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < end and sent < int(seconds * rate):
            kind = rng.random()
            if kind < 0.6:
                body = {"type": "sleep", "payload": {"seconds": round(rng.uniform(0.2, 2.5), 2)}}
            elif kind < 0.93:
                body = {"type": "echo", "payload": {"n": sent}}
            else:
                body = {"type": "fail", "payload": {"message": "on purpose"}, "max_attempts": 1}
            http("POST", rng.choice(urls) + "/jobs", body)
            sent += 1
            time.sleep(1.0 / rate)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 980})
            page.goto(urls[0] + "/ui/")
            page.wait_for_selector("#nodes-table tr[data-liveness=alive]")
            time.sleep(2.5)  # one more tick and nodes event for the picture
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    print(f"{sent} jobs submitted; wrote {args.out}")


if __name__ == "__main__":
    main()

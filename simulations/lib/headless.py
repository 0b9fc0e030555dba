"""Where the system's Chromium is, for Playwright (the dashboard's tests and screenshot).

Debian's ``chromium`` package is used (``simulations/_venv.sh`` installs it
when it can); Playwright's own browser download is not reachable here.
``WORKMESH_CHROMIUM`` names another binary.
"""

from __future__ import annotations

import os
import shutil

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu"]  # root in a container has no user namespace sandbox


def find_chromium() -> str | None:
    for candidate in (os.environ.get("WORKMESH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None

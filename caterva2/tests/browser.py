"""A headless Chromium for the browser tests and the screenshots (``docs/screenshots.py``).

Playwright drives the system's Chromium (``CATERVA2_CHROMIUM``, else ``chromium`` on the
PATH); Playwright's own browser downloads are never used.  :func:`chromium_path` says
where it is, or None; :func:`launch` starts it headless.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

NO_BROWSER = "no Chromium: apt-get install chromium, or set CATERVA2_CHROMIUM"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    """The Chromium to drive: ``CATERVA2_CHROMIUM`` if set, else ``chromium`` (or
    ``chromium-browser``) on the PATH; None if there is none."""
    named = os.environ.get("CATERVA2_CHROMIUM")
    if named:
        return named if os.path.exists(named) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch(playwright: Any) -> Any:
    """Chromium, headless, started by ``playwright`` (a ``sync_playwright()``)."""
    path = chromium_path()
    if path is None:
        raise RuntimeError(NO_BROWSER)
    return playwright.chromium.launch(executable_path=path, headless=True, args=FLAGS)

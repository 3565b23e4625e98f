"""Finding and launching the browser for visual QA: Chromium or Chrome, headless, on a closed
network.

    path, source = find_browser(cfg.qa.browser)   # None path: Playwright's own download
    pw = acquire_playwright()                     # one driver per thread, shared
    browser = launch(pw, path, source, loopback_only=True, timeout_s=30)
    ...
    release_playwright()

The browser is found in this order: `qa.browser`, `$STUDIO_CODER_BROWSER`, the system's Chromium
or Chrome, Playwright's own download.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from typing import Any

from agent_node.qa.errors import BrowserFailed, BrowserNotFound

BROWSER_ENV = "STUDIO_CODER_BROWSER"
SYSTEM_BROWSERS = (
    "chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"
)
MAC_BROWSERS = (
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
)
# A closed network: nothing phones home, nothing updates, no GPU process to fail.
LAUNCH_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-gpu",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter,InterestFeedContentSuggestions",
    "--metrics-recording-only",
]

# For pages the coder wrote: nothing but loopback. Every request goes to a proxy that is not
# there (loopback addresses bypass proxies, so the page server still answers), no hostname
# resolves (no DNS lookup carries data out), and WebRTC may not send UDP around the proxy.
LOOPBACK_ONLY_ARGS = [
    "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--dns-prefetch-disable",
]


def find_browser(configured: str = "") -> tuple[str | None, str]:
    """(executable path, where it came from); a None path means Playwright's own download.

    Raises BrowserNotFound when a configured path is missing or nothing at all is found.
    """
    named = ((configured, "qa.browser"), (os.environ.get(BROWSER_ENV, ""), BROWSER_ENV))
    for value, source in named:
        if value:
            path = shutil.which(value) or (value if os.access(value, os.X_OK) else None)
            if not path:
                raise BrowserNotFound(
                    f"{source} = {value!r}: no such executable. Point it at Chromium or Chrome "
                    f"(e.g. /usr/bin/chromium) or unset it to search the system."
                )
            return path, source
    for name in SYSTEM_BROWSERS:
        if path := shutil.which(name):
            return path, "PATH"
    if sys.platform == "darwin":
        for path in MAC_BROWSERS:
            if os.access(path, os.X_OK):
                return path, "Applications"
    bundled = _playwright_chromium()
    if bundled and os.access(bundled, os.X_OK):
        return None, f"Playwright's download ({bundled})"
    raise BrowserNotFound(
        "no Chromium or Chrome found: qa.browser and $STUDIO_CODER_BROWSER are unset, none of "
        f"{', '.join(SYSTEM_BROWSERS)} is on PATH, and Playwright has no download"
        f"{f' at {bundled}' if bundled else ''}. Install one (Debian/Ubuntu: apt install "
        "chromium; macOS: brew install --cask chromium; with network: playwright install "
        "chromium) or set STUDIO_CODER_BROWSER=/path/to/chrome."
    )


def _playwright_chromium() -> str:
    try:
        pw = acquire_playwright()
    except Exception:  # no playwright, or no driver: there is no bundled browser to offer
        return ""
    try:
        return str(pw.chromium.executable_path)
    finally:
        release_playwright()


# Playwright's sync driver allows one instance per thread, so Capturers in a thread share it.
_drivers: dict[int, list[Any]] = {}  # thread id -> [driver, users]


def acquire_playwright() -> Any:
    from playwright.sync_api import sync_playwright

    entry = _drivers.get(threading.get_ident())
    if entry is None:
        entry = _drivers[threading.get_ident()] = [sync_playwright().start(), 0]
    entry[1] += 1
    return entry[0]


def release_playwright() -> None:
    entry = _drivers.get(threading.get_ident())
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _drivers[threading.get_ident()]
        entry[0].stop()


def launch(pw: Any, path: str | None, source: str, *, loopback_only: bool,
           timeout_s: float) -> Any:
    """Start a headless browser (`path` from find_browser); BrowserFailed says what to set."""
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    args = (LAUNCH_ARGS + (["--no-sandbox"] if root else [])
            + (LOOPBACK_ONLY_ARGS if loopback_only else []))
    try:
        return pw.chromium.launch(executable_path=path, args=args, headless=True,
                                  timeout=timeout_s * 1000)
    except Exception as e:
        raise BrowserFailed(
            f"the browser from {source} ({path or 'Playwright download'}) would not start: "
            f"{str(e).splitlines()[0]}. Set qa.browser or {BROWSER_ENV} to a working "
            "Chromium or Chrome."
        ) from None

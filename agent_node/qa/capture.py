"""Capture a page in two fixed viewports with everything it logged: the browser half of visual QA.

    with Capturer(cfg.qa) as capturer:          # one browser, reused for every capture
        capture = capturer.capture("http://127.0.0.1:8000/")
        capture.viewports["phone"].screenshot    # PNG bytes, viewport-sized (never full-page)

Both viewports load side by side in one browser, each in its own context (the phone one with
mobile emulation), so their settle waits overlap. For each: every console message with level
and source location, uncaught page errors, failed requests and responses >= 400, and layout
facts measured by a page script (document wider than the viewport and the elements pushing
past the right edge, text too small to read, images that did not load).

A page is measured once it has loaded, no request has been in flight for `idle_ms`, every
`setTimeout` of up to `timer_window_ms` it scheduled has fired, and `settle_ms` has passed;
at most `settle_max_ms` after load. Waiting on the page's own short timers is what catches an
error thrown a second after load without making every capture wait seconds.

The browser is found in this order: `qa.browser`, `$STUDIO_CODER_BROWSER`, the system's
Chromium or Chrome, Playwright's own download. Playwright's sync API is used, so a Capturer
belongs to the thread that started it.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_node.config import QASection
from agent_node.qa.errors import BrowserFailed, BrowserNotFound, PageUnreachable, ServerFailed
from agent_node.sandbox import runner

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
POLL_MS = 50
MAX_OFFENDERS = 5
MAX_EXAMPLES = 5

# Tracks the page's own short setTimeouts, so the settle wait can end as soon as they have run.
TIMERS_SCRIPT = """(() => {
  const LIMIT = %d, pending = new Set();
  const setT = window.setTimeout.bind(window), clearT = window.clearTimeout.bind(window);
  window.setTimeout = function (fn, delay, ...args) {
    if (typeof fn !== 'function' || (Number(delay) || 0) > LIMIT) return setT(fn, delay, ...args);
    const id = setT(function () { pending.delete(id); return fn.apply(window, args); }, delay);
    pending.add(id);
    return id;
  };
  window.clearTimeout = function (id) { pending.delete(id); return clearT(id); };
  Object.defineProperty(window, '__studioCoderPendingTimers', { value: () => pending.size });
})();"""

LAYOUT_SCRIPT = """([maxOffenders, maxExamples, minFontPx]) => {
  const root = document.scrollingElement || document.documentElement;
  const vw = document.documentElement.clientWidth;
  const scale = (window.visualViewport && window.visualViewport.scale) || 1;
  const selectorOf = (el) => {
    const parts = [];
    for (let e = el; e && e.nodeType === 1 && parts.length < 4; e = e.parentElement) {
      if (e.id) { parts.unshift('#' + CSS.escape(e.id)); break; }
      let part = e.tagName.toLowerCase();
      const cls = [...e.classList].slice(0, 2).map((c) => '.' + CSS.escape(c)).join('');
      part += cls;
      const parent = e.parentElement;
      if (parent) {
        const same = [...parent.children].filter((c) => c.tagName === e.tagName);
        if (same.length > 1) part += ':nth-of-type(' + (same.indexOf(e) + 1) + ')';
      }
      parts.unshift(part);
      if (e.tagName === 'BODY') break;
    }
    return parts.join(' > ');
  };
  const visible = (el, r) => {
    if (r.width <= 0 || r.height <= 0) return false;
    const s = getComputedStyle(el);
    return s.visibility !== 'hidden' && s.display !== 'none' && s.opacity !== '0';
  };
  // Clipped or scrollable inside an ancestor that stays in view: not page overflow.
  const clippedInside = (el) => {
    for (let a = el.parentElement; a && a !== document.body && a !== document.documentElement;
         a = a.parentElement) {
      const ox = getComputedStyle(a).overflowX;
      if (ox !== 'visible') return a.getBoundingClientRect().right <= vw + 1;
    }
    return false;
  };
  const all = [...document.body ? document.body.querySelectorAll('*') : []].slice(0, 5000);
  const crossing = new Set();
  const offenders = [];
  for (const el of all) {
    const r = el.getBoundingClientRect();
    if (r.right > vw + 1 && visible(el, r) && !clippedInside(el)) crossing.add(el);
  }
  for (const el of crossing) {
    if (crossing.has(el.parentElement)) continue;  // report where the overflow starts
    const r = el.getBoundingClientRect();
    offenders.push({ selector: selectorOf(el), left: Math.round(r.left), top: Math.round(r.top),
      width: Math.round(r.width), height: Math.round(r.height),
      overshoot: Math.round(r.right - vw) });
  }
  offenders.sort((a, b) => b.overshoot - a.overshoot);
  const small = [];
  let smallCount = 0;
  for (const el of all) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const r = el.getBoundingClientRect();
    if (!visible(el, r)) continue;
    const px = parseFloat(getComputedStyle(el).fontSize) * scale;
    if (px < minFontPx) {
      smallCount += 1;
      if (small.length < maxExamples) small.push({ selector: selectorOf(el),
        px: Math.round(px * 10) / 10, text: el.textContent.trim().slice(0, 60) });
    }
  }
  const broken = [...document.images]
    .filter((img) => img.complete && img.naturalWidth === 0 && (img.currentSrc || img.src))
    .slice(0, maxExamples)
    .map((img) => ({ selector: selectorOf(img), src: img.currentSrc || img.src }));
  return {
    viewport_width: vw, document_width: root.scrollWidth, scale: Math.round(scale * 1000) / 1000,
    viewport_meta: !!document.querySelector('meta[name="viewport"]'),
    offenders: offenders.slice(0, maxOffenders), offender_count: offenders.length,
    small_text: { count: smallCount, examples: small }, broken_images: broken,
  };
}"""


@dataclass
class Viewport:
    name: str
    width: int
    height: int
    mobile: bool = False
    scale: float = 1.0

    def context_options(self) -> dict[str, Any]:
        return {
            "viewport": {"width": self.width, "height": self.height},
            "is_mobile": self.mobile,
            "has_touch": self.mobile,
            "device_scale_factor": self.scale,
        }


def viewports_of(cfg: QASection) -> list[Viewport]:
    (dw, dh), (pw, ph) = cfg.desktop, cfg.phone
    return [
        Viewport("desktop", dw, dh),
        Viewport("phone", pw, ph, mobile=True, scale=cfg.phone_scale),
    ]


@dataclass
class ConsoleEntry:
    level: str  # log | info | warning | error | debug | ...
    text: str
    url: str = ""
    line: int = 0
    column: int = 0


@dataclass
class PageError:
    message: str
    stack: str = ""


@dataclass
class RequestProblem:
    url: str
    resource_type: str
    method: str = "GET"
    status: int | None = None  # the HTTP status when a response came back (>= 400)
    failure: str = ""  # the network error when none did, e.g. net::ERR_CONNECTION_REFUSED


@dataclass
class ViewportCapture:
    viewport: Viewport
    screenshot: bytes
    console: list[ConsoleEntry] = field(default_factory=list)
    page_errors: list[PageError] = field(default_factory=list)
    requests: list[RequestProblem] = field(default_factory=list)
    layout: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def logs(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "viewport": asdict(self.viewport),
            "console": [asdict(c) for c in self.console],
            "page_errors": [asdict(e) for e in self.page_errors],
            "requests": [asdict(r) for r in self.requests],
            "layout": self.layout,
            "notes": self.notes,
        }


@dataclass
class Capture:
    url: str
    viewports: dict[str, ViewportCapture]
    seconds: float = 0.0


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
        pw = _acquire_playwright()
    except Exception:  # no playwright, or no driver: there is no bundled browser to offer
        return ""
    try:
        return str(pw.chromium.executable_path)
    finally:
        _release_playwright()


# Playwright's sync driver allows one instance per thread, so Capturers in a thread share it.
_drivers: dict[int, list[Any]] = {}  # thread id -> [driver, users]


def _acquire_playwright() -> Any:
    from playwright.sync_api import sync_playwright

    entry = _drivers.get(threading.get_ident())
    if entry is None:
        entry = _drivers[threading.get_ident()] = [sync_playwright().start(), 0]
    entry[1] += 1
    return entry[0]


def _release_playwright() -> None:
    entry = _drivers.get(threading.get_ident())
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _drivers[threading.get_ident()]
        entry[0].stop()


class _Watch:
    """Everything one page says while it loads and settles; `reset()` between captures."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.reset()
        page.on("console", self._on_console)
        page.on("pageerror", self._on_pageerror)
        page.on("request", self._on_request)
        page.on("requestfinished", self._on_done)
        page.on("requestfailed", self._on_failed)
        page.on("response", self._on_response)

    def reset(self) -> None:
        self.console: list[ConsoleEntry] = []
        self.page_errors: list[PageError] = []
        self.requests: list[RequestProblem] = []
        self.inflight: set[Any] = set()
        self.last_activity = time.monotonic()

    def _on_console(self, msg: Any) -> None:
        loc = msg.location or {}
        self.console.append(
            ConsoleEntry(
                msg.type,
                msg.text,
                loc.get("url", ""),
                loc.get("lineNumber", 0),
                loc.get("columnNumber", 0),
            )
        )

    def _on_pageerror(self, error: Any) -> None:
        self.page_errors.append(PageError(str(error.message), str(error.stack or "")))

    def _on_request(self, request: Any) -> None:
        self.inflight.add(request)
        self.last_activity = time.monotonic()

    def _on_done(self, request: Any) -> None:
        self.inflight.discard(request)
        self.last_activity = time.monotonic()

    def _on_failed(self, request: Any) -> None:
        self._on_done(request)
        self.requests.append(
            RequestProblem(request.url, request.resource_type, request.method,
                           failure=str(request.failure or "failed"))
        )

    def _on_response(self, response: Any) -> None:
        if response.status >= 400:
            req = response.request
            self.requests.append(
                RequestProblem(response.url, req.resource_type, req.method, status=response.status)
            )

    def quiet(self, idle_ms: int) -> bool:
        if self.inflight or (time.monotonic() - self.last_activity) * 1000 < idle_ms:
            return False
        try:
            pending = self.page.evaluate("() => window.__studioCoderPendingTimers?.() ?? 0")
        except Exception:  # mid-navigation: not settled yet
            return False
        return int(pending) == 0


class _Slot:
    """One viewport's context and page, kept between captures (a new page costs ~250 ms).

    Captures stay independent: the HTTP cache is off (a page edited between two checks is
    fetched again), and after each capture the page goes to about:blank (its timers stop) and
    the origin's cookies and storage are cleared.
    """

    def __init__(self, browser: Any, vp: Viewport, timer_window_ms: int) -> None:
        self.vp = vp
        self.ctx = browser.new_context(**vp.context_options())
        self.ctx.add_init_script(TIMERS_SCRIPT % timer_window_ms)
        self.page = self.ctx.new_page()
        self.cdp = self.ctx.new_cdp_session(self.page)
        self.cdp.send("Network.enable")
        self.cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
        self.watch = _Watch(self.page)

    def clean_up(self, url: str) -> None:
        self.page.goto("about:blank")
        origin = "/".join(url.split("/", 3)[:3])
        if origin.startswith(("http://", "https://")):
            self.cdp.send("Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "all"})
        self.ctx.clear_cookies()
        self.watch.reset()

    def close(self) -> None:
        try:
            self.ctx.close()
        except Exception:  # the browser went away; nothing left to close
            pass


# For pages the coder wrote: nothing but loopback. Every request goes to a proxy that is not
# there (loopback addresses bypass proxies, so the page server still answers), no hostname
# resolves (no DNS lookup carries data out), and WebRTC may not send UDP around the proxy.
LOOPBACK_ONLY_ARGS = [
    "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--dns-prefetch-disable",
]


class Capturer:
    """One browser, reused across captures; a context manager.

    `loopback_only`: the pages reach nothing but 127.0.0.1 (the agent loop's pages are the
    coder's work, and model output must not reach the network)."""

    def __init__(self, cfg: QASection | None = None, *, browser: str | None = None,
                 loopback_only: bool = False) -> None:
        self.cfg = cfg or QASection()
        self.loopback_only = loopback_only
        self._browser_override = browser
        self._pw: Any = None
        self._browser: Any = None
        self._slots: list[_Slot] = []
        self.browser_path: str | None = None
        self.browser_source = ""

    def __enter__(self) -> Capturer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self._browser is not None and self._browser.is_connected():
            return
        self._drop_slots()
        path, source = find_browser(self._browser_override or self.cfg.browser)
        if self._pw is None:
            try:
                self._pw = _acquire_playwright()
            except ImportError:
                raise BrowserNotFound(
                    "Playwright is not installed: pip install 'studio-coder[agent]' (or playwright)"
                ) from None
        root = hasattr(os, "geteuid") and os.geteuid() == 0
        args = (LAUNCH_ARGS + (["--no-sandbox"] if root else [])
                + (LOOPBACK_ONLY_ARGS if self.loopback_only else []))
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=path, args=args, headless=True, timeout=self.cfg.timeout_s * 1000
            )
        except Exception as e:
            raise BrowserFailed(
                f"the browser from {source} ({path or 'Playwright download'}) would not start: "
                f"{str(e).splitlines()[0]}. Set qa.browser or {BROWSER_ENV} to a working "
                "Chromium or Chrome."
            ) from None
        self.browser_path, self.browser_source = path, source

    def _drop_slots(self) -> None:
        for slot in self._slots:
            slot.close()
        self._slots = []

    def close(self) -> None:
        self._drop_slots()
        if self._browser is not None:
            try:
                self._browser.close()
            except Exception:  # already gone
                pass
            self._browser = None
        if self._pw is not None:
            self._pw = None
            _release_playwright()

    def capture(self, url: str) -> Capture:
        """Load `url` in both viewports, let it settle, measure, screenshot."""
        self.start()
        cfg, started = self.cfg, time.monotonic()
        if not self._slots:
            self._slots = [
                _Slot(self._browser, vp, cfg.timer_window_ms) for vp in viewports_of(cfg)
            ]
        try:
            for slot in self._slots:  # start both navigations, then wait for both loads
                slot.watch.reset()
                self._goto(slot, url, "commit")
            for slot in self._slots:
                self._goto(slot, url, "load")
            notes = self._settle(self._slots, time.monotonic())
            result = {}
            for slot in self._slots:
                w = slot.watch
                layout = slot.page.evaluate(
                    LAYOUT_SCRIPT, [MAX_OFFENDERS, MAX_EXAMPLES, cfg.min_font_px]
                )
                png = slot.page.screenshot(type="png", scale=cfg.screenshot_scale)
                result[slot.vp.name] = ViewportCapture(
                    slot.vp, png, list(w.console), list(w.page_errors), list(w.requests), layout,
                    list(notes),
                )
            for slot in self._slots:
                slot.clean_up(url)
            return Capture(url, result, time.monotonic() - started)
        except BaseException:
            self._drop_slots()  # a page in an unknown state is not reused
            raise

    def _goto(self, slot: _Slot, url: str, until: str) -> None:
        timeout = self.cfg.timeout_s * 1000
        try:
            if until == "commit":
                slot.page.goto(url, wait_until="commit", timeout=timeout)
            else:
                slot.page.wait_for_load_state("load", timeout=timeout)
        except Exception as e:
            first = str(e).splitlines()[0].removeprefix("Page.goto: ")
            if "Timeout" in type(e).__name__ or "Timeout" in first:
                raise PageUnreachable(
                    f"{url} did not finish loading on the {slot.vp.name} viewport within "
                    f"{self.cfg.timeout_s:g} s (qa.timeout_s); is the server answering?"
                ) from None
            raise PageUnreachable(
                f"{url} did not load on the {slot.vp.name} viewport: {first}. Is its server "
                "running? check-ui --start 'CMD' starts one for the check."
            ) from None

    def _settle(self, slots: list[_Slot], loaded: float) -> list[str]:
        cfg, stable = self.cfg, 0
        while True:
            elapsed_ms = (time.monotonic() - loaded) * 1000
            if elapsed_ms >= cfg.settle_max_ms:
                busy = sum(len(s.watch.inflight) for s in slots)
                return [
                    f"page had not settled {cfg.settle_max_ms} ms after load (qa.settle_max_ms): "
                    f"{busy} request(s) in flight or short timers still pending; measured anyway"
                ]
            if elapsed_ms >= cfg.settle_ms and all(s.watch.quiet(cfg.idle_ms) for s in slots):
                stable += 1  # twice in a row, so events already queued are delivered
                if stable >= 2:
                    return []
            else:
                stable = 0
            slots[0].page.wait_for_timeout(POLL_MS)


class PageServer:
    """Start a page's server (`python -m http.server 8000`), wait for its URL, stop it after.

    The command runs through the agent node's process runner: a session of its own, and the
    whole group is ended on stop (SIGTERM, then SIGKILL). It is the user's own command
    (`check-ui --start`), so it runs outside the coder's sandbox.
    """

    def __init__(
        self,
        command: str,
        wait_url: str,
        *,
        cwd: Path | None = None,
        timeout_s: float = 20.0,
        log_path: Path | None = None,
    ) -> None:
        self.command, self.wait_url, self.cwd = command, wait_url, cwd
        self.timeout_s, self.log_path = timeout_s, log_path
        self.proc: runner.Process | None = None

    def __enter__(self) -> PageServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.log_path:
            self.log_path.write_bytes(b"")  # this server's output only
        self.proc = runner.start(["/bin/sh", "-c", self.command], cwd=self.cwd,
                                 log_path=self.log_path)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(
                    f"start command {self.command!r} exited with code {self.proc.returncode} "
                    f"before {self.wait_url} answered{self._tail()}"
                )
            try:
                opener.open(self.wait_url, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # it answered; what it answered is the check's business
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise ServerFailed(
            f"start command {self.command!r} did not answer at {self.wait_url} within "
            f"{self.timeout_s:g} s (qa.server_timeout_s){self._tail()}"
        )

    def _tail(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return ("; its last output:\n  " + "\n  ".join(lines)) if lines else ""

    def stop(self) -> None:
        if self.proc is not None:  # the group, even when its leader (a shell) is gone
            self.proc.stop(grace_s=3.0)

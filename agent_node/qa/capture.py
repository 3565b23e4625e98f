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

The browser is found and launched by `browser.py`; the page scripts are package data in
`page_scripts/`. Playwright's sync API is used, so a Capturer belongs to the thread that
started it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_node.config import QASection
from agent_node.qa.browser import acquire_playwright, find_browser, launch, release_playwright
from agent_node.qa.errors import BrowserNotFound, PageUnreachable

POLL_MS = 50
MAX_OFFENDERS = 5
MAX_EXAMPLES = 5


def _page_script(name: str) -> str:
    """A script from `page_scripts/` (package data), without the comment lines that head it
    (Playwright takes an expression, which a leading comment would hide)."""
    lines = (Path(__file__).with_name("page_scripts") / name).read_text("utf-8").splitlines()
    while lines and lines[0].startswith("//"):
        lines.pop(0)
    return "\n".join(lines).strip()


TIMERS_SCRIPT = _page_script("timers.js")  # TIMER_WINDOW_MS is filled in per browser context
LAYOUT_SCRIPT = _page_script("layout.js")


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
        self.ctx.add_init_script(TIMERS_SCRIPT.replace("TIMER_WINDOW_MS", str(timer_window_ms)))
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
                self._pw = acquire_playwright()
            except ImportError:
                raise BrowserNotFound(
                    "Playwright is not installed: pip install 'studio-coder[agent]' (or playwright)"
                ) from None
        self._browser = launch(self._pw, path, source, loopback_only=self.loopback_only,
                               timeout_s=self.cfg.timeout_s)
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
            release_playwright()

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



"""Capture benchmark: both viewports with logs and layout facts, browser cold vs warm.

cold: launch Chromium, capture once, close (what a one-off `check-ui` pays).
warm: one more capture on a browser that has already captured (what the agent loop pays per
      round: one browser, pages kept between captures).
Each repeat runs one cold and one warm capture back to back (interleaved, so a busy machine
weighs on both alike), after a warm-up of each. Pages are served from tests/fixtures/pages by a
threaded http.server on 127.0.0.1. Target: warm median < 1.0 s.

    python -m bench.capture [--quick]     # prints a summary on stderr, JSON on stdout
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agent_node.config import QASection
from agent_node.qa.capture import Capturer
from agent_node.qa.facts import facts_of
from bench.stats import smoke

PAGES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pages"
RESULTS = Path(__file__).resolve().parent / "results" / "capture.json"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _stats(xs: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median_s": round(statistics.median(xs), 3), "min_s": round(min(xs), 3),
            "max_s": round(max(xs), 3), "p25_s": round(qs[0], 3), "p75_s": round(qs[2], 3),
            "n": len(xs)}


def _cold(cfg: QASection, url: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    with Capturer(cfg) as c:
        t1 = time.perf_counter()
        c.capture(url)
        t2 = time.perf_counter()
    return t2 - t0, t1 - t0  # launch + first capture (close not counted), launch alone


def run(quick: bool) -> dict:
    repeats = 1 if smoke() else 5 if quick else 10
    cfg = QASection()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(PAGES)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    pages = {"clean": f"{base}/clean.html", "late-error (1 s timer)": f"{base}/late-error.html"}
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
        "config": {"settle_ms": cfg.settle_ms, "idle_ms": cfg.idle_ms,
                   "settle_max_ms": cfg.settle_max_ms, "phone_scale": cfg.phone_scale,
                   "screenshot_scale": cfg.screenshot_scale},
        "repeats": repeats, "pages": {},
    }
    try:
        with Capturer(cfg) as warm:
            result["browser"] = warm.browser_path or "Playwright download"
            for name, url in pages.items():
                if not smoke():  # warm-up: page cache, fonts, the renderer binary
                    _cold(cfg, url)
                    warm.capture(url)
                cold_s, launch_s, warm_s = [], [], []
                for _ in range(repeats):
                    c, launch = _cold(cfg, url)
                    cold_s.append(c)
                    launch_s.append(launch)
                    t0 = time.perf_counter()
                    cap = warm.capture(url)
                    warm_s.append(time.perf_counter() - t0)
                result["pages"][name] = {
                    "cold": _stats(cold_s), "launch": _stats(launch_s), "warm": _stats(warm_s),
                    "facts": sorted({f"{f.viewport}:{f.kind}" for f in facts_of(cap)}),
                }
    finally:
        server.shutdown()
        server.server_close()
    warm_clean = result["pages"]["clean"]["warm"]["median_s"]
    result["target"] = {"warm_median_s_below": 1.0, "met": warm_clean < 1.0}
    return result


def _summary(r: dict) -> str:
    lines = [f"capture, both viewports ({r['repeats']} interleaved repeats, {r['browser']})"]
    for name, p in r["pages"].items():
        for kind in ("cold", "launch", "warm"):
            s = p[kind]
            lines.append(f"  {name:<24} {kind:<6} median {s['median_s']:.3f} s  "
                         f"(p25 {s['p25_s']:.3f}, p75 {s['p75_s']:.3f}, "
                         f"min {s['min_s']:.3f}, max {s['max_s']:.3f})")
        lines.append(f"  {name:<24} facts  {', '.join(p['facts']) or 'none'}")
    t = r["target"]
    lines.append(f"  target: warm median < {t['warm_median_s_below']} s: "
                 f"{'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


if __name__ == "__main__":
    res = run("--quick" in sys.argv)
    print(_summary(res), file=sys.stderr)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))

"""`agent-node check-ui URL --spec FILE [--json]`: visual QA of one page, on its own.

    agent-node check-ui http://127.0.0.1:8000/ --spec spec.md
    agent-node check-ui http://127.0.0.1:8000/ --spec spec.md --start "python -m http.server 8000"
    agent-node check-ui http://127.0.0.1:8000/ --spec spec.md --no-model --json

Writes the screenshots, logs, facts, descriptions and verdict to --out DIR (default
$STUDIO_CODER_HOME/runs/check-ui-<timestamp>/). Exit codes: 0 pass, 1 fail (or no usable
verdict), 2 bad input (no browser, page unreachable, missing spec), 3 inference node
unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent_node.config import DEFAULT_CONFIG, ConfigError, load_default_config, studio_home
from agent_node.qa.capture import Capturer
from agent_node.qa.check import check_page
from agent_node.qa.errors import QAError
from agent_node.qa.page_server import PageServer
from agent_node.qa.result import QAResult
from agent_node.qa.spec import load_spec

try:
    from agent_node.exceptions import InferenceError
except ImportError:  # the client's error tree is not in this build yet

    class InferenceError(Exception):  # type: ignore[no-redef]
        pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agent-node check-ui", description=__doc__.split("\n")[0])
    p.add_argument("url")
    p.add_argument("--spec", required=True, type=Path, help="text file of checkable statements")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout, nothing else")
    p.add_argument("--out", type=Path, help="run directory (default under $STUDIO_CODER_HOME)")
    p.add_argument("--no-model", action="store_true", help="no describer, no judge: facts only")
    p.add_argument("--config", type=Path,
                   help=f"agent-node.toml (default: {DEFAULT_CONFIG} if present)")
    p.add_argument("--browser", help="Chromium/Chrome executable (overrides qa.browser)")
    p.add_argument("--start", metavar="CMD", help="command that serves the page; stopped after")
    p.add_argument("--cwd", type=Path, help="directory to run --start in")
    p.add_argument("--wait-url", help="URL that answers once --start is up (default: URL)")
    return p


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)

    def progress(msg: str) -> None:
        print(f"check-ui: {msg}", file=sys.stderr, flush=True)

    def fail(code: int, msg: str) -> int:
        print(f"check-ui: {msg}", file=sys.stderr)
        if args.json:
            print(json.dumps({"pass": False, "status": "error", "error": msg, "exit_code": code}))
        return code

    try:
        cfg = load_default_config(args.config)
        spec = load_spec(args.spec)
    except (ConfigError, QAError) as e:
        return fail(2, str(e))
    if not args.url.startswith(("http://", "https://", "file://")):
        return fail(2, f"URL {args.url!r} is not http(s):// or file://; pass the page's address")

    model: Any = None
    describer: Any = None
    client: Any = None
    if not args.no_model:
        try:
            from agent_node import client as client_mod
        except ImportError as e:
            return fail(3, f"no inference client in this build ({e}); rerun with --no-model "
                           "for a verdict from the measured facts alone")
        try:
            client = client_mod.connect(cfg)
            client.health()  # fail fast: a first Chat would wait out its whole deadline
            model = client.model(role="coder")
            describer = client.describer()
        except InferenceError as e:
            return fail(3, f"{e} (or rerun with --no-model for a verdict from the facts alone)")
        seen = describer.name if describer else "none"
        progress(f"judge: {model.name or 'server default'}; describer: {seen}")

    out = args.out or studio_home() / "runs" / f"check-ui-{time.strftime('%Y%m%d-%H%M%S')}"
    server = None
    try:
        if args.start:
            out.mkdir(parents=True, exist_ok=True)
            wait_url = args.wait_url or args.url
            progress(f"starting {args.start!r}, waiting for {wait_url}")
            server = PageServer(args.start, wait_url, cwd=args.cwd,
                                timeout_s=cfg.qa.server_timeout_s, log_path=out / "server.log")
            server.start()
        with Capturer(cfg.qa, browser=args.browser) as capturer:
            progress(f"browser: {capturer.browser_path or 'Playwright download'} "
                     f"(from {capturer.browser_source}); capturing {args.url}")
            result = check_page(args.url, spec, model=model, describer=describer,
                                capturer=capturer, out_dir=out)
    except QAError as e:
        return fail(2, str(e))
    except InferenceError as e:
        return fail(3, f"inference node at {cfg.inference.target}: {e}")
    finally:
        if server is not None:
            server.stop()
        if client is not None and hasattr(client, "close"):
            client.close()

    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(summary(result))
    return 0 if result.verdict.passed else 1


def summary(r: QAResult) -> str:
    v = r.verdict
    head = {"pass": "PASS", "fail": "FAIL", "error": "NO VERDICT"}[v.status]
    lines = [f"{head}  {r.url}  (judged by {v.judged_by}; capture {r.capture_seconds:.2f} s)"]
    if v.error:
        lines.append(f"  {v.error}")
    for f in v.failures:
        lines += [f"  x [{f.viewport}] {f.statement}", f"      evidence: {f.evidence}",
                  f"      fix: {f.fix}"]
    for a in v.allowed:
        lines.append(f"  ~ allowed: {a}")
    for fact in r.facts:
        if not fact.hard:
            lines.append(f"  ? [{fact.viewport}] {fact.kind}: {fact.message}")
    for name, d in r.descriptions.items():
        if d.text is None:
            lines.append(f"  {name}: {d.note}")
    for n in (v.notes + r.notes):
        lines.append(f"  note: {n}")
    lines.append(f"  run directory: {r.out_dir}")
    return "\n".join(lines)

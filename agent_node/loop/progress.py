"""Status lines on stderr as the run's events arrive: stage, round, model, tokens/s, elapsed.

Each stage (classify, spec, coder, gate → tests, visual QA → capture, describe, judge, review)
is shown as it starts and ends, with its time. The model call in flight is shown with its step,
the tokens it has streamed so far and its elapsed time: on a terminal as one status line that
keeps ticking, elsewhere (a log, a pipe) as a line every `every_s` seconds of a call. Nothing
here goes to stdout, so `--json` keeps stdout to its one object.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

QUIET_STAGES = ("classify", "spec", "coder", "review")  # their own events already say the result


class Progress:
    """A run listener; nothing here reaches into the loop, it only reads events."""

    def __init__(self, console: Console | None = None, every_s: float = 10.0) -> None:
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True,
                                          file=sys.stderr)
        self.start = time.monotonic()
        self.round = 0
        self.tokens = 0
        self.every_s = every_s
        self._call: dict[str, Any] | None = None  # the latest in_flight event of the call
        self._call_seen = 0.0  # monotonic time it arrived
        self._printed_at = 0.0
        self._live: Live | None = None

    def line(self, stage: str, detail: str = "") -> None:
        self._stop_live()
        self._call = None  # any other event comes between calls
        elapsed = time.monotonic() - self.start
        where = f"round {self.round} " if self.round else ""
        self.console.print(f"[dim]{elapsed:6.1f}s[/dim] [bold]{stage:<9}[/bold] {where}{detail}",
                           markup=True, emoji=False)

    def __call__(self, e: dict[str, Any]) -> None:
        kind = e.get("type")
        if kind == "in_flight":
            self.in_flight(e)
            return
        esc = escape
        if kind == "run_started":
            self.line("run", esc(f"{e.get('task', '')[:80]} (run {e.get('run_branch')})"))
        elif kind == "stage":
            self.stage(e)
        elif kind == "note":
            self.line("note", f"[yellow]{esc(e.get('text', ''))}[/yellow]")
        elif kind == "classified":
            self.line("classify", "UI" if e.get("ui") else "not UI")
        elif kind == "spec":
            self.line("spec", f"{len(e.get('statements', []))} statements")
        elif kind == "round_started":
            self.round = int(e.get("round", 0))
            self.line("coder", "fresh coder started")
        elif kind == "model_call":
            self.tokens += int(e.get("completion_tokens", 0))  # reasoning included
            self.line(str(e.get("role", "model")),
                      esc(f"{e.get('model', '')} {e.get('completion_tokens', 0)} tok "
                          f"{e.get('decode_tps', 0.0):.1f} tok/s {e.get('seconds', 0.0):.1f}s  "
                          f"total {self.tokens:,} tok"))
        elif kind == "tool_call":
            mark = "" if e.get("ok") else " [red]error[/red]"
            self.line("tool", esc(str(e.get("name"))) + mark)
        elif kind == "gate":
            exit_code = e.get("test_exit")
            tests = "no tests" if not e.get("test_cmd") else f"tests exit {exit_code}"
            self.line("gate", f"{len(e.get('files', []))} file(s) changed, {tests}, "
                      + ("[green]pass[/green]" if e.get("passed") else "[red]fail[/red]"))
        elif kind == "qa":
            self.line("qa", f"{len(e.get('failures', []))} failure(s)")
        elif kind == "round_verdict":
            colour = "green" if e.get("verdict") == "pass" else "red"
            self.line("verdict", f"[{colour}]{esc(str(e.get('verdict')))}[/{colour}]")
        elif kind == "verdict":
            self.round = 0
            self.line("done", esc(f"{e.get('verdict')} after {e.get('rounds', 0)} round(s)"))

    def stage(self, e: dict[str, Any]) -> None:
        name, state = str(e.get("stage", "")), e.get("state")
        if state == "started":
            if name not in QUIET_STAGES:
                self.line(name, "started")
        elif state == "failed":
            self.line(name, f"[red]stopped by an error[/red] after {e.get('seconds', 0):.1f}s")
        else:
            self.line(name, f"done in {e.get('seconds', 0):.1f}s")

    # -- the call in flight ----------------------------------------------------------------

    def in_flight(self, e: dict[str, Any]) -> None:
        now = time.monotonic()
        new_call = self._call is None or e.get("seconds", 0) < self._call.get("seconds", 0)
        self._call, self._call_seen = e, now
        if e.get("done"):
            self._stop_live()
            self._call = None
            return
        if self.console.is_terminal:
            if self._live is None:
                self._live = Live(_CallLine(self), console=self.console, transient=True,
                                  refresh_per_second=4)
                self._live.start()
        elif new_call:
            self._printed_at = now  # a call's first line waits every_s: short calls stay quiet
        elif now - self._printed_at >= self.every_s:
            self._printed_at = now
            self.console.print(self.call_text(now), markup=False, emoji=False, highlight=False)

    def call_text(self, now: float) -> str:
        e = self._call or {}
        seconds = float(e.get("seconds", 0.0)) + (now - self._call_seen)
        tokens = int(e.get("tokens", 0))
        reasoning = int(e.get("reasoning_tokens", 0))
        made = f"{tokens:,} tok so far" if tokens else "no tokens streamed yet"
        if reasoning:
            made += f" ({reasoning:,} reasoning)"
        elapsed = now - self.start
        step = str(e.get("step") or "model")
        return f"{elapsed:6.1f}s {step:<9} {e.get('model') or 'model'}: {made}, {seconds:.0f}s"

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class _CallLine:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __rich__(self) -> Text:
        return Text(self.progress.call_text(time.monotonic()), style="dim")

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

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from agent_node.events import (
    Classified,
    GateChecked,
    InFlight,
    ModelCall,
    Note,
    RoundStarted,
    RoundVerdict,
    RunStarted,
    RunVerdict,
    ScreenEvent,
    SpecWritten,
    Stage,
    ToolCall,
    VisualQAChecked,
)

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
        self._call: InFlight | None = None  # the latest in_flight event of the call
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

    def __call__(self, e: ScreenEvent) -> None:
        esc = escape
        match e:
            case InFlight():
                self.in_flight(e)
            case RunStarted():
                self.line("run", esc(f"{e.task[:80]} (run {e.run_branch})"))
            case Stage():
                self.stage(e)
            case Note():
                self.line("note", f"[yellow]{esc(e.text)}[/yellow]")
            case Classified():
                self.line("classify", "UI" if e.ui else "not UI")
            case SpecWritten():
                self.line("spec", f"{len(e.statements)} statements")
            case RoundStarted():
                self.round = e.round
                self.line("coder", "fresh coder started")
            case ModelCall():
                self.tokens += e.completion_tokens  # reasoning included
                self.line(e.role or "model",
                          esc(f"{e.model} {e.completion_tokens} tok {e.decode_tps:.1f} tok/s "
                              f"{e.seconds:.1f}s  total {self.tokens:,} tok"))
            case ToolCall():
                self.line("tool", esc(e.name) + ("" if e.ok else " [red]error[/red]"))
            case GateChecked():
                tests = "no tests" if not e.test_cmd else f"tests exit {e.test_exit}"
                self.line("gate", f"{len(e.files)} file(s) changed, {tests}, "
                          + ("[green]pass[/green]" if e.passed else "[red]fail[/red]"))
            case VisualQAChecked():
                self.line("qa", f"{len(e.failures)} failure(s)")
            case RoundVerdict():
                colour = "green" if e.verdict == "pass" else "red"
                self.line("verdict", f"[{colour}]{esc(e.verdict)}[/{colour}]")
            case RunVerdict():
                self.round = 0
                self.line("done", esc(f"{e.verdict} after {e.rounds} round(s)"))

    def stage(self, e: Stage) -> None:
        if e.state == "started":
            if e.stage not in QUIET_STAGES:
                self.line(e.stage, "started")
        elif e.state == "failed":
            self.line(e.stage, f"[red]stopped by an error[/red] after {e.seconds or 0:.1f}s")
        else:
            self.line(e.stage, f"done in {e.seconds or 0:.1f}s")

    # -- the call in flight ----------------------------------------------------------------

    def in_flight(self, e: InFlight) -> None:
        now = time.monotonic()
        new_call = self._call is None or e.seconds < self._call.seconds
        self._call, self._call_seen = e, now
        if e.done:
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
        e = self._call
        seconds = (e.seconds if e else 0.0) + (now - self._call_seen)
        tokens, reasoning = (e.tokens, e.reasoning_tokens) if e else (0, 0)
        made = f"{tokens:,} tok so far" if tokens else "no tokens streamed yet"
        if reasoning:
            made += f" ({reasoning:,} reasoning)"
        elapsed = now - self.start
        step = (e.step if e else "") or "model"
        return f"{elapsed:6.1f}s {step:<9} {(e.model if e else '') or 'model'}: {made}, " \
               f"{seconds:.0f}s"

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class _CallLine:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __rich__(self) -> Text:
        return Text(self.progress.call_text(time.monotonic()), style="dim")

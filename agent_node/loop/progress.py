"""Status lines on stderr as the run's events arrive: stage, round, model, tokens/s, elapsed."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console


class Progress:
    """A run listener; nothing here reaches into the loop, it only reads events."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True,
                                          file=sys.stderr)
        self.start = time.monotonic()
        self.round = 0
        self.tokens = 0

    def line(self, stage: str, detail: str = "") -> None:
        elapsed = time.monotonic() - self.start
        where = f"round {self.round} " if self.round else ""
        self.console.print(f"[dim]{elapsed:6.1f}s[/dim] [bold]{stage:<9}[/bold] {where}{detail}",
                           markup=True, emoji=False)

    def __call__(self, e: dict[str, Any]) -> None:
        kind = e.get("type")
        esc = _escape
        if kind == "run_started":
            self.line("run", esc(f"{e.get('task', '')[:80]} (run {e.get('run_branch')})"))
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
            self.tokens += int(e.get("completion_tokens", 0)) + int(e.get("reasoning_tokens", 0))
            self.line(str(e.get("role", "model")),
                      esc(f"{e.get('model', '')} {e.get('completion_tokens', 0)} tok "
                          f"{e.get('decode_tps', 0.0):.1f} tok/s  total {self.tokens:,} tok"))
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


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)

"""A progress bar on stderr for long local work (joining parts, importing weights).

On a terminal it redraws one line in place (a carriage return, no escape codes); anywhere else
(a log file, CI) it prints a plain line at every tenth, so a log reads as text.

    with Progress("importing qwen2.5-coder-0.5b", total_bytes) as bar:
        for chunk in chunks:
            bar.advance(len(chunk))
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_SECONDS = 0.2


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 width: int = 30) -> None:
        self.label, self.total, self.width = label, max(int(total), 1), width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self._shown_tenth = -1
        self._drawn_at = 0.0
        self._start = time.monotonic()

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(ok=exc[0] is None)

    def advance(self, n: int) -> None:
        self.done = min(self.done + int(n), self.total)
        self._draw()

    def _line(self) -> str:
        frac = self.done / self.total
        return f"{self.label}: {frac:4.0%} ({_size(self.done)} of {_size(self.total)})"

    def _draw(self, force: bool = False) -> None:
        frac = self.done / self.total
        if self.tty:
            now = time.monotonic()
            if not force and now - self._drawn_at < REDRAW_SECONDS and self.done < self.total:
                return
            self._drawn_at = now
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {frac:4.0%} "
                              f"{_size(self.done)}/{_size(self.total)}")
            self.stream.flush()
            return
        tenth = int(frac * 10)
        if tenth > self._shown_tenth:
            self._shown_tenth = tenth
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def close(self, ok: bool = True) -> None:
        seconds = time.monotonic() - self._start
        if self.tty:
            self._draw(force=True)
            self.stream.write(f" {seconds:.0f} s\n" if ok else " stopped\n")
        elif ok and self._shown_tenth < 10:
            self.done = self.total
            self._draw()
        self.stream.flush()

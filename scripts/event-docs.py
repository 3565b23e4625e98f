#!/usr/bin/env python3
"""Write the event table in docs/run-record.md from `agent_node/events.py`.

    .venv/bin/python scripts/event-docs.py           # rewrite the table
    .venv/bin/python scripts/event-docs.py --check   # exit 1 when it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent_node.events import with_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "run-record.md"


def main(argv: list[str]) -> int:
    text = DOC.read_text(encoding="utf-8")
    wanted = with_table(text)
    if "--check" in argv:
        if wanted != text:
            print(f"{DOC} is out of date; run {Path(__file__).name} to rewrite its event table",
                  file=sys.stderr)
            return 1
        return 0
    if wanted != text:
        DOC.write_text(wanted, encoding="utf-8")
        print(f"rewrote the event table in {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Count lines in files, like a small `wc -l`.

    python linecount.py notes.txt todo.txt
    3 notes.txt
    5 todo.txt
    8 total
"""

import argparse
import sys
from pathlib import Path


def count_lines(text: str) -> int:
    return len(text.splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Count lines in files.")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    total = 0
    for path in args.files:
        try:
            text = path.read_text()
        except OSError as e:
            print(f"linecount: {path}: {e.strerror}", file=sys.stderr)
            return 1
        n = count_lines(text)
        total += n
        print(f"{n} {path}")
    if len(args.files) > 1:
        print(f"{total} total")
    return 0


if __name__ == "__main__":
    sys.exit(main())

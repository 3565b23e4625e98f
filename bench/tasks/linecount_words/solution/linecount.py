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


def count_words(text: str) -> int:
    return len(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Count lines in files.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--words", action="store_true", help="count words instead of lines")
    args = parser.parse_args(argv)
    count = count_words if args.words else count_lines
    total = 0
    for path in args.files:
        try:
            text = path.read_text()
        except OSError as e:
            print(f"linecount: {path}: {e.strerror}", file=sys.stderr)
            return 1
        n = count(text)
        total += n
        print(f"{n} {path}")
    if len(args.files) > 1:
        print(f"{total} total")
    return 0


if __name__ == "__main__":
    sys.exit(main())

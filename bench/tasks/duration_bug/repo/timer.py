"""Command line: `python timer.py 1h30m` prints when the timer ends, in seconds from now."""

import sys

from duration import format_duration, parse_duration


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: timer.py DURATION (e.g. 25m or 1h30m)", file=sys.stderr)
        return 2
    seconds = parse_duration(argv[0])
    print(f"timer set for {format_duration(seconds)} ({seconds} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

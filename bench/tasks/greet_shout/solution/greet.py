"""Print a greeting: `python greet.py Ada` -> `Hello, Ada!`."""

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print a greeting.")
    parser.add_argument("name", help="who to greet")
    parser.add_argument("--greeting", default="Hello", help="the word to greet with")
    parser.add_argument("--shout", action="store_true", help="print it in upper case")
    args = parser.parse_args(argv)
    message = f"{args.greeting}, {args.name}!"
    if args.shout:
        message = message.upper()
    print(message)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

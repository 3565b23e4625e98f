"""Start the service: `python serve.py settings.json`."""

import sys

from config import load_config
from errors import ConfigError


def main(argv: list[str]) -> int:
    try:
        cfg = load_config(argv[0] if argv else "settings.json")
    except ConfigError as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    print(f"listening on {cfg['host']}:{cfg['port']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Load the service's settings from a JSON file, on top of the defaults."""

import json
from pathlib import Path

from errors import ConfigError

DEFAULTS = {"host": "127.0.0.1", "port": 8000, "debug": False}


def load_config(path: str | Path) -> dict:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    cfg = {**DEFAULTS, **data}
    port = cfg["port"]
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ConfigError(f"{path}: port must be an integer from 1 to 65535, not {port!r}")
    return cfg

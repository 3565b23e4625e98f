"""Load the service's settings from a JSON file, on top of the defaults."""

import json
from pathlib import Path

DEFAULTS = {"host": "127.0.0.1", "port": 8000, "debug": False}


def load_config(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    return {**DEFAULTS, **data}

"""Where the studio keeps its state: `$STUDIO_CODER_HOME`, the one path both nodes share.

    studio_home() / "models"     the inference node's model store
    studio_home() / "runs"       the agent node's run records
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "STUDIO_CODER_HOME"
DEFAULT_HOME = "~/.local/share/studio-coder"


def studio_home() -> Path:
    """`$STUDIO_CODER_HOME`, or ~/.local/share/studio-coder when it is not set."""
    return Path(os.environ.get(HOME_ENV, DEFAULT_HOME)).expanduser()

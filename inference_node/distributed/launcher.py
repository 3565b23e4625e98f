"""`python -m inference_node.distributed.launcher ARGS`: mlx.launch, without its idle spin.

mlx.launch runs a thread per rank that forwards the launcher's stdin to the rank's and the
rank's output back, waiting with `select(outputs, [the rank's stdin], [], 1.0)`. A pipe with
room is always writable, so that select returns at once, forever: with nothing to forward, an
idle two-rank node kept a core busy in the launcher alone (3.4 s of CPU in 3 s here).

The ranks read no input, so the supervisor never writes to the launcher's stdin (a pipe held
open: /dev/null would be readable at EOF and spin the launcher's main loop instead). This
module runs mlx.launch's own `main` with its module's `select` asked about reading only, so a
rank thread sleeps until its rank writes output or exits, and checks again once a second.
If a later mlx moves its select, the launcher runs as it ships: it spins, and works.
"""

from __future__ import annotations

import select as _select
import sys
from typing import Any


def _read_only(rlist: list[Any], wlist: list[Any], xlist: list[Any], timeout: float | None = None
               ) -> tuple[list[Any], list[Any], list[Any]]:
    """`select` for mlx.launch: never waits on a writable stdin (there is nothing to write)."""
    r, _, x = _select.select(rlist, [], xlist, timeout)
    return r, [], x


def main() -> int:
    from mlx._distributed_utils import launch

    if getattr(launch, "select", None) is _select.select:
        launch.select = _read_only  # type: ignore[assignment]
    sys.argv[0] = "mlx.launch"
    return int(launch.main() or 0)


if __name__ == "__main__":
    sys.exit(main())

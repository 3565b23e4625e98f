"""Install Qwen2.5-Coder 0.5B into the suite's model cache while the tests start.

    .venv/bin/python tests/warm_models.py

`make test` runs this beside its two pytest runs. On a fresh checkout the install (download
and import, about 35 s here) would otherwise happen inside test_qwen.py, on the model-heavy
run's path, with the other core idle. The qwen05_dir fixture takes the same lock: it waits for
this, then finds the model installed; if this failed, the fixture tries again and says why.
"""

from __future__ import annotations

import sys
import time

from conftest import CACHE, QWEN_05B, cache_lock

from inference_node.install import KNOWN_MODELS, InstallError, install


def main() -> int:
    t0 = time.monotonic()
    try:
        with cache_lock(QWEN_05B):
            _, fresh = install(KNOWN_MODELS[QWEN_05B], CACHE)
    except InstallError as e:
        print(f"warm_models: {QWEN_05B} was not installed ({e}); test_qwen.py will try again",
              file=sys.stderr)
        return 1
    done = "installed" if fresh else "already installed"
    print(f"{QWEN_05B} {done} in {CACHE} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

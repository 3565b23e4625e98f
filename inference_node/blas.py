"""OpenBLAS for MLX's CPU backend on Linux, preloaded into MLX processes and nothing else.

The `mlx[cpu]` wheel links the reference BLAS; preloading Debian's OpenBLAS measured about 2.5×
faster decode here. But a preloaded OpenBLAS must not leak into child processes: Chromium and
Playwright's driver hang with it. So MLX processes get it (the Makefile exports it for tests and
benchmarks; `inference-node serve` re-execs itself with it) and drop it from their environment
once it is mapped, so the browsers, git, sshd and shells they start never see it.
"""

from __future__ import annotations

import glob
import os
import sys

PATTERN = "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0"


def openblas() -> str | None:
    if not sys.platform.startswith("linux"):
        return None
    found = sorted(glob.glob(PATTERN))
    return found[0] if found else None


def preloaded() -> bool:
    lib = openblas()
    if lib is None:
        return False
    try:
        with open("/proc/self/maps") as maps:
            return any(lib in line or "libopenblas" in line for line in maps)
    except OSError:
        return False


def with_preload(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with OpenBLAS preloaded, for a child that runs MLX."""
    env = dict(os.environ if env is None else env)
    lib = openblas()
    if lib and lib not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = f"{lib} {env['LD_PRELOAD']}".strip() if env.get("LD_PRELOAD") else lib
    return env


def without_preload(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with OpenBLAS taken out of LD_PRELOAD."""
    env = dict(os.environ if env is None else env)
    kept = [p for p in env.get("LD_PRELOAD", "").split() if "openblas" not in p]
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def drop_from_environ() -> None:
    """Keep OpenBLAS out of every process this one starts from now on."""
    kept = without_preload().get("LD_PRELOAD")
    if kept:
        os.environ["LD_PRELOAD"] = kept
    else:
        os.environ.pop("LD_PRELOAD", None)


def reexec_with_openblas(argv: list[str]) -> None:
    """Re-exec this command with OpenBLAS preloaded, once, when it is available and missing."""
    if openblas() is None or preloaded() or os.environ.get("STUDIO_CODER_NO_OPENBLAS"):
        return
    env = with_preload()
    env["STUDIO_CODER_NO_OPENBLAS"] = "1"  # never loop
    os.execve(sys.executable, [sys.executable, "-m", "inference_node.cli", *argv], env)

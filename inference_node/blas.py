"""OpenBLAS for MLX's CPU backend on Linux, preloaded into MLX processes and nothing else.

The `mlx[cpu]` wheel links the reference BLAS; preloading Debian's OpenBLAS measured about 2.5×
faster decode here. But a preloaded OpenBLAS must not leak into child processes: Chromium and
Playwright's driver hang with it. So MLX processes get it (the Makefile exports it for tests and
benchmarks; `inference-node serve` re-execs itself with it) and drop it from their environment
once it is mapped, so the browsers, git, sshd and shells they start never see it.

Ahead of OpenBLAS goes a small library of ours, gemv_forward.c, built with the system's C
compiler on first use: MLX does decode's one-row products with sgemm, which this OpenBLAS does
at a third of the speed of sgemv; the library sends them to sgemv (decode measured 2x faster),
and a batch's products of 2 to 8 rows to a kernel of its own that reads the weights once
(x86-64 with AVX2 and FMA; STUDIO_CODER_SMALL_ROWS=0 in the environment turns it off).
Without a compiler, OpenBLAS is preloaded alone and `forwarder_problem()` says why.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

PATTERN = "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0"
FORWARDER_SOURCE = Path(__file__).with_name("gemv_forward.c")
# In the environment MLX runs from (the Makefile preloads .venv/lib/studio-coder/...).
FORWARDER = Path(sys.prefix) / "lib" / "studio-coder" / "libgemv_forward.so"
_PRELOADS = ("openblas", "gemv_forward")  # what is kept out of children
# Builds that failed in this process, by (library, compiler, source mtime): not tried again on
# every MLX process started (a broken compiler costs about 0.3 s a try).
_FAILED: dict[tuple[str, str, float], str] = {}


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


def forwarder_problem() -> str:
    """'' when the gemv forwarder is built and current (building it if it can), else why not."""
    if openblas() is None:
        return "no OpenBLAS to forward to"
    try:
        source_mtime = FORWARDER_SOURCE.stat().st_mtime
        if FORWARDER.is_file() and FORWARDER.stat().st_mtime >= source_mtime:
            return ""
    except OSError as e:
        return f"{FORWARDER_SOURCE} cannot be read: {e}"
    cc = compiler()
    if cc is None:
        return "no C compiler to build it (apt-get install gcc); decode runs about 2x slower"
    key = (str(FORWARDER), cc, source_mtime)
    if key in _FAILED:
        return _FAILED[key]
    problem = build(cc, FORWARDER_SOURCE, FORWARDER)
    if problem:
        _FAILED[key] = problem
    return problem


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(cc: str, source: Path, target: Path) -> str:
    """Build a forwarder's `source` into `target` with `cc`: '' or why it failed. (Benchmarks
    build an earlier revision's source beside the current one: bench/forwarder.py.)"""
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-pthread", "-o", str(partial),
                               str(source), "-ldl"], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            return f"{cc} could not build {source.name}: {done.stderr.strip()[-500:]}"
        partial.replace(target)  # whole or not at all, for processes starting beside us
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot build {target}: {e}"
    finally:
        partial.unlink(missing_ok=True)
    return ""


def forwarder() -> str | None:
    return None if forwarder_problem() else str(FORWARDER)


def with_preload(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with OpenBLAS preloaded, the gemv forwarder ahead of it
    when it can be built, for a child that runs MLX."""
    env = dict(os.environ if env is None else env)
    lib = openblas()
    if lib is None:
        return env
    ours = [p for p in (forwarder(), lib) if p]
    kept = [p for p in env.get("LD_PRELOAD", "").split() if p not in ours]
    env["LD_PRELOAD"] = " ".join(ours + kept)
    return env


def without_preload(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with OpenBLAS and the forwarder taken out of LD_PRELOAD."""
    env = dict(os.environ if env is None else env)
    kept = [p for p in env.get("LD_PRELOAD", "").split()
            if not any(name in p for name in _PRELOADS)]
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


def reexec_with_openblas(argv: list[str], module: str = "inference_node.cli") -> None:
    """Re-exec `python -m module argv` with OpenBLAS preloaded, once, when it is available and
    missing: `inference-node serve`, and a benchmark that times MLX in its own process when it
    is run alone (`python -m bench.lookup` without the Makefile's preload ran about 5x slower
    and said nothing)."""
    if openblas() is None or preloaded() or os.environ.get("STUDIO_CODER_NO_OPENBLAS"):
        return
    env = with_preload()
    env["STUDIO_CODER_NO_OPENBLAS"] = "1"  # never loop
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


if __name__ == "__main__":  # `python -m inference_node.blas`: build the forwarder, say where
    problem = forwarder_problem()
    print(problem or FORWARDER, file=sys.stderr if problem else sys.stdout)

"""OpenBLAS is preloaded into MLX processes and kept out of everything they start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inference_node import blas

REPO = Path(__file__).resolve().parent.parent


def test_dropping_the_preload_keeps_the_rest_of_the_environment(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0")
    monkeypatch.setenv("STUDIO_CODER_PROBE", "kept")
    path = os.environ["PATH"]
    blas.drop_from_environ()
    assert "LD_PRELOAD" not in os.environ
    assert os.environ["STUDIO_CODER_PROBE"] == "kept" and os.environ["PATH"] == path


def test_other_preloads_survive(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/lib/libfoo.so /usr/lib/x/openblas-pthread/libopenblas.so.0")
    blas.drop_from_environ()
    assert os.environ["LD_PRELOAD"] == "/lib/libfoo.so"


def test_with_preload_adds_openblas_once_when_present():
    env = blas.with_preload({"PATH": "/bin"})
    if blas.openblas() is None:
        assert "LD_PRELOAD" not in env
    else:
        assert env["LD_PRELOAD"].split()[-1] == blas.openblas()
        assert blas.with_preload(env)["LD_PRELOAD"] == env["LD_PRELOAD"]


def test_with_preload_puts_the_gemv_forwarder_ahead_of_openblas_and_drops_both():
    if blas.openblas() is None or blas.forwarder() is None:
        pytest.skip(f"no forwarder here: {blas.forwarder_problem() or 'no OpenBLAS'}")
    env = blas.with_preload({"LD_PRELOAD": "/lib/libfoo.so"})
    assert env["LD_PRELOAD"].split() == [blas.forwarder(), blas.openblas(), "/lib/libfoo.so"]
    assert blas.with_preload(env) == env
    assert blas.without_preload(env)["LD_PRELOAD"] == "/lib/libfoo.so"


# Run under the forwarder and OpenBLAS: MLX's products of 1 to 9 rows or 1 column, every
# transpose, alpha and beta (beta 0 over NaN, which BLAS must not read), against numpy; then
# how many went to sgemv and to the small-rows kernel.
FORWARDED = r"""
import ctypes, json, sys
import mlx.core as mx
import numpy as np

lib = ctypes.CDLL(sys.argv[1])
gemv = ctypes.c_ulong.in_dll(lib, "studio_gemv_forwarded")
rows = ctypes.c_ulong.in_dll(lib, "studio_small_rows")
rng = np.random.default_rng(0)
worst, counts = 0.0, {}


def transposed(x):  # x as the transpose of a row-major array: BLAS gets it with Trans
    return mx.array(np.ascontiguousarray(x.T)).T


for m, n, k in [(1, 300, 70), (5, 1, 70), (1, 1, 9), (1, 64, 1), (4, 6, 5), (2, 301, 70),
                (8, 33, 17), (3, 2, 8), (7, 129, 200), (9, 40, 24)]:
    before = gemv.value, rows.value
    A = rng.standard_normal((m, k), dtype=np.float32)
    B = rng.standard_normal((k, n), dtype=np.float32)
    C = np.full((m, n), np.nan, dtype=np.float32)
    for a in (mx.array(A), transposed(A)):
        for b in (mx.array(B), transposed(B)):
            worst = max(worst, float(np.abs(np.array(a @ b) - A @ B).max()))
            got = np.array(mx.addmm(mx.array(C), a, b, alpha=0.5, beta=0.0))
            worst = max(worst, float(np.abs(got - 0.5 * (A @ B)).max()))
            C2 = rng.standard_normal((m, n), dtype=np.float32)
            got = np.array(mx.addmm(mx.array(C2), a, b, alpha=0.5, beta=2.0))
            worst = max(worst, float(np.abs(got - (2 * C2 + 0.5 * (A @ B))).max()))
    counts[f"{m}x{n}x{k}"] = [gemv.value - before[0], rows.value - before[1]]
print(json.dumps({"worst": worst, "forwarded": counts}))
"""


def test_one_row_one_column_and_small_batches_are_forwarded_and_equal_sgemm():
    if blas.openblas() is None or blas.forwarder() is None:
        pytest.skip(f"no forwarder here: {blas.forwarder_problem() or 'no OpenBLAS'}")
    env = blas.with_preload(blas.without_preload())
    done = subprocess.run([sys.executable, "-c", FORWARDED, blas.forwarder()], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["worst"] < 1e-4
    forwarded = out["forwarded"]
    # A and B each as is and transposed, 3 products: one row or one column go to sgemv, all 12
    for shape in ("1x300x70", "5x1x70", "1x1x9", "1x64x1"):
        assert forwarded[shape] == [12, 0], shape
    # 2 to 8 rows of A times a transposed B (x @ W.T, a batch's decode) go to the kernel where
    # the CPU has AVX2 and FMA, 3 products; the rest, and 9 rows, to OpenBLAS
    kernel = 3 if _has_avx2_fma() else 0
    for shape in ("4x6x5", "2x301x70", "8x33x17", "3x2x8", "7x129x200"):
        assert forwarded[shape] == [0, kernel], shape
    assert forwarded["9x40x24"] == [0, 0]


# A batch's product big enough to split, under OPENBLAS_NUM_THREADS=3: this thread and two
# helpers each take a share of W's rows (row counts that do not divide by the tile of 3 or by
# the threads included), against numpy. The products run back to back (the helpers poll for
# the next), then again after a pause (they have gone to sleep and are woken). Last, the
# helper threads that exist, and the CPU they take while no product comes: none, asleep.
SPLIT = r"""
import ctypes, json, os, sys, time
import mlx.core as mx
import numpy as np

rows = ctypes.c_ulong.in_dll(ctypes.CDLL(sys.argv[1]), "studio_small_rows")
rng = np.random.default_rng(1)
worst = 0.0
for _ in range(2):
    for m, n, k in [(2, 4864, 896), (8, 896, 4864), (5, 1001, 333), (3, 20000, 50),
                    (4, 7, 20000)]:
        A = rng.standard_normal((m, k), dtype=np.float32)
        W = rng.standard_normal((n, k), dtype=np.float32)
        C = rng.standard_normal((m, n), dtype=np.float32)
        got = np.array(mx.addmm(mx.array(C), mx.array(A), mx.array(W).T, alpha=0.5, beta=2.0))
        worst = max(worst, float(np.abs(got - (2 * C + 0.5 * (A @ W.T))).max() / np.sqrt(k)))
    time.sleep(0.05)


def helper_ticks():
    ticks = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/comm") as f:
            if f.read().strip() != "studio-rows":
                continue
        with open(f"/proc/self/task/{task}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks.append(int(fields[11]) + int(fields[12]))  # utime + stime
    return ticks


before = helper_ticks()
time.sleep(0.3)
idle = sum(helper_ticks()) - sum(before)
print(json.dumps({"worst": worst, "kernel": rows.value, "helpers": len(before),
                  "idle_ticks": idle}))
"""


def test_a_big_batch_product_is_split_across_openblas_threads_count():
    if blas.openblas() is None or blas.forwarder() is None or not _has_avx2_fma():
        pytest.skip("needs OpenBLAS, the forwarder and a CPU with AVX2 and FMA")
    env = blas.with_preload(blas.without_preload())
    cores = len(os.sched_getaffinity(0))  # OpenBLAS runs no more threads than this
    for threads, helpers in (("3", min(3, cores) - 1), ("1", 0)):
        env["OPENBLAS_NUM_THREADS"] = threads
        done = subprocess.run([sys.executable, "-c", SPLIT, blas.forwarder()], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"worst": pytest.approx(0, abs=1e-5), "kernel": 10,
                                           "helpers": helpers, "idle_ticks": 0}


def _has_avx2_fma() -> bool:
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    return {"avx2", "fma"} <= set(flags.split()) and os.uname().machine == "x86_64"


def test_a_stale_forwarder_is_rebuilt_from_its_source(tmp_path, monkeypatch):
    if blas.openblas() is None or not (os.environ.get("CC") or shutil.which("cc")):
        pytest.skip("needs OpenBLAS and a C compiler")
    built = tmp_path / "lib" / "libgemv_forward.so"
    monkeypatch.setattr(blas, "FORWARDER", built)
    assert blas.forwarder() == str(built) and built.stat().st_size > 0
    os.utime(built, (0, 0))  # older than the source
    assert blas.forwarder_problem() == "" and built.stat().st_mtime > 0
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    os.utime(built, (0, 0))
    assert "cannot build" in blas.forwarder_problem()


def test_a_compiler_that_fails_is_reported_and_not_run_again(tmp_path, monkeypatch):
    if blas.openblas() is None:
        pytest.skip("needs OpenBLAS")
    monkeypatch.setattr(blas, "FORWARDER", tmp_path / "lib" / "libgemv_forward.so")
    runs = tmp_path / "runs"
    cc = tmp_path / "broken-cc"
    cc.write_text(f"#!/bin/sh\necho run >> {runs}\necho 'cc1: internal compiler error' >&2\n"
                  "exit 1\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    problem = blas.forwarder_problem()
    assert "could not build gemv_forward.c" in problem and "internal compiler error" in problem
    assert blas.forwarder() is None and blas.forwarder_problem() == problem
    assert runs.read_text() == "run\n"  # once in this process, however often MLX starts
    env = blas.with_preload({"PATH": "/bin"})  # OpenBLAS alone, without the forwarder
    assert env["LD_PRELOAD"] == blas.openblas()


PROBE = """
import sys
from inference_node import blas

if __name__ == "__main__":
    blas.reexec_with_openblas(sys.argv[1:], module=__spec__.name)
    print(blas.preloaded(), sys.argv[1:])
"""


@pytest.mark.skipif(blas.openblas() is None, reason="no OpenBLAS here to preload")
@pytest.mark.parametrize("told_not_to", [False, True])
def test_a_module_run_alone_runs_again_with_openblas_preloaded(tmp_path, told_not_to):
    """`python -m bench.lookup` without the Makefile's LD_PRELOAD timed MLX about 5x slower and
    said nothing: a timing module re-execs itself with the preload, its arguments kept, once
    (never when told not to: the re-exec's own guard)."""
    (tmp_path / "probe_module.py").write_text(PROBE)
    env = blas.without_preload()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    env.pop("STUDIO_CODER_NO_OPENBLAS", None)
    if told_not_to:
        env["STUDIO_CODER_NO_OPENBLAS"] = "1"
    out = subprocess.run([sys.executable, "-m", "probe_module", "--quick", "x"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split("\n")[0] == f"{not told_not_to} ['--quick', 'x']"

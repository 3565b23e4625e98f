"""Sandbox benchmark: what running one command in the coder's sandbox costs, in milliseconds.

Side by side in one run, interleaved (a busy machine weighs on all alike), for `true` and for
`python -c pass`:
    subprocess       subprocess.run, nothing else (the floor)
    runner           the agent node's process runner: own session, capture thread, group kill
    sandbox          the runner inside the sandbox (bubblewrap on Linux, sandbox-exec on macOS)
    sandbox_memory   the same with the per-command memory bound this machine offers (a cgroup
                     made and removed per command where possible, else RLIMIT_DATA)
`added_ms` is each one's median minus subprocess's median.

    python -m bench.sandbox [--quick]     # prints a summary on stderr, JSON on stdout
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_node.config import SandboxSection
from agent_node.sandbox import Sandbox, runner
from agent_node.sandbox.limits import memory_bound
from bench.stats import interleave, median, smoke, summary

COMMANDS = {"true": ["true"], "python -c pass": [sys.executable, "-c", "pass"]}


def _timed(fn: Callable[[], Any]) -> Callable[[], float]:
    def go() -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000

    return go


def run(quick: bool) -> dict[str, Any]:
    repeats = 2 if smoke() else 30 if quick else 200
    bounded = Sandbox.from_config(SandboxSection())
    unbounded = Sandbox(bounded.backend, bounded.version, bounded.network, memory_bound(0),
                        bounded.hidden, bounded.executable)
    result: dict[str, Any] = {"repeats": repeats, "backend": bounded.describe()["backend"],
                              "memory_bound": bounded.memory.how, "commands": {},
                              "added_ms": {}}
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp:
        work = Path(tmp)

        def in_sandbox(box: Sandbox, argv: list[str]) -> Callable[[], Any]:
            return lambda: box.run(argv, cwd=work, writable=[work], timeout_s=60,
                                   output_limit=1000)

        for name, argv in COMMANDS.items():
            contenders = {
                "subprocess": lambda a=argv: subprocess.run(a, cwd=work, capture_output=True),
                "runner": lambda a=argv: runner.run(a, cwd=work, timeout_s=60,
                                                    output_limit=1000),
                "sandbox": in_sandbox(unbounded, argv),
                "sandbox_memory": in_sandbox(bounded, argv),
            }
            samples = interleave({k: _timed(f) for k, f in contenders.items()}, n=repeats,
                                 warmup=1 if smoke() else 3)
            result["commands"][name] = {k: summary(v, 2) for k, v in samples.items()}
            floor = median(samples["subprocess"])
            result["added_ms"][name] = {k: round(median(v) - floor, 2)
                                        for k, v in samples.items() if k != "subprocess"}
    return result


def _summary(r: dict[str, Any]) -> str:
    lines = [f"sandbox: {r['backend']}; memory bound: {r['memory_bound']} "
             f"({r['repeats']} interleaved repeats)"]
    for name, rows in r["commands"].items():
        for key, s in rows.items():
            added = r["added_ms"][name].get(key)
            more = "" if added is None else f"  (+{added:.1f} ms)"
            lines.append(f"  {name:<16} {key:<15} median {s['median']:7.1f} ms  "
                         f"(p25 {s['p25']:.1f}, p75 {s['p75']:.1f}){more}")
    return "\n".join(lines)


if __name__ == "__main__":
    res = run("--quick" in sys.argv)
    print(_summary(res), file=sys.stderr)
    print(json.dumps(res, indent=2))

"""Rank 0's end of the group: sends the ops, watches every collective, notices a lost rank.

A collective on a group with a dead rank fails at once (the ring backend reports the closed
connection); one with a hung rank, or a cut cable, blocks forever. So no failure is left to a
collective alone:

- every collective rank 0 runs is inside `guard(what, timeout)`, and a watchdog thread fails
  the group when one runs past its timeout (`step_timeout_s`, `load_timeout_s` for a load);
- an idle group runs a heartbeat (a ping and a gather of each host's memory readings) every
  `heartbeat_s`, so a rank lost between requests is noticed within seconds too; after it the
  other ranks park on their wake-up lines (doorbell.py), rung before the next message;
- ranks on this machine are also checked by process id, which names the one that died.

On failure every hook runs once with a sentence that names the host(s): the engine fails
every stream with UNAVAILABLE, the server turns health to NOT_SERVING, and the status file
tells the supervisor, which relaunches the group.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from inference_node.config import DistributedConfig
from inference_node.distributed.cluster import Cluster
from inference_node.distributed.control import Channel, RankLost, memory_readings
from inference_node.distributed.doorbell import Bell
from inference_node.errors import Unavailable

log = logging.getLogger("inference_node.distributed.leader")
WATCH_INTERVAL_S = 0.2


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by mlx.launch) is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


class Leader:
    def __init__(self, channel: Channel, cluster: Cluster, peers: list[dict[str, Any]],
                 cfg: DistributedConfig, available: Callable[[], int],
                 bell: Bell | None = None) -> None:
        self.channel = channel
        self.group = channel.group
        self.cluster = cluster
        self.peers = peers  # per rank: hostname, pid, ... (from the startup gather)
        self.step_timeout_s = cfg.step_timeout_s
        self.load_timeout_s = cfg.load_timeout_s
        self.heartbeat_s = cfg.heartbeat_s
        self.available = available
        self.bell = bell  # the followers' wake-up lines (doorbell.py); None: they never park
        self.parked = False
        self.pending: list[list[Any]] = []
        self.failed = ""
        self._op: tuple[str, float, float] | None = None
        self._last_done = time.monotonic()
        self._hooks: list[Callable[[str], None]] = []
        self._readings_hooks: list[Callable[[list[list[int]]], None]] = []
        self._lock = threading.Lock()
        self.handled = threading.Event()  # every failure hook has run
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._me = socket.gethostname()

    # ------------------------------------------------------------ hooks

    def on_failure(self, hook: Callable[[str], None]) -> None:
        self._hooks.append(hook)

    def on_readings(self, hook: Callable[[list[list[int]]], None]) -> None:
        self._readings_hooks.append(hook)

    # ------------------------------------------------------------ ops (engine thread)

    def queue(self, op: list[Any]) -> None:
        self.pending.append(op)

    def send(self, message: dict[str, Any]) -> None:
        """Broadcast `message` with the queued ops; call inside `guard`."""
        message["ops"], self.pending = self.pending, []
        if self.parked and self.bell is not None:  # they wait on their lines, not the ring
            self.bell.ring()
            self.parked = False
        self.channel.broadcast(message)

    @contextmanager
    def guard(self, what: str, timeout_s: float) -> Iterator[None]:
        """Run collectives for `what`: past `timeout_s`, or on any error, the group fails."""
        if self.failed:
            raise Unavailable(self.failed)
        self._op = (what, time.monotonic(), timeout_s)
        try:
            yield
        except Exception as e:
            self.fail(self._loss(what, e))
            raise Unavailable(self.failed) from e
        finally:
            self._op = None
            self._last_done = time.monotonic()

    def ping(self) -> None:
        """The heartbeat: every rank answers with its memory readings."""
        park = self.bell is not None  # the group is idle: after the ping, the others sleep
        with self.guard("a heartbeat", self.step_timeout_s):
            self.send({"op": "ping", "park": park})
            readings = self.channel.gather(memory_readings(self.available))
            self.parked = park
        for hook in self._readings_hooks:
            hook(readings)

    def stop_followers(self) -> None:
        """A clean shutdown: tell every rank to exit 0."""
        if self.failed:
            return
        try:
            with self.guard("shutting down", self.step_timeout_s):
                self.send({"op": "stop"})
        except Unavailable:
            pass

    # ------------------------------------------------------------ who failed

    def label(self, rank: int) -> str:
        return self.cluster.label(rank)

    def followers(self) -> list[int]:
        return list(range(1, self.cluster.size))

    def dead_local_ranks(self) -> list[int]:
        return [r for r in self.followers()
                if self.peers[r].get("hostname") == self._me
                and not alive(int(self.peers[r].get("pid", 0)))]

    def suspects(self) -> str:
        dead = self.dead_local_ranks()
        if dead:
            return " and ".join(self.label(r) for r in dead)
        labels = [self.label(r) for r in self.followers()]
        return labels[0] if len(labels) == 1 else "one of " + ", ".join(labels)

    def _loss(self, what: str, error: Exception) -> str:
        after = ("; every model here is split across the ranks, so nothing runs until they "
                 "are all back (serve relaunches them, or restart inference-node serve)")
        lost = isinstance(error, RankLost) or any(
            tag in str(error) for tag in ("[ring]", "[jaccl]", "[mpi]", "peer"))
        if lost:
            return f"{self.suspects()} left the group during {what} ({error}){after}"
        return (f"rank 0 failed during {what} and the ranks are out of step "
                f"({type(error).__name__}: {error}){after}")

    def fail(self, reason: str) -> None:
        with self._lock:
            if self.failed:
                return
            self.failed = reason
        log.error("distributed group failed: %s", reason)
        for hook in self._hooks:
            try:
                hook(reason)
            except Exception:  # every hook runs
                log.exception("a failure hook failed")
        self.handled.set()

    # ------------------------------------------------------------ threads

    def start(self, call: Callable[[Callable[[], None]], Any]) -> None:
        """Start the watchdog, and the heartbeat, which runs `ping` through `call` (the
        engine's: collectives run on the one thread that owns MLX)."""
        self._threads = [
            threading.Thread(target=self._watch, name="ranks-watchdog", daemon=True),
            threading.Thread(target=self._beat, args=(call,), name="ranks-heartbeat",
                             daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S) and not self.failed:
            op = self._op
            if op is not None and time.monotonic() - op[1] > op[2]:
                self.fail(f"{self.suspects()} did not answer within {op[2]:.0f} s during "
                          f"{op[0]}: hung, or its link is down (distributed.step_timeout_s "
                          "sets how long a step may take)")
                return
            dead = self.dead_local_ranks()
            if dead:
                self.fail(" and ".join(self.label(r) for r in dead) + " exited; every model "
                          "here is split across the ranks, so nothing runs until they are all "
                          "back (serve relaunches them, or restart inference-node serve)")
                return

    def _beat(self, call: Callable[[Callable[[], None]], Any]) -> None:
        while not self._stop.wait(self.heartbeat_s / 2) and not self.failed:
            if self._op is None and time.monotonic() - self._last_done >= self.heartbeat_s:
                try:
                    call(self.ping)
                except Unavailable:
                    return
                except Exception:  # the watchdog decides what a failure is
                    log.exception("heartbeat")

"""A wake-up line from rank 0 to every other rank, so an idle group sleeps.

A rank other than 0 waits for rank 0's next message inside an MLX collective, and MLX's ring
backend polls its non-blocking sockets while it waits (`SocketThread::worker` in ring.cpp): an
idle follower kept a core busy for as long as the node was up. So after each heartbeat (sent
only when the group is idle) the followers park: each blocks on a plain TCP connection to rank
0 instead of a collective, and rank 0 writes one byte to each before its next message.

    Bell(ip, followers)       rank 0: listens on `ip` (its ring address), port chosen here
    bell.accept(timeout_s)    takes each follower's connection; False if one never came
    bell.ring()               wakes every parked follower; a closed line is RankLost
    Line(ip, port, rank)      a follower's end; `wait()` blocks until rung (EOF: RankLost)

The line carries no message, only the wake-up; the messages stay collectives (control.py). A
group whose lines are not all up (a firewall between hosts) is never told to park: it spins
while idle, as it did, and serves the same.
"""

from __future__ import annotations

import logging
import socket
import time

from inference_node.distributed.control import RankLost

log = logging.getLogger("inference_node.distributed.doorbell")
RANK_BYTES = 4


class Bell:
    def __init__(self, ip: str, followers: list[int]) -> None:
        self.followers = followers
        self.server = socket.create_server((ip, 0), backlog=max(1, len(followers)))
        self.port = int(self.server.getsockname()[1])
        self.lines: dict[int, socket.socket] = {}

    def accept(self, timeout_s: float) -> bool:
        """Take every follower's line, for up to `timeout_s`; whether all came."""
        deadline = time.monotonic() + timeout_s
        while set(self.lines) != set(self.followers):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.server.settimeout(left)
            try:
                conn, _ = self.server.accept()
                conn.settimeout(left)
                rank = int.from_bytes(_read_exactly(conn, RANK_BYTES), "little")
            except (OSError, RankLost) as e:
                log.warning("a follower's wake-up line did not come up: %s", e)
                continue
            if rank not in self.followers or rank in self.lines:
                log.warning("a wake-up line said it was rank %d; not a rank waited for", rank)
                conn.close()
                continue
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.lines[rank] = conn
        self.server.close()
        missing = sorted(set(self.followers) - set(self.lines))
        if missing:
            log.warning("no wake-up line from rank(s) %s: the group will not park when idle "
                        "(its followers keep polling)", missing)
        return not missing

    def ring(self) -> None:
        for rank, conn in self.lines.items():
            try:
                conn.sendall(b"\1")
            except OSError as e:
                raise RankLost(f"rank {rank}'s wake-up line is closed ({e})") from e

    def close(self) -> None:
        for conn in self.lines.values():
            conn.close()


class Line:
    def __init__(self, ip: str, port: int, rank: int, timeout_s: float) -> None:
        self.conn = socket.create_connection((ip, port), timeout=timeout_s)
        self.conn.sendall(rank.to_bytes(RANK_BYTES, "little"))
        self.conn.settimeout(None)

    def wait(self) -> None:
        """Block until rank 0 rings; rank 0 gone (the line closed) is RankLost."""
        try:
            got = self.conn.recv(1)
        except OSError as e:
            raise RankLost(f"rank 0's wake-up line failed ({e})") from e
        if not got:
            raise RankLost("rank 0 closed its wake-up line")


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise RankLost("the line closed before it said its rank")
        data += chunk
    return data

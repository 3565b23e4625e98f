"""The idle group's wake-up lines (inference_node/distributed/doorbell.py), on loopback."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from inference_node.distributed.control import RankLost
from inference_node.distributed.doorbell import Bell, Line


def one_line() -> tuple[Bell, Line]:
    """Rank 0's bell with rank 1's line taken."""
    bell = Bell("127.0.0.1", [1])
    line = Line("127.0.0.1", bell.port, 1, 5.0)
    assert bell.accept(5.0)
    return bell, line


def test_every_follower_parked_on_its_line_wakes_when_rank_0_rings() -> None:
    bell = Bell("127.0.0.1", [1, 2])
    lines = [Line("127.0.0.1", bell.port, r, 5.0) for r in (1, 2)]
    assert bell.accept(5.0)
    woke: list[int] = []

    def park(rank: int, line: Line) -> None:
        line.wait()
        woke.append(rank)

    threads = [threading.Thread(target=park, args=(r, line))
               for r, line in zip((1, 2), lines, strict=True)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    assert woke == []  # parked until rung
    bell.ring()
    for t in threads:
        t.join(5)
    assert sorted(woke) == [1, 2]
    bell.close()


def test_a_ring_before_the_follower_parks_is_kept_for_it() -> None:
    bell, line = one_line()
    bell.ring()
    line.wait()  # returns at once: the byte waited in the socket
    bell.close()


def test_a_stranger_claiming_a_rank_is_dropped_and_a_missing_rank_means_no_parking() -> None:
    bell = Bell("127.0.0.1", [1, 2])
    stranger = socket.create_connection(("127.0.0.1", bell.port))
    stranger.sendall((7).to_bytes(4, "little"))
    Line("127.0.0.1", bell.port, 1, 5.0)
    t0 = time.monotonic()
    assert not bell.accept(1.0)  # rank 2 never came
    assert set(bell.lines) == {1} and time.monotonic() - t0 < 5
    bell.close()
    stranger.close()


def test_rank_0_gone_wakes_a_parked_follower_with_rank_lost() -> None:
    bell, line = one_line()
    bell.close()
    with pytest.raises(RankLost, match="closed its wake-up line"):
        line.wait()


def test_ringing_a_follower_that_is_gone_is_rank_lost_naming_it() -> None:
    bell, line = one_line()
    line.conn.close()
    with pytest.raises(RankLost, match="rank 1's wake-up line is closed"):
        for _ in range(50):  # the first write after the peer closed can still be accepted
            bell.ring()
            time.sleep(0.05)

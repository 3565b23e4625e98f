"""The blocking client on an asyncio event loop: a stream read by a thread of its own.

    events = AsyncStream(lambda: coder.stream_request(req, cancel), cancel.cancel)
    first = await events.next()      # the mapped InferenceError is raised here
    async for ev in events: ...
    events.close()                   # cancels the call (from the event loop's thread)

gRPC's blocking iterator cannot be closed from another thread while it waits for the next
message, so closing cancels the call through the `cancel` callable (a
`client.Cancellation`), and the thread then sees the call end and stops.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()


class AsyncStream(Generic[T], AsyncIterator[T]):
    """Items of `produce()` (run on a daemon thread), awaited one by one on the running loop."""

    def __init__(self, produce: Callable[[], Iterator[T]], cancel: Callable[[], None],
                 name: str = "async-stream") -> None:
        self._produce = produce
        self._cancel = cancel
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._finished = False
        threading.Thread(target=self._pump, name=name, daemon=True).start()

    def _put(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop has closed: nobody will read this stream
            self._cancel()

    def _pump(self) -> None:
        try:
            for item in self._produce():
                self._put(item)
        except BaseException as e:  # noqa: BLE001 - handed to the reader, which raises it
            self._put(e)
        finally:
            self._put(_END)

    async def next(self) -> T | None:
        """The next item; None at the end; raises what the producer raised."""
        if self._finished:
            return None
        item = await self._queue.get()
        if item is _END:
            self._finished = True
            return None
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        return item  # type: ignore[return-value]

    def __aiter__(self) -> AsyncStream[T]:
        return self

    async def __anext__(self) -> T:
        item = await self.next()
        if item is None:
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """Cancel the producer's call; safe to call more than once, and after the end."""
        self._cancel()

"""Batching of SQS calls inside the worker.

Every SQS call costs client CPU (signing, parsing) and, on AWS, money. The
worker therefore gathers deletes, response sends and visibility extensions
into batch calls of up to 10 entries. A batch is sent as soon as it is full,
or ``max_delay`` seconds after its first entry, so a lone message waits a few
milliseconds at most. Each entry's caller waits for its own outcome: entries
that SQS refused are retried on their own, and an entry that still fails
raises in its caller, so nothing is lost or doubled silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

from ._errors import TransportError

__all__ = ["Batcher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Sends one batch; returns the failed entries' indexes, each with its error.
FlushFunc = Callable[[Sequence[T]], Awaitable[Mapping[int, Exception]]]


class Batcher(Generic[T]):
    """Gathers entries into batch calls; see the module documentation.

    Args:
        flush: Sends a batch and returns the failed entries' indexes, each
            mapped to its error.
        name: What the batches are, for logs.
        max_size: Entries per call. Defaults to 10 (SQS's limit).
        max_delay: Seconds the first entry waits for company. Defaults to 0.02.
        retries: Extra tries for a failed entry. Defaults to 2.
        final: Error types that no retry can cure (an expired receipt handle,
            say); an entry failing with one is failed at once.
    """

    def __init__(
        self,
        flush: FlushFunc[T],
        name: str,
        max_size: int = 10,
        max_delay: float = 0.02,
        retries: int = 2,
        final: tuple[type[Exception], ...] = (),
    ) -> None:
        self._flush = flush
        self.name = name
        self.max_size = max_size
        self.max_delay = max_delay
        self.retries = retries
        self.final = final
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def put(self, entry: T) -> None:
        """Add an entry and wait until it is sent.

        Raises:
            TransportError: The entry failed in every try.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, future))
        if len(self._pending) >= self.max_size:
            self._send_now()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.max_delay, self._send_now)
        await future

    def _send_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch = self._pending[: self.max_size]
            del self._pending[: self.max_size]
            task = asyncio.ensure_future(self._send(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _send(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        for attempt in range(self.retries + 1):
            failed = await self._try(batch)
            batch = [item for index, item in enumerate(batch) if index in failed]
            errors = [failed[index] for index in sorted(failed)]
            if not batch:
                return
            if attempt < self.retries:
                await asyncio.sleep(0.05 * 2**attempt)
        logger.warning("%s: %d entries failed after retries", self.name, len(batch))
        for (_, future), error in zip(batch, errors, strict=True):
            if not future.done():
                future.set_exception(error)

    async def _try(
        self, batch: list[tuple[T, asyncio.Future[None]]]
    ) -> dict[int, Exception]:
        """Send a batch once; settle what succeeded or failed for good.

        Returns:
            The entries to try again, by index, each with its last error.
        """
        try:
            failed = dict(await self._flush([entry for entry, _ in batch]))
        except TransportError as exc:
            failed = dict.fromkeys(range(len(batch)), exc)

        retry = {}
        for index, (_, future) in enumerate(batch):
            error = failed.get(index)
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            elif isinstance(error, self.final):
                future.set_exception(error)
            else:
                retry[index] = error
        return retry

    async def drain(self) -> None:
        """Send whatever is pending and wait for every batch in flight."""
        self._send_now()
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

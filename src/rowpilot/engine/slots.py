"""``Slots``: the counting semaphore that bounds the window and the workers.

Its own module because the scheduler and ``ctx.map`` (in ``_steps``) both hold its slots,
and neither should import the other for it.
"""

from __future__ import annotations

import asyncio
import collections

__all__ = ["Slots"]


class Slots:
    """A FIFO counting semaphore whose release is O(1).

    ``asyncio.Semaphore.release`` (3.11) walks its waiters past the ones already woken:
    with thousands of items waiting, as batched tasks make them, that walk was most of a
    run's time. Here a release hands its slot to the first waiter still waiting, or keeps it.
    """

    def __init__(self, value: int) -> None:
        self.capacity = value
        self._free = value  # below zero after a shrink: releases repay it before anyone wakes
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def resize(self, capacity: int) -> None:
        """Growing wakes waiters at once; shrinking takes effect as held slots come back."""
        grown = capacity - self.capacity
        self.capacity = capacity
        if grown < 0:
            self._free += grown
        for _ in range(grown):
            self.release()

    @property
    def ready(self) -> bool:
        """An acquire now would not wait."""
        return self._free > 0 and not self._waiters

    def take(self) -> None:
        """Acquire a slot that is ``ready``, without the coroutine (the admission hot path)."""
        assert self.ready
        self._free -= 1

    def take_up_to(self, count: int) -> int:
        """Acquire up to ``count`` slots that are free now, none if anyone waits (FIFO);
        how many were taken. A grouped task's admission takes a group's slots at once."""
        if self._waiters or self._free <= 0:
            return 0
        taken = min(count, self._free)
        self._free -= taken
        return taken

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived with the cancellation: pass it on
            raise

    def release(self) -> None:
        if self._free < 0:
            self._free += 1
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    def release_many(self, count: int) -> None:
        """``release`` ``count`` times, in one call (a committed batch's slots)."""
        if self._free < 0:
            repaid = min(count, -self._free)
            self._free += repaid
            count -= repaid
        while count and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1
        self._free += count

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

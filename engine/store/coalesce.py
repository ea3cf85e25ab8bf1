"""Calls that arrive while a round trip is under way go together in the next
one (the scheduler's send marks, acks and outcomes; push sends' device reads)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Coalesced:
    """`write(items) -> results` runs for a group of calls, each caller gets its
    own result (or the group's error). Under load a few round trips serve
    hundreds of callers; a caller alone costs one round trip, as before."""

    def __init__(self, write: Callable[[list], Awaitable[list]]):
        self._write = write
        self._pending: list = []
        self._next: asyncio.Future | None = None  # the write that will carry what is pending
        self._writer: asyncio.Task | None = None

    async def __call__(self, item):
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        index, group = len(self._pending), self._next
        self._pending.append(item)
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        return (await group)[index]

    async def _drain(self) -> None:
        try:
            while self._next is not None:
                items, done = self._pending, self._next
                self._pending, self._next = [], None
                try:
                    done.set_result(await self._write(items))
                except Exception as exc:  # noqa: BLE001 - handed to every caller of this group
                    done.set_exception(exc)
        finally:
            self._writer = None

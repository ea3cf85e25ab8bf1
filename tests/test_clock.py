"""The engine's background tasks stop when asked, even when a cancellation is lost."""

import asyncio

from engine.clock import in_background


async def test_a_background_task_that_loses_a_cancellation_is_cancelled_again():
    """What hung `attimo demo` at Ctrl-C now and then: a loop whose
    cancellation was swallowed (as a Redis client's timeout wrapper can when a
    read completes at that moment) ran on, and the shutdown waited for ever."""
    swallowed = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if not swallowed:  # the first cancellation is lost, as in the race
                    swallowed.append(1)
                    continue
                raise

    async def block() -> asyncio.Task:
        async with in_background(stubborn()) as task:
            await asyncio.sleep(0.05)
        return task

    started = asyncio.get_running_loop().time()
    task = await asyncio.wait_for(block(), 10)  # before: waited until something else cancelled the wait
    assert task.done() and swallowed == [1]
    assert asyncio.get_running_loop().time() - started < 3  # cancelled again after a second

"""The supervisor: every long-lived task of the daemon is started by name through it, and the
unexpected end of any one of them (an exception, a return, a cancel nobody asked for) is fatal."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from .logs import get_logger

log = get_logger(__name__)


class Supervisor:
    """Starts named background tasks and reports the first one that dies unexpectedly.

    A task's owner ends it with `stop` (or `release`s it before ending it itself): only then is
    its end expected. Any other end resolves `died` with the task's name, which the daemon turns
    into a non-zero exit (systemd restarts it: a silent, half-working daemon is worse).
    """

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[Any], str] = {}
        self._died: asyncio.Future[str] | None = None

    @property
    def died(self) -> asyncio.Future[str]:
        """Resolves with the name of the first task that ended unexpectedly."""
        if self._died is None:
            self._died = asyncio.get_running_loop().create_future()
        return self._died

    @property
    def names(self) -> list[str]:
        """The names of the tasks watched now."""
        return sorted(self._tasks.values())

    def start(self, name: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` as a task called `name`, watched until it is released or stopped."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks[task] = name
        task.add_done_callback(self._done)
        return task

    def release(self, *tasks: asyncio.Task[Any]) -> None:
        """From now on these tasks may end: their owner is stopping them."""
        for task in tasks:
            self._tasks.pop(task, None)

    async def stop(self, *tasks: asyncio.Task[Any]) -> None:
        """Cancel these tasks as expected and wait for them to end."""
        self.release(*tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        name = self._tasks.pop(task, None)
        if name is None:
            return
        if task.cancelled():
            error = "cancelled"
        elif (exc := task.exception()) is not None:
            error = repr(exc)
        else:
            error = "returned"
        log.error("background_task_died", task=name, error=error)
        if not self.died.done():
            self.died.set_result(name)


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:  # noqa: ASYNC109
    """Wait for `event` at most `timeout` seconds (None: no limit); True when it was set.

    asyncio.timeout, not asyncio.wait_for: on Python 3.11 wait_for swallows a cancel that lands
    just as the event is set, and the cancelled task runs on (a stopped loop keeps looping).
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True

"""A gate per queue kind: claiming of that kind pauses while it is closed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Gate:
    """An on/off switch for claiming one kind (e.g. closed while the upstream token is expired)."""

    def __init__(self, is_open: bool = True) -> None:
        self._event = asyncio.Event()
        self._subscribers: list[Callable[[], None]] = []
        if is_open:
            self._event.set()

    def is_open(self) -> bool:
        """True when work of this kind may be claimed."""
        return self._event.is_set()

    def open(self) -> None:
        """Allow claiming again and wake the pools waiting on this gate."""
        self._event.set()
        for wake in self._subscribers:
            wake()

    def close(self) -> None:
        """Stop claiming; rows already running are not touched."""
        self._event.clear()

    async def wait(self) -> None:
        """Return once the gate is open."""
        await self._event.wait()

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call wake() whenever the gate opens."""
        self._subscribers.append(wake)

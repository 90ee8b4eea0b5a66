"""A subscriber's bounded event queue, shared by the publisher's thread and the server's loop."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence


class Subscriber:
    """One connection's event queue; offer() runs on the publisher's thread, take() on the loop."""

    def __init__(self, events: Sequence[str], maxlen: int) -> None:
        self.events = frozenset(events)
        self.maxlen = maxlen
        self.queue: deque[bytes] = deque()
        self.dropped = 0
        self.lock = threading.Lock()
        self.wake_pending = False
        self.wake = asyncio.Event()
        self.pump: asyncio.Task[None] | None = None

    def offer(self, name: str, line: bytes) -> bool:
        """Queue ``line``; True when the loop must be woken (once until the queue empties)."""
        if name not in self.events:
            return False
        with self.lock:
            if len(self.queue) >= self.maxlen:
                self.queue.popleft()
                self.dropped += 1
            self.queue.append(line)
            if self.wake_pending:
                return False
            self.wake_pending = True
            return True

    def take(self, budget: int) -> tuple[list[bytes], int]:
        """Queued lines up to about ``budget`` bytes, and how many were dropped before them."""
        lines: list[bytes] = []
        size = 0
        with self.lock:
            dropped, self.dropped = self.dropped, 0
            while self.queue and size < budget:
                line = self.queue.popleft()
                lines.append(line)
                size += len(line)
            if not lines:
                self.wake_pending = False
            return lines, dropped


def wake_all(subscribers: list[Subscriber]) -> None:
    for sub in subscribers:
        sub.wake.set()

"""Running a piece of code in another network namespace (the one a socket belongs to).

Stdlib only: the ARP watchdog imports it and must start fast.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

NETNS_SELF = "/proc/thread-self/ns/net"


def own_netns_fd() -> int:
    """A descriptor for the calling thread's network namespace (close it when done)."""
    return os.open(NETNS_SELF, os.O_RDONLY | os.O_CLOEXEC)


def in_netns[T](netns_fd: int | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in the network namespace ``netns_fd`` (a helper thread when it differs).

    ``None`` means the calling thread's own namespace.
    """
    if netns_fd is None or os.fstat(netns_fd).st_ino == os.stat(NETNS_SELF).st_ino:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        # setns() changes only this thread, which ends here: the caller's stays as it was.
        try:
            os.setns(netns_fd, os.CLONE_NEWNET)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=run, name="spyglass-netns")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]

"""What the namespace labs (lan.py's HomeLan, flatlan.py's FlatLan) share: checking that a lab can
be built here, the ``ip`` command, sweeping namespaces left by dead runs, and running commands and
Python inside a namespace.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self


class LabUnavailable(RuntimeError):
    """Namespaces cannot be built here (not root, no iproute2, no netns support)."""


def lab_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the namespace lab needs root (ip netns)"
    if shutil.which("ip") is None:
        return "the namespace lab needs iproute2's 'ip' command"
    if not hasattr(os, "setns"):
        return "the namespace lab needs os.setns (Linux, Python >= 3.12)"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise LabUnavailable(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def list_namespaces() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_namespace(name: str) -> None:
    # Delete the links first: a socket or fd still holding the namespace would keep it, and its
    # veths, alive after the name is gone.
    out = ip("-n", name, "-o", "link", "show", check=False).stdout
    for line in out.splitlines():
        ifname = line.split(":")[1].strip().split("@")[0]
        if ifname != "lo":
            ip("-n", name, "link", "del", ifname, check=False)
    ip("netns", "del", name, check=False)


def sweep_dead(name_re: re.Pattern[str], pid_group: int) -> list[str]:
    """Delete the namespaces ``name_re`` matches whose creating process (the pid in group
    ``pid_group``) is gone; returns their names."""
    swept = []
    for name in list_namespaces():
        m = name_re.match(name)
        if m and not pid_alive(int(m.group(pid_group))):
            delete_namespace(name)
            swept.append(name)
    return swept


class NamespaceLab:
    """Namespaces a subclass builds in ``_build()`` and tears down in ``close()``. A context
    manager: entering sweeps dead runs' leftovers first, and a failed build is closed at once."""

    namespaces: tuple[str, ...] = ()
    _counter: itertools.count[int] = itertools.count()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._counter = itertools.count()  # each kind of lab numbers its own

    def __init__(self) -> None:
        # The pid (so a later run can tell the lab's owner is dead), then a count in this
        # process; subclasses name their namespaces after it.
        n = next(self._counter)
        self.id = f"{os.getpid()}" + (f"-{n}" if n else "")
        self._procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Self:
        reason = lab_unavailable_reason()
        if reason:
            raise LabUnavailable(reason)
        self._sweep_leftovers()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sweep_leftovers(self) -> None:
        raise NotImplementedError

    def _build(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _delete_namespaces(self) -> None:
        present = set(list_namespaces())
        for ns in self.namespaces:
            if ns in present:
                delete_namespace(ns)

    # -- running things inside ---------------------------------------------------------------

    def run(
        self, ns: str, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside ``ns`` and wait for it."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            capture_output=True, text=True, timeout=timeout, check=check,
        )  # fmt: skip

    def popen(self, ns: str, *cmd: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside ``ns``; it is stopped when the lab closes."""
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kwargs)
        self._procs.append(proc)
        return proc

    def call[T](self, ns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in a thread that joined ``ns``. Sockets it creates stay in ``ns``."""
        result: list[T] = []
        error: list[BaseException] = []

        def run() -> None:
            try:
                fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.setns(fd, os.CLONE_NEWNET)
                finally:
                    os.close(fd)
                result.append(fn(*args, **kwargs))
            except BaseException as exc:
                error.append(exc)

        t = threading.Thread(target=run, name=f"netns-{ns}")
        t.start()
        t.join()
        if error:
            raise error[0]
        return result[0]


@contextmanager
def lab_or_skip[L: NamespaceLab](make: Callable[[], L], what: str) -> Iterator[L]:
    """The lab ``make()`` builds, or pytest.skip with the reason when this machine cannot."""
    import pytest

    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = make()
    try:
        lab.__enter__()
    except LabUnavailable as exc:
        pytest.skip(f"cannot build the {what}: {exc}")
    try:
        yield lab
    finally:
        lab.close()

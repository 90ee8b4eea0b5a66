"""Blocking API client for the CLI and for a Qt app's worker thread.

Requests on one client are serialised by a lock, so one :class:`AgentClient` may be shared
between threads; each :meth:`AgentClient.subscribe` opens its own connection, which a GUI reads
on a worker thread and closes from any thread with :meth:`Subscription.close`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from spyglass.api import convert
from spyglass.api import protocol as p
from spyglass.core.models import Device

DEFAULT_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # a client protects itself from a runaway line too

_HINT = "is the agent running (`sudo spyglass agent`)? For a remote one see docs/remote-agent.md"


class AgentError(Exception):
    """The agent refused or failed a request; ``code`` is the protocol's error code."""

    def __init__(self, message: str, code: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.path = path


class AgentUnavailable(AgentError):
    """No agent answers at the socket path (not running, stale socket, no permission)."""


class AgentTimeout(AgentError, TimeoutError):
    """The agent did not answer in time."""


def _connect(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise AgentUnavailable(
            f"no Spyglass agent at {path}: the socket does not exist; {_HINT}", path=path
        ) from None
    except ConnectionRefusedError:
        sock.close()
        raise AgentUnavailable(
            f"no Spyglass agent listens at {path} (the socket is left from a stopped agent); "
            f"{_HINT}",
            path=path,
        ) from None
    except PermissionError:
        sock.close()
        raise AgentUnavailable(
            f"not allowed to connect to the Spyglass agent at {path}: permission denied "
            "(add your user to the 'spyglass' group and log in again)",
            path=path,
        ) from None
    except TimeoutError:
        sock.close()
        raise AgentUnavailable(
            f"the Spyglass agent at {path} did not accept the connection within {timeout} s",
            path=path,
        ) from None
    except OSError as exc:
        sock.close()
        raise AgentUnavailable(
            f"cannot reach the Spyglass agent at {path}: {exc.strerror or exc}", path=path
        ) from None
    return sock


class _Lines:
    """Whole lines from a connected socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def read(self) -> bytes | None:
        """The next line without its newline; None at end of stream."""
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                return line
            if len(self.buf) > MAX_RESPONSE_BYTES:
                raise ValueError(f"a reply line longer than {MAX_RESPONSE_BYTES} bytes")
            chunk = self.sock.recv(256 * 1024)
            if not chunk:
                return None
            self.buf += chunk


def _raise_for(msg: dict[str, Any], path: str) -> None:
    err = msg.get("error")
    code = err.get("code") if isinstance(err, dict) else None
    text = err.get("message") if isinstance(err, dict) else None
    raise AgentError(
        f"agent at {path}: {text or 'request failed'} ({code or 'no error code'})",
        code=code if isinstance(code, str) else None,
        path=path,
    )


class AgentClient:
    """Talks to the agent at ``path`` (default: $SPYGLASS_SOCKET or /run/spyglass/agent.sock)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = os.fspath(path) if path is not None else p.default_socket_path()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._lines: _Lines | None = None

    # -- the API -----------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """``{"server", "version", "protocol", "ops", "events"}``; checks the protocol matches."""
        result = self._dict(self.request("hello"))
        spoken = result.get("protocol")
        if not isinstance(spoken, list) or p.PROTOCOL_VERSION not in spoken:
            raise AgentError(
                f"agent at {self.path} speaks protocol {spoken}, this client speaks "
                f"{p.PROTOCOL_VERSION}: upgrade the older of the two",
                code=p.UNSUPPORTED_VERSION,
                path=self.path,
            )
        return result

    def status(self) -> dict[str, Any]:
        """Mode, interface, capture rate, kernel drops (as the agent reports them)."""
        return self._dict(self.request("status"))

    def devices(self) -> list[Device]:
        return [convert.device_from_dict(d) for d in self._list(self.request("devices"))]

    def uploads(
        self, device: str | None = None, since: float | None = None, until: float | None = None
    ) -> list[convert.WireUpload]:
        """Uploads starting in [since, until), oldest first; ``device`` is a MAC."""
        params = _without_none(device=device, since=since, until=until)
        return [convert.upload_from_dict(u) for u in self._list(self.request("uploads", **params))]

    def series(
        self, device: str | None, since: float, until: float, resolution_s: int = 1
    ) -> dict[str, Any]:
        """``{"resolution_s": actual, "points": [{"t", "up", "down"}, ...]}``.

        The agent raises the resolution so a long range answers with at most ~2000 points.
        """
        params = _without_none(device=device, since=since, until=until, resolution_s=resolution_s)
        return self._dict(self.request("series", **params))

    def watch(self, device: str, on: bool = True) -> dict[str, Any]:
        """Capture this device's full traffic too (``on=False``: stop); the agent remembers."""
        return self._dict(self.request("watch", device=device, on=on))

    def intercept(self, device: str, on: bool = True) -> dict[str, Any]:
        """ARP-intercept this device (an IPv4 address) too; ``on=False``: stop, and restore its
        true ARP entries at once. The agent remembers the choice; intercept mode only.

        ``{"device": ip, "intercepting": [the IPs intercepted now, sorted]}``. Choosing a device
        takes about a second (its MAC is learned first); give the client a timeout to match.
        """
        return self._dict(self.request("intercept", device=device, on=on))

    def verdict(self, upload_id: int, verdict: str | None) -> dict[str, Any]:
        """Mark an upload "me" (that was me), "nobody" (nobody spoke) or None (undecided)."""
        return self._dict(self.request("verdict", upload=upload_id, verdict=verdict))

    def sweep(self) -> dict[str, Any]:
        """ARP-sweep the agent's LAN now: ``{"found": n, "devices": {ip: mac}}``."""
        return self._dict(self.request("sweep"))

    def subscribe(
        self, events: list[str] | None = None, *, timeout: float | None = None
    ) -> Subscription:
        """Live events on a connection of their own; iterate it, close it when done.

        ``timeout`` bounds the wait between events (None: wait forever).
        """
        return Subscription(self.path, events, connect_timeout=self.timeout, timeout=timeout)

    # -- plumbing ----------------------------------------------------------------------------

    def request(self, op: str, **params: Any) -> Any:
        """Send one request and return its ``result``; raises :class:`AgentError`."""
        with self._lock:
            fresh = self._sock is None
            try:
                return self._exchange(op, params)
            except _Gone as gone:
                self._disconnect()
                if fresh:
                    raise AgentUnavailable(
                        f"the Spyglass agent at {self.path} closed the connection ({gone})",
                        path=self.path,
                    ) from None
            # An agent restarted since our last request: one new connection, one retry.
            try:
                return self._exchange(op, params)
            except _Gone as gone:
                self._disconnect()
                raise AgentUnavailable(
                    f"the Spyglass agent at {self.path} closed the connection ({gone})",
                    path=self.path,
                ) from None

    def _exchange(self, op: str, params: dict[str, Any]) -> Any:
        if self._sock is None:
            self._sock = _connect(self.path, self.timeout)
            self._lines = _Lines(self._sock)
        assert self._lines is not None
        rid = next(self._ids)
        try:
            self._sock.sendall(p.encode(p.request(rid, op, **params)))
            while True:
                line = self._lines.read()
                if line is None:
                    raise _Gone("end of stream")
                msg = self._decode(line)
                if "event" in msg:
                    continue
                if msg.get("id") == rid:
                    if msg.get("ok") is True:
                        return msg.get("result")
                    _raise_for(msg, self.path)
                if msg.get("id") is None and msg.get("ok") is False:
                    # Refused before our request was read (forbidden, too many clients).
                    self._disconnect()
                    _raise_for(msg, self.path)
        except TimeoutError:
            self._disconnect()  # a late reply would be taken for the next request's
            raise AgentTimeout(
                f"the Spyglass agent at {self.path} did not answer {op!r} within "
                f"{self.timeout} s",
                path=self.path,
            ) from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            refusal = self._refusal_left()
            self._disconnect()
            if refusal is not None:
                _raise_for(refusal, self.path)
            raise _Gone(exc.strerror or str(exc)) from None

    def _refusal_left(self) -> dict[str, Any] | None:
        """A refusal the agent sent before closing (it may close before reading our request)."""
        if self._sock is None or self._lines is None:
            return None
        try:
            self._sock.settimeout(0.5)
            while (line := self._lines.read()) is not None:
                msg = p.loads(line)
                if isinstance(msg, dict) and msg.get("id") is None and msg.get("ok") is False:
                    return msg
        except (OSError, ValueError):
            pass
        return None

    def _decode(self, line: bytes) -> dict[str, Any]:
        try:
            msg = p.loads(line)
        except ValueError as exc:
            self._disconnect()
            raise AgentError(
                f"agent at {self.path} sent a line that is not JSON: {exc}", path=self.path
            ) from None
        if not isinstance(msg, dict):
            self._disconnect()
            raise AgentError(f"agent at {self.path} sent a non-object line", path=self.path)
        return msg

    def _dict(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise AgentError(f"agent at {self.path} sent an unexpected reply", path=self.path)
        return value

    def _list(self, value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise AgentError(f"agent at {self.path} sent an unexpected reply", path=self.path)
        return value

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._lines = None

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Gone(Exception):
    """The connection broke under a request (the caller may retry on a new one)."""


class Subscription(Iterator[dict[str, Any]]):
    """Event messages ``{"v", "event", "data"}`` as they arrive, including ``dropped`` notices.

    Ends quietly after :meth:`close`; raises :class:`AgentUnavailable` if the agent goes away.
    """

    def __init__(
        self,
        path: str,
        events: list[str] | None,
        *,
        connect_timeout: float = DEFAULT_TIMEOUT,
        timeout: float | None = None,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self._closed = False
        self._sock = _connect(path, connect_timeout)
        self._lines = _Lines(self._sock)
        params = {} if events is None else {"events": list(events)}
        try:
            with contextlib.suppress(OSError):
                # A refused client is closed on; the refusal line is read below.
                self._sock.sendall(p.encode(p.request(1, "subscribe", **params)))
            while True:
                msg = self._next_message("subscribe")
                if msg.get("ok") is False:
                    _raise_for(msg, path)
                if msg.get("id") == 1 and msg.get("ok") is True:
                    result = msg.get("result")
                    self.events: list[str] = (
                        list(result.get("events", [])) if isinstance(result, dict) else []
                    )
                    break
        except BaseException:
            self._sock.close()
            raise
        self._sock.settimeout(timeout)

    def _next_message(self, doing: str) -> dict[str, Any]:
        try:
            line = self._lines.read()
        except TimeoutError:
            raise AgentTimeout(
                f"no {doing} from the Spyglass agent at {self.path} within "
                f"{self._sock.gettimeout()} s",
                path=self.path,
            ) from None
        except OSError as exc:
            if self._closed:
                raise StopIteration from None
            raise AgentUnavailable(
                f"lost the Spyglass agent at {self.path}: {exc.strerror or exc}", path=self.path
            ) from None
        if line is None:
            if self._closed:
                raise StopIteration
            raise AgentUnavailable(
                f"the Spyglass agent at {self.path} closed the event stream", path=self.path
            )
        try:
            msg = p.loads(line)
        except ValueError as exc:
            raise AgentError(
                f"agent at {self.path} sent a line that is not JSON: {exc}", path=self.path
            ) from None
        if not isinstance(msg, dict):
            raise AgentError(f"agent at {self.path} sent a non-object line", path=self.path)
        return msg

    def __next__(self) -> dict[str, Any]:
        if self._closed:
            raise StopIteration
        while True:
            msg = self._next_message("event")
            if "event" in msg:
                return msg

    def close(self) -> None:
        """Stop the stream; safe from another thread (wakes a blocked ``next``)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _without_none(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}

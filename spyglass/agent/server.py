"""The agent's API server: JSON lines on a Unix socket, served by asyncio in its own thread.

Capture must never wait for a client: :meth:`AgentServer.publish` only appends to each
subscriber's bounded queue (dropping the oldest when full) and wakes the loop at most once per
subscriber. Backend reads (SQLite) run on worker threads so a slow query never stalls events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from spyglass import __version__
from spyglass.agent.apisocket import (
    DEFAULT_GROUP,
    AgentServerError,
    bind_api_socket,
    unlink_if_ours,
)
from spyglass.agent.backend import Backend, StoreBackend
from spyglass.agent.peercred import group_name, in_group, peer_credentials
from spyglass.agent.subscriber import Subscriber, wake_all
from spyglass.api import convert
from spyglass.api import protocol as p
from spyglass.core.models import Device, Upload

# Importable from here as before they moved to their own modules.
__all__ = [
    "DEFAULT_GROUP",
    "MAX_CLIENTS",
    "SUBSCRIBER_QUEUE",
    "AgentServer",
    "AgentServerError",
    "Backend",
    "StoreBackend",
    "peer_credentials",
]

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 1000
MAX_CLIENTS = 64
_READ_CHUNK = 64 * 1024
_BATCH_BYTES = 16 * 1024


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.subscriber: Subscriber | None = None

    async def send(self, line: bytes) -> None:
        self.writer.write(line)
        await self.writer.drain()


class AgentServer:
    """The API on a Unix socket. ``start()`` returns once it listens; ``stop()`` undoes it."""

    def __init__(
        self,
        path: str | Path,
        backend: Backend,
        *,
        group: str | int | None = None,
        mode: int = 0o660,
        queue_size: int = SUBSCRIBER_QUEUE,
        max_clients: int = MAX_CLIENTS,
        controls: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.backend = backend
        # Handlers of the ops that change something (protocol.CONTROL_OPS), run on a worker
        # thread with the validated params; a ValueError becomes a bad_request reply.
        self.controls: dict[str, Callable[[dict[str, Any]], Any]] = dict(controls or {})
        self.group = group
        self.mode = mode
        self.queue_size = queue_size
        self.max_clients = max_clients
        self.socket_gid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._server: asyncio.Server | None = None
        self._identity: tuple[int, int] | None = None
        self._conns: set[_Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Replaced, never mutated, so publish() can read it from any thread without a lock.
        self._subscribers: tuple[Subscriber, ...] = ()
        self._subs_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("AgentServer already started")
        sock = self._bind()
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="spyglass-api-db")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(loop, sock, ready, failure), name="spyglass-api", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._cleanup()
            raise AgentServerError(f"API socket {self.path}: {failure[0]}") from failure[0]
        log.info("API listening on %s", self.path)

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._cleanup()

    def __enter__(self) -> AgentServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _cleanup(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._thread = None
        self._loop = None
        self._subscribers = ()
        self._unlink_own_socket()

    def _unlink_own_socket(self) -> None:
        unlink_if_ours(self.path, self._identity)
        self._identity = None

    def _bind(self) -> socket.socket:
        sock, self._identity, self.socket_gid = bind_api_socket(
            self.path, self.mode, self.group, log
        )
        return sock

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ready: threading.Event,
        failure: list[BaseException],
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_unix_server(self._serve_client, sock=sock, limit=_READ_CHUNK)
            )
        except BaseException as exc:
            failure.append(exc)
            sock.close()
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.writer.transport.abort()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- events ------------------------------------------------------------------------------

    def publish(self, event_name: str, data: Mapping[str, Any] | Device | Upload) -> None:
        """Send an event to the subscribers. Thread-safe, never blocks, never waits for I/O."""
        if event_name not in p.EVENTS:
            raise ValueError(f"unknown event {event_name!r}; known: {', '.join(p.EVENTS)}")
        subscribers = self._subscribers
        loop = self._loop
        if not subscribers or loop is None:
            return
        payload: Mapping[str, Any]
        if isinstance(data, Upload):
            payload = convert.upload_to_dict(data)
        elif isinstance(data, Device):
            payload = convert.device_to_dict(data)
        else:
            payload = data  # p.event() copies it
        try:
            line = p.encode(p.event(event_name, payload))
        except (TypeError, ValueError) as exc:
            # A bad event must not take capture down with it.
            log.error("dropped %s event that is not JSON-serialisable: %s", event_name, exc)
            return
        wake = [s for s in subscribers if s.offer(event_name, line)]
        if wake:
            with contextlib.suppress(RuntimeError):  # loop closed: stopping
                loop.call_soon_threadsafe(wake_all, wake)

    def _add_subscriber(self, sub: Subscriber) -> None:
        with self._subs_lock:
            self._subscribers = (*self._subscribers, sub)

    def _remove_subscriber(self, sub: Subscriber) -> None:
        with self._subs_lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not sub)
        if sub.pump is not None:
            sub.pump.cancel()

    async def _pump(self, sub: Subscriber, conn: _Connection) -> None:
        try:
            while True:
                await sub.wake.wait()
                sub.wake.clear()
                while True:
                    # Batches: one write and one drain per batch, not per event.
                    lines, dropped = sub.take(_BATCH_BYTES)
                    if dropped:
                        conn.writer.write(p.encode(p.event(p.DROPPED_EVENT, {"count": dropped})))
                    if not lines:
                        break
                    await conn.send(b"".join(lines))
        except (ConnectionError, OSError):
            conn.writer.transport.abort()

    # -- connections -------------------------------------------------------------------------

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        conn = _Connection(reader, writer)
        try:
            refusal = await self._refusal(writer)
            if refusal is not None:
                writer.write(p.encode(p.error(None, *refusal)))
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    await asyncio.wait_for(writer.drain(), 2.0)
                writer.close()
                return
            self._conns.add(conn)
            await self._read_requests(conn)
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to tell anyone
        except asyncio.CancelledError:
            # Shutting down. Not re-raised: asyncio 3.12's stream callback would log a
            # traceback for a cancelled client task.
            pass
        finally:
            self._conns.discard(conn)
            if conn.subscriber is not None:
                self._remove_subscriber(conn.subscriber)
            # close() would wait for a client that stopped reading to take its backlog.
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()
            else:
                writer.close()

    async def _refusal(self, writer: asyncio.StreamWriter) -> tuple[str, str] | None:
        try:
            pid, uid, gid = peer_credentials(writer.get_extra_info("socket"))
        except OSError as exc:
            return p.FORBIDDEN, f"cannot read the client's credentials: {exc}"
        own = os.geteuid()
        allowed = uid in (0, own)
        group = self.socket_gid
        if not allowed and group is not None:
            loop = asyncio.get_running_loop()
            # The group database may be remote (LDAP): keep it off the loop.
            allowed = await loop.run_in_executor(self._executor, in_group, pid, uid, gid, group)
        if not allowed:
            who = f"uid {uid}"
            with contextlib.suppress(KeyError):
                who = f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
            group_text = f" and members of group {group_name(group)}" if group is not None else ""
            log.warning("refused API client %s (pid %d)", who, pid)
            return p.FORBIDDEN, (
                f"{who} may not use the Spyglass agent: only root, uid {own}{group_text} may"
            )
        if len(self._conns) >= self.max_clients:
            return p.INTERNAL, f"too many clients ({self.max_clients}); try again later"
        return None

    async def _read_requests(self, conn: _Connection) -> None:
        buf = bytearray()
        skipping = False  # inside an oversized line: discard up to its newline
        while True:
            chunk = await conn.reader.read(_READ_CHUNK)
            if not chunk:
                return
            buf += chunk
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    if skipping:
                        buf.clear()
                    elif len(buf) > p.MAX_REQUEST_BYTES:
                        await conn.send(self._too_large())
                        skipping = True
                        buf.clear()
                    break
                line = bytes(buf[:nl]).rstrip(b"\r")
                del buf[: nl + 1]
                if skipping:
                    skipping = False
                elif len(line) > p.MAX_REQUEST_BYTES:
                    await conn.send(self._too_large())
                elif line.strip():
                    await self._handle(conn, line)

    @staticmethod
    def _too_large() -> bytes:
        return p.encode(
            p.error(
                None,
                p.TOO_LARGE,
                f"request line longer than {p.MAX_REQUEST_BYTES} bytes; skipped to its end",
            )
        )

    async def _handle(self, conn: _Connection, line: bytes) -> None:
        try:
            req = p.parse_request(line)
        except p.ProtocolError as exc:
            await conn.send(p.encode(p.error(exc.request_id, exc.code, exc.message)))
            return
        if req.op == "subscribe":
            await self._subscribe(conn, req)
            return
        try:
            reply = p.encode(p.ok(req.id, await self._dispatch(conn, req)))
        except p.ProtocolError as exc:
            reply = p.encode(p.error(req.id, exc.code, exc.message))
        except Exception as exc:
            log.exception("API %s failed", req.op)
            reply = p.encode(p.error(req.id, p.INTERNAL, f"{req.op} failed: {exc}"))
        await conn.send(reply)

    async def _subscribe(self, conn: _Connection, req: p.Request) -> None:
        events: list[str] = req.params["events"]
        if conn.subscriber is not None:
            self._remove_subscriber(conn.subscriber)
        sub = Subscriber(events, self.queue_size)
        conn.subscriber = sub
        self._add_subscriber(sub)
        # Events published from here on are queued, and sent only after this reply.
        await conn.send(p.encode(p.ok(req.id, {"events": events})))
        if conn.subscriber is sub:
            sub.pump = asyncio.create_task(self._pump(sub, conn))
            self._tasks.add(sub.pump)
            sub.pump.add_done_callback(self._tasks.discard)

    async def _dispatch(self, conn: _Connection, req: p.Request) -> Any:
        op, params = req.op, req.params
        if op == "hello":
            return {
                "server": p.SERVER_NAME,
                "version": __version__,
                "protocol": list(p.SUPPORTED_VERSIONS),
                "ops": list(p.OPS),
                "events": list(p.EVENTS),
            }
        if op == "unsubscribe":
            if conn.subscriber is not None:
                self._remove_subscriber(conn.subscriber)
                conn.subscriber = None
            return {"events": []}
        if op == "status":
            status = await self._in_worker(self.backend.status)
            if not isinstance(status, dict):
                raise TypeError(f"backend status is {type(status).__name__}, not a dict")
            return {**status, "api": {"clients": len(self._conns),
                                      "subscribers": len(self._subscribers)}}
        if op == "devices":
            return await self._in_worker(
                lambda: [convert.device_to_dict(d) for d in self.backend.devices()]
            )
        if op == "uploads":
            return await self._in_worker(
                lambda: [
                    convert.upload_to_dict(u)
                    for u in self.backend.uploads(
                        params["device"], params["since"], params["until"]
                    )
                ]
            )
        if op == "series":
            resolution = p.series_resolution(
                params["since"], params["until"], params["resolution_s"]
            )
            points = await self._in_worker(
                self.backend.series,
                params["device"], params["since"], params["until"], resolution,
            )
            return {"resolution_s": resolution, "points": points}
        if op in p.CONTROL_OPS:
            control = self.controls.get(op)
            if control is None:
                raise p.ProtocolError(
                    p.UNKNOWN_OP, f"{op!r} is not available from this agent", req.id
                )
            try:
                return await self._in_worker(control, params)
            except ValueError as exc:
                raise p.ProtocolError(p.BAD_REQUEST, f"{op}: {exc}", req.id) from None
        raise p.ProtocolError(p.UNKNOWN_OP, f"unknown op {op!r}", req.id)

    async def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

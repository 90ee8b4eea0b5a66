"""The agent's API server: JSON lines on a Unix socket, served by asyncio in its own thread.

Capture must never wait for a client: :meth:`AgentServer.publish` only appends to each
subscriber's bounded queue (dropping the oldest when full) and wakes the loop at most once per
subscriber. Backend reads (SQLite) run on worker threads so a slow query never stalls events.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import math
import os
import pwd
import socket
import sqlite3
import stat
import struct
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from sqlite_utils import Database

from spyglass import __version__
from spyglass.api import protocol as p
from spyglass.core.models import Device, Upload
from spyglass.store.db import Store, StoreError

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 1000
MAX_CLIENTS = 64
DEFAULT_GROUP = "spyglass"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL
_READ_CHUNK = 64 * 1024
_BATCH_BYTES = 16 * 1024


class AgentServerError(Exception):
    """The server could not start (socket in use, bad path, unknown group...)."""


class Backend(Protocol):
    """Where the API's data comes from. Called from worker threads, never the capture thread."""

    def status(self) -> dict[str, Any]: ...

    def devices(self) -> Sequence[Device]: ...

    def uploads(
        self, device: str | None, since: float | None, until: float | None
    ) -> Sequence[Upload]: ...

    def series(
        self, device: str | None, since: float, until: float, resolution_s: int
    ) -> list[dict[str, Any]]:
        """Points ``{"t": bucket start, "up": bytes, "down": bytes}``, oldest first."""
        ...


# Below this resolution a bucket holds few rows and Store.series' single GROUP BY is cheaper.
_BUCKET_SCAN_MIN_RES = 60
_BUCKETS = """
b(t) AS (SELECT :first UNION ALL SELECT t + :res FROM b WHERE t + :res < :until)
SELECT t, (
    SELECT json_array(SUM(bytes_up), SUM(bytes_down)) FROM series
    WHERE device_mac {devices} AND second >= max(t, :since) AND second < min(t + :res, :until)
) FROM b ORDER BY t
"""
_BUCKETS_SQL = "WITH RECURSIVE " + _BUCKETS.format(devices="= :mac")
# Every device in the series table, one primary-key seek each (a loose index scan).
_BUCKETS_ALL_SQL = (
    "WITH RECURSIVE d(m) AS (SELECT MIN(device_mac) FROM series UNION ALL "
    "SELECT (SELECT MIN(device_mac) FROM series WHERE device_mac > m) FROM d "
    "WHERE m IS NOT NULL), "
    + _BUCKETS.format(devices="IN (SELECT m FROM d WHERE m IS NOT NULL)")
)


class StoreBackend:
    """Serves the API from the agent's SQLite store, plus the agent's live status.

    Reads go through a few read-only connections of its own, never the agent's writer: a
    reader never waits for the agent's writes (WAL), and the API cannot change the store.
    Opening one per request would cost milliseconds, so they are kept; :meth:`close` ends them.
    """

    def __init__(
        self,
        store: Store | str | Path,
        status_fn: Callable[[], dict[str, Any]],
        *,
        timeout: float = 5.0,
    ) -> None:
        path = store.path if isinstance(store, Store) else Path(store)
        if path is None:
            raise ValueError(
                "StoreBackend needs a store on disk: an in-memory store cannot be read from "
                "the API's worker threads"
            )
        self.path = Path(path).resolve()
        self.timeout = timeout
        self._status_fn = status_fn
        self._idle: list[Store] = []
        self._lock = threading.Lock()
        self._closed = False

    def status(self) -> dict[str, Any]:
        return dict(self._status_fn())

    def devices(self) -> list[Device]:
        with self._reader() as store:
            return store.devices()

    def uploads(
        self, device: str | None, since: float | None, until: float | None
    ) -> list[Upload]:
        with self._reader() as store:
            return list(store.uploads(device, since, until))

    def series(
        self, device: str | None, since: float, until: float, resolution_s: int
    ) -> list[dict[str, Any]]:
        with self._reader() as store:
            if device is not None and resolution_s < _BUCKET_SCAN_MIN_RES:
                points = store.series(device, since, until, resolution_s)
                return [
                    {"t": pt.second, "up": pt.bytes_up, "down": pt.bytes_down} for pt in points
                ]
            return self._bucket_sums(store, device, since, until, resolution_s)

    def _bucket_sums(
        self, store: Store, device: str | None, since: float, until: float, res: int
    ) -> list[dict[str, Any]]:
        # Store.series groups with a temporary B-tree over every row in the range (4 s for a
        # month of seconds here), and for all devices scans the whole table. Summing each
        # bucket as its own primary-key range reads rows in key order with no sort: several
        # times faster for long ranges. Same answer (tests compare the two).
        sql = _BUCKETS_ALL_SQL if device is None else _BUCKETS_SQL
        args = {
            "first": math.floor(since / res) * res,
            "res": res,
            "since": since,
            "until": until,
            "mac": device,
        }
        try:
            rows = store.db.conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"store: {exc} reading {self.path}; nothing was changed") from exc
        points = []
        for t, sums in rows:
            up, down = json.loads(sums)
            if up is not None:
                points.append({"t": t, "up": up, "down": down})
        return points

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for store in idle:
            store.close()

    def __enter__(self) -> StoreBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Store]:
        with self._lock:
            if self._closed:
                raise StoreError(f"store: {self.path} is closed for the API; nothing was read")
            store = self._idle.pop() if self._idle else None
        if store is None:
            store = self._open()
        try:
            yield store
        except BaseException:
            store.close()  # may be broken; the next call opens a fresh one
            raise
        with self._lock:
            if self._closed:
                store.close()
            else:
                self._idle.append(store)

    def _open(self) -> Store:
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
        try:
            # Used by one worker thread at a time, but not always the same one.
            conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(
                f"store: cannot open {self.path} for reading ({exc}); nothing was read"
            ) from exc
        conn.isolation_level = None
        return Store(Database(conn, execute_plugins=False), self.path)


class _Subscriber:
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


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.subscriber: _Subscriber | None = None

    async def send(self, line: bytes) -> None:
        self.writer.write(line)
        await self.writer.drain()


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    fmt = "iII"
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
    pid, uid, gid = struct.unpack(fmt, raw)
    return int(pid), int(uid), int(gid)


def _proc_groups(pid: int) -> set[int] | None:
    """The peer's supplementary groups (SO_PEERCRED carries only the primary gid)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:] if g.isdigit()}
    except OSError:
        pass
    return None


def _in_group(pid: int, uid: int, gid: int, group: int) -> bool:
    if gid == group:
        return True
    groups = _proc_groups(pid)
    if groups is not None:
        # What the process holds now, not what the group file says it could get at login.
        return group in groups
    # /proc hidden from us (hidepid): fall back to the group database.
    try:
        user = pwd.getpwuid(uid)
        members = grp.getgrgid(group).gr_mem
    except KeyError:
        return False
    return user.pw_gid == group or user.pw_name in members


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _resolve_group(group: str | int | None) -> int | None:
    if isinstance(group, int):
        return group
    name = group if group is not None else DEFAULT_GROUP
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if group is None:
            return None  # no "spyglass" group on this system: keep the agent's own group
        raise AgentServerError(f"API socket: group {name!r} does not exist") from None


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
        self._subscribers: tuple[_Subscriber, ...] = ()
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
        # Only our own socket: a newer agent may have replaced the file since.
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        if self._identity == (st.st_dev, st.st_ino):
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._identity = None

    def _bind(self) -> socket.socket:
        tmp = self.path + ".new"
        if len(os.fsencode(tmp)) > _SUN_PATH_MAX:
            raise AgentServerError(
                f"API socket path {self.path} is too long for a Unix socket "
                f"(at most {_SUN_PATH_MAX - 4} bytes)"
            )
        gid = _resolve_group(self.group)
        parent = os.path.dirname(self.path)
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise AgentServerError(f"cannot create {parent}: {exc.strerror}") from exc
        self._check_existing()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            # Bind under a temporary name and rename into place, so the socket is never
            # reachable with the umask's permissions or the wrong group.
            sock.bind(tmp)
            os.chmod(tmp, self.mode)
            if gid is not None:
                os.chown(tmp, -1, gid)
            os.rename(tmp, self.path)
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise AgentServerError(
                f"cannot create API socket {self.path}: {exc.strerror or exc}"
            ) from exc
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self.socket_gid = st.st_gid
        sock.setblocking(False)
        return sock

    def _check_existing(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise AgentServerError(f"{self.path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except ConnectionRefusedError:
            log.warning("replacing stale API socket %s (its agent is gone)", self.path)
            return
        except OSError as exc:
            raise AgentServerError(
                f"cannot tell whether an agent still listens on {self.path}: {exc}"
            ) from exc
        finally:
            probe.close()
        raise AgentServerError(
            f"another agent is already listening on {self.path}; stop it first"
        )

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
            payload = p.upload_to_dict(data)
        elif isinstance(data, Device):
            payload = p.device_to_dict(data)
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
                loop.call_soon_threadsafe(_wake_all, wake)

    def _add_subscriber(self, sub: _Subscriber) -> None:
        with self._subs_lock:
            self._subscribers = (*self._subscribers, sub)

    def _remove_subscriber(self, sub: _Subscriber) -> None:
        with self._subs_lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not sub)
        if sub.pump is not None:
            sub.pump.cancel()

    async def _pump(self, sub: _Subscriber, conn: _Connection) -> None:
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
            allowed = await loop.run_in_executor(self._executor, _in_group, pid, uid, gid, group)
        if not allowed:
            who = f"uid {uid}"
            with contextlib.suppress(KeyError):
                who = f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
            group_text = f" and members of group {_group_name(group)}" if group is not None else ""
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
        sub = _Subscriber(events, self.queue_size)
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
                lambda: [p.device_to_dict(d) for d in self.backend.devices()]
            )
        if op == "uploads":
            return await self._in_worker(
                lambda: [
                    p.upload_to_dict(u)
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


def _wake_all(subscribers: list[_Subscriber]) -> None:
    for sub in subscribers:
        sub.wake.set()

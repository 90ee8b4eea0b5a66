"""Intercept mode: put this host in the path between chosen devices and the router by ARP
(as IoT Inspector and Firewalla's simple mode do), and always put the true entries back.

Every exit path restores: stop(), leaving the ``with`` block (an exception too), remove() of
one device, SIGTERM/SIGINT/SIGHUP and interpreter exit (install_exit_handlers), and SIGKILL or
a crash (a separate watchdog process, see spyglass.capture.watchdog). Before poisoning
anything it refuses to start when another host already intercepts the router or a device.

Poisoning is unicast ARP replies every ``period_s`` (2 s), plus an immediate answer when a
target asks for the router (or the router for a target), so a re-ARP does not slip past us.

Forwarding (and the redirect sysctls) are on exactly while some device is intercepted: when the
last one is removed they go back to their old values once its corrections are out, and they are
set again when a device is added. The watchdog's state file always holds what is in force.

The steps before the first poisoned frame live beside this module: spyglass.capture.preflight
(on-link checks, true MACs, conflicts; and the errors) and spyglass.capture.forwarding (sysctls).
"""

from __future__ import annotations

import atexit
import contextlib
import heapq
import ipaddress
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Self

from spyglass.capture.arp import (
    OP_REQUEST,
    ArpSocket,
    claim,
    correction_frames,
    in_netns,
    poison_frames,
    send_rounds,
)
from spyglass.capture.forwarding import apply_sysctls, planned_sysctls
from spyglass.capture.preflight import InterceptError, check_on_link, resolve_macs
from spyglass.capture.watchdog import InterceptState, restore_sysctls, start_watchdog, write_state
from spyglass.core.proto.arp import ArpInfo

log = logging.getLogger(__name__)

DEFAULT_PERIOD_S = 2.0
RESOLVE_WINDOW_S = 0.6
RESTORE_ROUNDS = 5
RESTORE_SPACING_S = 0.5
# A Linux neighbour entry ignores a reply with another MAC for ``locktime`` (1 s) after an
# update: the answer right after the true owner's is ignored, this second one is not.
REPOISON_AFTER_S = 1.1


def _ipv4(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an IPv4 address") from None


class Interceptor:
    """ARP interception of chosen devices and the router on one interface. A context manager.

    ``netns`` names an ``ip netns`` namespace holding ``ifname`` (default: the network
    namespace of the thread creating the Interceptor). ``state_file`` is where the watchdog
    reads what to restore (default: a private temporary directory, removed after a clean stop).
    """

    def __init__(
        self,
        ifname: str,
        router_ip: str,
        *,
        netns: str | None = None,
        period_s: float = DEFAULT_PERIOD_S,
        state_file: Path | str | None = None,
        watchdog: bool = True,
        resolve_window_s: float = RESOLVE_WINDOW_S,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"poisoning period must be positive, not {period_s}")
        self.ifname = ifname
        self.router_ip = _ipv4(router_ip, "router address")
        self.period_s = period_s
        self.resolve_window_s = resolve_window_s
        self.use_watchdog = watchdog
        self._state_path = Path(state_file) if state_file is not None else None
        self._own_state_dir: Path | None = None
        path = f"/var/run/netns/{netns}" if netns else "/proc/thread-self/ns/net"
        if netns is not None and ("/" in netns or netns in ("", ".", "..")):
            raise ValueError(f"not a network namespace name: {netns!r}")
        try:
            self._netns_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ValueError(f"no network namespace named {netns!r}") from None
        self._life = threading.RLock()  # start/stop; never taken by the worker
        self._lock = threading.RLock()  # targets and schedule; reentrant for signal handlers
        self._wanted: list[str] = []
        self._active: dict[str, str] = {}  # target ip -> true mac, being poisoned
        self._restoring: dict[str, str] = {}  # removed, corrections still being sent
        self._macs: dict[str, str] = {}  # learned true MACs (cache)
        self._schedule: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()
        self._sock: ArpSocket | None = None
        self._router_mac: str | None = None
        self._sysctls: dict[str, str] = {}  # old values of the knobs we changed
        self._forwarding = False  # our sysctls are in force (off while no device is chosen)
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._worker: threading.Thread | None = None
        self._halt = threading.Event()
        self._running = False
        self.error: BaseException | None = None  # what stopped the worker, if anything did

    # -- public ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def targets(self) -> dict[str, str]:
        """The devices being intercepted now: ip -> true MAC."""
        with self._lock:
            return dict(self._active)

    @property
    def router_mac(self) -> str | None:
        return self._router_mac

    @property
    def state_file(self) -> Path | None:
        return self._state_path

    @property
    def watchdog_pid(self) -> int | None:
        return self._watchdog.pid if self._watchdog is not None else None

    def add(self, target_ip: str) -> None:
        """Intercept ``target_ip`` too (at once when running: its MAC is learned and checked
        first, InterceptConflict when someone else intercepts it)."""
        ip = _ipv4(target_ip, "device address")
        if ip == self.router_ip:
            raise ValueError(f"{ip} is the router; choose the devices to intercept")
        with self._life:
            if not self._running:
                if ip not in self._wanted:
                    self._wanted.append(ip)
                return
            if ip in self._active:
                return
            sock = self._require_sock()
            check_on_link(sock, self.ifname, [ip])
            mac = self._resolve([ip])[ip]
            with self._lock:
                self._wanted.append(ip)
                self._restoring.pop(ip, None)
                self._active[ip] = mac
                try:
                    self._forwarding_on()  # after an idle spell: before the first frame
                except BaseException:
                    self._wanted.remove(ip)
                    del self._active[ip]
                    self._write_state()
                    raise
                self._write_state()
            assert self._router_mac is not None
            sock.send_all(poison_frames(sock.mac, self.router_ip, self._router_mac, ip, mac))

    def remove(self, target_ip: str) -> None:
        """Stop intercepting ``target_ip`` and restore its entries at once (corrections go out
        over the next 2 s; after the last device's, the sysctls are put back too). Unknown
        addresses are ignored."""
        ip = _ipv4(target_ip, "device address")
        with self._life:
            if ip in self._wanted:
                self._wanted.remove(ip)
            with self._lock:
                mac = self._active.pop(ip, None)
                if mac is None or not self._running:
                    return
                self._restoring[ip] = mac
                now = time.monotonic()
                for i in range(RESTORE_ROUNDS):
                    kind = "restore-last" if i == RESTORE_ROUNDS - 1 else "restore"
                    self._at(now + i * RESTORE_SPACING_S, kind, ip)
                self._write_state()

    def start(self) -> None:
        """Learn the true MACs, refuse on conflict, start the watchdog, turn forwarding on and
        start poisoning. Undoes everything it did when it fails."""
        with self._life:
            if self._running:
                return
            if not self._wanted:
                raise InterceptError("no devices chosen: add() at least one before start()")
            try:
                self._start()
            except BaseException:
                self._undo_start()
                raise

    def stop(self) -> None:
        """Restore every entry we touched (several corrections to both sides over 2 s) and the
        sysctls, stop the watchdog. Safe to call again, and from a signal handler."""
        with self._life:
            if not self._running:
                return
            self._running = False
            self._halt.set()
            worker = self._worker
            if worker is not None and worker is not threading.current_thread():
                worker.join(timeout=5)
            self._worker = None
            sock = self._sock
            problems: list[str] = []
            try:
                with self._lock:
                    pairs = {**self._restoring, **self._active}
                    self._schedule.clear()
                frames = self._corrections(pairs)
                if sock is not None and frames:
                    try:
                        send_rounds(sock, frames, RESTORE_ROUNDS, RESTORE_SPACING_S)
                    except OSError as exc:
                        problems.append(f"corrective ARP on {self.ifname}: {exc}")
            finally:
                problems += in_netns(self._netns_fd, lambda: restore_sysctls(self._sysctls))
            with self._lock:
                self._active.clear()
                self._restoring.clear()
                self._forwarding = False
                # The watchdog retries what failed here once this process is gone.
                self._write_state(clean=not problems, targets=pairs)
            for problem in problems:
                log.error("intercept: could not restore %s", problem)
            if not problems:
                self._sysctls = {}
                self._stop_watchdog()
                self._close_sock()

    def close(self) -> None:
        """stop(), then release the namespace handle."""
        self.stop()
        if self._netns_fd >= 0:
            os.close(self._netns_fd)
            self._netns_fd = -1

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- starting ------------------------------------------------------------------------------

    def _start(self) -> None:
        self._halt.clear()
        self.error = None
        self._sock = sock = ArpSocket(self.ifname, netns_fd=self._netns_fd)
        our_ip = sock.require_ip()
        if our_ip == self.router_ip or our_ip in self._wanted:
            raise ValueError(f"{our_ip} is this host's own address on {self.ifname}")
        check_on_link(sock, self.ifname, [self.router_ip, *self._wanted])
        macs = self._resolve([self.router_ip, *self._wanted])
        self._router_mac = macs[self.router_ip]
        with self._lock:
            self._active = {ip: macs[ip] for ip in self._wanted}
        self._sysctls = in_netns(self._netns_fd, lambda: planned_sysctls(self.ifname))
        if self._state_path is None:
            self._own_state_dir = Path(tempfile.mkdtemp(prefix="spyglass-intercept-"))
            self._state_path = self._own_state_dir / "state.json"
        # The state (with the sysctls' old values) exists before anything is changed, and the
        # watchdog watches before the first poisoned frame leaves.
        self._write_state()
        if self.use_watchdog:
            self._watchdog = start_watchdog(
                self._state_path,
                os.getpid(),
                netns_fd=self._netns_fd,
                cleanup=self._own_state_dir is not None,
            )
        in_netns(self._netns_fd, lambda: apply_sysctls(self.ifname, self._sysctls))
        self._forwarding = True
        self._running = True
        self._worker = threading.Thread(target=self._run, name="spyglass-intercept", daemon=True)
        self._worker.start()
        log.info("intercept: %s via %s on %s", ", ".join(self._active), self.router_ip, self.ifname)

    def _undo_start(self) -> None:
        self._running = False
        self._forwarding = False
        self._halt.set()
        with contextlib.suppress(OSError):
            in_netns(self._netns_fd, lambda: restore_sysctls(self._sysctls))
        self._sysctls = {}
        with self._lock:
            self._active.clear()
        if self._state_path is not None:
            with contextlib.suppress(OSError):
                self._write_state(clean=True)
        self._stop_watchdog()
        self._close_sock()

    def _resolve(self, ips: list[str]) -> dict[str, str]:
        """The true MAC of each address (see resolve_macs), remembered to notice a move."""
        macs = resolve_macs(self.ifname, self._netns_fd, ips, self.resolve_window_s)
        for ip, mac in macs.items():
            old = self._macs.get(ip)
            if old is not None and old != mac:
                log.warning("intercept: %s moved from %s to %s", ip, old, mac)
            self._macs[ip] = mac
        return macs

    # -- the poisoning thread ------------------------------------------------------------------

    def _run(self) -> None:
        sock = self._require_sock()
        next_poison = time.monotonic()
        try:
            while not self._halt.is_set():
                now = time.monotonic()
                if now >= next_poison:
                    self._poison_all(sock)
                    next_poison = now + self.period_s
                self._run_due(sock, now)
                with self._lock:
                    wake = min(next_poison, self._schedule[0][0] if self._schedule else next_poison)
                frame = sock.recv(min(0.2, max(0.0, wake - time.monotonic())))
                if frame is not None:
                    self._react(sock, frame.arp, frame.eth_src)
        except OSError as exc:
            # The interface went away: nothing more can be sent; stop() still tries.
            self.error = exc
            log.error("intercept: poisoning stopped on %s: %s", self.ifname, exc)

    def _poison_all(self, sock: ArpSocket) -> None:
        with self._lock:
            active = dict(self._active)
        assert self._router_mac is not None
        for ip, mac in active.items():
            sock.send_all(poison_frames(sock.mac, self.router_ip, self._router_mac, ip, mac))

    def _at(self, due: float, kind: str, ip: str) -> None:
        heapq.heappush(self._schedule, (due, next(self._seq), kind, ip))

    def _run_due(self, sock: ArpSocket, now: float) -> None:
        assert self._router_mac is not None
        while True:
            last = False
            with self._lock:
                if not self._schedule or self._schedule[0][0] > now:
                    return
                _due, _seq, kind, ip = heapq.heappop(self._schedule)
                frames: list[bytes] = []
                if kind == "poison" and ip in self._active:
                    frames = poison_frames(
                        sock.mac, self.router_ip, self._router_mac, ip, self._active[ip]
                    )
                elif kind.startswith("restore") and ip in self._restoring:
                    frames = self._corrections({ip: self._restoring[ip]})
                    if kind == "restore-last":
                        del self._restoring[ip]
                        self._write_state()
                        last = True
            sock.send_all(frames)
            if last:
                self._forwarding_off()

    # -- the sysctls while running -------------------------------------------------------------

    def _forwarding_on(self) -> None:
        """Set the sysctls again after an idle spell (with ``_lock`` held). Their old values
        are read now (someone may have changed them meanwhile) and saved before any changes."""
        if self._forwarding:
            return
        self._sysctls = in_netns(self._netns_fd, lambda: planned_sysctls(self.ifname))
        self._write_state()
        try:
            in_netns(self._netns_fd, lambda: apply_sysctls(self.ifname, self._sysctls))
        except BaseException:
            if not in_netns(self._netns_fd, lambda: restore_sysctls(self._sysctls)):
                self._sysctls = {}
            raise
        self._forwarding = True
        log.info("intercept: forwarding on again on %s", self.ifname)

    def _forwarding_off(self) -> None:
        """No device is intercepted and the last corrections are out: put the sysctls back
        (forwarding stayed on until now, so the device lost nothing meanwhile)."""
        with self._lock:
            if self._active or self._restoring or not self._forwarding or not self._running:
                return
            problems = in_netns(self._netns_fd, lambda: restore_sysctls(self._sysctls))
            if problems:
                # They stay saved in the state: stop() (or the watchdog) tries again.
                for problem in problems:
                    log.error("intercept: could not restore %s", problem)
                return
            self._forwarding = False
            self._sysctls = {}
            self._write_state()  # only now: a kill in between restores the same values again
        log.info("intercept: no device chosen, forwarding settings restored on %s", self.ifname)

    def _react(self, sock: ArpSocket, a: ArpInfo, eth_src: str) -> None:
        assert self._router_mac is not None
        if a.op != OP_REQUEST:
            return
        with self._lock:
            active = dict(self._active)
        if a.target_ip == self.router_ip and active.get(a.sender_ip) == a.sender_mac:
            victim = a.sender_ip  # a target looks for the router
        elif (
            a.sender_ip == self.router_ip
            and a.sender_mac == self._router_mac
            and a.target_ip in active
        ):
            victim = a.target_ip  # the router looks for a target
        else:
            asked = a.target_ip == self.router_ip or a.target_ip in active
            owners = {self._router_mac, *active.values()}
            if asked and a.sender_mac not in owners and eth_src not in owners:
                # A third party (perhaps another Spyglass checking before it starts): tell it
                # with an opcode no kernel acts on, so nobody's cache changes.
                sock.send(claim(sock.mac, a.target_ip, a.sender_mac, a.sender_ip))
            return
        sock.send_all(
            poison_frames(sock.mac, self.router_ip, self._router_mac, victim, active[victim])
        )
        with self._lock:
            self._at(time.monotonic() + REPOISON_AFTER_S, "poison", victim)

    # -- helpers -------------------------------------------------------------------------------

    def _corrections(self, pairs: dict[str, str]) -> list[bytes]:
        if self._sock is None or self._router_mac is None:
            return []
        frames: list[bytes] = []
        for ip, mac in pairs.items():
            frames += correction_frames(self._sock.mac, self.router_ip, self._router_mac, ip, mac)
        return frames

    def _require_sock(self) -> ArpSocket:
        if self._sock is None:
            raise InterceptError("the interceptor is not running")
        return self._sock

    def _write_state(self, clean: bool = False, targets: dict[str, str] | None = None) -> None:
        if self._state_path is None or self._sock is None or self._router_mac is None:
            return
        state = InterceptState(
            agent_pid=os.getpid(),
            ifname=self.ifname,
            our_mac=self._sock.mac,
            router_ip=self.router_ip,
            router_mac=self._router_mac,
            targets={**self._restoring, **self._active} if targets is None else targets,
            sysctls=dict(self._sysctls),
            clean=clean,
        )
        write_state(self._state_path, state)

    def _stop_watchdog(self) -> None:
        proc, self._watchdog = self._watchdog, None
        if proc is not None:
            # It sees the clean state within its 0.2-s poll and exits.
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_state_dir is not None:
            shutil.rmtree(self._own_state_dir, ignore_errors=True)
            self._own_state_dir = None
            self._state_path = None

    def _close_sock(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def install_exit_handlers(interceptor: Interceptor) -> Callable[[], None]:
    """Restore on SIGTERM, SIGINT and SIGHUP (then exit with 128 + the signal) and at
    interpreter exit. Call from the main thread; returns a function that uninstalls them."""
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # A second Ctrl-C must not cut the restore short.
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        try:
            interceptor.stop()
        finally:
            sys.exit(128 + signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    atexit.register(interceptor.stop)

    def uninstall() -> None:
        atexit.unregister(interceptor.stop)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return uninstall

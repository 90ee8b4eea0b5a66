"""The intercept-mode watchdog: a separate small process that restores the true ARP entries
and the forwarding sysctls when the agent dies without doing it itself (SIGKILL, OOM killer).

The agent keeps a state file (JSON, replaced atomically whenever the targets change) naming
the interface, the true MACs and the sysctls' old values, and marks it ``clean`` once it has
restored them. The watchdog watches the agent's pid (pidfd, else /proc every 0.2 s) and the
file: clean -> it exits quietly; agent gone while not clean -> it restores, then exits.

    python -m spyglass.capture.watchdog --state FILE --pid AGENT_PID [--netns-fd FD]

It imports the stdlib and the ARP frame builder only, so that it starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from spyglass.capture.arp import ArpSocket, correction_frames, send_rounds

STATE_FORMAT = "spyglass-intercept-state"
STATE_VERSION = 1
POLL_S = 0.2
READY = b"ready\n"


@dataclass(slots=True)
class InterceptState:
    """What the watchdog needs to undo an interception. ``sysctls`` maps paths under
    /proc/sys (``net/ipv4/ip_forward``) to the values to put back."""

    agent_pid: int
    ifname: str
    our_mac: str
    router_ip: str
    router_mac: str
    targets: dict[str, str] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    clean: bool = False
    restored_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "agent_pid": self.agent_pid,
            "ifname": self.ifname,
            "our_mac": self.our_mac,
            "router": {"ip": self.router_ip, "mac": self.router_mac},
            "targets": dict(self.targets),
            "sysctls": dict(self.sysctls),
            "clean": self.clean,
            "restored_by": self.restored_by,
        }

    @classmethod
    def from_json(cls, data: Any) -> InterceptState:
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError("not a Spyglass intercept state file")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"intercept state version {data.get('version')!r} is not supported")
        try:
            router = data["router"]
            state = cls(
                agent_pid=int(data["agent_pid"]),
                ifname=str(data["ifname"]),
                our_mac=str(data["our_mac"]),
                router_ip=str(router["ip"]),
                router_mac=str(router["mac"]),
                targets={str(k): str(v) for k, v in dict(data["targets"]).items()},
                sysctls={str(k): str(v) for k, v in dict(data["sysctls"]).items()},
                clean=bool(data["clean"]),
                restored_by=data.get("restored_by"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"intercept state file is incomplete or malformed ({exc!r})") from None
        for path in state.sysctls:
            if not _safe_sysctl_path(path):
                raise ValueError(f"intercept state names a sysctl outside net/ipv4: {path!r}")
        return state


def write_state(path: Path, state: InterceptState) -> None:
    """Replace ``path`` atomically: a reader sees the old file or the new one, never half."""
    data = json.dumps(state.to_json(), indent=1).encode()
    fd, tmp = tempfile.mkstemp(prefix=".intercept-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_state(path: Path) -> InterceptState:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read intercept state {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError(f"intercept state {path} is not valid JSON") from None
    return InterceptState.from_json(data)


# -- sysctls ------------------------------------------------------------------------------------


def _safe_sysctl_path(path: str) -> bool:
    parts = path.split("/")
    return path.startswith("net/ipv4/") and ".." not in parts and "" not in parts


def read_sysctl(path: str) -> str:
    """The value of /proc/sys/``path`` in the calling thread's network namespace."""
    return Path("/proc/sys", path).read_text().strip()


def write_sysctl(path: str, value: str) -> None:
    if not _safe_sysctl_path(path):
        raise ValueError(f"refusing to write sysctl {path!r}")
    Path("/proc/sys", path).write_text(value + "\n")


def restore_sysctls(sysctls: dict[str, str]) -> list[str]:
    """Put the old values back (ip_forward first: changing it resets other net/ipv4 knobs).
    Returns what could not be restored."""
    problems = []
    order = sorted(sysctls, key=lambda p: p != "net/ipv4/ip_forward")
    for path in order:
        try:
            write_sysctl(path, sysctls[path])
        except (OSError, ValueError) as exc:
            problems.append(f"sysctl {path}={sysctls[path]}: {exc}")
    return problems


def restore(state: InterceptState, rounds: int = 5, spacing_s: float = 0.5) -> list[str]:
    """Send the corrective ARP frames for every target and restore the sysctls, in the calling
    thread's namespace. Returns what went wrong (an empty list when all is restored)."""
    problems: list[str] = []
    frames: list[bytes] = []
    for ip, mac in state.targets.items():
        frames += correction_frames(state.our_mac, state.router_ip, state.router_mac, ip, mac)
    if frames:
        try:
            with ArpSocket(state.ifname) as sock:
                send_rounds(sock, frames, rounds, spacing_s)
        except (OSError, ValueError) as exc:
            problems.append(f"corrective ARP on {state.ifname}: {exc}")
    problems += restore_sysctls(state.sysctls)
    return problems


# -- watching the agent -------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (tells a reused pid apart), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if fields and fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return fields[19] if len(fields) > 19 else None


class AgentWatch:
    """Tells when a process has exited: a pidfd when the kernel has them, /proc otherwise."""

    def __init__(self, pid: int, *, use_pidfd: bool = True) -> None:
        self.pid = pid
        self._start = _start_time(pid)
        self._pidfd: int | None = None
        if self._start is not None and use_pidfd and hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                self._pidfd = os.pidfd_open(pid)
                # The pid may have been reused between the two looks: check once more.
                if _start_time(pid) != self._start:
                    self.close()
                    self._start = None

    def wait(self, timeout_s: float) -> bool:
        """True when the process is gone (waits up to ``timeout_s`` for it to go)."""
        if self._start is None:
            return True
        if self._pidfd is not None:
            p = select.poll()
            p.register(self._pidfd, select.POLLIN)
            return bool(p.poll(int(timeout_s * 1000)))
        time.sleep(timeout_s)
        return _start_time(self.pid) != self._start

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def watch(
    state_path: Path, agent_pid: int, ready: IO[bytes] | None = None, cleanup: bool = False
) -> int:
    """Watch until the agent is gone or the state is clean; restore when needed. Exit status.
    ``cleanup``: the state file and its directory are private to this interception, delete
    them once all is restored."""
    try:
        state = read_state(state_path)
    except ValueError as exc:
        _say(f"watchdog: {exc}; nothing to watch")
        return 2
    agent = AgentWatch(agent_pid)
    if ready is not None:
        ready.write(READY)
        ready.flush()
        ready.close()
    mtime = _mtime(state_path)
    try:
        while True:
            gone = agent.wait(POLL_S)
            now_mtime = _mtime(state_path)
            if gone or now_mtime != mtime:
                mtime = now_mtime
                with contextlib.suppress(ValueError):  # a bad rewrite: keep the last good one
                    state = read_state(state_path)
            if state.clean:
                return 0
            if gone:
                break
    finally:
        agent.close()
    _say(f"watchdog: agent {agent_pid} died without restoring ARP on {state.ifname}; restoring")
    problems = restore(state)
    for problem in problems:
        _say(f"watchdog: could not restore {problem}")
    state.clean = not problems
    state.restored_by = "watchdog"
    with contextlib.suppress(OSError):
        if cleanup and not problems:
            state_path.unlink()
            state_path.parent.rmdir()
        else:
            write_state(state_path, state)
    return 1 if problems else 0


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _say(msg: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(msg, file=sys.stderr, flush=True)


def start_watchdog(
    state_file: Path | str,
    agent_pid: int,
    *,
    netns_fd: int | None = None,
    cleanup: bool = False,
    ready_timeout_s: float = 10.0,
) -> subprocess.Popen[bytes]:
    """Spawn the watchdog (a fresh interpreter, not a fork of the agent's threads) and wait
    until it watches. ``netns_fd`` is the network namespace it restores in (default: ours);
    ``cleanup`` lets it delete the state file and its (private) directory after restoring.

    It runs in its own session, so a Ctrl-C meant for the agent does not reach it, and it
    ignores SIGTERM/SIGINT: it ends by itself when the agent has gone or marked the state clean.
    """
    cmd = [sys.executable, "-m", "spyglass.capture.watchdog", "--state", str(state_file),
           "--pid", str(agent_pid)]  # fmt: skip
    pass_fds: tuple[int, ...] = ()
    if netns_fd is not None:
        cmd += ["--netns-fd", str(netns_fd)]
        pass_fds = (netns_fd,)
    if cleanup:
        cmd.append("--cleanup")
    env = dict(os.environ)
    # The child must import this very package, wherever the agent was started from.
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, pass_fds=pass_fds,
        start_new_session=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    p = select.poll()
    p.register(proc.stdout, select.POLLIN)
    line = proc.stdout.readline() if p.poll(int(ready_timeout_s * 1000)) else b""
    proc.stdout.close()
    if line != READY:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise RuntimeError(
            f"the intercept watchdog did not start (exit status {proc.returncode}); "
            "refusing to intercept without it"
        )
    return proc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spyglass.capture.watchdog")
    parser.add_argument("--state", required=True, type=Path, help="intercept state file (JSON)")
    parser.add_argument("--pid", required=True, type=int, help="the agent's pid")
    parser.add_argument("--netns-fd", type=int, help="network namespace to restore in (fd)")
    parser.add_argument(
        "--cleanup", action="store_true", help="delete the state file and its directory after"
    )
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if args.netns_fd is not None:
        try:
            os.setns(args.netns_fd, os.CLONE_NEWNET)
            os.close(args.netns_fd)
        except OSError as exc:
            _say(f"watchdog: cannot enter network namespace fd {args.netns_fd}: {exc}")
            return 2
    ready = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    # Nothing else goes to the agent's pipe: stdout is the readiness line only.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return watch(args.state, args.pid, ready, cleanup=args.cleanup)


if __name__ == "__main__":
    sys.exit(main())

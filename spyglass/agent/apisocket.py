"""The API's socket file: created with its mode and group before anyone can reach it, never
replacing a live agent's socket, and removed only while it is still ours.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
import stat

DEFAULT_GROUP = "spyglass"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL


class AgentServerError(Exception):
    """The server could not start (socket in use, bad path, unknown group...)."""


def resolve_group(group: str | int | None) -> int | None:
    if isinstance(group, int):
        return group
    name = group if group is not None else DEFAULT_GROUP
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if group is None:
            return None  # no "spyglass" group on this system: keep the agent's own group
        raise AgentServerError(f"API socket: group {name!r} does not exist") from None


def bind_api_socket(
    path: str, mode: int, group: str | int | None, log: logging.Logger
) -> tuple[socket.socket, tuple[int, int], int]:
    """A non-blocking Unix socket bound at ``path``, not yet listening; with the file's
    identity (device, inode) and its group id. ``log`` (the server's) hears of a stale socket
    being replaced."""
    tmp = path + ".new"
    if len(os.fsencode(tmp)) > _SUN_PATH_MAX:
        raise AgentServerError(
            f"API socket path {path} is too long for a Unix socket "
            f"(at most {_SUN_PATH_MAX - 4} bytes)"
        )
    gid = resolve_group(group)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise AgentServerError(f"cannot create {parent}: {exc.strerror}") from exc
    _check_existing(path, log)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        # Bind under a temporary name and rename into place, so the socket is never
        # reachable with the umask's permissions or the wrong group.
        sock.bind(tmp)
        os.chmod(tmp, mode)
        if gid is not None:
            os.chown(tmp, -1, gid)
        os.rename(tmp, path)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise AgentServerError(f"cannot create API socket {path}: {exc.strerror or exc}") from exc
    st = os.stat(path)
    sock.setblocking(False)
    return sock, (st.st_dev, st.st_ino), st.st_gid


def _check_existing(path: str, log: logging.Logger) -> None:
    """Raises unless ``path`` is absent or a socket nobody listens on (which may be replaced)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AgentServerError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        log.warning("replacing stale API socket %s (its agent is gone)", path)
        return
    except OSError as exc:
        raise AgentServerError(
            f"cannot tell whether an agent still listens on {path}: {exc}"
        ) from exc
    finally:
        probe.close()
    raise AgentServerError(f"another agent is already listening on {path}; stop it first")


def unlink_if_ours(path: str, identity: tuple[int, int] | None) -> None:
    """Remove the socket file only if it is still the one we bound: a newer agent may have
    replaced it since."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if identity == (st.st_dev, st.st_ino):
        with contextlib.suppress(OSError):
            os.unlink(path)

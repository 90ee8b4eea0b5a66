"""Who is at the other end of the API socket: the peer's credentials and group membership."""

from __future__ import annotations

import grp
import pwd
import socket
import struct
from typing import Any


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    fmt = "iII"
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
    pid, uid, gid = struct.unpack(fmt, raw)
    return int(pid), int(uid), int(gid)


def proc_groups(pid: int) -> set[int] | None:
    """The peer's supplementary groups (SO_PEERCRED carries only the primary gid)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:] if g.isdigit()}
    except OSError:
        pass
    return None


def in_group(pid: int, uid: int, gid: int, group: int) -> bool:
    if gid == group:
        return True
    groups = proc_groups(pid)
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


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


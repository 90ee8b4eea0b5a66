"""Classic BPF programs from tcpdump filter expressions, ready for SO_ATTACH_FILTER.

libpcap does the compiling, reached through scapy's ctypes binding (no root, no interface
needed) or, where libpcap cannot be loaded into Python, through ``tcpdump -dd``.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass

# A sock_filter instruction: (code, jt, jf, k).
Insn = tuple[int, int, int, int]

_BPF_RET_K = 0x06  # BPF_RET | BPF_K
_WHOLE_PACKET = 0xFFFF_FFFF
_TCPDUMP_LINE = re.compile(r"\{\s*(0x[0-9a-f]+),\s*(\d+),\s*(\d+),\s*(0x[0-9a-f]+)\s*\},?")


@dataclass(frozen=True, slots=True)
class BpfProgram:
    """A compiled filter: the expression it came from and its instructions."""

    expression: str
    insns: tuple[Insn, ...]

    def pack(self) -> bytes:
        """The instructions as a C ``struct sock_filter[]``."""
        # libpcap hands out k as a signed int for constants >= 2**31 (e.g. MAC halves).
        return b"".join(
            struct.pack("=HBBI", c, jt, jf, k & 0xFFFFFFFF) for c, jt, jf, k in self.insns
        )


def compile_filter(expression: str, linktype: int = 1) -> BpfProgram:
    """Compile a tcpdump filter expression for ``linktype`` (1 = Ethernet).

    Raises ValueError naming the expression and libpcap's complaint when it does not parse.
    Accept returns are widened to the whole packet: the kernel cuts a frame to the filter's
    return value, and our own snaplen already bounds what is kept.
    """
    expr = expression.strip()
    if not expr:
        raise ValueError("empty capture filter: pass None to capture everything")
    try:
        insns = _compile_with_scapy(expr, linktype)
    except _BackendUnavailable:
        insns = _compile_with_tcpdump(expr, linktype)
    widened = tuple(
        (c, jt, jf, _WHOLE_PACKET) if c == _BPF_RET_K and k != 0 else (c, jt, jf, k)
        for c, jt, jf, k in insns
    )
    return BpfProgram(expr, widened)


def compile_optional(expression: str | None) -> BpfProgram | None:
    """compile_filter, with None or a blank expression meaning no filter (everything)."""
    if expression is None or not expression.strip():
        return None
    return compile_filter(expression)


class SockFprog:
    """A ``struct sock_fprog`` plus the instruction array it points to (kept alive here)."""

    def __init__(self, program: BpfProgram) -> None:
        self._insns = ctypes.create_string_buffer(program.pack())
        self.value = struct.pack("HP", len(program.insns), ctypes.addressof(self._insns))


class _BackendUnavailable(Exception):
    pass


def _compile_with_scapy(expr: str, linktype: int) -> list[Insn]:
    try:
        from scapy.arch.common import compile_filter as scapy_compile
        from scapy.error import Scapy_Exception
    except ImportError as exc:  # scapy missing or libpcap not loadable
        raise _BackendUnavailable(str(exc)) from exc
    try:
        prog = scapy_compile(expr, linktype=linktype)
    except ImportError as exc:
        raise _BackendUnavailable(str(exc)) from exc
    except Scapy_Exception as exc:
        raise ValueError(f"bad capture filter {expr!r}: {_pcap_reason(str(exc))}") from None
    return [
        (int(i.code), int(i.jt), int(i.jf), int(i.k))
        for i in (prog.bf_insns[n] for n in range(int(prog.bf_len)))
    ]


def _pcap_reason(message: str) -> str:
    # scapy wraps libpcap's message: "Failed to compile filter expression 'x' (reason)"
    m = re.search(r"\((.*)\)\s*$", message)
    return m.group(1) if m else message


def _compile_with_tcpdump(expr: str, linktype: int) -> list[Insn]:
    if linktype != 1:
        raise ValueError(
            f"cannot compile capture filter {expr!r}: tcpdump fallback is Ethernet-only"
        )
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise RuntimeError(
            "cannot compile capture filters: neither libpcap (via scapy) nor tcpdump is available"
        )
    # Without -i, tcpdump compiles against a dead Ethernet handle: no root or interface needed.
    proc = subprocess.run(
        [tcpdump, "-dd", "--", expr], capture_output=True, text=True, timeout=10, check=False
    )
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "rejected"
        reason = reason.removeprefix("tcpdump: ")
        raise ValueError(f"bad capture filter {expr!r}: {reason}")
    insns: list[Insn] = []
    for line in proc.stdout.splitlines():
        m = _TCPDUMP_LINE.fullmatch(line.strip())
        if m:
            insns.append((int(m[1], 16), int(m[2]), int(m[3]), int(m[4], 16)))
    if not insns:
        raise RuntimeError(f"tcpdump -dd printed no program for {expr!r}")
    return insns

"""`spyglass agent` (the privileged capture process), `spyglass status` (ask it how it is) and
`spyglass intercept` (choose the devices it ARP-intercepts)."""

from __future__ import annotations

import argparse
import faulthandler
import ipaddress
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from spyglass.cli.main import Command


def _add_agent(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "agent",
        help="capture live traffic (needs root or CAP_NET_RAW+CAP_NET_ADMIN)",
        description="Watch a network interface, detect audio uploads as they happen, store them "
        "and serve them to the tray app and CLI over a Unix socket.",
    )
    p.add_argument("--interface", "-i", required=True, metavar="IF", help="interface to capture on")
    p.add_argument("--mode", choices=("passive", "gateway", "intercept"), default="passive",
                   help="passive: a mirror port or this host's own view; gateway: this host "
                   "routes the devices; intercept: ARP-intercept chosen devices (opt-in)")
    p.add_argument("--lan", action="append", metavar="CIDR",
                   help="the home network (repeatable; default: the interface's own subnets)")
    p.add_argument("--socket", type=Path, metavar="PATH", help="API socket "
                   "(default: /run/spyglass/agent.sock, or $SPYGLASS_SOCKET)")
    p.add_argument("--db", type=Path, metavar="PATH", help="database file")
    p.add_argument("--group", default=None,
                   help="group allowed to use the socket (default: spyglass, if it exists)")
    p.add_argument("--watch", action="append", default=[], metavar="MAC",
                   help="also capture this device's traffic (repeatable)")
    p.add_argument("--watch-all", action="store_true",
                   help="capture every device's traffic, not just speakers'")
    p.add_argument("--target", action="append", default=[], metavar="IP",
                   help="intercept mode: a device to intercept (repeatable; also chosen "
                   "later with `spyglass intercept IP`, which the agent remembers)")
    p.add_argument("--router", metavar="IP",
                   help="intercept mode: the router (default: the interface's default gateway)")
    p.add_argument("--no-ring", action="store_true", help="don't use the mmap ring buffer")
    p.add_argument("--verbose", "-v", action="store_true")


def _run_agent(args: argparse.Namespace) -> int:
    from spyglass.api.protocol import default_socket_path
    from spyglass.capture.privileges import check_capture_privileges

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="spyglass-agent: %(levelname)s %(message)s", stream=sys.stderr)
    problem = check_capture_privileges()
    if problem:
        print(f"spyglass agent: {problem}", file=sys.stderr)
        return 77
    for cidr in args.lan or []:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            print(f"spyglass agent: --lan {cidr!r} is not a network (e.g. 192.168.1.0/24)",
                  file=sys.stderr)
            return 2
    if args.target and args.mode != "intercept":
        print("spyglass agent: --target only makes sense with --mode intercept", file=sys.stderr)
        return 2
    from spyglass.agent.runner import Agent, AgentConfig

    cfg = AgentConfig(
        interface=args.interface, mode=args.mode, lan=args.lan,
        socket_path=args.socket or Path(default_socket_path()), db_path=args.db,
        socket_group=args.group, watch_all=args.watch_all,
        watch=[m.lower() for m in args.watch], ring=not args.no_ring,
        targets=args.target, router=args.router,
    )
    try:
        agent = Agent(cfg)
    except ValueError as e:
        print(f"spyglass agent: {e}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("spyglass.agent").info("signal %d: stopping", signum)
        agent.stop_event.set()

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` dumps every thread's stack: hangs
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    from spyglass.capture.preflight import InterceptError

    try:
        return agent.run()
    except (OSError, ValueError, InterceptError) as e:
        print(f"spyglass agent: {e}", file=sys.stderr)
        return 1


def _add_status(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="ask the running agent how it is")
    p.add_argument("--socket", type=Path, metavar="PATH", help="the agent's socket")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def _ask_agent(
    args: argparse.Namespace, command: str, timeout: float, request: Callable[[Any], Any]
) -> Any:
    """``request(client)`` against the agent at ``--socket``; None (said on stderr) if it fails."""
    from spyglass.api.client import AgentClient, AgentError
    from spyglass.api.protocol import default_socket_path

    path = str(args.socket or default_socket_path())
    try:
        with AgentClient(path, timeout=timeout) as client:
            return request(client)
    except AgentError as e:
        print(f"spyglass {command}: {e}", file=sys.stderr)
        return None


def _run_status(args: argparse.Namespace) -> int:
    st = _ask_agent(args, "status", 5.0, lambda client: client.status())
    if st is None:
        return 1
    if args.json:
        print(json.dumps(st))
        return 0
    started = st.get("started")
    up = f", up {time.time() - started:.0f} s" if started else ""
    print(f"agent: {st.get('state')} on {st.get('interface')} ({st.get('mode')} mode{up})")
    print(f"LAN: {', '.join(st.get('lan') or [])}")
    print(f"packets: {st.get('packets', 0):,}  rate: {st.get('capture_rate_pps', 0):,.0f}/s  "
          f"kernel drops: {st.get('kernel_drops', 0):,}")
    dropped = st.get("dropped") or {}
    print(f"undecodable frames: {st.get('malformed', 0):,}  non-IP: {st.get('non_ip', 0):,}  "
          f"per-second points lost while the store was down: "
          f"{dropped.get('series_points', 0):,}")
    print(f"devices: {st.get('devices', 0)}  watched: {len(st.get('watched') or [])}  "
          f"uploads this run: {st.get('uploads', 0)}")
    until = st.get("discovery_until")  # null once the window is over
    if isinstance(until, int | float):
        clock = time.strftime("%H:%M:%S", time.localtime(until))
        print(f"discovery: all traffic until {clock}")
    if st.get("mode") == "intercept":
        now = ", ".join(st.get("intercepting") or []) or "nothing yet (`spyglass intercept IP`)"
        print(f"intercepting: {now}  router: {st.get('router')}")
    for prob in st.get("problems") or []:
        print(f"problem: {prob.get('message')}")
    return 0


# Choosing a device learns its MAC and may start the restore watchdog: seconds, not ms.
INTERCEPT_TIMEOUT_S = 30.0


def _add_intercept(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "intercept",
        help="choose (or with --off un-choose) a device the running agent ARP-intercepts",
        description="Tell an agent running with --mode intercept to put this host between the "
        "device and the router (ARP interception), or with --off to stop and restore the "
        "device's true ARP entries at once. The agent remembers the choice across restarts.",
    )
    p.add_argument("device", metavar="IP", help="the device's IPv4 address")
    p.add_argument("--off", action="store_true", help="stop intercepting it")
    p.add_argument("--socket", type=Path, metavar="PATH", help="the agent's socket")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def _run_intercept(args: argparse.Namespace) -> int:
    try:
        ip = str(ipaddress.IPv4Address(args.device.strip()))
    except ValueError:
        print(
            f"spyglass intercept: {args.device!r} is not an IPv4 address like 192.168.1.20",
            file=sys.stderr,
        )
        return 2
    result = _ask_agent(
        args, "intercept", INTERCEPT_TIMEOUT_S, lambda client: client.intercept(ip, on=not args.off)
    )
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result))
        return 0
    now = ", ".join(result.get("intercepting") or []) or "nothing"
    if args.off:
        print(f"no longer intercepting {ip}: its true ARP entries are being restored")
    else:
        print(f"intercepting {ip}")
    print(f"intercepting now: {now}")
    return 0


AGENT = Command(add_parser=_add_agent, run=_run_agent)
STATUS = Command(add_parser=_add_status, run=_run_status)
INTERCEPT = Command(add_parser=_add_intercept, run=_run_intercept)

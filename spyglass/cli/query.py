"""``spyglass devices`` and ``spyglass uploads``: what the store holds."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from spyglass.api.client import AgentClient, AgentError, AgentUnavailable
from spyglass.api.protocol import default_socket_path
from spyglass.cli import render
from spyglass.cli.main import Command
from spyglass.core.models import Device, Upload
from spyglass.store import paths
from spyglass.store.db import Store

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*(?:ago)?\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$", re.IGNORECASE)
WHEN_HELP = (
    "ISO date/time (2024-05-01, 2024-05-01T07:30), a span ago (30m, 2h, 3d, 1w), today, yesterday"
)


def parse_when(text: str, now: float | None = None) -> float:
    """A point in time from what a person types; naive dates and times are local."""
    now = time.time() if now is None else now
    word = text.strip().lower()
    # Calendar arithmetic on the naive local date, then the zone in force at that time: a DST
    # change between then and now does not shift midnight.
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "now":
        return now
    if word == "today":
        return midnight.astimezone().timestamp()
    if word == "yesterday":
        return (midnight - timedelta(days=1)).astimezone().timestamp()
    m = _SPAN.match(word)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2).lower()]
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        msg = f"cannot read the time {text!r}: use {WHEN_HELP}"
        raise argparse.ArgumentTypeError(msg) from None
    return (dt if dt.tzinfo else dt.astimezone()).timestamp()


class _AgentSource:
    """A running agent, read through its API (same calls as the Store's reads)."""

    def __init__(self, client: AgentClient) -> None:
        self.client = client

    def devices(self) -> list[Device]:
        return self.client.devices()

    def uploads(
        self, device: str | None = None, since: float | None = None, until: float | None = None
    ) -> list[Upload]:
        return list(self.client.uploads(device=device, since=since, until=until))

    def __enter__(self) -> _AgentSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()


def _agent_at(args: argparse.Namespace) -> _AgentSource | None:
    """The agent the user named with --socket (an error if absent), or the default one if it
    answers and no --db was given; None means read the store."""
    socket_path = getattr(args, "socket", None)
    if socket_path is None and args.db is None:
        default = Path(default_socket_path())
        if default.exists():
            socket_path = default
    if socket_path is None:
        return None
    client = AgentClient(str(socket_path), timeout=10.0)
    try:
        client.hello()
    except AgentError as e:
        client.close()
        if getattr(args, "socket", None) is not None:
            print(f"spyglass: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        if not isinstance(e, AgentUnavailable):
            print(f"spyglass: the agent at {socket_path} did not answer ({e}); reading the "
                  "store instead", file=sys.stderr)
        return None
    return _AgentSource(client)


def _open_existing(args: argparse.Namespace) -> Store | _AgentSource | None:
    agent = _agent_at(args)
    if agent is not None:
        return agent
    db: Path | None = args.db
    path = db if db is not None else paths.default_db_path()
    if not path.exists():
        return None
    return Store.open(path)


def _no_data(db: Path | None) -> None:
    path = db if db is not None else paths.default_db_path()
    print(
        f"No data yet: {path} does not exist. Run `spyglass analyze FILE` or `spyglass demo`.",
        file=sys.stderr,
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, metavar="PATH", help="database file (default: user data dir)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--socket", type=Path, metavar="PATH",
                   help="ask the agent listening here (default: the system agent when it runs)")


# -- devices -------------------------------------------------------------------------------------


def _add_devices(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "devices", help="list the devices seen", description="List the devices in the store."
    )
    _common(p)


def _run_devices(args: argparse.Namespace) -> int:
    store = _open_existing(args)
    if store is None:
        if args.json:
            print(json.dumps({"devices": []}))
        else:
            _no_data(args.db)
        return 0
    with store:
        devices = store.devices()
        per_device: dict[str, int] = {}
        for u in store.uploads():
            per_device[u.device_mac] = per_device.get(u.device_mac, 0) + 1
    if args.json:
        items = []
        for d in devices:
            item = render.device_json(d)
            item["uploads"] = per_device.get(d.mac, 0)
            items.append(item)
        print(json.dumps({"devices": items}))
    elif devices:
        print(render.devices_table(devices, per_device))
    else:
        print("No devices yet.")
    return 0


DEVICES = Command(add_parser=_add_devices, run=_run_devices)


# -- uploads -------------------------------------------------------------------------------------


def _add_uploads(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "uploads",
        help="list the audio uploads detected",
        description="List the audio uploads in the store, oldest first.",
    )
    p.add_argument("--device", metavar="MAC|NAME", help="one device, by MAC or name")
    p.add_argument("--since", type=parse_when, metavar="WHEN", help=WHEN_HELP)
    p.add_argument("--until", type=parse_when, metavar="WHEN", help="as --since")
    _common(p)


def resolve_device(devices: list[Device], text: str) -> str | None:
    """A MAC from a MAC (any case, - or :) or from a device's name, model or vendor."""
    if _MAC.match(text.strip()):
        return text.strip().lower().replace("-", ":")
    want = text.strip().casefold()
    for d in devices:
        if any(want == n.casefold() for n in d.names):
            return d.mac
    matches = [
        d.mac
        for d in devices
        if want in ((d.model or "").casefold(), (d.vendor or "").casefold())
    ]
    return matches[0] if len(matches) == 1 else None


def _run_uploads(args: argparse.Namespace) -> int:
    store = _open_existing(args)
    if store is None:
        if args.json:
            print(json.dumps({"uploads": []}))
        else:
            _no_data(args.db)
        return 0
    with store:
        devices = store.devices()
        mac = None
        if args.device:
            mac = resolve_device(devices, args.device)
            if mac is None:
                known = ", ".join(render.device_label(d, d.mac) for d in devices) or "none yet"
                print(
                    f"spyglass uploads: no single device matches {args.device!r} (known: {known})",
                    file=sys.stderr,
                )
                return 2
        uploads = store.uploads(mac, args.since, args.until)
    by_mac = {d.mac: d for d in devices}
    if args.json:
        print(json.dumps({"uploads": [render.upload_json(u, by_mac) for u in uploads]}))
    elif uploads:
        print(render.uploads_table(uploads, by_mac, with_id=True))
    else:
        print("No audio uploads in that range.")
    return 0


UPLOADS = Command(add_parser=_add_uploads, run=_run_uploads)

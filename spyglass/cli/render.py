"""Text for people: sizes, local times, tables, a progress bar; and the JSON shapes of records."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from spyglass.core.models import Device, Flow, Upload

# A bar is worth drawing only when reading takes a noticeable while.
PROGRESS_MIN_BYTES = 8 << 20
VERDICT_TEXT = {"me": "that was me", "nobody": "nobody spoke"}


def size(n: float) -> str:
    """1000-based, as network rates are quoted: "512 B", "4.5 KB", "31 KB", "2.3 MB"."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 9.95:
            return f"{n:.1f} {unit}"
        if n < 999.5 or unit == "TB":
            return f"{n:.0f} {unit}"
    return f"{n:.0f} TB"  # unreachable; keeps mypy sure of the return


def local_time(ts: float, *, date: bool = True) -> str:
    """Local wall-clock time with the zone: "2024-05-01 03:12:05 CEST"."""
    dt = datetime.fromtimestamp(ts).astimezone()
    return dt.strftime("%Y-%m-%d %H:%M:%S %Z" if date else "%H:%M:%S %Z")


def local_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s} s" if s else f"{m} min"
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h} h {rest // 60} min" if rest >= 60 else f"{h} h"


def count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; the columns in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  " + "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def device_label(device: Device | None, mac: str) -> str:
    """What a person calls a device: its name, else its model or vendor, with a MAC suffix."""
    if device is None:
        return mac
    label = (device.names[0] if device.names else None) or device.model or device.vendor
    return f"{label} ({mac[-8:]})" if label else mac


def destination(flow: Flow) -> str:
    return flow.remote_name or flow.remote_ip


# -- JSON shapes (shared by `analyze --json`, `devices --json`, `uploads --json`) ----------------


def device_json(d: Device) -> dict[str, Any]:
    return {
        "mac": d.mac,
        "vendor": d.vendor,
        "model": d.model,
        "kind": d.kind,
        "assistant": d.assistant,
        "names": list(d.names),
        "ips": list(d.ips),
        "evidence": list(d.evidence),
        "first_seen": d.first_seen or None,
        "last_seen": d.last_seen or None,
    }


def upload_json(u: Upload, devices: dict[str, Device]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "device": u.device_mac,
        "device_name": device_label(devices.get(u.device_mac), u.device_mac),
        "start": u.start,
        "end": u.end,
        "start_local": local_iso(u.start),
        "duration": round(u.duration, 3),
        "bytes": u.bytes_up,
        "peak_bps": u.peak_bps,
        "destination": u.destination,
        "remote_ip": u.remote_ip,
        "proto": u.proto,
        "port": u.port,
        "assistant": u.assistant,
        "confidence": round(u.confidence, 3),
        "evidence": list(u.evidence),
    }
    # Stored uploads carry their id and verdict (StoredUpload).
    for extra in ("id", "verdict"):
        if hasattr(u, extra):
            out[extra] = getattr(u, extra)
    return out


def flow_json(f: Flow) -> dict[str, Any]:
    return {
        "device": f.device_mac,
        "destination": destination(f),
        "remote_ip": f.remote_ip,
        "proto": f.proto,
        "port": f.remote_port,
        "bytes_up": f.bytes_up,
        "bytes_down": f.bytes_down,
        "packets_up": f.packets_up,
        "packets_down": f.packets_down,
        "first_seen": f.first_seen or None,
        "last_seen": f.last_seen or None,
    }


# -- tables --------------------------------------------------------------------------------------


def _some(items: Sequence[str], n: int) -> str:
    if not items:
        return "-"
    return ", ".join(items[:n]) + (f" (+{len(items) - n})" if len(items) > n else "")


def devices_table(devices: Sequence[Device], uploads_per_device: dict[str, int]) -> str:
    rows = [
        [
            d.mac,
            d.vendor or "-",
            d.model or "-",
            _some(d.names, 2),
            _some(d.ips, 2),
            local_time(d.last_seen) if d.last_seen else "-",
            str(uploads_per_device.get(d.mac, 0)),
        ]
        for d in devices
    ]
    headers = ["MAC", "VENDOR", "MODEL", "NAMES", "IPS", "LAST SEEN", "UPLOADS"]
    return table(headers, rows, right=(6,))


def uploads_table(
    uploads: Sequence[Upload], devices: dict[str, Device], *, with_id: bool = False
) -> str:
    rows = []
    for u in uploads:
        row = [
            local_time(u.start),
            duration(u.duration),
            size(u.bytes_up),
            device_label(devices.get(u.device_mac), u.device_mac),
            u.destination,
            u.assistant or "-",
            f"{u.confidence:.0%}",
        ]
        if with_id:
            verdict = VERDICT_TEXT.get(getattr(u, "verdict", None) or "", "-")
            row = [str(getattr(u, "id", "")), *row, verdict]
        rows.append(row)
    headers = ["WHEN", "DURATION", "SIZE", "DEVICE", "DESTINATION", "ASSISTANT", "CONFIDENCE"]
    right = [1, 2, 6]
    if with_id:
        headers = ["ID", *headers, "VERDICT"]
        right = [0, *(i + 1 for i in right)]
    return table(headers, rows, right=right)


def destinations_table(flows: Sequence[Flow], devices: dict[str, Device], per_device: int) -> str:
    """The top destinations by upstream bytes, ``per_device`` per device, busiest device first.

    Flows to several IPs behind one name (a CDN, a load balancer) count as one destination.
    """
    totals: dict[str, dict[tuple[str, str], list[int]]] = {}
    for f in flows:
        if f.bytes_up > 0:
            per = totals.setdefault(f.device_mac, {})
            cell = per.setdefault((destination(f), f"{f.proto}/{f.remote_port}"), [0, 0])
            cell[0] += f.bytes_up
            cell[1] += f.bytes_down
    order = sorted(totals, key=lambda m: -sum(c[0] for c in totals[m].values()))
    rows = []
    for mac in order:
        top = sorted(totals[mac].items(), key=lambda kv: -kv[1][0])[:per_device]
        for i, ((dest, proto), (up, down)) in enumerate(top):
            label = device_label(devices.get(mac), mac) if i == 0 else ""
            rows.append([label, dest, proto, size(up), size(down)])
    return table(["DEVICE", "DESTINATION", "PROTO", "UP", "DOWN"], rows, right=(3, 4))


class ProgressBar:
    """A one-line bar on a terminal, redrawn at most 10 times a second; silent elsewhere."""

    def __init__(self, stream: TextIO, label: str, *, width: int = 30) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self._last = 0.0
        self._drawn = False

    @classmethod
    def for_file(cls, stream: TextIO, label: str, file_size: int) -> ProgressBar | None:
        isatty = getattr(stream, "isatty", None)
        if file_size < PROGRESS_MIN_BYTES or not (isatty and isatty()):
            return None
        return cls(stream, label)

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        frac = min(1.0, done / total) if total > 0 else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {frac:4.0%} {size(done)}/{size(total)}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            # Erase the bar so what follows starts on a clean line.
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

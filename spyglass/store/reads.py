"""Reading: captures, devices, uploads, endpoint names, flows and per-second series."""

from __future__ import annotations

from typing import Any

from spyglass.core.models import Device, EndpointName, Flow, SeriesPoint
from spyglass.store.base import StoreBase
from spyglass.store.records import KEPT_NOTHING_CHANGED, StoredCapture, StoredUpload, json_list


class StoreReads(StoreBase):
    """The store's reading half (the CLI, and the API's read-only connections)."""

    def captures(self) -> list[StoredCapture]:
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            rows = self._conn.execute(
                "SELECT id, kind, path, fingerprint, size, packets, first_ts, last_ts, "
                "imported_at, problems FROM captures ORDER BY id"
            ).fetchall()
        return [
            StoredCapture(
                id=r[0], kind=r[1], path=r[2], fingerprint=r[3], size=r[4], packets=r[5],
                first_ts=r[6], last_ts=r[7], imported_at=r[8], problems=json_list(r[9]),
            )
            for r in rows
        ]

    def devices(self) -> list[Device]:
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            conn = self._conn
            ips: dict[str, list[str]] = {}
            for mac, ip in conn.execute(
                "SELECT device_mac, ip FROM device_ips ORDER BY device_mac, last_seen DESC, ip"
            ):
                ips.setdefault(mac, []).append(ip)
            rows = conn.execute(
                "SELECT mac, vendor, kind, model, assistant, names, evidence, first_seen, "
                "last_seen FROM devices ORDER BY mac"
            ).fetchall()
        return [
            Device(
                mac=r[0],
                vendor=r[1],
                kind=r[2],
                model=r[3],
                assistant=r[4],
                names=json_list(r[5]),
                ips=ips.get(r[0], []),
                evidence=json_list(r[6]),
                first_seen=r[7] or 0.0,
                last_seen=r[8] or 0.0,
            )
            for r in rows
        ]

    def uploads(
        self,
        device: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[StoredUpload]:
        """Uploads that start in [since, until), oldest first; ``device`` is a MAC."""
        where, args = self._window("start", device, since, until)
        return self._select_uploads(where, args)

    def upload(self, upload_id: int) -> StoredUpload | None:
        found = self._select_uploads("WHERE id = ?", [upload_id])
        return found[0] if found else None

    def _select_uploads(self, where: str, args: list[Any]) -> list[StoredUpload]:
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            rows = self._conn.execute(
                f'SELECT id, capture_id, device_mac, start, "end", bytes_up, peak_bps, '
                f"destination, remote_ip, proto, port, assistant, confidence, evidence, verdict "
                f"FROM uploads {where} ORDER BY start, id",
                args,
            ).fetchall()
        return [
            StoredUpload(
                device_mac=r[2],
                start=r[3],
                end=r[4],
                bytes_up=r[5],
                peak_bps=r[6],
                destination=r[7],
                remote_ip=r[8],
                proto=r[9],
                port=r[10],
                assistant=r[11],
                confidence=r[12],
                evidence=json_list(r[13]),
                id=r[0],
                verdict=r[14],
                capture_id=r[1],
            )
            for r in rows
        ]

    def endpoint_names(self, device: str | None = None) -> list[EndpointName]:
        where, args = self._window("last_seen", device, None, None)
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            rows = self._conn.execute(
                "SELECT device_mac, ip, name, source, first_seen, last_seen FROM endpoint_names "
                f"{where} ORDER BY device_mac, ip, name",
                args,
            ).fetchall()
        return [EndpointName(*r) for r in rows]

    def flows(
        self,
        device: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[Flow]:
        """Flows summed over captures, most upstream bytes first; names from DNS/SNI if missing."""
        clauses: list[str] = []
        args: list[Any] = []
        if device is not None:
            clauses.append("f.device_mac = ?")
            args.append(device)
        if since is not None:
            clauses.append("f.last_seen >= ?")
            args.append(since)
        if until is not None:
            clauses.append("f.first_seen < ?")
            args.append(until)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        sql = (
            "SELECT f.device_mac, f.remote_ip, f.proto, f.remote_port, "
            "SUM(f.packets_up), SUM(f.bytes_up), SUM(f.packets_down), SUM(f.bytes_down), "
            "MIN(f.first_seen), MAX(f.last_seen), COALESCE(MAX(f.remote_name), "
            "(SELECT e.name FROM endpoint_names e WHERE e.device_mac = f.device_mac "
            "AND e.ip = f.remote_ip ORDER BY e.source = 'sni' DESC, e.last_seen DESC LIMIT 1)) "
            f"FROM flows f {where} GROUP BY f.device_mac, f.remote_ip, f.proto, f.remote_port "
            "ORDER BY SUM(f.bytes_up) DESC, f.device_mac, f.remote_ip"
        )
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            rows = self._conn.execute(sql, args).fetchall()
        return [
            Flow(
                device_mac=r[0], remote_ip=r[1], proto=r[2], remote_port=r[3],
                packets_up=r[4], bytes_up=r[5], packets_down=r[6], bytes_down=r[7],
                first_seen=r[8] or 0.0, last_seen=r[9] or 0.0, remote_name=r[10],
            )
            for r in rows
        ]

    def series(
        self,
        device: str | None,
        since: float | None = None,
        until: float | None = None,
        resolution_s: int = 1,
        remote_ip: str | None = None,
    ) -> list[SeriesPoint]:
        """Per-bucket sums of ``resolution_s`` seconds, oldest first.

        ``device`` None sums all devices and ``remote_ip`` None sums all remotes; the summed
        field then reads "*". Buckets start at multiples of ``resolution_s``.
        """
        if resolution_s < 1:
            raise ValueError(f"resolution must be at least 1 s, not {resolution_s}")
        where, args = self._window("second", device, since, until)
        if remote_ip is not None:
            where += (" AND " if where else "WHERE ") + "remote_ip = ?"
            args.append(remote_ip)
        res = int(resolution_s)
        with self._guard("reading", KEPT_NOTHING_CHANGED):
            rows = self._conn.execute(
                f"SELECT (second / {res}) * {res} AS t, SUM(bytes_up), SUM(bytes_down), "
                f"SUM(packets_up), SUM(packets_down) FROM series {where} GROUP BY t ORDER BY t",
                args,
            ).fetchall()
        mac = device if device is not None else "*"
        ip = remote_ip if remote_ip is not None else "*"
        return [SeriesPoint(mac, ip, r[0], r[1], r[2], r[3], r[4]) for r in rows]

    @staticmethod
    def _window(
        column: str, device: str | None, since: float | None, until: float | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if device is not None:
            clauses.append("device_mac = ?")
            args.append(device)
        if since is not None:
            clauses.append(f'"{column}" >= ?')
            args.append(since)
        if until is not None:
            clauses.append(f'"{column}" < ?')
            args.append(until)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args

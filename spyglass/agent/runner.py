"""The agent's main loop: live capture → pipeline → store, with the API serving what it finds.

One thread captures and analyses (never waits for a client or the disk for long); the API
server runs its own thread and reads the store through its own connections. Writes happen once
a second in one transaction, so a killed agent loses at most the last second.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spyglass.adapters.oui import vendor_for_mac
from spyglass.agent.controls import WATCH_SETTING, Command, ControlOps, set_verdict
from spyglass.agent.server import AgentServer, StoreBackend
from spyglass.agent.watch import WatchSet
from spyglass.api.convert import device_to_dict, upload_to_dict
from spyglass.capture.live import InterfaceGone, interface_subnets, open_capture_source
from spyglass.core.models import Device, EndpointName, Flow, SeriesPoint, Upload
from spyglass.core.pipeline import Pipeline
from spyglass.store.db import Store, StoreError

if TYPE_CHECKING:
    from spyglass.capture.intercept import Interceptor

log = logging.getLogger("spyglass.agent")

MODES = ("passive", "gateway", "intercept")
WRITE_EVERY_S = 1.0
RETRY_STORE_S = 5.0
REOPEN_EVERY_S = 2.0
DISCOVERY_WINDOW_S = 30.0  # capture everything this long at start, then only watched devices
MAX_PENDING_SERIES = 600_000  # ~ 10 min of 1000 device/remote pairs; oldest dropped past that


@dataclass(slots=True)
class AgentConfig:
    interface: str
    mode: str = "passive"
    lan: list[str] | None = None
    socket_path: Path = Path("/run/spyglass/agent.sock")
    db_path: Path | None = None
    socket_group: str | None = None  # None: group "spyglass" when it exists
    watch_all: bool = False
    watch: list[str] = field(default_factory=list)  # MACs the user added
    ring: bool = True
    targets: list[str] = field(default_factory=list)  # intercept mode: device IPs (may be none)
    router: str | None = None  # intercept mode: the router's IP (default: the default route)


@dataclass(slots=True)
class _Pending:
    """What the pipeline produced that the store has not taken yet (disk full, locked)."""

    series: deque[SeriesPoint] = field(default_factory=deque)
    uploads: list[Upload] = field(default_factory=list)
    flows: dict[tuple[str, str, str, int], Flow] = field(default_factory=dict)  # running totals
    names: list[EndpointName] = field(default_factory=list)
    dropped_series: int = 0

    def add_series(self, points: list[SeriesPoint]) -> None:
        self.series.extend(points)
        while len(self.series) > MAX_PENDING_SERIES:
            self.series.popleft()
            self.dropped_series += 1


def _fingerprint(d: Device) -> int:
    return hash(
        (
            d.vendor,
            d.kind,
            d.model,
            d.assistant,
            tuple(d.names),
            tuple(d.ips),
            tuple(d.evidence),
            d.first_seen,
            d.last_seen,
        )
    )


class Agent(ControlOps):
    def __init__(
        self, cfg: AgentConfig, *, publish_hook: Callable[[str, dict[str, Any]], None] | None = None
    ) -> None:
        if cfg.mode not in MODES:
            raise ValueError(f"unknown mode {cfg.mode!r}: choose one of {', '.join(MODES)}")
        self.cfg = cfg
        self.stop_event = threading.Event()
        self._publish_hook = publish_hook
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {
            "mode": cfg.mode,
            "interface": cfg.interface,
            "state": "starting",
            "packets": 0,
            "bytes": 0,
            "kernel_drops": 0,
            "capture_rate_pps": 0.0,
            "malformed": 0,
            "non_ip": 0,
            "devices": 0,
            "uploads": 0,
            "watched": [],
            "problems": [],
            # What never reached the store, by cause: frames the kernel dropped, frames whose
            # headers could not be decoded, per-second points shed while the store was down.
            "dropped": {
                "kernel": 0,
                "malformed": 0,
                "series_points": 0,
                "devices_over_cap": 0,
                "packets_of_those": 0,
            },
        }
        self.server: AgentServer | None = None
        # Work the API's worker threads hand to the capture thread (which owns the pipeline,
        # the watch list and the store's writer).
        self._commands: queue.Queue[Command] = queue.Queue()
        self._announced_starts: set[tuple[str, str, str, int, int]] = set()
        self._shed_series = 0  # per-second points dropped while the store was down, this run
        # mac -> fingerprint of the record last stored: rewriting every device each second
        # costs ~1 s a second once a flood of made-up MACs has filled the inventory.
        self._stored_devices: dict[str, int] = {}
        # Intercept mode: the interceptor (started at the first chosen device) and the devices
        # chosen through the API, which the store remembers (--target ones are not saved).
        self._icpt: Interceptor | None = None
        self._chosen: list[str] = []
        self._narrowed = False  # the discovery window is over: the capture filter is in force

    # -- status and events -------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status)

    def _set(self, **kv: Any) -> None:
        with self._lock:
            self._status.update(kv)

    def _problem(self, kind: str, message: str) -> None:
        log.warning("%s", message)
        with self._lock:
            probs = [p for p in self._status["problems"] if p["kind"] != kind]
            probs.append({"kind": kind, "message": message, "t": time.time()})
            self._status["problems"] = probs[-10:]
        self._publish("capture_problem", {"kind": kind, "message": message})

    def _clear_problem(self, kind: str) -> None:
        with self._lock:
            before = self._status["problems"]
            self._status["problems"] = [p for p in before if p["kind"] != kind]
            cleared = len(before) != len(self._status["problems"])
        if cleared:
            log.info("%s: working again", kind)

    def _publish(self, event: str, data: dict[str, Any]) -> None:
        if self.server is not None:
            self.server.publish(event, data)
        if self._publish_hook is not None:
            self._publish_hook(event, data)

    # -- main loop ---------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.cfg
        lan = cfg.lan or interface_subnets(cfg.interface)
        store = Store.open(cfg.db_path)
        capture_id = store.live_capture(cfg.interface)
        pipe = Pipeline(lan=lan, vendor_lookup=vendor_for_mac, keep_uploads=False)
        watch = WatchSet(watch_all=cfg.watch_all)
        for mac in [*cfg.watch, *json.loads(store.get_setting(WATCH_SETTING, "[]") or "[]")]:
            watch.add(mac, by_user=True)
        self._set(lan=lan, db=str(store.path), watched=sorted(watch.macs()))
        backend = StoreBackend(store, self.status)
        controls = {
            "watch": lambda prm: self._call(lambda: self._watch(store, watch, cap, prm)),
            "verdict": lambda prm: self._call(lambda: set_verdict(store, prm)),
            "sweep": lambda prm: self._sweep(),
            "intercept": lambda prm: self._intercept_control(
                lambda: self._intercept(store, watch, pipe, cap, prm)
            ),
        }
        self.server = AgentServer(
            cfg.socket_path, backend, group=cfg.socket_group, controls=controls
        )
        interceptor = self._start_intercept(store, watch) if cfg.mode == "intercept" else None
        try:
            # Devices that were already talking announce themselves only now and then (ARP
            # every few minutes): see everything for a while so they are found at once.
            cap = open_capture_source(cfg.interface, None, ring=cfg.ring)
            self.server.start()  # only now: "the agent answers" means "the agent captures"
        except BaseException:
            if interceptor is not None:
                interceptor.close()
            backend.close()
            store.close()
            raise
        narrow_at: float | None = time.monotonic() + DISCOVERY_WINDOW_S
        log.info(
            "capturing on %s (%s mode), LAN %s, API on %s",
            cfg.interface,
            cfg.mode,
            ", ".join(lan),
            cfg.socket_path,
        )
        started = time.time()
        self._set(state="capturing", started=started, discovery_until=started + DISCOVERY_WINDOW_S)
        pending = _Pending()
        next_write = time.monotonic() + WRITE_EVERY_S
        store_ok = True
        rate_window: deque[tuple[float, int]] = deque(maxlen=50)
        try:
            while not self.stop_event.is_set():
                try:
                    batch = cap.read_batch(timeout_s=0.2)
                except InterfaceGone as gone:
                    self._problem(
                        "interface", f"capture: {gone}; retrying every {REOPEN_EVERY_S:.0f} s"
                    )
                    if not self._reopen(cap):
                        break
                    self._clear_problem("interface")
                    continue
                self._run_commands()
                done = pipe.feed(batch) if len(batch) else pipe.advance(time.time())
                pending.uploads.extend(done)
                if done and store_ok:
                    next_write = 0.0  # an upload is news: store and announce it now
                if narrow_at is not None and time.monotonic() >= narrow_at:
                    # The window runs its full length whatever watch ops came meanwhile: the
                    # watch list as it is now takes effect here.
                    narrow_at = None
                    self._narrowed = True
                    self._apply_filter(cap, watch)
                    self._set(discovery_until=None)
                self._events(pipe, watch, cap, narrowed=narrow_at is None)
                now = time.monotonic()
                if now >= next_write:
                    next_write = now + (WRITE_EVERY_S if store_ok else RETRY_STORE_S)
                    pending.add_series(pipe.drain_series())
                    store_ok = self._write(store, capture_id, pipe, pending)
                    pipe.compact()
                    st = cap.stats()
                    rate_window.append((now, pipe.stats.packets))
                    t0, n0 = rate_window[0]
                    rate = (pipe.stats.packets - n0) / (now - t0) if now > t0 else 0.0
                    ps = pipe.stats
                    self._set(
                        packets=ps.packets,
                        bytes=ps.bytes,
                        kernel_drops=st.drops,
                        capture_rate_pps=round(rate, 1),
                        malformed=ps.malformed,
                        non_ip=ps.non_ip,
                        devices=len(pipe.inventory),
                        store_ok=store_ok,
                        dropped={
                            "kernel": st.drops,
                            "malformed": ps.malformed,
                            "series_points": self._shed_series,
                            "devices_over_cap": pipe.inventory.refused,
                            "packets_of_those": ps.refused_packets,
                        },
                    )
        finally:
            self._set(state="stopping")
            self._cancel_commands()
            pending.uploads.extend(pipe.flush())
            pending.add_series(pipe.drain_series(final=True))
            self._write(store, capture_id, pipe, pending)
            if interceptor is not None:
                interceptor.close()  # restores the devices' and the router's ARP entries
            cap.close()
            self.server.stop()
            backend.close()
            store.close()
            log.info(
                "stopped: %d packets, %d uploads", pipe.stats.packets, self.status()["uploads"]
            )
        return 0

    def _reopen(self, cap: Any) -> bool:
        """Retry until the interface is back (True) or the agent is told to stop (False)."""
        while not self.stop_event.wait(REOPEN_EVERY_S):
            try:
                cap.reopen(attempts=1, delay_s=0.0)
                return True
            except InterfaceGone:
                continue
            except OSError as e:
                log.debug("reopen failed: %s", e)
        return False

    def _apply_filter(self, cap: Any, watch: WatchSet) -> None:
        log.info("watching %s", ", ".join(sorted(watch.macs())) or "nothing yet (discovery only)")
        try:
            # The capture keeps it: a reopen after an unplug attaches it again.
            cap.set_filter(watch.filter_expression())
        except (OSError, ValueError) as e:
            self._problem("filter", f"capture filter not updated: {e}")
        self._set(watched=sorted(watch.macs()))

    def _events(self, pipe: Pipeline, watch: WatchSet, cap: Any, *, narrowed: bool) -> None:
        """Device and upload-started events, and the watch list following identification."""
        new = pipe.inventory.pop_new()
        changed = False
        for mac in new:
            if pipe.inventory.is_speaker(mac):
                changed |= watch.add(mac)
        if new:
            devices = {d.mac: d for d in pipe.inventory.devices(new)}
            for mac in new:
                if mac in devices:
                    self._publish("device_seen", device_to_dict(devices[mac]))
        if changed:
            if narrowed:
                self._apply_filter(cap, watch)
            else:
                self._set(watched=sorted(watch.macs()))
        for key, start in pipe.detector.in_progress():
            if key not in self._announced_starts:
                self._announced_starts.add(key)
                name = pipe.names.name_for(key[0], key[1])
                self._publish(
                    "upload_started",
                    {
                        "device": key[0],
                        "start": start,
                        "destination": name or key[1],
                        "remote_ip": key[1],
                        "proto": key[2],
                        "port": key[3],
                    },
                )
        if len(self._announced_starts) > 1000:
            live = {k for k, _ in pipe.detector.in_progress()}
            self._announced_starts &= live

    def _write(self, store: Store, capture_id: int, pipe: Pipeline, pending: _Pending) -> bool:
        stored = self._stored_devices
        changed = [(d, m) for d in pipe.devices() if stored.get(d.mac) != (m := _fingerprint(d))]
        devices: list[Device] = [d for d, _ in changed]
        pending.flows.update(
            {(f.device_mac, f.remote_ip, f.proto, f.remote_port): f for f in pipe.changed_flows()}
        )
        pending.names.extend(pipe.changed_names())
        try:
            ids = store.write_live(
                capture_id,
                devices=devices,
                names=pending.names,
                flows=list(pending.flows.values()),
                series=list(pending.series),
                uploads=pending.uploads,
            )
        except StoreError as e:
            self._problem(
                "store",
                f"{e}; capture goes on, data is kept in memory and written "
                "when the store accepts it",
            )
            return False
        stored.update((d.mac, m) for d, m in changed)
        for uid, up in zip(ids, pending.uploads, strict=True):
            data = upload_to_dict(up)
            data["id"] = uid
            self._publish("upload_ended", data)
        if pending.dropped_series:
            self._shed_series += pending.dropped_series
            self._problem(
                "store",
                f"{pending.dropped_series} per-second points were dropped "
                "while the store was unavailable",
            )
        else:
            self._clear_problem("store")
        with self._lock:
            self._status["uploads"] += len(pending.uploads)
        pending.series.clear()
        pending.uploads = []
        pending.flows.clear()
        pending.names = []
        pending.dropped_series = 0
        return True

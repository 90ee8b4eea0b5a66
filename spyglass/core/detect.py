"""Streaming audio-upload detector.

What a voice upload looks like on the wire, in every labelled capture we have (Echo, Echo
Dot/Spot/Studio, Nest Mini, HomePod): after the wake word the speaker *streams* the audio — a
sustained run of upstream media packets on one connection, paced every 10–70 ms, for 1.5–6 s
(Opus frames of ~120–400 B on TCP/443 for Alexa and Siri; 1.3 KB QUIC datagrams on UDP/443 for
Google). App and button interactions, metrics posts and music starts send the same or more bytes
in one second, but as one or two bursts: they do not fill the time. So the decision rests on how
long upstream media is *sustained*, not on bytes per second.

Input is pre-binned by the pipeline: per flow (device, remote IP, protocol, remote port) and per
100 ms, the upstream media packets (payload >= ``min_payload``), their bytes, all upstream frame
bytes, and downstream frame bytes. A run of activity on a flow ends after ``gap_s`` without
upstream media; a run is an upload when it filled at least ``min_active_bins`` bins with media
and carried at least ``min_bytes`` and ``min_packets``; one device's uploads less than
``merge_gap_s`` apart are one utterance. Decision latency: a run is judged ``gap_s`` (1 s) after
its last media packet and reported once ``merge_gap_s`` (1.5 s) has passed with nothing to merge,
so a live upload is reported under 2 s after it ends; that it is under way is known once
``min_active_bins`` bins (1.2 s) have filled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from spyglass.core.endpoints import Role
from spyglass.core.models import Upload

FlowKey = tuple[str, str, str, int]  # device MAC, remote IP, "tcp"/"udp", remote port
# One connection: a FlowKey plus the device's local port. Speech rides one connection; keying by
# connection keeps a string of short exchanges on several connections to one IP from adding up
# to a "sustained" stream.
ConnKey = tuple[str, str, str, int, int]


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    bin_s: float = 0.1
    min_payload: int = 60  # smaller upstream payloads are ACKs and keepalives, not media
    gap_s: float = 1.0  # a stream has ended after this long without upstream media
    min_active_bins: int = 12  # >= 1.2 s of 100-ms slots carrying media (voice in data: >= 16)
    min_bytes: int = 10_000  # upstream frame bytes in the run
    min_packets: int = 30  # upstream media packets in the run
    merge_gap_s: float = 1.5  # one device's streams closer than this are one utterance
    max_duration_s: float = 90.0  # longer streams are calls or cameras, not an utterance
    answer_window_s: float = 1.0  # downstream bytes this close to the stream's end = a reply
    answer_min_bytes: int = 1_000


@dataclass(frozen=True, slots=True)
class DestinationHint:
    """What the pipeline knows about a flow's far end and device when a run is judged."""

    name: str | None
    role: Role
    assistant: str | None  # from the destination name, else from the device
    device_is_speaker: bool


HintFn = Callable[[ConnKey], DestinationHint]


@dataclass(slots=True)
class _Run:
    start: float
    last_media: float
    active_bins: int = 0
    media_packets: int = 0
    media_bytes: int = 0
    up_bytes: int = 0
    down_bytes_near_end: int = 0
    last_bin: float = -1.0
    per_second: dict[int, int] = field(default_factory=dict)
    down_tail: list[tuple[float, int]] = field(default_factory=list)

    def span_bins(self, bin_s: float) -> int:
        return int(round((self.last_media - self.start) / bin_s)) + 1


class UploadDetector:
    """Feed bins in time order with :meth:`observe`; collect uploads from :meth:`advance`."""

    def __init__(self, hint: HintFn, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._hint = hint
        self._runs: dict[ConnKey, _Run] = {}
        self._pending: dict[str, list[Upload]] = {}  # per device: judged, waiting for overlaps
        self.now = 0.0

    # -- input -------------------------------------------------------------------------
    def observe(
        self,
        t: float,
        key: ConnKey,
        media_packets: int,
        media_bytes: int,
        up_bytes: int,
        down_bytes: int,
    ) -> list[Upload]:
        """One 100-ms bin of one connection starting at ``t``. Returns uploads that became final."""
        return self.observe_bins(
            [t], [key], [media_packets], [media_bytes], [up_bytes], [down_bytes]
        )

    def observe_bins(
        self,
        times: list[float],
        keys: list[ConnKey],
        media_packets: list[int],
        media_bytes: list[int],
        up_bytes: list[int],
        down_bytes: list[int],
    ) -> list[Upload]:
        """Bins of connections in time order (see :meth:`observe`), in one loop: a batch has
        tens of thousands, and one method call each cost more than the step itself."""
        gap = self.config.gap_s
        runs = self._runs
        done: list[Upload] = []
        now = self.now
        for t, key, mp, mb, ub, db in zip(
            times, keys, media_packets, media_bytes, up_bytes, down_bytes, strict=True
        ):
            if t > now:
                now = t
            run = runs.get(key)
            if run is not None and t - run.last_media > gap:
                self.now = now
                done.extend(self._close(key, run))
                run = None
            if mp > 0:
                if run is None:
                    run = runs[key] = _Run(start=t, last_media=t)
                if t != run.last_bin:
                    run.active_bins += 1
                    run.last_bin = t
                run.last_media = t
                run.media_packets += mp
                run.media_bytes += mb
            if run is not None:
                run.up_bytes += ub
                sec = int(t)
                per_second = run.per_second
                per_second[sec] = per_second.get(sec, 0) + ub
                if db:
                    run.down_tail.append((t, db))
        self.now = now
        return done

    def advance(self, now: float) -> list[Upload]:
        """Time has reached ``now`` (live clock or the file's last packet): judge idle runs."""
        if now > self.now:
            self.now = now
        done: list[Upload] = []
        for key in [k for k, r in self._runs.items() if now - r.last_media > self.config.gap_s]:
            done.extend(self._close(key, self._runs[key]))
        done.extend(self._release())
        return done

    def flush(self) -> list[Upload]:
        """End of input: judge every open run and release everything pending."""
        done: list[Upload] = []
        for key in list(self._runs):
            done.extend(self._close(key, self._runs[key]))
        for device in list(self._pending):
            done.extend(self._pending.pop(device))
        return sorted(done, key=lambda u: u.start)

    def is_watching(self, key: ConnKey) -> bool:
        """Whether a stream on ``key`` is open (its downstream bytes matter for the reply)."""
        return key in self._runs

    def in_progress(self) -> list[tuple[ConnKey, float]]:
        """Flows whose current run already qualifies by length: (key, start). For live status."""
        cfg = self.config
        return [
            (k, r.start)
            for k, r in self._runs.items()
            if r.active_bins >= cfg.min_active_bins and r.media_bytes >= cfg.min_bytes // 2
        ]

    # -- judging -----------------------------------------------------------------------
    def _close(self, key: ConnKey, run: _Run) -> list[Upload]:
        del self._runs[key]
        upload = self._judge(key, run)
        if upload is None:
            return []
        pending = self._pending.setdefault(key[0], [])
        for other in pending:
            if upload.start <= other.end + self.config.merge_gap_s and other.start <= upload.end:
                _merge_into(other, upload)
                return []
        pending.append(upload)
        return []

    def _release(self) -> list[Upload]:
        """Emit pending uploads no open run of the same device could still overlap."""
        out: list[Upload] = []
        for device in list(self._pending):
            open_starts = [r.start for k, r in self._runs.items() if k[0] == device]
            keep: list[Upload] = []
            for up in self._pending[device]:
                reach = up.end + self.config.merge_gap_s
                if self.now < reach or any(s <= reach for s in open_starts):
                    keep.append(up)
                else:
                    out.append(up)
            if keep:
                self._pending[device] = keep
            else:
                del self._pending[device]
        return out

    def _judge(self, key: ConnKey, run: _Run) -> Upload | None:
        cfg = self.config
        duration = run.last_media - run.start + cfg.bin_s
        if (
            run.active_bins < cfg.min_active_bins
            or run.media_bytes < cfg.min_bytes
            or run.media_packets < cfg.min_packets
            or duration > cfg.max_duration_s
        ):
            return None
        hint = self._hint(key)
        if hint.role is Role.NOT_AUDIO:
            return None
        if not hint.device_is_speaker and hint.role is not Role.VOICE:
            return None  # a laptop's video call is not what Spyglass reports
        fill = run.active_bins / max(run.span_bins(cfg.bin_s), 1)
        answer = sum(b for t, b in run.down_tail if t >= run.last_media - cfg.answer_window_s)
        evidence = [
            f"upstream media sustained {run.active_bins * cfg.bin_s:.1f} s "
            f"({run.active_bins} of {run.span_bins(cfg.bin_s)} 100-ms slots, "
            f"{run.media_packets} packets, {run.media_bytes} B payload)",
        ]
        confidence = 0.6
        if run.active_bins >= 2 * cfg.min_active_bins:
            confidence += 0.1
            evidence.append(f"long stream (>= {2 * cfg.min_active_bins * cfg.bin_s:.1f} s)")
        if fill >= 0.8:
            confidence += 0.1
            evidence.append(f"evenly paced ({fill:.0%} of slots filled)")
        if hint.role is Role.VOICE:
            confidence += 0.15
            evidence.append(f"destination {hint.name} is a {hint.assistant} voice endpoint")
        if answer >= cfg.answer_min_bytes:
            confidence += 0.05
            evidence.append(f"reply of {answer} B downstream as the stream ended")
        if hint.device_is_speaker:
            evidence.append("device is a smart speaker")
        proto, port = key[2], key[3]
        if proto == "udp" and port == 443:
            evidence.append("QUIC (UDP/443)")
        return Upload(
            device_mac=key[0],
            start=round(run.start, 3),
            end=round(run.last_media + cfg.bin_s, 3),
            bytes_up=run.up_bytes,
            peak_bps=max(run.per_second.values(), default=0),
            destination=hint.name or key[1],
            remote_ip=key[1],
            proto=proto,
            port=port,
            assistant=hint.assistant,
            confidence=round(min(confidence, 0.99), 2),
            evidence=evidence,
        )


def _merge_into(into: Upload, other: Upload) -> None:
    """Two flows of one device streaming at once are one utterance: keep the larger's identity."""
    if other.bytes_up > into.bytes_up:
        into.destination, into.remote_ip = other.destination, other.remote_ip
        into.proto, into.port = other.proto, other.port
        into.assistant = other.assistant or into.assistant
    into.start = min(into.start, other.start)
    into.end = max(into.end, other.end)
    into.bytes_up += other.bytes_up
    into.peak_bps = max(into.peak_bps, other.peak_bps)
    into.confidence = max(into.confidence, other.confidence)
    into.evidence.append(f"also streamed to {other.destination} at the same time")

"""The detector on hand-built bin streams shaped like the real captures' voice and app traffic."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spyglass.core.detect import ConnKey, DestinationHint, DetectorConfig, UploadDetector
from spyglass.core.endpoints import Role
from spyglass.core.models import Upload

KEY: ConnKey = ("68:db:f5:00:00:01", "52.94.233.109", "tcp", 443, 40001)
OTHER: ConnKey = ("68:db:f5:00:00:01", "52.46.136.99", "tcp", 443, 40002)


def hint_for(role: Role = Role.UNKNOWN, speaker: bool = True, name: str | None = None):
    def hint(key: ConnKey) -> DestinationHint:
        return DestinationHint(name, role, "alexa", speaker)

    return hint


def stream(det: UploadDetector, key: ConnKey, t0: float, seconds: float, pkts: int = 6,
           size: int = 118) -> list:
    """Voice-like: every 100-ms bin carries ``pkts`` media packets of ``size`` bytes."""
    out = []
    for k in range(int(seconds * 10)):
        out += det.observe(t0 + k * 0.1, key, pkts, pkts * size, pkts * (size + 54), 200)
    return out


def burst(det: UploadDetector, key: ConnKey, t: float, pkts: int = 9) -> list:
    """App-like: one bin of full-size segments."""
    return det.observe(t, key, pkts, pkts * 1460, pkts * 1514, 0)


def test_sustained_stream_is_an_upload_with_every_field_filled() -> None:
    det = UploadDetector(hint_for(Role.VOICE, name="bob-dispatch-prod-na.amazon.com"))
    assert stream(det, KEY, 1000.0, 2.0) == []
    assert det.advance(1001.5) == []  # not idle long enough yet
    assert det.advance(1003.3) == []  # judged, but a follow-on could still merge
    (up,) = det.advance(1003.6)
    assert up.device_mac == KEY[0] and up.remote_ip == KEY[1]
    assert up.start == 1000.0 and abs(up.end - 1002.0) < 1e-9
    assert up.bytes_up == 20 * 6 * 172
    assert up.peak_bps == 10 * 6 * 172
    assert up.destination == "bob-dispatch-prod-na.amazon.com"
    assert up.assistant == "alexa"
    assert 0.8 <= up.confidence <= 0.99
    assert any("voice endpoint" in e for e in up.evidence)


def test_bursts_of_an_app_interaction_are_not_uploads() -> None:
    det = UploadDetector(hint_for())
    for t in (10.0, 10.5, 20.9, 21.8, 21.9):
        burst(det, KEY, t)
    assert det.flush() == []


def test_short_or_thin_streams_are_not_uploads() -> None:
    det = UploadDetector(hint_for())
    stream(det, KEY, 0.0, 1.1)  # 11 bins < 12
    stream(det, OTHER, 50.0, 3.0, pkts=1, size=60)  # long but only 30 x 60 B
    assert det.flush() == []


def test_metrics_endpoint_and_non_speaker_are_not_reported() -> None:
    det = UploadDetector(hint_for(Role.NOT_AUDIO, name="device-metrics-us.amazon.com"))
    stream(det, KEY, 0.0, 3.0)
    assert det.flush() == []
    det = UploadDetector(hint_for(Role.UNKNOWN, speaker=False))
    stream(det, KEY, 0.0, 3.0)
    assert det.flush() == []


def test_pause_shorter_than_gap_keeps_one_upload_longer_splits() -> None:
    det = UploadDetector(hint_for())
    stream(det, KEY, 0.0, 2.0)
    stream(det, KEY, 3.3, 2.0)  # 1.4 s pause: same utterance
    stream(det, KEY, 10.0, 2.0)  # a new one
    ups = det.flush()
    assert [round(u.start, 1) for u in ups] == [0.0, 10.0]


def test_two_flows_at_once_make_one_upload() -> None:
    det = UploadDetector(hint_for())
    for k in range(25):
        det.observe(k * 0.1, KEY, 6, 700, 1000, 0)
        det.observe(k * 0.1, OTHER, 3, 400, 600, 0)
    ups = det.advance(10.0)
    assert len(ups) == 1
    assert ups[0].remote_ip == KEY[1]
    assert any("also streamed" in e for e in ups[0].evidence)


def test_stream_longer_than_max_is_not_an_utterance() -> None:
    det = UploadDetector(hint_for(), DetectorConfig(max_duration_s=5.0))
    stream(det, KEY, 0.0, 8.0)
    assert det.flush() == []


def test_in_progress_reports_a_qualifying_open_stream() -> None:
    det = UploadDetector(hint_for())
    stream(det, KEY, 0.0, 1.5)
    assert det.in_progress() == [(KEY, 0.0)]


def test_endpoint_roles() -> None:
    from spyglass.core.endpoints import classify

    assert classify("bob-dispatch-prod-na.amazon.com.").role is Role.VOICE
    assert classify("Avs-Alexa-14-NA.amazon.com").assistant == "alexa"
    assert classify("origin.guzzoni-apple.com.akadns.net").assistant == "siri"
    assert classify("device-metrics-us-2.amazon.com").role is Role.NOT_AUDIO
    assert classify("mesu.apple.com").role is Role.NOT_AUDIO
    assert classify("amazon.com").role is Role.UNKNOWN
    assert classify(None).role is Role.UNKNOWN


Bin = tuple[int, int, int, int, int]  # 100-ms bin index, connection, media packets, KB up, down


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(st.integers(0, 400), st.integers(0, 2), st.integers(0, 8),
                      st.integers(0, 3), st.sampled_from([0, 0, 500, 3000])),
            max_size=60,
        ),
        max_size=6,
    )
)  # fmt: skip
def test_observe_bins_is_observe_bin_by_bin(batches: list[list[Bin]]) -> None:
    """Bins fed in bulk (as the pipeline does) leave the detector where one call per bin does:
    the same uploads at the same moments, the same open runs."""
    keys = [KEY, OTHER, ("68:db:f5:00:00:02", "142.250.1.1", "udp", 443, 5000)]
    one, bulk = UploadDetector(hint_for()), UploadDetector(hint_for())
    t0 = 1000
    for batch in batches:
        rows = sorted(batch)  # time order, as the pipeline feeds them
        times = [(t0 + b) * 0.1 for b, *_ in rows]
        got_one: list[Upload] = []
        for t, (_, c, mp, kb, db) in zip(times, rows, strict=True):
            got_one += one.observe(t, keys[c], mp, mp * 300, kb * 1000, db)
        got_bulk = bulk.observe_bins(
            times, [keys[c] for _, c, *_ in rows], [r[2] for r in rows],
            [r[2] * 300 for r in rows], [r[3] * 1000 for r in rows], [r[4] for r in rows],
        )
        assert got_one == got_bulk
        assert one.now == bulk.now and one._runs == bulk._runs
        t0 += 300
        last = (t0 - 100) * 0.1
        assert one.advance(last) == bulk.advance(last)
    assert one.flush() == bulk.flush()

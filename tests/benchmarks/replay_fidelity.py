"""How faithfully the lab replays real captures: uploads, durations, bytes and send timing.

For each case (a window of a labelled capture) it plans the replay, plays it in a fresh namespace
lab while tcpdump captures the gateway's LAN side, analyses both the original window and the
replayed capture, and prints the uploads side by side with the lateness of the replay's sends.

    sudo .venv/bin/python tests/benchmarks/replay_fidelity.py [--repeat 3] [--case NAME]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from spyglass.adapters.oui import vendor_for_mac  # noqa: E402
from spyglass.core.analyze import analyze_file  # noqa: E402
from spyglass.sim.replay import plan_replay  # noqa: E402
from tests.netlab.lan import LAN_NET, VENDOR_HOSTS, HomeLan  # noqa: E402
from tests.netlab.replayer import gateway_capture, replay  # noqa: E402

CAPTURES = ROOT.parent / "shared" / "data" / "captures"
CASES = {
    "echodot3a_active.pcap": (18.0, 30.0),
    "cic_echodot1_VOICE_VOLUMEOFF_1.pcap": (0.0, None),
    "homepod_FNT_S3E10.pcap": (104.5, 119.5),
    "cic_nestmini_VOICE_VOLUMEOFF_1.pcap": (0.0, 4.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--case", choices=sorted(CASES), action="append")
    args = ap.parse_args()
    with open(CAPTURES / "labels.csv", newline="") as fh:
        macs = {row["file"]: row["device_mac"] for row in csv.DictReader(fh)}
    for name in args.case or CASES:
        start, end = CASES[name]
        path = CAPTURES / name
        plan = plan_replay(path, macs[name], start=start, end=end, known_addresses=VENDOR_HOSTS)
        lo, hi = plan.origin, plan.origin + plan.duration
        orig = [
            u for u in analyze_file(path, vendor_lookup=vendor_for_mac).uploads
            if u.device_mac == plan.device_mac and u.end > lo and u.start < hi
        ]  # fmt: skip
        print(f"{name} [{start:g} s, {'end' if end is None else f'{end:g} s'}): "
              f"{len(plan.connections)} connections, {len(plan.steps)} sends, "
              f"{plan.payload_bytes('up')} B up / {plan.payload_bytes('down')} B down")  # fmt: skip
        for u in orig:
            print(f"  original  start {u.start - lo:6.2f} s  {u.duration:4.1f} s  "
                  f"{u.bytes_up:7d} B  peak {u.peak_bps:6d} B/s  {u.destination}")  # fmt: skip
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp, HomeLan() as lan:
                out = Path(tmp) / "replay.pcap"
                with gateway_capture(lan, out):
                    rep = replay(lan, plan)
                res = analyze_file(out, lan=[LAN_NET], vendor_lookup=vendor_for_mac)
            for u in (u for u in res.uploads if u.device_mac == plan.device_mac):
                print(f"  replayed  start {u.start - rep.origin:6.2f} s  {u.duration:4.1f} s  "
                      f"{u.bytes_up:7d} B  peak {u.peak_bps:6d} B/s  {u.destination}")  # fmt: skip
            up, down = rep.drift_ms("up"), rep.drift_ms("down")
            print(f"    late up: mean {up['mean']:.2f} p95 {up['p95']:.2f} max {up['max']:.2f} ms;"
                  f" down: mean {down['mean']:.2f} p95 {down['p95']:.2f} max {down['max']:.2f} ms;"
                  f" {len(rep.sends)} sends, wall {rep.wall_s:.1f} s"
                  + (f"; errors {rep.errors}" if rep.errors else ""))  # fmt: skip


if __name__ == "__main__":
    main()

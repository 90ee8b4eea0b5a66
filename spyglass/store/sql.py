"""The upsert statements the store writes with (the schema itself is in migrations.py)."""

UPLOAD_COLS = (
    'capture_id, device_mac, start, "end", bytes_up, peak_bps, destination, remote_ip, proto, '
    "port, assistant, confidence, evidence"
)
UPLOAD_UPSERT = (
    f"INSERT INTO uploads ({UPLOAD_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (device_mac, start, remote_ip, proto, port) DO UPDATE SET "
    'capture_id = excluded.capture_id, "end" = excluded."end", bytes_up = excluded.bytes_up, '
    "peak_bps = excluded.peak_bps, destination = excluded.destination, "
    "assistant = excluded.assistant, confidence = excluded.confidence, "
    "evidence = excluded.evidence RETURNING id"
)
# Adds, so a live second drained in two parts (or a file overlapping a live capture) sums.
SERIES_UPSERT = (
    "INSERT INTO series (device_mac, second, remote_ip, capture_id, bytes_up, bytes_down, "
    "packets_up, packets_down) VALUES (?,?,?,?,?,?,?,?) "
    "ON CONFLICT (device_mac, second, remote_ip, capture_id) DO UPDATE SET "
    "bytes_up = bytes_up + excluded.bytes_up, bytes_down = bytes_down + excluded.bytes_down, "
    "packets_up = packets_up + excluded.packets_up, "
    "packets_down = packets_down + excluded.packets_down"
)
# Flows from the pipeline are running totals: the latest replaces.
FLOW_UPSERT = (
    "INSERT INTO flows (capture_id, device_mac, remote_ip, proto, remote_port, remote_name, "
    "packets_up, bytes_up, packets_down, bytes_down, first_seen, last_seen) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (capture_id, device_mac, remote_ip, proto, remote_port) DO UPDATE SET "
    "remote_name = COALESCE(excluded.remote_name, remote_name), "
    "packets_up = excluded.packets_up, bytes_up = excluded.bytes_up, "
    "packets_down = excluded.packets_down, bytes_down = excluded.bytes_down, "
    "first_seen = MIN(first_seen, excluded.first_seen), "
    "last_seen = MAX(last_seen, excluded.last_seen)"
)
NAME_UPSERT = (
    "INSERT INTO endpoint_names (device_mac, ip, name, source, first_seen, last_seen) "
    "VALUES (?,?,?,?,?,?) ON CONFLICT (device_mac, ip, name, source) DO UPDATE SET "
    "first_seen = MIN(first_seen, excluded.first_seen), "
    "last_seen = MAX(last_seen, excluded.last_seen)"
)
IP_UPSERT = (
    "INSERT INTO device_ips (device_mac, ip, first_seen, last_seen) VALUES (?,?,?,?) "
    "ON CONFLICT (device_mac, ip) DO UPDATE SET "
    "first_seen = MIN(first_seen, excluded.first_seen), "
    "last_seen = MAX(last_seen, excluded.last_seen)"
)


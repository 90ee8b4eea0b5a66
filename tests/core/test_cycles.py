"""An analysis leaves no reference cycles, so the CLI may pause the garbage collector.

``spyglass analyze`` runs without collector passes while it reads a file (cli.analyze
``_collector_paused``): they only walked the growing state. That is safe only while everything
the analysis drops is freed by reference counting, that is, while it makes no reference cycles;
this test says so for real captures, in one process and in two. (A pipeline whose detector held a
method of the pipeline was such a cycle: its whole state waited for the collector.)
"""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path

import pytest

from spyglass.adapters.oui import vendor_for_mac
from spyglass.core.analyze import analyze_file


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", ["homepod_FNT_S3E10.pcap", "echodot3a_active.pcap"])
def test_an_analysis_makes_no_reference_cycles(captures: Path, name: str, workers: int) -> None:
    gc.collect()
    gc.disable()
    try:
        result = analyze_file(captures / name, vendor_lookup=vendor_for_mac, workers=workers)
        assert result.stats.packets > 0 and result.endpoint_names
        del result
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a pass finds goes to gc.garbage, to be named
        found = gc.collect()
        kinds = Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert found == 0, f"reference cycles left by the analysis: {kinds.most_common(8)}"
